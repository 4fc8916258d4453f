"""Publish-subscribe: nodes, items, subscriptions, affiliations (PEP and pubsub services).

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

Matches the tables of `dovecote/storage/sql_pubsub.py`. A branch beside 0003 (both start
from 0002; the storage applies all heads).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JID_PART = 1023
BARE_JID = 2 * JID_PART + 1
FULL_JID = BARE_JID + 1 + JID_PART
NAME = JID_PART


def _service() -> list[sa.Column]:
    return [
        sa.Column("domain", sa.String(JID_PART), nullable=False),
        sa.Column("local", sa.String(JID_PART), nullable=False),
        sa.Column("node", sa.String(NAME), nullable=False),
    ]


def _node_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["domain", "local", "node"],
        ["pubsub_nodes.domain", "pubsub_nodes.local", "pubsub_nodes.node"],
        name=f"fk_{table}_domain_pubsub_nodes",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "pubsub_nodes",
        *_service(),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "node", name="pk_pubsub_nodes"),
    )
    op.create_table(
        "pubsub_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        *_service(),
        sa.Column("item_id", sa.String(NAME), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("publisher", sa.String(FULL_JID), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pubsub_items"),
        _node_fk("pubsub_items"),
        sa.UniqueConstraint("domain", "local", "node", "item_id", name="uq_pubsub_items_domain"),
    )
    op.create_index("ix_pubsub_items_node", "pubsub_items", ["domain", "local", "node", "id"])
    op.create_table(
        "pubsub_subscriptions",
        *_service(),
        sa.Column("jid", sa.String(FULL_JID), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("subid", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "node", "jid", name="pk_pubsub_subscriptions"),
        _node_fk("pubsub_subscriptions"),
    )
    op.create_table(
        "pubsub_affiliations",
        *_service(),
        sa.Column("jid", sa.String(BARE_JID), nullable=False),
        sa.Column("affiliation", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("domain", "local", "node", "jid", name="pk_pubsub_affiliations"),
        _node_fk("pubsub_affiliations"),
    )


def downgrade() -> None:
    op.drop_table("pubsub_affiliations")
    op.drop_table("pubsub_subscriptions")
    op.drop_index("ix_pubsub_items_node", table_name="pubsub_items")
    op.drop_table("pubsub_items")
    op.drop_table("pubsub_nodes")
