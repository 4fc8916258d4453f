"""Rosters (items, removed items, versions, pending requests) and offline messages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1


def _owner() -> list[sa.Column]:
    return [
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
    ]


def _fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["domain", "local"],
        ["accounts.domain", "accounts.local"],
        name=f"fk_{table}_domain_accounts",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "roster_items",
        *_owner(),
        sa.Column("contact", sa.String(BARE_JID), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("subscription", sa.String(8), nullable=False),
        sa.Column("ask", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "contact", name="pk_roster_items"),
        _fk("roster_items"),
    )
    op.create_table(
        "roster_removed",
        *_owner(),
        sa.Column("contact", sa.String(BARE_JID), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "contact", name="pk_roster_removed"),
        _fk("roster_removed"),
    )
    op.create_table(
        "roster_versions",
        *_owner(),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", name="pk_roster_versions"),
        _fk("roster_versions"),
    )
    op.create_table(
        "roster_pending",
        *_owner(),
        sa.Column("contact", sa.String(BARE_JID), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "contact", name="pk_roster_pending"),
        _fk("roster_pending"),
    )
    op.create_table(
        "offline_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        *_owner(),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_offline_messages"),
        _fk("offline_messages"),
    )
    op.create_index("ix_offline_messages_owner", "offline_messages", ["domain", "local", "id"])


def downgrade() -> None:
    op.drop_index("ix_offline_messages_owner", table_name="offline_messages")
    for table in (
        "offline_messages",
        "roster_pending",
        "roster_versions",
        "roster_removed",
        "roster_items",
    ):
        op.drop_table(table)
