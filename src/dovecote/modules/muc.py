"""XEP-0045 Multi-User Chat: the conference service at `[muc] domain`.

The service (`services/muc/service.py`) registers itself as the component of its domain:
the router hands it every stanza to the domain or to a room on it, and the server's
disco#items lists it. Rooms speak XEP-0045 1.35 with occupant ids (XEP-0421), stable
stanza ids (XEP-0359), self-ping (XEP-0410), moderation (XEP-0425 with XEP-0424) and, with
a room archive, XEP-0313 on the room JID.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.services.muc.service import MucService

if TYPE_CHECKING:
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="muc",
    summary="Multi-user chat (XEP-0045) at [muc] domain: rooms, affiliations, history, "
    "occupant ids (XEP-0421), self-ping (XEP-0410), moderation (XEP-0425)",
    config="muc",
)


def setup(server: Server) -> None:
    if server.config.muc.domain is None:
        return
    service = MucService(server, server.config.muc)
    server.components[service.domain] = service

    @server.events.on("session/ended")
    def session_ended(session: Any) -> None:
        service.session_ended(session.jid)
