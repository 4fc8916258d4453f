"""Per-user byte quotas: message sizes in the offline store and the archive, and a running
total of each archive's bytes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023


def _byte_length(column: str) -> str:
    """SQL for the UTF-8 length of a text column (length() counts characters)."""
    if op.get_bind().dialect.name == "postgresql":
        return f"octet_length({column})"
    return f"length(CAST({column} AS BLOB))"


def upgrade() -> None:
    for table in ("offline_messages", "archive_messages"):
        # SQLite adds a NOT NULL column in place when it has a default.
        op.add_column(table, sa.Column("size", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "archive_usage",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", name="pk_archive_usage"),
        sa.ForeignKeyConstraint(
            ["domain", "local"],
            ["accounts.domain", "accounts.local"],
            name="fk_archive_usage_domain_accounts",
            ondelete="CASCADE",
        ),
    )
    # What is stored already counts from now on.
    op.execute(f"UPDATE offline_messages SET size = {_byte_length('stanza')}")
    op.execute(f"UPDATE archive_messages SET size = {_byte_length('stanza')}")
    op.execute(
        "INSERT INTO archive_usage (domain, local, bytes) "
        "SELECT domain, local, sum(size) FROM archive_messages GROUP BY domain, local"
    )


def downgrade() -> None:
    op.drop_table("archive_usage")
    with op.batch_alter_table("archive_messages") as batch:
        batch.drop_column("size")
    with op.batch_alter_table("offline_messages") as batch:
        batch.drop_column("size")
