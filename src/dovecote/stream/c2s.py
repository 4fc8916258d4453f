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
from collections import deque
from typing import TYPE_CHECKING

from dovecote.core.session import ClientSession, sm_failed
from dovecote.jid import JID
from dovecote.storage.base import StorageError
from dovecote.storage.credentials import verify_password
from dovecote.stream import negotiation as neg
from dovecote.stream import sm
from dovecote.stream.base import StreamBase
from dovecote.stream.errors import StanzaError, StreamError
from dovecote.xml.element import Element
from dovecote.xml.parser import ElementReceived, ParserEvent, StreamClosed, StreamOpened

if TYPE_CHECKING:
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
        self._header_sent = False
        self._init_input()
        #: The session this connection carries once bound (or resumed).
        self.session: ClientSession | None = None

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
            session = self.session
            if session is not None and self.state == "bound":
                await session.receive(event.element)
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
                    framing=transport.framing,
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
                accounts = self.server.storage.accounts
                try:
                    creds = await accounts.get_credentials(local, domain, hash_name)
                except StorageError as exc:
                    log.error("cannot read the credentials of %s@%s: %s", local, domain, exc)
                    return None if self.state == "closed" else machine.credentials_unavailable()
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
                session = self.session
                assert session is not None and session.jid == jid
                self.attach_session(session)
                log.info("bound %s", jid)
                self.server.spawn(self.server.events.fire_all("session/bound", session))
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
        session = ClientSession(self.server, self, jid)
        replaced = sessions.bind(session, jid)
        if replaced is not None:
            # Policy: the new session takes over the resource (RFC 6120 §7.7.2.2).
            replaced.close("conflict", "replaced by a new connection with the same resource")
        self.session = session  # carried from the `Bound` action on
        return None

    def attach_session(self, session: ClientSession) -> None:
        """From now on this connection carries `session` (bound, or resumed)."""
        self.session = session
        self.jid = session.jid
        self.state = "bound"
        self.transport.stream_bound()

    def detach_session(self) -> None:
        """The session moved to another connection (XEP-0198 resumption)."""
        self.session = None
        self._ending = True

    # ---- the connection's end -----------------------------------------------------------
    def connection_lost(self) -> None:
        """The transport is gone (closed by either side)."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._queue.clear()
        session, self.session = self.session, None
        if session is not None:
            session.connection_lost(self, self._ending)

    # ---- stream management (XEP-0198) -------------------------------------------------
    @property
    def _sm_enabled(self) -> bool:
        return self.server.config.stream_management.enabled

    def _resume(self, element: Element) -> None:
        """XEP-0198 §5: take over a hibernating (or not yet dead) session."""
        previd = element.get("previd") or ""
        old = self.server.sm_sessions.get(previd)
        if old is None or old.jid.bare != JID(self.local, self.domain):
            failed = sm_failed("item-not-found")
            expired = self.server.sm_expired.get(previd)
            if expired is not None and old is None:
                failed.attrs["h"] = str(expired)
            self.transport.send_element(failed)
            return
        assert old.sm is not None
        try:
            old.sm.acknowledge(int(element.get("h") or ""))
        except (ValueError, sm.AckError):
            self.transport.send_element(sm_failed("unexpected-request"))
            return
        old.resume(self, previd)
