"""The roster service: each user's roster and presence subscriptions (RFC 6121 §2, §3), a
core service like Prosody's rostermanager, available as `server.rosters`.

Rosters are core data: who may see a user's presence (a 'from' or 'both' subscription,
RFC 6121 §4.1) decides what last activity, MAM's 'roster' preference and PEP access models
answer, whether or not the roster *module* is loaded. modules/roster.py speaks the protocol
(roster get/set, the subscription state machine, presence broadcast); with it disabled,
rosters keep what storage holds and every rule that reads them still applies.

The roster of a user with sessions online is cached in memory, so presence broadcast touches
no storage; every change is written through to storage before it is pushed or routed. A lock
per user serializes the read-modify-write of subscription states.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dovecote.core.events import log_failure
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID
from dovecote.storage.base import Roster, RosterItem
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize

if TYPE_CHECKING:
    from dovecote.server import Server

ROSTER = "jabber:iq:roster"
#: Subscription states that let the contact see the user's presence (RFC 6121 §3.1.5, §4.1).
PRESENCE_TO_CONTACT = frozenset(("from", "both"))
#: Per session: it asked for the roster, so it gets pushes (RFC 6121 §2.1.6).
REQUESTED = SessionSlot[bool]("roster.requested")


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


class RosterService:
    """Cached rosters of online users, loaded on demand, with a lock per user."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cache: dict[JID, Roster] = {}
        # A lock lives as long as someone holds or awaits it (as the blocking service's):
        # locking the rosters of offline contacts leaves nothing behind.
        self._locks: weakref.WeakValueDictionary[JID, asyncio.Lock] = weakref.WeakValueDictionary()
        #: Called with (user, item element, version) after each push to the user's
        #: resources: others that get pushes (XEP-0356 §3.3, privileged components).
        self.push_listeners: list[Callable[[JID, Element, int], None]] = []
        # After the unavailable broadcasts (presence -1000), which still read the roster.
        server.events.add("session/ended", self._session_ended, -2000)
        server.events.add("account/deleted", self._account_deleted)

    # ---- reading -------------------------------------------------------------------------
    def lock(self, user: JID) -> asyncio.Lock:
        lock = self._locks.get(user)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[user] = lock
        return lock

    async def get(self, user: JID) -> Roster:
        roster = self._cache.get(user)
        if roster is None:
            roster = await self.server.storage.roster.load(user.local, user.domain)
            if self.server.sessions.is_online(user):
                roster = self._cache.setdefault(user, roster)
        return roster

    async def item(self, user: JID, contact: JID) -> RosterItem | None:
        """`contact`'s item in `user`'s roster (by bare JID), if any."""
        return (await self.get(user)).items.get(str(contact.bare))

    async def presence_allowed(self, user: JID, contact: JID) -> bool:
        """May `contact` see `user`'s presence: a 'from' or 'both' subscription (RFC 6121
        §4.1)? Only the subscription counts here; `Router.may_see_account` adds the owner
        and the server."""
        item = await self.item(user, contact)
        return item is not None and item.subscription in PRESENCE_TO_CONTACT

    async def in_roster(self, user: JID, contact: JID) -> bool:
        """Is `contact` in `user`'s roster, whatever the subscription (XEP-0441 'roster')?"""
        return await self.item(user, contact) is not None

    def cached_users(self) -> list[JID]:
        """The users whose roster is in memory (those with sessions online)."""
        return list(self._cache)

    def forget(self, user: JID) -> None:
        self._cache.pop(user, None)

    # ---- writing (callers hold the user's lock) ------------------------------------------
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
            if REQUESTED.get(session):
                query = Element("query", ROSTER, {"ver": str(version)}, [item])
                push = Element(
                    "iq",
                    ns.CLIENT,
                    {"type": "set", "id": f"push{secrets.token_hex(6)}", "to": str(session.jid)},
                    [query],
                )
                session.send(push)
        for listener in self.push_listeners:
            try:
                listener(user, item, version)
            except Exception:
                log_failure("roster push", listener, user)

    # ---- cache upkeep ----------------------------------------------------------------------
    def _session_ended(self, session: Any) -> None:
        user = session.jid.bare
        if not self.server.sessions.is_online(user):
            self.forget(user)

    async def _account_deleted(self, account: JID) -> None:
        """The account's storage deletion (`AccountStore.delete`, by the CLI in another
        process or in-band) removed it from every local roster; tell the contacts online:
        a roster push of the removal (RFC 6121 §2.1.6, at the new version) and, to those
        who saw its presence, unavailable presence from it (RFC 6121 §3.3.3, §4.5)."""
        gone = str(account.bare)
        self.forget(account.bare)
        for user in self.cached_users():
            if user == account.bare:
                continue
            async with self.lock(user):
                roster = await self.get(user)
                if gone not in roster.items and gone not in roster.pending:
                    continue
                item = roster.items.get(gone)
                stored = await self.server.storage.roster.load(user.local, user.domain)
                # In place: handlers waiting for this lock hold the same object.
                roster.items, roster.pending = stored.items, stored.pending
                roster.version = stored.version
            if item is None:
                continue
            self.push(user, item_element(item, removed=True), roster.version)
            if item.subscription in ("to", "both"):
                unavailable = Element(
                    "presence", ns.CLIENT, {"type": "unavailable", "from": gone, "to": str(user)}
                )
                self.server.router.deliver(self.server.sessions.available(user, None), unavailable)
