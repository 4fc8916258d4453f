"""XMPP over WebSocket (RFC 7395): one WebSocket connection carries one client stream.

The stream is the same `C2SStream` (negotiation machine, SASL, binding, XEP-0198, the
`ClientSession`) as on TCP; only the framing differs:

- every WebSocket message is one complete XML element (RFC 7395 §3.2, §3.3.3), checked
  as if parsed on its own (one expat parser per connection, `FrameParser`) with the TCP
  limits (`limits.max_stanza_size`, nesting depth): a message that is not well-formed XML
  is `not-well-formed`, one that holds several elements, text or no element but
  whitespace is `bad-format` (RFC 6120 §4.9.3.1, §4.9.3.13);
- `<open/>` and `<close/>` in urn:ietf:params:xml:ns:xmpp-framing stand for the stream
  header and its end (RFC 7395 §3.3.2, §3.4, §3.6); a stream restart is a new `<open/>`
  (§3.7);
- every element we write declares its namespaces (§3.3.3): stanzas carry
  xmlns='jabber:client', stream-level elements `xmlns:stream` — so WebSocket sessions
  have their own serialization (`ClientSession.wire`, router `Fanout`);
- no STARTTLS (§3.9): TLS belongs to the HTTP layer (`https`, or a reverse proxy).

What we write goes through a queue per connection, drained by one task: what is queued
when it runs goes out as consecutive text frames in one write to the socket (aiohttp's
transport; the task waits while the socket's buffer is full): `write_paused` tells the session
when a backlog must wait, and a client that lets more than `max_write_buffer` bytes pile
up is dropped, as on TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from xml.parsers import expat

from aiohttp import WSCloseCode, WSMsgType, web

from dovecote.stream.c2s import C2SStream
from dovecote.stream.negotiation import WEBSOCKET_FRAMING
from dovecote.transport.base import TokenBucket, count_connection, uncount_connection
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr, serialize
from dovecote.xml.parser import (
    ElementReceived,
    ParserEvent,
    StreamClosed,
    StreamHeader,
    StreamOpened,
    StreamParser,
    XMLStreamError,
)

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

#: Bytes waiting to be written before backlogs (offline messages) wait for the client.
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024
#: At most this many bytes of queued messages go to the socket in one write.
WRITE_BATCH = 64 * 1024
_STREAM_PREFIXES = {ns.STREAMS: "stream"}
#: Each message is parsed as the content of this element: stanzas that leave out
#: xmlns='jabber:client' (as some clients do) are still in it.
_WRAP_OPEN = f"<frame xmlns='{ns.CLIENT}'>".encode()
_WRAP_CLOSE = b"</frame>"

#: RFC 6455 §7.4.1 close codes after a stream error (RFC 7395 §3.5): what the XMPP error
#: says about the connection; any other error closes normally, the `<close/>` sent.
CLOSE_CODES = {
    "not-well-formed": WSCloseCode.PROTOCOL_ERROR,
    "bad-format": WSCloseCode.PROTOCOL_ERROR,
    "invalid-namespace": WSCloseCode.PROTOCOL_ERROR,
    "bad-namespace-prefix": WSCloseCode.PROTOCOL_ERROR,
    "restricted-xml": WSCloseCode.PROTOCOL_ERROR,
    "unsupported-encoding": WSCloseCode.INVALID_TEXT,
    "policy-violation": WSCloseCode.POLICY_VIOLATION,
    "system-shutdown": WSCloseCode.GOING_AWAY,
    "internal-server-error": WSCloseCode.INTERNAL_ERROR,
}


#: Fed after every message (RFC 7395 §3.3.3 checks, `FrameParser`): a comment, which only
#: the marker handler accepts. Its `<!--` holds "--" not followed by ">", so no comment
#: left open by the message can swallow it (not-well-formed), and its "<" cannot be in
#: an attribute value or a tag.
_MARKER = b"<!-- -->"


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame of `length` bytes (RFC 6455 §5.2: a
    server's frames are not masked, §5.1; the 7-bit, 16-bit or 64-bit length)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 0x10000:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def _frame_event(received: list[ElementReceived], data: bytes) -> ParserEvent | None:
    """The event of one message's elements (RFC 7395 §3.3.3): exactly one element;
    `<open/>`, `<close/>` and a TCP stream header become stream events."""
    if not received:
        if data.strip(b" \t\r\n"):
            raise XMLStreamError("bad-format", "a message must be one complete element")
        return None
    if len(received) > 1:
        raise XMLStreamError("bad-format", "a message must hold exactly one element")
    event = received[0]
    element = event.element
    if element.ns == ns.FRAMING:
        if element.tag == "open":
            return StreamOpened(StreamHeader("open", ns.FRAMING, None, dict(element.attrs)))
        if element.tag == "close":
            return StreamClosed()
    elif element.ns == ns.STREAMS and element.tag == "stream":
        # A TCP stream header (or an old draft's): a header, refused as one by the
        # negotiation (invalid-namespace) rather than taken for a stray element.
        return StreamOpened(StreamHeader("stream", ns.STREAMS, "stream", dict(element.attrs)))
    return event


def parse_frame_once(data: bytes, max_stanza_size: int) -> ParserEvent | None:
    """One WebSocket message as a parser event (RFC 7395 §3.3.3), parsed by a parser of
    its own: `<open/>` is the stream header, `<close/>` the stream's end, anything else
    an element. None for a message of whitespace only (ignored). Raises XMLStreamError.

    The reference for `FrameParser` (which gives the same answers, cheaper)."""
    parser = StreamParser(max_stanza_size)
    try:
        events = parser.feed(_WRAP_OPEN + data + _WRAP_CLOSE)
    finally:
        parser.close()
    if not events or not isinstance(events[-1], StreamClosed):
        raise XMLStreamError("not-well-formed", "a message must be one complete element")
    received = [event for event in events if isinstance(event, ElementReceived)]
    return _frame_event(received, data)


class FrameParser(StreamParser):
    """The messages of one connection, parsed by one expat parser (RFC 7395 §3.3.3).

    The parser is fed `_WRAP_OPEN` once, then each message followed by `_MARKER`. A
    message passes when the marker's comment is reported at the very byte where the
    message ended, the wrapper still open around it and no element left open: expat
    reports a token only once it is complete and tokens follow each other, so every
    byte of the message was then consumed as complete tokens (a message ending inside
    a tag, an attribute value, a comment, a CDATA section, a PI or a character
    reference is refused, as a parser of its own would refuse it). Everything else
    (restricted XML, text between elements, sizes, depth) is checked by `StreamParser`'s
    handlers as on TCP. After an error the connection ends: the parser is not reused,
    and the condition reported is the one `parse_frame_once` gives for the message.
    """

    def __init__(self, max_stanza_size: int) -> None:
        super().__init__(max_stanza_size)
        self._marker_at = -1
        self._marker_seen = False
        self._parser.CommentHandler = self._comment
        # expat >= 2.6 may put off parsing a chunk that follows a partial token; none is
        # ever pending here (each message ends with the complete marker), but the check
        # relies on every byte being parsed at once: no deferral.
        set_deferral = getattr(self._parser, "SetReparseDeferralEnabled", None)
        if set_deferral is not None:
            set_deferral(False)
        self.feed(_WRAP_OPEN)

    def _comment(self, _data: str) -> None:
        if self._parser.CurrentByteIndex != self._marker_at:
            raise XMLStreamError("restricted-xml", "a comment is not allowed in XMPP")
        self._marker_seen = True

    def close(self) -> None:
        """Release expat; text it still holds is dropped (the connection is over)."""
        self._depth = 0
        super().close()

    def parse(self, data: bytes) -> ParserEvent | None:
        """One message as a parser event, as `parse_frame_once` gives it."""
        try:
            return self._parse(data)
        except XMLStreamError:
            # The connection ends with this error. Which condition a broken message
            # gets when several apply (text before a broken token, a message closing
            # the wrapper) is the reference's: ask it (once per connection, at most).
            self.close()
            parse_frame_once(data, self.max_stanza_size)
            raise

    def _parse(self, data: bytes) -> ParserEvent | None:
        if self._closed:
            raise XMLStreamError("not-well-formed", "a message must be one complete element")
        self._marker_at = self._fed + len(data)
        self._marker_seen = False
        self._fed = self._marker_at + len(_MARKER)
        try:
            self._parser.Parse(data + _MARKER, False)
        except expat.ExpatError as exc:
            raise XMLStreamError("not-well-formed", expat.errors.messages[exc.code]) from None
        events, self._events = self._events, []
        if not self._marker_seen or self._depth != 1 or self._closed:
            # The message ends inside a token that swallowed the marker (a CDATA
            # section, a PI), inside an element, or it closed the wrapper.
            raise XMLStreamError("not-well-formed", "a message must be one complete element")
        received = [event for event in events if isinstance(event, ElementReceived)]
        return _frame_event(received, data)


class WebSocketTransport:
    """The StreamTransport (transport/base.py) of one RFC 7395 connection; `run` is the
    life of the connection, called by the HTTP handler once the handshake is done."""

    framing = WEBSOCKET_FRAMING
    can_starttls = False
    #: A client that does not read while this much waits to be written is dropped.
    max_write_buffer = 8 * 1024 * 1024

    def __init__(
        self,
        server: Server,
        ws: web.WebSocketResponse,
        connection: asyncio.BaseTransport | None,
        peer_address: str,
        secure: bool,
    ) -> None:
        self.server = server
        self.ws = ws
        #: The HTTP connection under the WebSocket (to drop it at once).
        self._connection = connection
        self.peer_address = peer_address
        self.secure = secure
        self.write_paused = False
        self.max_stanza_size = server.config.limits.max_stanza_size
        limits = server.config.limits
        self._bucket = (
            TokenBucket(limits.c2s_rate, max(limits.c2s_burst, limits.max_stanza_size))
            if limits.c2s_rate
            else None
        )
        #: How many times the rate limit paused reading (for tests and metrics).
        self.throttled = 0
        self._closing = False
        self._close_code: int = WSCloseCode.OK
        self._close_requested = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._drained_callbacks: list[Callable[[], None]] = []
        #: Why reading is paused: "backlog" (the stream is behind), "rate" (shaping).
        self._paused_for: set[str] = set()
        self._readable = asyncio.Event()
        self._readable.set()
        self._timer: asyncio.TimerHandle | None = None
        self._counted_as: str | None = None
        #: The connection's messages, one parser for all (RFC 7395 §3.3.3).
        self._frames = FrameParser(self.max_stanza_size)
        self.stream: C2SStream | None = C2SStream(server, self)

    def __repr__(self) -> str:
        return f"<WebSocketTransport from {self.peer_address}>"

    # ---- the connection's life ------------------------------------------------------
    async def run(self) -> None:
        """Read messages until the connection ends; the stream's end comes after."""
        stream = self.stream
        assert stream is not None
        server = self.server
        server.streams.add(stream)
        try:
            key = count_connection(
                server, self.peer_address, server.config.limits.max_connections_per_ip
            )
            self._counted_as = key
            if key is None:
                stream.fail("policy-violation", "too many connections from your address")
                return
            timeout = server.config.limits.negotiation_timeout
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout, self._negotiation_timeout)
            await self._read()
        finally:
            self._connection_lost()
            writer = self._writer
            if writer is not None:
                # The last frames (a stream error, <close/>) go out before the socket.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writer), 5)

    async def _read(self) -> None:
        ws = self.ws
        loop = asyncio.get_running_loop()
        while self.stream is not None and not self._closing:
            if not self._readable.is_set():
                await self._readable.wait()
                continue
            message = await ws.receive()
            kind = message.type
            stream = self.stream
            if stream is None or self._closing:
                return
            if kind is WSMsgType.TEXT:
                data: bytes = message.data
                if self._bucket is not None:
                    pause = self._bucket.take(len(data), loop.time())
                    if pause and "rate" not in self._paused_for:
                        self.throttled += 1
                        self._pause("rate")
                        loop.call_later(pause, self._resume, "rate")
                try:
                    event = self._frames.parse(data)
                except XMLStreamError as exc:
                    log.debug("XML error %s from %s", exc, self.peer_address)
                    stream.fail(exc.condition, exc.text)
                    return
                if event is not None:
                    stream.receive((event,))
            elif kind is WSMsgType.BINARY:
                # RFC 7395 §3.2: XMPP goes in text messages (UTF-8).
                stream.fail("bad-format", "XMPP over WebSocket uses text messages only")
                return
            else:
                # CLOSE, CLOSING, CLOSED, ERROR (a message over the size limit: 1009).
                if kind is WSMsgType.ERROR:
                    log.debug("WebSocket error from %s: %s", self.peer_address, message.data)
                return

    def _connection_lost(self) -> None:
        self._closing = True
        self._frames.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        key, self._counted_as = self._counted_as, None
        uncount_connection(self.server, key)
        stream = self.stream
        if stream is None:
            return
        self.server.streams.discard(stream)
        stream.connection_lost()
        self._call_drained()
        self.stream = None
        self._readable.set()

    def _negotiation_timeout(self) -> None:
        # Cancelled by `stream_bound` once negotiation is over.
        self._timer = None
        if self.stream is not None:
            self.stream.fail("connection-timeout", "negotiation took too long")

    # ---- StreamTransport --------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """Nothing written from now on reaches the peer."""
        return self._closing or self._close_requested

    def notify_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once writing may go on (or the connection is gone)."""
        if not self.write_paused or self.closing:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._drained_callbacks.append(callback)

    def _call_drained(self) -> None:
        callbacks, self._drained_callbacks = self._drained_callbacks, []
        for callback in callbacks:
            callback()

    def send_header(self, attrs: dict[str, str]) -> None:
        """RFC 7395 §3.4: our `<open/>` answers the client's."""
        parts = [f"<open xmlns='{ns.FRAMING}'"]
        for key, value in attrs.items():
            name = key.replace(f"{{{ns.XML}}}", "xml:")
            parts.append(f" {name}='{escape_attr(value)}'")
        parts.append("/>")
        self.write("".join(parts).encode())

    def serialize(self, element: Element) -> bytes:
        """One element with its namespaces declared (RFC 7395 §3.3.3)."""
        if element.ns == ns.STREAMS:
            # <stream:features xmlns:stream='...'>, as clients look for the prefix.
            text = serialize(element, "", _STREAM_PREFIXES)
            head = len(element.tag) + 8  # "<stream:" + tag
            return f"{text[:head]} xmlns:stream='{ns.STREAMS}'{text[head:]}".encode()
        return serialize(element).encode()

    def send_element(self, element: Element) -> None:
        if element.ns == ns.STREAMS and element.tag == "error":
            # RFC 7395 §3.5: the error, <close/>, then the WebSocket closes with a code
            # saying why (RFC 6455 §7.4.1).
            condition = next(
                (child.tag for child in element.elements if child.ns == ns.STREAM_ERRORS), ""
            )
            self._close_code = CLOSE_CODES.get(condition, WSCloseCode.OK)
        self.write(self.serialize(element))

    def write(self, data: bytes) -> None:
        """Queue one message (one complete element)."""
        if self.closing:
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > WRITE_HIGH_WATER:
            if self._queued > self.max_write_buffer:
                log.warning("%s does not read its data; dropping the connection", self.peer_address)
                self._abort()
                return
            self.write_paused = True
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        ws = self.ws
        queue = self._queue
        # aiohttp's frame writer: its transport and protocol (for the socket's flow
        # control). Without them (another aiohttp), one send_frame per message.
        frames: Any = getattr(ws, "_writer", None)
        transport: asyncio.Transport | None = getattr(frames, "transport", None)
        protocol: Any = getattr(frames, "protocol", None)
        if getattr(protocol, "_drain_helper", None) is None:
            transport = None
        try:
            while queue:
                if transport is None:
                    data = queue.popleft()
                    self._queued -= len(data)
                    await ws.send_frame(data, WSMsgType.TEXT)
                else:
                    # Everything queued now (up to WRITE_BATCH bytes) in one write: one
                    # frame per message (RFC 7395 §3.3.3), one system call for them all.
                    if ws.closed or transport.is_closing():
                        raise ConnectionError("the WebSocket is closing")
                    parts: list[bytes] = []
                    size = 0
                    while queue and size < WRITE_BATCH:
                        data = queue.popleft()
                        size += len(data)
                        parts.append(text_frame_header(len(data)))
                        parts.append(data)
                    self._queued -= size
                    transport.write(b"".join(parts))
                if self.write_paused and self._queued <= WRITE_LOW_WATER:
                    self.write_paused = False
                    self._call_drained()
                if transport is not None and protocol.writing_paused:
                    # The socket's buffer is full: wait, while the queue takes the rest.
                    await protocol._drain_helper()
            if self._close_requested and not ws.closed:
                await ws.close(code=self._close_code)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("writing to %s failed: %s", self.peer_address, exc)
            self._abort()
        finally:
            self._writer = None
            if self.write_paused and not queue:
                self.write_paused = False
                self._call_drained()

    def _abort(self) -> None:
        """Drop the connection at once, unwritten frames and all."""
        self._closing = True
        self._queue.clear()
        self._queued = 0
        connection: Any = self._connection
        if connection is not None:
            connection.abort()

    def send_close(self) -> None:
        """RFC 7395 §3.6: `<close/>` ends the stream; the WebSocket closes after it."""
        self.write(f"<close xmlns='{ns.FRAMING}'/>".encode())

    def reset_stream(self) -> None:
        """RFC 7395 §3.7: every message is parsed on its own; nothing to reset."""

    async def starttls(self) -> None:
        raise ConnectionError("no STARTTLS over WebSocket (RFC 7395 §3.9)")

    def channel_bindings(self) -> dict[str, bytes]:
        """None: the TLS of the HTTP layer is not ours to bind to (no -PLUS)."""
        return {}

    def stream_bound(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Send what is queued, then close the WebSocket (1000, or the code a stream
        error chose)."""
        if self.closing:
            return
        self._close_requested = True
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    def pause_reading(self) -> None:
        self._pause("backlog")

    def resume_reading(self) -> None:
        self._resume("backlog")

    def _pause(self, reason: str) -> None:
        self._paused_for.add(reason)
        self._readable.clear()

    def _resume(self, reason: str) -> None:
        self._paused_for.discard(reason)
        if not self._paused_for:
            self._readable.set()
