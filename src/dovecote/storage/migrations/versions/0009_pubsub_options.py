"""Subscription options (XEP-0060 §6.3) of pubsub subscriptions, as JSON.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-02

A branch beside 0008 (MUC, also from 0007); a merge revision joins them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pubsub_subscriptions") as batch:
        batch.add_column(sa.Column("options", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pubsub_subscriptions") as batch:
        batch.drop_column("options")
