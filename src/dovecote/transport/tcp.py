"""TCP transports: one XML stream per connection. `XMLStreamProtocol` owns the socket, the
XML parser, the negotiation timer and the writing; its subclasses pick the stream:
client streams with STARTTLS on the c2s port (RFC 6120 §5) and direct TLS on their own
port (XEP-0368), and external components (XEP-0114, transport/component_tcp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dovecote.stream.c2s import C2SStream
from dovecote.stream.negotiation import TCP_FRAMING
from dovecote.transport.base import TokenBucket, count_connection, uncount_connection
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr, serialize
from dovecote.xml.parser import StreamParser, XMLStreamError

if TYPE_CHECKING:
    from dovecote.server import Server
    from dovecote.stream.tls import ServerTLS

log = logging.getLogger(__name__)

PREFIXES = {ns.STREAMS: "stream"}
#: Bytes buffered for a peer before backlogs (offline messages) wait for it to read.
WRITE_HIGH_WATER = 64 * 1024


def _enable_keepalive(sock: Any) -> None:
    """TCP keepalives find connections that died without a FIN (a phone leaving the
    network) within about 4 minutes, so their sessions end or wait for resumption."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 120), ("TCP_KEEPINTVL", 30), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except OSError:
        pass


class XMLStreamProtocol(asyncio.Protocol):
    """The socket side of a stream; the stream object (`make_stream`) owns the protocol."""

    #: The stream's default namespace on the wire (stanzas are jabber:client inside).
    content_ns = ns.CLIENT
    #: Namespaces declared on the stream header with their prefixes (written prefixed).
    prefixes: dict[str, str] = PREFIXES
    #: A peer that does not read while this much waits to be written is dropped.
    max_write_buffer = 8 * 1024 * 1024
    secure = False
    can_starttls = False
    framing = TCP_FRAMING

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peer_address = "?"
        self.parser = StreamParser(server.config.limits.max_stanza_size)
        self.stream = self.make_stream()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        #: Why reading is paused: "backlog" (the stream is behind), "rate" (shaping).
        self._paused_for: set[str] = set()
        rate, burst = self.rate_limit()
        self._bucket = TokenBucket(rate, burst) if rate else None
        #: How many times the rate limit paused reading (for tests and metrics).
        self.throttled = 0
        #: asyncio paused our writing: the peer reads slower than we write.
        self.write_paused = False
        #: The address key this connection is counted under (`connection_limit`).
        self._counted_as: str | None = None
        #: A STARTTLS handshake is under way: nothing may be written in clear text.
        self._tls_handshake = False
        self._drained_callbacks: list[Callable[[], None]] = []

    def make_stream(self) -> Any:
        raise NotImplementedError

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport  # type: ignore[assignment]
        self._set_write_limits()
        peer = transport.get_extra_info("peername")
        self.peer_address = peer[0] if isinstance(peer, tuple) else str(peer)
        _enable_keepalive(transport.get_extra_info("socket"))
        self.server.streams.add(self.stream)
        if not self._count_connection():
            self.stream.fail("policy-violation", "too many connections from your address")
            return
        timeout = self.negotiation_timeout()
        self._timer = asyncio.get_running_loop().call_later(timeout, self._negotiation_timeout)

    def negotiation_timeout(self) -> float:
        """Seconds from connecting to the end of negotiation (`stream_bound`)."""
        return self.server.config.limits.negotiation_timeout

    def _set_write_limits(self) -> None:
        # Flow control (`write_paused`) starts early and the same on every loop and TLS
        # layer: uvloop's TLS transport would otherwise buffer hundreds of KiB first.
        with contextlib.suppress(AttributeError, NotImplementedError):
            self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[union-attr]

    def rate_limit(self) -> tuple[int, int]:
        """(bytes per second, burst) this peer may send; (0, 0): unlimited."""
        return 0, 0

    def connection_limit(self) -> int:
        """Connections of this kind allowed at once from one address (0: unlimited)."""
        return 0

    def _count_connection(self) -> bool:
        """Count this connection against its address; False when over the limit."""
        key = count_connection(self.server, self.peer_address, self.connection_limit())
        self._counted_as = key
        return key is not None

    def _uncount_connection(self) -> None:
        key, self._counted_as = self._counted_as, None
        uncount_connection(self.server, key)

    def data_received(self, data: bytes) -> None:
        if self.stream is None:
            return
        if self._bucket is not None:
            self._shape(len(data))
        try:
            events = self.parser.feed(data)
        except XMLStreamError as exc:
            log.debug("XML error %s from %s", exc, self.peer_address)
            self.stream.fail(exc.condition, exc.text)
            return
        if events:
            self.stream.receive(events)

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._call_drained()

    def _call_drained(self) -> None:
        callbacks, self._drained_callbacks = self._drained_callbacks, []
        for callback in callbacks:
            callback()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uncount_connection()
        stream = self.stream
        if stream is None:
            return
        self.server.streams.discard(stream)
        stream.connection_lost()
        self._call_drained()
        # No reference cycles left behind: the connection is freed as soon as the
        # session lets go of it (at once, or when a hibernating session ends).
        self.parser.close()
        self.stream = None

    def _shape(self, size: int) -> None:
        """Past its burst, a peer is read at its rate (`TokenBucket`)."""
        loop = asyncio.get_running_loop()
        assert self._bucket is not None
        pause = self._bucket.take(size, loop.time())
        if pause and "rate" not in self._paused_for:
            self.throttled += 1
            self._pause("rate")
            loop.call_later(pause, self._resume, "rate")

    def _negotiation_timeout(self) -> None:
        # Cancelled by `stream_bound` once negotiation is over.
        self._timer = None
        if self._tls_handshake and self._transport is not None:
            # Half-way into TLS: a stream error now would go out in clear text.
            log.debug("TLS handshake with %s timed out", self.peer_address)
            self._closing = True
            self._transport.abort()
            return
        if self.stream is not None:
            self.stream.fail("connection-timeout", "negotiation took too long")

    # ---- StreamTransport ----------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """Nothing written from now on reaches the peer."""
        return self._closing or self._transport is None

    def notify_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once writing may go on (or the connection is gone)."""
        if not self.write_paused or self.closing:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._drained_callbacks.append(callback)

    def send_header(self, attrs: dict[str, str]) -> None:
        parts = [
            f"<?xml version='1.0'?><stream:stream xmlns='{self.content_ns}'",
            *(f" xmlns:{prefix}='{uri}'" for uri, prefix in self.prefixes.items()),
        ]
        for key, value in attrs.items():
            name = key.replace(f"{{{ns.XML}}}", "xml:")
            parts.append(f" {name}='{escape_attr(value)}'")
        parts.append(">")
        self.write("".join(parts).encode())

    def serialize(self, element: Element) -> bytes:
        # jabber:client elements are written unqualified: the stream's namespace on the wire
        # (jabber:client, jabber:server or jabber:component:accept, declared on the header).
        return serialize(element, ns.CLIENT, self.prefixes).encode()

    def send_element(self, element: Element) -> None:
        self.write(self.serialize(element))

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.max_write_buffer:
            log.warning("%s does not read its data; dropping the connection", self.peer_address)
            self._closing = True
            transport.abort()

    def send_close(self) -> None:
        self.write(b"</stream:stream>")

    def reset_stream(self) -> None:
        self.parser.reset()

    async def starttls(self) -> None:
        raise ConnectionError("no STARTTLS on this stream")

    def channel_bindings(self) -> dict[str, bytes]:
        return {}

    def stream_bound(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self._transport is not None and not self._closing:
            self._closing = True
            self._transport.close()

    def pause_reading(self) -> None:
        self._pause("backlog")

    def resume_reading(self) -> None:
        self._resume("backlog")

    def _pause(self, reason: str) -> None:
        if not self._paused_for and self._transport is not None and not self._closing:
            self._transport.pause_reading()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused_for.discard(reason)
        if not self._paused_for and self._transport is not None and not self._closing:
            self._transport.resume_reading()


class C2STCPProtocol(XMLStreamProtocol):
    """Client streams: STARTTLS, or TLS from the first byte on the direct-TLS port."""

    def __init__(self, server: Server, tls: ServerTLS | None, direct_tls: bool) -> None:
        self.tls = tls
        self.secure = direct_tls
        self.can_starttls = tls is not None and not direct_tls
        super().__init__(server)

    def make_stream(self) -> C2SStream:
        return C2SStream(self.server, self)

    def rate_limit(self) -> tuple[int, int]:
        limits = self.server.config.limits
        return limits.c2s_rate, max(limits.c2s_burst, limits.max_stanza_size)

    def connection_limit(self) -> int:
        return self.server.config.limits.max_connections_per_ip

    async def starttls(self) -> None:
        assert self.tls is not None and self._transport is not None
        loop = asyncio.get_running_loop()
        self._tls_handshake = True
        try:
            new_transport = await loop.start_tls(
                self._transport,
                self,
                self.tls.context,
                server_side=True,
                ssl_handshake_timeout=self.server.config.limits.negotiation_timeout,
            )
        finally:
            self._tls_handshake = False
        if new_transport is None:
            raise ConnectionError("TLS upgrade failed")
        self._transport = new_transport
        self._set_write_limits()
        self.secure = True
        self.can_starttls = False

    def channel_bindings(self) -> dict[str, bytes]:
        if not self.secure or self.tls is None or self._transport is None:
            return {}
        bindings = {"tls-server-end-point": self.tls.end_point_hash}
        ssl_object = self._transport.get_extra_info("ssl_object")
        if (
            isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket)
            and ssl_object.version() != "TLSv1.3"
        ):
            # RFC 5929 tls-unique is defined only up to TLS 1.2 (RFC 9266).
            unique = ssl_object.get_channel_binding("tls-unique")
            if unique:
                bindings["tls-unique"] = unique
        return bindings
