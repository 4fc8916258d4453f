"""The MUC service on its own domain (XEP-0045 §6): holds the rooms, creates them on first
join (§10.1), loads persistent ones from storage on demand, answers the service's own disco
(§6.1-§6.3) and delivers what rooms send.

Delivery is the hot path: a groupchat message to N occupants is serialized once per kind
of connection (`core.router.Fanout`) and written to each local session directly, found by
its full JID in `server.sessions` (no routing, no storage, no JID parsing per recipient);
occupants elsewhere go through the router. A session hibernating under XEP-0198 keeps the
message in its queue; offline storage never keeps groupchat messages (RFC 6121 §8.5.2,
XEP-0160 §3).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import TYPE_CHECKING, Any

from dovecote.core.router import Fanout
from dovecote.jid import JID, InvalidJID
from dovecote.services.muc import ns
from dovecote.services.muc.config import RoomConfig
from dovecote.services.muc.room import Affiliation, Room
from dovecote.storage.archive import (
    ArchivedMessage,
    ArchiveFilter,
    ArchiveIdNotFound,
    new_archive_id,
)
from dovecote.storage.muc import StoredAffiliation, StoredRoom
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns as xns
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.config import MucSection
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

#: Features of the service itself (XEP-0045 §6.2): what its rooms can be and speak.
SERVICE_FEATURES = (
    ns.MUC,
    xns.DISCO_INFO,
    xns.DISCO_ITEMS,
    ns.STABLE_ID,
    ns.SELF_PING,
    ns.OCCUPANT_ID,
    ns.MODERATE_0,
    ns.MODERATE_1,
    ns.MUC_REQUEST,
    # jabber:iq:register is a room's (§7.10, in its disco#info), not the service's.
    "muc_persistent",
    "muc_temporary",
    "muc_public",
    "muc_hidden",
    "muc_open",
    "muc_membersonly",
    "muc_moderated",
    "muc_unmoderated",
    "muc_nonanonymous",
    "muc_semianonymous",
    "muc_passwordprotected",
    "muc_unsecured",
)


class MucService:
    """`server.components[domain]`: every stanza to the domain or a room on it."""

    def __init__(self, server: Server, policy: MucSection) -> None:
        assert policy.domain is not None
        self.server = server
        self.policy = policy
        self.domain: str = policy.domain
        self.name = "Chatrooms"
        self.rooms: dict[str, Room] = {}
        self._store = server.storage.muc
        self._loading: dict[str, asyncio.Lock] = {}
        #: Real full JID -> the rooms it is in (to leave them when the session ends).
        self.seats: dict[JID, set[Room]] = {}
        self._admins: set[JID] = set()
        for text in server.config.server.admins:
            try:
                self._admins.add(JID.parse(text).bare)
            except InvalidJID:
                continue

    # ---- RoomHost -------------------------------------------------------------------------
    @property
    def archive_store(self) -> Any:
        return getattr(self.server.storage, "room_archive", None)

    @property
    def archive_available(self) -> bool:
        return self.archive_store is not None

    def is_server_admin(self, jid: JID) -> bool:
        return jid.bare in self._admins

    def fanout(self, stanza: Element, targets: list[tuple[JID, str]]) -> None:
        """One stanza to many real JIDs, serialized once per transport kind."""
        get = self.server.sessions.get
        if len(targets) == 1:
            jid, to = targets[0]
            session = get(jid)
            copy = Element(stanza.tag, stanza.ns, {**stanza.attrs, "to": to}, stanza.children)
            if session is not None:
                session.send(copy)
            elif jid.domain not in self.server.hosts:
                self.server.router.route_soon(copy)
            return
        fanout = Fanout(stanza)
        attrs = fanout.stanza.attrs
        tag, namespace, children = stanza.tag, stanza.ns, fanout.stanza.children
        for jid, to in targets:
            session = get(jid)
            copy = Element(tag, namespace, {**attrs, "to": to}, children)
            if session is not None:
                session.send(copy, fanout.data_for(session, to))
            elif jid.domain not in self.server.hosts:
                self.server.router.route_soon(copy)
            # A local session that is gone: its unavailable presence is on its way.

    def seated(self, room: Room, real: JID, present: bool) -> None:
        if present:
            self.seats.setdefault(real, set()).add(room)
            return
        rooms = self.seats.get(real)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self.seats[real]

    def session_ended(self, real: JID) -> None:
        """A client session ended without leaving its rooms (§7.14: the service treats it
        as having left; normally its unavailable presence came first, RFC 6121 §4.6)."""
        for room in list(self.seats.pop(real, ())):
            occupant = room.by_real.get(real)
            if occupant is not None:
                room.remove_session(occupant, real)

    def route(self, stanza: Element) -> None:
        self.server.router.route_soon(stanza)

    def spawn(self, coro: Any) -> None:
        self.server.spawn(coro)

    def archive(self, room: Room, stanza: Element, nick: str) -> str:
        archive_id = new_archive_id()
        store = self.archive_store
        if store is None or not room.config.archive:
            return archive_id
        message = ArchivedMessage(
            archive_id,
            datetime.datetime.now(datetime.UTC),
            str(room.jid),
            nick,
            serialize(stanza),
        )
        future = store.enqueue(room.jid.local or "", self.domain, message)
        future.add_done_callback(_log_failed_archive)
        return archive_id

    async def retract_archived(self, room: Room, archive_id: str, tombstone: Element) -> bool:
        """XEP-0425 §4: the archived message keeps its id, time and author; its content
        gives way to the <retracted/> tombstone. False: the archive does not hold it."""
        store = self.archive_store
        if store is None:
            return False
        local = room.jid.local or ""
        try:
            page = await store.query(local, self.domain, ArchiveFilter(ids=[archive_id]), 1)
        except ArchiveIdNotFound:
            return False
        if not page.messages:
            return False
        original = parse_stored(
            page.messages[0].stanza, f"archived message {archive_id} of {room.jid}"
        )
        if original is None:
            return False
        kept = [
            c for c in original.children if isinstance(c, Element) and c.ns in (ns.OCCUPANT_ID,)
        ]
        replaced = Element("message", xns.CLIENT, dict(original.attrs), [*kept, tombstone])
        return bool(await store.replace(local, self.domain, archive_id, serialize(replaced)))

    async def answer_mam(self, room: Room, event: StanzaEvent) -> None:
        """XEP-0313 §6.1.2: a query to the room's archive (the room checked who asks)."""
        from dovecote.modules.mam import answer_query

        store = self.archive_store
        if store is None:
            raise StanzaError("service-unavailable")
        config = self.server.config.mam
        max_page = config.max_page_size
        await answer_query(
            event,
            store,
            room.jid,
            default_page=min(config.default_page_size, max_page),
            max_page=max_page,
        )

    async def purge_expired(self) -> int:
        """Remove what is older than `[muc] archive_retention_days` (0: keep)."""
        days = self.policy.archive_retention_days
        store = self.archive_store
        if days <= 0 or store is None:
            return 0
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
        removed: int = await store.delete_older_than(cutoff)
        if removed:
            log.info("removed %d room messages older than %d days", removed, days)
        return removed

    async def save(self, room: Room) -> None:
        if not room.config.persistent or room.destroyed:
            return
        local = room.jid.local or ""
        await self._store.save_room(
            self.domain,
            StoredRoom(local, room.config.to_dict(), room.subject, room.subject_by, room.secret),
        )
        await self._store.replace_affiliations(
            self.domain,
            local,
            [
                StoredAffiliation(jid, a.affiliation, a.reason, a.nick)
                for jid, a in room.affiliations.items()
            ],
        )

    async def forget(self, room: Room) -> None:
        """A destroyed room (§10.9): its configuration, affiliations and archive go."""
        local = room.jid.local or ""
        if self.rooms.get(local) is room:
            del self.rooms[local]
        await self._store.delete_room(self.domain, local)
        store = self.archive_store
        if store is not None:
            await store.delete_archive(local, self.domain)

    async def forget_affiliate(self, account: JID) -> int:
        """A deleted account: its affiliation goes from every loaded room (an occupant
        still there is treated as after any change to 'none', XEP-0045 §9.4), persistent
        ones stored. Rooms not loaded have lost it in storage with the account
        (`AccountStore.delete`). A room whose only owner it was stays, ownerless, with its
        other affiliations; the server's admins are owners of every room. Returns how many
        loaded rooms changed."""
        bare = str(account.bare)
        changed = 0
        for room in list(self.rooms.values()):
            if bare not in room.affiliations or room.destroyed:
                continue
            room.set_affiliation(account.bare, "none", "", "", None)
            changed += 1
            if room.config.persistent:
                await self._store.set_affiliation(
                    self.domain, room.jid.local or "", StoredAffiliation(bare, "none")
                )
        return changed

    async def forget_storage(self, room: Room) -> None:
        await self._store.delete_room(self.domain, room.jid.local or "")

    def emptied(self, room: Room) -> None:
        """A temporary room vanishes with its last occupant (§10.1.3 / §16.? temporary)."""
        if room.config.persistent:
            return
        local = room.jid.local or ""
        if self.rooms.get(local) is room:
            del self.rooms[local]

    # ---- rooms ----------------------------------------------------------------------------
    async def room(self, local: str) -> Room | None:
        """The room, loaded from storage if it is persistent and not in memory yet."""
        room = self.rooms.get(local)
        if room is not None:
            return room
        lock = self._loading.setdefault(local, asyncio.Lock())
        try:
            async with lock:
                room = self.rooms.get(local)
                if room is not None:
                    return room
                stored = await self._store.load_room(self.domain, local)
                if stored is None:
                    return None
                room = Room(
                    self,
                    JID(local, self.domain),
                    RoomConfig.from_dict(stored.config, self.policy),
                    secret=stored.secret or None,
                    subject=stored.subject,
                    subject_by=stored.subject_by,
                )
                for item in stored.affiliations:
                    room.affiliations[item.jid] = Affiliation(
                        item.affiliation, item.reason, item.nick
                    )
                self.rooms[local] = room
                return room
        finally:
            if not lock.locked() and self._loading.get(local) is lock:
                del self._loading[local]

    async def create(self, event: StanzaEvent) -> Room:
        """§10.1: the first occupant creates the room and owns it; with the MUC <x/> of
        a current client the room is locked until configured (§10.1.2 instant room by an
        empty submitted form, §10.1.3 reserved room)."""
        sender = event.sender
        policy = self.policy
        creators = policy.creators
        if creators == "local" and sender.domain not in self.server.hosts:
            raise StanzaError("not-allowed", "only users of this server create rooms")
        if creators == "admins" and not self.is_server_admin(sender):
            raise StanzaError("not-allowed", "only administrators create rooms")
        if len(self.rooms) >= policy.max_rooms:
            raise StanzaError("resource-constraint", "the service has too many rooms")
        owned = await self._store.rooms_owned(self.domain, str(sender.bare)) + sum(
            1
            for r in self.rooms.values()
            if not r.config.persistent and r.affiliation(sender) == "owner"
        )
        if owned >= policy.max_rooms_per_user:
            raise StanzaError("not-allowed", f"you own {owned} rooms already")
        local = event.to.local or ""
        room = Room(
            self,
            JID(local, self.domain),
            RoomConfig.defaults(policy),
            locked=event.stanza.find("x", ns.MUC) is not None,
        )
        room.affiliations[str(sender.bare)] = Affiliation("owner")
        return room

    # ---- the component --------------------------------------------------------------------
    async def receive(self, event: StanzaEvent) -> None:
        to = event.to
        if to.local is None:
            await self.service_stanza(event)
            return
        room = await self.room(to.local)
        kind = event.stanza.tag
        if room is None:
            if kind == "presence" and event.type is None and to.resource is not None:
                room = await self.create(event)
                if to.local in self.rooms:  # created meanwhile by another join
                    await self.rooms[to.local].receive(event)
                    return
                room.join(event, to.resource, created=True)
                self.rooms[to.local] = room
                return
            if event.type in ("error", "result", "unavailable"):
                return
            if kind == "message" and event.type == "groupchat":
                raise StanzaError("item-not-found", "no such room")
            raise StanzaError("item-not-found", "no such room")
        await room.receive(event)

    async def service_stanza(self, event: StanzaEvent) -> None:
        if event.stanza.tag != "iq" or event.type not in ("get", "set"):
            if event.stanza.tag == "message" and (event.type or "normal") in ("normal", "chat"):
                raise StanzaError("service-unavailable")
            return
        payload = event.payload
        if payload is None:
            raise StanzaError("bad-request")
        key = (event.type, payload.ns, payload.tag)
        if key == ("get", xns.DISCO_INFO, "query"):
            if payload.get("node"):
                raise StanzaError("item-not-found")
            query = Element("query", xns.DISCO_INFO)
            query.add(
                "identity", attrs={"category": "conference", "type": "text", "name": self.name}
            )
            features = set(SERVICE_FEATURES)
            if self.archive_available:
                features.add(ns.MAM)
            for feature in sorted(features):
                query.add("feature", attrs={"var": feature})
            event.reply(query)
        elif key == ("get", xns.DISCO_ITEMS, "query"):
            if payload.get("node"):
                raise StanzaError("item-not-found")
            event.reply(await self.public_rooms())
        elif key == ("get", xns.PING, "ping"):
            event.reply()
        else:
            raise StanzaError("service-unavailable")

    async def public_rooms(self) -> Element:
        """§6.3: the public rooms, with their names."""
        query = Element("query", xns.DISCO_ITEMS)
        listed: dict[str, str] = {}
        for local, room in self.rooms.items():
            if room.config.public and not room.locked:
                listed[local] = room.config.name
        for stored in await self._store.list_rooms(self.domain):
            if stored.local not in self.rooms and stored.config.get("public", True):
                listed[stored.local] = str(stored.config.get("name") or "")
        for local, name in sorted(listed.items()):
            attrs = {"jid": f"{local}@{self.domain}"}
            attrs["name"] = name or local
            query.add("item", attrs=attrs)
        return query

    def shutdown(self) -> None:
        """The service stops: occupants are told (status 332)."""
        for room in list(self.rooms.values()):
            room.shutdown()


def _log_failed_archive(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("archiving a room message failed: %s", future.exception())
