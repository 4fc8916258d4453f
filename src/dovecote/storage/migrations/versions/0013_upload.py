"""XEP-0363 HTTP file upload: one row per slot handed out, which becomes the record of
the stored file once its PUT completes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1
TABLE = "upload_files"
INDEXES = (
    ("ix_upload_files_owner", ["owner", "state"]),
    ("ix_upload_files_slot_expires", ["state", "slot_expires"]),
    ("ix_upload_files_stored_at", ["state", "stored_at"]),
)


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(BARE_JID), nullable=False),
        sa.Column("filename", sa.String(1020), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("slot_expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expire_before", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_upload_files"),
    )
    for name, columns in INDEXES:
        op.create_index(name, TABLE, columns)


def downgrade() -> None:
    for name, _columns in reversed(INDEXES):
        op.drop_index(name, TABLE)
    op.drop_table(TABLE)
