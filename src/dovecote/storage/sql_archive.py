"""The SQL message archive (XEP-0313 user archives): its table and `SQLArchiveStore`.

Importing this module declares `archive_messages` on the shared metadata (migration 0003
creates it) and the rooms' `room_archive_messages` (migration 0010): one store class serves
both. Archive order is `seq`, a number that only grows, assigned at insert; the id
clients see is a random string, looked up once per query to find where a page starts.

Concurrent appends are written together (group commit): while one transaction is being
written, the messages that arrive queue up and go in the next one, so a busy server does
one write for many messages and an idle one writes each message at once.
"""

from __future__ import annotations

import asyncio
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
    delete,
    func,
    insert,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dovecote.storage.archive import (
    ArchivedMessage,
    ArchiveFilter,
    ArchiveFull,
    ArchiveIdNotFound,
    ArchiveMark,
    ArchivePage,
    ArchiveStore,
)
from dovecote.storage.base import StorageError
from dovecote.storage.schema import ACCOUNT_DATA, BARE_JID, JID_PART, metadata

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage

#: Ids per IN (...) query, well below the databases' bound-parameter limits.
_CHUNK = 500

archive_messages = Table(
    "archive_messages",
    metadata,
    # INTEGER PRIMARY KEY on SQLite is the rowid: it only grows, so it is the archive order.
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("domain", String(JID_PART), nullable=False),
    Column("local", String(JID_PART), nullable=False),
    # The archive id clients see (XEP-0313 §3, XEP-0359 stanza-id).
    Column("id", String(64), nullable=False),
    # When the message was archived (XEP-0313 §3: sent or received), UTC.
    Column("stamp", DateTime(timezone=True), nullable=False),
    # The other party: 'to' of an outgoing message, 'from' of an incoming one.
    Column("with_bare", String(BARE_JID), nullable=False),
    Column("with_resource", String(JID_PART), nullable=True),
    Column("stanza", Text, nullable=False),
    # The stanza's length in bytes (UTF-8), for the per-user byte quota (migration 0006).
    Column("size", Integer, nullable=False, server_default="0"),
    ForeignKeyConstraint(
        ["domain", "local"], ["accounts.domain", "accounts.local"], ondelete="CASCADE"
    ),
    # Paging through one archive, and finding an id's place in it.
    Index("ix_archive_messages_owner", "domain", "local", "seq"),
    Index("ix_archive_messages_id", "domain", "local", "id", unique=True),
    # Paging through one conversation ('with' filter).
    Index("ix_archive_messages_with", "domain", "local", "with_bare", "seq"),
    # Time filters ('start', 'end'): mostly recent, for catching up since the last sync.
    Index("ix_archive_messages_stamp_owner", "domain", "local", "stamp"),
    # Retention: the oldest messages of every archive.
    Index("ix_archive_messages_stamp", "stamp"),
    info=ACCOUNT_DATA,
)

#: The bytes each archive holds (the sum of its messages' sizes), kept up to date by every
#: write and deletion so that the quota check reads one row (migration 0006).
archive_usage = Table(
    "archive_usage",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    ForeignKeyConstraint(
        ["domain", "local"], ["accounts.domain", "accounts.local"], ondelete="CASCADE"
    ),
    info=ACCOUNT_DATA,
)

#: Archives of MUC rooms (XEP-0313 §6 on the room JID, XEP-0045), keyed by (room local,
#: service domain) like the user archives, with the same columns; a room is not an account,
#: so there is no foreign key, and the rows go when the room is destroyed
#: (`delete_archive`). Migration 0010.
room_archive_messages = Table(
    "room_archive_messages",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("domain", String(JID_PART), nullable=False),
    Column("local", String(JID_PART), nullable=False),
    Column("id", String(64), nullable=False),
    Column("stamp", DateTime(timezone=True), nullable=False),
    # The sender: the occupant's real bare JID when known, else the room JID; the
    # resource is the occupant's nick.
    Column("with_bare", String(BARE_JID), nullable=False),
    Column("with_resource", String(JID_PART), nullable=True),
    Column("stanza", Text, nullable=False),
    Column("size", Integer, nullable=False, server_default="0"),
    Index("ix_room_archive_messages_owner", "domain", "local", "seq"),
    Index("ix_room_archive_messages_id", "domain", "local", "id", unique=True),
    Index("ix_room_archive_messages_with", "domain", "local", "with_bare", "seq"),
    Index("ix_room_archive_messages_stamp_owner", "domain", "local", "stamp"),
    Index("ix_room_archive_messages_stamp", "stamp"),
)

room_archive_usage = Table(
    "room_archive_usage",
    metadata,
    Column("domain", String(JID_PART), primary_key=True),
    Column("local", String(JID_PART), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
)


def _utc(value: datetime) -> datetime:
    """UTC for the database (SQLite stores the wall time without its offset); naive values
    are taken as UTC, as SQLite gives them back."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _columns(table: Table) -> tuple[Any, ...]:
    c = table.c
    return (c.seq, c.id, c.stamp, c.with_bare, c.with_resource, c.stanza)


def _message(row: Any) -> ArchivedMessage:
    return ArchivedMessage(row.id, _utc(row.stamp), row.with_bare, row.with_resource, row.stanza)


#: Over its byte quota, an archive is pruned down to this share of it (policy
#: 'expire-oldest').
QUOTA_LOW_WATER = 0.9

#: Seconds the writer waits for more messages before a group commit.
GROUP_COMMIT_DELAY = 0.01


class SQLArchiveStore(ArchiveStore):
    """Archives in `messages` with their byte totals in `usage`: the users' archives
    (`archive_messages`, owned by accounts) by default, or the rooms'
    (`room_archive_messages`, `room_archive_usage`)."""

    def __init__(
        self,
        storage: SQLStorage,
        messages: Table = archive_messages,
        usage: Table = archive_usage,
    ) -> None:
        self._storage = storage
        self._messages = messages
        self._usage_table = usage
        self._columns = _columns(messages)
        self._max_bytes = 0
        self._policy = "expire-oldest"
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._in_flight: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    # ---- appending (group commit, write-behind) ----------------------------------------
    def enqueue(self, local: str, domain: str, message: ArchivedMessage) -> asyncio.Future[None]:
        """Queue a message for the next group commit, without waiting: the returned future
        is done once it is durable (or failed). Everything queued while one transaction
        runs goes into the next one, so the database sees one write per burst."""
        row = {
            "domain": domain,
            "local": local,
            "id": message.id,
            "stamp": _utc(message.timestamp),
            "with_bare": message.with_bare,
            "with_resource": message.with_resource,
            "stanza": message.stanza,
            "size": len(message.stanza.encode()),
        }
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_pending())
        return future

    async def append(self, local: str, domain: str, message: ArchivedMessage) -> None:
        await self.enqueue(local, domain, message)

    def set_quota(self, max_bytes: int, policy: str = "expire-oldest") -> None:
        if policy not in ("expire-oldest", "stop"):
            raise ValueError(f"unknown archive quota policy {policy!r}")
        self._max_bytes = max(0, max_bytes)
        self._policy = policy

    async def usage(self, local: str, domain: str) -> int:
        await self.flush()
        table = self._usage_table
        async with self._storage.begin() as conn:
            result = await conn.execute(
                select(table.c.bytes).where(table.c.domain == domain, table.c.local == local)
            )
            return int(result.scalar_one_or_none() or 0)

    async def flush(self) -> None:
        """Wait until every message queued so far is durable (failures are the callers')."""
        waiting = [future for _, future in self._pending] + self._in_flight
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def _write_pending(self) -> None:
        # A short wait lets a burst gather into one transaction: a transaction costs far
        # more CPU than a row, and nobody waits on it but acknowledgements.
        while self._pending:
            await asyncio.sleep(GROUP_COMMIT_DELAY)
            batch, self._pending = self._pending, []
            self._in_flight = [future for _, future in batch]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self._pending[:0] = [item for item in batch if not item[1].done()]
                raise
            except Exception as exc:  # nobody else will answer these callers
                for _, waiting in batch:
                    if not waiting.done():
                        waiting.set_exception(exc)
            finally:
                self._in_flight = []

    async def _write(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        refused: list[asyncio.Future[None]] = []
        owners = sorted({f"{row['local']}@{row['domain']}" for row, _ in batch})
        what = f"{len(batch)} archived message(s) of {', '.join(owners[:10])}"
        if len(owners) > 10:
            what += f" and {len(owners) - 10} more archives"
        try:
            async with self._storage.begin(what) as conn:
                if self._max_bytes and self._policy == "stop":
                    batch, refused = await self._within_quota(conn, batch)
                if batch:
                    rows = [row for row, _ in batch]
                    await conn.execute(insert(self._messages), rows)
                    await self._count_bytes(conn, rows)
                    if self._max_bytes and self._policy == "expire-oldest":
                        await self._expire_oldest(conn, {(r["domain"], r["local"]) for r in rows})
        except IntegrityError:
            if len(batch) > 1:
                # One bad row (an account deleted meanwhile) must not fail the others.
                for item in batch:
                    await self._write([item])
                return
            row, future = batch[0]
            if not future.done():
                future.set_exception(StorageError(f"no account '{row['local']}@{row['domain']}'"))
            return
        except StorageError as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        for future in refused:
            if not future.done():
                future.set_exception(ArchiveFull())

    # ---- the byte quota ---------------------------------------------------------------------
    async def _usage(
        self, conn: AsyncConnection, owners: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        table = self._usage_table
        wanted = list(owners)
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(wanted), _CHUNK):
            result = await conn.execute(
                select(table.c.domain, table.c.local, table.c.bytes).where(
                    tuple_(table.c.domain, table.c.local).in_(wanted[start : start + _CHUNK])
                )
            )
            found.update(((row.domain, row.local), int(row.bytes)) for row in result)
        return found

    async def _within_quota(
        self, conn: AsyncConnection, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]
    ) -> tuple[list[tuple[dict[str, Any], asyncio.Future[None]]], list[asyncio.Future[None]]]:
        """Policy 'stop': the messages that fit in their archive's quota, in order, and the
        futures of those that do not."""
        usage = await self._usage(conn, {(row["domain"], row["local"]) for row, _ in batch})
        kept: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        refused: list[asyncio.Future[None]] = []
        for row, future in batch:
            owner = (row["domain"], row["local"])
            held = usage.get(owner, 0)
            if held + row["size"] > self._max_bytes:
                refused.append(future)
                continue
            usage[owner] = held + row["size"]
            kept.append((row, future))
        return kept, refused

    async def _count_bytes(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        """Add the rows' sizes to their archives' running totals (one statement)."""
        added: dict[tuple[str, str], int] = {}
        for row in rows:
            owner = (row["domain"], row["local"])
            added[owner] = added.get(owner, 0) + row["size"]
        await self._add_usage(conn, added)

    async def _add_usage(self, conn: AsyncConnection, added: dict[tuple[str, str], int]) -> None:
        if not added:
            return
        table = self._usage_table
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = dialect_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.domain, table.c.local],
            set_={"bytes": table.c.bytes + stmt.excluded.bytes},
        )
        await conn.execute(
            stmt,
            [{"domain": d, "local": lp, "bytes": n} for (d, lp), n in added.items()],
        )

    async def _expire_oldest(self, conn: AsyncConnection, owners: set[tuple[str, str]]) -> None:
        """Policy 'expire-oldest': remove each over-quota archive's oldest messages (from
        the start only, so the archive has no holes, XEP-0313 §3.2) down to
        `QUOTA_LOW_WATER` of the quota, so that an archive at its quota is pruned once
        per tenth of it written rather than in every group commit."""
        table = self._messages
        for (domain, local), held in (await self._usage(conn, owners)).items():
            if held <= self._max_bytes:
                continue
            excess = held - int(self._max_bytes * QUOTA_LOW_WATER)
            owner = (table.c.domain == domain, table.c.local == local)
            removed = 0
            cutoff: int | None = None
            while removed < excess:
                query = select(table.c.seq, table.c.size).where(*owner)
                if cutoff is not None:
                    query = query.where(table.c.seq > cutoff)
                rows = list(await conn.execute(query.order_by(table.c.seq).limit(_CHUNK)))
                if not rows:
                    break
                for row in rows:
                    cutoff = row.seq
                    removed += int(row.size)
                    if removed >= excess:
                        break
            if cutoff is None:
                continue
            await conn.execute(delete(table).where(*owner, table.c.seq <= cutoff))
            await self._add_usage(conn, {(domain, local): -removed})

    # ---- querying ---------------------------------------------------------------------------
    async def _positions(
        self, conn: AsyncConnection, local: str, domain: str, ids: Iterable[str]
    ) -> dict[str, int]:
        """archive id -> seq for the ids the archive holds."""
        table = self._messages
        wanted = list(dict.fromkeys(ids))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), _CHUNK):
            result = await conn.execute(
                select(table.c.id, table.c.seq).where(
                    table.c.domain == domain,
                    table.c.local == local,
                    table.c.id.in_(wanted[start : start + _CHUNK]),
                )
            )
            found.update((row.id, row.seq) for row in result)
        return found

    async def query(
        self,
        local: str,
        domain: str,
        filter: ArchiveFilter,
        limit: int,
        *,
        after: str | None = None,
        before: str | None = None,
        index: int | None = None,
    ) -> ArchivePage:
        await self.flush()  # a query sees every message archived before it
        table = self._messages
        named: list[str] = [i for i in (after, before, filter.after_id, filter.before_id) if i]
        named.extend(filter.ids or ())
        async with self._storage.read() as conn:
            seqs = await self._positions(conn, local, domain, named)
            for archive_id in named:
                if archive_id not in seqs:
                    raise ArchiveIdNotFound(archive_id)
            where: list[Any] = [table.c.domain == domain, table.c.local == local]
            if filter.with_bare is not None:
                where.append(table.c.with_bare == filter.with_bare)
                if filter.with_resource is not None:
                    where.append(table.c.with_resource == filter.with_resource)
            if filter.start is not None:
                where.append(table.c.stamp >= _utc(filter.start))
            if filter.end is not None:
                where.append(table.c.stamp <= _utc(filter.end))
            if filter.after_id:
                where.append(table.c.seq > seqs[filter.after_id])
            if filter.before_id:
                where.append(table.c.seq < seqs[filter.before_id])
            if filter.ids is not None:
                where.append(table.c.seq.in_(sorted({seqs[i] for i in filter.ids})))

            async def count(*extra: Any) -> int:
                result = await conn.execute(
                    select(func.count()).select_from(table).where(*where, *extra)
                )
                return int(result.scalar_one())

            total = await count()
            if limit <= 0 or total == 0 or (index is not None and index >= total):
                # XEP-0059 §2.7: max 0 asks for the count only.
                return ArchivePage([], total, None, complete=total == 0 or limit > 0)
            page = select(*self._columns).where(*where)
            if before is not None:
                # §2.3, §2.5: backwards, from right before `before` (or the end).
                if before:
                    page = page.where(table.c.seq < seqs[before])
                if after:  # both: the page just before `before`, not reaching `after`
                    page = page.where(table.c.seq > seqs[after])
                page = page.order_by(table.c.seq.desc()).limit(limit + 1)
                rows = list(await conn.execute(page))
                complete = len(rows) <= limit
                rows = rows[:limit]
                rows.reverse()
            else:
                if index is not None:
                    page = page.order_by(table.c.seq).offset(index)
                elif after:
                    page = page.where(table.c.seq > seqs[after]).order_by(table.c.seq)
                else:
                    page = page.order_by(table.c.seq)
                rows = list(await conn.execute(page.limit(limit + 1)))
                complete = len(rows) <= limit
                rows = rows[:limit]
            if not rows:
                return ArchivePage([], total, None, complete=True)
            if index is not None:
                first_index = index
            elif before is None and not after:
                first_index = 0
            elif before == "" and not after:
                first_index = total - len(rows)
            else:
                first_index = await count(table.c.seq < rows[0].seq)
        return ArchivePage([_message(row) for row in rows], total, first_index, complete)

    async def bounds(self, local: str, domain: str) -> tuple[ArchiveMark, ArchiveMark] | None:
        await self.flush()
        table = self._messages
        owner = (table.c.domain == domain, table.c.local == local)
        marks: list[ArchiveMark] = []
        async with self._storage.read() as conn:
            for order in (table.c.seq, table.c.seq.desc()):
                result = await conn.execute(
                    select(table.c.id, table.c.stamp).where(*owner).order_by(order).limit(1)
                )
                row = result.first()
                if row is None:
                    return None
                marks.append(ArchiveMark(row.id, _utc(row.stamp)))
        return marks[0], marks[1]

    async def count(self, local: str, domain: str) -> int:
        await self.flush()
        table = self._messages
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.domain == domain, table.c.local == local)
            )
            return int(result.scalar_one())

    async def delete_older_than(self, cutoff: datetime) -> int:
        await self.flush()
        table = self._messages
        old = table.c.stamp < _utc(cutoff)
        async with self._storage.begin("expiry of archived messages") as conn:
            result = await conn.execute(
                select(table.c.domain, table.c.local, func.sum(table.c.size))
                .where(old)
                .group_by(table.c.domain, table.c.local)
            )
            freed = {(row[0], row[1]): -int(row[2] or 0) for row in result}
            result = await conn.execute(delete(table).where(old))
            await self._add_usage(conn, freed)
            return int(result.rowcount or 0)

    async def replace(self, local: str, domain: str, archive_id: str, stanza: str) -> bool:
        await self.flush()
        table = self._messages
        size = len(stanza.encode())
        where = (table.c.domain == domain, table.c.local == local, table.c.id == archive_id)
        async with self._storage.begin(f"replacing archived message {archive_id}") as conn:
            result = await conn.execute(select(table.c.size).where(*where))
            old = result.scalar_one_or_none()
            if old is None:
                return False
            await conn.execute(table.update().where(*where).values(stanza=stanza, size=size))
            await self._add_usage(conn, {(domain, local): size - int(old)})
        return True

    async def delete_archive(self, local: str, domain: str) -> int:
        await self.flush()
        table, usage = self._messages, self._usage_table
        async with self._storage.begin(f"deleting the archive of {local}@{domain}") as conn:
            result = await conn.execute(
                delete(table).where(table.c.domain == domain, table.c.local == local)
            )
            await conn.execute(
                delete(usage).where(usage.c.domain == domain, usage.c.local == local)
            )
            return int(result.rowcount or 0)
