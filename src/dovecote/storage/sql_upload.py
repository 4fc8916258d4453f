"""The SQL implementation of `UploadStore`, with its table (on the shared `metadata`).

The table is not tagged ACCOUNT_DATA: deleting an account leaves its uploads to expire
with everyone else's (their files are on disk, which only the expiry sweep removes; the
links may still be in messages others keep).

A slot request reads the owner's usage and inserts in one write transaction: BEGIN
IMMEDIATE on SQLite; on PostgreSQL a transaction-scoped advisory lock on the owner.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    SmallInteger,
    String,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from dovecote.storage.schema import BARE_JID, metadata
from dovecote.storage.upload import UploadRecord, UploadState, UploadStore, UploadUsage

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage

#: Longest file name kept (bytes of UTF-8 are checked by the service; most file systems
#: allow 255).
FILENAME = 255
CONTENT_TYPE = 255

upload_files = Table(
    "upload_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(BARE_JID), nullable=False),
    Column("filename", String(FILENAME * 4), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(CONTENT_TYPE), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("slot_expires", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=True),
    Column("expire_before", DateTime(timezone=True), nullable=True),
    Index("ix_upload_files_owner", "owner", "state"),
    Index("ix_upload_files_slot_expires", "state", "slot_expires"),
    Index("ix_upload_files_stored_at", "state", "stored_at"),
)

_T = upload_files


def _record(row: Any) -> UploadRecord:
    return UploadRecord(
        id=row.id,
        owner=row.owner,
        filename=row.filename,
        size=row.size,
        content_type=row.content_type,
        state=UploadState(row.state),
        slot_expires=_utc(row.slot_expires),
        stored_at=_utc(row.stored_at) if row.stored_at is not None else None,
        expire_before=_utc(row.expire_before) if row.expire_before is not None else None,
    )


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stamp here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _held(owner: str, now: datetime) -> Any:
    """The owner's rows that count against the quota: files stored or being uploaded,
    and slots whose link is still valid."""
    return and_(
        _T.c.owner == owner,
        or_(_T.c.state != int(UploadState.PENDING), _T.c.slot_expires > now),
    )


class SQLUploadStore(UploadStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def _usage(self, conn: AsyncConnection, owner: str, now: datetime) -> UploadUsage:
        pending = func.sum(case((_T.c.state == int(UploadState.PENDING), 1), else_=0))
        row = (
            await conn.execute(
                select(func.coalesce(func.sum(_T.c.size), 0), func.coalesce(pending, 0)).where(
                    _held(owner, now)
                )
            )
        ).one()
        return UploadUsage(bytes=int(row[0]), pending_slots=int(row[1]))

    async def usage(self, owner: str, now: datetime) -> UploadUsage:
        async with self._storage.read() as conn:
            return await self._usage(conn, owner, now)

    async def holdings(self, owner: str, now: datetime) -> list[UploadRecord]:
        async with self._storage.read() as conn:
            rows = await conn.execute(select(_T).where(_held(owner, now)))
            return [_record(row) for row in rows]

    async def add_slot(
        self, record: UploadRecord, now: datetime, *, quota: int, max_slots: int
    ) -> UploadUsage | None:
        async with self._storage.begin(f"upload slot for {record.owner}") as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": record.owner}
                )
            usage = await self._usage(conn, record.owner, now)
            if usage.pending_slots >= max_slots or (quota and usage.bytes + record.size > quota):
                return usage
            await conn.execute(
                insert(_T).values(
                    id=record.id,
                    owner=record.owner,
                    filename=record.filename,
                    size=record.size,
                    content_type=record.content_type,
                    state=int(record.state),
                    slot_expires=record.slot_expires,
                    stored_at=record.stored_at,
                    expire_before=record.expire_before,
                )
            )
            return None

    async def get(self, id: str) -> UploadRecord | None:
        async with self._storage.read() as conn:
            row = (await conn.execute(select(_T).where(_T.c.id == id))).one_or_none()
            return _record(row) if row is not None else None

    async def begin_upload(self, id: str, now: datetime) -> UploadRecord | None:
        async with self._storage.begin(f"upload {id}") as conn:
            result = await conn.execute(
                update(_T)
                .where(
                    _T.c.id == id,
                    _T.c.state == int(UploadState.PENDING),
                    _T.c.slot_expires > now,
                )
                .values(state=int(UploadState.UPLOADING))
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(_T).where(_T.c.id == id))).one()
            return _record(row)

    async def finish_upload(self, id: str, content_type: str, now: datetime) -> None:
        async with self._storage.begin(f"upload {id}") as conn:
            await conn.execute(
                update(_T)
                .where(_T.c.id == id)
                .values(state=int(UploadState.STORED), stored_at=now, content_type=content_type)
            )

    async def abort_upload(self, id: str) -> None:
        async with self._storage.begin(f"upload {id}") as conn:
            await conn.execute(
                update(_T)
                .where(_T.c.id == id, _T.c.state == int(UploadState.UPLOADING))
                .values(state=int(UploadState.PENDING))
            )

    async def reset_uploads(self) -> int:
        async with self._storage.begin("upload states") as conn:
            result = await conn.execute(
                update(_T)
                .where(_T.c.state == int(UploadState.UPLOADING))
                .values(state=int(UploadState.PENDING))
            )
            return int(result.rowcount or 0)

    async def expired(
        self, now: datetime, stored_before: datetime | None, limit: int
    ) -> list[UploadRecord]:
        stored = _T.c.state == int(UploadState.STORED)
        conditions = [
            and_(_T.c.state == int(UploadState.PENDING), _T.c.slot_expires <= now),
            and_(stored, _T.c.expire_before <= now),
        ]
        if stored_before is not None:
            conditions.append(and_(stored, _T.c.stored_at < stored_before))
        async with self._storage.read() as conn:
            rows = await conn.execute(select(_T).where(or_(*conditions)).limit(limit))
            return [_record(row) for row in rows]

    async def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        async with self._storage.begin("expired uploads") as conn:
            await conn.execute(delete(_T).where(_T.c.id.in_(ids)))
