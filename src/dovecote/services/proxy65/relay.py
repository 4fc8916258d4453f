"""SOCKS5 connections to the proxy and the relay between the two ends of a bytestream.

A `Socks5Connection` is an `asyncio.Protocol`: it runs the handshake (`socks5.py`), then
waits, ignoring what it receives (XEP-0065 §9.1), until the service pairs it with the other
connection of the same stream hash and the Requester activates them (XEP-0065 §6.3.5);
then a `Relay` copies bytes both ways.

Nothing is buffered without bound: a relay holds at most the one chunk read last from a
source while it waits, and reads no more from that source until the chunk is written.
The source is paused while the destination's write buffer is above its high-water mark
(`pause_writing`/`resume_writing`) and while the bandwidth cap says to wait; TCP then
pushes back on the sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from dovecote.services.proxy65.socks5 import HandshakeError, Socks5Handshake

if TYPE_CHECKING:
    from dovecote.services.proxy65.service import Proxy65Service

log = logging.getLogger(__name__)


class Socks5Connection(asyncio.Protocol):
    """One TCP connection to the proxy's SOCKS5 listener."""

    def __init__(self, service: Proxy65Service) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.handshake: Socks5Handshake | None = Socks5Handshake()
        #: DST.ADDR of the CONNECT request (the stream hash), once accepted.
        self.hash: str | None = None
        self.peer_address = ""
        self.relay: Relay | None = None
        #: The address key this connection is counted under (per-address limit).
        self.counted_as: str | None = None
        self.write_paused = False
        self.reading_paused = False
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer_address = str(peer[0]) if peer else ""
        if not self.service.admit(self):
            self.closed = True
            transport.abort()
            return
        # A connection has `activation_timeout` seconds, from now, to be activated.
        self._timer = asyncio.get_running_loop().call_later(
            self.service.policy.activation_timeout, self._activation_timed_out
        )

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.received(self, data)
            return
        handshake = self.handshake
        if handshake is None:
            return  # waiting for activation: ignored (XEP-0065 §9.1)
        try:
            reply, dst_addr = handshake.feed(data)
        except HandshakeError as exc:
            # DEBUG: scanners knock on open ports; one line each would flood the log.
            log.debug("SOCKS5 connection from %s refused: %s", self.peer_address, exc)
            self.handshake = None
            if exc.reply is not None:
                self.write(exc.reply)
            self.close()
            return
        if reply:
            self.write(reply)
        if dst_addr is not None:
            self.handshake = None
            self.service.connected(self, dst_addr)

    def eof_received(self) -> bool | None:
        return None  # close our side too: a bytestream ends when either end closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.service.disconnected(self)
        if self.relay is not None:
            self.relay.end_lost(self)
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.relay is not None:
            self.relay.destination_paused(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.relay is not None:
            self.relay.destination_resumed(self)

    # ---- helpers -------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self.closed or self.reading_paused == (not on):
            return
        self.reading_paused = not on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def close(self) -> None:
        """Close after writing what is buffered."""
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        if self.transport is not None:
            self.transport.abort()

    def activated(self, relay: Relay) -> None:
        self._cancel_timer()
        self.relay = relay

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _activation_timed_out(self) -> None:
        self._timer = None
        if self.relay is None and not self.closed:
            state = "waiting for activation" if self.hash else "in the SOCKS5 handshake"
            log.info(
                "SOCKS5 connection from %s closed: %s after %gs",
                self.peer_address,
                state,
                self.service.policy.activation_timeout,
            )
            self.abort()


class Relay:
    """An activated bytestream: bytes from each end are written to the other, paced by a
    token bucket shared by both directions (`rate` bytes/s; 0: no cap)."""

    def __init__(
        self,
        service: Proxy65Service,
        first: Socks5Connection,
        second: Socks5Connection,
        *,
        rate: int,
        max_bytes: int,
        idle_timeout: float,
    ) -> None:
        self.service = service
        self.first = first
        self.second = second
        self.rate = rate
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        #: A tenth of a second's worth at once: smooth pacing, few timers.
        self.burst = max(rate // 10, 1) if rate else 0
        self.tokens = float(self.burst)
        self._refilled_at = self.loop.time()
        #: Bytes read from a source and not yet written to the other end (one chunk).
        self.pending: dict[Socks5Connection, memoryview] = {}
        self.relayed = 0
        self.last_activity = self.loop.time()
        self.closed = False
        #: The end whose last bytes are still being delivered after it closed.
        self._draining: Socks5Connection | None = None
        self._pump: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = self.loop.call_later(
            idle_timeout, self._check_idle
        )
        first.activated(self)
        second.activated(self)
        # Both ends were read all along: what they sent before activation was dropped
        # (§9.1); from now on it is relayed.
        first.set_reading(True)
        second.set_reading(True)

    def other(self, conn: Socks5Connection) -> Socks5Connection:
        return self.second if conn is self.first else self.first

    # ---- data ---------------------------------------------------------------------------
    def received(self, source: Socks5Connection, data: bytes) -> None:
        if self.closed or self._draining is not None:
            return
        self.last_activity = self.loop.time()
        self.relayed += len(data)
        if self.max_bytes and self.relayed > self.max_bytes:
            log.info(
                "bytestream %s closed: more than max_transfer_size (%d bytes)",
                source.hash,
                self.max_bytes,
            )
            self.close(graceful=False)
            return
        held = self.pending.get(source)
        # Reading is paused while something is held, so this is the rare case of a read
        # that was already under way.
        self.pending[source] = memoryview(bytes(held) + data if held is not None else data)
        self._forward(source)

    def _forward(self, source: Socks5Connection) -> None:
        """Write what `source` sent to the other end, as far as the cap and the other
        end's write buffer allow; keep the rest and stop reading `source` meanwhile."""
        data = self.pending.get(source)
        if data is None:
            return
        destination = self.other(source)
        if destination.closed:
            self.pending.pop(source, None)
            return
        if destination.write_paused:
            source.set_reading(False)  # resumed by destination_resumed
            return
        if self.rate:
            self._refill()
            count = min(len(data), int(self.tokens))
            self.tokens -= count
        else:
            count = len(data)
        if count:
            destination.write(data[:count])
            data = data[count:]
            # Paced writes are activity too: a slow cap reads seldom.
            self.last_activity = self.loop.time()
        if data:
            self.pending[source] = data
            source.set_reading(False)
            self._schedule_pump(min(len(data), self.burst))
            return
        del self.pending[source]
        if source is self._draining:
            self.close(graceful=True)
        elif not destination.write_paused:
            source.set_reading(True)
        else:
            source.set_reading(False)

    def _refill(self) -> None:
        now = self.loop.time()
        self.tokens = min(self.burst, self.tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now

    def _schedule_pump(self, wanted: int) -> None:
        """Come back when the bucket holds `wanted` bytes."""
        if self._pump is not None or self.closed:
            return
        delay = max(0.0, (wanted - self.tokens) / self.rate)
        self._pump = self.loop.call_later(delay, self._run_pump)

    def _run_pump(self) -> None:
        self._pump = None
        if self.closed:
            return
        for source in (self.first, self.second):
            if source in self.pending:
                self._forward(source)

    def destination_paused(self, destination: Socks5Connection) -> None:
        self.other(destination).set_reading(False)

    def destination_resumed(self, destination: Socks5Connection) -> None:
        source = self.other(destination)
        if source in self.pending:
            self._forward(source)
        elif not source.closed and self._draining is None:
            source.set_reading(True)

    # ---- ends and timeouts --------------------------------------------------------------
    def end_lost(self, conn: Socks5Connection) -> None:
        """One end closed: deliver what it sent that is still held, then close the other."""
        if self.closed:
            return
        other = self.other(conn)
        self.pending.pop(other, None)  # nobody left to read it
        if conn in self.pending and not other.closed:
            self._draining = conn
            self._forward(conn)
            return
        self.close(graceful=True)

    def _check_idle(self) -> None:
        self._idle = None
        if self.closed:
            return
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.idle_timeout:
            log.info("bytestream %s closed: idle for %gs", self.first.hash or "", self.idle_timeout)
            self.close(graceful=False)
            return
        self._idle = self.loop.call_later(self.idle_timeout - quiet, self._check_idle)

    def close(self, *, graceful: bool) -> None:
        """End the relay; `graceful`: both ends get what is in their write buffers first
        (within `idle_timeout`, then they are cut)."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._pump, self._idle):
            if handle is not None:
                handle.cancel()
        self._pump = self._idle = None
        self.pending.clear()
        for end in (self.first, self.second):
            if end.closed:
                continue
            if graceful:
                end.close()
                # A peer that never reads its last bytes must not keep the socket forever.
                self.loop.call_later(self.idle_timeout, _abort_if_open, end)
            else:
                end.abort()
        self.service.relay_ended(self)


def _abort_if_open(conn: Socks5Connection) -> None:
    if not conn.closed:
        with contextlib.suppress(Exception):
            conn.abort()
