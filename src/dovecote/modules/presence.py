"""Presence of a user's own sessions (RFC 6121 §4): availability, priority, broadcast of
the user's presence to their own available resources, unavailable presence when a session
ends. Subscriptions and roster-based broadcast build on the hooks fired here:

  presence/initial   (session)  the session became available (probes, offline delivery)
  presence/outgoing  (session, stanza)  broadcast targets beyond the user's own resources
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server


MODULE = ModuleInfo(
    name="presence",
    summary="Presence of a user's own sessions (RFC 6121 §4): availability, priority, "
    "unavailable presence when a session ends",
)


def parse_priority(stanza: Element) -> int:
    """RFC 6121 §4.7.2.3: an integer from -128 to +127, 0 when absent."""
    text = stanza.find_text("priority", ns.CLIENT)
    if text is None:
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise StanzaError("bad-request", "priority must be an integer") from None
    if not -128 <= value <= 127:
        raise StanzaError("bad-request", "priority must be from -128 to 127")
    return value


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions

    def broadcast_to_own_resources(stanza: Element, bare) -> None:  # type: ignore[no-untyped-def]
        # RFC 6121 §4.2.2 / §4.4.2: every available resource of the user, the sender too.
        server.router.deliver(sessions.available(bare, None), stanza)

    @events.on("presence/broadcast", -1000)
    async def presence_broadcast(event: StanzaEvent) -> bool:
        session = event.origin
        assert session is not None
        stanza = event.stanza
        presence_type = stanza.attrs.get("type")
        if presence_type is None:
            priority = parse_priority(stanza)
            was_available = session.available
            if not was_available:
                # The new resource learns about the user's other available resources, as a
                # probe of the user's own bare JID would tell it (RFC 6121 §4.2.2/§4.3.2).
                for other in sessions.available(session.jid.bare, None):
                    if other is not session and other.presence is not None:
                        session.send(other.presence)
            session.priority = priority
            session.available = True
            session.presence = stanza
            broadcast_to_own_resources(stanza, session.jid.bare)
            await events.fire_all("presence/outgoing", (session, stanza))
            if not was_available:
                await events.fire_all("presence/initial", session)
        elif presence_type == "unavailable":
            if session.available:
                session.available = False
                session.presence = None
                broadcast_to_own_resources(stanza, session.jid.bare)
                session.send(stanza)  # RFC 6121 §4.5.2: the user's resource gets it too
                await events.fire_all("presence/outgoing", (session, stanza))
        elif presence_type in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            raise StanzaError("bad-request", "a subscription request needs a 'to' address")
        elif presence_type == "probe":
            pass  # a probe to nobody: nothing to answer
        else:
            raise StanzaError("bad-request", f"unknown presence type {presence_type!r}")
        return True

    @events.on("session/ended", -1000)
    async def session_ended(session) -> None:  # type: ignore[no-untyped-def]
        # RFC 6121 §4.5.3.2: the server sends unavailable presence on the user's behalf.
        if not session.available:
            return
        session.available = False
        session.presence = None
        if sessions.get(session.jid) is not None:
            # Replaced by a new session of the same resource (a conflict): the resource
            # is still there, so nobody is told it went away.
            return
        unavailable = Element(
            "presence", ns.CLIENT, {"type": "unavailable", "from": str(session.jid)}
        )
        broadcast_to_own_resources(unavailable, session.jid.bare)
        await events.fire_all("presence/outgoing", (session, unavailable))
