"""XEP-0160: Best Practices for Handling Offline Messages.

Messages of type normal and chat to an account with no available resource are stored
(with a XEP-0203 delay stamp) and delivered when a resource becomes available with a
non-negative priority. Headline and groupchat messages are not stored (RFC 6121 §8.5.2.2).
A store full by count (`[offline] max_messages`) or by bytes (`max_bytes`) answers the
sender with resource-constraint (RFC 6121 §8.5.2.2). A message is in storage before
anything else happens to it, so it survives a restart.

A stored message leaves storage only once it has reached its client: written to the
connection (as the client reads it: the backlog is sent with flow control, never
faster than the connection drains), or, with XEP-0198, once the client acknowledged it.
Messages the server acknowledged to their sender while the recipient's session was
hibernating (XEP-0198 §5) are stored here too, before the sender's ack, so that a crash
does not lose them; they stay claimed by that session until it resumes and acknowledges
them, or ends (then they are ordinary offline messages).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.router import StanzaEvent
from dovecote.core.session import SESSION_ONLY
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID, InvalidJID
from dovecote.stream.errors import StanzaError
from dovecote.stream.sm import STORING
from dovecote.xml.delay import with_delay
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

MODULE = ModuleInfo(
    name="offline",
    summary="Offline messages (XEP-0160): stored, then delivered at the next available presence",
    features=["msgoffline"],
    depends=["presence"],
    config="offline",
)
HINTS = "urn:xmpp:hints"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
#: Per session: its offline delivery has not finished (goes on when it resumes).
PENDING = SessionSlot[bool]("offline.pending")
#: Per session: its backlog was delivered (at the first non-negative available presence).
DELIVERED = SessionSlot[bool]("offline.delivered")


def worth_storing(stanza: Element) -> bool:
    """XEP-0334 no-store/no-permanent-store hints, and bare chat states (XEP-0085 §5.6)
    are not kept."""
    children = list(stanza.elements)
    if any(c.ns == HINTS and c.tag in ("no-store", "no-permanent-store") for c in children):
        return False
    meaningful = [c for c in children if c.ns not in (CHAT_STATES, HINTS)]
    return bool(meaningful)


def storable_message(stanza: Element) -> bool:
    """A chat or normal message that offline storage keeps (RFC 6121 §8.5.2.2)."""
    return (
        stanza.tag == "message"
        and stanza.attrs.get("type", "normal") in ("normal", "chat")
        and not any(c.ns in SESSION_ONLY for c in stanza.elements)
        and worth_storing(stanza)
    )


def setup(server: Server) -> None:
    events = server.events
    offline = server.storage.offline
    limit = server.config.offline.max_messages
    max_bytes = server.config.offline.max_bytes
    #: Per user: a lock that keeps stores in order (alive while held or awaited).
    store_locks: weakref.WeakValueDictionary[JID, asyncio.Lock] = weakref.WeakValueDictionary()
    #: Rows a live session has taken and not yet confirmed (sent, or acknowledged with
    #: XEP-0198): another resource's delivery passes over them.
    claimed: set[int] = set()

    @events.on("message/offline")
    async def store(event: StanzaEvent) -> bool:
        if (event.type or "normal") not in ("normal", "chat"):
            return False
        if not worth_storing(event.stanza):
            return True  # dropped silently, like a headline
        user: JID = event.to.bare
        copy = with_delay(event.stanza, user.domain, "Offline Storage")
        stored = await store_in_order(user, serialize(copy), limit, max_bytes)
        if stored is None:
            # RFC 6121 §8.5.2.2 / XEP-0160 §3: full by count or by bytes.
            raise StanzaError("resource-constraint", "the recipient's offline storage is full")
        return True

    async def store_in_order(
        user: JID, text: str, max_messages: int, max_stored_bytes: int | None
    ) -> int | None:
        """Store for `user`, in the order the calls were made (the lock is FIFO)."""
        lock = store_locks.get(user)
        if lock is None:
            lock = asyncio.Lock()
            store_locks[user] = lock
        async with lock:
            return await offline.store(
                user.local or "", user.domain, text, max_messages, max_stored_bytes
            )

    # ---- delivery at login (XEP-0160 §3) ---------------------------------------------
    @events.on("presence/outgoing")
    async def on_presence(args: tuple[Any, Element]) -> None:
        session, stanza = args
        if stanza.attrs.get("type") is not None:
            return
        if session.priority < 0:
            DELIVERED.pop(session)
            return
        if DELIVERED.get(session):
            return
        DELIVERED.set(session, True)
        # In the background: the backlog waits for the client to read and acknowledge,
        # which it does on the very stream this presence came from.
        server.spawn(deliver(session))

    @events.on("session/resumed")
    def on_resumed(session: Any) -> None:
        # The backlog stopped when the connection died; the resumed stream takes the rest.
        if PENDING.pop(session):
            server.spawn(deliver(session))

    async def deliver(session: Any) -> None:
        user = session.jid.bare
        local, domain = user.local or "", user.domain
        # Filtered and claimed in one step: two resources logging in at once never both
        # get a row.
        rows = [row for row in await offline.fetch(local, domain) if row[0] not in claimed]
        claimed.update(row_id for row_id, _text in rows)
        if not rows:
            return
        sent: list[int] = []
        broken: list[int] = []
        index = 0
        try:
            while index < len(rows):
                row_id, text = rows[index]
                stanza = parse_stored(text, f"offline message {row_id} of {user}")
                if stanza is None:
                    # One bad row never holds back the rows after it (logged, removed).
                    broken.append(row_id)
                    index += 1
                    continue
                # Flow control: never faster than the client reads (or acknowledges).
                if not await session.wait_writable():
                    break
                sm_state = session.sm
                if sm_state is not None:
                    # Removed once acknowledged (XEP-0198 §4), or re-routed with the rest.
                    sm_state.stored_rows[id(stanza)] = row_id
                    session.send(stanza)
                else:
                    session.send(stanza)
                    if not session.writing:
                        break
                    sent.append(row_id)
                index += 1
        finally:
            unsent = [row_id for row_id, _text in rows[index:]]
            if unsent:
                claimed.difference_update(unsent)
                PENDING.set(session, True)
            done = sent + broken
            if done:
                await offline.delete(local, domain, done)
                claimed.difference_update(done)

    # ---- messages held for a hibernating XEP-0198 session -----------------------------
    @events.on("sm/hibernated-stanza")
    async def hold(args: tuple[Any, Any, Element]) -> None:
        session, sm_state, stanza = args
        key = id(stanza)
        if not storable_message(stanza):
            if sm_state.stored_rows.get(key) == STORING:
                del sm_state.stored_rows[key]
            sm_state.acked_while_storing.discard(key)
            return
        user = session.jid.bare
        copy = with_delay(stanza, user.domain, "Offline Storage")
        try:
            # Beyond the quota by at most the session's queue, which is capped itself: the
            # sender was (or will be) told the message was handled.
            row_id = await store_in_order(user, serialize(copy), limit + sm_state.max_queue, None)
        except Exception:
            log.exception("storing a message held for %s failed", session.jid)
            row_id = None
        if row_id is None:
            not_held(session, sm_state, stanza)
            return
        if sm_state.stored_rows.get(key) == STORING:
            sm_state.stored_rows[key] = row_id  # removed once acknowledged
            claimed.add(row_id)
        elif key in sm_state.acked_while_storing:
            sm_state.acked_while_storing.discard(key)
            await offline.delete(user.local or "", user.domain, [row_id])
        # Otherwise the session ended meanwhile: an ordinary offline message now.

    def not_held(session: Any, sm_state: Any, stanza: Element) -> None:
        """The copy could not be stored: the message is still the session's to deliver,
        re-route or bounce; if the session already ended counting on the copy, it is
        bounced to its sender now (never dropped)."""
        key = id(stanza)
        if sm_state.stored_rows.get(key) == STORING:
            del sm_state.stored_rows[key]  # the session handles it as any unacked stanza
            return
        if key in sm_state.acked_while_storing:
            sm_state.acked_while_storing.discard(key)  # delivered meanwhile
            return
        sender = stanza.attrs.get("from")
        if not sender:
            return
        try:
            event = StanzaEvent(server, stanza, JID.parse(sender), session.jid.bare, None)
        except InvalidJID:
            return
        server.router.bounce(
            event, StanzaError("resource-constraint", "the recipient's storage failed")
        )

    @events.on("sm/acknowledged-rows")
    async def acknowledged(args: tuple[Any, list[int]]) -> None:
        session, rows = args
        user = session.jid.bare
        await offline.delete(user.local or "", user.domain, rows)
        claimed.difference_update(rows)

    @events.on("sm/released-rows")
    def released(args: tuple[Any, list[int]]) -> None:
        # The session ended without confirming these: the next login gets them.
        _session, rows = args
        claimed.difference_update(rows)
