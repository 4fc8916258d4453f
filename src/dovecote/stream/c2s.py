"""Client-to-server streams (RFC 6120 §4-§7): negotiation and the bound session.

`C2SStream` takes parsed input (stream header, top-level elements, stream end) from any
transport and answers through the transport's framing; it owns no socket and no timer.
One stream goes through: stream header -> STARTTLS -> restart -> SASL -> restart ->
resource binding -> a bound session that routes stanzas.

Input is handled in order, synchronously where possible; an element whose handling has
to wait (storage, TLS handshake) queues the input behind it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING

from dovecote.jid import JID, InvalidJID, prepare_domain, prepare_resource
from dovecote.stream import sasl, sm
from dovecote.stream.base import StreamBase
from dovecote.stream.errors import StanzaError, StreamError, error_reply, excerpt, iq_problem
from dovecote.xml import ns
from dovecote.xml.delay import with_delay
from dovecote.xml.element import XML_LANG, Element
from dovecote.xml.parser import ElementReceived, ParserEvent, StreamClosed, StreamOpened

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.transport.base import StreamTransport

log = logging.getLogger(__name__)

STANZA_KINDS = frozenset(("message", "presence", "iq"))
MAX_SASL_ATTEMPTS = 5


class C2SStream(StreamBase):
    """One client connection: negotiation state and, once bound, the session."""

    def __init__(self, server: Server, transport: StreamTransport) -> None:
        self.server = server
        self.transport = transport
        self.state = "wait-header"  # -> negotiating -> authenticated -> bound -> closed
        self.stream_id = ""
        self.domain: str | None = None
        self.lang = "en"
        self.local: str | None = None  # set by SASL success
        self.jid: JID = JID(None, server.default_host)
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        #: Free-form per-session data for modules (directed presence, CSI state, ...).
        self.data: dict[str, object] = {}
        self._header_sent = False
        self._sasl: sasl.SaslNegotiation | None = None
        self._sasl_failures = 0
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
            self._stream_opened(event)
        elif isinstance(event, StreamClosed):
            self._stream_closed()

    # ---- stream header (RFC 6120 §4.7) ------------------------------------------------
    def _stream_opened(self, event: StreamOpened) -> None:
        header = event.header
        if self.state not in ("wait-header", "wait-restart"):
            raise StreamError("bad-format", "unexpected stream header")
        lang = header.attrs.get(XML_LANG)
        if lang:
            self.lang = lang
        if header.ns != ns.STREAMS or header.tag != "stream":
            raise StreamError(
                "invalid-namespace",
                "the stream element must be {http://etherx.jabber.org/streams}stream",
            )
        if header.prefix != "stream":
            raise StreamError(
                "bad-namespace-prefix", "the stream namespace prefix must be 'stream'"
            )
        if header.default_ns != ns.CLIENT:
            raise StreamError("invalid-namespace", "the content namespace must be jabber:client")
        to = header.attrs.get("to")
        if not to:
            raise StreamError(
                "improper-addressing", "a 'to' attribute is required on the stream header"
            )
        try:
            domain = prepare_domain(to)
        except InvalidJID:
            raise StreamError("host-unknown", f"{excerpt(to)} is not a valid domain") from None
        if domain not in self.server.hosts:
            raise StreamError("host-unknown", f"this server does not serve {excerpt(domain)}")
        if self.domain is not None and domain != self.domain:
            raise StreamError("host-unknown", "the domain may not change on a stream restart")
        version = header.attrs.get("version", "0.9")
        try:
            major = int(version.split(".", 1)[0])
        except ValueError:
            major = 0
        self.domain = domain
        self.stream_id = secrets.token_urlsafe(12)
        self._send_header(header.attrs.get("from"))
        if major < 1:
            raise StreamError("unsupported-version", "XMPP 1.0 is required")
        if self.state == "wait-header":
            self.state = "negotiating"
        elif self.local is not None:
            self.state = "authenticated"
        else:
            self.state = "negotiating"
        self.transport.send_element(self._features())

    def _send_header(self, client_from: str | None = None) -> None:
        if not self.stream_id:
            self.stream_id = secrets.token_urlsafe(12)
        attrs = {
            "from": self.domain or self.server.default_host,
            "id": self.stream_id,
            "version": "1.0",
            XML_LANG: "en",
        }
        if client_from and _is_jid(client_from):
            # RFC 6120 §4.7.2: 'to' echoes the client's 'from', a JID (RFC 6120 §4.7.1);
            # anything else (say 200 KiB of junk) is not sent back.
            attrs["to"] = client_from
        self.transport.send_header(attrs)
        self._header_sent = True

    def _features(self) -> Element:
        features = Element("features", ns.STREAMS)
        config = self.server.config
        if self.state == "negotiating":
            tls_required = config.tls.required and not self.transport.secure
            if self.transport.can_starttls and not self.transport.secure:
                starttls = features.add("starttls", ns.TLS)
                if config.tls.required:
                    starttls.add("required")
            if not tls_required:
                bindings = self.transport.channel_bindings()
                mechanisms = features.add("mechanisms", ns.SASL)
                for name in sasl.offered_mechanisms(
                    self.transport.secure, bindings, config.auth.allow_plain
                ):
                    mechanisms.add("mechanism", text=name)
                for feature in self.server.pre_auth_features:
                    features.append(feature.copy())
                if bindings:
                    # XEP-0440 §3: tell the client which channel-binding types we support.
                    cb = features.add("sasl-channel-binding", ns.SASL_CB)
                    for cb_type in bindings:
                        cb.add("channel-binding", attrs={"type": cb_type})
        elif self.state == "authenticated":
            features.add("bind", ns.BIND)
            # RFC 6121 §... legacy session establishment: offered, but optional.
            features.add("session", ns.SESSION).add("optional")
            if self._sm_enabled:
                features.add("sm", sm.NS)
            for feature in self.server.stream_features:
                features.append(feature.copy())
        return features

    def _stream_closed(self) -> None:
        """RFC 6120 §4.4: answer the closing tag with ours, then close."""
        self.close()

    # ---- negotiation elements ---------------------------------------------------------
    async def _negotiation_element(self, element: Element) -> None:
        if self.state == "negotiating":
            if element.ns == ns.TLS and element.tag == "starttls":
                await self._starttls()
                return
            if element.ns == ns.SASL:
                await self._sasl_element(element)
                return
            if element.tag == "iq" and element.ns == ns.CLIENT:
                # Before authentication only modules that say so take IQs (XEP-0077
                # in-band registration): event `c2s/unauthenticated-iq/{ns}:{tag}`.
                payload = next(element.elements, None)
                if payload is not None and await self.server.events.fire(
                    f"c2s/unauthenticated-iq/{payload.ns}:{payload.tag}", (self, element)
                ):
                    return
            # RFC 6120 §4.9.3.12: nothing but negotiation before authentication.
            raise StreamError("not-authorized", "authenticate first")
        if self.state == "authenticated":
            if element.tag == "iq" and element.ns == ns.CLIENT:
                await self._pre_bind_iq(element)
                return
            if element.ns == sm.NS and self._sm_enabled:
                if element.tag == "resume":
                    self._resume(element)
                else:
                    # XEP-0198 §3: enable only after binding a resource.
                    self.transport.send_element(_sm_failed("unexpected-request"))
                return
            if element.tag in STANZA_KINDS and element.ns == ns.CLIENT:
                raise StreamError("not-authorized", "bind a resource first")
            if await self.server.events.fire(
                f"c2s/element/{element.ns}:{element.tag}", (self, element)
            ):
                return
            raise StreamError("unsupported-stanza-type", f"unexpected {element.tag}")
        raise StreamError("bad-format", "unexpected element")

    async def _starttls(self) -> None:
        if not self.transport.can_starttls or self.transport.secure:
            self.transport.send_element(Element("failure", ns.TLS))
            self.close()
            return
        self.transport.send_element(Element("proceed", ns.TLS))
        # Anything the client pipelined after <starttls/> in clear text is discarded
        # (it could be an injection, CVE-2011-0411 style).
        self._queue.clear()
        self.transport.reset_stream()
        self.state = "wait-restart"
        try:
            await self.transport.starttls()
        except Exception as exc:
            log.info("TLS handshake with %s failed: %s", self.transport.peer_address, exc)
            self.state = "closed"
            self.transport.close()

    async def _sasl_element(self, element: Element) -> None:
        """RFC 6120 §6.4."""
        if self.server.config.tls.required and not self.transport.secure:
            # RFC 6120 §5.3.1: TLS is mandatory-to-negotiate before SASL here.
            self.transport.send_element(_sasl_failure("encryption-required", "use STARTTLS"))
            return
        if element.tag == "auth":
            if self._sasl is not None:
                raise StreamError("policy-violation", "authentication already in progress")
            config = self.server.config
            assert self.domain is not None
            domain = self.domain
            storage = self.server.storage

            async def lookup(local: str, hash_name: str):  # type: ignore[no-untyped-def]
                return await storage.accounts.get_credentials(local, domain, hash_name)

            self._sasl = sasl.SaslNegotiation(
                domain,
                lookup,
                secure=self.transport.secure,
                channel_bindings=self.transport.channel_bindings(),
                allow_plain=config.auth.allow_plain,
                iterations=config.auth.scram_iterations,
            )
            mechanism = element.get("mechanism") or ""
            text = element.text.strip()
            initial = None if text == "" else self._b64decode(text)
            if isinstance(initial, sasl.Failure):
                await self._sasl_result(initial)
                return
            await self._sasl_result(await self._sasl.start(mechanism, initial))
        elif element.tag == "response":
            if self._sasl is None:
                raise StreamError("policy-violation", "no authentication in progress")
            data = self._b64decode(element.text.strip())
            if isinstance(data, sasl.Failure):
                await self._sasl_result(data)
                return
            await self._sasl_result(await self._sasl.respond(data))
        elif element.tag == "abort":
            self._sasl = None
            self.transport.send_element(_sasl_failure("aborted"))
        else:
            raise StreamError("unsupported-stanza-type", f"unexpected SASL element {element.tag}")

    @staticmethod
    def _b64decode(text: str) -> bytes | sasl.Failure:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return sasl.Failure("incorrect-encoding")

    async def _sasl_result(self, result: sasl.SaslStep) -> None:
        if isinstance(result, sasl.Challenge):
            self.transport.send_element(
                Element("challenge", ns.SASL, text=_b64(result.data) if result.data else "=")
            )
            return
        negotiation, self._sasl = self._sasl, None
        throttle = self.server.auth_throttle
        peer = self.transport.peer_address
        user = negotiation.attempted_user if negotiation is not None else None
        if user is not None:
            # The account's failure budget, across addresses: the answer, right or wrong,
            # waits its turn; past the queue it is not-authorized whatever the password.
            accounts = self.server.account_throttle
            admission = accounts.admit(user, peer)
            if admission.wait:
                await asyncio.sleep(admission.wait)
            if self.state == "closed":
                return
            if isinstance(result, sasl.Success) and not admission.admitted:
                result = sasl.Failure("not-authorized")
            if isinstance(result, sasl.Success):
                accounts.succeeded(user, peer, admission)
            else:
                accounts.failed(user, admission)
                assert self.domain is not None and negotiation is not None
                sasl.log_failure(user, self.domain, peer, negotiation.mechanism or "?")
        if isinstance(result, sasl.Success):
            throttle.succeeded(peer)
            self.local = result.local
            # RFC 6120 §6.4.6: restart the stream; the new parser must be in place
            # before the client can react to <success/>.
            self.transport.reset_stream()
            self.state = "wait-restart"
            self.transport.send_element(
                Element("success", ns.SASL, text=_b64(result.data) if result.data else None)
            )
            log.info("%s@%s authenticated from %s", result.local, self.domain, peer)
            return
        delay = throttle.failed(peer)
        if delay:
            await asyncio.sleep(delay)
        if self.state == "closed":
            return
        self.transport.send_element(_sasl_failure(result.condition, result.text))
        self._sasl_failures += 1
        if self._sasl_failures >= MAX_SASL_ATTEMPTS:
            raise StreamError("policy-violation", "too many failed authentication attempts")

    # ---- resource binding (RFC 6120 §7) -----------------------------------------------
    async def _pre_bind_iq(self, iq: Element) -> None:
        payload = next(iq.elements, None)
        iq_id = iq.get("id")
        if (
            iq.get("type") == "set"
            and payload is not None
            and payload.ns == ns.BIND
            and payload.tag == "bind"
        ):
            self._bind(iq, payload)
            return
        if iq.get("type") == "set" and payload is not None and payload.ns == ns.SESSION:
            self.transport.send_element(
                Element("iq", ns.CLIENT, {"type": "result", "id": iq_id or ""})
            )
            return
        if iq.get("type") in ("get", "set"):
            self.transport.send_element(
                error_reply(iq, StanzaError("not-authorized", "bind a resource first"))
            )

    def _bind(self, iq: Element, bind: Element) -> None:
        assert self.local is not None and self.domain is not None
        requested = bind.find_text("resource", ns.BIND)
        if requested is not None and requested.strip():
            try:
                resource = prepare_resource(requested.strip())
            except InvalidJID:
                # RFC 6120 §7.7.2.1
                self.transport.send_element(
                    error_reply(iq, StanzaError("bad-request", "invalid resource"))
                )
                return
        else:
            resource = secrets.token_hex(8)
        jid = JID(self.local, self.domain, resource)
        max_resources = self.server.config.limits.max_resources
        sessions = self.server.sessions
        if (
            max_resources
            and sessions.get(jid) is None
            and len(sessions.resources(jid.bare)) >= max_resources
        ):
            # RFC 6120 §7.6.2.1: the account has as many resources as it may.
            self.transport.send_element(
                error_reply(
                    iq, StanzaError("resource-constraint", "too many resources for this account")
                )
            )
            return
        replaced = sessions.bind(self, jid)
        if replaced is not None:
            # Policy: the new session takes over the resource (RFC 6120 §7.7.2.2).
            replaced.close("conflict", "replaced by a new connection with the same resource")
        self.state = "bound"
        self.transport.stream_bound()
        result = Element("iq", ns.CLIENT, {"type": "result", "id": iq.get("id") or ""})
        result.add("bind", ns.BIND).add("jid", text=str(jid))
        self.transport.send_element(result)
        log.info("bound %s", jid)
        self.server.spawn(self.server.events.fire_all("session/bound", self))

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
            try:
                if send_filter(self, stanza):
                    return
            except Exception:
                # A broken filter must not cost the stanza nor the connection: sent as is.
                from dovecote.core.events import log_failure

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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sasl_failure(condition: str, text: str = "") -> Element:
    failure = Element("failure", ns.SASL)
    failure.add(condition)
    if text:
        failure.add("text", attrs={XML_LANG: "en"}, text=text)
    return failure


#: RFC 7622 §3.1: three parts of at most 1023 bytes each, and two separators.
_MAX_JID_LENGTH = 3 * 1023 + 2


def _is_jid(text: str) -> bool:
    if len(text) > _MAX_JID_LENGTH:
        return False
    try:
        JID.parse(text)
    except InvalidJID:
        return False
    return True
