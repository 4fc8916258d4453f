"""A client session: one bound resource (RFC 6120 §7) and everything that belongs to it:
its JID, presence and priority (RFC 6121 §4), its XEP-0198 stream management state and
queue, and the per-module state in declared slots (`core/slots.py`).

A session is not its connection. A transport (a TCP stream today; a WebSocket, the many
HTTP requests of a BOSH session, another cluster node later) is *attached* to it and can
go away while the session stays: XEP-0198 hibernation keeps it for
`stream_management.resume_timeout` seconds, and resumption attaches the new connection to
the same object, so nothing that lives on the session is ever copied or lost.

The attached stream (`stream/c2s.py` C2SStream) does the negotiation, then hands every
top-level element in order to `receive` and writes what `send` gives it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING

from dovecote.core.events import log_failure
from dovecote.core.slots import SlotStore
from dovecote.jid import JID, InvalidJID
from dovecote.stream import sm
from dovecote.stream.errors import StanzaError, StreamError, error_reply, iq_problem
from dovecote.xml import ns
from dovecote.xml.delay import with_delay
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.stream.c2s import C2SStream

log = logging.getLogger(__name__)

STANZA_KINDS = frozenset(("message", "presence", "iq"))
#: Payloads of messages that belong to one session only: never re-routed nor stored for
#: later (XEP-0280 carbons copies, XEP-0313 archive results).
SESSION_ONLY = frozenset(("urn:xmpp:carbons:2", "urn:xmpp:mam:2"))


class ClientSession:
    """One bound resource of an account, whichever connection carries it now."""

    def __init__(self, server: Server, stream: C2SStream, jid: JID) -> None:
        self.server = server
        #: The connection carrying the session now; None while it hibernates.
        self.stream: C2SStream | None = stream
        self.jid = jid
        self.lang = stream.lang
        self.state = "bound"  # -> hibernating -> bound (resumed) ... -> closed
        #: RFC 6121 §4.7.2.3: priority of the last available presence (0 until then).
        self.priority = 0
        #: True once initial presence was sent and until unavailable (RFC 6121 §4.2).
        self.available = False
        #: The last available presence broadcast by the session (for probes).
        self.presence: Element | None = None
        #: XEP-0198 state once the client enabled stream management.
        self.sm: sm.StreamManagement | None = None
        #: Per-module state, each module in its own declared slot.
        self.slots: SlotStore = SlotStore()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._hibernation_timer: asyncio.TimerHandle | None = None
        #: Coroutines waiting for the client to read or acknowledge (`wait_writable`).
        self._writable_waiters: list[asyncio.Future[None]] = []

    # ---- identity ---------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.state == "bound"

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def secure(self) -> bool:
        """The connection carrying the session now is encrypted (TLS)."""
        return self.stream is not None and self.stream.transport.secure

    @property
    def wire(self) -> type | None:
        """The kind of connection carrying the session (how it serializes), if any."""
        return type(self.stream.transport) if self.stream is not None else None

    @property
    def peer_address(self) -> str:
        return self.stream.transport.peer_address if self.stream is not None else "-"

    def __repr__(self) -> str:
        return f"<ClientSession {self.jid} {self.state} from {self.peer_address}>"

    # ---- input from the attached stream, in order -------------------------------------
    async def receive(self, element: Element) -> None:
        """A top-level element from the client once bound (RFC 6120 §8, XEP-0198)."""
        if element.ns == sm.NS:
            if element.tag == "r" and self.sm is not None:
                # XEP-0198 §4: 'handled' means stored, group commits included.
                await self.server.wait_durable()
            self._sm_element(element)
            return
        await self._stanza(element)
        if self.sm is not None and element.tag in STANZA_KINDS:
            # XEP-0198 §4: counted once handled (stored, routed, answered).
            self.sm.stanza_handled()

    async def _stanza(self, stanza: Element) -> None:
        kind = stanza.tag
        if stanza.ns != ns.CLIENT or kind not in STANZA_KINDS:
            name = f"c2s/element/{stanza.ns}:{kind}"
            try:
                taken = await self.server.events.fire(name, (self, stanza))
            except StreamError:
                raise
            except Exception:
                # A failing module (CSI, ...) costs this element, not the connection.
                log_failure(name, self.server.events.fire, (self, stanza))
                return
            if taken:
                return
            raise StreamError("unsupported-stanza-type", f"unsupported element {kind}")
        if kind == "iq" and stanza.attrs.get("type") == "set":
            payload = next(stanza.elements, None)
            if payload is not None and payload.ns == ns.SESSION:
                self.send(
                    Element("iq", ns.CLIENT, {"type": "result", "id": stanza.get("id") or ""})
                )
                return
        # RFC 6120 §8.1.2.1: the server stamps the full JID; a forged 'from' is replaced.
        stanza.attrs["from"] = str(self.jid)
        if kind == "iq":
            problem = iq_problem(stanza)
            if problem is not None:
                if stanza.attrs.get("type") not in ("result", "error"):
                    self.send(error_reply(stanza, StanzaError("bad-request", problem)))
                return
        await self.server.router.route(stanza, self)

    # ---- output -------------------------------------------------------------------------
    def serialize(self, stanza: Element) -> bytes:
        if self.stream is not None:
            return self.stream.transport.serialize(stanza)
        from dovecote.transport.tcp import PREFIXES
        from dovecote.xml.element import serialize

        return serialize(stanza, ns.CLIENT, PREFIXES).encode()

    def _write_element(self, element: Element) -> None:
        """Straight to the connection (stream management and other non-stanza elements)."""
        if self.stream is not None:
            self.stream.transport.send_element(element)

    def send(self, stanza: Element, data: bytes | None = None) -> None:
        """Deliver a stanza to this client (data: the same stanza already serialized).

        `server.send_filters` may hold a stanza back (XEP-0352 CSI): a filter returning
        True has taken it and will call `send_now` later."""
        if self.state == "closed":
            return
        for send_filter in self.server.send_filters:
            try:
                if send_filter(self, stanza):
                    return
            except Exception:
                # A broken filter must not cost the stanza nor the connection: sent as is.
                log_failure("send filter", send_filter, (self, stanza))
        self.send_now(stanza, data)

    def send_now(self, stanza: Element, data: bytes | None = None) -> None:
        if self.state == "closed":
            return
        sm_state = self.sm
        if sm_state is not None:
            sm_state.stanza_sent(stanza)
            if sm_state.overflowing:
                self._queue_overflow()
                return
            if self.state == "hibernating":
                # Kept until resumed, or re-routed when the session ends; stored before
                # the sender hears it was handled, so that a crash loses nothing.
                sm_state.stored_rows[id(stanza)] = sm.STORING
                self.server.spawn_durable(
                    self.server.events.fire_all("sm/hibernated-stanza", (self, sm_state, stanza))
                )
                return
        stream = self.stream
        if stream is None:
            return
        if data is None:
            stream.transport.send_element(stanza)
        else:
            stream.transport.write(data)
        if sm_state is not None:
            if sm_state.ack_due:
                self._request_ack()
            elif self._ack_timer is None:
                delay = self.server.config.stream_management.ack_delay
                self._ack_timer = asyncio.get_running_loop().call_later(delay, self._request_ack)

    @property
    def writing(self) -> bool:
        """What is sent now reaches the connection (not closed, not hibernating)."""
        return (
            self.state == "bound" and self.stream is not None and not self.stream.transport.closing
        )

    async def wait_writable(self) -> bool:
        """Flow control for backlogs (XEP-0160 offline messages): wait until the
        connection has drained what was written and, with XEP-0198, until fewer than half
        of the queue's stanzas wait for an acknowledgement. False once the session can no
        longer be written to (closed, hibernating)."""
        while self.writing:
            assert self.stream is not None
            transport = self.stream.transport
            sm_state = self.sm
            if sm_state is not None and len(sm_state.unacked) >= max(1, sm_state.max_queue // 2):
                if sm_state.requested_at != sm_state.sent:
                    self._request_ack()  # woken by the <a/>
            elif transport.write_paused:
                transport.notify_drained(self._wake_writers)
            else:
                return True
            waiter = asyncio.get_running_loop().create_future()
            self._writable_waiters.append(waiter)
            await waiter
        return False

    def _wake_writers(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- the end, and connections coming and going ------------------------------------
    def close(self, condition: str | None = None, text: str = "") -> None:
        """End the session: its connection gets the stream error `condition` (when given)
        and is closed; a hibernating session ends at once."""
        if self.state == "closed":
            return
        stream = self.stream
        if stream is not None:
            stream.close(condition, text)  # comes back through `connection_lost`
        if self.state != "closed":
            self._end()

    def connection_lost(self, stream: C2SStream, ending: bool) -> None:
        """The connection carrying the session is gone; `ending`: closed on purpose
        (a clean `</stream:stream>`, a stream error) rather than dropped."""
        if stream is not self.stream or self.state == "closed":
            return
        self.stream = None
        self._wake_writers()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.state == "bound" and not ending and self.sm is not None and self.sm.resumable:
            self._hibernate()
            return
        self._end()

    def _end(self) -> None:
        was_bound = self.state in ("bound", "hibernating")
        self.state = "closed"
        self._wake_writers()
        if self._hibernation_timer is not None:
            self._hibernation_timer.cancel()
            self._hibernation_timer = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.sm is not None:
            registry = self.server.sm_sessions
            if registry.get(self.sm.id) is self:
                del registry[self.sm.id]
                self.server.sm_expired[self.sm.id] = self.sm.handled
                if len(self.server.sm_expired) > 10_000:
                    self.server.sm_expired.pop(next(iter(self.server.sm_expired)))
        if was_bound:
            self.server.sessions.unbind(self)
            if self.sm is not None and self.sm.unacked:
                # At once, before the messages that come next reach offline storage.
                self._reroute_unacked()
            self.server.spawn(self.server.events.fire_all("session/ended", self))

    def _hibernate(self) -> None:
        """The connection died: keep the session for resumption (XEP-0198 §5)."""
        self.state = "hibernating"
        timeout = self.server.config.stream_management.resume_timeout
        self._hibernation_timer = asyncio.get_running_loop().call_later(timeout, self._end)
        log.info("%s hibernating for %ss", self.jid, timeout)

    def resume(self, stream: C2SStream, previd: str) -> None:
        """XEP-0198 §5: attach `stream` (authenticated as this account, h already
        acknowledged) in place of the connection that died, or has not died yet."""
        assert self.sm is not None
        old = self.stream
        if old is not None:
            # The client noticed the dead connection before we did: drop the old one.
            self.stream = None
            old.detach_session()
            old.close()
        if self._hibernation_timer is not None:
            self._hibernation_timer.cancel()
            self._hibernation_timer = None
        self.stream = stream
        self.state = "bound"
        self.lang = stream.lang
        stream.attach_session(self)
        stream.transport.send_element(
            Element("resumed", sm.NS, {"previd": previd, "h": str(self.sm.handled)})
        )
        # Everything not acknowledged is sent again, in order (XEP-0198 §5).
        for stanza in list(self.sm.unacked):
            stream.transport.send_element(stanza)
        self._acknowledged()
        if self.sm.unacked:
            self._request_ack()
        log.info("resumed %s", self.jid)
        self.server.spawn(self.server.events.fire_all("session/resumed", self))

    # ---- stream management (XEP-0198) -------------------------------------------------
    def _sm_element(self, element: Element) -> None:
        tag = element.tag
        if tag == "r":
            if self.sm is None:
                self._write_element(sm_failed("unexpected-request"))
                return
            self._write_element(Element("a", sm.NS, {"h": str(self.sm.handled)}))
        elif tag == "a":
            if self.sm is None:
                return
            try:
                self.sm.acknowledge(int(element.get("h") or ""))
            except ValueError:
                raise StreamError("bad-format", "the h of <a/> must be a number") from None
            except sm.AckError as exc:
                self._ack_overflow(exc)
            self._acknowledged()
        elif tag == "enable":
            config = self.server.config.stream_management
            if self.sm is not None or not config.enabled:
                self._write_element(sm_failed("unexpected-request"))
                return
            resumable = element.get("resume") in ("true", "1")
            self.sm = sm.StreamManagement(secrets.token_urlsafe(18), resumable, config.max_queue)
            attrs = {"id": self.sm.id}
            if resumable:
                self.server.sm_sessions[self.sm.id] = self
                attrs["resume"] = "true"
                attrs["max"] = str(int(config.resume_timeout))
            self._write_element(Element("enabled", sm.NS, attrs))
        elif tag == "resume":
            self._write_element(sm_failed("unexpected-request"))
        else:
            raise StreamError("unsupported-stanza-type", f"unknown element {tag}")

    def _ack_overflow(self, exc: sm.AckError) -> None:
        # XEP-0198 §4: the client acknowledged stanzas that were never sent.
        error = StreamError("undefined-condition", str(exc))
        element = error.to_element()
        element.add("handled-count-too-high", sm.NS, {"h": str(exc.h), "send-count": str(exc.sent)})
        if self.state != "closed":
            self._write_element(element)
            self.close()

    def _acknowledged(self) -> None:
        """Stanzas were acknowledged: stored copies go, flow-controlled senders go on."""
        if self.sm is None:
            return
        rows = self.sm.take_acked_rows()
        if rows:
            self.server.spawn(self.server.events.fire_all("sm/acknowledged-rows", (self, rows)))
        self._wake_writers()

    def _request_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()  # when asked early: no stray timer keeps us alive
            self._ack_timer = None
        if self.sm is None or self.state != "bound" or not self.sm.unacked:
            return
        self.sm.requested_at = self.sm.sent
        self._write_element(Element("r", sm.NS))

    def _queue_overflow(self) -> None:
        """XEP-0198 leaves the queue's size to the server: past the limit the session
        ends (as Prosody does, with resource-constraint) and what it holds is re-routed."""
        assert self.sm is not None
        log.warning(
            "%s: more than %d unacknowledged stanzas, ending the session",
            self.jid,
            self.sm.max_queue,
        )
        self.sm.resumable = False
        self.close("resource-constraint", "too many unacknowledged stanzas")

    def _reroute_unacked(self) -> None:
        """XEP-0198 §5: stanzas the client never acknowledged are treated like stanzas to
        an unavailable resource: messages go to the other resources or offline storage
        (with a delay stamp), IQ requests get an error, presence is dropped. Every message
        is delivered, stored or bounced to its sender; one failure never stops the rest.
        Runs when the session ends, so that the messages keep their order in storage."""
        from dovecote.core.router import StanzaEvent

        assert self.sm is not None
        server = self.server
        sm_state = self.sm
        unacked, sm_state.unacked = list(sm_state.unacked), deque()
        stored_rows, sm_state.stored_rows = sm_state.stored_rows, {}
        delivered_rows: list[int] = []
        kept_rows: list[int] = []
        bare = self.jid.bare
        for stanza in unacked:
            row = stored_rows.pop(id(stanza), None)
            kind = stanza.tag
            stanza_type = stanza.attrs.get("type", "normal")
            if kind == "iq" and stanza_type in ("get", "set"):
                reply = error_reply(stanza, StanzaError("service-unavailable"))
                reply.attrs["from"] = str(self.jid)
                server.router.route_soon(reply)
                continue
            if kind != "message" or stanza_type not in ("normal", "chat"):
                continue
            if any(c.ns in SESSION_ONLY for c in stanza.elements):
                continue  # copies and archive results belong to this session only
            copy = with_delay(stanza, self.jid.domain)
            targets = server.sessions.highest_priority(bare)
            if targets:
                server.router.deliver(targets, copy)
                if row == sm.STORING:
                    sm_state.acked_while_storing.add(id(stanza))  # removed once stored
                elif row is not None:
                    delivered_rows.append(row)
                continue
            if row is not None:
                if row != sm.STORING:
                    kept_rows.append(row)  # in offline storage already: the next login
                continue
            sender = copy.attrs.get("from") or self.jid.domain
            try:
                sender_jid = JID.parse(sender)
            except InvalidJID:
                log.warning("unacknowledged message with an invalid from %r dropped", sender)
                continue
            # One task each, started in order: storage keeps the order of the messages.
            server.spawn(self._store_rerouted(StanzaEvent(server, copy, sender_jid, bare, None)))
        if delivered_rows:
            server.spawn(server.events.fire_all("sm/acknowledged-rows", (self, delivered_rows)))
        if kept_rows:
            server.spawn(server.events.fire_all("sm/released-rows", (self, kept_rows)))

    async def _store_rerouted(self, event: StanzaEvent) -> None:
        server = self.server
        try:
            stored = await server.events.fire("message/offline", event)
        except StanzaError as exc:
            server.router.bounce(event, exc)
            return
        except Exception:
            log.exception("storing an unacknowledged message of %s failed", self.jid)
            server.router.bounce(event, StanzaError("internal-server-error"))
            return
        if not stored:
            server.router.bounce(event, StanzaError("service-unavailable"))


def sm_failed(condition: str) -> Element:
    """XEP-0198 `<failed/>` with a stanza error condition."""
    failed = Element("failed", sm.NS)
    failed.add(condition, ns.STANZA_ERRORS)
    return failed
