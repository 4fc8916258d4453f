"""XEP-0191: Blocking Command — a user's list of JIDs they exchange no stanzas with.

The lists are the core service `server.blocking` (core/blocking.py: storage, the cache of
online users' lists, the XEP-0191 §6 matching), which this module switches on; without this
module nothing is blocked. The checks run at a high priority, before delivery and before
other modules:

  inbound   a stanza to a user from a JID they block (XEP-0191 §3.3): presence is dropped
            silently, message and IQ get/set answered with service-unavailable, anything
            else dropped
  outbound  a stanza from a user's client to a JID they block: not-acceptable with
            <blocked xmlns='urn:xmpp:blocking:errors'/> (§3.3); presence dropped
  presence  sent by the server on a user's behalf (broadcasts, probe answers) to a JID the
            user blocks: dropped

Blocking sends unavailable presence, unblocking the current presence, to the JIDs the
command names, "but only if the JID is allowed to receive presence notifications from the
user" (§3.3, §3.4): those are the session's presence audience, which the modules that know it
(roster subscriptions 'from'/'both', directed presence) add to a set through the

  presence/audience  (session, set[JID])

event; a blocked domain thus reaches every such contact at that domain, and a stranger
learns nothing (not even the user's resources).

A list holds at most `[blocking] max_items` JIDs; a block beyond is refused with
resource-constraint (RFC 6120 §8.3.3.18; XEP-0191 names no error for it).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from dovecote.core.blocking import EMPTY, is_blocked
from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID, InvalidJID
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.core.sessions import Session
    from dovecote.server import Server

BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
MODULE = ModuleInfo(
    name="blocking",
    summary="Blocking command (XEP-0191): the protocol and its enforcement on stanzas",
    features=[BLOCKING],
    config="blocking",
)
#: Before delivery (lowest priority) and before the modules that store or copy stanzas.
PRIORITY = 100
#: Per session: it asked for the list, so it gets pushes (§3.3, §3.4).
REQUESTED = SessionSlot[bool]("blocking.requested")


def parse_items(command: Element) -> list[JID]:
    """The JIDs of a block/unblock command's <item/>s, in order, without repeats."""
    jids: dict[JID, None] = {}
    for item in command.find_all("item", BLOCKING):
        text = item.get("jid")
        if not text:
            raise StanzaError("jid-malformed", "an item needs a 'jid' attribute")
        try:
            jids[JID.parse(text)] = None
        except InvalidJID:
            raise StanzaError("jid-malformed", f"invalid JID {text!r}") from None
    return list(jids)


def command(tag: str, jids: Iterable[JID]) -> Element:
    element = Element(tag, BLOCKING)
    for jid in jids:
        element.add("item", attrs={"jid": str(jid)})
    return element


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    max_items = server.config.blocking.max_items
    service = server.blocking
    service.activate()
    get_blocklist = service.blocklist
    store = service.store
    lock = service.lock

    def with_blocklist(
        user: JID, check: Callable[[StanzaEvent, AbstractSet[JID]], bool], event: StanzaEvent
    ) -> bool | Awaitable[bool]:
        """Run `check` with the user's list: right away when cached (the hot path
        allocates no coroutine), after loading it otherwise."""
        blocked = service.cached(user)
        if blocked is not None:
            return check(event, blocked)
        return _loaded_then(user, check, event)

    async def _loaded_then(
        user: JID, check: Callable[[StanzaEvent, AbstractSet[JID]], bool], event: StanzaEvent
    ) -> bool:
        return check(event, await get_blocklist(user))

    @events.on("session/bound")
    async def session_bound(session: Session) -> None:
        await get_blocklist(session.jid.bare)

    # ---- the protocol: §3.2 retrieve, §3.3 block, §3.4 unblock, §3.5 unblock all -------
    def owner(event: StanzaEvent) -> JID:
        user = event.to.bare
        if event.sender.bare != user:
            raise StanzaError("forbidden", "the blocklist is only for its owner")
        return user

    def push(user: JID, payload: Element) -> None:
        """§3.3/§3.4: tell every resource that asked for the list about the change."""
        for session in sessions.resources(user):
            if REQUESTED.get(session):
                iq = Element(
                    "iq",
                    ns.CLIENT,
                    {
                        "type": "set",
                        "id": f"push-{secrets.token_hex(6)}",
                        "from": str(user),
                        "to": str(session.jid),
                    },
                    [payload],
                )
                session.send(iq)

    async def send_presence(user: JID, items: AbstractSet[JID], *, unavailable: bool) -> None:
        """From each available resource of the user to those of its presence audience that
        `items` match: unavailable on block (§3.3), the current presence on unblock (§3.4)."""
        if not items:
            return
        for session in sessions.available(user, None):
            audience: set[JID] = set()
            await events.fire_all("presence/audience", (session, audience))
            for contact in audience:
                if contact.bare == user or not is_blocked(items, contact):
                    continue
                if unavailable:
                    stanza = Element("presence", ns.CLIENT, {"type": "unavailable"})
                elif session.presence is not None:
                    stanza = session.presence.shallow_copy()
                else:
                    continue
                stanza.attrs["from"] = str(session.jid)
                stanza.attrs["to"] = str(contact)
                await server.router.route(stanza)

    @events.on(f"iq/bare/get/{BLOCKING}:blocklist")
    async def get_list(event: StanzaEvent) -> bool:
        user = owner(event)
        blocked = await get_blocklist(user)
        session: Any = sessions.get(event.sender)
        if session is not None:
            REQUESTED.set(session, True)
        event.reply(command("blocklist", sorted(blocked, key=str)))
        return True

    @events.on(f"iq/bare/set/{BLOCKING}:block")
    async def block(event: StanzaEvent) -> bool:
        user = owner(event)
        assert event.payload is not None
        jids = parse_items(event.payload)
        if not jids:
            raise StanzaError("bad-request", "name at least one JID to block")
        async with lock(user):
            blocked = await get_blocklist(user)
            added = [j for j in jids if j not in blocked]
            if added and len(blocked) + len(added) > max_items:
                # XEP-0191 names no error for a full list: RFC 6120 §8.3.3.18.
                raise StanzaError("resource-constraint", f"at most {max_items} blocked JIDs")
            await store(user, blocked.union(added))
            # §3.3: unavailable presence to the newly blocked, sent before the block is in
            # force (it would stop this presence too).
            await send_presence(user, set(added), unavailable=True)
            blocked.update(added)
        event.reply()
        push(user, command("block", jids))
        return True

    @events.on(f"iq/bare/set/{BLOCKING}:unblock")
    async def unblock(event: StanzaEvent) -> bool:
        user = owner(event)
        assert event.payload is not None
        jids = parse_items(event.payload)
        async with lock(user):
            blocked = await get_blocklist(user)
            # §3.5: no item unblocks everyone.
            removed = [j for j in jids if j in blocked] if jids else sorted(blocked, key=str)
            await store(user, blocked.difference(removed))
            blocked.difference_update(removed)
        event.reply()
        push(user, command("unblock", jids))
        await send_presence(user, set(removed), unavailable=False)
        return True

    # ---- enforcement ------------------------------------------------------------------
    def blocked_error() -> StanzaError:
        # §3.3, with the error type of the XEP's example.
        return StanzaError(
            "not-acceptable",
            type="cancel",
            app_condition=Element("blocked", BLOCKING_ERRORS),
        )

    def check_inbound(event: StanzaEvent, blocked: AbstractSet[JID]) -> bool:
        """§3.3: a stanza from a JID the addressed user blocks."""
        if not is_blocked(blocked, event.sender):
            return False
        kind = event.stanza.tag
        stanza_type = event.type
        if kind == "message" and stanza_type in (None, "normal", "chat"):
            # Groupchat and headline are dropped like errors: nobody waits for an answer.
            raise StanzaError("service-unavailable")
        if kind == "iq" and stanza_type in ("get", "set"):
            raise StanzaError("service-unavailable")
        return True  # presence, IQ results and errors, other messages: dropped silently

    def inbound(event: StanzaEvent) -> bool | Awaitable[bool]:
        user = event.to.bare
        if event.sender.bare == user:
            return False  # XEP-0191 §5: never between a user's own resources
        return with_blocklist(user, check_inbound, event)

    # "iq/bare": IQs the server answers on the user's behalf (vCard, disco, PEP, ...).
    for name in ("message/bare", "message/full", "iq/full", "iq/bare"):
        events.add(name, inbound, PRIORITY)

    def check_outbound(event: StanzaEvent, blocked: AbstractSet[JID]) -> bool:
        """§3.3: a user's client sends to a JID the user blocks."""
        if not is_blocked(blocked, event.to):
            return False
        kind = event.stanza.tag
        if kind == "presence" or event.type == "error" or (kind == "iq" and event.type == "result"):
            return True  # dropped silently
        raise blocked_error()

    @events.on("stanza/from-client", PRIORITY)
    def outbound(event: StanzaEvent) -> bool | Awaitable[bool]:
        if "to" not in event.stanza.attrs:
            return False  # to the user's own account or server
        user = event.sender.bare
        if event.to.bare == user:
            return False
        return with_blocklist(user, check_outbound, event)

    def sends_for_local_user(jid: JID) -> bool:
        return jid.local is not None and jid.domain in server.hosts

    def presence(event: StanzaEvent) -> bool | Awaitable[bool]:
        """Presence to a user from a JID they block (§3.3), and presence the server sends
        on behalf of a user to a JID the user blocks."""
        sender, to = event.sender, event.to
        user = to.bare
        if sender.bare == user:
            return False
        recipient_list = service.cached(user)
        if recipient_list is None and event.type in (None, "unavailable"):
            if not sessions.is_online(user):
                recipient_list = EMPTY  # delivered to no one anyway: skip the storage
        sender_list = service.cached(sender.bare) if sends_for_local_user(sender) else EMPTY
        if recipient_list is not None and sender_list is not None:
            return is_blocked(recipient_list, sender) or is_blocked(sender_list, to)
        return _presence_loaded(event)

    async def _presence_loaded(event: StanzaEvent) -> bool:
        sender, to = event.sender, event.to
        if is_blocked(await get_blocklist(to.bare), sender):
            return True
        return sends_for_local_user(sender) and is_blocked(await get_blocklist(sender.bare), to)

    for name in ("presence/bare", "presence/full"):
        events.add(name, presence, PRIORITY)
