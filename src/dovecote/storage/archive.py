"""The message archive interface (XEP-0313 user archives) and its value types.

An archive belongs to one account (domain, local). Archive order is the order in which
messages were appended (XEP-0313 §3.1: not the timestamps, which may repeat); ids are
opaque, unpredictable and never reused (XEP-0313 §3, §6.2). Timestamps are UTC.
"""

from __future__ import annotations

import asyncio
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from dovecote.storage.base import StorageError


def new_archive_id() -> str:
    """An unpredictable archive id (96 random bits, 16 URL-safe characters)."""
    return secrets.token_urlsafe(12)


class ArchiveIdNotFound(StorageError):
    """A query named an archive id that is not in the archive (XEP-0313 §4.1.3, §4.3.2:
    answered with item-not-found)."""

    def __init__(self, archive_id: str) -> None:
        super().__init__(f"no message {archive_id!r} in the archive")
        self.archive_id = archive_id


class ArchiveFull(StorageError):
    """The archive is at its byte quota and the policy is 'stop': the message was not
    archived."""

    def __init__(self) -> None:
        super().__init__("the archive is full")


@dataclass(slots=True, frozen=True)
class ArchivedMessage:
    """One archived message: the other party (the 'to' of an outgoing message, the 'from'
    of an incoming one, split into bare JID and resource) and the stanza as XML text."""

    id: str
    timestamp: datetime
    with_bare: str
    with_resource: str | None
    stanza: str


@dataclass(slots=True, frozen=True)
class ArchiveMark:
    """Where an archive starts or ends (XEP-0313 §5 metadata)."""

    id: str
    timestamp: datetime


@dataclass(slots=True, frozen=True)
class ArchiveFilter:
    """Which messages a query matches (XEP-0313 §4.1); None leaves a criterion out.

    `with_bare` alone matches every resource of that JID; with `with_resource` only that
    full JID. `start`/`end` are inclusive, `after_id`/`before_id` exclusive; `ids` keeps
    only the messages named.
    """

    with_bare: str | None = None
    with_resource: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    after_id: str | None = None
    before_id: str | None = None
    ids: Sequence[str] | None = None


@dataclass(slots=True)
class ArchivePage:
    """A page of a query (XEP-0059 over XEP-0313): its messages in archive order, how many
    messages match the filter, the position of the page's first message among them, and
    whether the page reaches the end of the matches in its paging direction."""

    messages: list[ArchivedMessage]
    count: int
    first_index: int | None
    complete: bool


class ArchiveStore(ABC):
    """Message archives, one per owner (local, domain): per account (`storage.archive`,
    XEP-0313 user archives) or per MUC room (`storage.room_archive`, keyed by the room's
    local part and the service domain)."""

    @abstractmethod
    def enqueue(self, local: str, domain: str, message: ArchivedMessage) -> asyncio.Future[None]:
        """Queue a message for archiving without waiting (the hot path); the future is done
        when it is durable, or fails with StorageError when there is no such account.
        Reads (query, bounds, count) see every message queued before them."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every message queued so far is durable."""

    @abstractmethod
    async def append(self, local: str, domain: str, message: ArchivedMessage) -> None:
        """Archive a message; durable when this returns. Raises StorageError when there is
        no such account."""

    @abstractmethod
    def set_quota(self, max_bytes: int, policy: str = "expire-oldest") -> None:
        """Limit every archive to `max_bytes` of messages (serialized XML, UTF-8; 0: no
        limit). Policy 'expire-oldest': a write that goes over removes the archive's
        oldest messages until it fits; 'stop': the message is not archived (its future
        fails with ArchiveFull)."""

    @abstractmethod
    async def usage(self, local: str, domain: str) -> int:
        """The bytes of messages the archive holds."""

    @abstractmethod
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
        """A page of at most `limit` matching messages (XEP-0059): the first ones, those
        right after the message `after`, those right before the message `before` ("" for
        the last page), or those from position `index`. Raises ArchiveIdNotFound for an id
        (after, before, or in the filter) that the archive does not hold."""

    @abstractmethod
    async def bounds(self, local: str, domain: str) -> tuple[ArchiveMark, ArchiveMark] | None:
        """The first and last message of the archive; None when it is empty."""

    @abstractmethod
    async def count(self, local: str, domain: str) -> int:
        """How many messages the archive holds."""

    @abstractmethod
    async def delete_older_than(self, cutoff: datetime) -> int:
        """Remove the messages of every archive archived before `cutoff` (retention);
        returns how many went. The oldest go first, so an archive never has holes
        (XEP-0313 §3.2)."""

    @abstractmethod
    async def replace(self, local: str, domain: str, archive_id: str, stanza: str) -> bool:
        """Replace the stanza of an archived message, keeping its id, time and place (a
        retraction leaves a tombstone, XEP-0424 §5.1 / XEP-0425 §4); False when the
        archive does not hold `archive_id`."""

    @abstractmethod
    async def delete_archive(self, local: str, domain: str) -> int:
        """Remove a whole archive (a destroyed room's); returns how many messages went."""
