"""Client-to-server streams (RFC 6120 §4-§7): negotiation and the bound session.

`C2SStream` takes parsed input (stream header, top-level elements, stream end) from any
transport and answers through the transport's framing; it owns no socket and no timer.
One stream goes through: stream header -> STARTTLS -> restart -> SASL -> restart ->
resource binding -> a bound session that routes stanzas. Until the resource is bound the
protocol is decided by `stream/negotiation.py` (no I/O); `C2SStream` drives it: it feeds
the input in and carries out the actions (writes, TLS, credential lookups, the throttle's
delays, binding in the session manager, module events).

Input is handled in order, synchronously where possible; an element whose handling has
to wait (storage, TLS handshake) queues the input behind it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING

from dovecote.jid import JID, InvalidJID
from dovecote.storage.credentials import verify_password
from dovecote.stream import negotiation as neg
from dovecote.stream import sm
from dovecote.stream.base import StreamBase
from dovecote.stream.errors import StanzaError, StreamError, error_reply, iq_problem
from dovecote.xml import ns
from dovecote.xml.delay import with_delay
from dovecote.xml.element import Element
from dovecote.xml.parser import ElementReceived, ParserEvent, StreamClosed, StreamOpened

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.transport.base import StreamTransport

log = logging.getLogger(__name__)

STANZA_KINDS = neg.STANZA_KINDS
MAX_SASL_ATTEMPTS = neg.MAX_SASL_ATTEMPTS
#: States of a stream (`C2SStream.state`) decided by the negotiation machine.
_PRE_BIND_STATES = frozenset(("wait-header", "negotiating", "wait-restart", "authenticated"))


class C2SStream(StreamBase):
    """One client connection: negotiation state and, once bound, the session."""

    def __init__(self, server: Server, transport: StreamTransport) -> None:
        self.server = server
        self.transport = transport
        self.state = "wait-header"  # -> negotiating -> authenticated -> bound -> closed
        #: Header checks, STARTTLS, SASL and binding (`negotiation`, made on first use).
        self._negotiation: neg.ClientNegotiation | None = None
        self.jid: JID = JID(None, server.default_host)
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        #: Free-form per-session data for modules (directed presence, CSI state, ...).
        self.data: dict[str, object] = {}
        self._header_sent = False
        self._init_input()
        #: XEP-0198 state once the client enabled stream management.
        self.sm: sm.StreamManagement | None = None
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

    def __repr__(self) -> str:
        return f"<C2SStream {self.jid} {self.state} from {self.transport.peer_address}>"

    async def _handle(self, event: ParserEvent) -> None:
        if isinstance(event, ElementReceived):
            if self.state == "bound":
                element = event.element
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
            else:
                await self._negotiation_element(event.element)
        elif isinstance(event, StreamOpened):
            await self._stream_opened(event)
        elif isinstance(event, StreamClosed):
            await self._stream_closed()

    # ---- negotiation: the driver of `ClientNegotiation` -------------------------------
    @property
    def negotiation(self) -> neg.ClientNegotiation:
        """The negotiation machine, made on first use: the connection is up by then (the
        channel bindings of direct TLS exist only once it is)."""
        machine = self._negotiation
        if machine is None:
            server = self.server
            config = server.config
            transport = self.transport
            machine = self._negotiation = neg.ClientNegotiation(
                neg.NegotiationConfig(
                    hosts=server.hosts,
                    default_host=server.default_host,
                    tls_required=config.tls.required,
                    allow_plain=config.auth.allow_plain,
                    scram_iterations=config.auth.scram_iterations,
                    sm_enabled=self._sm_enabled,
                    pre_auth_features=server.pre_auth_features,
                    stream_features=server.stream_features,
                ),
                secure=transport.secure,
                can_starttls=transport.can_starttls,
                channel_bindings=transport.channel_bindings(),
                peer_address=transport.peer_address,
                address_throttle=server.auth_throttle,
                account_throttle=server.account_throttle,
            )
        return machine

    @property
    def domain(self) -> str | None:
        return self._negotiation.domain if self._negotiation is not None else None

    @property
    def local(self) -> str | None:
        """The authenticated account, set by SASL success."""
        return self._negotiation.local if self._negotiation is not None else None

    @property
    def stream_id(self) -> str:
        return self._negotiation.stream_id if self._negotiation is not None else ""

    @property
    def lang(self) -> str:
        return self._negotiation.lang if self._negotiation is not None else "en"

    async def _stream_opened(self, event: StreamOpened) -> None:
        """RFC 6120 §4.7 (checks in `ClientNegotiation.stream_opened`)."""
        await self._drive(self.negotiation.stream_opened(event.header))

    def _send_header(self) -> None:
        """Open our stream to carry a stream error found outside the machine."""
        for action in self.negotiation.error_header():
            assert isinstance(action, neg.SendHeader)
            self.transport.send_header(action.attrs)
            self._header_sent = True

    async def _stream_closed(self) -> None:
        """RFC 6120 §4.4: answer the closing tag with ours, then close."""
        if self.state in ("bound", "hibernating"):
            self.close()
            return
        await self._drive(self.negotiation.stream_closed())

    async def _negotiation_element(self, element: Element) -> None:
        await self._drive(self.negotiation.element(element))

    async def _drive(self, actions: list[neg.Action]) -> None:
        """Carry out the machine's actions in order; a request's answer is fed back and
        its actions carried out in turn, until the machine waits for input again."""
        pending = deque(actions)
        while pending and self.state != "closed":
            action = pending.popleft()
            more = await self._carry_out(action)
            if more is not None:
                assert not pending, "a request is the last action of its list"
                pending.extend(more)
            machine_state = self.negotiation.state
            if self.state in _PRE_BIND_STATES and machine_state in _PRE_BIND_STATES:
                self.state = machine_state

    async def _carry_out(self, action: neg.Action) -> list[neg.Action] | None:
        """One action; for a request, the machine's actions after its answer (None if the
        stream closed meanwhile)."""
        machine = self.negotiation
        transport = self.transport
        match action:
            case neg.Send(element):
                transport.send_element(element)
            case neg.SendHeader(attrs):
                transport.send_header(attrs)
                self._header_sent = True
            case neg.ResetStream():
                transport.reset_stream()
            case neg.StartTLS():
                # Clear-text input pipelined after <starttls/> is dropped (CVE-2011-0411).
                self._queue.clear()
                try:
                    await transport.starttls()
                except Exception as exc:
                    log.info("TLS handshake with %s failed: %s", transport.peer_address, exc)
                    return machine.tls_failed()
                return machine.tls_started(transport.channel_bindings())
            case neg.LookupCredentials(local, domain, hash_name):
                creds = await self.server.storage.accounts.get_credentials(local, domain, hash_name)
                return None if self.state == "closed" else machine.credentials(creds)
            case neg.VerifyPassword(password, credentials):
                # PBKDF2 is CPU work: off the event loop (DESIGN: asyncio all the way).
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, verify_password, password, credentials
                )
                return None if self.state == "closed" else machine.password_checked(ok)
            case neg.Delay(seconds):
                await asyncio.sleep(seconds)
                return None if self.state == "closed" else machine.delay_over()
            case neg.Authenticated(local):
                log.info("%s@%s authenticated from %s", local, self.domain, transport.peer_address)
            case neg.Bind(jid):
                return machine.bind_result(self._bind_session(jid))
            case neg.Bound(jid):
                self.state = "bound"
                transport.stream_bound()
                log.info("bound %s", jid)
                self.server.spawn(self.server.events.fire_all("session/bound", self))
            case neg.Resume(element):
                self._resume(element)
                return machine.resume_result(self.state == "bound")
            case neg.UnauthenticatedIQ(iq):
                # XEP-0077 in-band registration: `c2s/unauthenticated-iq/{ns}:{tag}`.
                payload = next(iq.elements)
                taken = await self.server.events.fire(
                    f"c2s/unauthenticated-iq/{payload.ns}:{payload.tag}", (self, iq)
                )
                return None if self.state == "closed" else machine.handler_result(bool(taken))
            case neg.OfferElement(element):
                taken = await self.server.events.fire(
                    f"c2s/element/{element.ns}:{element.tag}", (self, element)
                )
                return None if self.state == "closed" else machine.handler_result(bool(taken))
            case neg.StreamError(condition, text):
                self._stream_error(StreamError(condition, text))
            case neg.Close(graceful):
                if graceful:
                    self.close()
                else:
                    self.state = "closed"
                    transport.close()
        return None

    def _bind_session(self, jid: JID) -> StanzaError | None:
        """Bind `jid` in the session manager (RFC 6120 §7): None once bound, else the
        error for the client."""
        max_resources = self.server.config.limits.max_resources
        sessions = self.server.sessions
        if (
            max_resources
            and sessions.get(jid) is None
            and len(sessions.resources(jid.bare)) >= max_resources
        ):
            # RFC 6120 §7.6.2.1: the account has as many resources as it may.
            return StanzaError("resource-constraint", "too many resources for this account")
        replaced = sessions.bind(self, jid)
        if replaced is not None:
            # Policy: the new session takes over the resource (RFC 6120 §7.7.2.2).
            replaced.close("conflict", "replaced by a new connection with the same resource")
        return None

    # ---- stanzas (RFC 6120 §8) --------------------------------------------------------
    async def _stanza(self, stanza: Element) -> None:
        kind = stanza.tag
        if stanza.ns != ns.CLIENT or kind not in STANZA_KINDS:
            if await self.server.events.fire(f"c2s/element/{stanza.ns}:{kind}", (self, stanza)):
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
        return self.transport.serialize(stanza)

    def send(self, stanza: Element, data: bytes | None = None) -> None:
        """Deliver a stanza to this client (data: the same stanza already serialized).

        `server.send_filters` may hold a stanza back (XEP-0352 CSI): a filter returning
        True has taken it and will call `send_now` later."""
        if self.state == "closed":
            return
        for send_filter in self.server.send_filters:
            if send_filter(self, stanza):
                return
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
        if data is None:
            self.transport.send_element(stanza)
        else:
            self.transport.write(data)
        if sm_state is not None:
            if sm_state.ack_due:
                self._request_ack()
            elif self._ack_timer is None:
                delay = self.server.config.stream_management.ack_delay
                self._ack_timer = asyncio.get_running_loop().call_later(delay, self._request_ack)

    @property
    def writing(self) -> bool:
        """What is sent now reaches the connection (not closed, not hibernating)."""
        return self.state == "bound" and not self.transport.closing

    async def wait_writable(self) -> bool:
        """Flow control for backlogs (XEP-0160 offline messages): wait until the
        connection has drained what was written and, with XEP-0198, until fewer than half
        of the queue's stanzas wait for an acknowledgement. False once the session can no
        longer be written to (closed, hibernating)."""
        while self.writing:
            sm_state = self.sm
            if sm_state is not None and len(sm_state.unacked) >= max(1, sm_state.max_queue // 2):
                if sm_state.requested_at != sm_state.sent:
                    self._request_ack()  # woken by the <a/>
            elif self.transport.write_paused:
                self.transport.notify_drained(self._wake_writers)
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

    def connection_lost(self) -> None:
        """The transport is gone (closed by either side)."""
        if self.state == "closed":
            return
        self._queue.clear()
        self._wake_writers()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.state == "bound" and not self._ending and self.sm is not None and self.sm.resumable:
            self._hibernate()
            return
        self._end_session()

    def _end_session(self) -> None:
        was_bound = self.state in ("bound", "hibernating")
        self.state = "closed"
        self._wake_writers()
        if self._hibernation_timer is not None:
            self._hibernation_timer.cancel()
            self._hibernation_timer = None
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

    # ---- stream management (XEP-0198) -------------------------------------------------
    @property
    def _sm_enabled(self) -> bool:
        return self.server.config.stream_management.enabled

    def _sm_element(self, element: Element) -> None:
        tag = element.tag
        if tag == "r":
            if self.sm is None:
                self.transport.send_element(_sm_failed("unexpected-request"))
                return
            self.transport.send_element(Element("a", sm.NS, {"h": str(self.sm.handled)}))
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
            if self.sm is not None or not self._sm_enabled:
                self.transport.send_element(_sm_failed("unexpected-request"))
                return
            resumable = element.get("resume") in ("true", "1")
            self.sm = sm.StreamManagement(
                secrets.token_urlsafe(18),
                resumable,
                self.server.config.stream_management.max_queue,
            )
            attrs = {"id": self.sm.id}
            if resumable:
                self.server.sm_sessions[self.sm.id] = self
                attrs["resume"] = "true"
                attrs["max"] = str(int(self.server.config.stream_management.resume_timeout))
            self.transport.send_element(Element("enabled", sm.NS, attrs))
        elif tag == "resume":
            self.transport.send_element(_sm_failed("unexpected-request"))
        else:
            raise StreamError("unsupported-stanza-type", f"unknown element {tag}")

    def _ack_overflow(self, exc: sm.AckError) -> None:
        # XEP-0198 §4: the client acknowledged stanzas that were never sent.
        error = StreamError("undefined-condition", str(exc))
        element = error.to_element()
        element.add("handled-count-too-high", sm.NS, {"h": str(exc.h), "send-count": str(exc.sent)})
        if self.state != "closed":
            self.transport.send_element(element)
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
        self.transport.send_element(Element("r", sm.NS))

    def _hibernate(self) -> None:
        """The connection died: keep the session for resumption (XEP-0198 §5)."""
        self.state = "hibernating"
        timeout = self.server.config.stream_management.resume_timeout
        self._hibernation_timer = asyncio.get_running_loop().call_later(timeout, self._end_session)
        log.info("%s hibernating for %ss", self.jid, timeout)

    def _resume(self, element: Element) -> None:
        """XEP-0198 §5: take over a hibernating (or not yet dead) session."""
        previd = element.get("previd") or ""
        old = self.server.sm_sessions.get(previd)
        if old is None or old.jid.bare != JID(self.local, self.domain):
            failed = _sm_failed("item-not-found")
            expired = self.server.sm_expired.get(previd)
            if expired is not None and old is None:
                failed.attrs["h"] = str(expired)
            self.transport.send_element(failed)
            return
        assert old.sm is not None
        try:
            old.sm.acknowledge(int(element.get("h") or ""))
        except (ValueError, sm.AckError):
            self.transport.send_element(_sm_failed("unexpected-request"))
            return
        if old.state == "bound":
            # The client noticed the dead connection before we did: drop the old one.
            old._ending = True
            old.state = "hibernating"
            old.transport.close()
        if old._hibernation_timer is not None:
            old._hibernation_timer.cancel()
            old._hibernation_timer = None
        # Move the session over to this connection.
        self.jid = old.jid
        self.priority = old.priority
        self.available = old.available
        self.presence = old.presence
        self.data = old.data
        self.sm = old.sm
        old.sm = None
        old.state = "closed"
        old._wake_writers()
        self._acknowledged()
        self.state = "bound"
        self.server.sessions.bind(self, self.jid)
        self.server.sm_sessions[self.sm.id] = self
        self.transport.stream_bound()
        self.transport.send_element(
            Element("resumed", sm.NS, {"previd": previd, "h": str(self.sm.handled)})
        )
        # Everything not acknowledged is sent again, in order (XEP-0198 §5).
        for stanza in list(self.sm.unacked):
            self.transport.send_element(stanza)
        if self.sm.unacked:
            self._request_ack()
        log.info("resumed %s", self.jid)
        self.server.spawn(self.server.events.fire_all("session/resumed", self))

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
            if any(c.ns in _NOT_REROUTED for c in stanza.elements):
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


#: Payloads of messages that are not re-routed when a session ends with them unacked
#: (XEP-0280 carbons copies, XEP-0313 archive results).
_NOT_REROUTED = frozenset(("urn:xmpp:carbons:2", "urn:xmpp:mam:2"))


def _sm_failed(condition: str) -> Element:
    failed = Element("failed", sm.NS)
    failed.add(condition, ns.STANZA_ERRORS)
    return failed
