"""Archives of MUC rooms (XEP-0313 on a room JID): the user archive's columns, keyed by
(room local part, service domain), without a foreign key to accounts.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1
TABLE = "room_archive_messages"
INDEXES = (
    ("ix_room_archive_messages_owner", ["domain", "local", "seq"], False),
    ("ix_room_archive_messages_id", ["domain", "local", "id"], True),
    ("ix_room_archive_messages_with", ["domain", "local", "with_bare", "seq"], False),
    ("ix_room_archive_messages_stamp_owner", ["domain", "local", "stamp"], False),
    ("ix_room_archive_messages_stamp", ["stamp"], False),
)


def upgrade() -> None:
    op.create_table(
        TABLE,
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
        sa.Column("size", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("seq", name="pk_room_archive_messages"),
    )
    for name, columns, unique in INDEXES:
        op.create_index(name, TABLE, columns, unique=unique)
    op.create_table(
        "room_archive_usage",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", name="pk_room_archive_usage"),
    )


def downgrade() -> None:
    op.drop_table("room_archive_usage")
    for name, _, _ in INDEXES:
        op.drop_index(name, table_name=TABLE)
    op.drop_table(TABLE)
