"""The SQL stores on SQLite and PostgreSQL (the same tests for both).

PostgreSQL: $DOVECOTE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test). Each
test gets a fresh schema (via search_path), dropped afterwards, so runs are repeatable.
Unreachable PostgreSQL skips those cases, or fails them when CI=true.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select, text

from dovecote.storage import (
    AccountExists,
    SQLStorage,
    StorageBusy,
    StorageError,
    StorageFull,
    derive_credentials,
    open_storage,
    verify_password,
)
from dovecote.storage.archive import (
    ArchivedMessage,
    ArchiveFilter,
    ArchiveFull,
    new_archive_id,
)
from dovecote.storage.base import RosterItem
from dovecote.storage.pubsub import PubSubItem
from dovecote.storage.schema import (
    account_data_tables,
    account_kv,
    accounts,
    metadata,
    roster_items,
    roster_pending,
    scram_credentials,
)
from dovecote.storage.sql import MIGRATIONS_DIR, head_revision, storage_error

PG_URL = os.environ.get("DOVECOTE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
D = "example.org"

# Key derivation is the slow part: derive a few records once and reuse them.
CREDS = derive_credentials("password one")
CREDS_2 = derive_credentials("password two")


@dataclass
class Backend:
    name: str
    url: str
    engine_options: dict[str, Any] = field(default_factory=dict)

    async def open(self) -> SQLStorage:
        # Generous: these tests are about what is stored, not about how long a writer
        # waits on a loaded machine (the busy tests open their own storage).
        return await open_storage(self.url, busy_timeout=30, **self.engine_options)


async def _postgres_backend() -> AsyncIterator[Backend]:
    dsn = PG_URL.replace("+asyncpg", "", 1)
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        message = (
            f"PostgreSQL not reachable at {dsn} ({type(exc).__name__}: {exc}); "
            "start it or point DOVECOTE_TEST_PG at one"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    schema = f"dovecote_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Backend(
            "postgresql",
            "postgresql+asyncpg://" + dsn.split("://", 1)[1],
            {"connect_args": {"server_settings": {"search_path": schema}}},
        )
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        # A directory that does not exist yet: open() creates it.
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/data/dovecote.sqlite3")
    else:
        async for backend in _postgres_backend():
            yield backend


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[SQLStorage]:
    storage = await backend.open()
    try:
        yield storage
    finally:
        await storage.close()


async def _rows(storage: SQLStorage, table: Any, local: str, domain: str = D) -> int:
    async with storage.engine.connect() as conn:
        result = await conn.execute(
            select(func.count())
            .select_from(table)
            .where(table.c.domain == domain, table.c.local == local)
        )
        return int(result.scalar_one())


# --- AccountStore -----------------------------------------------------------------------


async def test_create_exists_and_get_credentials(storage: SQLStorage) -> None:
    assert not await storage.accounts.exists("alice", D)
    await storage.accounts.create("alice", D, CREDS)
    assert await storage.accounts.exists("alice", D)
    assert not await storage.accounts.exists("alice", "other.org")
    for hash_name, record in CREDS.items():
        assert await storage.accounts.get_credentials("alice", D, hash_name) == record
    assert await storage.accounts.get_credentials("alice", D, "SHA-512") is None
    assert await storage.accounts.get_credentials("nobody", D, "SHA-1") is None
    stored = await storage.accounts.get_credentials("alice", D, "SHA-256")
    assert stored is not None and verify_password("password one", stored)


async def test_create_existing_raises(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    with pytest.raises(AccountExists) as info:
        await storage.accounts.create("alice", D, CREDS_2)
    assert info.value.jid == "alice@example.org"
    # The first account's credentials are untouched.
    assert await storage.accounts.get_credentials("alice", D, "SHA-1") == CREDS["SHA-1"]
    # Same localpart on another domain is another account.
    await storage.accounts.create("alice", "other.org", CREDS)


async def test_create_without_credentials_refused(storage: SQLStorage) -> None:
    with pytest.raises(ValueError):
        await storage.accounts.create("alice", D, {})
    assert not await storage.accounts.exists("alice", D)


async def test_unicode_localparts(storage: SQLStorage) -> None:
    names = ["zoë", "ξένια", "日本", "a.b-c_d"]
    for name in names:
        await storage.accounts.create(name, D, CREDS)
    assert await storage.accounts.list_accounts(D) == sorted(names)
    assert await storage.accounts.exists("ξένια", D)


async def test_set_credentials(storage: SQLStorage) -> None:
    assert not await storage.accounts.set_credentials("alice", D, CREDS_2)
    await storage.accounts.create("alice", D, CREDS)
    assert await storage.accounts.set_credentials("alice", D, CREDS_2)
    record = await storage.accounts.get_credentials("alice", D, "SHA-256")
    assert record == CREDS_2["SHA-256"]
    assert record is not None
    assert verify_password("password two", record)
    assert not verify_password("password one", record)
    # Replacing with fewer hashes removes the others.
    assert await storage.accounts.set_credentials("alice", D, {"SHA-1": CREDS["SHA-1"]})
    assert await storage.accounts.get_credentials("alice", D, "SHA-256") is None
    assert await _rows(storage, scram_credentials, "alice") == 1


async def test_list_and_count(storage: SQLStorage) -> None:
    assert await storage.accounts.list_accounts(D) == []
    assert await storage.accounts.count(D) == 0
    for name in ["carol", "alice", "bob"]:
        await storage.accounts.create(name, D, CREDS)
    await storage.accounts.create("dave", "other.org", CREDS)
    assert await storage.accounts.list_accounts(D) == ["alice", "bob", "carol"]
    assert await storage.accounts.count(D) == 3
    assert await storage.accounts.list_accounts("other.org") == ["dave"]
    assert await storage.accounts.count("other.org") == 1
    assert await storage.accounts.count("nowhere.org") == 0


async def test_existing(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    await storage.accounts.create("bob", D, CREDS)
    assert await storage.accounts.existing(D, ["alice", "carol", "bob"]) == {"alice", "bob"}
    assert await storage.accounts.existing("other.org", ["alice"]) == set()
    assert await storage.accounts.existing(D, []) == set()


async def test_delete(storage: SQLStorage) -> None:
    assert not await storage.accounts.delete("alice", D)
    await storage.accounts.create("alice", D, CREDS)
    await storage.accounts.create("bob", D, CREDS)
    assert await storage.accounts.delete("alice", D)
    assert not await storage.accounts.exists("alice", D)
    assert await storage.accounts.get_credentials("alice", D, "SHA-1") is None
    assert not await storage.accounts.delete("alice", D)
    assert await storage.accounts.list_accounts(D) == ["bob"]
    # The name is free again.
    await storage.accounts.create("alice", D, CREDS_2)


async def test_delete_removes_all_account_data(storage: SQLStorage) -> None:
    for name in ("alice", "bob"):
        await storage.accounts.create(name, D, CREDS)
        await storage.kv.set(name, D, "vcard", f"<vCard>{name}</vCard>")
        await storage.kv.set(name, D, "private:{storage:bookmarks}storage", "<storage/>")
    assert await _rows(storage, account_kv, "alice") == 2
    assert await _rows(storage, scram_credentials, "alice") == 2
    assert await storage.accounts.delete("alice", D)
    for table in (accounts, scram_credentials, account_kv):
        assert await _rows(storage, table, "alice") == 0
    assert await storage.kv.get("alice", D, "vcard") is None
    # Another account's data stays.
    assert await storage.kv.get("bob", D, "vcard") == "<vCard>bob</vCard>"
    assert await _rows(storage, scram_credentials, "bob") == 2


async def test_foreign_keys_cascade_in_the_database(storage: SQLStorage) -> None:
    """ON DELETE CASCADE is enforced (on SQLite: PRAGMA foreign_keys=ON per connection)."""
    await storage.accounts.create("alice", D, CREDS)
    await storage.kv.set("alice", D, "vcard", "<vCard/>")
    async with storage.engine.begin() as conn:
        await conn.execute(
            accounts.delete().where(accounts.c.domain == D, accounts.c.local == "alice")
        )
    assert await _rows(storage, scram_credentials, "alice") == 0
    assert await _rows(storage, account_kv, "alice") == 0


async def test_create_many(storage: SQLStorage) -> None:
    await storage.accounts.create_many([])
    items = [(f"user{i}", D, CREDS) for i in range(1200)]  # more than one IN (...) chunk
    items.append(("x", "other.org", CREDS_2))
    await storage.accounts.create_many(items)
    assert await storage.accounts.count(D) == 1200
    assert await storage.accounts.get_credentials("x", "other.org", "SHA-1") == CREDS_2["SHA-1"]
    assert await _rows(storage, scram_credentials, "user1199") == 2


async def test_create_many_is_all_or_nothing(storage: SQLStorage) -> None:
    await storage.accounts.create("bob", D, CREDS)
    await storage.accounts.create("dave", D, CREDS)
    batch = [("alice", D, CREDS), ("bob", D, CREDS), ("carol", D, CREDS), ("dave", D, CREDS)]
    with pytest.raises(AccountExists) as info:
        await storage.accounts.create_many(batch)
    assert info.value.jid == "bob@example.org"  # the first duplicate
    assert await storage.accounts.list_accounts(D) == ["bob", "dave"]
    assert await _rows(storage, scram_credentials, "alice") == 0


async def test_create_many_duplicate_within_batch(storage: SQLStorage) -> None:
    batch = [("alice", D, CREDS), ("bob", D, CREDS), ("alice", D, CREDS_2)]
    with pytest.raises(AccountExists) as info:
        await storage.accounts.create_many(batch)
    assert info.value.jid == "alice@example.org"
    assert await storage.accounts.count(D) == 0


async def test_concurrent_creates_of_the_same_account(storage: SQLStorage) -> None:
    results = await asyncio.gather(
        *(storage.accounts.create("alice", D, CREDS) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(result is None for result in results) == 1
    assert all(isinstance(r, AccountExists) for r in results if r is not None)
    assert await storage.accounts.count(D) == 1


# --- KVStore ----------------------------------------------------------------------------


async def test_kv(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    await storage.accounts.create("bob", D, CREDS)
    assert await storage.kv.get("alice", D, "vcard") is None
    await storage.kv.set("alice", D, "vcard", "<vCard xmlns='vcard-temp'/>")
    assert await storage.kv.get("alice", D, "vcard") == "<vCard xmlns='vcard-temp'/>"
    await storage.kv.set("alice", D, "vcard", "<vCard>zoë</vCard>")  # replace
    assert await storage.kv.get("alice", D, "vcard") == "<vCard>zoë</vCard>"
    assert await storage.kv.get("bob", D, "vcard") is None
    assert await storage.kv.get("alice", D, "other") is None
    big = "<x>" + "y" * 200_000 + "</x>"
    await storage.kv.set("bob", D, "vcard", big)
    assert await storage.kv.get("bob", D, "vcard") == big
    await storage.kv.set("alice", D, "vcard", None)  # remove
    assert await storage.kv.get("alice", D, "vcard") is None
    await storage.kv.set("alice", D, "vcard", None)  # removing nothing is fine
    assert await storage.kv.get("bob", D, "vcard") == big


async def test_kv_needs_an_account(storage: SQLStorage) -> None:
    with pytest.raises(StorageError):
        await storage.kv.set("nobody", D, "vcard", "<vCard/>")
    assert await storage.kv.get("nobody", D, "vcard") is None


# --- Lifecycle and migrations -----------------------------------------------------------


async def test_data_persists_across_restart(backend: Backend) -> None:
    storage = await backend.open()
    await storage.accounts.create("alice", D, CREDS)
    await storage.kv.set("alice", D, "vcard", "<vCard/>")
    await storage.close()
    with pytest.raises(StorageError, match="not open"):
        await storage.accounts.exists("alice", D)
    storage = await backend.open()
    try:
        assert await storage.accounts.list_accounts(D) == ["alice"]
        assert await storage.accounts.get_credentials("alice", D, "SHA-256") == CREDS["SHA-256"]
        assert await storage.kv.get("alice", D, "vcard") == "<vCard/>"
    finally:
        await storage.close()


async def test_migrations_are_idempotent(backend: Backend) -> None:
    storage = await backend.open()
    try:
        assert head_revision() == "0013"  # side-by-side branches merged in 0005, 0011, 0012
        assert await storage.schema_revision() == head_revision()
        await storage.accounts.create("alice", D, CREDS)
        await storage.migrate()
        await storage.migrate()
        assert await storage.schema_revision() == head_revision()
        # A second process-like opener (the CLI beside a running server).
        second = await backend.open()
        try:
            assert await second.accounts.exists("alice", D)
        finally:
            await second.close()
        assert await storage.accounts.exists("alice", D)
    finally:
        await storage.close()


async def test_concurrent_opens_migrate_once(backend: Backend) -> None:
    """Two starts at once on an empty database: the migration lock serializes them."""
    storages = await asyncio.gather(backend.open(), backend.open(), backend.open())
    try:
        for storage in storages:
            assert await storage.schema_revision() == head_revision()
        await storages[0].accounts.create("alice", D, CREDS)
        assert await storages[2].accounts.exists("alice", D)
    finally:
        for storage in storages:
            await storage.close()


async def test_migrated_schema_matches_schema_py(storage: SQLStorage) -> None:
    """The hand-written migrations produce exactly what schema.py declares."""

    def diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with storage.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_sqlite_pragmas_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "dovecote.sqlite3"
    storage = await open_storage(f"sqlite+aiosqlite:///{path}")
    try:
        async with storage.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 1000
            assert (await conn.exec_driver_sql("PRAGMA mmap_size")).scalar() == 0
    finally:
        await storage.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


async def test_two_storages_write_the_same_sqlite_file(tmp_path: Path) -> None:
    """The CLI and a running server share the file (WAL, busy_timeout)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/dovecote.sqlite3"
    server, cli = await open_storage(url), await open_storage(url)
    try:
        await asyncio.gather(
            server.accounts.create_many([(f"s{i}", D, CREDS) for i in range(300)]),
            cli.accounts.create_many([(f"c{i}", D, CREDS) for i in range(300)]),
        )
        assert await server.accounts.count(D) == 600
        assert await cli.accounts.delete("s1", D)
        assert not await server.accounts.exists("s1", D)
    finally:
        await server.close()
        await cli.close()


async def test_in_memory_sqlite() -> None:
    storage = await open_storage("sqlite+aiosqlite://")
    try:
        await storage.accounts.create("alice", D, CREDS)
        assert await storage.accounts.list_accounts(D) == ["alice"]
    finally:
        await storage.close()


async def test_unreachable_database_is_a_storage_error() -> None:
    storage = SQLStorage("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/test")
    with pytest.raises(StorageError) as info:
        await storage.open()
    message = str(info.value)
    assert "cannot open storage" in message
    assert "hunter2" not in message
    assert "\n" not in message


async def test_uncreatable_sqlite_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot create"):
        await open_storage(f"sqlite+aiosqlite:///{blocker}/sub/dovecote.sqlite3")


async def test_sql_text_works_through_engine(storage: SQLStorage) -> None:
    # The alembic_version table is where migrations record the revision.
    async with storage.engine.connect() as conn:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
        versions = sorted(result.scalars())
    assert ",".join(versions) == head_revision()  # one row per head


def test_shipped_heads_match_alembic() -> None:
    """The cheap reading of the migration files agrees with Alembic's."""
    from dovecote.storage.sql import shipped_heads

    assert ",".join(sorted(shipped_heads())) == head_revision()


def test_a_current_schema_opens_without_alembic(tmp_path: Path) -> None:
    """Once migrated, opening the storage does not load Alembic (memory of the server)."""
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    script = (
        "import asyncio, sys\n"
        "from dovecote.storage.sql import open_storage\n"
        "async def main():\n"
        f"    storage = await open_storage({url!r})\n"
        "    await storage.close()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.strip() == "True", first.stderr  # it migrated the new database
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.stdout.strip() == "False", again.stderr


# --- quotas: offline and archive bytes, KV sizes, migration 0006 ----------------------------
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def archived(n: int, size: int = 1000, when: datetime.datetime = NOW) -> ArchivedMessage:
    body = f"{n:04d}" + "é" * ((size - 40) // 2)  # two bytes each in UTF-8
    return ArchivedMessage(new_archive_id(), when, "bob@example.org", None, f"<m>{body}</m>")


async def test_concurrent_offline_stores_never_overshoot_the_count(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    results = await asyncio.gather(
        *(storage.offline.store("alice", D, f"<m>{n}</m>", 5) for n in range(40))
    )
    assert len([r for r in results if r is not None]) == 5
    assert await storage.offline.count("alice", D) == 5


async def test_concurrent_offline_stores_never_overshoot_the_bytes(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    stanza = "<m>" + "ü" * 498 + "</m>"  # 1003 bytes, 505 characters
    results = await asyncio.gather(
        *(storage.offline.store("alice", D, stanza, 1000, 5000) for _ in range(30))
    )
    assert len([r for r in results if r is not None]) == 4  # a fifth: 5015 bytes
    assert await storage.offline.count("alice", D) == 4


async def test_archive_expires_the_oldest_over_the_quota(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    await storage.accounts.create("bob", D, CREDS)
    archive = storage.archive
    archive.set_quota(3500)
    await asyncio.gather(*(archive.enqueue("alice", D, archived(n)) for n in range(10)))
    await archive.append("bob", D, archived(99))
    page = await archive.query("alice", D, ArchiveFilter(), 50)
    assert [m.stanza[3:7] for m in page.messages] == ["0007", "0008", "0009"]
    assert await archive.usage("alice", D) == sum(len(m.stanza.encode()) for m in page.messages)
    assert await archive.usage("bob", D) == len(archived(99).stanza.encode())
    # Retention keeps the totals right.
    removed = await archive.delete_older_than(NOW + datetime.timedelta(seconds=1))
    assert removed == 4
    assert await archive.usage("alice", D) == 0 and await archive.usage("bob", D) == 0


async def test_archive_stop_policy_refuses_over_the_quota(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    archive = storage.archive
    archive.set_quota(3500, "stop")
    futures = [archive.enqueue("alice", D, archived(n)) for n in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[:3] == [None, None, None]
    assert all(isinstance(r, ArchiveFull) for r in results[3:])
    assert await archive.count("alice", D) == 3


async def test_room_archives_need_no_account_and_are_apart(storage: SQLStorage) -> None:
    """MUC room archives (migration 0010): keyed like user archives, no account behind."""
    rooms = storage.room_archive
    first, second = archived(1), archived(2)
    await rooms.append("lobby", "conference." + D, first)
    await rooms.append("lobby", "conference." + D, second)
    await rooms.append("other", "conference." + D, archived(3))
    page = await rooms.query("lobby", "conference." + D, ArchiveFilter(), 10)
    assert [m.id for m in page.messages] == [first.id, second.id]
    # Not in anyone's user archive.
    assert await storage.archive.count("lobby", "conference." + D) == 0
    # A retraction leaves a tombstone in place: same id, same place, new size counted.
    assert await rooms.replace("lobby", "conference." + D, first.id, "<tombstone/>")
    assert not await rooms.replace("lobby", "conference." + D, "no-such-id", "<x/>")
    page = await rooms.query("lobby", "conference." + D, ArchiveFilter(), 10)
    assert (page.messages[0].id, page.messages[0].stanza) == (first.id, "<tombstone/>")
    assert await rooms.usage("lobby", "conference." + D) == len("<tombstone/>") + len(
        second.stanza.encode()
    )
    # A destroyed room's archive goes, the other room's stays.
    assert await rooms.delete_archive("lobby", "conference." + D) == 2
    assert await rooms.count("lobby", "conference." + D) == 0
    assert await rooms.usage("lobby", "conference." + D) == 0
    assert await rooms.count("other", "conference." + D) == 1


async def test_kv_sizes_are_bytes(storage: SQLStorage) -> None:
    await storage.accounts.create("alice", D, CREDS)
    await storage.kv.set("alice", D, "private:urn:a", "<q>ü</q>")
    await storage.kv.set("alice", D, "private:urn:b%", "<q/>")
    await storage.kv.set("alice", D, "privateX", "<x/>")
    await storage.kv.set("alice", D, "vcard", "<vCard/>")
    assert await storage.kv.sizes("alice", D, "private:") == {
        "private:urn:a": 9,
        "private:urn:b%": 4,
    }
    assert await storage.kv.sizes("alice", D, "private:urn:b%") == {"private:urn:b%": 4}


async def test_migration_0006_sizes_what_was_stored(tmp_path: Path) -> None:
    """Messages stored before the quotas count towards them after the upgrade."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}"
    old = SQLStorage(url)
    await old.open()  # creates the file and the schema at head
    engine = old.engine

    def to(revision: str, downgrade: bool = False):  # type: ignore[no-untyped-def]
        def run(connection):  # type: ignore[no-untyped-def]
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.set_main_option("path_separator", "os")
            config.attributes["connection"] = connection
            (command.downgrade if downgrade else command.upgrade)(config, revision)

        return run

    async with engine.begin() as conn:
        await conn.run_sync(to("0005", downgrade=True))
    await old.accounts.create("alice", D, CREDS)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO offline_messages (domain, local, stanza, stored_at) "
                "VALUES (:d, 'alice', '<m>ü</m>', '2026-12-01 00:00:00')"
            ),
            {"d": D},
        )
        await conn.execute(
            text(
                "INSERT INTO archive_messages (domain, local, id, stamp, with_bare, stanza) "
                "VALUES (:d, 'alice', 'a1', '2026-12-01 00:00:00', 'bob@x', '<m>üü</m>')"
            ),
            {"d": D},
        )
    await old.close()
    migrated = await open_storage(url)  # migrates to head again
    try:
        assert await migrated.archive.usage("alice", D) == 11
        # 9 bytes stored: another 9 do not fit into 14, 4 do.
        assert not await migrated.offline.store("alice", D, "<m>12</m>", 100, 14)
        assert await migrated.offline.store("alice", D, "<m/>", 100, 14)
    finally:
        await migrated.close()


# --- Atomic read-then-write across connection pools (two processes' worth) ---------------


async def _second_opener(backend: Backend) -> SQLStorage:
    """Another SQLStorage on the same database: its own pool, like another process."""
    storage = SQLStorage(backend.url, **backend.engine_options)
    # Generous: these tests are about atomicity, not about how long a writer waits.
    storage.busy_timeout = 30
    await storage.open()
    return storage


async def test_concurrent_roster_writes_get_unique_consecutive_versions(
    backend: Backend,
) -> None:
    """XEP-0237: every change gets its own version, also across processes (the roster
    module's lock is per process). Without BEGIN IMMEDIATE (SQLite) / the atomic
    increment (PostgreSQL) concurrent writers read the same version and reuse it."""
    first, second = await _second_opener(backend), await _second_opener(backend)
    try:
        await first.accounts.create("alice", D, CREDS)
        writes = 100
        versions = await asyncio.gather(
            *(
                (first if i % 2 else second).roster.put(
                    "alice", D, RosterItem(f"contact{i}@{D}", subscription="both")
                )
                for i in range(writes)
            )
        )
        assert sorted(versions) == list(range(1, writes + 1))
        roster = await first.roster.load("alice", D)
        assert roster.version == writes
        assert len(roster.items) == writes
        # Removals too, from both openers.
        removed = await asyncio.gather(
            *(
                (first if i % 2 else second).roster.remove("alice", D, f"contact{i}@{D}")
                for i in range(20)
            )
        )
        assert sorted(removed) == list(range(writes + 1, writes + 21))
    finally:
        await first.close()
        await second.close()


async def test_concurrent_offline_stores_never_pass_the_limit(backend: Backend) -> None:
    """XEP-0160 quota: 200 stores at once with a limit of 10 keep exactly 10 (the count
    and the insert in one locked transaction)."""
    first, second = await _second_opener(backend), await _second_opener(backend)
    try:
        await first.accounts.create("alice", D, CREDS)
        limit = 10
        stored = await asyncio.gather(
            *(
                (first if i % 2 else second).offline.store(
                    "alice", D, f"<message id='m{i}'/>", limit
                )
                for i in range(200)
            )
        )
        assert len([row for row in stored if row is not None]) == limit
        assert await first.offline.count("alice", D) == limit
        assert await second.offline.count("alice", D) == limit
    finally:
        await first.close()
        await second.close()


async def test_offline_store_without_account(storage: SQLStorage) -> None:
    with pytest.raises(StorageError, match="no account"):
        await storage.offline.store("nobody", D, "<message/>", 10)


# --- Account deletion cleans up after the account --------------------------------------


async def _fill_account(storage: SQLStorage, local: str) -> None:
    """Data in every store for `local`."""
    await storage.kv.set(local, D, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
    await storage.kv.set(local, D, "private:{storage:bookmarks}storage", "<storage/>")
    await storage.kv.set(local, D, "blocklist", '["spammer@example.com"]')
    await storage.roster.put(local, D, RosterItem(f"alice@{D}", subscription="both"))
    await storage.roster.add_pending(local, D, f"carol@{D}", "<presence type='subscribe'/>")
    assert await storage.offline.store(local, D, "<message/>", 10)
    await storage.archive.append(
        local,
        D,
        ArchivedMessage("a1", datetime.datetime.now(UTC), f"alice@{D}", None, "<message/>"),
    )
    assert await storage.pubsub.create_node(local, D, "urn:xmpp:avatar:data", {})
    now = datetime.datetime.now(UTC)
    await storage.pubsub.publish(
        local, D, "urn:xmpp:avatar:data", PubSubItem("i1", "<data/>", f"{local}@{D}", now), 1
    )


async def test_delete_removes_the_account_from_contacts(storage: SQLStorage) -> None:
    """Issue 14: bob's deletion leaves no trace: not in alice's roster (a removal at a new
    version, for XEP-0237), not as a request waiting in carol's, none of his own data in
    any table; a new bob starts empty and subscribed to nobody."""
    for name in ("alice", "bob", "carol"):
        await storage.accounts.create(name, D, CREDS)
    await storage.roster.put("alice", D, RosterItem(f"bob@{D}", subscription="both"))
    await storage.roster.put("alice", D, RosterItem(f"carol@{D}", subscription="both"))
    await storage.roster.add_pending("carol", D, f"bob@{D}", "<presence type='subscribe'/>")
    await storage.kv.set("alice", D, "blocklist", f'["bob@{D}"]')
    await _fill_account(storage, "bob")
    before = (await storage.roster.load("alice", D)).version

    assert await storage.accounts.delete("bob", D)

    alice = await storage.roster.load("alice", D)
    assert list(alice.items) == [f"carol@{D}"]
    assert alice.version == before + 1
    assert await storage.roster.changes_since("alice", D, before) == [
        (before + 1, f"bob@{D}", None)
    ]
    assert (await storage.roster.load("carol", D)).pending == {}
    for table in account_data_tables():
        assert await _rows(storage, table, "bob") == 0, table.name
    async with storage.engine.connect() as conn:
        for table in (roster_items, roster_pending):
            result = await conn.execute(
                select(func.count()).select_from(table).where(table.c.contact == f"bob@{D}")
            )
            assert result.scalar_one() == 0, table.name
    # Others' blocklists keep the address (like Prosody): their owners blocked it.
    assert await storage.kv.get("alice", D, "blocklist") == f'["bob@{D}"]'

    await storage.accounts.create("bob", D, CREDS)
    bob = await storage.roster.load("bob", D)
    assert (bob.items, bob.pending) == ({}, {})
    assert await storage.offline.fetch("bob", D) == []
    assert await storage.archive.count("bob", D) == 0
    assert await storage.pubsub.list_nodes("bob", D) == []
    assert await storage.kv.get("bob", D, "vcard-temp") is None
    assert await storage.kv.get("bob", D, "private:{storage:bookmarks}storage") is None


# --- Locked database, full disk: errors the client may retry ------------------------------


async def test_locked_sqlite_database_is_storage_busy_quickly(tmp_path: Path) -> None:
    """Another connection holds the write lock: a write gives up after busy_timeout with
    StorageBusy (resource-constraint for the client), reads still work (deferred)."""
    import sqlite3

    path = tmp_path / "dovecote.sqlite3"
    storage = await open_storage(f"sqlite+aiosqlite:///{path}", busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        await storage.accounts.create("alice", D, CREDS)
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageBusy):
            await storage.kv.set("alice", D, "vcard-temp", "<vCard/>")
        with pytest.raises(StorageBusy):
            await storage.offline.store("alice", D, "<message/>", 10)
        assert await storage.accounts.exists("alice", D)
        blocker.execute("ROLLBACK")
        await storage.kv.set("alice", D, "vcard-temp", "<vCard/>")
    finally:
        blocker.close()
        await storage.close()


def test_storage_error_classification() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    def wrapped(message: str) -> OperationalError:
        return OperationalError("INSERT", {}, sqlite3.OperationalError(message))

    assert isinstance(storage_error(wrapped("database or disk is full")), StorageFull)
    assert isinstance(storage_error(wrapped("database is locked")), StorageBusy)
    plain = storage_error(wrapped("no such table: x"))
    assert type(plain) is StorageError and "no such table" in str(plain)

    class PgError(Exception):
        sqlstate = "53100"

    assert isinstance(storage_error(OperationalError("x", {}, PgError("full"))), StorageFull)
    PgError.sqlstate = "55P03"
    assert isinstance(storage_error(OperationalError("x", {}, PgError("lock"))), StorageBusy)


async def test_failed_write_is_logged_with_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "dovecote.sqlite3"
    storage = await open_storage(f"sqlite+aiosqlite:///{path}", busy_timeout=0.1)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        await storage.accounts.create("alice", D, CREDS)
        blocker.execute("BEGIN EXCLUSIVE")
        with caplog.at_level("ERROR", logger="dovecote.storage.sql"):
            with pytest.raises(StorageBusy):
                await storage.offline.store("alice", D, "<message/>", 10)
        assert any(
            r.levelname == "ERROR" and "offline message for alice@example.org" in r.getMessage()
            for r in caplog.records
        ), caplog.text
    finally:
        blocker.close()
        await storage.close()


# --- SQLite files SQLite cannot write: refused at start-up --------------------------------


def _chattr(flag: str, path: Path) -> bool:
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_unwritable_shm_file_fails_the_start(tmp_path: Path) -> None:
    """An immutable -shm (root ignores permissions, not chattr +i): SQLite would open it
    read-only and fail every write ("attempt to write a readonly database") while reads
    work; the storage refuses to open instead, naming the file."""
    path = tmp_path / "dovecote.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    running = await open_storage(url)  # keeps a connection: -wal and -shm exist
    shm = Path(f"{path}-shm")
    try:
        if not _chattr("+i", shm):
            pytest.skip("chattr +i is not available here")
        try:
            with pytest.raises(StorageError, match="-shm"):
                await open_storage(url)
        finally:
            _chattr("-i", shm)
    finally:
        await running.close()


async def test_unwritable_directory_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory must be writable (SQLite creates -wal and -shm there); as root the
    check is exercised with os.access answering no."""
    path = tmp_path / "dovecote.sqlite3"
    real_access = os.access

    def access(target: Any, mode: int, **kwargs: Any) -> bool:
        if Path(target) == tmp_path:
            return False
        return real_access(target, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(StorageError, match="not writable"):
        await open_storage(f"sqlite+aiosqlite:///{path}")


async def test_sqlite_writes_of_one_process_take_turns(tmp_path: Path) -> None:
    """Regression (bench/web.py: 100 uploads at once got 503, "database is locked"):
    concurrent write transactions of one process waited in SQLite's busy handler and gave
    up after busy_timeout. They now queue in the process, first come first served, and
    the busy timeout is left for other processes."""
    storage = await open_storage(
        f"sqlite+aiosqlite:///{tmp_path}/dovecote.sqlite3", busy_timeout=0.02
    )
    try:
        await storage.accounts.create("alice", D, CREDS)

        async def slow_write(n: int) -> None:
            async with storage.begin(f"write {n}") as conn:
                await conn.execute(
                    insert(account_kv).values(domain=D, local="alice", key=f"k{n}", value=str(n))
                )
                await asyncio.sleep(0.03)  # longer than busy_timeout

        results = await asyncio.gather(*(slow_write(n) for n in range(15)), return_exceptions=True)
        assert results == [None] * 15
        for n in range(15):
            assert await storage.kv.get("alice", D, f"k{n}") == str(n)
        # A write begun inside another one of the same task does not wait for itself
        # (on the process's lock: it meets SQLite's lock and gives up after busy_timeout).
        async with storage.begin("outer"):
            async with asyncio.timeout(5):
                with pytest.raises(StorageBusy):
                    async with storage.begin("inner"):
                        pass
    finally:
        await storage.close()
