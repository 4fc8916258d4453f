"""Client stream negotiation (RFC 6120 §4-§7) as a machine without I/O.

`ClientNegotiation` takes parsed input (a stream header, top-level elements, the end of the
stream) and the answers to its own requests, and returns what to do as a list of actions
(`Send`, `StartTLS`, `LookupCredentials`, `Delay`, `Bind`, ...). It never awaits, sleeps,
reads a clock or touches the server: the driver (`stream/c2s.py` `C2SStream`) carries the
actions out and feeds their results back, the way h11 does for HTTP. One stream goes
through: header -> STARTTLS -> restart -> SASL -> restart -> resource binding (or XEP-0198
resumption), after which the driver hands stanzas to the session.

The framing stays with the transport: the machine checks the opening element against a
`Framing` (`<stream:stream>` on TCP, RFC 6120 §4.8; `<open/>` on WebSocket, RFC 7395 §3.3)
and answers with `SendHeader(attrs)`, which the transport writes in its own framing.

Contract: after a request (`LookupCredentials`, `VerifyPassword`, `StartTLS`, `Delay`,
`Bind`, `Resume`, `UnauthenticatedIQ`, `OfferElement`), nothing but its answer may be fed
until it is given; a request is always the last action of its list.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from dovecote.core.throttle import AccountThrottle, AuthThrottle
from dovecote.jid import JID, InvalidJID, prepare_domain, prepare_resource
from dovecote.storage.credentials import ScramCredentials
from dovecote.stream import sasl, sm
from dovecote.stream.errors import StanzaError, error_reply, excerpt
from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, Element
from dovecote.xml.parser import StreamHeader

#: Failed authentication attempts on one stream before it is closed (policy-violation).
MAX_SASL_ATTEMPTS = 5
STANZA_KINDS = frozenset(("message", "presence", "iq"))


# ---- actions ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendHeader:
    """Open our side of the stream with these attributes, in the transport's framing."""

    attrs: dict[str, str]


@dataclass(frozen=True, slots=True)
class Send:
    element: Element


@dataclass(frozen=True, slots=True)
class ResetStream:
    """A stream restart (RFC 6120 §4.3.3): the parser starts over, before the client can
    react to what was just sent."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Request: upgrade the connection (RFC 6120 §5.4.3.3), drop clear-text input queued
    behind <starttls/>; answer `tls_started(bindings)` or `tls_failed()`."""


@dataclass(frozen=True, slots=True)
class LookupCredentials:
    """Request: the stored credentials of local@domain for `hash_name`; answer
    `credentials(result)` (None when there is no such account)."""

    local: str
    domain: str
    hash_name: str


@dataclass(frozen=True, slots=True)
class VerifyPassword:
    """Request: PBKDF2 check of a PLAIN password (CPU work: off the event loop); answer
    `password_checked(ok)`."""

    password: str = field(repr=False)
    credentials: ScramCredentials = field(repr=False)


@dataclass(frozen=True, slots=True)
class Delay:
    """Request: wait `seconds` (the authentication throttle), then call `delay_over()`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Authenticated:
    """SASL succeeded for `local` (for logs and metrics; the stream restarts next)."""

    local: str


@dataclass(frozen=True, slots=True)
class Bind:
    """Request: bind `jid` in the session manager (resource limit, conflicts, RFC 6120
    §7.7.2); answer `bind_result(None)` once bound or `bind_result(error)`."""

    jid: JID
    iq: Element


@dataclass(frozen=True, slots=True)
class Bound:
    """Negotiation is over: from here the driver hands stanzas to the session."""

    jid: JID


@dataclass(frozen=True, slots=True)
class Resume:
    """Request: resume a XEP-0198 session (§5); answer `resume_result(resumed)`."""

    element: Element

    @property
    def previd(self) -> str:
        return self.element.get("previd") or ""


@dataclass(frozen=True, slots=True)
class UnauthenticatedIQ:
    """Request: offer an IQ before authentication to the modules that take one (XEP-0077
    in-band registration); answer `handler_result(taken)`."""

    iq: Element


@dataclass(frozen=True, slots=True)
class OfferElement:
    """Request: offer an element between authentication and binding to the modules;
    answer `handler_result(taken)`."""

    element: Element


@dataclass(frozen=True, slots=True)
class StreamError:
    """Send this stream error (RFC 6120 §4.9) and close; the machine is closed."""

    condition: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the stream; `graceful=False`: drop the connection without writing (a failed
    TLS handshake, where a clear-text closing tag must not go out)."""

    graceful: bool = True


Action = (
    SendHeader
    | Send
    | ResetStream
    | StartTLS
    | LookupCredentials
    | VerifyPassword
    | Delay
    | Authenticated
    | Bind
    | Bound
    | Resume
    | UnauthenticatedIQ
    | OfferElement
    | StreamError
    | Close
)


# ---- configuration ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Framing:
    """The element that opens a stream on a transport: its namespace and name, the prefix
    it must use (None: any) and the content namespace it must declare (None: implied)."""

    ns: str
    tag: str
    prefix: str | None
    content_ns: str | None


#: RFC 6120 §4.8: <stream:stream xmlns='jabber:client' xmlns:stream='...streams'>.
TCP_FRAMING = Framing(ns.STREAMS, "stream", "stream", ns.CLIENT)
#: RFC 7395 §3.3.2, §3.4: <open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>, any prefix;
#: every frame carries its own namespaces, so there is no content namespace to declare.
WEBSOCKET_FRAMING = Framing(ns.FRAMING, "open", None, None)


@dataclass(frozen=True, slots=True)
class NegotiationConfig:
    """What the machine is told at construction (server configuration and modules)."""

    #: The domains served (prepared); a header 'to' must name one.
    hosts: Collection[str]
    #: The 'from' of a header opened only to carry a stream error.
    default_host: str
    #: STARTTLS before SASL (RFC 6120 §5.3.1).
    tls_required: bool = False
    #: PLAIN over TLS (RFC 4616; never without TLS).
    allow_plain: bool = True
    #: Iteration count of decoy SCRAM records (unknown users look like real ones).
    scram_iterations: int = 4096
    #: XEP-0198 offered after authentication.
    sm_enabled: bool = False
    #: Stream features from modules before authentication (XEP-0077 <register/>).
    pre_auth_features: Sequence[Element] = ()
    #: Stream features from modules after authentication (roster versioning, CSI, ...).
    stream_features: Sequence[Element] = ()
    framing: Framing = TCP_FRAMING


class NegotiationMisuse(RuntimeError):
    """The driver broke the contract (input while a request is unanswered, an answer
    nobody asked for): a bug in the driver, never the client's doing."""


# ---- the machine --------------------------------------------------------------------
class ClientNegotiation:
    """The negotiation of one client stream; see the module docstring.

    `state`: wait-header -> negotiating -> (wait-restart -> negotiating) -> wait-restart ->
    authenticated -> bound, or closed at any point.
    """

    def __init__(
        self,
        config: NegotiationConfig,
        *,
        secure: bool = False,
        can_starttls: bool = False,
        channel_bindings: dict[str, bytes] | None = None,
        peer_address: str = "?",
        address_throttle: AuthThrottle | None = None,
        account_throttle: AccountThrottle | None = None,
    ) -> None:
        self.config = config
        #: TLS is in place (direct TLS, or after STARTTLS).
        self.secure = secure
        self.can_starttls = can_starttls and not secure
        self.channel_bindings = dict(channel_bindings or {})
        self.peer_address = peer_address
        #: Bookkeeping of failures per address and per account (RFC 6120 §6.4.5 leaves the
        #: policy to the server); shared by all streams, pure state: delays come out as
        #: `Delay` actions.
        self.address_throttle = address_throttle or AuthThrottle()
        self.account_throttle = account_throttle or AccountThrottle()
        self.state = "wait-header"
        self.domain: str | None = None
        self.stream_id = ""
        self.lang = "en"
        #: The authenticated account (local part), set by SASL success.
        self.local: str | None = None
        self.jid: JID | None = None
        self.header_sent = False
        self.sasl_failures = 0
        self._sasl: sasl.SaslNegotiation | None = None
        #: The unanswered request: its kind and what goes on with the answer.
        self._pending: tuple[str, Callable[[Any], list[Action]]] | None = None

    @property
    def waiting(self) -> str | None:
        """The kind of answer awaited ("credentials", "tls", "delay", ...), or None."""
        return self._pending[0] if self._pending is not None else None

    # ---- input ------------------------------------------------------------------------
    def stream_opened(self, header: StreamHeader) -> list[Action]:
        """The client opened (or restarted) the stream: RFC 6120 §4.7, §4.3.3."""
        self._idle()
        if self.state not in ("wait-header", "wait-restart"):
            return self._fail("bad-format", "unexpected stream header")
        lang = header.attrs.get(XML_LANG)
        if lang:
            self.lang = lang
        framing = self.config.framing
        if header.ns != framing.ns or header.tag != framing.tag:
            return self._fail(
                "invalid-namespace",
                f"the stream element must be {{{framing.ns}}}{framing.tag}",
            )
        if framing.prefix is not None and header.prefix != framing.prefix:
            return self._fail(
                "bad-namespace-prefix", f"the stream namespace prefix must be '{framing.prefix}'"
            )
        if framing.content_ns is not None and header.default_ns != framing.content_ns:
            return self._fail(
                "invalid-namespace", f"the content namespace must be {framing.content_ns}"
            )
        to = header.attrs.get("to")
        if not to:
            return self._fail(
                "improper-addressing", "a 'to' attribute is required on the stream header"
            )
        try:
            domain = prepare_domain(to)
        except InvalidJID:
            return self._fail("host-unknown", f"{excerpt(to)} is not a valid domain")
        if domain not in self.config.hosts:
            return self._fail("host-unknown", f"this server does not serve {excerpt(domain)}")
        if self.domain is not None and domain != self.domain:
            return self._fail("host-unknown", "the domain may not change on a stream restart")
        version = header.attrs.get("version", "0.9")
        try:
            major = int(version.split(".", 1)[0])
        except ValueError:
            major = 0
        self.domain = domain
        self.stream_id = secrets.token_urlsafe(12)
        actions: list[Action] = [self._header(header.attrs.get("from"))]
        if major < 1:
            # RFC 6120 §4.7.5: our header first (it names the version we speak).
            return actions + self._fail("unsupported-version", "XMPP 1.0 is required")
        self.state = "authenticated" if self.local is not None else "negotiating"
        actions.append(Send(self._features()))
        return actions

    def element(self, element: Element) -> list[Action]:
        """A top-level element before the resource is bound."""
        self._idle()
        if self.state == "negotiating":
            return self._negotiating(element)
        if self.state == "authenticated":
            return self._authenticated(element)
        if self.state in ("bound", "closed"):
            raise NegotiationMisuse(f"element fed in state {self.state}")
        return self._fail("bad-format", "unexpected element")

    def stream_closed(self) -> list[Action]:
        """RFC 6120 §4.4: the client closed its stream; we answer in kind."""
        self._idle()
        self.state = "closed"
        return [Close()]

    def error_header(self) -> list[Action]:
        """The header to open before a stream error raised outside the machine (a parse
        error, a timeout): RFC 6120 §4.9.1.2. Empty if it was sent already."""
        return [] if self.header_sent else [self._header()]

    # ---- answers to requests -----------------------------------------------------------
    def tls_started(self, channel_bindings: dict[str, bytes]) -> list[Action]:
        return self._answer("tls", channel_bindings)

    def tls_failed(self) -> list[Action]:
        return self._answer("tls", None)

    def credentials(self, result: ScramCredentials | None) -> list[Action]:
        return self._answer("credentials", result)

    def password_checked(self, ok: bool) -> list[Action]:
        return self._answer("password", ok)

    def credentials_unavailable(self) -> list[Action]:
        """The credentials of a `LookupCredentials` could not be read (storage busy or
        down): RFC 6120 §6.5.11 temporary-auth-failure; the client may try again, and the
        attempt counts against no failure budget."""
        pending = self._pending
        if pending is None or pending[0] != "credentials":
            raise NegotiationMisuse(f"no credentials were asked for (waiting: {self.waiting})")
        self._pending = None
        self._sasl = None
        return [Send(_sasl_failure("temporary-auth-failure", "try again later"))]

    def delay_over(self) -> list[Action]:
        return self._answer("delay", None)

    def bind_result(self, error: StanzaError | None) -> list[Action]:
        """None: the session manager bound the JID of the `Bind`; else why it did not."""
        return self._answer("bind", error)

    def resume_result(self, resumed: bool) -> list[Action]:
        """Whether the driver resumed the session of the `Resume` (it answered the client
        either way: <resumed/> or <failed/>)."""
        return self._answer("resume", resumed)

    def handler_result(self, taken: bool) -> list[Action]:
        """Whether a module took the `UnauthenticatedIQ` or `OfferElement`."""
        return self._answer("handler", taken)

    def _answer(self, kind: str, value: object) -> list[Action]:
        pending = self._pending
        if pending is None or pending[0] != kind:
            raise NegotiationMisuse(f"no {kind} answer was asked for (waiting: {self.waiting})")
        self._pending = None
        return pending[1](value)

    def _request(
        self, kind: str, action: Action, then: Callable[[Any], list[Action]]
    ) -> list[Action]:
        self._pending = (kind, then)
        return [action]

    def _idle(self) -> None:
        if self._pending is not None:
            raise NegotiationMisuse(f"input while waiting for {self._pending[0]}")

    # ---- output helpers -----------------------------------------------------------------
    def _header(self, client_from: str | None = None) -> SendHeader:
        if not self.stream_id:
            self.stream_id = secrets.token_urlsafe(12)
        attrs = {
            "from": self.domain or self.config.default_host,
            "id": self.stream_id,
            "version": "1.0",
            XML_LANG: "en",
        }
        if client_from and _is_jid(client_from):
            # RFC 6120 §4.7.2: 'to' echoes the client's 'from', a JID (RFC 6120 §4.7.1);
            # anything else (say 200 KiB of junk) is not sent back.
            attrs["to"] = client_from
        self.header_sent = True
        return SendHeader(attrs)

    def _fail(self, condition: str, text: str = "") -> list[Action]:
        """A stream error: RFC 6120 §4.9.1.2, a header first if none was sent."""
        actions = self.error_header()
        self.state = "closed"
        self._pending = None
        return [*actions, StreamError(condition, text)]

    def _features(self) -> Element:
        """RFC 6120 §4.3.2: what may be negotiated next."""
        features = Element("features", ns.STREAMS)
        config = self.config
        if self.state == "negotiating":
            if self.can_starttls and not self.secure:
                starttls = features.add("starttls", ns.TLS)
                if config.tls_required:
                    starttls.add("required")
            if not (config.tls_required and not self.secure):
                bindings = self.channel_bindings
                mechanisms = features.add("mechanisms", ns.SASL)
                for name in sasl.offered_mechanisms(self.secure, bindings, config.allow_plain):
                    mechanisms.add("mechanism", text=name)
                for feature in config.pre_auth_features:
                    features.append(feature.copy())
                if bindings:
                    # XEP-0440 §3: tell the client which channel-binding types we support.
                    cb = features.add("sasl-channel-binding", ns.SASL_CB)
                    for cb_type in bindings:
                        cb.add("channel-binding", attrs={"type": cb_type})
        elif self.state == "authenticated":
            features.add("bind", ns.BIND)
            # RFC 3921 §3 session establishment: offered, but optional (RFC 6121 Appendix E).
            features.add("session", ns.SESSION).add("optional")
            if config.sm_enabled:
                features.add("sm", sm.NS)
            for feature in config.stream_features:
                features.append(feature.copy())
        return features

    # ---- before authentication -----------------------------------------------------------
    def _negotiating(self, element: Element) -> list[Action]:
        if element.ns == ns.TLS and element.tag == "starttls":
            return self._starttls()
        if element.ns == ns.SASL:
            return self._sasl_element(element)
        if element.tag == "iq" and element.ns == ns.CLIENT:
            # Before authentication only modules that say so take IQs (XEP-0077 in-band
            # registration).
            if next(element.elements, None) is not None:
                return self._request("handler", UnauthenticatedIQ(element), self._not_authorized)
        return self._not_authorized(False)

    def _not_authorized(self, taken: bool) -> list[Action]:
        if taken:
            return []
        # RFC 6120 §4.9.3.12: nothing but negotiation before authentication.
        return self._fail("not-authorized", "authenticate first")

    def _starttls(self) -> list[Action]:
        """RFC 6120 §5.4.2."""
        if not self.can_starttls or self.secure:
            self.state = "closed"
            return [Send(Element("failure", ns.TLS)), Close()]
        self.state = "wait-restart"
        # Anything pipelined after <starttls/> in clear text is discarded by the driver
        # (it could be an injection, CVE-2011-0411 style).
        return [
            Send(Element("proceed", ns.TLS)),
            ResetStream(),
            *self._request("tls", StartTLS(), self._tls_done),
        ]

    def _tls_done(self, channel_bindings: dict[str, bytes] | None) -> list[Action]:
        if channel_bindings is None:
            self.state = "closed"
            return [Close(graceful=False)]
        self.secure = True
        self.can_starttls = False
        self.channel_bindings = dict(channel_bindings)
        return []

    # ---- SASL (RFC 6120 §6.4) ----------------------------------------------------------
    def _sasl_element(self, element: Element) -> list[Action]:
        if self.config.tls_required and not self.secure:
            # RFC 6120 §5.3.1: TLS is mandatory-to-negotiate before SASL here.
            return [Send(_sasl_failure("encryption-required", "use STARTTLS"))]
        if element.tag == "auth":
            if self._sasl is not None:
                return self._fail("policy-violation", "authentication already in progress")
            assert self.domain is not None
            self._sasl = sasl.SaslNegotiation(
                self.domain,
                secure=self.secure,
                channel_bindings=self.channel_bindings,
                allow_plain=self.config.allow_plain,
                iterations=self.config.scram_iterations,
            )
            text = element.text.strip()
            initial = None if text == "" else _b64decode(text)
            if isinstance(initial, sasl.Failure):
                return self._sasl_step(initial)
            return self._sasl_step(self._sasl.start(element.get("mechanism") or "", initial))
        if element.tag == "response":
            if self._sasl is None:
                return self._fail("policy-violation", "no authentication in progress")
            data = _b64decode(element.text.strip())
            if isinstance(data, sasl.Failure):
                return self._sasl_step(data)
            return self._sasl_step(self._sasl.respond(data))
        if element.tag == "abort":
            # RFC 6120 §6.4.4: not counted as a failed attempt.
            self._sasl = None
            return [Send(_sasl_failure("aborted"))]
        return self._fail("unsupported-stanza-type", f"unexpected SASL element {element.tag}")

    def _sasl_step(self, step: sasl.SaslStep) -> list[Action]:
        exchange = self._sasl
        if isinstance(step, sasl.NeedCredentials):
            assert exchange is not None and self.domain is not None
            lookup = LookupCredentials(step.local, self.domain, step.hash_name)
            return self._request(
                "credentials", lookup, lambda creds: self._sasl_step(exchange.credentials(creds))
            )
        if isinstance(step, sasl.NeedPasswordCheck):
            assert exchange is not None
            check = VerifyPassword(step.password, step.credentials)
            return self._request(
                "password", check, lambda ok: self._sasl_step(exchange.password_checked(ok))
            )
        if isinstance(step, sasl.Challenge):
            return [Send(Element("challenge", ns.SASL, text=_b64(step.data) or "="))]
        return self._sasl_outcome(step)

    def _sasl_outcome(self, result: sasl.Success | sasl.Failure) -> list[Action]:
        exchange, self._sasl = self._sasl, None
        user = exchange.attempted_user if exchange is not None else None
        if user is None:
            return self._answer_attempt(result)
        # The account's failure budget, across addresses: the answer, right or wrong,
        # waits its turn; past the queue it is not-authorized whatever the password.
        accounts = self.account_throttle
        admission = accounts.admit(user, self.peer_address)

        def admitted(_: object = None) -> list[Action]:
            outcome = result
            if isinstance(outcome, sasl.Success) and not admission.admitted:
                outcome = sasl.Failure("not-authorized")
            if isinstance(outcome, sasl.Success):
                accounts.succeeded(user, self.peer_address, admission)
            else:
                accounts.failed(user, admission)
                assert self.domain is not None and exchange is not None
                sasl.log_failure(user, self.domain, self.peer_address, exchange.mechanism or "?")
            return self._answer_attempt(outcome)

        if admission.wait:
            return self._request("delay", Delay(admission.wait), admitted)
        return admitted()

    def _answer_attempt(self, result: sasl.Success | sasl.Failure) -> list[Action]:
        if isinstance(result, sasl.Success):
            self.address_throttle.succeeded(self.peer_address)
            self.local = result.local
            self.state = "wait-restart"
            # RFC 6120 §6.4.6: the new parser must be in place before the client can
            # react to <success/>.
            success = Element("success", ns.SASL, text=_b64(result.data) or None)
            return [ResetStream(), Send(success), Authenticated(result.local)]
        delay = self.address_throttle.failed(self.peer_address)
        if delay:
            return self._request("delay", Delay(delay), lambda _: self._refuse(result))
        return self._refuse(result)

    def _refuse(self, failure: sasl.Failure) -> list[Action]:
        """RFC 6120 §6.4.5: <failure/>; the client may retry, up to MAX_SASL_ATTEMPTS."""
        actions: list[Action] = [Send(_sasl_failure(failure.condition, failure.text))]
        self.sasl_failures += 1
        if self.sasl_failures >= MAX_SASL_ATTEMPTS:
            actions += self._fail("policy-violation", "too many failed authentication attempts")
        return actions

    # ---- after authentication, before binding ---------------------------------------------
    def _authenticated(self, element: Element) -> list[Action]:
        if element.tag == "iq" and element.ns == ns.CLIENT:
            return self._pre_bind_iq(element)
        if element.ns == sm.NS and self.config.sm_enabled:
            if element.tag == "resume":
                return self._request("resume", Resume(element), self._resumed)
            # XEP-0198 §3: enable only after binding a resource.
            return [Send(_sm_failed("unexpected-request"))]
        if element.tag in STANZA_KINDS and element.ns == ns.CLIENT:
            return self._fail("not-authorized", "bind a resource first")

        def offered(taken: bool) -> list[Action]:
            if taken:
                return []
            return self._fail("unsupported-stanza-type", f"unexpected {element.tag}")

        return self._request("handler", OfferElement(element), offered)

    def _resumed(self, resumed: bool) -> list[Action]:
        if resumed:
            self.state = "bound"
        return []

    def _pre_bind_iq(self, iq: Element) -> list[Action]:
        payload = next(iq.elements, None)
        iq_type = iq.get("type")
        if iq_type == "set" and payload is not None:
            if payload.ns == ns.BIND and payload.tag == "bind":
                return self._bind(iq, payload)
            if payload.ns == ns.SESSION:
                # RFC 3921 §3: a no-op kept for old clients.
                return [
                    Send(Element("iq", ns.CLIENT, {"type": "result", "id": iq.get("id") or ""}))
                ]
        if iq_type in ("get", "set"):
            return [Send(error_reply(iq, StanzaError("not-authorized", "bind a resource first")))]
        return []  # a stray result or error: never answered (RFC 6120 §8.2.3)

    def _bind(self, iq: Element, bind: Element) -> list[Action]:
        """RFC 6120 §7.6: the requested resource, or one of ours."""
        assert self.local is not None and self.domain is not None
        requested = bind.find_text("resource", ns.BIND)
        if requested is not None and requested.strip():
            try:
                resource = prepare_resource(requested.strip())
            except InvalidJID:
                # RFC 6120 §7.7.2.1
                return [Send(error_reply(iq, StanzaError("bad-request", "invalid resource")))]
        else:
            resource = secrets.token_hex(8)
        jid = JID(self.local, self.domain, resource)

        def bound(error: StanzaError | None) -> list[Action]:
            if error is not None:
                return [Send(error_reply(iq, error))]
            self.state = "bound"
            self.jid = jid
            result = Element("iq", ns.CLIENT, {"type": "result", "id": iq.get("id") or ""})
            result.add("bind", ns.BIND).add("jid", text=str(jid))
            return [Bound(jid), Send(result)]

        return self._request("bind", Bind(jid, iq), bound)


def _b64(data: bytes | None) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def _b64decode(text: str) -> bytes | sasl.Failure:
    """RFC 6120 §6.4.2: '=' is an empty response; bad base64 is incorrect-encoding."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return sasl.Failure("incorrect-encoding")


def _sasl_failure(condition: str, text: str = "") -> Element:
    failure = Element("failure", ns.SASL)
    failure.add(condition)
    if text:
        failure.add("text", attrs={XML_LANG: "en"}, text=text)
    return failure


def _sm_failed(condition: str) -> Element:
    failed = Element("failed", sm.NS)
    failed.add(condition, ns.STANZA_ERRORS)
    return failed


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
