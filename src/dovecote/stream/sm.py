"""XEP-0198 Stream Management: the counters and the queue of unacknowledged stanzas of one
session. Pure bookkeeping; the client stream (c2s.py) does the I/O and the resumption."""

from __future__ import annotations

from collections import deque

from dovecote.xml.element import Element

NS = "urn:xmpp:sm:3"
#: XEP-0198 §4: counters wrap around at 2^32.
MODULO = 2**32


class AckError(Exception):
    """The client acknowledged more stanzas than were sent (XEP-0198 §4)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"h={h} but only {sent} stanzas were sent")
        self.h = h
        self.sent = sent


class StreamManagement:
    def __init__(self, session_id: str, resumable: bool) -> None:
        self.id = session_id
        self.resumable = resumable
        #: Stanzas received from the client and handled (the 'h' we report).
        self.handled = 0
        #: Stanzas sent to the client (mod 2^32).
        self.sent = 0
        #: Sent but not yet acknowledged, oldest first.
        self.unacked: deque[Element] = deque()
        #: `sent` when we last asked the client for an ack.
        self.requested_at = 0

    def stanza_handled(self) -> None:
        self.handled = (self.handled + 1) % MODULO

    def stanza_sent(self, stanza: Element) -> None:
        self.sent = (self.sent + 1) % MODULO
        self.unacked.append(stanza)

    def acknowledge(self, h: int) -> int:
        """Process `<a h=.../>` (or the h of `<resume/>`); returns how many were dropped."""
        if not 0 <= h < MODULO:
            raise AckError(h, self.sent)
        oldest_unacked = (self.sent - len(self.unacked)) % MODULO
        count = (h - oldest_unacked) % MODULO
        if count > len(self.unacked):
            if (oldest_unacked - h) % MODULO < MODULO // 2:
                return 0  # an old, repeated acknowledgement: nothing new
            raise AckError(h, self.sent)
        for _ in range(count):
            self.unacked.popleft()
        return count

    @property
    def ack_due(self) -> bool:
        """Ask for an ack every few stanzas (and the stream also asks on a timer)."""
        return (self.sent - self.requested_at) % MODULO >= 5
