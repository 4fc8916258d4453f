"""`/http-bind`: BOSH (XEP-0124, XEP-0206) over the HTTP application; the session itself
is `transport/bosh.py` (the same client stream and session as TCP).

- POST: one `<body/>` (XEP-0124 §4) within `[bosh] max_body_size` (413 past it) and
  `[http] request_timeout`; without a 'sid' it creates a session (§7), whose caps come
  from `[bosh]`; sessions count against `[limits] max_connections_per_ip` like TCP
  connections (over it: `policy-violation`);
- GET: a short page saying what this is; OPTIONS: CORS preflight (`http/app.py`), or
  the allowed methods;
- responses are `text/xml; charset=utf-8`, with the CORS headers of `[http]
  cors_origins`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from dovecote.transport.base import count_connection
from dovecote.transport.bosh import (
    VERSION,
    BoshError,
    BoshSession,
    ParsedBody,
    Reply,
    SessionParams,
    parse_body,
    parse_version,
    terminate,
)

if TYPE_CHECKING:
    from dovecote.http.app import HttpService

log = logging.getLogger(__name__)

PATH = "/http-bind"
ALT_CONNECTION = "urn:xmpp:alt-connections:xbosh"
#: The largest rid a client may use (XEP-0124 §14.1: 2^53 - 1).
MAX_RID = 9007199254740991
PAGE = "This is an XMPP over BOSH endpoint (XEP-0124, XEP-0206): point a BOSH client at this URL.\n"


class BoshService:
    """The sessions of this server by sid, and the handling of `/http-bind`."""

    def __init__(self, service: HttpService) -> None:
        self.http = service
        self.server = service.server
        self.config = self.server.config.bosh
        self.sessions: dict[str, BoshSession] = {}

    async def post(self, request: web.Request) -> web.StreamResponse:
        data = await self._read(request)
        reply = await self.handle(data, request)
        return web.Response(
            body=reply.body,
            status=reply.status,
            content_type="text/xml",
            charset="utf-8",
            headers={hdrs.CACHE_CONTROL: "no-store"},
        )

    async def _read(self, request: web.Request) -> bytes:
        """The body within `max_body_size` (413) and `[http] request_timeout` (408)."""
        limit = self.config.max_body_size
        length = request.content_length
        if length is not None and length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.http.config.request_timeout):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                    chunks.append(chunk)
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="the request body took too long") from None
        return b"".join(chunks)

    async def handle(self, data: bytes, request: web.Request) -> Reply:
        try:
            parsed = parse_body(data, self.server.config.limits.max_stanza_size)
        except BoshError as exc:
            log.debug("bad BOSH request: %s", exc)
            broken = self.sessions.get(exc.sid) if exc.sid is not None else None
            if broken is not None:
                # A terminal condition: the session ends (§17.2).
                return broken.terminate_with(exc.condition, exc.text)
            return terminate(exc.condition)
        sid = parsed.attrs.get("sid")
        if sid is None:
            return await self._create(parsed, request)
        session = self.sessions.get(sid)
        if session is None:
            return terminate("item-not-found")
        rid = _rid(parsed.attrs.get("rid"))
        if rid is None:
            return session.terminate_with("bad-request", "a valid 'rid' is required")
        transport = request.transport
        gone = transport.is_closing if transport is not None else None
        return await session.request(rid, parsed, len(data), gone)

    async def _create(self, parsed: ParsedBody, request: web.Request) -> Reply:
        """XEP-0124 §7: a new session, with what the client asks capped by `[bosh]`."""
        attrs = parsed.attrs
        config = self.config
        ver = attrs.get("ver")
        legacy = ver is None
        rid = _rid(attrs.get("rid"))
        wait = _number(attrs.get("wait"), config.max_wait)
        hold = _number(attrs.get("hold"), 1)
        acks = attrs.get("ack")
        if rid is None or wait is None or hold is None or _number(acks, 0) is None:
            return terminate("bad-request", legacy=legacy)
        version = parse_version(ver)
        if ver is not None and version is None:
            return terminate("bad-request", legacy=legacy)
        hold = min(hold, config.max_hold)
        params = SessionParams(
            wait=min(wait, config.max_wait),
            hold=hold,
            requests=min(hold + 1, config.max_requests),
            inactivity=config.max_inactivity,
            polling=config.polling,
            maxpause=config.max_pause,
            ver=None if version is None else "{}.{}".format(*min(version, VERSION)),
            acks=acks is not None,
        )
        client = self.http.client_of(request)
        server = self.server
        key = count_connection(server, client.address, server.config.limits.max_connections_per_ip)
        if key is None:
            return terminate("policy-violation", legacy=legacy)
        secure = client.secure or config.consider_secure
        session = BoshSession(
            server, self.sessions, params, client.address, secure, key, config.max_buffer
        )
        self.sessions[session.sid] = session
        log.debug("BOSH session %s from %s", session.sid[:8], client.address)
        return await session.start(rid, parsed)

    async def shutdown(self, _app: web.Application) -> None:
        for session in list(self.sessions.values()):
            session.shutdown()


def _rid(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 16:
        return None
    rid = int(text)
    return rid if 0 < rid <= MAX_RID else None


def _number(text: str | None, default: int) -> int | None:
    """A non-negative integer attribute; None when malformed."""
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        return None
    return int(text)


BOSH = web.AppKey("dovecote.bosh", BoshService)


async def http_bind(request: web.Request) -> web.StreamResponse:
    return await request.app[BOSH].post(request)


async def page(request: web.Request) -> web.StreamResponse:
    """GET: what this URL is (browsers, curious admins)."""
    return web.Response(text=PAGE, content_type="text/plain")


async def options(request: web.Request) -> web.StreamResponse:
    """OPTIONS without a CORS preflight (those are answered by `http/app.py`)."""
    return web.Response(status=204, headers={hdrs.ALLOW: "GET, HEAD, POST, OPTIONS"})


def setup(service: HttpService) -> None:
    bosh = BoshService(service)
    app = service.app
    app[BOSH] = bosh
    app.on_shutdown.append(bosh.shutdown)
    app.router.add_post(PATH, http_bind)
    app.router.add_get(PATH, page)
    app.router.add_route(hdrs.METH_OPTIONS, PATH, options)
    service.add_alt_connection(ALT_CONNECTION, PATH)
