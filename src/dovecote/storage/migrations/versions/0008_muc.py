"""Multi-user chat: persistent rooms and their affiliations (XEP-0045).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Matches the tables of `dovecote/storage/sql_muc.py`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1


def upgrade() -> None:
    op.create_table(
        "muc_rooms",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("subject_by", sa.String(JID_PART), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", name="pk_muc_rooms"),
    )
    op.create_table(
        "muc_affiliations",
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("jid", sa.String(BARE_JID), nullable=False),
        sa.Column("affiliation", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("nick", sa.String(JID_PART), nullable=False),
        sa.ForeignKeyConstraint(
            ["domain", "local"],
            ["muc_rooms.domain", "muc_rooms.local"],
            name="fk_muc_affiliations_domain_muc_rooms",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("domain", "local", "jid", name="pk_muc_affiliations"),
    )


def downgrade() -> None:
    op.drop_table("muc_affiliations")
    op.drop_table("muc_rooms")
