"""The XEP-0363 upload store on SQLite and PostgreSQL: quota and slot limits decided in
one transaction, single use of a slot, expiry."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from dovecote.storage.sql import SQLStorage
from dovecote.storage.upload import UploadRecord, UploadState, UploadUsage
from tests.unit.test_storage import backend, storage  # noqa: F401 (fixtures)

OWNER = "alice@example.org"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def slot(id: str, size: int = 100, owner: str = OWNER, expires: float = 300) -> UploadRecord:
    return UploadRecord(
        id=id.ljust(32, "x"),
        owner=owner,
        filename=f"{id}.bin",
        size=size,
        content_type="",
        state=UploadState.PENDING,
        slot_expires=NOW + timedelta(seconds=expires),
    )


async def test_quota_and_slot_limit(storage: SQLStorage) -> None:  # noqa: F811
    store = storage.upload
    assert await store.add_slot(slot("a", 600), NOW, quota=1000, max_slots=3) is None
    refused = await store.add_slot(slot("b", 500), NOW, quota=1000, max_slots=3)
    assert refused == UploadUsage(bytes=600, pending_slots=1)
    assert await store.add_slot(slot("b", 400), NOW, quota=1000, max_slots=3) is None
    assert await store.usage(OWNER, NOW) == UploadUsage(bytes=1000, pending_slots=2)
    # Slots past their link's expiry no longer count.
    later = NOW + timedelta(seconds=301)
    assert await store.usage(OWNER, later) == UploadUsage(bytes=0, pending_slots=0)
    # Slot limit, whatever the quota.
    for name in ("c", "d", "e"):
        await store.add_slot(slot(name, 1, expires=600), later, quota=0, max_slots=3)
    refused = await store.add_slot(slot("f", 1), later, quota=0, max_slots=3)
    assert refused is not None and refused.pending_slots == 3
    # Another account has its own.
    assert (
        await store.add_slot(slot("g", 1, owner="bob@example.org"), later, quota=0, max_slots=3)
        is None
    )


async def test_concurrent_slot_requests_respect_the_quota(storage: SQLStorage) -> None:  # noqa: F811
    store = storage.upload
    results = await asyncio.gather(
        *(store.add_slot(slot(f"s{i}", 300), NOW, quota=1000, max_slots=100) for i in range(8))
    )
    assert sum(result is None for result in results) == 3
    assert (await store.usage(OWNER, NOW)).bytes == 900


async def test_single_use_and_states(storage: SQLStorage) -> None:  # noqa: F811
    store = storage.upload
    record = slot("one")
    await store.add_slot(record, NOW, quota=0, max_slots=10)
    began = await asyncio.gather(*(store.begin_upload(record.id, NOW) for _ in range(5)))
    assert sum(result is not None for result in began) == 1
    await store.abort_upload(record.id)
    assert (await store.get(record.id)).state == UploadState.PENDING  # type: ignore[union-attr]
    assert await store.begin_upload(record.id, NOW + timedelta(seconds=301)) is None  # expired
    assert await store.begin_upload(record.id, NOW) is not None
    assert await store.reset_uploads() == 1
    assert await store.begin_upload(record.id, NOW) is not None
    await store.finish_upload(record.id, "image/png", NOW)
    stored = await store.get(record.id)
    assert stored is not None and stored.state == UploadState.STORED
    assert stored.stored_at == NOW and stored.content_type == "image/png"
    assert await store.begin_upload(record.id, NOW) is None


async def test_expired(storage: SQLStorage) -> None:  # noqa: F811
    store = storage.upload
    for record in (slot("pending", expires=10), slot("stored"), slot("ephemeral")):
        await store.add_slot(record, NOW, quota=0, max_slots=10)
    for name in ("stored", "ephemeral"):
        id = name.ljust(32, "x")
        await store.begin_upload(id, NOW)
        await store.finish_upload(id, "", NOW)
    ephemeral = replace(slot("ephemeral2"), expire_before=NOW + timedelta(seconds=5))
    await store.add_slot(ephemeral, NOW, quota=0, max_slots=10)
    await store.begin_upload(ephemeral.id, NOW)
    await store.finish_upload(ephemeral.id, "", NOW)

    def names(records: list[UploadRecord]) -> set[str]:
        return {record.id.rstrip("x") for record in records}

    assert names(await store.expired(NOW, None, 100)) == set()
    soon = NOW + timedelta(seconds=20)
    assert names(await store.expired(soon, None, 100)) == {"pending", "ephemeral2"}
    assert names(await store.expired(soon, NOW + timedelta(seconds=1), 100)) == {
        "pending",
        "ephemeral2",
        "stored",
        "ephemeral",
    }
    assert len(await store.expired(soon, NOW + timedelta(seconds=1), 2)) == 2
    await store.delete([record.id for record in await store.expired(soon, None, 100)])
    assert names(await store.expired(soon, None, 100)) == set()
    assert await store.get(slot("pending").id) is None
