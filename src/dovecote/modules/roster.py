"""Rosters and presence subscriptions (RFC 6121 §2, §3, §4), roster versioning (XEP-0237)
and subscription pre-approval (RFC 6121 §3.4).

This module speaks the protocol; the rosters themselves (cache, locks, writes, pushes) are
the core service `server.rosters` (core/rosters.py), which other modules read too.

Limits: a roster holds at most `[roster] max_items` items however they are made (a roster
set beyond gets not-allowed; an outbound subscribe or subscribed that would add an item,
resource-constraint), and at most `max_pending` subscription requests wait for an answer
(one more is bounced to its sender with resource-constraint, RFC 6120 §8.3.3.18).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.rosters import REQUESTED, ROSTER, item_element
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID, InvalidJID
from dovecote.storage.base import Roster, RosterItem
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

ROSTER_VER = "urn:xmpp:features:rosterver"
PRE_APPROVAL = "urn:xmpp:features:pre-approval"
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
#: RFC 6121 §2.3.3: the server may limit names and groups (not-acceptable beyond).
MAX_NAME_LENGTH = 1023

MODULE = ModuleInfo(
    name="roster",
    summary="Rosters, presence subscriptions and pre-approval (RFC 6121 §2-§4), roster "
    "versioning (XEP-0237)",
    depends=["presence"],
    config="roster",
)


#: Per session: the addresses it sent directed presence to (RFC 6121 §4.6), told
#: unavailable when it ends.
DIRECTED = SessionSlot[set[str]]("roster.directed", set)


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    router = server.router
    rosters = server.rosters
    max_directed = server.config.limits.max_directed_presence
    max_items = server.config.roster.max_items
    max_pending = server.config.roster.max_pending
    # RFC 6121 §2.6.1 / §3.4: stream features after authentication.
    server.stream_features.append(Element("ver", ROSTER_VER))
    server.stream_features.append(Element("sub", PRE_APPROVAL))

    def owner_only(event: StanzaEvent) -> JID:
        user = event.sender.bare
        if event.to.bare != user:
            raise StanzaError("forbidden", "only the owner can access a roster")
        return user

    # ---- roster get (RFC 6121 §2.1.3, XEP-0237 §2) ----------------------------------------
    @events.on(f"iq/bare/get/{ROSTER}:query")
    async def roster_get(event: StanzaEvent) -> bool:
        user = owner_only(event)
        roster = await rosters.get(user)
        if event.origin is not None:
            REQUESTED.set(event.origin, True)
        query = event.payload
        assert query is not None
        client_ver = query.get("ver")
        if client_ver is not None and client_ver != "":
            if client_ver == str(roster.version):
                event.reply()  # XEP-0237 §3: nothing changed, empty result
                return True
            changes = None
            if client_ver.isdigit():
                changes = await server.storage.roster.changes_since(
                    user.local, user.domain, int(client_ver)
                )
            if changes is not None:
                # XEP-0237 §3: an empty result, then a push per change since that version.
                event.reply()
                for version, contact, item in changes:
                    element = (
                        item_element(item)
                        if item is not None
                        else item_element(RosterItem(contact), removed=True)
                    )
                    if event.origin is not None:
                        query_el = Element("query", ROSTER, {"ver": str(version)}, [element])
                        event.origin.send(
                            Element(
                                "iq",
                                ns.CLIENT,
                                {
                                    "type": "set",
                                    "id": f"push{secrets.token_hex(6)}",
                                    "to": str(event.sender),
                                },
                                [query_el],
                            )
                        )
                return True
        result = Element("query", ROSTER, {"ver": str(roster.version)})
        for item in roster.items.values():
            result.append(item_element(item))
        event.reply(result)
        return True

    # ---- roster set (RFC 6121 §2.1.5, §2.3, §2.5) -------------------------------------------
    @events.on(f"iq/bare/set/{ROSTER}:query")
    async def roster_set(event: StanzaEvent) -> bool:
        user = owner_only(event)
        query = event.payload
        assert query is not None
        items = query.find_all("item", ROSTER)
        if len(items) != 1 or len(list(query.elements)) != 1:
            raise StanzaError("bad-request", "a roster set carries exactly one item")
        el = items[0]
        jid_text = el.get("jid")
        if not jid_text:
            raise StanzaError("bad-request", "the item has no jid")
        try:
            contact = JID.parse(jid_text).bare
        except InvalidJID:
            raise StanzaError("jid-malformed", f"invalid jid {jid_text!r}") from None
        contact_key = str(contact)
        async with rosters.lock(user):
            roster = await rosters.get(user)
            if el.get("subscription") == "remove":
                await remove_item(user, roster, contact_key)
                event.reply()
                return True
            name = el.get("name") or None
            if name is not None and len(name) > MAX_NAME_LENGTH:
                raise StanzaError("not-acceptable", "the name is too long")
            groups: list[str] = []
            for group_el in el.find_all("group", ROSTER):
                group = group_el.text
                if group == "":
                    raise StanzaError("not-acceptable", "empty group name")
                if len(group) > MAX_NAME_LENGTH:
                    raise StanzaError("not-acceptable", "the group name is too long")
                if group in groups:
                    raise StanzaError("bad-request", f"duplicate group {group!r}")
                groups.append(group)
            current = roster.items.get(contact_key)
            if current is None and len(roster.items) >= max_items:
                raise StanzaError("not-allowed", "the roster is full")
            # The client sets name and groups only; subscription state is the server's.
            item = RosterItem(
                contact_key,
                name,
                current.subscription if current else "none",
                current.ask if current else False,
                current.approved if current else False,
                tuple(groups),
            )
            await rosters.save(user, roster, item)
        event.reply()
        return True

    async def remove_item(user: JID, roster: Roster, contact: str) -> None:
        """RFC 6121 §2.5.2: cancel both subscriptions, then delete the item."""
        item = roster.items.get(contact)
        if item is None:
            raise StanzaError("item-not-found", "no such roster item")
        if item.subscription in ("to", "both") or item.ask:
            send_subscription(user, contact, "unsubscribe")
        if item.subscription in ("from", "both") or contact in roster.pending:
            send_subscription(user, contact, "unsubscribed")
        await rosters.remove_pending(user, roster, contact)
        await rosters.remove(user, roster, contact)

    def send_subscription(user: JID, contact: str, kind: str) -> None:
        stanza = Element("presence", ns.CLIENT, {"type": kind, "from": str(user), "to": contact})
        router.route_soon(stanza)

    def send_presence_of(user: JID, contact: str, unavailable: bool = False) -> None:
        """Each available resource's presence (or unavailable) to a contact (RFC 6121 §3.1.5)."""
        for session in sessions.available(user, None):
            if unavailable or session.presence is None:
                stanza = Element("presence", ns.CLIENT, {"type": "unavailable"})
            else:
                stanza = session.presence.shallow_copy()
            stanza.attrs["from"] = str(session.jid)
            stanza.attrs["to"] = contact
            router.route_soon(stanza)

    # ---- outbound subscription stanzas (RFC 6121 §3, user's server) --------------------------
    @events.on("stanza/from-client", 50)
    async def outbound(event: StanzaEvent) -> bool:
        stanza = event.stanza
        if stanza.tag != "presence" or "to" not in stanza.attrs:
            return False
        kind = stanza.attrs.get("type")
        if kind is None or kind == "unavailable":
            track_directed(event)
            return False
        if kind not in SUBSCRIPTION_TYPES:
            return False
        user = event.sender.bare
        contact = event.to.bare
        contact_key = str(contact)
        # §3.1.2: the user's server stamps the bare JIDs on subscription stanzas.
        stanza.attrs["from"] = str(user)
        stanza.attrs["to"] = contact_key
        route = True
        presence_after: str | None = None
        async with rosters.lock(user):
            roster = await rosters.get(user)
            item = roster.items.get(contact_key)
            if item is None and kind in ("subscribe", "subscribed"):
                check_room(roster)
            if kind == "subscribe":
                if item is None:
                    item = RosterItem(contact_key)
                if item.subscription not in ("to", "both") and not item.ask:
                    await rosters.save(user, roster, replace(item, ask=True))
            elif kind == "unsubscribe":
                if item is not None and (item.subscription in ("to", "both") or item.ask):
                    new_sub = {"to": "none", "both": "from"}.get(
                        item.subscription, item.subscription
                    )
                    await rosters.save(user, roster, replace(item, subscription=new_sub, ask=False))
            elif kind == "subscribed":
                if contact_key in roster.pending:
                    item = item or RosterItem(contact_key)
                    new_sub = {"none": "from", "to": "both"}.get(
                        item.subscription, item.subscription
                    )
                    await rosters.remove_pending(user, roster, contact_key)
                    await rosters.save(
                        user, roster, replace(item, subscription=new_sub, approved=False)
                    )
                    presence_after = "available"  # §3.1.5, once the approval is on its way
                elif item is not None and item.subscription in ("from", "both"):
                    route = False  # already approved: nothing to do
                else:
                    # §3.4: pre-approval of a subscription request not yet received.
                    item = item or RosterItem(contact_key)
                    if not item.approved:
                        await rosters.save(user, roster, replace(item, approved=True))
                    route = False
            elif kind == "unsubscribed":
                if item is not None and item.subscription in ("from", "both"):
                    new_sub = {"from": "none", "both": "to"}[item.subscription]
                    await rosters.save(
                        user, roster, replace(item, subscription=new_sub, approved=False)
                    )
                    await rosters.remove_pending(user, roster, contact_key)
                    presence_after = "unavailable"  # §3.2.1
                elif contact_key in roster.pending:
                    await rosters.remove_pending(user, roster, contact_key)
                elif item is not None and item.approved:
                    await rosters.save(user, roster, replace(item, approved=False))
                    route = False
                else:
                    route = False
        # Routed (and, for a local contact, stored) before the client's stanza counts as
        # handled (XEP-0198), outside the lock: the contact may be the user.
        if route:
            await router.route(stanza)
        if presence_after is not None:
            send_presence_of(user, contact_key, unavailable=presence_after == "unavailable")
        return True

    def check_room(roster: Roster) -> None:
        """Before an outbound subscription stanza adds an item (RFC 6121 §3.1.2, §3.1.5,
        §3.4): the roster limit holds for these too (RFC 6120 §8.3.3.18)."""
        if len(roster.items) >= max_items:
            raise StanzaError("resource-constraint", f"the roster is full ({max_items} items)")

    def track_directed(event: StanzaEvent) -> None:
        """RFC 6121 §4.6: remember directed presence, to send unavailable later."""
        session = event.origin
        if session is None or (event.to.domain == event.sender.domain and event.to.local is None):
            return
        directed = DIRECTED.setdefault(session)
        target = str(event.to)
        if event.stanza.attrs.get("type") == "unavailable":
            directed.discard(target)
        elif target not in directed:
            if len(directed) >= max_directed:
                # Each is remembered to be told unavailable later: a bounded list.
                raise StanzaError("resource-constraint", "too many directed presences")
            directed.add(target)

    # ---- inbound subscription stanzas and probes (RFC 6121 §3, contact's server) ------------
    @events.on("presence/bare", 10)
    async def inbound(event: StanzaEvent) -> bool:
        kind = event.stanza.attrs.get("type")
        if kind == "probe":
            await answer_probe(event)
            return True
        if kind not in SUBSCRIPTION_TYPES:
            return False
        user = event.to.bare
        contact_key = str(event.sender.bare)
        if not await router.account_exists(user):
            if kind == "subscribe":
                # §3.1.3: no such user; tell the requester the subscription is refused.
                send_subscription(user, contact_key, "unsubscribed")
            return True
        stanza = event.stanza
        stanza.attrs["from"] = contact_key
        deliver = False
        async with rosters.lock(user):
            roster = await rosters.get(user)
            item = roster.items.get(contact_key)
            if kind == "subscribe":
                if item is not None and item.subscription in ("from", "both"):
                    send_subscription(user, contact_key, "subscribed")  # §3.1.3 already approved
                elif item is not None and item.approved:
                    new_sub = {"none": "from", "to": "both"}[item.subscription]
                    await rosters.save(
                        user, roster, replace(item, subscription=new_sub, approved=False)
                    )
                    send_subscription(user, contact_key, "subscribed")
                    send_presence_of(user, contact_key)
                else:
                    # §3.1.3: keep the request until the user answers; show it now.
                    if contact_key not in roster.pending and len(roster.pending) >= max_pending:
                        raise StanzaError(
                            "resource-constraint", "too many subscription requests are waiting"
                        )
                    await rosters.add_pending(user, roster, contact_key, stanza)
                    deliver = True
            elif kind == "subscribed":
                if item is not None and item.ask and item.subscription in ("none", "from"):
                    new_sub = {"none": "to", "from": "both"}[item.subscription]
                    await rosters.save(user, roster, replace(item, subscription=new_sub, ask=False))
                    deliver = True
            elif kind == "unsubscribe":
                if item is not None and item.subscription in ("from", "both"):
                    new_sub = {"from": "none", "both": "to"}[item.subscription]
                    await rosters.save(user, roster, replace(item, subscription=new_sub))
                    deliver = True
                if contact_key in roster.pending:
                    await rosters.remove_pending(user, roster, contact_key)
                    deliver = True
            elif kind == "unsubscribed":
                if item is not None and (item.subscription in ("to", "both") or item.ask):
                    new_sub = {"to": "none", "both": "from"}.get(
                        item.subscription, item.subscription
                    )
                    await rosters.save(user, roster, replace(item, subscription=new_sub, ask=False))
                    deliver = True
        if deliver:
            router.deliver(sessions.available(user, None), stanza)
        return True

    async def answer_probe(event: StanzaEvent) -> None:
        """RFC 6121 §4.3.2: answer for a user's resources to a subscribed contact."""
        user = event.to.bare
        if not await router.account_exists(user):
            return
        roster = await rosters.get(user)
        item = roster.items.get(str(event.sender.bare))
        if item is None or item.subscription not in ("from", "both"):
            return
        for session in sessions.available(user, None):
            if session.presence is None:
                continue
            stanza = session.presence.shallow_copy()
            stanza.attrs["from"] = str(session.jid)
            stanza.attrs["to"] = str(event.sender)
            await router.route(stanza)

    # ---- presence broadcast (RFC 6121 §4.2, §4.4, §4.5) ---------------------------------------
    @events.on("presence/outgoing")
    async def broadcast(args: tuple[Any, Element]) -> None:
        session, stanza = args
        user = session.jid.bare
        roster = await rosters.get(user)
        targets = [
            jid for jid, item in roster.items.items() if item.subscription in ("from", "both")
        ]
        if stanza.attrs.get("type") == "unavailable":
            directed = DIRECTED.pop(session) or set()
            subscribers = set(targets)
            targets += [jid for jid in directed if str(JID.parse(jid).bare) not in subscribers]
        if not targets:
            return
        outgoing = stanza.shallow_copy()
        outgoing.attrs["from"] = str(session.jid)
        # One serialization for all contacts; each still passes blocking and the like.
        await router.route_fanout(outgoing, targets)

    @events.on("presence/audience")
    async def audience(args: tuple[Any, set[JID]]) -> None:
        """Who may see this session's presence: contacts with a 'from' or 'both'
        subscription, and the JIDs it sent directed presence to (RFC 6121 §4.6)."""
        session, members = args
        roster = await rosters.get(session.jid.bare)
        members.update(
            JID.parse(jid)
            for jid, item in roster.items.items()
            if item.subscription in ("from", "both")
        )
        members.update(JID.parse(jid) for jid in DIRECTED.get(session) or ())

    @events.on("presence/initial")
    async def initial(session: Any) -> None:
        user = session.jid.bare
        roster = await rosters.get(user)
        # §4.2.2: probe the contacts the user is subscribed to.
        for jid, item in list(roster.items.items()):
            if item.subscription in ("to", "both"):
                contact = JID.parse(jid)
                # RFC 6121 §4.3.1: to a remote contact the probe comes from the bare
                # JID (its server answers for each available resource of the contact).
                local = contact.domain in server.hosts
                sender = session.jid if local else session.jid.bare
                probe = Element(
                    "presence", ns.CLIENT, {"type": "probe", "from": str(sender), "to": jid}
                )
                await router.route(probe)
        # §3.1.3: pending subscription requests are shown again at each login.
        for contact, text in list(roster.pending.items()):
            request = parse_stored(text, f"subscription request from {contact} to {user}")
            if request is None:
                # The request itself still stands: shown (and stored again) without the
                # unreadable extras, rather than failing at every login.
                request = Element(
                    "presence", ns.CLIENT, {"type": "subscribe", "from": contact, "to": str(user)}
                )
                await rosters.add_pending(user, roster, contact, request)
            session.send(request)


def replace(item: RosterItem, **changes: Any) -> RosterItem:
    values = {
        "jid": item.jid,
        "name": item.name,
        "subscription": item.subscription,
        "ask": item.ask,
        "approved": item.approved,
        "groups": item.groups,
    }
    values.update(changes)
    return RosterItem(**values)
