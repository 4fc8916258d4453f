"""The SQL implementation of `PubSubStore`, with its tables (on the shared `metadata`).

Every table is keyed by the service's (domain, local) and tagged ``info=ACCOUNT_DATA``, so
deleting an account deletes its PEP nodes, items, subscriptions and affiliations
(`SQLAccountStore.delete` deletes from each tagged table). There is deliberately no foreign
key to `accounts`: the same tables hold the nodes of services that are not accounts (a
pubsub domain is ("", "pubsub.example.org"), which no account row can match). Within the
pubsub tables, items, subscriptions and affiliations belong to their node (ON DELETE
CASCADE), so deleting a node takes the rest with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dovecote.storage.base import StorageError
from dovecote.storage.pubsub import (
    NodeConfig,
    PubSubItem,
    PubSubNode,
    PubSubStore,
    PubSubSubscription,
)
from dovecote.storage.schema import ACCOUNT_DATA, BARE_JID, JID_PART, metadata

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage

#: A full JID: bare JID '/' resourcepart (RFC 7622 §3.1).
FULL_JID = BARE_JID + 1 + JID_PART
#: NodeIDs and ItemIDs are free-form strings (XEP-0060 §12.13); this bounds them.
NAME = JID_PART
_CHUNK = 500


def _node_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["domain", "local", "node"],
        ["pubsub_nodes.domain", "pubsub_nodes.local", "pubsub_nodes.node"],
        ondelete="CASCADE",
    )


pubsub_nodes = Table(
    "pubsub_nodes",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("node", String(NAME), primary_key=True),
    # JSON object: data form field var -> value (list for list-multi).
    Column("config", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    info=ACCOUNT_DATA,
)

pubsub_items = Table(
    "pubsub_items",
    metadata,
    # Increasing: orders the items of a node by publication (INTEGER PRIMARY KEY on SQLite).
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("domain", String(JID_PART), nullable=False),
    Column("local", String(JID_PART), nullable=False),
    Column("node", String(NAME), nullable=False),
    Column("item_id", String(NAME), nullable=False),
    Column("payload", Text, nullable=True),
    Column("publisher", String(FULL_JID), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
    _node_fk(),
    UniqueConstraint("domain", "local", "node", "item_id"),
    Index("ix_pubsub_items_node", "domain", "local", "node", "id"),
    info=ACCOUNT_DATA,
)

pubsub_subscriptions = Table(
    "pubsub_subscriptions",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("node", String(NAME), primary_key=True),
    Column("jid", String(FULL_JID), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("subid", String(64), nullable=False),
    #: The subscription options (XEP-0060 §6.3) as JSON {var: [values]}; NULL: defaults.
    Column("options", Text, nullable=True),
    _node_fk(),
    info=ACCOUNT_DATA,
)

pubsub_affiliations = Table(
    "pubsub_affiliations",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("node", String(NAME), primary_key=True),
    Column("jid", String(BARE_JID), primary_key=True),
    Column("affiliation", String(16), nullable=False),
    _node_fk(),
    info=ACCOUNT_DATA,
)


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive datetimes; they were stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _item(row: Any) -> PubSubItem:
    return PubSubItem(row.item_id, row.payload, row.publisher, _aware(row.published_at))


def _node(row: Any) -> PubSubNode:
    return PubSubNode(row.node, json.loads(row.config), _aware(row.created_at))


async def _upsert(
    conn: AsyncConnection, table: Table, values: dict[str, Any], keys: list[str]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE the other columns (SQLite and PostgreSQL)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table).values(**values)
    changes = {name: getattr(stmt.excluded, name) for name in values if name not in keys}
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=[table.c[k] for k in keys], set_=changes)
    )


class SQLPubSubStore(PubSubStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    # ---- nodes ----------------------------------------------------------------------
    async def create_node(self, local: str, domain: str, node: str, config: NodeConfig) -> bool:
        row = {
            "domain": domain,
            "local": local,
            "node": node,
            "config": json.dumps(config, sort_keys=True),
            "created_at": datetime.now(UTC),
        }
        try:
            async with self._storage.begin(f"pubsub node {node!r} of {local}@{domain}") as conn:
                await conn.execute(insert(pubsub_nodes).values(**row))
        except IntegrityError:
            return False
        return True

    async def get_node(self, local: str, domain: str, node: str) -> PubSubNode | None:
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(pubsub_nodes).filter_by(domain=domain, local=local, node=node)
            )
            row = result.first()
        return _node(row) if row is not None else None

    async def list_nodes(self, local: str, domain: str) -> list[PubSubNode]:
        async with self._storage.read() as conn:
            result = await conn.execute(select(pubsub_nodes).filter_by(domain=domain, local=local))
            nodes = [_node(row) for row in result]
        return sorted(nodes, key=lambda n: n.name)

    async def configure_node(self, local: str, domain: str, node: str, config: NodeConfig) -> bool:
        async with self._storage.begin(
            f"configuration of pubsub node {node!r} of {local}@{domain}"
        ) as conn:
            result = await conn.execute(
                update(pubsub_nodes)
                .filter_by(domain=domain, local=local, node=node)
                .values(config=json.dumps(config, sort_keys=True))
            )
            return result.rowcount > 0

    async def delete_node(self, local: str, domain: str, node: str) -> bool:
        where = {"domain": domain, "local": local, "node": node}
        async with self._storage.begin(
            f"deletion of pubsub node {node!r} of {local}@{domain}"
        ) as conn:
            # Dependents explicitly too (ON DELETE CASCADE is the safety net).
            for table in (pubsub_items, pubsub_subscriptions, pubsub_affiliations):
                await conn.execute(delete(table).filter_by(**where))
            result = await conn.execute(delete(pubsub_nodes).filter_by(**where))
            return result.rowcount > 0

    async def delete_service(self, local: str, domain: str) -> None:
        async with self._storage.begin(
            f"deletion of the pubsub service of {local}@{domain}"
        ) as conn:
            for table in (pubsub_items, pubsub_subscriptions, pubsub_affiliations, pubsub_nodes):
                await conn.execute(delete(table).filter_by(domain=domain, local=local))

    # ---- items ----------------------------------------------------------------------
    async def publish(
        self, local: str, domain: str, node: str, item: PubSubItem, max_items: int | None
    ) -> list[str]:
        where = {"domain": domain, "local": local, "node": node}
        table = pubsub_items
        try:
            async with self._storage.begin(
                f"item {item.id!r} published to {node!r} of {local}@{domain}"
            ) as conn:
                # One publisher per node at a time (the node's row lock on PostgreSQL,
                # BEGIN IMMEDIATE on SQLite): the replace and the max_items trim below
                # read what they then change.
                await conn.execute(
                    select(pubsub_nodes.c.node).filter_by(**where).with_for_update(key_share=True)
                )
                # Republishing an id replaces the item and makes it the newest (§7.1.2).
                await conn.execute(delete(table).filter_by(**where, item_id=item.id))
                await conn.execute(
                    insert(table).values(
                        **where,
                        item_id=item.id,
                        payload=item.payload,
                        publisher=item.publisher,
                        published_at=item.published_at,
                    )
                )
                if max_items is None:
                    return []
                result = await conn.execute(
                    select(table.c.id, table.c.item_id)
                    .filter_by(**where)
                    .order_by(table.c.id.desc())
                    .offset(max_items)
                )
                surplus = result.all()
                ids = [row.id for row in surplus]
                for start in range(0, len(ids), _CHUNK):
                    await conn.execute(
                        delete(table).where(table.c.id.in_(ids[start : start + _CHUNK]))
                    )
                return [row.item_id for row in reversed(surplus)]
        except IntegrityError:
            raise StorageError(f"cannot publish to {node!r} of '{local}@{domain}'") from None

    async def get_items(
        self,
        local: str,
        domain: str,
        node: str,
        *,
        item_ids: Iterable[str] | None = None,
        max_items: int | None = None,
    ) -> list[PubSubItem]:
        table = pubsub_items
        query = select(table).filter_by(domain=domain, local=local, node=node)
        async with self._storage.read() as conn:
            if item_ids is not None:
                wanted = list(dict.fromkeys(item_ids))
                rows: list[Any] = []
                for start in range(0, len(wanted), _CHUNK):
                    result = await conn.execute(
                        query.where(table.c.item_id.in_(wanted[start : start + _CHUNK]))
                    )
                    rows.extend(result)
                rows.sort(key=lambda row: row.id)
            elif max_items is not None:
                result = await conn.execute(query.order_by(table.c.id.desc()).limit(max_items))
                rows = list(reversed(result.all()))
            else:
                result = await conn.execute(query.order_by(table.c.id))
                rows = list(result)
        return [_item(row) for row in rows]

    async def last_items(self, local: str, domain: str) -> dict[str, PubSubItem]:
        table = pubsub_items
        newest = (
            select(func.max(table.c.id))
            .filter_by(domain=domain, local=local)
            .group_by(table.c.node)
            .scalar_subquery()
        )
        async with self._storage.read() as conn:
            result = await conn.execute(select(table).where(table.c.id.in_(newest)))
            return {row.node: _item(row) for row in result}

    async def retract(self, local: str, domain: str, node: str, item_id: str) -> bool:
        async with self._storage.begin(
            f"retraction of {item_id!r} from {node!r} of {local}@{domain}"
        ) as conn:
            result = await conn.execute(
                delete(pubsub_items).filter_by(
                    domain=domain, local=local, node=node, item_id=item_id
                )
            )
            return result.rowcount > 0

    async def purge(self, local: str, domain: str, node: str) -> None:
        async with self._storage.begin(f"purge of {node!r} of {local}@{domain}") as conn:
            await conn.execute(
                delete(pubsub_items).filter_by(domain=domain, local=local, node=node)
            )

    # ---- subscriptions and affiliations -------------------------------------------------
    async def get_subscriptions(
        self, local: str, domain: str, node: str | None = None
    ) -> list[PubSubSubscription]:
        table = pubsub_subscriptions
        query = select(table).filter_by(domain=domain, local=local)
        if node is not None:
            query = query.filter_by(node=node)
        async with self._storage.read() as conn:
            result = await conn.execute(query.order_by(table.c.node, table.c.jid))
            return [
                PubSubSubscription(
                    row.node,
                    row.jid,
                    row.state,
                    row.subid,
                    json.loads(row.options) if row.options else {},
                )
                for row in result
            ]

    async def set_subscription(
        self,
        local: str,
        domain: str,
        node: str,
        jid: str,
        state: str | None,
        subid: str = "",
        options: dict[str, list[str]] | None = None,
    ) -> None:
        key = {"domain": domain, "local": local, "node": node, "jid": jid}
        try:
            async with self._storage.begin(
                f"subscription of {jid} to {node!r} of {local}@{domain}"
            ) as conn:
                if state is None:
                    await conn.execute(delete(pubsub_subscriptions).filter_by(**key))
                    return
                await _upsert(
                    conn,
                    pubsub_subscriptions,
                    {
                        **key,
                        "state": state,
                        "subid": subid,
                        "options": json.dumps(options, sort_keys=True) if options else None,
                    },
                    list(key),
                )
        except IntegrityError:
            raise StorageError(f"no node {node!r} at '{local}@{domain}'") from None

    async def get_affiliations(
        self, local: str, domain: str, node: str | None = None
    ) -> list[tuple[str, str, str]]:
        table = pubsub_affiliations
        query = select(table).filter_by(domain=domain, local=local)
        if node is not None:
            query = query.filter_by(node=node)
        async with self._storage.read() as conn:
            result = await conn.execute(query.order_by(table.c.node, table.c.jid))
            return [(row.node, row.jid, row.affiliation) for row in result]

    async def set_affiliation(
        self, local: str, domain: str, node: str, jid: str, affiliation: str | None
    ) -> None:
        key = {"domain": domain, "local": local, "node": node, "jid": jid}
        try:
            async with self._storage.begin(
                f"affiliation of {jid} with {node!r} of {local}@{domain}"
            ) as conn:
                if affiliation is None or affiliation == "none":
                    await conn.execute(delete(pubsub_affiliations).filter_by(**key))
                    return
                await _upsert(
                    conn, pubsub_affiliations, {**key, "affiliation": affiliation}, list(key)
                )
        except IntegrityError:
            raise StorageError(f"no node {node!r} at '{local}@{domain}'") from None
