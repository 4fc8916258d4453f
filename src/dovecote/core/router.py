"""Routing (RFC 6120 §10): decide where a stanza goes and fire the matching event.

Event names (handlers registered by modules, the core's defaults at the lowest priority):

  iq/host/{type}/{ns}:{tag}   IQ get/set to a served domain (or with no 'to' and not
                              handled as iq/bare)
  iq/bare/{type}/{ns}:{tag}   IQ get/set to an account's bare JID (no 'to' = the sender's
                              own account), answered by the server on its behalf
  iq/host/result, iq/bare/result, iq/host/error ...: responses to the server
  iq/bare                     any IQ get/set to an account, before the namespaced event
  iq/host                     any IQ get/set to a served domain, before the namespaced event
  iq/full                     IQ to a full JID
  message/host | message/bare | message/full
  presence/host | presence/bare | presence/full
  presence/broadcast          presence with no 'to' from a client (RFC 6121 §4.2, §4.4)
  stanza/from-client          every stanza from a local client before it is routed
  message/offline             a message to an account with no available resource

The hot path (a message between two online users) touches no storage and no thread.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dovecote.core.events import describe, log_failure
from dovecote.jid import JID, InvalidJID
from dovecote.storage.base import StorageUnavailable
from dovecote.stream.errors import StanzaError, error_reply, excerpt
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr

if TYPE_CHECKING:
    from dovecote.core.sessions import Session
    from dovecote.server import Server

log = logging.getLogger(__name__)


class StanzaEvent:
    """One stanza on its way, as handlers see it."""

    __slots__ = ("archive_id", "fanout", "origin", "sender", "server", "stanza", "to")

    def __init__(
        self,
        server: Server,
        stanza: Element,
        sender: JID,
        to: JID,
        origin: Session | None,
        fanout: Fanout | None = None,
    ) -> None:
        self.server = server
        self.stanza = stanza
        #: The stamped 'from' of the stanza.
        self.sender = sender
        #: Where it is going ('to', or the sender's bare JID / domain when absent).
        self.to = to
        #: The local session it came from (None: from the server itself or elsewhere).
        self.origin = origin
        #: The id the sender's archive gave an outgoing message (XEP-0313), for copies.
        self.archive_id: str | None = None
        #: Set when the stanza is one copy of a fan-out (`Router.route_fanout`): local
        #: deliveries reuse its serialization (`Router.deliver_event`).
        self.fanout = fanout

    @property
    def type(self) -> str | None:
        return self.stanza.attrs.get("type")

    @property
    def payload(self) -> Element | None:
        """The child of an IQ get/set."""
        return next(self.stanza.elements, None)

    def reply(self, *children: Element, type: str = "result") -> None:
        """Answer an IQ: same id, addresses swapped, from the addressed entity."""
        attrs = {"type": type, "to": str(self.sender), "from": str(self.to)}
        if "id" in self.stanza.attrs:
            attrs["id"] = self.stanza.attrs["id"]
        self.send_back(Element(self.stanza.tag, ns.CLIENT, attrs, list(children)))

    def error(self, condition: str, text: str = "") -> None:
        self.send_back(
            self.server.router.make_error(
                self.stanza, StanzaError(condition, text), to=self.sender, sender=self.to
            )
        )

    def send_back(self, stanza: Element) -> None:
        """Send to the sender: straight to the origin session when it is local."""
        if self.origin is not None and self.origin.jid == self.sender:
            self.origin.send(stanza)
        else:
            self.server.router.route_soon(stanza)


class Fanout:
    """One stanza sent to many addresses where only 'to' differs (presence broadcast,
    RFC 6121 §4.2.2): serialized once per transport kind without 'to', and each copy
    written as those bytes with its own 'to' spliced in."""

    __slots__ = ("_head", "_templates", "stanza")

    def __init__(self, stanza: Element) -> None:
        self.stanza = stanza.shallow_copy()
        self.stanza.attrs.pop("to", None)
        self._head = f"<{stanza.tag}".encode()
        # transport kind -> serialization without 'to' (None: cannot be spliced)
        self._templates: dict[type, bytes | None] = {}

    def is_copy(self, stanza: Element) -> bool:
        """`stanza` is a copy of the template that differs at most in 'to' (a handler on
        the way may have changed it: then it is serialized on its own)."""
        template = self.stanza
        if stanza.tag != template.tag or stanza.ns != template.ns:
            return False
        attrs = stanza.attrs
        if len(attrs) - ("to" in attrs) != len(template.attrs):
            return False
        for key, value in template.attrs.items():
            if attrs.get(key) != value:
                return False
        children, originals = stanza.children, template.children
        return len(children) == len(originals) and all(
            a is b for a, b in zip(children, originals, strict=True)
        )

    def data_for(self, session: Any, to: str | None) -> bytes | None:
        """The bytes of the template addressed to `to`, for `session`'s transport."""
        # Sessions on different kinds of connection (TCP, WebSocket) serialize differently.
        kind = getattr(session, "wire", None) or type(session)
        template = self._templates.get(kind, b"")
        if template == b"":
            data = session.serialize(self.stanza)
            head = self._head
            template = data if data[len(head) : len(head) + 1] == b" " else None
            self._templates[kind] = template
        if template is None:
            return None
        if to is None:
            return template
        head = self._head
        return head + b" to='" + escape_attr(to).encode() + b"'" + template[len(head) :]


class Router:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.events = server.events
        #: Stanzas from one account (or the server) waiting in `route_soon`'s queue.
        self.max_route_queue: int = server.config.limits.max_route_queue
        # bare 'from' -> stanzas waiting to be routed, in order (one task drains each)
        self._outbox: dict[str, deque[Element]] = {}
        # Origins whose queue is full (logged once until it drains).
        self._overflowing: set[str] = set()

    # ---- building answers -----------------------------------------------------------
    def make_error(
        self,
        stanza: Element,
        error: StanzaError,
        *,
        to: JID | None = None,
        sender: JID | None = None,
    ) -> Element:
        reply = error_reply(stanza, error)
        if to is not None:
            reply.attrs["to"] = str(to)
        if sender is not None:
            reply.attrs["from"] = str(sender)
        return reply

    def bounce(self, event: StanzaEvent, error: StanzaError) -> None:
        """Answer with an error, unless the stanza is itself an error (RFC 6120 §8.3.1)."""
        if event.type == "error":
            return
        if event.stanza.tag == "iq" and event.type == "result":
            return
        event.send_back(self.make_error(event.stanza, error, to=event.sender, sender=event.to))

    # ---- routing ----------------------------------------------------------------------
    def route_soon(self, stanza: Element) -> None:
        """Route from synchronous code (a reply to a non-local sender, ...).

        RFC 6120 §10.1: stanzas are routed in the order they were sent. Stanzas from the
        same account (the bare JID of 'from': the user's 'unsubscribe' then 'unsubscribed',
        a 'subscribed' then the presence of each resource) wait in one queue, routed one
        after the other by one task. Beyond `max_route_queue` waiting, a stanza is routed
        at once (out of order, logged) rather than kept: memory stays bounded."""
        sender = stanza.attrs.get("from") or ""
        key = sender.partition("/")[0]
        queue = self._outbox.get(key)
        if queue is None:
            queue = self._outbox[key] = deque((stanza,))
            self.server.spawn(self._route_in_order(key, queue))
        elif len(queue) < self.max_route_queue:
            queue.append(stanza)
        else:
            if key not in self._overflowing:  # once per backlog, not once per stanza
                self._overflowing.add(key)
                log.warning(
                    "more than %d stanzas from %s wait to be routed; routing %s and the "
                    "next ones out of order",
                    self.max_route_queue,
                    key or "the server",
                    describe(stanza),
                )
            self.server.spawn(self.route(stanza))

    async def _route_in_order(self, key: str, queue: deque[Element]) -> None:
        try:
            while queue:
                stanza = queue.popleft()
                try:
                    await self.route(stanza)
                except Exception:  # route() logs its own failures; this is the last guard
                    log.exception("routing %s failed", describe(stanza))
        finally:
            # No await between the last check and here: nothing can be appended unseen.
            if self._outbox.get(key) is queue:
                del self._outbox[key]
                self._overflowing.discard(key)

    async def route_fanout(
        self, stanza: Element, targets: Iterable[str], origin: Session | None = None
    ) -> None:
        """Route `stanza` to each of `targets`, a copy each with its own 'to'.

        Every copy goes through the whole chain of events, so modules' per-recipient
        checks (XEP-0191 blocking, ...) apply to each target; the local deliveries at
        the end (`deliver_event`) share one serialization of the stanza."""
        fanout = Fanout(stanza)
        for target in targets:
            copy = stanza.shallow_copy()
            copy.attrs["to"] = target
            await self.route(copy, origin, fanout=fanout)

    async def route(
        self, stanza: Element, origin: Session | None = None, *, fanout: Fanout | None = None
    ) -> None:
        """Route a stanza whose 'from' is already trustworthy.

        Never raises: a failing handler answers this stanza with internal-server-error
        (RFC 6120 §8.3.3.9), logged with the stanza; the connection and the other
        stanzas go on."""
        try:
            await self._route(stanza, origin, fanout)
        except Exception:
            # The bounce itself failed (a broken send path): the stanza is lost, say so.
            log.exception("could not route or bounce %s", describe(stanza))

    async def _route(self, stanza: Element, origin: Session | None, fanout: Fanout | None) -> None:
        sender_text = stanza.attrs.get("from")
        try:
            sender = JID.parse(sender_text) if sender_text else JID(None, self.server.default_host)
        except InvalidJID:
            log.warning("dropping stanza with an invalid from: %r", sender_text)
            return
        to_text = stanza.attrs.get("to")
        if to_text is None:
            to = None
        else:
            try:
                to = JID.parse(to_text)
            except InvalidJID:
                self.bounce(
                    StanzaEvent(self.server, stanza, sender, sender.bare, origin),
                    StanzaError("jid-malformed", f"invalid 'to' address {excerpt(to_text)}"),
                )
                return
        event = StanzaEvent(
            self.server, stanza, sender, to if to is not None else sender.bare, origin, fanout
        )
        try:
            await self._dispatch(event, addressed=to is not None)
        except StanzaError as exc:
            self.bounce(event, exc)
        except StorageUnavailable as exc:
            # A locked database or a full disk (logged where the write failed): the
            # sender may retry later (RFC 6120 §8.3.3.18, resource-constraint, type wait).
            log.debug("storage unavailable while handling %s: %s", stanza.tag, exc)
            self.bounce(event, StanzaError("resource-constraint", "storage busy, retry later"))
        except Exception:
            log.exception("error while handling %s", describe(stanza))
            self.bounce(event, StanzaError("internal-server-error"))

    async def _dispatch(self, event: StanzaEvent, addressed: bool) -> None:
        kind = event.stanza.tag
        to = event.to
        server = self.server
        if event.origin is not None:
            if await self.events.fire("stanza/from-client", event):
                return
            if kind == "presence" and not addressed:
                await self.events.fire("presence/broadcast", event)
                return
        if to.domain in server.hosts:
            if to.local is None:
                target = "host"
            elif to.resource is None:
                target = "bare"
            else:
                target = "full"
        elif to.domain in server.components:
            await server.components[to.domain].receive(event)
            return
        elif server.s2s is not None:
            # Federation (core/s2s.py): a remote domain.
            await server.s2s.route(event)
            return
        else:
            raise StanzaError("remote-server-not-found", f"{to.domain} is not reachable")
        if kind == "iq" and target != "full":
            await self._dispatch_iq(event, target, addressed)
            return
        if not await self.events.fire(f"{kind}/{target}", event):
            if kind == "iq":
                raise StanzaError("service-unavailable")

    async def _dispatch_iq(self, event: StanzaEvent, target: str, addressed: bool) -> None:
        iq_type = event.type
        if iq_type in ("get", "set"):
            payload = event.payload
            assert payload is not None  # checked when the stanza came in
            suffix = f"{iq_type}/{payload.ns}:{payload.tag}"
            if target == "bare":
                if await self._dispatch_account_iq(event, suffix):
                    return
            elif await self.events.fire("iq/host", event) or await self.events.fire(
                f"iq/{target}/{suffix}", event
            ):
                # iq/host: any IQ get/set to a served domain, before its namespace's event
                # (XEP-0355 delegation takes whole namespaces there).
                return
            # No 'to': addressed to the account, and failing that to the server.
            if not addressed and await self.events.fire(f"iq/host/{suffix}", event):
                return
            raise StanzaError("service-unavailable")
        await self.events.fire(f"iq/{target}/{iq_type}", event)

    async def _dispatch_account_iq(self, event: StanzaEvent, suffix: str) -> bool:
        """An IQ get/set the server answers on an account's behalf; False: not handled.

        RFC 6121 §8.5.1: no such account gives service-unavailable, whatever the namespace.
        So that a stranger (not the owner, no presence subscription from the account)
        cannot tell an existing account from a missing one, a stranger gets the very same
        answer from an existing account (Prosody answers account disco#info the same way),
        unless the IQ is public (`server.public_account_iqs`: reading vCards, PEP, disco
        of PEP nodes), whose handlers decide for themselves.
        """
        account = event.to.bare
        # The roster is read before the account is looked up, for everyone but the owner,
        # so both answers cost the same queries.
        visible = await self.may_see_account(account, event.sender)
        if not await self.account_exists(account):
            raise StanzaError("service-unavailable")
        if not visible and suffix not in self.server.public_account_iqs:
            raise StanzaError("service-unavailable")
        # Every IQ answered on a user's behalf, before its namespace's handler
        # (XEP-0191 blocking checks it here).
        if await self.events.fire("iq/bare", event):
            return True
        return await self.events.fire(f"iq/bare/{suffix}", event)

    async def may_see_account(self, account: JID, asker: JID) -> bool:
        """May `asker` see `account`'s presence and details: the owner, the server itself,
        or a contact with a 'from' or 'both' subscription (RFC 6121 §4.1, XEP-0012 §3)?
        The one rule for what strangers learn about an account."""
        if asker.bare == account.bare:
            return True
        if asker.local is None and asker.domain in self.server.hosts:
            return True
        return await self.server.rosters.presence_allowed(account.bare, asker)

    async def account_exists(self, bare: JID) -> bool:
        """Online users exist; otherwise ask storage (RFC 6121 §8.5.1)."""
        if self.server.sessions.is_online(bare):
            return True
        return await self.server.storage.accounts.exists(bare.local or "", bare.domain)

    # ---- delivery helpers used by the core and modules ---------------------------------
    def deliver(self, sessions: list[Any], stanza: Element) -> None:
        """Write the same stanza to several sessions, serialized once. One session that
        fails to take it (logged) does not keep it from the others."""
        if not sessions:
            return
        if len(sessions) == 1:
            sessions[0].send(stanza)
            return
        # Once per kind of connection (TCP and WebSocket serialize differently).
        serialized: dict[Any, bytes] = {}
        for session in sessions:
            try:
                kind = getattr(session, "wire", None)
                data = serialized.get(kind)
                if data is None:
                    data = serialized[kind] = session.serialize(stanza)
                session.send(stanza, data)
            except Exception:
                log_failure("deliver", session.send, (session, stanza))

    def deliver_event(self, event: StanzaEvent, sessions: list[Any]) -> None:
        """`deliver` the event's stanza; a copy of a fan-out (`route_fanout`) reuses the
        fan-out's serialization with its own 'to'."""
        fanout = event.fanout
        stanza = event.stanza
        if fanout is None or not sessions or not fanout.is_copy(stanza):
            self.deliver(sessions, stanza)
            return
        to = stanza.attrs.get("to")
        for session in sessions:
            try:
                session.send(stanza, fanout.data_for(session, to))
            except Exception:
                log_failure("deliver", session.send, (session, stanza))
