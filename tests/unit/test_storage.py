"""AccountStore and KVStore on SQLite and PostgreSQL (the same tests for both).

PostgreSQL: $DOVECOTE_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test). Each
test gets a fresh schema (via search_path), dropped afterwards, so runs are repeatable.
Unreachable PostgreSQL skips those cases, or fails them when CI=true.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from dovecote.storage import (
    AccountExists,
    SQLStorage,
    StorageError,
    derive_credentials,
    open_storage,
    verify_password,
)
from dovecote.storage.schema import account_kv, accounts, metadata, scram_credentials
from dovecote.storage.sql import head_revision

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
        return await open_storage(self.url, **self.engine_options)


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
        assert head_revision() == "0005"  # 0003 and 0004 (side by side) merged
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
