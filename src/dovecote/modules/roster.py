"""Rosters and presence subscriptions (RFC 6121 §2, §3, §4), roster versioning (XEP-0237)
and subscription pre-approval (RFC 6121 §3.4).

The roster of a user with sessions online is cached in memory, so presence broadcast touches
no storage; every change is written through to storage before it is pushed or routed. A lock
per user serializes the read-modify-write of subscription states.

Limits: a roster holds at most `[roster] max_items` items however they are made (a roster
set beyond gets not-allowed; an outbound subscribe or subscribed that would add an item,
resource-constraint), and at most `max_pending` subscription requests wait for an answer
(one more is bounced to its sender with resource-constraint, RFC 6120 §8.3.3.18).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from dovecote.jid import JID, InvalidJID
from dovecote.storage.base import Roster, RosterItem
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

ROSTER = "jabber:iq:roster"
ROSTER_VER = "urn:xmpp:features:rosterver"
PRE_APPROVAL = "urn:xmpp:features:pre-approval"
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
#: RFC 6121 §2.3.3: the server may limit names and groups (not-acceptable beyond).
MAX_NAME_LENGTH = 1023

FEATURES: list[str] = []


def item_element(item: RosterItem, removed: bool = False) -> Element:
    """RFC 6121 §2.1.2: a roster item as sent to clients."""
    el = Element("item", ROSTER, {"jid": item.jid})
    if removed:
        el.attrs["subscription"] = "remove"
        return el
    if item.name:
        el.attrs["name"] = item.name
    el.attrs["subscription"] = item.subscription
    if item.ask:
        el.attrs["ask"] = "subscribe"
    if item.approved:
        el.attrs["approved"] = "true"
    for group in item.groups:
        el.add("group", text=group)
    return el


class Rosters:
    """Cached rosters of online users, loaded on demand, with a lock per user."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cache: dict[JID, Roster] = {}
        self._locks: dict[JID, asyncio.Lock] = {}

    def lock(self, user: JID) -> asyncio.Lock:
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = asyncio.Lock()
        return lock

    async def get(self, user: JID) -> Roster:
        roster = self._cache.get(user)
        if roster is None:
            roster = await self.server.storage.roster.load(user.local, user.domain)
            if self.server.sessions.is_online(user):
                roster = self._cache.setdefault(user, roster)
        return roster

    def cached_users(self) -> list[JID]:
        """The users whose roster is in memory (those with sessions online)."""
        return list(self._cache)

    def forget(self, user: JID) -> None:
        self._cache.pop(user, None)
        lock = self._locks.get(user)
        if lock is not None and not lock.locked():
            del self._locks[user]

    async def save(self, user: JID, roster: Roster, item: RosterItem) -> None:
        roster.version = await self.server.storage.roster.put(user.local, user.domain, item)
        roster.items[item.jid] = item
        self.push(user, item_element(item), roster.version)

    async def remove(self, user: JID, roster: Roster, contact: str) -> None:
        item = roster.items.pop(contact, None)
        roster.version = await self.server.storage.roster.remove(user.local, user.domain, contact)
        if item is not None:
            self.push(user, item_element(item, removed=True), roster.version)

    async def add_pending(self, user: JID, roster: Roster, contact: str, stanza: Element) -> None:
        text = serialize(stanza)
        await self.server.storage.roster.add_pending(user.local, user.domain, contact, text)
        roster.pending[contact] = text

    async def remove_pending(self, user: JID, roster: Roster, contact: str) -> None:
        if roster.pending.pop(contact, None) is not None:
            await self.server.storage.roster.remove_pending(user.local, user.domain, contact)

    def push(self, user: JID, item: Element, version: int) -> None:
        """RFC 6121 §2.1.6: a roster push to every resource that asked for the roster."""
        for session in self.server.sessions.resources(user):
            if session.data.get("roster_requested"):
                query = Element("query", ROSTER, {"ver": str(version)}, [item])
                push = Element(
                    "iq",
                    ns.CLIENT,
                    {"type": "set", "id": f"push{secrets.token_hex(6)}", "to": str(session.jid)},
                    [query],
                )
                session.send(push)


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    router = server.router
    rosters = Rosters(server)
    server.rosters = rosters  # type: ignore[attr-defined]
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
            event.origin.data["roster_requested"] = True
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
        directed: set[str] = session.data.setdefault("directed", set())  # type: ignore[assignment]
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
            directed: set[str] = session.data.pop("directed", set())
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
        members.update(JID.parse(jid) for jid in session.data.get("directed", ()))

    @events.on("presence/initial")
    async def initial(session: Any) -> None:
        user = session.jid.bare
        roster = await rosters.get(user)
        # §4.2.2: probe the contacts the user is subscribed to.
        for jid, item in list(roster.items.items()):
            if item.subscription in ("to", "both"):
                contact = JID.parse(jid)
                if contact.domain in server.hosts:
                    probe = Element(
                        "presence",
                        ns.CLIENT,
                        {"type": "probe", "from": str(session.jid), "to": jid},
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

    @events.on("account/deleted")
    async def contact_deleted(account: JID) -> None:
        """The account's storage deletion (`AccountStore.delete`, by the CLI in another
        process or in-band) removed it from every local roster; tell the contacts online:
        a roster push of the removal (RFC 6121 §2.1.6, at the new version) and, to those
        who saw its presence, unavailable presence from it (RFC 6121 §3.3.3, §4.5)."""
        gone = str(account.bare)
        rosters.forget(account.bare)
        for user in rosters.cached_users():
            if user == account.bare:
                continue
            async with rosters.lock(user):
                roster = await rosters.get(user)
                if gone not in roster.items and gone not in roster.pending:
                    continue
                item = roster.items.get(gone)
                stored = await server.storage.roster.load(user.local, user.domain)
                # In place: handlers waiting for this lock hold the same object.
                roster.items, roster.pending = stored.items, stored.pending
                roster.version = stored.version
            if item is None:
                continue
            rosters.push(user, item_element(item, removed=True), roster.version)
            if item.subscription in ("to", "both"):
                unavailable = Element(
                    "presence", ns.CLIENT, {"type": "unavailable", "from": gone, "to": str(user)}
                )
                router.deliver(sessions.available(user, None), unavailable)

    @events.on("session/ended", -2000)  # after the unavailable broadcast
    def forget(session: Any) -> None:
        user = session.jid.bare
        if not sessions.is_online(user):
            rosters.forget(user)


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
