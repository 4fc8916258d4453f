"""The HTTP application: one aiohttp application served on `[listen] http` (plain, for
use behind a reverse proxy) and `[listen] https` (the `[tls]` certificate).

Features add their routes here (`HttpService.app.router`): WebSocket (`http/websocket.py`),
XEP-0156 host-meta (`http/hostmeta.py`), BOSH (`http/bosh.py`), HTTP upload (modules add
routes through `server.http_routes`, services/upload/http.py); a connection
method a client should discover registers itself with `add_alt_connection`.

Shared by every route:
- the client's address and scheme as the client sees them (`client_of`): behind a
  reverse proxy listed in `[http] trusted_proxies`, X-Forwarded-For / Forwarded
  (RFC 7239) name the client, X-Forwarded-Proto / proto= whether it came over TLS;
  from anyone else these headers are ignored;
- CORS (`[http] cors_origins`) so that web clients served from another origin can use
  the server;
- an access log at DEBUG (logger `dovecote.http.access`), by client address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)
access_log = logging.getLogger("dovecote.http.access")

_CLIENT = "dovecote.client"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Seconds a shutting-down server waits for HTTP handlers to finish.
SHUTDOWN_TIMEOUT = 5.0
#: CORS preflight answers are cached this long by browsers (seconds).
CORS_MAX_AGE = 86400


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request comes from, seen from the client's side of any trusted proxy."""

    #: The client's IP address (for per-address limits and logs).
    address: str
    #: The client reached us over TLS (our https listener, or a trusted proxy's).
    secure: bool
    #: The host the client asked for (Host, or the proxy's X-Forwarded-Host / host=).
    host: str

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"


@dataclass(frozen=True, slots=True)
class AltConnection:
    """XEP-0156 §3: a connection method listed in host-meta."""

    rel: str
    path: str
    #: The link is ws:// or wss:// (WebSocket), else http:// or https://.
    websocket: bool = False


def _networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from X-Forwarded-For or Forwarded's for= ("[v6]:port", "v4:port",
    bare addresses); None for anything else ("unknown", obfuscated identifiers)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class HttpService:
    """The aiohttp application and its runner; `Server` listens with `protocol_factory`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        config = server.config.http
        self.config = config
        self._trusted = _networks(config.trusted_proxies)
        self._any_origin = "*" in config.cors_origins
        self._origins = frozenset(config.cors_origins)
        self.alt_connections: list[AltConnection] = []
        self.app = web.Application(middlewares=[self._preflight])
        self.app[SERVICE] = self
        self.app.on_response_prepare.append(self._cors_headers)
        self._runner: web.AppRunner | None = None
        from dovecote.http import bosh, hostmeta, websocket

        websocket.setup(self)
        if server.config.bosh.enabled:
            bosh.setup(self)
        hostmeta.setup(self)
        for add_routes in server.http_routes:
            add_routes(self)

    def add_alt_connection(self, rel: str, path: str, *, websocket: bool = False) -> None:
        """List a connection method in host-meta (XEP-0156 §3): BOSH registers
        `urn:xmpp:alt-connections:xbosh` for /http-bind here when it exists."""
        self.alt_connections.append(AltConnection(rel, path, websocket))

    async def read_body(self, request: web.Request) -> bytes:
        """A request's body within `[http] request_timeout` (408 past it) and the
        application's size limit (413), for the routes that take one (BOSH, upload)."""
        try:
            async with asyncio.timeout(self.config.request_timeout):
                return await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="the request body took too long") from None

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> Callable[[], Any]:
        """Set the application up; returns the protocol factory to listen with."""
        self.app.freeze()
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=access_log,
            keepalive_timeout=self.config.keepalive_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        self._runner = runner
        assert runner.server is not None
        return runner.server

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- the client behind proxies ----------------------------------------------------
    def trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._trusted)

    def client_of(self, request: web.BaseRequest) -> ClientInfo:
        """The client's address, scheme and host (cached on the request)."""
        cached = request.get(_CLIENT)
        if isinstance(cached, ClientInfo):
            return cached
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        address = str(peer[0]) if isinstance(peer, tuple) else (request.remote or "?")
        secure = transport is not None and transport.get_extra_info("sslcontext") is not None
        host = request.headers.get(hdrs.HOST, "")
        if self.trusted(address):
            address, secure, host = self._forwarded(request, address, secure, host)
        info = ClientInfo(address, secure, host)
        request[_CLIENT] = info
        return info

    def _forwarded(
        self, request: web.BaseRequest, address: str, secure: bool, host: str
    ) -> tuple[str, bool, str]:
        """A trusted proxy's word: RFC 7239 Forwarded, else X-Forwarded-*. The client
        is the nearest hop that is not a trusted proxy, read from the right."""
        headers = request.headers
        hops: list[str] = []
        proto = forwarded_host = None
        if hdrs.FORWARDED in headers:
            elements = request.forwarded
            hops = [element["for"] for element in elements if "for" in element]
            if elements:
                proto = elements[0].get("proto")
                forwarded_host = elements[0].get("host")
        else:
            for value in headers.getall(hdrs.X_FORWARDED_FOR, ()):
                hops.extend(hop for hop in value.split(",") if hop.strip())
            if hdrs.X_FORWARDED_PROTO in headers:
                proto = headers[hdrs.X_FORWARDED_PROTO].split(",")[0].strip()
            if hdrs.X_FORWARDED_HOST in headers:
                forwarded_host = headers[hdrs.X_FORWARDED_HOST].split(",")[0].strip()
        for hop in reversed(hops):
            ip = _ip(hop)
            if ip is None:
                break
            address = str(ip)
            if not any(ip in network for network in self._trusted):
                break
        if proto:
            secure = proto.lower() in ("https", "wss")
        return address, secure, forwarded_host or host

    # ---- CORS -----------------------------------------------------------------------------
    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin for a request from `origin`, or None."""
        if self._any_origin:
            return "*"
        if origin is not None and origin.lower() in self._origins:
            return origin
        return None

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if response.status == 101:
            return  # a WebSocket: its Origin is checked by the handshake
        allowed = self.allowed_origin(request.headers.get(hdrs.ORIGIN))
        if allowed is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        if allowed != "*":
            response.headers.add(hdrs.VARY, "Origin")

    @web.middleware
    async def _preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """CORS preflight (Fetch standard §3.2.2), on every path: the methods and headers
        web clients use."""
        if (
            request.method != hdrs.METH_OPTIONS
            or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
        ):
            return await handler(request)
        response = web.Response(status=204)
        if self.allowed_origin(request.headers.get(hdrs.ORIGIN)) is not None:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "GET, HEAD, POST, PUT, OPTIONS"
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = request.headers.get(
                hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "Content-Type"
            )
            response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(CORS_MAX_AGE)
        return response


SERVICE = web.AppKey("dovecote.http", HttpService)


def service_of(request: web.BaseRequest) -> HttpService:
    app: web.Application = request.app  # type: ignore[attr-defined]
    return app[SERVICE]


class AccessLogger(AbstractAccessLogger):
    """One DEBUG line per request, by the client's address (behind trusted proxies)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            client = service_of(request).client_of(request).address
        except Exception:
            client = request.remote or "?"
        self.logger.debug(
            '%s "%s %s" %s %.3fs', client, request.method, request.path, response.status, time
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)
