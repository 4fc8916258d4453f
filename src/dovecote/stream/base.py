"""What every XML stream (client, component; server-to-server later) does with its input:
handle the parsed events in order, one at a time, letting an element that waits (storage,
a TLS handshake) hold back the ones behind it, and pausing the socket when too much
queues up."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from dovecote.stream.errors import StreamError
from dovecote.xml.parser import ParserEvent

log = logging.getLogger(__name__)


class StreamBase:
    """Base of the stream classes: `receive` and `fail` for the transport, ordered
    handling, and ending a stream (with a stream error, RFC 6120 §4.9). Subclasses
    implement `_handle`, `_send_header` and `connection_lost`, and keep `state` ("closed"
    when done), `transport` and `_header_sent`."""

    #: Events queued behind a waiting one before reading pauses (backpressure).
    max_queued = 64
    state: str
    transport: Any

    _header_sent: bool

    def _init_input(self) -> None:
        self._queue: deque[ParserEvent] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        #: Set when either side ends the stream on purpose (not a dropped connection).
        self._ending = False

    def receive(self, events: Iterable[ParserEvent]) -> None:
        """Called by the transport with newly parsed input."""
        if self.state == "closed":
            return
        self._queue.extend(events)
        if self._worker is None and self._queue:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        if len(self._queue) > self.max_queued and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def fail(self, condition: str, text: str = "") -> None:
        """A stream error found by the transport (XML errors, timeouts)."""
        self._stream_error(StreamError(condition, text))

    async def _drain(self) -> None:
        try:
            while self._queue and self.state != "closed":
                event = self._queue.popleft()
                try:
                    await self._handle(event)
                except StreamError as exc:
                    self._stream_error(exc)
                except Exception:
                    log.exception("internal error on %r", self)
                    self._stream_error(StreamError("internal-server-error"))
                if self._paused and len(self._queue) < self.max_queued // 2:
                    self._paused = False
                    self.transport.resume_reading()
        finally:
            self._worker = None

    async def _handle(self, event: ParserEvent) -> None:
        raise NotImplementedError

    def _send_header(self) -> None:
        raise NotImplementedError

    def connection_lost(self) -> None:
        raise NotImplementedError

    def _stream_error(self, error: StreamError) -> None:
        if self.state == "closed":
            return
        # Timeouts are routine (port scanners, dead networks): not worth an INFO line each.
        level = logging.DEBUG if error.condition == "connection-timeout" else logging.INFO
        log.log(level, "stream error %s to %r (%s)", error.condition, self, error.text)
        if not self._header_sent:
            # RFC 6120 §4.9.1.2: open a stream first so that the error can be sent.
            self._send_header()
        self.transport.send_element(error.to_element())
        self.close()

    def close(self, condition: str | None = None, text: str = "") -> None:
        """End the stream, with a stream error when `condition` is given."""
        if self.state == "closed":
            return
        self._ending = True
        if condition is not None:
            self._stream_error(StreamError(condition, text))
            return
        if not self._header_sent:
            self._send_header()
        self.transport.send_close()
        self.transport.close()
        self.connection_lost()
