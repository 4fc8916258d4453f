"""The SQL storage: SQLAlchemy 2 Core over asyncio, for SQLite and PostgreSQL alike.

SQLite (``sqlite+aiosqlite:///path``) is the embedded default; every connection runs in
WAL mode with a busy timeout and enforced foreign keys, so the CLI and a running server can
use the same file at once. PostgreSQL (``postgresql+asyncpg://...``) is the same code with
another URL. `SQLStorage.open` brings the schema to the newest Alembic revision; running it
again (every restart) is harmless, and concurrent starts are serialized by a lock.
"""

from __future__ import annotations

import json
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
    StorageError,
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
from dovecote.storage.sql_archive import SQLArchiveStore
from dovecote.storage.sql_pubsub import SQLPubSubStore

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

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


def _upgrade(connection: Connection) -> None:
    """Run the Alembic migrations to head on `connection`, holding a migration lock."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    dialect = connection.dialect.name
    if dialect == "sqlite":
        # A write transaction from the start: SQLite DDL is transactional, and a second
        # process waits here (busy_timeout) and then finds the schema at head.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
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


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Per connection: WAL lets readers and one writer work at once across processes,
    # busy_timeout makes a writer wait for another instead of failing, and SQLite leaves
    # foreign keys (ON DELETE CASCADE) off unless asked.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
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


class SQLStorage(Storage):
    """All stores on one SQLAlchemy async engine."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        """`url` is an async SQLAlchemy URL (`Config.storage_url`); `engine_options` go to
        `create_async_engine` (e.g. ``connect_args`` to set a PostgreSQL search_path)."""
        self.url = url
        self._engine_options = engine_options
        self._engine: AsyncEngine | None = None
        self.accounts: SQLAccountStore = SQLAccountStore(self)
        self.kv: SQLKVStore = SQLKVStore(self)
        self.roster: SQLRosterStore = SQLRosterStore(self)
        self.offline: SQLOfflineStore = SQLOfflineStore(self)
        self.archive: SQLArchiveStore = SQLArchiveStore(self)
        self.pubsub: SQLPubSubStore = SQLPubSubStore(self)

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
        if backend == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:"):
                # One shared connection, or every connection would see its own database.
                options.setdefault("poolclass", StaticPool)
            elif not database.startswith("file:"):
                _prepare_sqlite_file(database)
        elif backend == "postgresql":
            options.setdefault("pool_pre_ping", True)
        try:
            engine = create_async_engine(url, **options)
        except (SQLAlchemyError, ImportError) as exc:
            raise StorageError(f"cannot use storage {self.safe_url}: {exc}") from None
        if backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        self._engine = engine
        try:
            await self.migrate()
        except BaseException:
            self._engine = None
            await engine.dispose()
            raise

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is there already)."""
        try:
            async with self.engine.connect() as conn:
                if await conn.run_sync(_schema_current):
                    return
                await conn.run_sync(_upgrade)
                await conn.commit()
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot open storage {self.safe_url}: {_describe(exc)}") from exc

    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; database failures other than integrity errors become StorageError.

        IntegrityError passes through for the stores to turn into their own errors.
        """
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(_describe(exc)) from exc

    async def __aenter__(self) -> SQLStorage:
        await self.open()
        return self


async def open_storage(url: str, **engine_options: Any) -> SQLStorage:
    """Open (and migrate) the storage at `url`, normally `Config.storage_url`."""
    storage = SQLStorage(url, **engine_options)
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
        try:
            async with self._storage.begin() as conn:
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
            async with self._storage.begin() as conn:
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
        async with self._storage.begin() as conn:
            # Every per-account table explicitly (ON DELETE CASCADE is the safety net).
            for table in account_data_tables():
                await conn.execute(
                    delete(table).where(table.c.domain == domain, table.c.local == local)
                )
            result = await conn.execute(
                delete(accounts).where(accounts.c.domain == domain, accounts.c.local == local)
            )
            return result.rowcount > 0

    async def exists(self, local: str, domain: str) -> bool:
        async with self._storage.begin() as conn:
            result = await conn.execute(
                select(accounts.c.local).where(
                    accounts.c.domain == domain, accounts.c.local == local
                )
            )
            return result.first() is not None

    async def existing(self, domain: str, locals_: Iterable[str]) -> set[str]:
        async with self._storage.begin() as conn:
            found = await self._existing_pairs(conn, ((domain, local) for local in locals_))
        return {local for _, local in found}

    async def get_credentials(
        self, local: str, domain: str, hash_name: str
    ) -> ScramCredentials | None:
        table = scram_credentials
        async with self._storage.begin() as conn:
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
            async with self._storage.begin() as conn:
                found = await conn.execute(
                    select(accounts.c.local).where(
                        accounts.c.domain == domain, accounts.c.local == local
                    )
                )
                if found.first() is None:
                    return False
                await conn.execute(
                    delete(table).where(table.c.domain == domain, table.c.local == local)
                )
                await conn.execute(insert(table), rows)
        except IntegrityError:
            return False  # the account was deleted meanwhile (foreign key)
        return True

    async def list_accounts(self, domain: str) -> list[str]:
        async with self._storage.begin() as conn:
            result = await conn.execute(select(accounts.c.local).where(accounts.c.domain == domain))
            # Sorted here: database collations differ (PostgreSQL's follows the locale).
            return sorted(result.scalars())

    async def count(self, domain: str) -> int:
        async with self._storage.begin() as conn:
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


class SQLKVStore(KVStore):
    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage

    async def get(self, local: str, domain: str, key: str) -> str | None:
        table = account_kv
        async with self._storage.begin() as conn:
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
            async with self._storage.begin() as conn:
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
        async with self._storage.begin() as conn:
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

    async def _bump(self, conn: AsyncConnection, owner: dict[str, str]) -> int:
        version = await self._version(conn, owner) + 1
        await _upsert(conn, roster_versions, {**owner, "version": version}, ["domain", "local"])
        return version

    async def put(self, local: str, domain: str, item: RosterItem) -> int:
        owner = {"domain": domain, "local": local}
        try:
            async with self._storage.begin() as conn:
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
        async with self._storage.begin() as conn:
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
        async with self._storage.begin() as conn:
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
        async with self._storage.begin() as conn:
            await _upsert(
                conn,
                roster_pending,
                {"domain": domain, "local": local, "contact": contact, "stanza": stanza},
                ["domain", "local", "contact"],
            )

    async def remove_pending(self, local: str, domain: str, contact: str) -> None:
        async with self._storage.begin() as conn:
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
            async with self._storage.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # READ COMMITTED: two inserts would each count without the other;
                    # the account row's lock makes the second wait and count again.
                    await conn.execute(
                        select(accounts.c.local)
                        .where(accounts.c.domain == domain, accounts.c.local == local)
                        .with_for_update()
                    )
                result = await conn.execute(statement)
                stored = result.scalar_one_or_none()
        except IntegrityError:
            raise StorageError(f"no account '{local}@{domain}'") from None
        return None if stored is None else int(stored)

    async def fetch(self, local: str, domain: str) -> list[tuple[int, str]]:
        table = offline_messages
        async with self._storage.begin() as conn:
            result = await conn.execute(
                select(table.c.id, table.c.stanza)
                .filter_by(domain=domain, local=local)
                .order_by(table.c.id)
            )
            return [(row.id, row.stanza) for row in result]

    async def delete(self, local: str, domain: str, ids: Iterable[int]) -> None:
        table = offline_messages
        ids = list(ids)
        async with self._storage.begin() as conn:
            for start in range(0, len(ids), _CHUNK):
                await conn.execute(
                    delete(table)
                    .filter_by(domain=domain, local=local)
                    .where(table.c.id.in_(ids[start : start + _CHUNK]))
                )

    async def count(self, local: str, domain: str) -> int:
        table = offline_messages
        async with self._storage.begin() as conn:
            result = await conn.execute(
                select(func.count()).select_from(table).filter_by(domain=domain, local=local)
            )
            return int(result.scalar_one())
