"""What a stream needs of its transport (TCP, WebSocket, BOSH), and what the
transports share: counting connections per address and shaping what a peer sends.

The transport owns the socket, the framing, the XML parser and the timers; the stream
(c2s.py) owns the protocol. Framing differs per transport: on TCP a stream is opened by
`<stream:stream>`, on WebSocket (RFC 7395) by `<open/>`, which is why opening, closing
and element writing go through the transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dovecote.core.throttle import address_key
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.stream.negotiation import Framing

log = logging.getLogger(__name__)


class StreamTransport(Protocol):
    #: The element that opens a stream on this transport (`stream/negotiation.py`).
    framing: Framing
    #: TLS is in place (direct TLS, after STARTTLS, or a TLS WebSocket).
    secure: bool
    #: STARTTLS can be offered (a plain TCP connection with a TLS context).
    can_starttls: bool
    #: The remote address, for logging and rate limits.
    peer_address: str
    #: The peer reads slower than we write: hold back what can wait (flow control).
    write_paused: bool

    @property
    def closing(self) -> bool:
        """Nothing written from now on reaches the peer."""

    def notify_drained(self, callback: Callable[[], None]) -> None:
        """Call `callback` once writing may go on (or the connection is gone)."""

    def send_header(self, attrs: dict[str, str]) -> None: ...

    def send_element(self, element: Element) -> None: ...

    def serialize(self, element: Element) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def send_close(self) -> None: ...

    def reset_stream(self) -> None:
        """A stream restart (RFC 6120 §4.3.3): the next input is a new stream header."""

    async def starttls(self) -> None:
        """Upgrade to TLS (RFC 6120 §5.4.3.3); raises on failure."""

    def channel_bindings(self) -> dict[str, bytes]:
        """RFC 5929 channel binding data by type, empty without TLS."""

    def stream_bound(self) -> None:
        """Negotiation is over (stops the negotiation timer)."""

    def close(self) -> None:
        """Flush what was written and close the connection."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


# ---- what the transports share ------------------------------------------------------
def count_connection(server: Any, peer_address: str, limit: int) -> str | None:
    """Count a new connection from `peer_address` against `limit` connections per
    address key (`core/throttle.py` address_key; 0: unlimited). Returns the key it is
    counted under (give it back to `uncount_connection` when the connection ends), ""
    when nothing was counted (no limit), or None when the address is over its limit."""
    if not limit:
        return ""
    key = address_key(peer_address)
    counts = server.connections_per_address
    count = counts.get(key, 0)
    if count >= limit:
        refused = server.refused_per_address
        # One WARNING per flood (for fail2ban), not one per refused connection.
        level = logging.DEBUG if key in refused else logging.WARNING
        refused[key] = refused.get(key, 0) + 1
        log.log(level, "too many connections from %s: refused", peer_address)
        return None
    counts[key] = count + 1
    return key


def uncount_connection(server: Any, key: str | None) -> None:
    """A connection counted by `count_connection` under `key` ended."""
    if not key:
        return
    counts = server.connections_per_address
    refused = server.refused_per_address.pop(key, 0)
    if refused > 1:
        log.info("%d connections from %s were refused (too many)", refused, key)
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class TokenBucket:
    """Traffic shaping of what a peer sends: `rate` bytes per second on average, `burst`
    at once. `take` answers how long to stop reading (0: go on); a flood slows down
    itself, not the server (like Prosody's mod_limits)."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = 0.0

    def take(self, size: int, now: float) -> float:
        """`size` bytes arrived at `now` (loop time): seconds to pause reading."""
        if self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= size
        return -self._tokens / self.rate if self._tokens < 0 else 0.0
