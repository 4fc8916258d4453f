"""Merge the pubsub subscription options (0009) and room archive (0010) branches, written
side by side.

Revision ID: 0011
Revises: 0009, 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

revision: str = "0011"
down_revision: str | Sequence[str] | None = ("0009", "0010")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
