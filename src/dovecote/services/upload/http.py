"""The HTTP side of XEP-0363: `PUT` and `GET`/`HEAD` on `/upload/{id}/{filename}`.

PUT (§7): the link's signature and expiry are checked (403), the slot must be unused
(409: single use), Content-Length must be the slot's size (411 without one, 400
otherwise) and Content-Type the slot's type when one was given (415); with `Expect:
100-continue` these checks answer before the client sends its body. The body is read
`READ_SIZE` bytes at a time into `tmp/<id>.part` (written by a worker thread, at most
`WRITE_BUFFER` gathered) and renamed into place when complete: 201; a full disk is 507,
a database that cannot be reached 503. Stalling for `[http]
request_timeout`, or taking longer than that plus the size at `[upload] min_upload_rate`,
ends it with 408; any failure deletes the partial file and frees the slot again for the
rest of its validity.

GET and HEAD serve the file with aiohttp's FileResponse (sendfile: nothing is buffered
for a client that does not read; Range and conditional requests, ETag and Last-Modified),
with the Content-Type given at upload, Content-Disposition inline for images, audio,
video and plain text and attachment otherwise, and the isolation headers §9.1 suggests
(Content-Security-Policy, nosniff). CORS, including the preflight of a browser's PUT, is
the HTTP application's (`http/app.py`, `[http] cors_origins`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from aiohttp import hdrs, web

from dovecote.services.upload.files import ID_PATTERN
from dovecote.services.upload.service import PATH_PREFIX, media_type, utcnow
from dovecote.storage.base import StorageError
from dovecote.storage.upload import UploadRecord, UploadState

if TYPE_CHECKING:
    from dovecote.http.app import HttpService
    from dovecote.services.upload.service import UploadService

log = logging.getLogger(__name__)

Handler = Callable[["UploadHttp", web.Request], Awaitable[Any]]
#: Bytes of a PUT's body taken from aiohttp at once.
READ_SIZE = 64 * 1024
#: Bytes of a PUT's body gathered before they are handed to the writer thread.
WRITE_BUFFER = 256 * 1024
#: Types served inline (shown by the browser); everything else is an attachment. SVG
#: can carry scripts: attachment.
INLINE_PREFIXES = ("image/", "audio/", "video/")
INLINE_TYPES = frozenset({"text/plain"})
NOT_INLINE = frozenset({"image/svg+xml"})
#: §9.1: no active content from uploaded files, and no framing of them.
CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def inline(content_type: str) -> bool:
    kind = media_type(content_type) or ""
    if kind in NOT_INLINE:
        return False
    return kind in INLINE_TYPES or kind.startswith(INLINE_PREFIXES)


def content_disposition(content_type: str, filename: str) -> str:
    """RFC 6266: the disposition with an ASCII fallback name and the UTF-8 one."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    kind = "inline" if inline(content_type) else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def storage_guard(handler: Handler) -> Handler:
    """A database that is locked or down answers 503 (try again later), not 500."""

    @functools.wraps(handler)
    async def guarded(self: UploadHttp, request: web.Request) -> Any:
        try:
            return await handler(self, request)
        except StorageError as exc:
            log.warning("upload %s %s: storage unavailable: %s", request.method, request.path, exc)
            raise web.HTTPServiceUnavailable(
                text="storage unavailable, retry later\n", headers={hdrs.RETRY_AFTER: "5"}
            ) from None

    return guarded


class UploadHttp:
    def __init__(self, service: UploadService, http: HttpService) -> None:
        self.service = service
        self.http = http

    def add_routes(self) -> None:
        route = PATH_PREFIX + "/{id}/{filename}"
        router = self.http.app.router
        router.add_put(route, self.put, expect_handler=self.expect)
        router.add_get(route, self.get)  # HEAD too

    # ---- PUT ----------------------------------------------------------------------------------
    async def _check(self, request: web.Request) -> tuple[UploadRecord, str]:
        """The slot a PUT is for, and the type to store, if the PUT may go ahead (§7);
        the HTTP error otherwise."""
        service = self.service
        id = request.match_info["id"]
        filename = request.match_info["filename"]
        try:
            expires = int(request.query.get("e", ""))
        except ValueError:
            raise web.HTTPForbidden(text="this link is not signed\n") from None
        signature = request.query.get("s", "")
        if not ID_PATTERN.fullmatch(id):
            raise web.HTTPForbidden(text="this link is not valid\n")
        record = await service.store.get(id)
        if record is None or not service.files.verify(
            signature, id, filename, record.size, record.content_type, expires
        ):
            raise web.HTTPForbidden(text="this link is not valid\n")
        if expires != int(record.slot_expires.timestamp()) or record.slot_expires <= utcnow():
            raise web.HTTPForbidden(text="this link has expired\n")
        if record.state != UploadState.PENDING:
            raise web.HTTPConflict(text="this slot has been used\n")
        length = request.content_length
        if length is None:
            raise web.HTTPLengthRequired(text="Content-Length is required\n")
        if length != record.size:
            raise web.HTTPBadRequest(
                text=f"Content-Length {length} is not the slot's size {record.size}\n"
            )
        given = request.headers.get(hdrs.CONTENT_TYPE)
        given_type = media_type(given) if given else None
        if record.content_type and given_type != record.content_type:
            raise web.HTTPUnsupportedMediaType(
                text=f"Content-Type must be {record.content_type}, as in the slot request\n"
            )
        return record, record.content_type or given_type or "application/octet-stream"

    @storage_guard
    async def expect(self, request: web.Request) -> None:
        """`Expect: 100-continue` (RFC 9110 §10.1.1): the client is told to send its body
        only when the PUT would be accepted, else gets the error at once."""
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="only 100-continue is understood\n")
        await self._check(request)
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

    @storage_guard
    async def put(self, request: web.Request) -> web.StreamResponse:
        service = self.service
        record, stored_type = await self._check(request)
        id = record.id
        now = utcnow()
        if await service.store.begin_upload(id, now) is None:
            raise web.HTTPConflict(text="this slot has been used\n")
        try:
            try:
                await self._receive(request, id, record.size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                log.error("upload %s: the disk is full", id)
                raise web.HTTPInsufficientStorage(text="the server's disk is full\n") from None
            await service.store.finish_upload(id, stored_type, utcnow())
        except BaseException:
            await asyncio.shield(self._abort(id))
            raise
        log.info("upload %s stored: %d bytes from %s", id, record.size, record.owner)
        return web.Response(status=201, text="created\n")

    async def _receive(self, request: web.Request, id: str, size: int) -> None:
        """The body into the temporary file, then renamed into place."""
        files = self.service.files
        temp = files.temp_path(id)
        final = files.path(id)
        stall = self.http.config.request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stall + size / self.service.policy.min_upload_rate
        handle: BinaryIO = await asyncio.to_thread(open, temp, "wb")
        try:
            received = 0
            buffer = bytearray()
            while received < size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise web.HTTPRequestTimeout(text="the upload is too slow\n")
                try:
                    async with asyncio.timeout(min(stall, remaining)):
                        chunk = await request.content.read(READ_SIZE)
                except TimeoutError:
                    raise web.HTTPRequestTimeout(text="the upload stalled\n") from None
                if not chunk:
                    raise web.HTTPBadRequest(text="the body ended before Content-Length\n")
                received += len(chunk)
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    # The thread writes this buffer while the next one fills (no copy).
                    await asyncio.to_thread(handle.write, buffer)
                    buffer = bytearray()
            if buffer:
                await asyncio.to_thread(handle.write, buffer)
            await asyncio.to_thread(_flush_and_sync, handle)
        finally:
            await asyncio.to_thread(handle.close)
        await asyncio.to_thread(_move, temp, final)

    async def _abort(self, id: str) -> None:
        """Leave nothing of a failed upload; its slot may be used again while valid."""
        try:
            await asyncio.to_thread(self.service.files.remove, id)
            await self.service.store.abort_upload(id)
        except (OSError, StorageError) as exc:
            log.error("cleaning up after the failed upload %s: %s", id, exc)

    # ---- GET / HEAD ----------------------------------------------------------------------------
    @storage_guard
    async def get(self, request: web.Request) -> web.StreamResponse:
        service = self.service
        id = request.match_info["id"]
        if not ID_PATTERN.fullmatch(id):
            raise web.HTTPNotFound()
        record = await service.store.get(id)
        now = utcnow()
        if record is None or record.state != UploadState.STORED or service.expired(record, now):
            raise web.HTTPNotFound()
        path = service.files.path(id)
        if not await asyncio.to_thread(path.is_file):
            log.warning("upload %s is recorded but its file is missing", id)
            raise web.HTTPNotFound()
        content_type = record.content_type or "application/octet-stream"
        headers = {
            hdrs.CONTENT_TYPE: content_type,
            hdrs.CONTENT_DISPOSITION: content_disposition(content_type, record.filename),
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
        }
        ends = service.expires_at(record)
        # The file never changes while it exists: caches may keep it until it expires.
        max_age = 365 * 86400 if ends is None else max(0, int((ends - now).total_seconds()))
        headers[hdrs.CACHE_CONTROL] = f"public, max-age={max_age}, immutable"
        return web.FileResponse(path, headers=headers)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _move(temp: Path, final: Path) -> None:
    final.parent.mkdir(exist_ok=True)
    os.replace(temp, final)
