"""Initial schema: accounts, their SCRAM credentials, per-account key/value blobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-01

Matches `dovecote/storage/schema.py` as first written.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023  # RFC 7622 §3.1: at most 1023 octets per part


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", name="pk_accounts"),
    )
    op.create_table(
        "scram_credentials",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("hash_name", sa.String(32), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("stored_key", sa.LargeBinary(), nullable=False),
        sa.Column("server_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "hash_name", name="pk_scram_credentials"),
        sa.ForeignKeyConstraint(
            ["domain", "local"],
            ["accounts.domain", "accounts.local"],
            name="fk_scram_credentials_domain_accounts",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "account_kv",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("key", sa.String(JID_PART), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "key", name="pk_account_kv"),
        sa.ForeignKeyConstraint(
            ["domain", "local"],
            ["accounts.domain", "accounts.local"],
            name="fk_account_kv_domain_accounts",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("account_kv")
    op.drop_table("scram_credentials")
    op.drop_table("accounts")
