"""TCP transport for external components (XEP-0114, jabber:component:accept).

Owns the socket, the XML parser and the handshake timer; `ComponentStream` owns the
protocol. XEP-0114 has no TLS: listen on a loopback or private address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dovecote.stream.component import ComponentStream
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr, serialize
from dovecote.xml.parser import StreamParser, XMLStreamError

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

PREFIXES = {ns.STREAMS: "stream"}
#: A component that does not read while this much waits to be written is dropped.
MAX_WRITE_BUFFER = 32 * 1024 * 1024


class ComponentTCPProtocol(asyncio.Protocol):
    secure = False
    can_starttls = False

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peer_address = "?"
        self.parser = StreamParser(server.config.limits.max_stanza_size)
        self.stream = ComponentStream(server, self)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_address = peer[0] if isinstance(peer, tuple) else str(peer)
        self.server.streams.add(self.stream)
        timeout = self.server.config.limits.negotiation_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except XMLStreamError as exc:
            self.stream.fail(exc.condition, exc.text)
            return
        if events:
            self.stream.receive(events)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.streams.discard(self.stream)
        self.stream.connection_lost()

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self.stream.authenticated:
            self.stream.fail("connection-timeout", "no handshake in time")

    # ---- StreamTransport ----------------------------------------------------------------
    def send_header(self, attrs: dict[str, str]) -> None:
        # XEP-0114 §3: the server's header, in the component namespace, with the stream id.
        parts = [
            f"<?xml version='1.0'?><stream:stream xmlns='{ns.COMPONENT}' "
            f"xmlns:stream='{ns.STREAMS}'"
        ]
        for key, value in attrs.items():
            parts.append(f" {key}='{escape_attr(value)}'")
        parts.append(">")
        self.write("".join(parts).encode())

    def serialize(self, element: Element) -> bytes:
        # jabber:client elements are written unqualified: jabber:component:accept on the wire.
        return serialize(element, ns.CLIENT, PREFIXES).encode()

    def send_element(self, element: Element) -> None:
        self.write(self.serialize(element))

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("component at %s does not read; dropping it", self.peer_address)
            self._closing = True
            transport.abort()

    def send_close(self) -> None:
        self.write(b"</stream:stream>")

    def reset_stream(self) -> None:
        self.parser.reset()

    async def starttls(self) -> None:
        raise ConnectionError("no TLS on component streams")

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
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
