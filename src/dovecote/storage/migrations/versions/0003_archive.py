"""Message archives (XEP-0313 user archives).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1


def upgrade() -> None:
    op.create_table(
        "archive_messages",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("stamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("with_bare", sa.String(BARE_JID), nullable=False),
        sa.Column("with_resource", sa.String(JID_PART), nullable=True),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_archive_messages"),
        sa.ForeignKeyConstraint(
            ["domain", "local"],
            ["accounts.domain", "accounts.local"],
            name="fk_archive_messages_domain_accounts",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_archive_messages_owner", "archive_messages", ["domain", "local", "seq"])
    op.create_index(
        "ix_archive_messages_id", "archive_messages", ["domain", "local", "id"], unique=True
    )
    op.create_index(
        "ix_archive_messages_with", "archive_messages", ["domain", "local", "with_bare", "seq"]
    )
    op.create_index(
        "ix_archive_messages_stamp_owner", "archive_messages", ["domain", "local", "stamp"]
    )
    op.create_index("ix_archive_messages_stamp", "archive_messages", ["stamp"])


def downgrade() -> None:
    for name in (
        "ix_archive_messages_stamp",
        "ix_archive_messages_stamp_owner",
        "ix_archive_messages_with",
        "ix_archive_messages_id",
        "ix_archive_messages_owner",
    ):
        op.drop_index(name, table_name="archive_messages")
    op.drop_table("archive_messages")
