"""The upload service on `[upload] domain` (XEP-0363 1.2): `server.components[domain]`.

- disco#info (§3): identity store/file, the feature, the purposes it knows (§5) and the
  XEP-0128 form with `max-file-size`;
- slot requests (§4): a `<slot/>` with a signed PUT link, valid `[upload] slot_timeout`
  seconds and usable once, and the GET link (the same path without the signature);
- errors (§6): too large -> not-acceptable with `<file-too-large/>`; over the quota or
  with too many unused slots -> resource-constraint (wait) with `<retry stamp=.../>` when
  room will free up by itself; a bad request -> bad-request; a stranger -> forbidden.

The HTTP side is `http.py`; expiry of old files and unused slots runs at start and then
periodically (`purge_expired`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from dovecote.config import parse_listen
from dovecote.services.upload.files import FileStore, load_secret, new_id
from dovecote.storage.base import StorageError
from dovecote.storage.upload import UploadRecord, UploadState
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.delay import delay_stamp
from dovecote.xml.element import Element
from dovecote.xml.forms import Field, Form

if TYPE_CHECKING:
    from dovecote.config import UploadSection
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

UPLOAD = "urn:xmpp:http:upload:0"
PURPOSE = "urn:xmpp:http:upload:purpose:0"
#: §5: 'message' is what a request without a purpose means; 'ephemeral' caps the
#: retention of one file. 'profile' and 'permanent' are not offered (one retention for
#: all), and a request naming them is served like 'message'.
PURPOSES = ("message", "ephemeral")
#: The HTTP path the links start with (after the public base URL).
PATH_PREFIX = "/upload"
MAX_FILENAME_BYTES = 255
MAX_CONTENT_TYPE = 255
#: Seconds between two expiry sweeps (at most; sooner when files expire sooner).
PURGE_INTERVAL = 3600.0
#: Records handled per sweep batch.
PURGE_BATCH = 500


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_filename(filename: str | None) -> str:
    """§4: the file name, kept intact, as the last path component of the links: no
    separators, no control characters, not "." or "..", at most 255 bytes of UTF-8."""
    if not filename:
        raise StanzaError("bad-request", "the filename attribute is missing or empty")
    filename = unicodedata.normalize("NFC", filename)
    if filename in (".", "..") or "/" in filename or "\\" in filename:
        raise StanzaError("bad-request", "the filename may not contain a path")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in filename):
        raise StanzaError("bad-request", "the filename contains control characters")
    if len(filename.encode()) > MAX_FILENAME_BYTES:
        raise StanzaError("bad-request", f"the filename is longer than {MAX_FILENAME_BYTES} bytes")
    return filename


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def media_type(content_type: str) -> str | None:
    """The "type/subtype" of a Content-Type (RFC 9110 §8.3.1), lower-cased, or None when
    it is not one (parameters are dropped)."""
    main = content_type.split(";", 1)[0].strip().lower()
    kind, sep, subtype = main.partition("/")
    if not sep or not kind or not subtype or not set(kind + subtype) <= _TOKEN:
        return None
    return main


def check_content_type(value: str | None) -> str:
    if value is None or value.strip() == "":
        return ""
    if len(value) > MAX_CONTENT_TYPE:
        raise StanzaError("bad-request", "the content-type is too long")
    checked = media_type(value)
    if checked is None:
        raise StanzaError("bad-request", f"{value[:64]!r} is not a content type")
    return checked


class UploadService:
    """`server.components[domain]`: disco and slot requests; the HTTP routes are added
    through `server.http_routes` (`http.py`)."""

    def __init__(self, server: Server, policy: UploadSection) -> None:
        assert policy.domain is not None
        self.server = server
        self.policy = policy
        self.domain: str = policy.domain
        self.name = "HTTP File Upload"
        self.store = server.storage.upload
        data_dir = server.config.data_path
        root = Path(policy.storage_dir).expanduser() if policy.storage_dir else data_dir / "upload"
        self.files = FileStore(root, load_secret(data_dir / "upload.secret"))
        self.files.prepare()
        self._purge_timer: asyncio.TimerHandle | None = None

    # ---- the component --------------------------------------------------------------------
    async def receive(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if stanza.tag != "iq":
            if stanza.tag == "message" and event.type != "error":
                raise StanzaError("service-unavailable")
            return  # presence to the service: nothing to do
        if event.type not in ("get", "set"):
            return
        if event.to.local is not None or event.to.resource is not None:
            raise StanzaError("service-unavailable")  # nothing lives at such addresses
        payload = event.payload
        assert payload is not None
        key = (event.type, payload.ns, payload.tag)
        if key == ("get", ns.DISCO_INFO, "query"):
            self._disco_info(event, payload)
        elif key == ("get", ns.DISCO_ITEMS, "query"):
            if payload.get("node"):
                raise StanzaError("item-not-found")
            event.reply(Element("query", ns.DISCO_ITEMS))
        elif key == ("get", ns.PING, "ping"):
            event.reply()
        elif key == ("get", UPLOAD, "request"):
            await self._request_slot(event, payload)
        else:
            raise StanzaError("service-unavailable")

    def _disco_info(self, event: StanzaEvent, query: Element) -> None:
        """§3: identity, features and the max-file-size form (XEP-0128)."""
        if query.get("node"):
            raise StanzaError("item-not-found")
        result = Element("query", ns.DISCO_INFO)
        result.add("identity", attrs={"category": "store", "type": "file", "name": self.name})
        features = [ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, UPLOAD]
        features += [f"{PURPOSE}#{purpose}" for purpose in PURPOSES]
        for feature in features:
            result.add("feature", attrs={"var": feature})
        form = Form.with_type(
            UPLOAD, [Field("max-file-size", values=[str(self.policy.max_file_size)])], "result"
        )
        result.append(form.to_element())
        event.reply(result)

    # ---- slots ------------------------------------------------------------------------------
    def may_upload(self, event: StanzaEvent) -> bool:
        sender = event.sender
        if sender.local is None:
            return False  # a server or service, not an account
        return self.policy.allowed == "all" or sender.domain in self.server.hosts

    async def _request_slot(self, event: StanzaEvent, request: Element) -> None:
        """§4: hand out a slot, or the §6 error."""
        policy = self.policy
        if not self.may_upload(event):
            raise StanzaError("forbidden", "only accounts of this server may upload files")
        filename = check_filename(request.get("filename"))
        try:
            size = int(request.get("size") or "")
        except ValueError:
            raise StanzaError("bad-request", "the size attribute must be a number") from None
        if size < 0:
            raise StanzaError("bad-request", "the size may not be negative")
        content_type = check_content_type(request.get("content-type"))
        if size > policy.max_file_size:
            too_large = Element("file-too-large", UPLOAD)
            too_large.add("max-file-size", UPLOAD, text=str(policy.max_file_size))
            raise StanzaError(
                "not-acceptable",
                f"File too large. The maximum file size is {policy.max_file_size} bytes",
                app_condition=too_large,
            )
        now = utcnow()
        expire_before = self._ephemeral(request, now)
        base = self.base_url()
        if base is None:
            raise StanzaError("service-unavailable", "no HTTP listener to upload to")
        record = UploadRecord(
            id=new_id(),
            owner=str(event.sender.bare),
            filename=filename,
            size=size,
            content_type=content_type,
            state=UploadState.PENDING,
            slot_expires=now + datetime.timedelta(seconds=policy.slot_timeout),
            expire_before=expire_before,
        )
        refused = await self.store.add_slot(
            record, now, quota=policy.quota_per_user, max_slots=policy.max_slots_per_user
        )
        if refused is not None:
            if refused.pending_slots >= policy.max_slots_per_user:
                # Every unused slot is gone by the time a new one would expire.
                raise self._retry_error("Too many unused upload slots", record.slot_expires)
            raise self._retry_error(
                f"Quota reached: {refused.bytes} of {policy.quota_per_user} bytes are used",
                await self._room_at(record.owner, size, refused.bytes, now),
            )
        expires = int(record.slot_expires.timestamp())
        signature = self.files.sign(record.id, filename, size, content_type, expires)
        get_url = f"{base}{PATH_PREFIX}/{record.id}/{quote(filename, safe='')}"
        slot = Element("slot", UPLOAD)
        slot.add("put", UPLOAD, {"url": f"{get_url}?e={expires}&s={signature}"})
        slot.add("get", UPLOAD, {"url": get_url})
        event.reply(slot)

    def _ephemeral(self, request: Element, now: datetime.datetime) -> datetime.datetime | None:
        """§5.3: the time an ephemeral file must be gone by."""
        ephemeral = request.find("ephemeral", PURPOSE)
        if ephemeral is None:
            return None
        text = ephemeral.get("expire-before") or ""
        try:
            stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            stamp = None
        if stamp is None or stamp.tzinfo is None:
            raise StanzaError("bad-request", "expire-before must be a XEP-0082 DateTime")
        if stamp <= now:
            raise StanzaError("bad-request", "expire-before is in the past")
        return stamp.astimezone(datetime.UTC)

    def _retry_error(self, text: str, stamp: datetime.datetime | None) -> StanzaError:
        """§6: a temporary refusal, with when to try again when it is known."""
        retry = None
        if stamp is not None:
            retry = Element("retry", UPLOAD, {"stamp": delay_stamp(stamp)})
        return StanzaError("resource-constraint", text, type="wait", app_condition=retry)

    async def _room_at(
        self, owner: str, size: int, used: int, now: datetime.datetime
    ) -> datetime.datetime | None:
        """When enough of `owner`'s files will have expired (or unused slots lapsed) for
        `size` more bytes to fit the quota; None when that will not happen by itself."""
        gone: list[tuple[datetime.datetime, int]] = []
        for record in await self.store.holdings(owner, now):
            when = self.expires_at(record)
            if when is not None:
                gone.append((when, record.size))
        gone.sort()
        for when, freed in gone:
            used -= freed
            if used + size <= self.policy.quota_per_user:
                return max(when, now)
        return None

    # ---- links ------------------------------------------------------------------------------
    def base_url(self) -> str | None:
        """The base of the links: `[upload] public_url`, `[http] public_url`, or the HTTP
        listener (https first) with the address it listens on (a wildcard: the server's
        first domain)."""
        config = self.server.config
        if self.policy.public_url:
            return self.policy.public_url
        if config.http.public_url:
            return config.http.public_url
        for name in ("https", "http"):
            address = getattr(config.listen, name)
            port = self.server.ports.get(name)
            if not address or port is None:
                continue
            host = parse_listen(address)[0]
            if host in ("", "0.0.0.0", "::"):
                host = self.server.default_host
            elif ":" in host:
                host = f"[{host}]"
            default_port = 443 if name == "https" else 80
            return f"{name}://{host}" + ("" if port == default_port else f":{port}")
        return None

    # ---- expiry ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Called by the server once it listens (`Server._start_components`): interrupted
        uploads go back to their slots, then the first sweep; then one sweep per
        `PURGE_INTERVAL` (sooner when files are kept less long)."""
        self.server.spawn(self._first_sweep())

    async def _first_sweep(self) -> None:
        try:
            reset = await self.store.reset_uploads()
            if reset:
                log.info("%d interrupted uploads: their slots may be used again", reset)
        except StorageError as exc:
            log.error("could not reset interrupted uploads: %s", exc)
        await self._sweep()

    async def _sweep(self) -> None:
        try:
            await self.purge_expired()
        except StorageError as exc:
            log.error("upload expiry failed: %s", exc)
        except Exception:
            log.exception("upload expiry failed")
        finally:
            if self.server.storage is not None:
                interval = PURGE_INTERVAL
                if self.policy.expire_after:
                    interval = min(interval, max(1.0, self.policy.expire_after / 4))
                loop = asyncio.get_running_loop()
                self._purge_timer = loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        if self.server.storage is not None:
            self.server.spawn(self._sweep())

    async def purge_expired(self) -> int:
        """Delete files past `[upload] expire_after` (or their ephemeral expire-before)
        and slots never used before their link expired; returns how many."""
        now = utcnow()
        retention = self.policy.expire_after
        stored_before = now - datetime.timedelta(seconds=retention) if retention else None
        removed = 0
        while True:
            records = await self.store.expired(now, stored_before, PURGE_BATCH)
            if not records:
                break
            ids = [record.id for record in records]
            # Files first: a row without its file is served 404; a file without its row
            # would never be deleted.
            await asyncio.to_thread(self._remove_files, ids)
            await self.store.delete(ids)
            removed += len(ids)
            if len(records) < PURGE_BATCH:
                break
        if removed:
            log.info("upload expiry: %d files and unused slots removed", removed)
        return removed

    def _remove_files(self, ids: list[str]) -> None:
        for id in ids:
            try:
                self.files.remove(id)
            except OSError as exc:
                log.warning("cannot remove upload %s: %s", id, exc)

    def expires_at(self, record: UploadRecord) -> datetime.datetime | None:
        """When a record goes: an unused slot when its link expires, a file after the
        retention or at its ephemeral expire-before; None: kept (an upload running, or
        no retention)."""
        if record.state == UploadState.PENDING:
            return record.slot_expires
        if record.state != UploadState.STORED or record.stored_at is None:
            return None
        ends = [record.expire_before] if record.expire_before is not None else []
        if self.policy.expire_after:
            ends.append(record.stored_at + datetime.timedelta(seconds=self.policy.expire_after))
        return min(ends) if ends else None

    def expired(self, record: UploadRecord, now: datetime.datetime) -> bool:
        """A stored file past its retention (served 404 until the sweep removes it)."""
        when = self.expires_at(record)
        return when is not None and when <= now
