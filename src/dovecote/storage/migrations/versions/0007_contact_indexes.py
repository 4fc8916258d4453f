"""Indexes on the contact of roster items and pending subscription requests: deleting an
account removes it from every contact's roster without scanning all rosters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_roster_items_contact", "roster_items", ["contact"])
    op.create_index("ix_roster_pending_contact", "roster_pending", ["contact"])


def downgrade() -> None:
    op.drop_index("ix_roster_pending_contact", "roster_pending")
    op.drop_index("ix_roster_items_contact", "roster_items")
