"""XEP-0012: Last Activity — for the server, its uptime (XEP-0012 §5)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

FEATURES = [ns.LAST]


def setup(server: Server) -> None:
    @server.events.on(f"iq/host/get/{ns.LAST}:query")
    def uptime(event: StanzaEvent) -> bool:
        seconds = int(time.time() - server.started_at)
        event.reply(Element("query", ns.LAST, {"seconds": str(seconds)}))
        return True
