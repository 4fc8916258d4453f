"""XEP-0012: Last Activity — the server's uptime (§5), and for accounts how long ago the
user logged out, with the status of their last unavailable presence (§3, §4).

Only the user and contacts allowed to see the user's presence (a 'from' or 'both'
subscription) may ask about an account (§3, §8), also when asking a resource (the query is
then not delivered, §4). §3 and §4 name forbidden for the others; Dovecote answers them
service-unavailable instead, what a missing account or resource answers (RFC 6121 §8.5.1,
§8.5.3.2.1), so that strangers cannot probe which accounts exist or are online
(`Router.may_see_account` is the rule; the router refuses strangers' IQs to the account).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.storage.base import StorageError
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="last",
    summary="Last activity (XEP-0012): server uptime, when an account was last online",
    features=[ns.LAST],
    account_features=[ns.LAST],
)
STORAGE_KEY = "last-activity"


#: Per session: the status of its unavailable presence, kept for the logout record.
LAST_STATUS = SessionSlot[str]("last.status")


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions

    @events.on(f"iq/host/get/{ns.LAST}:query")
    def uptime(event: StanzaEvent) -> bool:
        seconds = int(time.time() - server.started_at)
        event.reply(Element("query", ns.LAST, {"seconds": str(seconds)}))
        return True

    @events.on(f"iq/bare/get/{ns.LAST}:query")
    async def last_logout(event: StanzaEvent) -> bool:
        user = event.to.bare
        if not await server.router.may_see_account(user, event.sender):
            raise StanzaError("service-unavailable")
        if sessions.is_online(user):
            seconds, status = 0, ""  # §3: online users have been active just now
        else:
            text = await server.storage.kv.get(user.local or "", user.domain, STORAGE_KEY)
            if text is None:
                raise StanzaError("item-not-found", "no logout recorded")
            record = json.loads(text)
            seconds = max(0, int(time.time() - record["time"]))
            status = record.get("status", "")
        event.reply(Element("query", ns.LAST, {"seconds": str(seconds)}, text=status or None))
        return True

    @events.on("iq/full", 60)
    async def guard_resources(event: StanzaEvent) -> bool:
        """§4: a query to a resource is delivered only for those who may see presence."""
        payload = event.payload
        if event.type != "get" or payload is None or payload.ns != ns.LAST:
            return False
        if not await server.router.may_see_account(event.to.bare, event.sender):
            raise StanzaError("service-unavailable")
        return False

    @events.on("presence/outgoing")
    def remember_status(args: tuple[Any, Element]) -> None:
        session, stanza = args
        if stanza.attrs.get("type") == "unavailable":
            LAST_STATUS.set(session, stanza.find_text("status", ns.CLIENT) or "")

    @events.on("session/ended", -3000)  # after the unavailable broadcast
    async def record_logout(session: Any) -> None:
        user = session.jid.bare
        if sessions.resources(user):
            return  # still logged in elsewhere
        record = {"time": time.time(), "status": LAST_STATUS.get(session) or ""}
        try:
            await server.storage.kv.set(user.local, user.domain, STORAGE_KEY, json.dumps(record))
        except StorageError:  # a deleted account: nothing to remember
            return
