"""One multi-user chat room (XEP-0045 1.35): its state and its answers.

A `Room` holds the room's configuration, affiliations (by bare JID), occupants (by nick,
each with the real full JIDs of its sessions: several resources of one user may share one
nick, §7.2), history, subject and the locked flag of a room awaiting its configuration
(§10.1.3). It receives the stanza events addressed to the room or to an occupant and sends
only through its `RoomHost` (the service): no socket, stream or session is held here, so
a room can be rebuilt from storage anywhere.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dovecote.jid import JID, InvalidJID
from dovecote.services.muc import ns
from dovecote.services.muc.config import RoomConfig, apply_form, config_form, roominfo_form
from dovecote.services.muc.config import room_features as _room_features
from dovecote.storage.archive import new_archive_id
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns as xns
from dovecote.xml.delay import delay_stamp
from dovecote.xml.element import Element, serialize
from dovecote.xml.forms import Field, Form, FormError, find_form, parse_form, submitted_values

if TYPE_CHECKING:
    from dovecote.config import MucSection
    from dovecote.core.router import StanzaEvent

log = logging.getLogger(__name__)

CLIENT = xns.CLIENT
AFFILIATIONS = ("owner", "admin", "member", "outcast", "none")
AFF_RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
ROLE_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}
#: IQs forwarded between occupants waiting for their answer (bounded, oldest dropped).
MAX_PENDING_IQS = 1000
#: Children of a client's presence the room replaces with its own.
_ROOM_PAYLOAD = frozenset((ns.MUC, ns.MUC_USER, ns.OCCUPANT_ID))


class RoomHost(Protocol):
    """What a room needs of the service that holds it."""

    domain: str
    policy: MucSection

    def fanout(self, stanza: Element, targets: list[tuple[JID, str]]) -> None:
        """Send `stanza` (no 'to') to each (real full JID, its text), serialized once."""

    def route(self, stanza: Element) -> None:
        """Send one stanza (with 'from' and 'to') through the server's router."""

    def is_server_admin(self, jid: JID) -> bool: ...

    def archive(self, room: Room, stanza: Element, nick: str) -> str:
        """Archive a groupchat message of `room` (when its archive is on) and return its
        stable id (XEP-0359), archived or not."""

    async def retract_archived(self, room: Room, archive_id: str, tombstone: Element) -> bool:
        """Replace an archived message with a tombstone (XEP-0425 §4); False: no such id."""

    async def save(self, room: Room) -> None:
        """Store a persistent room (configuration, subject, affiliations)."""

    async def forget(self, room: Room) -> None:
        """The room is gone (destroyed, or empty and temporary): drop it and its storage."""

    def emptied(self, room: Room) -> None:
        """The last occupant left."""

    def seated(self, room: Room, real: JID, present: bool) -> None:
        """A session of `real` joined (True) or left (False) the room."""


@dataclass(slots=True)
class Affiliation:
    affiliation: str
    reason: str = ""
    nick: str = ""


class Occupant:
    """An occupant: one nick, one real bare JID, one or more sessions (§7.2)."""

    __slots__ = ("bare", "id", "jid", "nick", "payload", "role", "sessions")

    def __init__(self, room_jid: JID, nick: str, bare: JID, role: str, occupant_id: str) -> None:
        self.nick = nick
        #: The occupant JID, room@service/nick.
        self.jid = room_jid.with_resource(nick)
        self.bare = bare
        self.role = role
        self.id = occupant_id
        #: Real full JID -> its text, in joining order (the last is the newest session).
        self.sessions: dict[JID, str] = {}
        #: The client's presence children (show, status, caps, ...) without MUC elements.
        self.payload: list[Element | str] = []

    @property
    def real(self) -> JID:
        """The real full JID shown in items (the newest session)."""
        return next(reversed(self.sessions))

    def targets(self) -> list[tuple[JID, str]]:
        return list(self.sessions.items())


@dataclass(slots=True)
class HistoryEntry:
    stamp: datetime.datetime
    stanza: Element
    id: str
    #: Characters of the stanza as sent (maxchars, §7.2.14).
    size: int


def _status(*codes: str) -> list[Element]:
    return [Element("status", ns.MUC_USER, {"code": code}) for code in codes]


def _clean_payload(stanza: Element) -> list[Element | str]:
    return [
        c
        for c in stanza.children
        if isinstance(c, Element) and c.ns not in _ROOM_PAYLOAD and c.tag != "error"
    ]


def _parse_time(text: str) -> datetime.datetime:
    from dovecote.modules.mam import parse_datetime

    return parse_datetime(text)


class Room:
    """One room. `receive(event)` takes a stanza addressed to it or to one of its nicks."""

    def __init__(
        self,
        host: RoomHost,
        jid: JID,
        config: RoomConfig,
        *,
        secret: str | None = None,
        subject: str = "",
        subject_by: str = "",
        locked: bool = False,
    ) -> None:
        self.host = host
        self.jid = jid
        self.jid_text = str(jid)
        self.config = config
        #: Bare JID text (or a domain) -> affiliation (§5.2).
        self.affiliations: dict[str, Affiliation] = {}
        self.occupants: dict[str, Occupant] = {}
        #: Real full JID -> its occupant.
        self.by_real: dict[JID, Occupant] = {}
        self.history: deque[HistoryEntry] = deque(maxlen=max(1, host.policy.max_history))
        self.subject = subject
        #: The occupant JID (or the room) the subject is from.
        self.subject_by = subject_by
        #: §10.1.3: a reserved room waits for its owner's configuration.
        self.locked = locked
        self.destroyed = False
        #: XEP-0421 §3: occupant ids are an HMAC of the real bare JID with this secret.
        self.secret = secret or secrets.token_hex(16)
        self._targets: list[tuple[JID, str]] | None = None
        self._pending_iqs: OrderedDict[str, tuple[JID, str, str]] = OrderedDict()

    # ---- what the room is -------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<Room {self.jid_text} {len(self.occupants)} occupants>"

    @property
    def archived(self) -> bool:
        """The room's messages are archived (XEP-0313): configured so, and the service
        has a room archive."""
        return self.config.archive and self.host_archives()

    def occupant_id(self, bare: JID) -> str:
        digest = hmac.new(self.secret.encode(), str(bare).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def affiliation(self, jid: JID) -> str:
        """§5.2: the affiliation of a bare JID (or of its whole domain); the server's
        admins are owners of every room."""
        bare = jid.bare
        found = self.affiliations.get(str(bare))
        if found is None and bare.local is not None:
            found = self.affiliations.get(bare.domain)
        if found is not None:
            return found.affiliation
        return "owner" if self.host.is_server_admin(bare) else "none"

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a.affiliation == "owner")

    def admins(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a.affiliation == "admin")

    def default_role(self, affiliation: str) -> str:
        """§5.1.2: the role an affiliation enters with."""
        if affiliation in ("owner", "admin"):
            return "moderator"
        if self.config.moderated and affiliation == "none":
            return "visitor"
        return "participant"

    def features(self) -> set[str]:
        return _room_features(self.config, self.archived)

    def host_archives(self) -> bool:
        return bool(getattr(self.host, "archive_available", False))

    def all_targets(self) -> list[tuple[JID, str]]:
        targets = self._targets
        if targets is None:
            targets = self._targets = [t for o in self.occupants.values() for t in o.targets()]
        return targets

    def _changed(self) -> None:
        self._targets = None

    # ---- entry point --------------------------------------------------------------------
    async def receive(self, event: StanzaEvent) -> None:
        kind = event.stanza.tag
        nick = event.to.resource
        if kind == "presence":
            if nick is None:
                # §7.2.? presence to the bare room JID: nothing to do (no nick given).
                if event.type not in ("error", "unavailable"):
                    raise StanzaError("jid-malformed", "a nickname is needed to join")
                return
            await self.presence(event, nick)
        elif kind == "message":
            if nick is None:
                self.message(event)
            else:
                self.private_message(event, nick)
        elif kind == "iq":
            if nick is None:
                await self.iq(event)
            else:
                self.occupant_iq(event, nick)

    # ---- sending ------------------------------------------------------------------------
    def _send(self, stanza: Element, targets: list[tuple[JID, str]]) -> None:
        if targets:
            self.host.fanout(stanza, targets)

    def _presence_of(
        self,
        occupant: Occupant,
        *,
        with_jid: bool,
        codes: Iterable[str] = (),
        unavailable: bool = False,
        item_nick: str | None = None,
        actor: Element | None = None,
        reason: str | None = None,
        extra: Iterable[Element] = (),
    ) -> Element:
        """The presence of an occupant as the room sends it (§7.2.3): the client's own
        payload, the muc#user item (with the real JID for those who may see it, §7.2.4)
        and status codes, and the occupant id (XEP-0421)."""
        attrs = {"from": str(occupant.jid)}
        if unavailable:
            attrs["type"] = "unavailable"
        item_attrs = {"affiliation": self.affiliation(occupant.bare), "role": occupant.role}
        if unavailable and self.occupants.get(occupant.nick) is not occupant:
            item_attrs["role"] = "none"
        if with_jid:
            item_attrs["jid"] = str(occupant.real)
        if item_nick is not None:
            item_attrs["nick"] = item_nick
        item = Element("item", ns.MUC_USER, item_attrs)
        if actor is not None:
            item.append(actor)
        if reason:
            item.add("reason", text=reason)
        x = Element("x", ns.MUC_USER, {}, [item, *extra, *_status(*codes)])
        children: list[Element | str] = list(occupant.payload)
        if unavailable:
            children = [c for c in children if isinstance(c, Element) and c.tag == "status"]
        return Element(
            "presence",
            CLIENT,
            attrs,
            [*children, x, Element("occupant-id", ns.OCCUPANT_ID, {"id": occupant.id})],
        )

    def _self_codes(self, occupant: Occupant) -> list[str]:
        codes = ["110"]
        if self.config.non_anonymous:
            codes.append("100")
        return codes

    def broadcast_presence(
        self,
        occupant: Occupant,
        *,
        codes: Iterable[str] = (),
        self_codes: Iterable[str] = (),
        unavailable: bool = False,
        item_nick: str | None = None,
        actor: Element | None = None,
        reason: str | None = None,
        extra: Iterable[Element] = (),
        to_self: bool = True,
    ) -> None:
        """§7.2.3, §7.7: an occupant's presence to every occupant, serialized once per
        variant: with the real JID for moderators (or everyone in a non-anonymous room),
        without it for the others, and with 110 for the occupant's own sessions."""
        codes = list(codes)
        extra = list(extra)
        kwargs: dict[str, Any] = {
            "unavailable": unavailable,
            "item_nick": item_nick,
            "actor": actor,
            "reason": reason,
            "extra": extra,
        }
        if unavailable or occupant.role in self.config.presence_broadcast:
            full = self._presence_of(occupant, with_jid=True, codes=codes, **kwargs)
            if self.config.non_anonymous:
                anonymous = full
            else:
                anonymous = self._presence_of(occupant, with_jid=False, codes=codes, **kwargs)
            seeing: list[tuple[JID, str]] = []
            blind: list[tuple[JID, str]] = []
            for other in self.occupants.values():
                if other is occupant:
                    continue
                if anonymous is full or other.role == "moderator":
                    seeing.extend(other.sessions.items())
                else:
                    blind.extend(other.sessions.items())
            self._send(full, seeing)
            self._send(anonymous, blind)
        if to_self:
            own = self._presence_of(
                occupant, with_jid=True, codes=[*codes, *self_codes, "110"], **kwargs
            )
            self._send(own, occupant.targets())

    def _status_message(self, *codes: str) -> None:
        """§10.2.1: a configuration change announced to the occupants."""
        message = Element(
            "message",
            CLIENT,
            {"from": self.jid_text, "type": "groupchat", "id": new_archive_id()},
            [Element("x", ns.MUC_USER, {}, _status(*codes))],
        )
        self._send(message, self.all_targets())

    # ---- presence: join, change, nick change, leave (§7.2, §7.6, §7.7, §7.14) -----------
    async def presence(self, event: StanzaEvent, nick: str) -> None:
        sender = event.sender
        kind = event.type
        occupant = self.by_real.get(sender)
        if kind == "error":
            # An error bounced from an occupant's client: it is gone (as Prosody does).
            if occupant is not None:
                self.remove_session(occupant, sender, codes=("333",))
            return
        if kind == "unavailable":
            if occupant is not None:
                status = event.stanza.find("status")
                if status is not None:
                    occupant.payload = [status]
                self.remove_session(occupant, sender)
            return
        if kind is not None:
            raise StanzaError("bad-request", f"presence of type {kind!r} to a room")
        if occupant is None:
            self.join(event, nick)
        elif occupant.nick != nick:
            self.change_nick(event, occupant, nick)
        else:
            occupant.payload = _clean_payload(event.stanza)
            self.broadcast_presence(occupant)

    def check_nick(self, nick: str, bare: JID) -> None:
        """§7.2.9: a nick in use or registered by someone else is a conflict."""
        policy = self.host.policy
        if len(nick) > policy.max_nick_length:
            raise StanzaError(
                "jid-malformed", f"nicknames are at most {policy.max_nick_length} characters"
            )
        present = self.occupants.get(nick)
        if present is not None and present.bare != bare:
            raise StanzaError("conflict", "that nickname is in use")
        for jid, item in self.affiliations.items():
            if item.nick == nick and jid != str(bare):
                raise StanzaError("conflict", "that nickname is registered by someone else")

    def join(self, event: StanzaEvent, nick: str, *, created: bool = False) -> None:
        """§7.2: enter the room."""
        sender = event.sender
        stanza = event.stanza
        muc = stanza.find("x", ns.MUC)
        affiliation = self.affiliation(sender)
        if self.locked and affiliation != "owner":
            # §10.1.3: nobody enters a reserved room until its owner configured it.
            raise StanzaError("item-not-found", "the room is being configured")
        if affiliation == "outcast":
            raise StanzaError("forbidden", "you are banned from this room")  # §7.2.8
        if self.config.members_only and AFF_RANK[affiliation] < AFF_RANK["member"]:
            raise StanzaError("registration-required", "the room is members-only")  # §7.2.7
        if self.config.password_protected and not created:
            given = muc.find_text("password", ns.MUC) if muc is not None else None
            if given != self.config.password:
                raise StanzaError("not-authorized", "a password is required")  # §7.2.6
        self.check_nick(nick, sender.bare)
        occupant = self.occupants.get(nick)
        if occupant is None and len(self.occupants) >= self.config.max_users:
            if affiliation not in ("owner", "admin"):
                raise StanzaError("service-unavailable", "the room is full")  # §7.2.10
        first = occupant is None
        if occupant is None:
            occupant = Occupant(
                self.jid,
                nick,
                sender.bare,
                self.default_role(affiliation),
                self.occupant_id(sender.bare),
            )
        occupant.sessions[sender] = str(sender)
        occupant.payload = _clean_payload(stanza)
        self.by_real[sender] = occupant
        self.host.seated(self, sender, True)
        own = [(sender, str(sender))]
        # §7.2.3: first the presence of everyone else, to the new session only.
        sees_jids = self.config.non_anonymous or occupant.role == "moderator"
        for other in self.occupants.values():
            if other is not occupant:
                self._send(self._presence_of(other, with_jid=sees_jids), own)
        self.occupants[nick] = occupant
        self._changed()
        self_codes = self._self_codes(occupant)
        if self.archived:
            self_codes.append("170")
        if created:
            self_codes.append("201")
        if event.to.resource != nick:
            self_codes.append("210")
        if first:
            self.broadcast_presence(occupant, to_self=False)
        # The occupant's own presence, to the joining session (others of the same user
        # saw nothing change: one occupant, §7.2).
        self._send(self._presence_of(occupant, with_jid=True, codes=self_codes), own)
        self.send_history(sender, muc.find("history", ns.MUC) if muc is not None else None)
        self.send_subject(own)

    def send_history(self, to: JID, request: Element | None) -> None:
        """§7.2.14: the history the new occupant asks for, each message with a XEP-0203
        delay from the room, oldest first."""
        entries = (
            list(self.history)[-self.config.history_length :] if self.config.history_length else []
        )
        if request is not None and entries:
            try:
                maxstanzas = request.get("maxstanzas")
                if maxstanzas is not None:
                    count = int(maxstanzas)
                    entries = entries[-count:] if count > 0 else []
                seconds = request.get("seconds")
                if seconds is not None:
                    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                        seconds=int(seconds)
                    )
                    entries = [e for e in entries if e.stamp >= cutoff]
                since = request.get("since")
                if since is not None:
                    cutoff = _parse_time(since)
                    entries = [e for e in entries if e.stamp > cutoff]
                maxchars = request.get("maxchars")
                if maxchars is not None:
                    budget = int(maxchars)
                    kept: list[HistoryEntry] = []
                    for entry in reversed(entries):
                        budget -= entry.size
                        if budget < 0:
                            break
                        kept.append(entry)
                    entries = kept[::-1]
            except ValueError:
                entries = entries  # §7.2.14 says nothing of bad values: the default history
        text = str(to)
        for entry in entries:
            copy = Element(
                "message",
                CLIENT,
                {**entry.stanza.attrs, "to": text},
                [
                    *entry.stanza.children,
                    Element(
                        "delay",
                        xns.DELAY,
                        {"from": self.jid_text, "stamp": delay_stamp(entry.stamp)},
                    ),
                ],
            )
            self._send(copy, [(to, text)])

    def send_subject(self, targets: list[tuple[JID, str]]) -> None:
        """§7.2.15: the subject, after the history, always (empty when there is none)."""
        message = Element(
            "message",
            CLIENT,
            {"from": self.subject_by or self.jid_text, "type": "groupchat", "id": new_archive_id()},
            [Element("subject", CLIENT, {}, [self.subject] if self.subject else [])],
        )
        self._send(message, targets)

    def change_nick(self, event: StanzaEvent, occupant: Occupant, nick: str) -> None:
        """§7.6: unavailable with 303 and the new nick, then available under the new one;
        every session of the occupant moves with it."""
        self.check_nick(nick, occupant.bare)
        if nick in self.occupants:
            # The same user under two nicks would merge two occupants: refused.
            raise StanzaError("conflict", "that nickname is in use")
        self.broadcast_presence(occupant, unavailable=True, codes=["303"], item_nick=nick)
        del self.occupants[occupant.nick]
        occupant.nick = nick
        occupant.jid = self.jid.with_resource(nick)
        occupant.payload = _clean_payload(event.stanza)
        self.occupants[nick] = occupant
        self._changed()
        self.broadcast_presence(occupant)

    def remove_session(
        self,
        occupant: Occupant,
        real: JID,
        *,
        codes: Iterable[str] = (),
    ) -> None:
        """§7.14: a session leaves; the occupant leaves with its last session."""
        if occupant.sessions.pop(real, None) is None:
            return
        self.by_real.pop(real, None)
        self.host.seated(self, real, False)
        text = str(real)
        if occupant.sessions:
            # Another resource stays: only this one hears it left.
            occupant.sessions[real] = text
            own = self._presence_of(
                occupant, with_jid=True, codes=["110", *codes], unavailable=True
            )
            del occupant.sessions[real]
            self._send(own, [(real, text)])
            self._changed()
            return
        occupant.sessions[real] = text
        del self.occupants[occupant.nick]
        self._changed()
        self.broadcast_presence(occupant, unavailable=True, codes=list(codes))
        occupant.sessions.clear()
        if not self.occupants:
            self.host.emptied(self)

    def remove_occupant(
        self,
        occupant: Occupant,
        codes: Iterable[str],
        *,
        actor: Element | None = None,
        reason: str | None = None,
    ) -> None:
        """Kicked (307), banned (301), no longer a member (321, 322): every session goes."""
        if self.occupants.get(occupant.nick) is not occupant:
            return
        del self.occupants[occupant.nick]
        for real in occupant.sessions:
            self.by_real.pop(real, None)
            self.host.seated(self, real, False)
        self._changed()
        self.broadcast_presence(
            occupant, unavailable=True, codes=list(codes), actor=actor, reason=reason
        )
        occupant.sessions.clear()
        if not self.occupants:
            self.host.emptied(self)

    # ---- messages to the room (§7.4, §8.1, §7.8, §7.13) -------------------------------------
    def message(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        kind = event.type or "normal"
        occupant = self.by_real.get(event.sender)
        if kind == "error":
            if occupant is not None:
                self.remove_session(occupant, event.sender, codes=("333",))
            return
        if kind == "groupchat":
            if occupant is None:
                raise StanzaError("not-acceptable", "only occupants may send to the room")
            self.groupchat(occupant, stanza)
            return
        x = stanza.find("x", ns.MUC_USER)
        if x is not None:
            invites = x.find_all("invite", ns.MUC_USER)
            if invites:
                self.invite(event, occupant, invites, x.find_text("password", ns.MUC_USER))
                return
            decline = x.find("decline", ns.MUC_USER)
            if decline is not None:
                self.decline(event, decline)
                return
        form = find_form(stanza)
        if form is not None:
            self.voice_form(event, occupant, form)
            return
        raise StanzaError("bad-request", "messages to the room are of type groupchat")

    def groupchat(self, occupant: Occupant, stanza: Element) -> None:
        if occupant.role == "visitor" or occupant.role == "none":
            raise StanzaError("forbidden", "visitors may not speak in a moderated room")  # §7.4
        subject = stanza.find("subject", CLIENT)
        body = stanza.find("body", CLIENT)
        if subject is not None and body is None:
            self.change_subject(occupant, stanza, subject.text)
            return
        attrs = {"from": str(occupant.jid), "type": "groupchat"}
        if "id" in stanza.attrs:
            attrs["id"] = stanza.attrs["id"]
        lang = stanza.attrs.get(f"{{{xns.XML}}}lang")
        if lang:
            attrs[f"{{{xns.XML}}}lang"] = lang
        children = [
            c
            for c in stanza.children
            if not (
                isinstance(c, Element)
                and (
                    (c.ns == ns.OCCUPANT_ID and c.tag == "occupant-id")  # XEP-0421 §4
                    or (c.ns == ns.SID and c.tag == "stanza-id" and self._claims_room(c))
                )
            )
        ]
        message = Element("message", CLIENT, attrs, children)
        message.append(Element("occupant-id", ns.OCCUPANT_ID, {"id": occupant.id}))
        worth_keeping = body is not None or subject is not None
        archive_id = (
            self.host.archive(self, message, occupant.nick) if worth_keeping else new_archive_id()
        )
        message.append(Element("stanza-id", ns.SID, {"by": self.jid_text, "id": archive_id}))
        self._send(message, self.all_targets())
        if worth_keeping:
            self._remember(message, archive_id)

    def _claims_room(self, stanza_id: Element) -> bool:
        """XEP-0359 §3: a client's stanza-id claiming to be by the room is a forgery."""
        by = stanza_id.get("by") or ""
        try:
            return JID.parse(by) == self.jid
        except InvalidJID:
            return False

    def _remember(self, message: Element, archive_id: str) -> None:
        if self.config.history_length <= 0:
            return
        size = len(serialize(message, CLIENT))
        self.history.append(
            HistoryEntry(datetime.datetime.now(datetime.UTC), message, archive_id, size)
        )

    def change_subject(self, occupant: Occupant, stanza: Element, text: str) -> None:
        """§8.1: moderators (and participants when muc#roomconfig_changesubject) change
        the subject; a subject over `max_subject_length` is refused (not-acceptable)."""
        if occupant.role != "moderator" and not (
            self.config.change_subject and occupant.role == "participant"
        ):
            raise StanzaError("forbidden", "you may not change the subject")
        limit = self.host.policy.max_subject_length
        if len(text) > limit:
            raise StanzaError("not-acceptable", f"the subject is longer than {limit} characters")
        self.subject = text
        self.subject_by = str(occupant.jid)
        attrs = {
            "from": self.subject_by,
            "type": "groupchat",
            "id": stanza.get("id") or new_archive_id(),
        }
        message = Element(
            "message",
            CLIENT,
            attrs,
            [
                Element("subject", CLIENT, {}, [text] if text else []),
                Element("occupant-id", ns.OCCUPANT_ID, {"id": occupant.id}),
            ],
        )
        archive_id = self.host.archive(self, message, occupant.nick)
        message.append(Element("stanza-id", ns.SID, {"by": self.jid_text, "id": archive_id}))
        self._send(message, self.all_targets())
        if self.config.persistent:
            self.host_save_soon()

    def host_save_soon(self) -> None:
        spawn = getattr(self.host, "spawn", None)
        if spawn is not None:
            spawn(self.host.save(self))

    # ---- private messages (§7.5) --------------------------------------------------------
    def private_message(self, event: StanzaEvent, nick: str) -> None:
        stanza = event.stanza
        kind = event.type or "normal"
        sender = self.by_real.get(event.sender)
        if kind == "error":
            return  # a bounce of a private message: nothing to do
        if sender is None:
            raise StanzaError("not-acceptable", "only occupants may send private messages")
        if kind == "groupchat":
            raise StanzaError("bad-request", "private messages are not of type groupchat")
        target = self.occupants.get(nick)
        if target is None:
            raise StanzaError("item-not-found", "no such occupant")
        policy = self.config.allow_pm
        allowed = (
            policy == "anyone"
            or (policy == "participants" and sender.role in ("participant", "moderator"))
            or (policy == "moderators" and sender.role == "moderator")
        )
        if not allowed:
            raise StanzaError("forbidden", "private messages are not allowed here")
        children = [
            c
            for c in stanza.children
            if not (isinstance(c, Element) and c.ns in (ns.MUC_USER, ns.OCCUPANT_ID))
        ]
        children.append(Element("x", ns.MUC_USER))
        children.append(Element("occupant-id", ns.OCCUPANT_ID, {"id": sender.id}))
        attrs = {k: v for k, v in stanza.attrs.items() if k not in ("from", "to")}
        attrs["from"] = str(sender.jid)
        for text in target.sessions.values():
            self.host.route(Element("message", CLIENT, {**attrs, "to": text}, list(children)))

    # ---- invitations (§7.8) -------------------------------------------------------------
    def invite(
        self,
        event: StanzaEvent,
        occupant: Occupant | None,
        invites: list[Element],
        password: str | None,
    ) -> None:
        """§7.8.2 mediated invitations: the room sends each invitee a message from itself;
        in a members-only room the invitee becomes a member (when the inviter may add
        members: admins, owners, or anyone with muc#roomconfig_allowinvites)."""
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may invite")
        affiliation = self.affiliation(occupant.bare)
        privileged = AFF_RANK[affiliation] >= AFF_RANK["admin"]
        if self.config.members_only and not (privileged or self.config.allow_invites):
            raise StanzaError("forbidden", "only admins may invite to this room")
        targets: list[tuple[JID, Element]] = []
        for invite in invites:
            try:
                invitee = JID.parse(invite.get("to") or "")
            except InvalidJID:
                raise StanzaError("jid-malformed", "invitee is not a JID") from None
            targets.append((invitee, invite))
        for invitee, invite in targets:
            if self.config.members_only and self.affiliation(invitee) == "none":
                self.affiliations[str(invitee.bare)] = Affiliation("member")
                if self.config.persistent:
                    self.host_save_soon()
            inviter = str(event.sender) if self.config.non_anonymous else str(occupant.jid)
            x = Element("x", ns.MUC_USER)
            forwarded = x.add("invite", attrs={"from": inviter})
            reason = invite.find_text("reason", ns.MUC_USER)
            if reason:
                forwarded.add("reason", text=reason)
            if self.config.password_protected:
                x.add("password", text=self.config.password)
            body = f"{occupant.nick} invites you to the room {self.jid_text}" + (
                f": {reason}" if reason else ""
            )
            message = Element(
                "message",
                CLIENT,
                {"from": self.jid_text, "to": str(invitee), "id": new_archive_id()},
                [x, Element("body", CLIENT, {}, [body])],
            )
            self.host.route(message)

    def decline(self, event: StanzaEvent, decline: Element) -> None:
        """§7.8.3 (decline): the room forwards it to the inviter."""
        try:
            inviter = JID.parse(decline.get("to") or "")
        except InvalidJID:
            raise StanzaError("jid-malformed", "the inviter is not a JID") from None
        x = Element("x", ns.MUC_USER)
        forwarded = x.add("decline", attrs={"from": str(event.sender.bare)})
        reason = decline.find_text("reason", ns.MUC_USER)
        if reason:
            forwarded.add("reason", text=reason)
        self.host.route(
            Element("message", CLIENT, {"from": self.jid_text, "to": str(inviter)}, [x])
        )

    # ---- voice requests (§7.13, §8.6) ---------------------------------------------------
    def voice_form(self, event: StanzaEvent, occupant: Occupant | None, form_el: Element) -> None:
        try:
            form = parse_form(form_el)
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None
        if form.form_type != ns.MUC_REQUEST:
            raise StanzaError("bad-request", "unexpected form")
        values = form.values()
        if occupant is None:
            raise StanzaError("not-acceptable", "only occupants may ask for voice")
        if "muc#request_allow" in values and occupant.role == "moderator":
            # §8.6: a moderator's answer.
            allow = (values.get("muc#request_allow") or ["0"])[0] in ("1", "true")
            nick = (values.get("muc#roomnick") or [""])[0]
            target = self.occupants.get(nick)
            if allow and target is not None and target.role == "visitor":
                target.role = "participant"
                self.broadcast_presence(target)
            return
        if not self.config.allow_voice_requests:
            raise StanzaError("forbidden", "voice requests are not allowed")
        if occupant.role != "visitor":
            return  # has voice already
        request = Form.with_type(
            ns.MUC_REQUEST,
            [
                Field("muc#role", "list-single", ["participant"], label="Requested role"),
                Field("muc#jid", "jid-single", [str(event.sender)], label="User ID"),
                Field("muc#roomnick", "text-single", [occupant.nick], label="Room nickname"),
                Field("muc#request_allow", "boolean", ["0"], label="Grant voice?"),
            ],
        )
        request.title = "Voice request"
        message = Element(
            "message",
            CLIENT,
            {"from": self.jid_text, "id": new_archive_id()},
            [request.to_element()],
        )
        moderators = [
            t for o in self.occupants.values() if o.role == "moderator" for t in o.targets()
        ]
        self._send(message, moderators)

    # ---- IQs to an occupant (§7.? IQ forwarding, XEP-0410 self-ping) -----------------------
    def occupant_iq(self, event: StanzaEvent, nick: str) -> None:
        stanza = event.stanza
        kind = event.type
        sender = self.by_real.get(event.sender)
        if kind in ("result", "error"):
            pending = self._pending_iqs.pop(stanza.get("id") or "", None)
            if pending is None:
                return
            origin, original_id, target_nick = pending
            target = self.occupants.get(target_nick)
            reply = Element(
                "iq",
                CLIENT,
                {
                    "type": kind,
                    "id": original_id,
                    "to": str(origin),
                    "from": str(target.jid) if target else str(self.jid.with_resource(target_nick)),
                },
                list(stanza.children),
            )
            self.host.route(reply)
            return
        payload = event.payload
        target = self.occupants.get(nick)
        if payload is not None and payload.ns == xns.PING and payload.tag == "ping":
            # XEP-0410 §3: the room answers a ping to the sender's own occupant JID.
            if sender is None:
                raise StanzaError("not-acceptable", "you are not in the room")
            if sender.nick == nick:
                event.reply()
                return
        if sender is None:
            raise StanzaError("not-acceptable", "only occupants may query occupants")
        if target is None:
            raise StanzaError("item-not-found", "no such occupant")
        if payload is not None and payload.ns == ns.VCARD:
            # XEP-0045 §7.? / XEP-0054: vCards go to the occupant's bare JID.
            to = str(target.bare)
        else:
            to = target.sessions[target.real]
        forwarded_id = new_archive_id()
        self._pending_iqs[forwarded_id] = (event.sender, stanza.get("id") or "", target.nick)
        while len(self._pending_iqs) > MAX_PENDING_IQS:
            self._pending_iqs.popitem(last=False)
        self.host.route(
            Element(
                "iq",
                CLIENT,
                {"type": kind or "get", "id": forwarded_id, "from": str(sender.jid), "to": to},
                list(stanza.children),
            )
        )

    # ---- IQs to the room ----------------------------------------------------------------
    async def iq(self, event: StanzaEvent) -> None:
        payload = event.payload
        kind = event.type
        if kind not in ("get", "set") or payload is None:
            return
        key = (kind, payload.ns, payload.tag)
        if key == ("get", xns.DISCO_INFO, "query"):
            self.disco_info(event, payload.get("node"))
        elif key == ("get", xns.DISCO_ITEMS, "query"):
            event.reply(
                Element(
                    "query",
                    xns.DISCO_ITEMS,
                    {"node": payload.get("node")} if payload.get("node") else {},
                )
            )
        elif payload.ns == ns.MUC_ADMIN and payload.tag == "query":
            if kind == "get":
                self.admin_get(event, payload)
            else:
                await self.admin_set(event, payload)
        elif payload.ns == ns.MUC_OWNER and payload.tag == "query":
            if kind == "get":
                self.owner_get(event)
            else:
                await self.owner_set(event, payload)
        elif payload.ns == ns.REGISTER and payload.tag == "query":
            if kind == "get":
                self.register_get(event)
            else:
                await self.register_set(event, payload)
        elif key == ("get", xns.PING, "ping"):
            event.reply()
        elif key == ("set", ns.MODERATE_1, "moderate"):
            await self.moderate(event, payload.get("id") or "", payload, 1)
        elif key == ("set", ns.FASTEN, "apply-to") and payload.find("moderate", ns.MODERATE_0):
            await self.moderate(
                event, payload.get("id") or "", payload.find("moderate", ns.MODERATE_0), 0
            )
        elif payload.ns == ns.MAM:
            await self.host_mam(event)
        else:
            raise StanzaError("service-unavailable")

    async def host_mam(self, event: StanzaEvent) -> None:
        """XEP-0313 on the room: occupants (and, in open rooms, anyone) may query."""
        if not self.archived:
            raise StanzaError("service-unavailable", "this room keeps no archive")
        if self.config.members_only or not self.config.public:
            if event.sender not in self.by_real and AFF_RANK[self.affiliation(event.sender)] < 1:
                raise StanzaError("forbidden", "only occupants may query this room's archive")
        answer = getattr(self.host, "answer_mam", None)
        if answer is None:
            raise StanzaError("service-unavailable")
        await answer(self, event)

    def disco_info(self, event: StanzaEvent, node: str | None) -> None:
        if node == "x-roomuser-item":
            # §7.11: the user's registered nickname, if any.
            query = Element("query", xns.DISCO_INFO, {"node": node})
            item = self.affiliations.get(str(event.sender.bare))
            if item is not None and item.nick:
                query.add(
                    "identity", attrs={"category": "conference", "type": "text", "name": item.nick}
                )
            event.reply(query)
            return
        if node:
            raise StanzaError("item-not-found")
        if self.locked:
            raise StanzaError("item-not-found")
        query = Element("query", xns.DISCO_INFO)
        identity = {"category": "conference", "type": "text"}
        if self.config.name:
            identity["name"] = self.config.name
        query.add("identity", attrs=identity)
        for feature in sorted(self.features()):
            query.add("feature", attrs={"var": feature})
        query.append(roominfo_form(self.config, len(self.occupants), self.subject).to_element())
        event.reply(query)

    # ---- admin: roles and affiliations (§8, §9, §10) -------------------------------------
    def _actor(self, event: StanzaEvent) -> tuple[str, str, Occupant | None]:
        occupant = self.by_real.get(event.sender)
        return self.affiliation(event.sender), occupant.role if occupant else "none", occupant

    def admin_get(self, event: StanzaEvent, query: Element) -> None:
        """§8.5 voice list, §9.2 ban list, §9.5 member list, §9.8 moderator list,
        §10.5/§10.8 owner and admin lists."""
        items = query.find_all("item", ns.MUC_ADMIN)
        if len(items) != 1:
            raise StanzaError("bad-request", "one item naming a role or an affiliation")
        item = items[0]
        affiliation, role, _occupant = self._actor(event)
        result = Element("query", ns.MUC_ADMIN)
        if item.get("affiliation") is not None:
            wanted = item.get("affiliation")
            if wanted not in AFFILIATIONS or wanted == "none":
                raise StanzaError("bad-request", "unknown affiliation")
            if wanted == "member" and role in self.config.get_member_list:
                pass
            elif AFF_RANK[affiliation] < AFF_RANK["admin"]:
                raise StanzaError("forbidden", "only admins and owners may see this list")
            for jid, aff in sorted(self.affiliations.items()):
                if aff.affiliation == wanted:
                    attrs = {"affiliation": wanted, "jid": jid}
                    if aff.nick:
                        attrs["nick"] = aff.nick
                    el = result.add("item", attrs=attrs)
                    if aff.reason:
                        el.add("reason", text=aff.reason)
        elif item.get("role") is not None:
            wanted = item.get("role")
            if wanted not in ("moderator", "participant", "visitor"):
                raise StanzaError("bad-request", "unknown role")
            if role != "moderator":
                raise StanzaError("forbidden", "only moderators may see this list")
            for occupant in self.occupants.values():
                if occupant.role == wanted:
                    result.add(
                        "item",
                        attrs={
                            "nick": occupant.nick,
                            "role": occupant.role,
                            "affiliation": self.affiliation(occupant.bare),
                            "jid": str(occupant.real),
                        },
                    )
        else:
            raise StanzaError("bad-request", "an item names a role or an affiliation")
        event.reply(result)

    async def admin_set(self, event: StanzaEvent, query: Element) -> None:
        items = query.find_all("item", ns.MUC_ADMIN)
        if not items:
            raise StanzaError("bad-request", "no item")
        actor_aff, actor_role, actor = self._actor(event)
        role_changes: list[tuple[Occupant, str, str]] = []
        aff_changes: list[tuple[JID, str, str, str]] = []
        for item in items:
            reason = item.find_text("reason", ns.MUC_ADMIN) or ""
            if item.get("affiliation") is not None:
                new = item.get("affiliation") or ""
                if new not in AFFILIATIONS:
                    raise StanzaError("bad-request", f"unknown affiliation {new[:32]!r}")
                jid = self._item_jid(item)
                self._check_affiliation_change(actor_aff, jid, new)
                aff_changes.append((jid, new, reason, item.get("nick") or ""))
            elif item.get("role") is not None:
                new = item.get("role") or ""
                if new not in ROLE_RANK:
                    raise StanzaError("bad-request", f"unknown role {new[:32]!r}")
                nick = item.get("nick")
                if not nick:
                    raise StanzaError("bad-request", "a role change names a nick")
                target = self.occupants.get(nick)
                if target is None:
                    raise StanzaError("item-not-found", "no such occupant")
                self._check_role_change(actor_aff, actor_role, target, new)
                role_changes.append((target, new, reason))
            else:
                raise StanzaError("bad-request", "an item names a role or an affiliation")
        if aff_changes:
            self._check_owners_remain(aff_changes)
        actor_el = Element("actor", ns.MUC_USER, {"nick": actor.nick} if actor else {})
        for target, new, reason in role_changes:
            self.set_role(target, new, reason, actor_el)
        if aff_changes:
            for jid, new, reason, nick in aff_changes:
                self.set_affiliation(jid, new, reason, nick, actor_el)
            if self.config.persistent:
                await self.host.save(self)
        event.reply()

    def _item_jid(self, item: Element) -> JID:
        text = item.get("jid")
        if text is None:
            nick = item.get("nick")
            occupant = self.occupants.get(nick or "")
            if occupant is None:
                raise StanzaError("bad-request" if not nick else "item-not-found", "no jid")
            return occupant.bare
        try:
            jid = JID.parse(text.strip())
        except InvalidJID:
            raise StanzaError("jid-malformed", f"{text[:64]!r} is not a JID") from None
        return jid.bare

    def _check_affiliation_change(self, actor_aff: str, jid: JID, new: str) -> None:
        """§5.2.2 and §9, §10: admins change member/outcast/none of those below them;
        owners change anything."""
        current = self.affiliation(jid)
        if actor_aff == "owner":
            return
        if actor_aff != "admin":
            raise StanzaError("forbidden", "only admins and owners change affiliations")
        if new in ("admin", "owner"):
            raise StanzaError("forbidden", "only owners grant admin or owner")
        if current in ("admin", "owner"):
            raise StanzaError(
                "not-allowed", "admins cannot change an admin's or owner's affiliation"
            )

    def _check_owners_remain(self, changes: list[tuple[JID, str, str, str]]) -> None:
        owners = {j for j, a in self.affiliations.items() if a.affiliation == "owner"}
        for jid, new, _reason, _nick in changes:
            if new == "owner":
                owners.add(str(jid))
            else:
                owners.discard(str(jid))
        if not owners:
            raise StanzaError("conflict", "a room keeps at least one owner")  # §10.6, §10.7

    def _check_role_change(
        self, actor_aff: str, actor_role: str, target: Occupant, new: str
    ) -> None:
        """§5.1.3 and §8, §9.6: moderators kick and (un)voice those not above them;
        admins and owners grant and revoke moderator."""
        target_aff = self.affiliation(target.bare)
        if actor_role != "moderator" and AFF_RANK[actor_aff] < AFF_RANK["admin"]:
            raise StanzaError("forbidden", "only moderators change roles")
        if new == "moderator" or (target.role == "moderator" and new != "moderator"):
            if AFF_RANK[actor_aff] < AFF_RANK["admin"]:
                raise StanzaError("forbidden", "only admins grant or revoke moderation")
        if AFF_RANK[target_aff] >= AFF_RANK["admin"] and new != "moderator":
            if not (actor_aff == "owner" and target_aff == "admin"):
                raise StanzaError("not-allowed", "an admin or owner cannot lose moderation")
            raise StanzaError("not-allowed", "change the admin's affiliation instead")

    def set_role(self, target: Occupant, new: str, reason: str, actor: Element) -> None:
        if new == "none":
            self.remove_occupant(target, ["307"], actor=actor, reason=reason)  # §8.2 kick
            return
        if target.role == new:
            return
        target.role = new
        self.broadcast_presence(target, reason=reason or None)

    def set_affiliation(
        self, jid: JID, new: str, reason: str, nick: str, actor: Element | None
    ) -> None:
        key = str(jid)
        old = self.affiliations.get(key)
        if new == "none":
            self.affiliations.pop(key, None)
        else:
            self.affiliations[key] = Affiliation(new, reason, nick or (old.nick if old else ""))
        present = [
            o
            for o in list(self.occupants.values())
            if o.bare == jid or (jid.local is None and o.bare.domain == jid.domain)
        ]
        for occupant in present:
            if new == "outcast":
                self.remove_occupant(occupant, ["301"], actor=actor, reason=reason)  # §9.1
            elif self.config.members_only and new == "none":
                self.remove_occupant(occupant, ["321"], actor=actor, reason=reason)  # §9.4
            else:
                role = self.default_role(new)
                if new == "member" and occupant.role == "visitor":
                    role = "participant"
                if new in ("member", "none") and occupant.role != "moderator":
                    role = occupant.role if occupant.role != "visitor" or new == "none" else role
                occupant.role = role
                self.broadcast_presence(occupant, reason=reason or None)

    # ---- owner: configuration and destruction (§10) --------------------------------------
    def owner_get(self, event: StanzaEvent) -> None:
        if self.affiliation(event.sender) != "owner":
            raise StanzaError("forbidden", "only owners configure the room")
        form = config_form(self.config, self.host.policy, self.owners(), self.admins())
        form.title = f"Configuration of {self.jid_text}"
        event.reply(Element("query", ns.MUC_OWNER, {}, [form.to_element()]))

    async def owner_set(self, event: StanzaEvent, query: Element) -> None:
        if self.affiliation(event.sender) != "owner":
            raise StanzaError("forbidden", "only owners configure the room")
        destroy = query.find("destroy", ns.MUC_OWNER)
        if destroy is not None:
            await self.destroy(
                destroy.get("jid"),
                destroy.find_text("reason", ns.MUC_OWNER),
                destroy.find_text("password", ns.MUC_OWNER),
            )
            event.reply()
            return
        x = find_form(query)
        if x is None:
            raise StanzaError("bad-request", "a data form or <destroy/> is expected")
        try:
            form = parse_form(x)
            if form.type == "cancel":
                if self.locked:
                    # §10.1.3: cancelling the initial configuration destroys the room.
                    await self.destroy(None, None, None)
                event.reply()
                return
            values = submitted_values(x, ns.ROOMCONFIG)
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None
        new, lists = apply_form(self.config, values, self.host.policy)
        old = self.config
        if lists:
            owners = {str(j) for j in lists.get("owner", [])} if "owner" in lists else None
            if owners is not None and not owners:
                raise StanzaError("conflict", "a room keeps at least one owner")
            for affiliation, jids in lists.items():
                wanted = {str(j) for j in jids}
                for jid, item in list(self.affiliations.items()):
                    if item.affiliation == affiliation and jid not in wanted:
                        self.set_affiliation(JID.parse(jid), "none", "", "", None)
                for jid in sorted(wanted):
                    if self.affiliation(JID.parse(jid)) != affiliation:
                        self.set_affiliation(JID.parse(jid), affiliation, "", "", None)
        self.config = new
        was_locked = self.locked
        self.locked = False
        if new.persistent:
            await self.host.save(self)
        elif old.persistent:
            await self.host.forget_storage(self)
        event.reply()
        if was_locked:
            return
        codes = ["104"]
        if new.archive != old.archive:
            codes.append("170" if new.archive else "171")
        if new.whois != old.whois:
            codes.append("172" if new.non_anonymous else "173")
        self._status_message(*codes)
        if new.members_only and not old.members_only:
            for occupant in list(self.occupants.values()):
                if AFF_RANK[self.affiliation(occupant.bare)] < AFF_RANK["member"]:
                    self.remove_occupant(occupant, ["322"])  # §9.? members-only now
        if new.moderated != old.moderated:
            for occupant in list(self.occupants.values()):
                role = self.default_role(self.affiliation(occupant.bare))
                if new.moderated and role == "visitor" and occupant.role == "participant":
                    continue  # keeps the voice it had
                if role != occupant.role and occupant.role != "moderator":
                    occupant.role = role
                    self.broadcast_presence(occupant)

    async def destroy(
        self, alternate: str | None, reason: str | None, password: str | None
    ) -> None:
        """§10.9: every occupant is told, with the alternate venue; the room goes."""
        if alternate is not None:
            try:
                JID.parse(alternate)
            except InvalidJID:
                raise StanzaError("jid-malformed", "the alternate venue is not a JID") from None
        destroy = Element("destroy", ns.MUC_USER, {"jid": alternate} if alternate else {})
        if reason:
            destroy.add("reason", text=reason)
        if password:
            destroy.add("password", text=password)
        self.destroyed = True
        for occupant in list(self.occupants.values()):
            presence = Element(
                "presence",
                CLIENT,
                {"from": str(occupant.jid), "type": "unavailable"},
                [
                    Element(
                        "x",
                        ns.MUC_USER,
                        {},
                        [
                            Element("item", ns.MUC_USER, {"affiliation": "none", "role": "none"}),
                            destroy,
                        ],
                    )
                ],
            )
            self._send(presence, occupant.targets())
        for real in self.by_real:
            self.host.seated(self, real, False)
        self.occupants.clear()
        self.by_real.clear()
        self._changed()
        await self.host.forget(self)

    def shutdown(self) -> None:
        """§11.2, status 332: the service is going down; every occupant is removed."""
        for occupant in list(self.occupants.values()):
            self.remove_occupant(occupant, ["332"])

    # ---- registration (§7.10) -----------------------------------------------------------
    def register_get(self, event: StanzaEvent) -> None:
        item = self.affiliations.get(str(event.sender.bare))
        affiliation = self.affiliation(event.sender)
        if affiliation == "outcast":
            raise StanzaError("forbidden")
        query = Element("query", ns.REGISTER)
        if item is not None and item.nick:
            query.add("registered")
            query.add("username", text=item.nick)
            event.reply(query)
            return
        query.add("instructions", text="Choose the nickname to register in this room.")
        form = Form.with_type(
            ns.MUC_REGISTER,
            [Field("muc#register_roomnick", "text-single", [], label="Nickname", required=True)],
        )
        query.append(form.to_element())
        event.reply(query)

    async def register_set(self, event: StanzaEvent, query: Element) -> None:
        bare = event.sender.bare
        affiliation = self.affiliation(bare)
        if affiliation == "outcast":
            raise StanzaError("forbidden", "you are banned from this room")
        if query.find("remove", ns.REGISTER) is not None:
            item = self.affiliations.get(str(bare))
            if item is not None:
                if item.affiliation == "owner" and len(self.owners()) == 1:
                    raise StanzaError("conflict", "the last owner cannot leave the room")
                self.set_affiliation(bare, "none", "", "", None)
                if self.config.persistent:
                    await self.host.save(self)
            event.reply()
            return
        x = find_form(query)
        if x is None:
            raise StanzaError("bad-request", "a muc#register form is expected")
        try:
            values = submitted_values(x, ns.MUC_REGISTER)
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None
        nick = (values.get("muc#register_roomnick") or [""])[0].strip()
        if not nick:
            raise StanzaError("not-acceptable", "a nickname is required")
        try:
            nick = JID.parse(f"{self.jid_text}/{nick}").resource or ""
        except InvalidJID:
            raise StanzaError("jid-malformed", "not a valid nickname") from None
        self.check_nick(nick, bare)
        current = self.affiliations.get(str(bare))
        if current is None:
            self.affiliations[str(bare)] = Affiliation("member", "", nick)
        else:
            current.nick = nick
        if self.config.persistent:
            await self.host.save(self)
        event.reply()

    # ---- moderation (XEP-0425 with XEP-0424) --------------------------------------------
    async def moderate(
        self, event: StanzaEvent, target_id: str, moderate: Element | None, version: int
    ) -> None:
        occupant = self.by_real.get(event.sender)
        if occupant is None or occupant.role != "moderator":
            raise StanzaError("forbidden", "only moderators may moderate messages")
        if moderate is None or not target_id:
            raise StanzaError("bad-request", "a message id is needed")
        retract_ns = ns.RETRACT_1 if version == 1 else ns.RETRACT_0
        if moderate.find("retract", retract_ns) is None:
            raise StanzaError("bad-request", "only retraction is supported")
        reason = moderate.find_text("reason", ns.MODERATE_1 if version == 1 else ns.MODERATE_0)
        entry = next((e for e in self.history if e.id == target_id), None)
        moderated_ns = ns.MODERATE_1 if version == 1 else ns.MODERATE_0
        moderated = Element(
            "moderated",
            moderated_ns,
            {"by": str(occupant.jid)},
            [Element("occupant-id", ns.OCCUPANT_ID, {"id": occupant.id})],
        )
        stamp = delay_stamp()
        tombstone = Element(
            "retracted",
            ns.RETRACT_1,
            {"stamp": stamp},
            [
                moderated.copy(),
                *([Element("reason", ns.RETRACT_1, {}, [reason])] if reason else []),
            ],
        )
        found = await self.host.retract_archived(self, target_id, tombstone)
        if entry is None and not found:
            raise StanzaError("item-not-found", "no such message in this room")
        if entry is not None:
            kept = [
                c
                for c in entry.stanza.children
                if isinstance(c, Element) and (c.ns in (ns.OCCUPANT_ID, ns.SID))
            ]
            entry.stanza = Element("message", CLIENT, dict(entry.stanza.attrs), [*kept, tombstone])
        if version == 1:
            retract = Element("retract", ns.RETRACT_1, {"id": target_id}, [moderated])
            if reason:
                retract.add("reason", text=reason)
            payload = [retract]
        else:
            inner = Element(
                "moderated",
                ns.MODERATE_0,
                {"by": str(occupant.jid)},
                [Element("retract", ns.RETRACT_0)],
            )
            if reason:
                inner.add("reason", text=reason)
            payload = [Element("apply-to", ns.FASTEN, {"id": target_id}, [inner])]
        message = Element(
            "message",
            CLIENT,
            {"from": self.jid_text, "type": "groupchat", "id": new_archive_id()},
            [*payload, Element("store", ns.HINTS)],
        )
        self._send(message, self.all_targets())
        event.reply()
