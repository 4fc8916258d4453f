"""The SQL storage: SQLAlchemy 2 Core over asyncio, for SQLite and PostgreSQL alike.

SQLite (``sqlite+aiosqlite:///path``) is the embedded default; every connection runs in
WAL mode with a short busy timeout and enforced foreign keys, so the CLI and a running server
can use the same file at once. PostgreSQL (``postgresql+asyncpg://...``) is the same code
with another URL. `SQLStorage.open` brings the schema to the newest Alembic revision; running
it again (every restart) is harmless, and concurrent starts are serialized by a lock.

Every write transaction on SQLite starts with ``BEGIN IMMEDIATE`` (the write lock is taken
before the first read, so read-then-write sequences are atomic across connections and
processes); read-only transactions (`SQLStorage.read`) stay deferred. On PostgreSQL the
read-then-write sequences lock the owner's row (``FOR NO KEY UPDATE``) or are single
statements (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``).

A locked database and a full disk become `StorageBusy` / `StorageFull` (clients get
``resource-constraint``, type wait); every failed write is logged at ERROR with what was lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Integer,
    LargeBinary,
    String,
    Text,
    cast,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from dovecote.storage.base import (
    AccountExists,
    AccountStore,
    KVStore,
    OfflineStore,
    Roster,
    RosterItem,
    RosterStore,
    Storage,
    StorageBusy,
    StorageError,
    StorageFull,
)
from dovecote.storage.credentials import ScramCredentials
from dovecote.storage.schema import (
    account_data_tables,
    account_kv,
    accounts,
    offline_messages,
    roster_items,
    roster_pending,
    roster_removed,
    roster_versions,
    scram_credentials,
)
from dovecote.storage.sql_archive import (
    SQLArchiveStore,
    room_archive_messages,
    room_archive_usage,
)
from dovecote.storage.sql_muc import SQLMucStore, muc_affiliations
from dovecote.storage.sql_pubsub import (
    SQLPubSubStore,
    pubsub_affiliations,
    pubsub_subscriptions,
)
from dovecote.storage.sql_upload import SQLUploadStore

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)

#: Seconds a write waits for a lock held by another connection (SQLite busy_timeout,
#: PostgreSQL lock_timeout) before `StorageBusy`.
DEFAULT_BUSY_TIMEOUT = 1.0

#: Seconds a request may queue for a pooled connection. Longer than `busy_timeout`: a
#: burst (50 logins at once) queues here, while a stalled lock frees each connection after
#: busy_timeout, so nothing waits behind one stalled write for longer than that.
POOL_TIMEOUT = 30.0

#: Set while the current task holds `SQLStorage`'s SQLite write lock (a write begun
#: inside another one of the same task does not wait for itself).
_WRITING: contextvars.ContextVar[bool] = contextvars.ContextVar("dovecote_writing", default=False)

#: `Connection` execution option marking read-only transactions (BEGIN DEFERRED on SQLite).
_READ_ONLY = "dovecote_read_only"
#: `Connection` execution option of a migration: on SQLite it waits for another process's
#: migration (which can take long on a big database) instead of the short busy_timeout.
_MIGRATION = "dovecote_migration"
_MIGRATION_BUSY_TIMEOUT_MS = 600_000

#: PostgreSQL SQLSTATEs: disk_full, insufficient_resources, out_of_memory,
#: program_limit_exceeded would not be retried; lock_not_available (lock_timeout),
#: query_canceled (statement_timeout), deadlock_detected, serialization_failure may be.
_PG_FULL = frozenset({"53100", "53000", "53200"})
_PG_BUSY = frozenset({"55P03", "57014", "40P01", "40001"})

#: pg_advisory_xact_lock key serializing schema migrations ("dove" in ASCII).
_PG_MIGRATION_LOCK = 0x646F7665

#: Rows per IN (...) query: well below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


def _describe(exc: BaseException) -> str:
    """One line for a database error (without SQLAlchemy's background links)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    name = type(exc).__name__
    if not lines:
        return name
    # The driver adapters' generic "Error" class name says nothing: leave it out.
    return lines[0] if name == "Error" else f"{name}: {lines[0]}"


def storage_error(exc: BaseException) -> StorageError:
    """The `StorageError` for a database failure: `StorageFull` for a full disk,
    `StorageBusy` for a lock held too long (or no free connection), else a plain one."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):  # the connection pool: all in use
        return StorageBusy(f"no free database connection: {exc}")
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = _describe(exc)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    lowered = str(orig).lower()
    if sqlstate in _PG_FULL or "disk is full" in lowered or "no space left" in lowered:
        return StorageFull(message)
    if sqlstate in _PG_BUSY or "database is locked" in lowered or "table is locked" in lowered:
        return StorageBusy(message)
    if isinstance(orig, OSError) and orig.errno == 28:  # ENOSPC
        return StorageFull(message)
    return StorageError(message)


def _upgrade(connection: Connection) -> None:
    """Run the Alembic migrations to head on `connection`, holding a migration lock.

    On SQLite the transaction began with BEGIN IMMEDIATE (`_sqlite_on_begin`): DDL is
    transactional there, and a second process waits (busy_timeout) and then finds the
    schema at head.
    """
    from alembic import command
    from alembic.config import Config as AlembicConfig

    dialect = connection.dialect.name
    if dialect == "sqlite":
        # The write lock before Alembic runs: its context is global to the process, so
        # two openers must not be inside it at once.
        connection.exec_driver_sql("SELECT 1")
    elif dialect == "postgresql":
        # Another node may be migrating: wait for it as long as a migration may take,
        # not the short lock_timeout of ordinary writes (reset at the commit).
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {_MIGRATION_BUSY_TIMEOUT_MS}")
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    # "heads": independent branches of migrations (features developed side by side) all apply.
    command.upgrade(config, "heads")


def shipped_heads() -> set[str]:
    """The newest migration(s) shipped, read from the files without importing Alembic
    (about 10 MB of memory the server does not need once the schema is current)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        revision = re.search(r"^revision\b[^=]*=\s*[\"']([^\"']+)", text, re.M)
        down = re.search(r"^down_revision\b[^=]*=(.*)$", text, re.M)
        if revision is not None:
            revisions.add(revision.group(1))
        if down is not None:
            parents.update(re.findall(r"[\"']([^\"']+)[\"']", down.group(1)))
    return revisions - parents


def _schema_current(connection: Connection) -> bool:
    """True when the database is at every shipped head (then Alembic is not needed)."""
    try:
        found = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
        current = {str(row[0]) for row in found}
    except SQLAlchemyError:
        connection.rollback()  # no table yet (and PostgreSQL needs a clean transaction)
        return False
    connection.rollback()
    return current == shipped_heads()


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    # Several heads when branches were developed side by side: named together, sorted.
    heads = MigrationContext.configure(connection).get_current_heads()
    return ",".join(sorted(heads)) or None


def head_revision() -> str | None:
    """The newest migration(s) shipped with this version of Dovecote ("0003,0004" when
    independent branches are all heads)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return ",".join(sorted(ScriptDirectory.from_config(config).get_heads())) or None


def _sqlite_on_connect(busy_timeout_ms: int, dbapi_connection: Any, record: Any) -> None:
    # Per connection: WAL lets readers and one writer work at once across processes,
    # busy_timeout makes a writer wait for another (briefly: then StorageBusy) instead of
    # failing at once, and SQLite leaves foreign keys (ON DELETE CASCADE) off unless asked.
    # pysqlite's own transaction handling is off (isolation_level None): it sends no BEGIN
    # before a SELECT, so `_sqlite_on_begin` sends the BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # The database file is read with read(), never mapped: an I/O error on it is an
        # error code, not a SIGBUS (the -shm wal-index is always mapped: `_check_sqlite_files`).
        cursor.execute("PRAGMA mmap_size=0")
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except Exception as exc:  # the driver's OperationalError, through the adapter
            # A new file being switched to WAL by another connection at this moment
            # (several processes starting at once): WAL is a property of the file, so
            # the other connection's switch covers this one too.
            if "locked" not in str(exc):
                raise
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Write transactions take SQLite's write lock at BEGIN, before their first read, so
    a read-then-write (a counter, a count against a limit) cannot interleave with another
    connection's; read-only ones (`SQLStorage.read`) stay deferred and never wait."""
    options = conn.get_execution_options()
    if options.get(_MIGRATION, False):
        # Set back afterwards (`SQLStorage.migrate`).
        conn.exec_driver_sql(f"PRAGMA busy_timeout={_MIGRATION_BUSY_TIMEOUT_MS}")
    conn.exec_driver_sql("BEGIN DEFERRED" if options.get(_READ_ONLY, False) else "BEGIN IMMEDIATE")


def _prepare_sqlite_file(database: str) -> None:
    """Create the SQLite file and its directory, private: it holds the credentials.

    SQLite gives its -wal and -shm files the database file's permissions.
    """
    path = Path(database).expanduser()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    except OSError as exc:
        raise StorageError(f"cannot create {database!r}: {exc.strerror}") from None
    _check_sqlite_files(path)


def _check_sqlite_files(path: Path) -> None:
    """Refuse a database SQLite could open but not write: the file, its -wal and -shm
    files (when present) and the directory (SQLite creates -wal and -shm there) must be
    writable, the file system not read-only.

    SQLite maps the -shm file (the WAL index) into memory. Opened read-only it is the
    "readonly_shm" mode: every write fails ("attempt to write a readonly database"), and a
    -shm that cannot be extended or is truncated under the mapping kills the process with
    SIGBUS, nothing logged. No PRAGMA avoids the mapping except locking_mode=EXCLUSIVE (the
    index on the heap), which would lock the CLI out of a running server's database: so
    the start-up fails here instead, naming the file.
    """
    directory = path.parent
    try:
        read_only_fs = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError as exc:
        raise StorageError(f"cannot use {str(directory)!r}: {exc.strerror}") from None
    if read_only_fs:
        raise StorageError(f"{str(directory)!r} is on a read-only file system")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(
            f"directory {str(directory)!r} is not writable (SQLite creates its -wal and "
            "-shm files there)"
        )
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            os.close(os.open(candidate, os.O_RDWR))
        except FileNotFoundError:
            continue  # -wal and -shm come and go with the connections
        except OSError as exc:
            raise StorageError(
                f"{str(candidate)!r} is not writable ({exc.strerror}): SQLite needs to "
                "write the database and its -wal and -shm files"
            ) from None


class SQLStorage(Storage):
    """All stores on one SQLAlchemy async engine."""

    def __init__(
        self, url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, **engine_options: Any
    ) -> None:
        """`url` is an async SQLAlchemy URL (`Config.storage_url`); `busy_timeout` the
        seconds a write waits for a lock or a connection before `StorageBusy`;
        `engine_options` go to `create_async_engine` (e.g. ``connect_args`` to set a
        PostgreSQL search_path)."""
        self.url = url
        self.busy_timeout = busy_timeout
        self._engine_options = engine_options
        self._engine: AsyncEngine | None = None
        self._read_engine: AsyncEngine | None = None
        #: SQLite has one writer at a time: this process's writes take turns here, first
        #: come first served, instead of in SQLite's busy handler, whose polling gives up
        #: after `busy_timeout` under a burst (100 uploads at once). The busy timeout is
        #: then only for other processes (the CLI) holding the lock.
        self._write_lock: asyncio.Lock | None = None
        self.accounts: SQLAccountStore = SQLAccountStore(self)
        self.kv: SQLKVStore = SQLKVStore(self)
        self.roster: SQLRosterStore = SQLRosterStore(self)
        self.offline: SQLOfflineStore = SQLOfflineStore(self)
        self.archive: SQLArchiveStore = SQLArchiveStore(self)
        #: MUC room archives (XEP-0313 on a room JID): (room local, service domain).
        self.room_archive: SQLArchiveStore = SQLArchiveStore(
            self, room_archive_messages, room_archive_usage
        )
        self.pubsub: SQLPubSubStore = SQLPubSubStore(self)
        self.muc: SQLMucStore = SQLMucStore(self)
        #: XEP-0363 upload slots and stored files.
        self.upload: SQLUploadStore = SQLUploadStore(self)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<invalid url>"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageError("storage is not open")
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def open(self) -> None:
        if self._engine is not None:
            return
        try:
            url = make_url(self.url)
        except SQLAlchemyError as exc:
            raise StorageError(f"invalid storage url: {exc}") from None
        options: dict[str, Any] = dict(self._engine_options)
        backend = url.get_backend_name()
        busy_ms = max(1, round(self.busy_timeout * 1000))
        if backend == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:"):
                # One shared connection, or every connection would see its own database.
                options.setdefault("poolclass", StaticPool)
            else:
                if not database.startswith("file:"):
                    _prepare_sqlite_file(database)
                options.setdefault("pool_timeout", POOL_TIMEOUT)
        elif backend == "postgresql":
            options.setdefault("pool_pre_ping", True)
            options.setdefault("pool_timeout", POOL_TIMEOUT)
            # A write waiting for another's row lock gives up (55P03) instead of holding
            # its stanza, and its connection, for as long as the other takes.
            connect_args = dict(options.get("connect_args", {}))
            settings = dict(connect_args.get("server_settings", {}))
            settings.setdefault("lock_timeout", str(busy_ms))
            connect_args["server_settings"] = settings
            options["connect_args"] = connect_args
        try:
            engine = create_async_engine(url, **options)
        except (SQLAlchemyError, ImportError) as exc:
            raise StorageError(f"cannot use storage {self.safe_url}: {exc}") from None
        if backend == "sqlite":
            self._write_lock = asyncio.Lock()
            event.listen(
                engine.sync_engine, "connect", functools.partial(_sqlite_on_connect, busy_ms)
            )
            event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        self._engine = engine
        self._read_engine = engine.execution_options(**{_READ_ONLY: True})
        try:
            await self.migrate()
            if backend == "sqlite":
                await self._probe_write()
        except BaseException:
            self._engine = self._read_engine = None
            await engine.dispose()
            raise

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there already)."""
        try:
            async with self.read_engine.connect() as conn:
                if await conn.run_sync(_schema_current):
                    return
            async with self.engine.connect() as conn:
                await conn.execution_options(**{_MIGRATION: True})
                try:
                    await conn.run_sync(_upgrade)
                    await conn.commit()
                finally:
                    if self.dialect == "sqlite":
                        # Its long busy_timeout must not go back to the pool.
                        raw = await conn.get_raw_connection()
                        busy_ms = max(1, round(self.busy_timeout * 1000))
                        await raw.driver_connection.execute(f"PRAGMA busy_timeout={busy_ms}")
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot open storage {self.safe_url}: {_describe(exc)}") from exc

    async def _probe_write(self) -> None:
        """Take and release SQLite's write lock once: a database that can be read but not
        written (a read-only -shm or -wal) fails the start-up, not every later write."""
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE (`_sqlite_on_begin`)
                await conn.rollback()
        except (SQLAlchemyError, OSError) as exc:
            error = storage_error(exc)
            if isinstance(error, StorageBusy):
                return  # another process is writing: it can be written
            raise StorageError(f"cannot write storage {self.safe_url}: {error}") from exc

    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    @property
    def read_engine(self) -> AsyncEngine:
        """The engine for read-only transactions (deferred on SQLite)."""
        if self._read_engine is None:
            raise StorageError("storage is not open")
        return self._read_engine

    async def close(self) -> None:
        engine, self._engine, self._read_engine = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    @asynccontextmanager
    async def begin(self, what: str = "") -> AsyncIterator[AsyncConnection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite); database failures other than
        integrity errors become `StorageError` (`StorageBusy`, `StorageFull`), logged at
        ERROR naming `what` was not stored ("offline message for alice@example.org").

        IntegrityError passes through for the stores to turn into their own errors.
        """
        lock = self._write_lock
        if lock is None or _WRITING.get():
            async with self._write(what) as conn:
                yield conn
            return
        try:
            async with asyncio.timeout(POOL_TIMEOUT):
                await lock.acquire()
        except TimeoutError:
            error = StorageBusy(f"waited {POOL_TIMEOUT:.0f} s for the other writes")
            log.error("storage write failed, %s not stored: %s", what or "data", error)
            raise error from None
        token = _WRITING.set(True)
        try:
            async with self._write(what) as conn:
                yield conn
        finally:
            _WRITING.reset(token)
            lock.release()

    @asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            error = storage_error(exc)
            log.error("storage write failed, %s not stored: %s", what or "data", error)
            raise error from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (deferred on SQLite: it waits for no writer)."""
        try:
            async with self.read_engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise storage_error(exc) from exc

    async def __aenter__(self) -> SQLStorage:
        await self.open()
        return self


async def open_storage(
    url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, **engine_options: Any
) -> SQLStorage:
    """Open (and migrate) the storage at `url`, normally `Config.storage_url`."""
    storage = SQLStorage(url, busy_timeout=busy_timeout, **engine_options)
    await storage.open()
    return storage


def _credential_rows(
    local: str, domain: str, credentials: dict[str, ScramCredentials]
) -> list[dict[str, Any]]:
    if not credentials:
        raise ValueError(f"no credentials given for '{local}@{domain}'")
    return [
        {
            "domain": domain,
            "local": local,
            "hash_name": creds.hash_name,
            "salt": creds.salt,
            "iterations": creds.iterations,
            "stored_key": creds.stored_key,
            "server_key": creds.server_key,
        }
        for creds in credentials.values()
    ]


class SQLAccountStore(AccountStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def create(
        self, local: str, domain: str, credentials: dict[str, ScramCredentials]
    ) -> None:
        await self.create_many([(local, domain, credentials)])

    async def create_many(
        self, domain_items: list[tuple[str, str, dict[str, ScramCredentials]]]
    ) -> None:
        if not domain_items:
            return
        seen: set[tuple[str, str]] = set()
        account_rows: list[dict[str, Any]] = []
        credential_rows: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for local, domain, credentials in domain_items:
            if (domain, local) in seen:
                raise AccountExists(local, domain)
            seen.add((domain, local))
            account_rows.append({"domain": domain, "local": local, "created_at": now})
            credential_rows.extend(_credential_rows(local, domain, credentials))
        what = f"{len(account_rows)} new account(s)"
        try:
            async with self._storage.begin(what) as conn:
                if len(domain_items) > 1:
                    # Name the first existing account, as the interface promises.
                    found = await self._existing_pairs(conn, seen)
                    for local, domain, _ in domain_items:
                        if (domain, local) in found:
                            raise AccountExists(local, domain)
                await conn.execute(insert(accounts), account_rows)
                await conn.execute(insert(scram_credentials), credential_rows)
        except IntegrityError:
            # Created concurrently between our check and our insert.
            async with self._storage.read() as conn:
                found = await self._existing_pairs(conn, seen)
            local, domain, _ = next(
                (item for item in domain_items if (item[1], item[0]) in found),
                domain_items[0],
            )
            raise AccountExists(local, domain) from None

    @staticmethod
    async def _existing_pairs(
        conn: AsyncConnection, pairs: Iterable[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        pairs = list(pairs)
        found: set[tuple[str, str]] = set()
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            result = await conn.execute(
                select(accounts.c.domain, accounts.c.local).where(
                    tuple_(accounts.c.domain, accounts.c.local).in_(chunk)
                )
            )
            found.update((row.domain, row.local) for row in result)
        return found

    async def delete(self, local: str, domain: str) -> bool:
        """Delete the account, everything it owns, and its traces in other accounts, in
        one transaction: its item in every other local roster (a removal each, so that
        XEP-0237 clients are told) and the subscription requests it sent that wait there.
        A new account of the same name then inherits no subscription (RFC 6121 §3: a
        subscription is to the account, not the address). Others' blocklists keep it, as
        their owners chose to block the address.

        Its pubsub subscriptions (bare and full JIDs) and affiliations on every service
        (a pubsub domain's nodes, others' PEP nodes) and its affiliations in every stored
        MUC room go too: a namesake must not inherit ownership of a node or a room, nor a
        membership. A node or room whose only owner this was stays, ownerless, with its
        other affiliations (README, "Account deletion")."""
        bare = f"{local}@{domain}"
        async with self._storage.begin(f"deletion of account {bare}") as conn:
            await _lock_account(conn, local, domain)
            # Every per-account table explicitly (ON DELETE CASCADE is the safety net).
            for table in account_data_tables():
                await conn.execute(
                    delete(table).where(table.c.domain == domain, table.c.local == local)
                )
            result = await conn.execute(
                select(roster_items.c.domain, roster_items.c.local).where(
                    roster_items.c.contact == bare
                )
            )
            for row in result.all():
                owner = {"domain": row.domain, "local": row.local}
                version = await _bump_roster_version(conn, owner)
                await conn.execute(delete(roster_items).filter_by(**owner, contact=bare))
                await _upsert(
                    conn,
                    roster_removed,
                    {**owner, "contact": bare, "version": version},
                    ["domain", "local", "contact"],
                )
            await conn.execute(delete(roster_pending).where(roster_pending.c.contact == bare))
            subscriptions = pubsub_subscriptions.c.jid
            await conn.execute(
                delete(pubsub_subscriptions).where(
                    (subscriptions == bare) | subscriptions.startswith(f"{bare}/", autoescape=True)
                )
            )
            await conn.execute(delete(pubsub_affiliations).where(pubsub_affiliations.c.jid == bare))
            await conn.execute(delete(muc_affiliations).where(muc_affiliations.c.jid == bare))
            result = await conn.execute(
                delete(accounts).where(accounts.c.domain == domain, accounts.c.local == local)
            )
            return result.rowcount > 0

    async def exists(self, local: str, domain: str) -> bool:
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(accounts.c.local).where(
                    accounts.c.domain == domain, accounts.c.local == local
                )
            )
            return result.first() is not None

    async def existing(self, domain: str, locals_: Iterable[str]) -> set[str]:
        async with self._storage.read() as conn:
            found = await self._existing_pairs(conn, ((domain, local) for local in locals_))
        return {local for _, local in found}

    async def get_credentials(
        self, local: str, domain: str, hash_name: str
    ) -> ScramCredentials | None:
        table = scram_credentials
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(
                    table.c.salt, table.c.iterations, table.c.stored_key, table.c.server_key
                ).where(
                    table.c.domain == domain,
                    table.c.local == local,
                    table.c.hash_name == hash_name,
                )
            )
            row = result.first()
        if row is None:
            return None
        return ScramCredentials(
            hash_name, bytes(row.salt), row.iterations, bytes(row.stored_key),
            bytes(row.server_key),
        )  # fmt: skip

    async def set_credentials(
        self, local: str, domain: str, credentials: dict[str, ScramCredentials]
    ) -> bool:
        rows = _credential_rows(local, domain, credentials)
        table = scram_credentials
        try:
            async with self._storage.begin(f"credentials of {local}@{domain}") as conn:
                if not await _lock_account(conn, local, domain):
                    return False
                await conn.execute(
                    delete(table).where(table.c.domain == domain, table.c.local == local)
                )
                await conn.execute(insert(table), rows)
        except IntegrityError:
            return False  # the account was deleted meanwhile (foreign key)
        return True

    async def list_accounts(self, domain: str) -> list[str]:
        async with self._storage.read() as conn:
            result = await conn.execute(select(accounts.c.local).where(accounts.c.domain == domain))
            # Sorted here: database collations differ (PostgreSQL's follows the locale).
            return sorted(result.scalars())

    async def count(self, domain: str) -> int:
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(func.count()).select_from(accounts).where(accounts.c.domain == domain)
            )
            return int(result.scalar_one())


async def _upsert(
    conn: AsyncConnection, table: Any, values: dict[str, Any], keys: list[str]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE the other columns (SQLite and PostgreSQL)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table).values(**values)
    update = {name: getattr(stmt.excluded, name) for name in values if name not in keys}
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=[table.c[k] for k in keys], set_=update)
    )


async def _lock_account(conn: AsyncConnection, local: str, domain: str) -> bool:
    """Lock the account's row for this transaction (PostgreSQL ``FOR NO KEY UPDATE``: it
    serializes the owner's read-then-write sequences without blocking the foreign key
    checks of inserts; SQLite's BEGIN IMMEDIATE has locked the database already).
    False when there is no such account."""
    result = await conn.execute(
        select(accounts.c.local)
        .where(accounts.c.domain == domain, accounts.c.local == local)
        .with_for_update(key_share=True)
    )
    return result.first() is not None


async def _bump_roster_version(conn: AsyncConnection, owner: dict[str, str]) -> int:
    """Increment the owner's roster version (XEP-0237) and return it, in one statement:
    ``INSERT ... ON CONFLICT DO UPDATE SET version = version + 1 RETURNING version`` takes
    the row lock on PostgreSQL, so concurrent writers never get the same version."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(roster_versions).values(**owner, version=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[roster_versions.c.domain, roster_versions.c.local],
        set_={"version": roster_versions.c.version + 1},
    ).returning(roster_versions.c.version)
    result = await conn.execute(stmt)
    return int(result.scalar_one())


class SQLKVStore(KVStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def get(self, local: str, domain: str, key: str) -> str | None:
        table = account_kv
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(table.c.value).where(
                    table.c.domain == domain, table.c.local == local, table.c.key == key
                )
            )
            return result.scalar_one_or_none()

    async def set(self, local: str, domain: str, key: str, value: str | None) -> None:
        table = account_kv
        where = (table.c.domain == domain, table.c.local == local, table.c.key == key)
        try:
            async with self._storage.begin(f"{key!r} of {local}@{domain}") as conn:
                if value is None:
                    await conn.execute(delete(table).where(*where))
                    return
                await _upsert(
                    conn,
                    table,
                    {"domain": domain, "local": local, "key": key, "value": value},
                    ["domain", "local", "key"],
                )
        except IntegrityError:
            raise StorageError(f"no account '{local}@{domain}'") from None

    async def sizes(self, local: str, domain: str, prefix: str) -> dict[str, int]:
        table = account_kv
        async with self._storage.begin() as conn:
            result = await conn.execute(
                select(table.c.key, byte_length(conn, table.c.value)).where(
                    table.c.domain == domain,
                    table.c.local == local,
                    table.c.key.startswith(prefix, autoescape=True),
                )
            )
            return {row[0]: int(row[1]) for row in result}


def byte_length(conn: AsyncConnection, column: Any) -> Any:
    """The length of a text column in bytes (UTF-8): length() counts characters."""
    if conn.dialect.name == "postgresql":
        return func.octet_length(column)
    return func.length(cast(column, LargeBinary))


class SQLRosterStore(RosterStore):
    """Rosters with a version counter per user; removed items are kept as (contact,
    version) rows so that XEP-0237 can send only what changed."""

    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def load(self, local: str, domain: str) -> Roster:
        owner = {"domain": domain, "local": local}
        roster = Roster()
        async with self._storage.read() as conn:
            roster.version = await self._version(conn, owner)
            result = await conn.execute(select(roster_items).filter_by(**owner))
            for row in result:
                roster.items[row.contact] = _roster_item(row)
            result = await conn.execute(
                select(roster_pending.c.contact, roster_pending.c.stanza).filter_by(**owner)
            )
            roster.pending = {row.contact: row.stanza for row in result}
        return roster

    @staticmethod
    async def _version(conn: AsyncConnection, owner: dict[str, str]) -> int:
        result = await conn.execute(select(roster_versions.c.version).filter_by(**owner))
        return int(result.scalar_one_or_none() or 0)

    @staticmethod
    async def _bump(conn: AsyncConnection, owner: dict[str, str]) -> int:
        return await _bump_roster_version(conn, owner)

    async def put(self, local: str, domain: str, item: RosterItem) -> int:
        owner = {"domain": domain, "local": local}
        try:
            async with self._storage.begin(f"roster item {item.jid} of {local}@{domain}") as conn:
                version = await self._bump(conn, owner)
                await _upsert(
                    conn,
                    roster_items,
                    {
                        **owner,
                        "contact": item.jid,
                        "name": item.name,
                        "subscription": item.subscription,
                        "ask": item.ask,
                        "approved": item.approved,
                        "groups": json.dumps(list(item.groups)),
                        "version": version,
                    },
                    ["domain", "local", "contact"],
                )
                await conn.execute(delete(roster_removed).filter_by(**owner, contact=item.jid))
        except IntegrityError:
            raise StorageError(f"no account '{local}@{domain}'") from None
        return version

    async def remove(self, local: str, domain: str, contact: str) -> int:
        owner = {"domain": domain, "local": local}
        async with self._storage.begin(
            f"removal of {contact} from {local}@{domain}'s roster"
        ) as conn:
            version = await self._bump(conn, owner)
            await conn.execute(delete(roster_items).filter_by(**owner, contact=contact))
            await _upsert(
                conn,
                roster_removed,
                {**owner, "contact": contact, "version": version},
                ["domain", "local", "contact"],
            )
        return version

    async def changes_since(
        self, local: str, domain: str, version: int
    ) -> list[tuple[int, str, RosterItem | None]] | None:
        owner = {"domain": domain, "local": local}
        async with self._storage.read() as conn:
            current = await self._version(conn, owner)
            if version > current or version < 1:
                return None
            changes: list[tuple[int, str, RosterItem | None]] = []
            result = await conn.execute(
                select(roster_items).filter_by(**owner).where(roster_items.c.version > version)
            )
            changes.extend((row.version, row.contact, _roster_item(row)) for row in result)
            result = await conn.execute(
                select(roster_removed.c.contact, roster_removed.c.version)
                .filter_by(**owner)
                .where(roster_removed.c.version > version)
            )
            changes.extend((row.version, row.contact, None) for row in result)
        changes.sort(key=lambda change: change[0])
        return changes

    async def add_pending(self, local: str, domain: str, contact: str, stanza: str) -> None:
        what = f"subscription request from {contact} to {local}@{domain}"
        async with self._storage.begin(what) as conn:
            await _upsert(
                conn,
                roster_pending,
                {"domain": domain, "local": local, "contact": contact, "stanza": stanza},
                ["domain", "local", "contact"],
            )

    async def remove_pending(self, local: str, domain: str, contact: str) -> None:
        what = f"answer to {contact}'s subscription request to {local}@{domain}"
        async with self._storage.begin(what) as conn:
            await conn.execute(
                delete(roster_pending).filter_by(domain=domain, local=local, contact=contact)
            )


def _roster_item(row: Any) -> RosterItem:
    return RosterItem(
        row.contact, row.name, row.subscription, bool(row.ask), bool(row.approved),
        tuple(json.loads(row.groups)),
    )  # fmt: skip


class SQLOfflineStore(OfflineStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def store(
        self, local: str, domain: str, stanza: str, limit: int, max_bytes: int | None = None
    ) -> int | None:
        """One INSERT ... SELECT ... WHERE (count, bytes) fit: the check and the insert are
        one statement, so concurrent senders cannot overshoot the quota."""
        table = offline_messages
        size = len(stanza.encode())
        owner = (table.c.domain == domain, table.c.local == local)
        held = select(func.count()).select_from(table).where(*owner).scalar_subquery()
        fits = [held < limit]
        if max_bytes is not None:
            held_bytes = select(func.coalesce(func.sum(table.c.size), 0)).where(*owner)
            fits.append(held_bytes.scalar_subquery() + size <= max_bytes)
        row = select(
            literal(domain, String),
            literal(local, String),
            literal(stanza, Text),
            literal(datetime.now(UTC), table.c.stored_at.type),
            literal(size, Integer),
        ).where(*fits)
        statement = (
            insert(table)
            .from_select(["domain", "local", "stanza", "stored_at", "size"], row)
            .returning(table.c.id)
        )
        try:
            async with self._storage.begin(f"offline message for {local}@{domain}") as conn:
                # The owner's lock (BEGIN IMMEDIATE on SQLite, the account row on
                # PostgreSQL, where READ COMMITTED would let two inserts each count without
                # the other): concurrent stores never pass the limit.
                if not await _lock_account(conn, local, domain):
                    raise StorageError(f"no account '{local}@{domain}'")
                result = await conn.execute(statement)
                stored = result.scalar_one_or_none()
        except IntegrityError:
            raise StorageError(f"no account '{local}@{domain}'") from None
        return None if stored is None else int(stored)

    async def fetch(self, local: str, domain: str) -> list[tuple[int, str]]:
        table = offline_messages
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(table.c.id, table.c.stanza)
                .filter_by(domain=domain, local=local)
                .order_by(table.c.id)
            )
            return [(row.id, row.stanza) for row in result]

    async def delete(self, local: str, domain: str, ids: Iterable[int]) -> None:
        table = offline_messages
        ids = list(ids)
        async with self._storage.begin(
            f"removal of delivered offline messages of {local}@{domain}"
        ) as conn:
            for start in range(0, len(ids), _CHUNK):
                await conn.execute(
                    delete(table)
                    .filter_by(domain=domain, local=local)
                    .where(table.c.id.in_(ids[start : start + _CHUNK]))
                )

    async def count(self, local: str, domain: str) -> int:
        table = offline_messages
        async with self._storage.read() as conn:
            result = await conn.execute(
                select(func.count()).select_from(table).filter_by(domain=domain, local=local)
            )
            return int(result.scalar_one())
