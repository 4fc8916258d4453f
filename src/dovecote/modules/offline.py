"""XEP-0160: Best Practices for Handling Offline Messages.

Messages of type normal and chat to an account with no available resource are stored
(with a XEP-0203 delay stamp) and delivered when a resource becomes available with a
non-negative priority. Headline and groupchat messages are not stored (RFC 6121 §8.5.2.2).
A store full by count (`[offline] max_messages`) or by bytes (`max_bytes`) answers the
sender with resource-constraint (RFC 6121 §8.5.2.2). A message is in storage before anything
else happens to it, so it survives a restart.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.jid import JID
    from dovecote.server import Server

FEATURES = ["msgoffline"]  # XEP-0160 §... service discovery
HINTS = "urn:xmpp:hints"
CHAT_STATES = "http://jabber.org/protocol/chatstates"


def delay_stamp(now: datetime.datetime | None = None) -> str:
    """XEP-0082 DateTime in UTC, as XEP-0203 wants it."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def worth_storing(stanza: Element) -> bool:
    """XEP-0334 no-store/no-permanent-store hints, and bare chat states (XEP-0085 §5.6)
    are not kept."""
    children = list(stanza.elements)
    if any(c.ns == HINTS and c.tag in ("no-store", "no-permanent-store") for c in children):
        return False
    meaningful = [c for c in children if c.ns not in (CHAT_STATES, HINTS)]
    return bool(meaningful)


def setup(server: Server) -> None:
    events = server.events
    limit = server.config.offline.max_messages
    max_bytes = server.config.offline.max_bytes
    locks: dict[Any, asyncio.Lock] = {}

    @events.on("message/offline")
    async def store(event: StanzaEvent) -> bool:
        if (event.type or "normal") not in ("normal", "chat"):
            return False
        if not worth_storing(event.stanza):
            return True  # dropped silently, like a headline
        user: JID = event.to.bare
        copy = event.stanza.copy()
        # XEP-0203: when the message reached the server.
        copy.append(
            Element(
                "delay",
                ns.DELAY,
                {"from": user.domain, "stamp": delay_stamp()},
                text="Offline Storage",
            )
        )
        stored = await server.storage.offline.store(
            user.local, user.domain, serialize(copy), limit, max_bytes
        )
        if not stored:
            # RFC 6121 §8.5.2.2 / XEP-0160 §3: full by count or by bytes.
            raise StanzaError("resource-constraint", "the recipient's offline storage is full")
        return True

    @events.on("presence/outgoing")
    async def deliver(args: tuple[Any, Element]) -> None:
        session, stanza = args
        if stanza.attrs.get("type") is not None:
            return
        if session.priority < 0:
            session.data.pop("offline_delivered", None)
            return
        if session.data.get("offline_delivered"):
            return
        session.data["offline_delivered"] = True
        user = session.jid.bare
        lock = locks.setdefault(user, asyncio.Lock())
        async with lock:
            rows = await server.storage.offline.fetch(user.local, user.domain)
            for _id, text in rows:
                session.send(parse_element(text))
            if rows:
                await server.storage.offline.delete(
                    user.local, user.domain, [row[0] for row in rows]
                )
        if not lock.locked():
            locks.pop(user, None)
