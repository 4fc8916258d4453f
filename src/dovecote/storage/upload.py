"""Storage interface for XEP-0363 HTTP file upload: one record per slot handed out, which
becomes the record of the stored file once its PUT completes.

The bytes live on disk (`services/upload/files.py`); this store holds what decides who may
upload what and what is served: the slot's owner, file name, size and type, its state
(`PENDING` slot, `UPLOADING` while a PUT runs, `STORED` file), when the PUT link expires
and when the file was stored. A user's quota use is the sum of the sizes of their stored
files and of their slots that can still be used, so that slots handed out at once cannot
together exceed the quota.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class UploadState(IntEnum):
    #: A slot handed out; its PUT has not begun.
    PENDING = 0
    #: A PUT is running (single use: a second PUT is refused).
    UPLOADING = 1
    #: The file is stored and served.
    STORED = 2


@dataclass(slots=True, frozen=True)
class UploadRecord:
    #: The random path component of the slot's URLs (also the file's name on disk).
    id: str
    #: The uploader's bare JID.
    owner: str
    filename: str
    size: int
    #: The Content-Type the slot was asked with ("" when none was given; the PUT's own is
    #: stored once uploaded).
    content_type: str
    state: UploadState
    #: When the PUT link stops being valid.
    slot_expires: datetime
    #: When the file was stored (None until then).
    stored_at: datetime | None = None
    #: XEP-0363 §5.3 ephemeral purpose: the file must be gone by then.
    expire_before: datetime | None = None


@dataclass(slots=True, frozen=True)
class UploadUsage:
    """What one account holds: bytes and slots not yet used (for the limits)."""

    bytes: int
    pending_slots: int


class UploadStore(ABC):
    @abstractmethod
    async def usage(self, owner: str, now: datetime) -> UploadUsage:
        """Bytes of `owner`'s stored files and live slots, and its live unused slots."""

    @abstractmethod
    async def holdings(self, owner: str, now: datetime) -> list[UploadRecord]:
        """`owner`'s records that count against its quota: files stored or being
        uploaded, and slots whose link is still valid."""

    @abstractmethod
    async def add_slot(
        self, record: UploadRecord, now: datetime, *, quota: int, max_slots: int
    ) -> UploadUsage | None:
        """Insert `record` (a PENDING slot) unless `owner` would then hold more than
        `quota` bytes (0: no limit) or more than `max_slots` live unused slots; in one
        transaction. Returns None when inserted, else the usage that refused it."""

    @abstractmethod
    async def get(self, id: str) -> UploadRecord | None: ...

    @abstractmethod
    async def begin_upload(self, id: str, now: datetime) -> UploadRecord | None:
        """PENDING -> UPLOADING, if the slot is pending and its link still valid; None
        otherwise (used, running, expired or unknown)."""

    @abstractmethod
    async def finish_upload(self, id: str, content_type: str, now: datetime) -> None:
        """UPLOADING -> STORED at `now`, with the type the PUT gave."""

    @abstractmethod
    async def abort_upload(self, id: str) -> None:
        """UPLOADING -> PENDING: the PUT failed; the client may try again while the link
        is valid."""

    @abstractmethod
    async def reset_uploads(self) -> int:
        """At start: every UPLOADING slot back to PENDING (no PUT survives a restart)."""

    @abstractmethod
    async def expired(
        self, now: datetime, stored_before: datetime | None, limit: int
    ) -> list[UploadRecord]:
        """Up to `limit` records to delete: slots pending past their link's expiry, files
        stored before `stored_before` (None: kept) or past their `expire_before`."""

    @abstractmethod
    async def delete(self, ids: list[str]) -> None: ...
