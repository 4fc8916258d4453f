"""Storage interfaces, one per concern (see DESIGN.md, "Storage behind interfaces").

Every method is async and takes already prepared JID parts (RFC 7622: `local` is the
UsernameCaseMapped localpart, `domain` the prepared domainpart). Later concerns (roster,
offline, archive, pubsub, rooms) add their own interface here next to these and an
attribute on `Storage`; the SQL implementation lives in `dovecote.storage.sql`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from dovecote.storage.credentials import ScramCredentials

if TYPE_CHECKING:
    from dovecote.storage.archive import ArchiveStore
    from dovecote.storage.pubsub import PubSubStore
    from dovecote.storage.upload import UploadStore


class StorageError(Exception):
    """The storage could not do what was asked (unreachable, broken schema, ...)."""


class StorageUnavailable(StorageError):
    """The storage cannot take a write right now, but may later: the client may retry.

    Stanzas that fail with it get `resource-constraint` of type wait (RFC 6120 §8.3.3.18)
    instead of `internal-server-error`.
    """


class StorageBusy(StorageUnavailable):
    """The database is locked by another writer (SQLite `database is locked`, a PostgreSQL
    lock timeout) or has no free connection, for longer than the storage waits."""


class StorageFull(StorageUnavailable):
    """The disk (or the database's quota) is full: writes fail until space is freed."""


class AccountExists(StorageError):
    """An account with this address already exists."""

    def __init__(self, local: str, domain: str) -> None:
        super().__init__(f"account '{local}@{domain}' already exists")
        self.local = local
        self.domain = domain

    @property
    def jid(self) -> str:
        return f"{self.local}@{self.domain}"


class AccountStore(ABC):
    """Accounts and their SCRAM credentials (passwords are never stored in plain text)."""

    @abstractmethod
    async def create(
        self, local: str, domain: str, credentials: dict[str, ScramCredentials]
    ) -> None:
        """Create an account; raises `AccountExists`."""

    @abstractmethod
    async def create_many(
        self, domain_items: list[tuple[str, str, dict[str, ScramCredentials]]]
    ) -> None:
        """Create (local, domain, credentials) accounts in one transaction.

        All or nothing: if any account exists already (or is listed twice), raises
        `AccountExists` naming the first such one and creates none.
        """

    @abstractmethod
    async def delete(self, local: str, domain: str) -> bool:
        """Delete an account and all its data in every other store; False if none."""

    @abstractmethod
    async def exists(self, local: str, domain: str) -> bool:
        """True if the account exists."""

    @abstractmethod
    async def existing(self, domain: str, locals_: Iterable[str]) -> set[str]:
        """The subset of `locals_` that are accounts of `domain` (for bulk checks)."""

    @abstractmethod
    async def get_credentials(
        self, local: str, domain: str, hash_name: str
    ) -> ScramCredentials | None:
        """The account's SCRAM record for `hash_name` ("SHA-1", "SHA-256"), or None."""

    @abstractmethod
    async def set_credentials(
        self, local: str, domain: str, credentials: dict[str, ScramCredentials]
    ) -> bool:
        """Replace all of the account's credentials; False if there is no such account."""

    @abstractmethod
    async def list_accounts(self, domain: str) -> list[str]:
        """The localparts of `domain`'s accounts, sorted by code point."""

    @abstractmethod
    async def count(self, domain: str) -> int:
        """How many accounts `domain` has."""


class KVStore(ABC):
    """Per-account key/value text (XML) blobs: XEP-0049 private storage, vCards, ...

    Keys are chosen by the module that owns them, e.g. ``"vcard"`` or
    ``"private:{storage:bookmarks}storage"``; values are serialized XML.
    """

    @abstractmethod
    async def get(self, local: str, domain: str, key: str) -> str | None:
        """The stored value, or None."""

    @abstractmethod
    async def set(self, local: str, domain: str, key: str, value: str | None) -> None:
        """Store `value` under `key`; None removes it. Raises StorageError for no account."""

    @abstractmethod
    async def sizes(self, local: str, domain: str, prefix: str) -> dict[str, int]:
        """The keys starting with `prefix` and the length of each value in bytes (UTF-8),
        for quotas (XEP-0049 namespaces per user)."""


@dataclass(slots=True)
class RosterItem:
    """One roster item (RFC 6121 §2.1.2); `ask` is the pending-out flag, `approved` the
    pre-approval flag (§3.4)."""

    jid: str
    name: str | None = None
    subscription: str = "none"  # none | to | from | both
    ask: bool = False
    approved: bool = False
    groups: tuple[str, ...] = ()


@dataclass(slots=True)
class Roster:
    """A user's roster: its items, its version (XEP-0237) and the subscription requests
    waiting for an answer (pending-in, RFC 6121 §3.1.3), contact -> the stanza as XML."""

    version: int = 0
    items: dict[str, RosterItem] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)


class RosterStore(ABC):
    """Rosters, their versions and pending subscription requests."""

    @abstractmethod
    async def load(self, local: str, domain: str) -> Roster: ...

    @abstractmethod
    async def put(self, local: str, domain: str, item: RosterItem) -> int:
        """Create or replace an item; returns the roster's new version."""

    @abstractmethod
    async def remove(self, local: str, domain: str, contact: str) -> int:
        """Delete an item (remembered as removed for versioning); returns the new version."""

    @abstractmethod
    async def changes_since(
        self, local: str, domain: str, version: int
    ) -> list[tuple[int, str, RosterItem | None]] | None:
        """(version, contact, item or None if removed) changed after `version`, oldest
        first; None when `version` is unknown (the client then gets the whole roster)."""

    @abstractmethod
    async def add_pending(self, local: str, domain: str, contact: str, stanza: str) -> None: ...

    @abstractmethod
    async def remove_pending(self, local: str, domain: str, contact: str) -> None: ...


class OfflineStore(ABC):
    """Messages kept for users with no available resource (XEP-0160)."""

    @abstractmethod
    async def store(
        self, local: str, domain: str, stanza: str, limit: int, max_bytes: int | None = None
    ) -> int | None:
        """Keep a message (serialized XML); returns its row id, or None when the user
        already has `limit` messages, or when it would take the user's stored bytes (UTF-8)
        over `max_bytes`.
        The check and the write are atomic: concurrent stores never overshoot."""

    @abstractmethod
    async def fetch(self, local: str, domain: str) -> list[tuple[int, str]]:
        """All kept messages, oldest first, as (id, stanza)."""

    @abstractmethod
    async def delete(self, local: str, domain: str, ids: Iterable[int]) -> None: ...

    @abstractmethod
    async def count(self, local: str, domain: str) -> int: ...


class Storage(ABC):
    """All stores of one backend, opened and closed together."""

    accounts: AccountStore
    kv: KVStore
    roster: RosterStore
    offline: OfflineStore
    archive: ArchiveStore
    #: MUC room archives, keyed by (room local part, service domain).
    room_archive: ArchiveStore
    pubsub: PubSubStore
    upload: UploadStore

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the object may be opened again."""

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
