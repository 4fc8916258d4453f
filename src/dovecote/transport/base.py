"""What a stream needs of its transport (TCP now; WebSocket and BOSH later).

The transport owns the socket, the framing, the XML parser and the timers; the stream
(c2s.py) owns the protocol. Framing differs per transport: on TCP a stream is opened by
`<stream:stream>`, on WebSocket (RFC 7395) by `<open/>`, which is why opening, closing
and element writing go through the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dovecote.xml.element import Element


class StreamTransport(Protocol):
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
