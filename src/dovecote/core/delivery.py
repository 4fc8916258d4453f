"""The default delivery rules for local accounts (RFC 6121 §8.5), at the lowest priority so
that modules (offline storage, carbons, archiving, blocking, ...) can act first.

After a chat/normal message reached sessions, `message/delivered` is fired with
(event, sessions) for modules that copy it elsewhere (XEP-0280 carbons)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dovecote.stream.errors import StanzaError

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

LAST = -1000


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    router = server.router

    async def account_exists(event: StanzaEvent) -> bool:
        return await router.account_exists(event.to.bare)

    @events.on("message/full", LAST)
    async def message_to_full(event: StanzaEvent) -> bool:
        session = sessions.get(event.to)
        if session is not None:
            session.send(event.stanza)
            await events.fire_all("message/delivered", (event, [session]))
            return True
        # RFC 6121 §8.5.3.2.1: no such resource.
        msg_type = event.type or "normal"
        if msg_type in ("normal", "chat"):
            await events.fire("message/bare", event)
        elif msg_type == "groupchat":
            router.bounce(event, StanzaError("service-unavailable"))
        return True  # headline and error: silently ignored

    @events.on("message/bare", LAST)
    async def message_to_bare(event: StanzaEvent) -> bool:
        msg_type = event.type or "normal"
        if msg_type == "error":
            return True
        if not await account_exists(event):
            router.bounce(event, StanzaError("service-unavailable"))
            return True
        bare = event.to.bare
        # RFC 6121 §8.5.2.1.1
        if msg_type == "groupchat":
            router.bounce(event, StanzaError("service-unavailable"))
            return True
        if msg_type == "headline":
            router.deliver(sessions.available(bare), event.stanza)
            return True
        targets = sessions.highest_priority(bare)
        if targets:
            router.deliver(targets, event.stanza)
            # Notification (carbons copy to the other resources): (event, sessions).
            await events.fire_all("message/delivered", (event, targets))
            return True
        # §8.5.2.2: no available resource.
        if await events.fire("message/offline", event):
            return True
        if msg_type in ("normal", "chat"):
            router.bounce(event, StanzaError("service-unavailable"))
        return True

    @events.on("message/host", LAST)
    def message_to_host(event: StanzaEvent) -> bool:
        # RFC 6120 §10.4.1: the server handles it; with nothing to do, error for chat/normal.
        if (event.type or "normal") in ("normal", "chat"):
            router.bounce(event, StanzaError("service-unavailable"))
        return True

    @events.on("presence/full", LAST)
    async def presence_to_full(event: StanzaEvent) -> bool:
        session = sessions.get(event.to)
        if session is not None:
            router.deliver_event(event, [session])
            return True
        # RFC 6121 §8.5.3.2.2: subscription-related presence is treated as to the bare JID.
        if event.type in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return await events.fire("presence/bare", event)
        return True

    @events.on("presence/bare", LAST)
    async def presence_to_bare(event: StanzaEvent) -> bool:
        # RFC 6121 §8.5.2.1.3: presence goes to all available resources.
        router.deliver_event(event, sessions.available(event.to.bare, None))
        return True

    @events.on("presence/host", LAST)
    def presence_to_host(event: StanzaEvent) -> bool:
        return True  # RFC 6120 §10.4.2: nothing to do with it

    @events.on("iq/full", LAST)
    def iq_to_full(event: StanzaEvent) -> bool:
        session = sessions.get(event.to)
        if session is not None:
            session.send(event.stanza)
        elif event.type in ("get", "set"):
            router.bounce(event, StanzaError("service-unavailable"))
        return True
