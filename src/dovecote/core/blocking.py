"""The blocking service: each user's list of blocked JIDs (XEP-0191), a core service
available as `server.blocking`, so that modules sending on a user's behalf without routing
(PEP notifications) ask one place.

The XEP-0191 protocol and its enforcement on routed stanzas are modules/blocking.py, which
switches the service on (`activate`). Without that module nothing is blocked, and the
service answers so explicitly: `blocked_either_way` is False and lists are empty, without
reading storage. Stored lists are kept; they apply again once the module is loaded. (A
list that only some modules enforced would block PEP notifications but not messages.)

The list is kept in the account's key/value store ("blocklist", a JSON list of JIDs) and,
for users with a session online, in memory, so that checking a stanza between two online
users touches no storage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from dovecote.jid import JID, InvalidJID

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

STORAGE_KEY = "blocklist"
EMPTY: frozenset[JID] = frozenset()


def is_blocked(blocked: AbstractSet[JID], jid: JID) -> bool:
    """XEP-0191 §6 (the order of XEP-0016): an item user@domain/resource matches only that
    resource, user@domain any of its resources, domain/resource that resource of any user
    of the domain, and domain everything at the domain."""
    if not blocked:
        return False
    return (
        jid in blocked
        or jid.bare in blocked
        or JID(None, jid.domain, jid.resource) in blocked
        or JID(None, jid.domain) in blocked
    )


class BlockingService:
    def __init__(self, server: Server) -> None:
        self.server = server
        #: False until the blocking module is loaded: nothing is blocked.
        self.active = False
        #: bare JID of a user with a session online -> the JIDs they block.
        self._cache: dict[JID, set[JID]] = {}
        #: One change at a time per user (two resources may send commands together).
        self._locks: weakref.WeakValueDictionary[JID, asyncio.Lock] = weakref.WeakValueDictionary()
        # After presence's own session/ended handler (-1000), which still routes presence
        # from the user and so needs the list.
        server.events.add("session/ended", self._session_ended, -2000)

    def activate(self) -> None:
        """XEP-0191 is served (modules/blocking.py): lists apply from now on."""
        self.active = True

    def lock(self, user: JID) -> asyncio.Lock:
        user_lock = self._locks.get(user)
        if user_lock is None:
            user_lock = self._locks[user] = asyncio.Lock()
        return user_lock

    def cached(self, user: JID) -> AbstractSet[JID] | None:
        """The list of a user online, without waiting; None when not in memory (EMPTY
        when blocking is off)."""
        if not self.active:
            return EMPTY
        return self._cache.get(user)

    async def blocklist(self, user: JID) -> set[JID]:
        """The user's list; the cached set itself while the user is online (callers
        holding the user's lock may change it after storing the change)."""
        if not self.active:
            return set()
        cached = self._cache.get(user)
        if cached is not None:
            return cached
        blocked = await self._load(user)
        cached = self._cache.get(user)  # loaded by someone else meanwhile
        if cached is not None:
            return cached
        if self.server.sessions.is_online(user):
            self._cache[user] = blocked
        return blocked

    async def blocks(self, user: JID, other: JID) -> bool:
        """Does `user` block `other`?"""
        return self.active and is_blocked(await self.blocklist(user), other)

    async def blocked_either_way(self, user: JID, other: JID) -> bool:
        """Does `user` block `other`, or a local `other` block `user`? For modules that
        send on a user's behalf without routing (PEP notifications, XEP-0191 §3.3)."""
        if not self.active:
            return False
        if is_blocked(await self.blocklist(user), other):
            return True
        if other.local is not None and other.domain in self.server.hosts:
            return is_blocked(await self.blocklist(other.bare), user)
        return False

    async def store(self, user: JID, blocked: AbstractSet[JID]) -> None:
        value = json.dumps(sorted(str(j) for j in blocked)) if blocked else None
        await self.server.storage.kv.set(user.local or "", user.domain, STORAGE_KEY, value)

    async def _load(self, user: JID) -> set[JID]:
        text = await self.server.storage.kv.get(user.local or "", user.domain, STORAGE_KEY)
        if not text:
            return set()
        blocked = set()
        for item in json.loads(text):
            try:
                blocked.add(JID.parse(item))
            except InvalidJID:
                log.warning("ignoring invalid JID %r in the blocklist of %s", item, user)
        return blocked

    def _session_ended(self, session: Any) -> None:
        user = session.jid.bare
        if not self.server.sessions.resources(user):
            self._cache.pop(user, None)
