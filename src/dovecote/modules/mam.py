"""XEP-0313: Message Archive Management for user archives, with XEP-0359 stanza ids,
XEP-0441 archiving preferences and XEP-0334 storage hints.

What is archived (XEP-0313 §6.1.1): chat and normal messages with a body or other content
(see `worth_archiving`), sent by a local user's client (into the sender's archive, from
`stanza/from-client`) or addressed to a local user (into the recipient's archive, from
`message/bare` and `message/full` before delivery and offline storage). A message between
two local users is thus archived once in each archive; a message to oneself once.
The archived copy of an incoming message is announced to the recipient with a XEP-0359
<stanza-id by='user@domain'/> in the delivered message (XEP-0313 §3.5).

The archive is queried by its owner only (XEP-0313 §4, §8.1), paged with XEP-0059 RSM;
the 'urn:xmpp:mam:2#extended' fields, flipped pages and metadata are supported (§4.1.3,
§4.3.4, §5). Messages older than `[mam] retention_days` are removed every hour.

Each archive holds at most `[mam] max_bytes_per_user` bytes of messages; over it, the
oldest messages expire first, down to 90% of the quota ('expire-oldest', pruned in the group
commit behind the message path), or nothing more is archived ('stop'). An outgoing message
to a local account that does not exist (bounced with service-unavailable) is not archived.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.jid import JID, InvalidJID
from dovecote.storage.archive import (
    ArchivedMessage,
    ArchiveFilter,
    ArchiveFull,
    ArchiveIdNotFound,
    ArchiveStore,
    new_archive_id,
)
from dovecote.storage.base import StorageError
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.forms import (
    DATA_FORMS,
    XDATA_VALIDATE,
    Field,
    Form,
    FormError,
    single_value,
    submitted_values,
)
from dovecote.xml.forward import datetime_stamp, forwarded
from dovecote.xml.parser import XMLStreamError, parse_element, parse_stored
from dovecote.xml.rsm import RSMError, find_request, response_set

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

MAM = "urn:xmpp:mam:2"
MAM_EXTENDED = "urn:xmpp:mam:2#extended"
#: §7: the 'include-groupchat' field is understood (user archives never hold groupchat
#: messages: the room's archive has them, so 'groupchat-available' is not advertised).
MAM_GROUPCHAT_FIELD = "urn:xmpp:mam:2#groupchat-field"
SID = "urn:xmpp:sid:0"
HINTS = "urn:xmpp:hints"

MODULE = ModuleInfo(
    name="mam",
    summary="Message archive management (XEP-0313) of accounts, stanza ids (XEP-0359), "
    "preferences (XEP-0441)",
    features=[SID],  # XEP-0359 §5: the server follows its business rules
    account_features=[MAM, MAM_EXTENDED, MAM_GROUPCHAT_FIELD],  # XEP-0313 §7
    config="mam",
)

#: Incoming: after blocking (100), before delivery and offline storage (lowest).
INCOMING_PRIORITY = 50
#: Outgoing: after blocking refused what it refuses.
OUTGOING_PRIORITY = 20
PREFS_KEY = "mam:prefs"
DEFAULTS = ("always", "never", "roster")
#: XEP-0313 §4.1: the fields a query form may carry.
QUERY_FIELDS = frozenset(
    ("with", "start", "end", "before-id", "after-id", "ids", "include-groupchat")
)
#: Most ids one query may name in the 'ids' field.
MAX_IDS = 1000
PURGE_INTERVAL = 3600.0

#: Message payloads that are conversation content (XEP-0313 §3 "messages that hold
#: meaningful content, rather than state changes"), after what Prosody archives: encrypted
#: bodies, receipts and markers, reactions, retractions, call signalling, invitations.
CONTENT_NAMESPACES = frozenset(
    (
        "urn:xmpp:eme:0",  # XEP-0380
        "eu.siacs.conversations.axolotl",  # XEP-0384 (OMEMO 0.3)
        "urn:xmpp:omemo:2",  # XEP-0384
        "urn:xmpp:openpgp:0",  # XEP-0373
        "jabber:x:encrypted",  # XEP-0027
        "urn:xmpp:reactions:0",  # XEP-0444
        "urn:xmpp:message-retract:0",  # XEP-0424
        "urn:xmpp:message-retract:1",
        "urn:xmpp:fasten:0",  # XEP-0422
        "urn:xmpp:jingle-message:0",  # XEP-0353
        "jabber:x:oob",  # XEP-0066
        "jabber:x:conference",  # XEP-0249
    )
)
CONTENT_ELEMENTS = frozenset(
    (
        ("urn:xmpp:receipts", "received"),  # XEP-0184
        ("urn:xmpp:chat-markers:0", "received"),  # XEP-0333
        ("urn:xmpp:chat-markers:0", "displayed"),
        ("urn:xmpp:chat-markers:0", "acknowledged"),
    )
)
MUC_USER = "http://jabber.org/protocol/muc#user"


class StanzaId(Element):
    """A <stanza-id/> added by this module (XEP-0359 §2.1). Its type tells it apart from one
    a sender put in, so that a message routed again (message/full to a resource that has
    gone, then message/bare) is archived once."""

    __slots__ = ()


# ---- what is archived --------------------------------------------------------------------
def _is_content(child: Element) -> bool:
    if child.ns == ns.CLIENT:
        return child.tag in ("body", "subject")
    if child.ns in CONTENT_NAMESPACES or (child.ns, child.tag) in CONTENT_ELEMENTS:
        return True
    # XEP-0045 §7.8.2: a mediated invitation.
    return child.ns == MUC_USER and child.find("invite", MUC_USER) is not None


def worth_archiving(stanza: Element) -> bool:
    """XEP-0313 §6.1.1 and XEP-0334 §4: chat and normal messages with a body or other
    content; <no-store/> and <no-permanent-store/> keep a message out, <store/> brings in
    one without content. Errors, headlines and groupchat messages are not archived (the
    room keeps its own archive)."""
    if stanza.attrs.get("type", "normal") not in ("chat", "normal"):
        return False
    content = store = False
    for child in stanza.children:
        if not isinstance(child, Element):
            continue
        if child.ns == HINTS:
            if child.tag in ("no-store", "no-permanent-store"):
                return False
            store = store or child.tag == "store"
        elif not content:
            content = _is_content(child)
    return content or store


def _same_jid(text: str | None, jid: JID) -> bool:
    if text is None:
        return False
    try:
        return JID.parse(text) == jid
    except InvalidJID:
        return False


def strip_stanza_ids(stanza: Element, by: JID) -> None:
    """XEP-0359 §3 rule 2: remove any <stanza-id/> claiming to be by `by` (a sender's
    forgery), whether or not the server adds its own."""
    forged = [
        c
        for c in stanza.children
        if isinstance(c, Element) and c.tag == "stanza-id" and c.ns == SID
        if type(c) is not StanzaId and _same_jid(c.get("by"), by)
    ]
    for child in forged:
        stanza.remove(child)


def archived_by(stanza: Element, by: JID) -> bool:
    """True when this module already archived `stanza` into `by`'s archive."""
    return any(type(c) is StanzaId and c.attrs.get("by") == str(by) for c in stanza.children)


# ---- time (XEP-0082) ---------------------------------------------------------------------
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_datetime(text: str) -> datetime.datetime:
    """XEP-0082 §3.2 DateTime, CCYY-MM-DDThh:mm:ss[.sss]TZD; raises ValueError."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a XEP-0082 DateTime")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone == "Z":
        tz = datetime.UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if offset >= datetime.timedelta(hours=24):
            raise ValueError(f"invalid time zone in {text!r}")
        tz = datetime.timezone(sign * offset)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return datetime.datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
    ).astimezone(datetime.UTC)


def archive_now() -> datetime.datetime:
    """Now, to the millisecond: a stamp sent to clients (XEP-0203 delay and metadata, in
    milliseconds) finds its message again when used as 'start' or 'end'."""
    now = datetime.datetime.now(datetime.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# ---- preferences (XEP-0441) --------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Prefs:
    default: str
    always: tuple[JID, ...] = ()
    never: tuple[JID, ...] = ()

    def to_element(self) -> Element:
        """XEP-0441 §2.1: <always/> and <never/> are always present."""
        el = Element("prefs", MAM, {"default": self.default})
        for tag, jids in (("always", self.always), ("never", self.never)):
            listed = el.add(tag)
            for jid in jids:
                listed.add("jid", text=str(jid))
        return el


def _listed(jids: tuple[JID, ...], target: JID) -> bool:
    """XEP-0441 §2.3.1: a listed full JID matches that full JID, a bare one any resource."""
    return any(jid == (target if jid.resource is not None else target.bare) for jid in jids)


def parse_prefs(el: Element, current: Prefs) -> Prefs:
    """A <prefs/> set by the client (XEP-0441 §2.1); a missing 'default' keeps the current."""
    default = el.get("default", current.default)
    if default not in DEFAULTS:
        raise StanzaError("bad-request", "default must be always, never or roster")
    lists: dict[str, tuple[JID, ...]] = {}
    for tag in ("always", "never"):
        found: dict[JID, None] = {}
        listed = el.find(tag, MAM)
        for jid_el in listed.find_all("jid", MAM) if listed is not None else ():
            try:
                found[JID.parse(jid_el.text.strip())] = None
            except InvalidJID:
                raise StanzaError("jid-malformed", f"invalid JID {jid_el.text!r}") from None
        lists[tag] = tuple(found)
    return Prefs(default, lists["always"], lists["never"])


# ---- query form (XEP-0313 §4.1) ----------------------------------------------------------
def query_form() -> Element:
    """§4.1.5: the fields this server understands."""
    validate = Element("validate", XDATA_VALIDATE, {"datatype": "xs:string"})
    validate.add("open")
    return Form.with_type(
        MAM,
        [
            Field("with", "jid-single"),
            Field("start", "text-single"),
            Field("end", "text-single"),
            Field("before-id", "text-single"),
            Field("after-id", "text-single"),
            Field("ids", "list-multi", extra=[validate]),
            Field("include-groupchat", "boolean"),
        ],
    ).to_element()


def parse_filter(query: Element) -> ArchiveFilter:
    """The data form of a query (§4.1) as a filter; bad-request for malformed values and
    feature-not-implemented for a field this server does not know (§4.1.5)."""
    x = query.find("x", DATA_FORMS)
    if x is None:
        return ArchiveFilter()
    try:
        values = submitted_values(x, MAM)
        unknown = sorted(var for var in values if var not in QUERY_FIELDS)
        if unknown:
            raise StanzaError("feature-not-implemented", f"unknown field {unknown[0]!r}")
        with_text = single_value(values, "with")
        start_text = single_value(values, "start")
        end_text = single_value(values, "end")
        after_id = single_value(values, "after-id") or None
        before_id = single_value(values, "before-id") or None
        groupchat = single_value(values, "include-groupchat")
        if groupchat is not None and groupchat not in ("0", "1", "true", "false"):
            raise FormError(f"'include-groupchat' must be a boolean, not {groupchat!r}")
    except FormError as exc:
        raise StanzaError("bad-request", str(exc)) from None
    with_jid = None
    if with_text is not None:
        try:
            with_jid = JID.parse(with_text.strip())
        except InvalidJID:
            raise StanzaError("bad-request", f"invalid JID {with_text!r} in 'with'") from None
    try:
        start = parse_datetime(start_text) if start_text is not None else None
        end = parse_datetime(end_text) if end_text is not None else None
    except ValueError as exc:
        raise StanzaError("bad-request", str(exc)) from None
    ids = None
    if "ids" in values:
        ids = [i for i in values["ids"] if i]
        if len(ids) > MAX_IDS:
            raise StanzaError("policy-violation", f"at most {MAX_IDS} ids per query")
    return ArchiveFilter(
        with_bare=str(with_jid.bare) if with_jid is not None else None,
        with_resource=with_jid.resource if with_jid is not None else None,
        start=start,
        end=end,
        after_id=after_id,
        before_id=before_id,
        ids=ids,
    )


def result_message(
    to: JID, archive: JID, queryid: str | None, item: ArchivedMessage
) -> Element | None:
    """§4.2: one result, the archived message forwarded (XEP-0297) with its stamp
    (XEP-0203); None (logged) when the stored message is unreadable."""
    stanza = parse_stored(item.stanza, f"archived message {item.id} of {archive}")
    if stanza is None:
        return None
    result = Element("result", MAM, {"id": item.id})
    if queryid is not None:
        result.attrs["queryid"] = queryid
    result.append(forwarded(stanza, item.timestamp))
    return Element("message", ns.CLIENT, {"to": str(to), "from": str(archive)}, [result])


async def answer_query(
    event: StanzaEvent,
    store: ArchiveStore,
    archive: JID,
    *,
    default_page: int,
    max_page: int,
) -> None:
    """Answer the XEP-0313 query `event` against `archive`'s messages in `store`: a user
    archive (`storage.archive`) or a MUC room's (`storage.room_archive`, §6.1.2), the
    caller having checked who may ask (§8.1).

    The query form (§4.1) and the XEP-0059 page are read and the page fetched here, so
    bad-request and item-not-found (§4.3.2) are raised to the caller; the results (§4.2,
    from the archive's JID) and the closing <fin/> (§4.3) are then sent in the background,
    never faster than the asker reads or acknowledges (`ClientSession.wait_writable`): a
    page of large messages never piles up in the server's write buffers, and waiting for
    the client's XEP-0198 acks never blocks the input loop that reads them."""
    payload = event.payload
    assert payload is not None
    queryid = payload.get("queryid")
    filter = parse_filter(payload)
    try:
        rsm = find_request(payload)
    except RSMError as exc:
        raise StanzaError("bad-request", str(exc)) from None
    limit = default_page
    after = before = None
    index = None
    if rsm is not None:
        if rsm.max is not None:
            limit = min(rsm.max, max_page)
        after, before, index = rsm.after, rsm.before, rsm.index
    try:
        page = await store.query(
            archive.local or "",
            archive.domain,
            filter,
            limit,
            after=after,
            before=before,
            index=index,
        )
    except ArchiveIdNotFound as exc:
        raise StanzaError("item-not-found", str(exc)) from None
    items = page.messages
    if payload.find("flip-page", MAM) is not None:
        items = items[::-1]  # §4.3.4: the same page, newest first
    fin = Element("fin", MAM, {"complete": "true" if page.complete else "false"})
    if queryid is not None:
        fin.attrs["queryid"] = queryid
    first = page.messages[0].id if page.messages else None
    last = page.messages[-1].id if page.messages else None
    fin.append(response_set(first, last, page.count, page.first_index))
    results = [
        message
        for item in items
        if (message := result_message(event.sender, archive, queryid, item)) is not None
    ]
    session = event.origin
    if session is None or session.jid != event.sender or not results:
        for message in results:
            event.send_back(message)
        event.reply(fin)
        return
    event.server.spawn(_send_page(event, session, results, fin))


async def _send_page(
    event: StanzaEvent, session: Any, results: list[Element], fin: Element
) -> None:
    """The results of a query, then its <fin/>, at the pace the client reads; when the
    session stops being writable (closed, or hibernating: XEP-0198 would queue and store
    them) the rest is not sent: the client asks again for what it has not seen (§4.3)."""
    for message in results:
        if not await session.wait_writable():
            log.debug("stopped sending a MAM page to %s: the session is not writable", session.jid)
            return
        session.send(message)
    event.reply(fin)


# ---- retention ---------------------------------------------------------------------------
async def purge_expired(server: Server) -> int:
    """Remove what is older than `[mam] retention_days` from every archive (0: keep)."""
    days = server.config.mam.retention_days
    if days <= 0 or server.storage is None:
        return 0
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
    removed: int = await server.storage.archive.delete_older_than(cutoff)
    if removed:
        log.info("removed %d archived messages older than %d days", removed, days)
    return removed


def schedule_purges(server: Server) -> None:
    """Purge at start and then every hour, with a timer rather than a sleeping task, so
    that stopping the server has nothing to wait for; a stopped server has no storage
    and the chain ends."""
    loop = asyncio.get_running_loop()

    def tick() -> None:
        if server.storage is not None:
            server.spawn(run())

    async def run() -> None:
        try:
            await purge_expired(server)
        except StorageError as exc:
            log.error("archive retention failed: %s", exc)
        finally:
            if server.storage is not None:
                loop.call_later(PURGE_INTERVAL, tick)

    loop.call_soon(tick)


# ---- the module --------------------------------------------------------------------------
def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    config = server.config.mam
    max_page = config.max_page_size
    default_page = min(config.default_page_size, max_page)
    #: Preferences of users with a session online.
    prefs_cache: dict[JID, Prefs] = {}

    async def load_prefs(user: JID) -> Prefs:
        prefs = prefs_cache.get(user)
        if prefs is not None:
            return prefs
        prefs = Prefs(config.default)
        text = await server.storage.kv.get(user.local, user.domain, PREFS_KEY)
        if text is not None:
            try:
                prefs = parse_prefs(parse_element(text), prefs)
            except (XMLStreamError, StanzaError):
                log.warning("ignoring unreadable archiving preferences of %s", user)
        if sessions.is_online(user):
            prefs_cache[user] = prefs
        return prefs

    @events.on("session/bound")
    async def warm_prefs(session: Any) -> None:
        # Loaded now rather than by the first message, which would wait on storage.
        await load_prefs(session.jid.bare)

    async def archives_with(user: JID, peer: JID) -> bool:
        """XEP-0441 §2.1: whether the user's preferences archive messages with `peer`."""
        prefs = await load_prefs(user)
        if _listed(prefs.never, peer):
            return False
        if _listed(prefs.always, peer) or prefs.default == "always":
            return True
        if prefs.default == "never":
            return False
        if peer.bare == user:
            return True  # 'roster': one's own account counts as a contact
        return await server.rosters.in_roster(user, peer)

    def archive(user: JID, peer: JID, stanza: Element) -> str:
        """Queue `stanza` for `user`'s archive and return its id at once: the write is a
        group commit behind the message, and acknowledgements to the client (XEP-0198)
        wait for it through `server.durability_barriers`."""
        archive_id = new_archive_id()
        item = ArchivedMessage(
            archive_id, archive_now(), str(peer.bare), peer.resource, serialize(stanza)
        )
        server.storage.archive.enqueue(user.local, user.domain, item).add_done_callback(
            functools.partial(_log_failure, user, archive_id)
        )
        return archive_id

    def _log_failure(user: JID, archive_id: str, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        if isinstance(error, ArchiveFull):
            log.debug("message %s was not archived for %s: the archive is full", archive_id, user)
        elif isinstance(error, StorageError):
            # The storage layer logged the failed batch at ERROR, naming its archives.
            log.debug("message %s was not archived for %s: %s", archive_id, user, error)
        else:
            # The message went on, but the archive has a gap that must not go unnoticed.
            log.error("message %s was not archived for %s: %s", archive_id, user, error)

    server.storage.archive.set_quota(config.max_bytes_per_user, config.quota_policy)
    server.durability_barriers.append(server.storage.archive.flush)

    # ---- archiving -----------------------------------------------------------------------
    # The handlers decide what to skip synchronously (no coroutine for a chat state or a
    # presence) and return a coroutine only for what may be archived.
    def incoming(event: StanzaEvent) -> bool | Awaitable[bool]:
        """XEP-0313 §3.5, §6.1.1: archive for the recipient and tell it the archive id."""
        stanza = event.stanza
        user = event.to.bare
        if archived_by(stanza, user):
            return False
        strip_stanza_ids(stanza, user)
        if not worth_archiving(stanza):
            return False
        return archive_incoming(event, user)

    async def archive_incoming(event: StanzaEvent, user: JID) -> bool:
        # No archive (and no stanza-id in the bounce) for an account that does not exist.
        if await archives_with(user, event.sender) and await server.router.account_exists(user):
            archive_id = archive(user, event.sender, event.stanza)
            stanza_id = StanzaId("stanza-id", SID, {"by": str(user), "id": archive_id})
            event.stanza.append(stanza_id)
        return False

    events.add("message/bare", incoming, INCOMING_PRIORITY)
    events.add("message/full", incoming, INCOMING_PRIORITY)

    @events.on("stanza/from-client", OUTGOING_PRIORITY)
    def outgoing(event: StanzaEvent) -> bool | Awaitable[bool]:
        """§6.1.1: what the user sends, archived for the user (§3.5: with no stanza-id in
        what the contact gets)."""
        stanza = event.stanza
        if stanza.tag != "message":
            return False
        user = event.sender.bare
        if event.to.bare == user:
            return False  # to oneself: archived once, as an incoming message
        strip_stanza_ids(stanza, user)
        if not worth_archiving(stanza):
            return False
        return archive_outgoing(event, user)

    async def archive_outgoing(event: StanzaEvent, user: JID) -> bool:
        if await archives_with(user, event.to) and await deliverable(event.to):
            event.archive_id = archive(user, event.to, event.stanza)
        return False

    async def deliverable(to: JID) -> bool:
        """False for a local account that does not exist: the router bounces the message
        (service-unavailable, RFC 6121 §8.5.1) and archiving it would only fill the
        sender's quota. Remote addresses are archived before their answer is known (as
        Prosody does); the quota bounds what bounces cost."""
        if to.domain in server.hosts and to.local is not None:
            return await server.router.account_exists(to.bare)
        return True

    @events.on("session/ended", -2000)
    def forget(session: Any) -> None:
        user = session.jid.bare
        if not sessions.is_online(user):
            prefs_cache.pop(user, None)

    # ---- access (§8.1) -------------------------------------------------------------------
    def owner(event: StanzaEvent) -> JID:
        user = event.sender.bare
        if event.to.bare != user:
            raise StanzaError("forbidden", "only the owner may use an archive")
        return user

    # ---- queries (§4) --------------------------------------------------------------------
    @events.on(f"iq/bare/get/{MAM}:query")
    def form(event: StanzaEvent) -> bool:
        owner(event)
        event.reply(Element("query", MAM, children=[query_form()]))
        return True

    @events.on(f"iq/bare/set/{MAM}:query")
    async def query(event: StanzaEvent) -> bool:
        user = owner(event)
        await answer_query(
            event, server.storage.archive, user, default_page=default_page, max_page=max_page
        )
        return True

    # ---- metadata (§5) -------------------------------------------------------------------
    @events.on(f"iq/bare/get/{MAM}:metadata")
    async def metadata(event: StanzaEvent) -> bool:
        user = owner(event)
        result = Element("metadata", MAM)
        bounds = await server.storage.archive.bounds(user.local, user.domain)
        if bounds is not None:
            for tag, mark in zip(("start", "end"), bounds, strict=True):
                result.add(tag, attrs={"id": mark.id, "timestamp": datetime_stamp(mark.timestamp)})
        event.reply(result)
        return True

    # ---- preferences (XEP-0441) ----------------------------------------------------------
    @events.on(f"iq/bare/get/{MAM}:prefs")
    async def prefs_get(event: StanzaEvent) -> bool:
        user = owner(event)
        event.reply((await load_prefs(user)).to_element())
        return True

    @events.on(f"iq/bare/set/{MAM}:prefs")
    async def prefs_set(event: StanzaEvent) -> bool:
        user = owner(event)
        payload = event.payload
        assert payload is not None
        prefs = parse_prefs(payload, await load_prefs(user))
        element = prefs.to_element()
        await server.storage.kv.set(user.local, user.domain, PREFS_KEY, serialize(element))
        if sessions.is_online(user):
            prefs_cache[user] = prefs
        event.reply(element)  # §2.1: the preferences as applied
        return True

    schedule_purges(server)
