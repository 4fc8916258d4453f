"""The SQL schema (SQLAlchemy Core), the reference the Alembic migrations must match.

Changing a table here means writing a migration in `migrations/versions/` too; the storage
tests compare the migrated database against this metadata.

Every table that holds one account's data is keyed by (domain, local), has a foreign key
to `accounts` with ON DELETE CASCADE, and is tagged ``info=ACCOUNT_DATA``: deleting an
account deletes explicitly from each tagged table (see `SQLAccountStore.delete`), so its
data goes even where the database does not enforce foreign keys.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

#: Constraint names the same on every database, so later migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: `Table.info` marker for tables whose rows belong to one account (domain, local).
ACCOUNT_DATA = {"account_data": True}

#: RFC 7622 §3.1: each JID part is at most 1023 octets.
JID_PART = 1023

metadata = MetaData(naming_convention=NAMING_CONVENTION)

accounts = Table(
    "accounts",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

scram_credentials = Table(
    "scram_credentials",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    # "SHA-1" or "SHA-256" (RFC 5802, RFC 7677).
    Column("hash_name", String(32), primary_key=True),
    Column("salt", LargeBinary, nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("stored_key", LargeBinary, nullable=False),
    Column("server_key", LargeBinary, nullable=False),
    ForeignKeyConstraint(
        ["domain", "local"], ["accounts.domain", "accounts.local"], ondelete="CASCADE"
    ),
    info=ACCOUNT_DATA,
)

account_kv = Table(
    "account_kv",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("key", String(JID_PART), primary_key=True),
    Column("value", Text, nullable=False),
    ForeignKeyConstraint(
        ["domain", "local"], ["accounts.domain", "accounts.local"], ondelete="CASCADE"
    ),
    info=ACCOUNT_DATA,
)


#: A bare JID: localpart '@' domainpart (RFC 7622 §3.1).
BARE_JID = 2 * JID_PART + 1


def _account_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["domain", "local"], ["accounts.domain", "accounts.local"], ondelete="CASCADE"
    )


roster_items = Table(
    "roster_items",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("contact", String(BARE_JID), primary_key=True),
    Column("name", Text, nullable=True),
    Column("subscription", String(8), nullable=False),
    Column("ask", Boolean, nullable=False),
    Column("approved", Boolean, nullable=False),
    # JSON list of group names (RFC 6121 §2.1.2.3).
    Column("groups", Text, nullable=False),
    # The roster version at this item's last change (XEP-0237).
    Column("version", BigInteger, nullable=False),
    _account_fk(),
    # Deleting an account finds it in its contacts' rosters without a scan.
    Index("ix_roster_items_contact", "contact"),
    info=ACCOUNT_DATA,
)

#: Removed items, kept so that a client can be sent only the changes (XEP-0237 §3).
roster_removed = Table(
    "roster_removed",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("contact", String(BARE_JID), primary_key=True),
    Column("version", BigInteger, nullable=False),
    _account_fk(),
    info=ACCOUNT_DATA,
)

roster_versions = Table(
    "roster_versions",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("version", BigInteger, nullable=False),
    _account_fk(),
    info=ACCOUNT_DATA,
)

#: Subscription requests waiting for the user's answer (RFC 6121 §3.1.3).
roster_pending = Table(
    "roster_pending",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("contact", String(BARE_JID), primary_key=True),
    Column("stanza", Text, nullable=False),
    _account_fk(),
    Index("ix_roster_pending_contact", "contact"),
    info=ACCOUNT_DATA,
)

offline_messages = Table(
    "offline_messages",
    metadata,
    # INTEGER PRIMARY KEY on SQLite is the rowid: increasing, so it orders the messages.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("domain", String(JID_PART), nullable=False),
    Column("local", String(JID_PART), nullable=False),
    Column("stanza", Text, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    # The stanza's length in bytes (UTF-8), summed for the per-user byte quota.
    Column("size", Integer, nullable=False, server_default="0"),
    _account_fk(),
    Index("ix_offline_messages_owner", "domain", "local", "id"),
    info=ACCOUNT_DATA,
)


def account_data_tables() -> list[Table]:
    """Tables holding per-account rows, dependents first (safe deletion order)."""
    return [t for t in reversed(metadata.sorted_tables) if t.info.get("account_data")]
