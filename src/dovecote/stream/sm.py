"""XEP-0198 Stream Management: the counters and the queue of unacknowledged stanzas of one
session. Pure bookkeeping; the client stream (c2s.py) does the I/O and the resumption."""

from __future__ import annotations

from collections import deque

from dovecote.xml.element import Element

NS = "urn:xmpp:sm:3"
#: XEP-0198 §4: counters wrap around at 2^32.
MODULO = 2**32


#: `stored_rows` value of a stanza whose copy is being written to offline storage.
STORING = 0


class AckError(Exception):
    """The client acknowledged more stanzas than were sent (XEP-0198 §4)."""

    def __init__(self, h: int, sent: int) -> None:
        super().__init__(f"h={h} but only {sent} stanzas were sent")
        self.h = h
        self.sent = sent


class StreamManagement:
    def __init__(self, session_id: str, resumable: bool, max_queue: int = 500) -> None:
        self.id = session_id
        self.resumable = resumable
        #: The most unacknowledged stanzas kept (like Prosody's smacks_max_queue_size);
        #: beyond, the session ends and its stanzas are re-routed (nothing is lost).
        self.max_queue = max_queue
        #: Stanzas received from the client and handled (the 'h' we report).
        self.handled = 0
        #: Stanzas sent to the client (mod 2^32).
        self.sent = 0
        #: Sent but not yet acknowledged, oldest first.
        self.unacked: deque[Element] = deque()
        #: `sent` when we last asked the client for an ack.
        self.requested_at = 0
        #: Offline-store rows (XEP-0160) that hold a copy of an unacknowledged stanza,
        #: by the stanza's identity: the row is removed only once the stanza is acked.
        self.stored_rows: dict[int, int] = {}
        #: Rows of stanzas acknowledged since the stream last collected them.
        self.acked_rows: list[int] = []
        #: Stanzas acknowledged (or delivered elsewhere) while their copy was still being
        #: stored: the copy is removed once written.
        self.acked_while_storing: set[int] = set()

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
        stored = self.stored_rows
        for _ in range(count):
            stanza = self.unacked.popleft()
            if stored:
                row = stored.pop(id(stanza), None)
                if row == STORING:
                    self.acked_while_storing.add(id(stanza))
                elif row is not None:
                    self.acked_rows.append(row)
        return count

    @property
    def overflowing(self) -> bool:
        return len(self.unacked) > self.max_queue

    def take_acked_rows(self) -> list[int]:
        rows, self.acked_rows = self.acked_rows, []
        return rows

    @property
    def ack_due(self) -> bool:
        """Ask for an ack every few stanzas (and the stream also asks on a timer)."""
        return (self.sent - self.requested_at) % MODULO >= 5
