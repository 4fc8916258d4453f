"""Server-to-server stream negotiation (RFC 6120 §4-§5, XEP-0220 Server Dialback, XEP-0288
bidirectional streams) as machines without I/O.

Two machines, one per side of a TCP connection, in the style of `stream/negotiation.py`
(`ClientNegotiation`): parsed input in, a list of actions out; they never await, read a
clock or touch the server. `stream/s2s.py` drives them over `transport/tcp.py`.

- `IncomingNegotiation`, the Receiving Server (and the Authoritative Server answering
  `<db:verify/>`): header, STARTTLS, the stream features (dialback with error handling,
  XEP-0288 bidi, SASL EXTERNAL when the driver says the certificate allows it), dialback
  requests (`<db:result/>` without a type), each checked with the Authoritative Server
  through the driver (`VerifyKey`, answered by `key_verified`), verification requests
  (`<db:verify/>` without a type, answered from our own secret), and then stanzas checked
  against the authenticated domain pairs.
- `OutgoingNegotiation`, the Initiating Server (and the Receiving Server asking the
  Authoritative Server with `<db:verify/>`): header, STARTTLS, bidi, one `<db:result/>`
  per sender domain (several over one stream: XEP-0220 §2.6 "Multiplexing"), the answers.

Dialback keys (XEP-0220 §2.1.1, "Initiating Server Generates Outbound Request"):
HMAC-SHA256(hex(SHA256(secret)), receiving + ' ' + originating + ' ' + stream id); the
Authoritative Server is this very server, so only it ever checks its own keys.

Where certificates come in (SASL EXTERNAL, XEP-0178): the driver tells the incoming
machine which domains the peer's certificate proves (`certificate_domains`), and the
outgoing machine whether to offer EXTERNAL (`use_external`); the verification itself
(RFC 6125 name matching) lives outside the machines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from dovecote.jid import JID, InvalidJID, prepare_domain
from dovecote.stream.negotiation import Close, ResetStream, Send, SendHeader, StartTLS, StreamError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.parser import StreamHeader

DIALBACK = "jabber:server:dialback"
DIALBACK_FEATURE = "urn:xmpp:features:dialback"
BIDI_FEATURE = "urn:xmpp:features:bidi"
BIDI = "urn:xmpp:bidi"
STANZA_KINDS = frozenset(("message", "presence", "iq"))

__all__ = [
    "Close",
    "ResetStream",
    "Send",
    "SendHeader",
    "StartTLS",
    "StreamError",
]


def dialback_key(secret: str, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0220 §2.1.1: the dialback key, as lowercase hex."""
    key = hashlib.sha256(secret.encode()).hexdigest().encode()
    data = f"{receiving} {originating} {stream_id}".encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# ---- actions (besides the shared SendHeader, Send, ResetStream, StartTLS, ...) ------------
@dataclass(frozen=True, slots=True)
class VerifyKey:
    """Ask the Authoritative Server for `sender` whether `key` is valid for the stream
    `stream_id` to `target` (XEP-0220 §2.1.2); answer `key_verified(target, sender,
    result)` whenever the answer comes: other input may be fed meanwhile."""

    target: str
    sender: str
    stream_id: str
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PairAuthenticated:
    """Stanzas from `remote` to `local` (incoming) or from `local` to `remote` (outgoing)
    may flow on this stream; `method`: "dialback" or "external"."""

    local: str
    remote: str
    method: str = "dialback"


@dataclass(frozen=True, slots=True)
class PairRejected:
    """Outgoing: the peer refused the pair `local` -> `remote`: `condition` is the stanza
    error the queued stanzas are bounced with."""

    local: str
    remote: str
    condition: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class KeyVerified:
    """Outgoing: the Authoritative Server answered a `<db:verify/>` we sent: `result` is
    "valid", "invalid" or a stanza error condition."""

    local: str
    remote: str
    stream_id: str
    result: str


@dataclass(frozen=True, slots=True)
class ReadyForDialback:
    """Outgoing: TLS (when required) and features are done: dialback requests and
    verification requests may go out now (the machine sends those queued already)."""


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """Outgoing: this link cannot be used (no TLS offered, no way to authenticate, the
    peer's stream error): bounce with `condition`, then close."""

    condition: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Stanza:
    """A stanza accepted on an authenticated pair, re-qualified as jabber:client."""

    element: Element


Action = (
    SendHeader
    | Send
    | ResetStream
    | StartTLS
    | StreamError
    | Close
    | VerifyKey
    | PairAuthenticated
    | PairRejected
    | KeyVerified
    | ReadyForDialback
    | LinkFailed
    | Stanza
)


@dataclass(frozen=True, slots=True)
class S2SConfig:
    """What both machines are told at construction."""

    #: Is this one of our domains (served hosts, service and component domains)?
    is_local: Callable[[str], bool]
    #: The 'from' of a header opened only to carry a stream error.
    default_host: str
    #: The dialback secret (XEP-0220 §2.1.1 key generation).
    secret: str = field(repr=False)
    #: TLS before dialback or stanzas, both directions (RFC 6120 §5.3.1).
    tls_required: bool = True
    #: Server Dialback allowed (XEP-0220); false: certificates only.
    dialback: bool = True
    #: XEP-0288 offered (incoming) and used when offered (outgoing).
    bidi: bool = True
    #: Is this remote domain allowed to federate (block/allow lists)?
    domain_allowed: Callable[[str], bool] = lambda _domain: True
    #: Refuse peers whose certificate is not trusted for their domain (XEP-0178 §3; no
    #: dialback fallback): `[s2s] require_valid_certs`.
    require_valid_certs: bool = False


# ---- helpers ---------------------------------------------------------------------------
def requalify(element: Element) -> Element:
    """Re-qualify a stanza (and its children inheriting the default namespace) from
    jabber:server to jabber:client, in place: inside Dovecote stanzas are jabber:client;
    the transport writes jabber:client unqualified under the s2s header's jabber:server."""
    stack = [element]
    while stack:
        el = stack.pop()
        if el.ns == ns.SERVER:
            el.ns = ns.CLIENT
        stack.extend(el.elements)
    return element


def _domain(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return prepare_domain(text)
    except InvalidJID:
        return None


def _db(tag: str, local: str, remote: str, text: str | None = None, **attrs: str) -> Element:
    return Element(tag, DIALBACK, {"from": local, "to": remote, **attrs}, text=text)


def _db_error(tag: str, local: str, remote: str, condition: str, **attrs: str) -> Element:
    """XEP-0220 §2.4 "Dialback Error Conditions": type='error' with a stanza error."""
    element = _db(tag, local, remote, type="error", **attrs)
    error_type = (
        "wait" if condition in ("remote-server-timeout", "resource-constraint") else "cancel"
    )
    error = element.add("error", ns.CLIENT, {"type": error_type})
    error.add(condition, ns.STANZA_ERRORS)
    return element


def _error_condition(element: Element) -> str:
    error = element.find("error", ns.SERVER) or element.find("error", ns.CLIENT)
    if error is not None:
        for child in error.elements:
            if child.ns == ns.STANZA_ERRORS and child.tag != "text":
                return child.tag
    return "undefined-condition"


def _header_checks(header: StreamHeader) -> StreamError | None:
    """RFC 6120 §4.8, §4.9.3.10: the stream element and the content namespace."""
    if header.ns != ns.STREAMS or header.tag != "stream":
        return StreamError(
            "invalid-namespace",
            "the stream element must be {http://etherx.jabber.org/streams}stream",
        )
    if header.prefix != "stream":
        return StreamError("bad-namespace-prefix", "the stream namespace prefix must be 'stream'")
    if header.default_ns != ns.SERVER:
        return StreamError("invalid-namespace", "the content namespace must be jabber:server")
    return None


def _version_ok(header: StreamHeader) -> bool:
    try:
        return int(header.attrs.get("version", "0.9").split(".", 1)[0]) >= 1
    except ValueError:
        return False


# ---- the receiving side ----------------------------------------------------------------
class IncomingNegotiation:
    """One incoming server stream: see the module docstring.

    `state`: wait-header -> open (features sent, dialback and stanzas possible) ->
    wait-restart (after STARTTLS or SASL) -> open ... or closed.
    """

    def __init__(
        self, config: S2SConfig, *, secure: bool = False, can_starttls: bool = False
    ) -> None:
        self.config = config
        self.secure = secure
        self.can_starttls = can_starttls and not secure
        self.state = "wait-header"
        self.stream_id = ""
        #: Our domain the peer addressed in its header ('to').
        self.local_domain: str | None = None
        #: The peer's domain from its header ('from'), if it gave one.
        self.remote_domain: str | None = None
        self.header_sent = False
        #: The peer declared the dialback namespace on its header (XEP-0220 §2.5.1).
        self.peer_dialback = False
        #: XEP-0288: the peer enabled bidirectionality.
        self.bidi = False
        #: Authenticated (local target, remote sender) pairs.
        self.pairs: set[tuple[str, str]] = set()
        #: Dialback requests sent to the Authoritative Server: (target, sender) pairs.
        self.pending: set[tuple[str, str]] = set()
        #: Domains a trusted certificate of the peer proves (set by the driver after the
        #: TLS handshake; the certificate helper's hook): SASL EXTERNAL is offered then.
        self.certificate_domains: frozenset[str] = frozenset()
        #: The domain authenticated by SASL EXTERNAL (any of our domains as target).
        self.external_domain: str | None = None
        #: Why the peer's certificate is not trusted and valid for a domain (RFC 6125),
        #: completing "Your server's certificate ..."; None: it is. Set by the driver
        #: after the TLS handshake.
        self.certificate_problem: Callable[[str], str | None] = lambda _d: "was not presented"
        self._tls_pending = False

    @property
    def waiting(self) -> str | None:
        return "tls" if self._tls_pending else None

    @property
    def authenticated(self) -> bool:
        return bool(self.pairs) or self.external_domain is not None

    def remote_domains(self) -> set[str]:
        """The remote domains authenticated on this stream."""
        domains = {remote for _local, remote in self.pairs}
        if self.external_domain is not None:
            domains.add(self.external_domain)
        return domains

    # ---- input ------------------------------------------------------------------------
    def stream_opened(self, header: StreamHeader) -> list[Action]:
        if self.state not in ("wait-header", "wait-restart"):
            return self._fail("bad-format", "unexpected stream header")
        problem = _header_checks(header)
        if problem is not None:
            return self._fail(problem.condition, problem.text)
        to = header.attrs.get("to")
        local = _domain(to)
        if to and local is None:
            return self._fail("host-unknown", "the 'to' of the header is not a domain")
        if local is not None and not self.config.is_local(local):
            return self._fail("host-unknown", f"this server does not serve {local}")
        if self.local_domain is not None and local is not None and local != self.local_domain:
            return self._fail("host-unknown", "the domain may not change on a stream restart")
        self.local_domain = local or self.local_domain or self.config.default_host
        remote = _domain(header.attrs.get("from"))
        if remote is not None:
            if self.config.is_local(remote):
                return self._fail("invalid-from", "that is one of our own domains")
            if not self.config.domain_allowed(remote):
                return self._fail("policy-violation", f"{remote} may not federate with us")
            self.remote_domain = remote
        self.peer_dialback = DIALBACK in header.namespaces.values()
        self.stream_id = secrets.token_urlsafe(12)
        actions: list[Action] = [self._header()]
        if not _version_ok(header):
            # RFC 6120 §4.7.5: stream features need XMPP 1.0; so does TLS.
            return actions + self._fail("unsupported-version", "XMPP 1.0 is required")
        if self.secure and self.external_domain is None and self.remote_domain is not None:
            # XEP-0178 §3 step 5: EXTERNAL is offered when the certificate is trusted and
            # valid for the 'from' of the header.
            problem = self.certificate_problem(self.remote_domain)
            if problem is None:
                self.certificate_domains = frozenset({self.remote_domain})
            elif self.config.require_valid_certs:
                return actions + self._certificate_refused(problem)
        self.state = "open"
        actions.append(Send(self._features()))
        return actions

    def element(self, element: Element) -> list[Action]:
        if self._tls_pending or self.state == "closed":
            return []
        if self.state != "open":
            return self._fail("bad-format", "unexpected element")
        if element.ns == ns.STREAMS and element.tag == "error":
            self.state = "closed"
            return [Close()]
        if element.ns == ns.TLS and element.tag == "starttls":
            return self._starttls()
        if element.ns == DIALBACK:
            return self._dialback(element)
        if element.ns == BIDI and element.tag == "bidi":
            if self.config.bidi and not self.authenticated:
                self.bidi = True
            return []
        if element.ns == ns.SASL:
            return self._sasl(element)
        if element.tag in STANZA_KINDS and element.ns in (ns.SERVER, ns.CLIENT):
            return self._stanza(element)
        return self._fail("unsupported-stanza-type", f"unexpected element {element.tag}")

    def stream_closed(self) -> list[Action]:
        self.state = "closed"
        return [Close()]

    def error_header(self) -> list[Action]:
        return [] if self.header_sent else [self._header()]

    def tls_started(self) -> list[Action]:
        self._tls_pending = False
        self.secure = True
        self.can_starttls = False
        return []

    def tls_failed(self) -> list[Action]:
        self._tls_pending = False
        self.state = "closed"
        return [Close(graceful=False)]

    def key_verified(self, target: str, sender: str, result: str) -> list[Action]:
        """The Authoritative Server's answer to a `VerifyKey`: "valid", "invalid" or the
        stanza error condition met while asking it (XEP-0220 §2.4)."""
        if (target, sender) not in self.pending or self.state == "closed":
            return []
        self.pending.discard((target, sender))
        if result == "valid":
            self.pairs.add((target, sender))
            return [
                Send(_db("result", target, sender, type="valid")),
                PairAuthenticated(target, sender),
            ]
        if result == "invalid":
            # XEP-0220 §2.2.1: with other valid pairs, <forbidden/> keeps them; else the
            # result is 'invalid' and the stream closes.
            if self.pairs:
                return [Send(_db_error("result", target, sender, "forbidden"))]
            self.state = "closed"
            return [Send(_db("result", target, sender, type="invalid")), Close()]
        return [Send(_db_error("result", target, sender, result))]

    # ---- output helpers -----------------------------------------------------------------
    def _header(self) -> SendHeader:
        if not self.stream_id:
            self.stream_id = secrets.token_urlsafe(12)
        attrs = {"from": self.local_domain or self.config.default_host, "id": self.stream_id}
        if self.remote_domain:
            attrs["to"] = self.remote_domain
        attrs["version"] = "1.0"
        self.header_sent = True
        return SendHeader(attrs)

    def _fail(self, condition: str, text: str = "") -> list[Action]:
        actions = self.error_header()
        self.state = "closed"
        return [*actions, StreamError(condition, text)]

    def _certificate_refused(self, problem: str) -> list[Action]:
        """`require_valid_certs`: an untrusted peer is refused with <not-authorized/>
        (what Prosody sends with s2s_secure_auth; RFC 6120 §4.9.3.12)."""
        return self._fail("not-authorized", f"Your server's certificate {problem}")

    def _features(self) -> Element:
        """RFC 6120 §4.3.2; XEP-0220 §2.5.2; XEP-0288 §2.1 (before and after TLS)."""
        features = Element("features", ns.STREAMS)
        config = self.config
        if self.can_starttls and not self.secure:
            starttls = features.add("starttls", ns.TLS)
            if config.tls_required:
                starttls.add("required")
        if self.secure or not config.tls_required:
            if self.certificate_domains and self.external_domain is None:
                mechanisms = features.add("mechanisms", ns.SASL)
                mechanisms.add("mechanism", text="EXTERNAL")
            if config.dialback:
                features.add("dialback", DIALBACK_FEATURE).add("errors")
        if config.bidi:
            features.add("bidi", BIDI_FEATURE)
        return features

    # ---- STARTTLS (RFC 6120 §5.4.2) -------------------------------------------------------
    def _starttls(self) -> list[Action]:
        if not self.can_starttls or self.secure:
            self.state = "closed"
            return [Send(Element("failure", ns.TLS)), Close()]
        self.state = "wait-restart"
        self._tls_pending = True
        return [Send(Element("proceed", ns.TLS)), ResetStream(), StartTLS()]

    # ---- SASL EXTERNAL (XEP-0178 §4), for the certificate helper -------------------------
    def _sasl(self, element: Element) -> list[Action]:
        """XEP-0178 §4: EXTERNAL with the authorization identity empty or a domain the
        certificate proves (`certificate_domains`, set by the driver)."""
        if element.tag != "auth" or element.get("mechanism") != "EXTERNAL":
            return [Send(_sasl_failure("invalid-mechanism"))]
        if not self.certificate_domains or self.external_domain is not None:
            return [Send(_sasl_failure("not-authorized"))]
        text = element.text.strip()
        try:
            authzid = (
                base64.b64decode(text, validate=True).decode() if text not in ("", "=") else ""
            )
        except (binascii.Error, ValueError):
            return [Send(_sasl_failure("incorrect-encoding"))]
        domain = _domain(authzid) if authzid else self.remote_domain
        if domain is None or domain not in self.certificate_domains:
            return [Send(_sasl_failure("not-authorized"))]
        if not self.config.domain_allowed(domain):
            return [Send(_sasl_failure("not-authorized"))]
        self.external_domain = domain
        self.remote_domain = domain
        self.state = "wait-restart"
        assert self.local_domain is not None
        return [
            ResetStream(),
            Send(Element("success", ns.SASL)),
            PairAuthenticated(self.local_domain, domain, "external"),
        ]

    # ---- dialback (XEP-0220 §2.2) ---------------------------------------------------------
    def _dialback(self, element: Element) -> list[Action]:
        if element.tag == "result" and not element.get("type"):
            return self._result_request(element)
        if element.tag == "verify" and not element.get("type"):
            return self._verify_request(element)
        # XEP-0220 §4.1 "Unsolicited Dialback": answers nobody asked for on this stream
        # are ignored.
        return []

    def _result_request(self, element: Element) -> list[Action]:
        """XEP-0220 §2.2.1: the Initiating Server asks to send from 'from' to 'to'."""
        sender = _domain(element.get("from"))
        target = _domain(element.get("to"))
        if sender is None:
            return self._fail("invalid-from", "the 'from' of <db:result/> is not a domain")
        if target is None:
            return self._fail("improper-addressing", "the 'to' of <db:result/> is not a domain")
        if not self.config.is_local(target):
            # XEP-0220 §2.4: item-not-found, from the target named for identification.
            return [Send(_db_error("result", target, sender, "item-not-found"))]
        if self.config.is_local(sender):
            return self._fail("invalid-from", "that is one of our own domains")
        if self.config.tls_required and not self.secure:
            return [Send(_db_error("result", target, sender, "policy-violation"))]
        if not self.config.dialback:
            return [Send(_db_error("result", target, sender, "not-authorized"))]
        if not self.config.domain_allowed(sender):
            return [Send(_db_error("result", target, sender, "not-allowed"))]
        if (target, sender) in self.pairs:
            return [Send(_db("result", target, sender, type="valid"))]
        if (target, sender) in self.pending:
            return []
        key = element.text.strip()
        if not key:
            return [Send(_db_error("result", target, sender, "not-acceptable"))]
        problem = self.certificate_problem(sender) if self.secure else "was not presented"
        if problem is None:
            # XEP-0344 §2.4: a certificate trusted for the sender makes the call to the
            # Authoritative Server unnecessary (what Prosody does too).
            self.pairs.add((target, sender))
            return [
                Send(_db("result", target, sender, type="valid")),
                PairAuthenticated(target, sender, "dialback+cert"),
            ]
        if self.config.require_valid_certs:
            return self._certificate_refused(problem)
        self.pending.add((target, sender))
        return [VerifyKey(target, sender, self.stream_id, key)]

    def _verify_request(self, element: Element) -> list[Action]:
        """XEP-0220 §2.2.2: as the Authoritative Server, check a key from our secret."""
        receiving = _domain(element.get("from"))
        originating = _domain(element.get("to"))
        stream_id = element.get("id") or ""
        if receiving is None or originating is None or not stream_id:
            return self._fail("improper-addressing", "<db:verify/> needs 'from', 'to' and 'id'")
        if not self.config.is_local(originating):
            return [
                Send(_db_error("verify", originating, receiving, "item-not-found", id=stream_id))
            ]
        expected = dialback_key(self.config.secret, receiving, originating, stream_id)
        valid = hmac.compare_digest(expected.encode(), element.text.strip().encode())
        kind = "valid" if valid else "invalid"
        return [Send(_db("verify", originating, receiving, type=kind, id=stream_id))]

    # ---- stanzas (RFC 6120 §4.9.3.9, §4.9.3.14; XEP-0220 §2.2.1) --------------------------
    def _stanza(self, stanza: Element) -> list[Action]:
        if not self.authenticated:
            return self._fail("not-authorized", "authenticate the domain pair first")
        sender_text, to_text = stanza.get("from"), stanza.get("to")
        if not sender_text or not to_text:
            return self._fail("improper-addressing", "stanzas need 'from' and 'to'")
        try:
            sender = JID.parse(sender_text)
            to = JID.parse(to_text)
        except InvalidJID:
            return self._fail("improper-addressing", "invalid 'from' or 'to'")
        if sender.domain not in self.remote_domains():
            return self._fail("invalid-from", f"{sender.domain} is not authenticated here")
        if not self.config.is_local(to.domain):
            return self._fail("host-unknown", f"this server does not serve {to.domain}")
        if (to.domain, sender.domain) not in self.pairs and self.external_domain != sender.domain:
            return self._fail(
                "improper-addressing", f"{sender.domain} -> {to.domain} is not authenticated"
            )
        stanza.attrs["from"] = str(sender)
        stanza.attrs["to"] = str(to)
        return [Stanza(requalify(stanza))]


# ---- the initiating side -----------------------------------------------------------------
class OutgoingNegotiation:
    """One outgoing server stream to `remote`, opened for `local` (XEP-0220 §2.1).

    `state`: start -> wait-header -> wait-features -> (wait-proceed -> wait-tls ->
    wait-header -> wait-features) -> ready (dialback requests and answers) -> closed.
    """

    def __init__(
        self,
        config: S2SConfig,
        local: str,
        remote: str,
        *,
        secure: bool = False,
        can_starttls: bool = True,
    ) -> None:
        self.config = config
        self.local = local
        self.remote = remote
        self.secure = secure
        self.can_starttls = can_starttls
        self.state = "start"
        #: The stream id the Receiving Server gave (the dialback key is bound to it).
        self.stream_id = ""
        self.bidi = False
        #: The peer offers dialback with error handling (XEP-0220 §2.5.2).
        self.dialback_errors = False
        self.peer_dialback = False
        #: Authenticated sender domains (ours) to `remote`.
        self.pairs: set[str] = set()
        #: Sender domains whose <db:result/> is out, and those waiting for `ready`.
        self.pending: set[str] = set()
        self._wanted: list[str] = []
        #: Verification requests waiting for `ready`, and those sent: (local, id).
        self._verify_queue: list[tuple[str, str, str]] = []
        self._verifying: set[tuple[str, str]] = set()
        self._tls_pending = False
        #: Our certificate is valid for `local` (RFC 6125): SASL EXTERNAL is tried when
        #: the peer offers it (XEP-0178 §4). Set by the driver.
        self.use_external = False
        #: EXTERNAL succeeded for `local`: the restart's features make the pair ready.
        self.external_done = False
        self._external_tried = False

    @property
    def waiting(self) -> str | None:
        return "tls" if self._tls_pending else None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> list[Action]:
        """Open the stream (RFC 6120 §4.7.1): from our domain, to the peer's."""
        self.state = "wait-header"
        return [SendHeader({"from": self.local, "to": self.remote, "version": "1.0"})]

    def request_pair(self, local: str) -> list[Action]:
        """Ask to send from `local` to `remote` on this stream (XEP-0220 §2.1.1; a second
        sender domain is multiplexed, §2.6.1)."""
        if local in self.pairs or local in self.pending or self.state == "closed":
            return []
        if self.state != "ready":
            if local not in self._wanted:
                self._wanted.append(local)
            return []
        self.pending.add(local)
        key = dialback_key(self.config.secret, self.remote, local, self.stream_id)
        return [Send(_db("result", local, self.remote, text=key))]

    def verify_key(self, local: str, stream_id: str, key: str) -> list[Action]:
        """Ask the peer, as Authoritative Server for `remote`, whether `key` is valid for
        the stream `stream_id` it opened to our `local` (XEP-0220 §2.1.2)."""
        if self.state == "closed":
            return [KeyVerified(local, self.remote, stream_id, "remote-server-not-found")]
        if self.state != "ready":
            self._verify_queue.append((local, stream_id, key))
            return []
        self._verifying.add((local, stream_id))
        return [Send(_db("verify", local, self.remote, id=stream_id, text=key))]

    # ---- input ------------------------------------------------------------------------
    def stream_opened(self, header: StreamHeader) -> list[Action]:
        if self.state != "wait-header":
            return self._fail("bad-format", "unexpected stream header")
        problem = _header_checks(header)
        if problem is not None:
            return self._fail(problem.condition, problem.text)
        if not _version_ok(header):
            return self._fail("unsupported-version", "XMPP 1.0 is required")
        stream_id = header.attrs.get("id") or ""
        if not stream_id:
            return self._fail("invalid-id", "the stream header has no id")
        self.stream_id = stream_id
        self.peer_dialback = DIALBACK in header.namespaces.values()
        self.state = "wait-features"
        return []

    def element(self, element: Element) -> list[Action]:
        if self._tls_pending or self.state == "closed":
            return []
        if element.ns == ns.STREAMS and element.tag == "error":
            condition = next((c.tag for c in element.elements if c.tag != "text"), "")
            self.state = "closed"
            return [LinkFailed(_bounce_for(condition), f"stream error {condition}"), Close()]
        if self.state == "wait-features":
            if element.ns == ns.STREAMS and element.tag == "features":
                return self._features(element)
            return self._fail("bad-format", "expected stream features")
        if self.state == "wait-sasl":
            if element.ns == ns.SASL:
                return self._sasl_answer(element)
            return self._fail("bad-format", "expected a SASL answer")
        if self.state == "wait-proceed":
            if element.ns == ns.TLS and element.tag == "proceed":
                self.state = "wait-tls"
                self._tls_pending = True
                return [ResetStream(), StartTLS()]
            self.state = "closed"
            return [LinkFailed("remote-server-not-found", "TLS refused by the peer"), Close()]
        if self.state == "ready":
            if element.ns == DIALBACK:
                return self._dialback_answer(element)
            if element.tag in STANZA_KINDS and element.ns in (ns.SERVER, ns.CLIENT):
                return self._stanza(element)
            return []
        return self._fail("bad-format", "unexpected element")

    def stream_closed(self) -> list[Action]:
        self.state = "closed"
        return [Close()]

    def tls_started(self) -> list[Action]:
        self._tls_pending = False
        self.secure = True
        self.state = "wait-header"
        return [SendHeader({"from": self.local, "to": self.remote, "version": "1.0"})]

    def certificate_refused(self, text: str) -> list[Action]:
        """`require_valid_certs`: the peer's certificate is not trusted for `remote`
        (RFC 6120 §13.7.2.1): nothing may be sent; the stream ends with <not-authorized/>
        (as Prosody does: the peer's operator learns why)."""
        self.state = "closed"
        return [
            LinkFailed("remote-server-not-found", text),
            StreamError("not-authorized", text),
        ]

    def tls_failed(self) -> list[Action]:
        self._tls_pending = False
        self.state = "closed"
        return [LinkFailed("remote-server-not-found", "TLS handshake failed"), Close(False)]

    # ---- helpers --------------------------------------------------------------------------
    def _fail(self, condition: str, text: str = "") -> list[Action]:
        self.state = "closed"
        return [
            LinkFailed("remote-server-not-found", text or condition),
            StreamError(condition, text),
        ]

    def _features(self, features: Element) -> list[Action]:
        """RFC 6120 §4.3.2: TLS first; then XEP-0288 bidi, then authentication."""
        starttls = features.find("starttls", ns.TLS)
        if not self.secure:
            if starttls is not None and self.can_starttls:
                self.state = "wait-proceed"
                return [Send(Element("starttls", ns.TLS))]
            if self.config.tls_required:
                self.state = "closed"
                return [LinkFailed("remote-server-not-found", "the peer offers no TLS"), Close()]
        actions: list[Action] = []
        if (
            self.config.bidi
            and not self.external_done
            and features.find("bidi", BIDI_FEATURE) is not None
        ):
            self.bidi = True
            actions.append(Send(Element("bidi", BIDI)))
        self.dialback_errors = features.find("dialback", DIALBACK_FEATURE) is not None
        if self.external_done:
            # XEP-0178 §4 step 11: the features after the restart; `local` is ours.
            return actions + self._become_ready(
                [PairAuthenticated(self.local, self.remote, "external")]
            )
        mechanisms = features.find("mechanisms", ns.SASL)
        offered = (
            {m.text.strip() for m in mechanisms.elements if m.tag == "mechanism"}
            if mechanisms is not None
            else set()
        )
        if self.secure and self.use_external and not self._external_tried and "EXTERNAL" in offered:
            # XEP-0178 §4 step 8: the authorization identity is our domain (SHOULD, "for
            # backward compatibility").
            self._external_tried = True
            self.state = "wait-sasl"
            authzid = base64.b64encode(self.local.encode()).decode()
            auth = Element("auth", ns.SASL, {"mechanism": "EXTERNAL"}, text=authzid)
            return [*actions, Send(auth)]
        return actions + self._dialback_or_fail()

    def _dialback_or_fail(self) -> list[Action]:
        if not self.config.dialback or not (self.dialback_errors or self.peer_dialback):
            self.state = "closed"
            return [LinkFailed("remote-server-not-found", "no common authentication"), Close()]
        return self._become_ready([])

    def _become_ready(self, actions: list[Action]) -> list[Action]:
        self.state = "ready"
        if self.external_done:
            self.pairs.add(self.local)
            self.pending.discard(self.local)
            self._wanted = [lo for lo in self._wanted if lo != self.local]
        actions.append(ReadyForDialback())
        wanted, self._wanted = self._wanted, []
        for local in wanted:
            actions += self.request_pair(local)
        queued, self._verify_queue = self._verify_queue, []
        for local, stream_id, key in queued:
            actions += self.verify_key(local, stream_id, key)
        return actions

    def _sasl_answer(self, element: Element) -> list[Action]:
        """XEP-0178 §4 steps 9-10: <success/>: restart the stream (RFC 6120 §6.4.6);
        <failure/>: dialback on this stream when both sides allow it, else give up."""
        if element.tag == "success":
            self.external_done = True
            self.state = "wait-header"
            return [
                ResetStream(),
                SendHeader({"from": self.local, "to": self.remote, "version": "1.0"}),
            ]
        if element.tag == "failure":
            condition = next((c.tag for c in element.elements if c.tag != "text"), "")
            actions = self._dialback_or_fail()
            if self.state == "closed":
                return [
                    LinkFailed("remote-server-not-found", f"SASL EXTERNAL failed: {condition}"),
                    StreamError("not-authorized", "no common authentication"),
                ]
            return actions
        return self._fail("bad-format", "unexpected SASL element")

    def _dialback_answer(self, element: Element) -> list[Action]:
        kind = element.get("type")
        local = _domain(element.get("to"))
        remote = _domain(element.get("from"))
        if local is None or remote != self.remote:
            return []
        if element.tag == "result":
            if local not in self.pending:
                return []  # XEP-0220 §4.1: unsolicited
            self.pending.discard(local)
            if kind == "valid":
                self.pairs.add(local)
                return [PairAuthenticated(local, self.remote)]
            if kind == "invalid":
                return [PairRejected(local, self.remote, "remote-server-not-found", "invalid key")]
            condition = _error_condition(element)
            # XEP-0220 §2.4: queued stanzas go back with remote-server-timeout.
            return [PairRejected(local, self.remote, "remote-server-timeout", condition)]
        if element.tag == "verify":
            stream_id = element.get("id") or ""
            if (local, stream_id) not in self._verifying:
                return []
            self._verifying.discard((local, stream_id))
            result = kind if kind in ("valid", "invalid") else _error_condition(element)
            return [KeyVerified(local, self.remote, stream_id, result)]
        return []

    def _stanza(self, stanza: Element) -> list[Action]:
        """XEP-0288 §2.2: with bidi, the peer sends from `remote` to an authenticated
        sender domain of ours."""
        if not self.bidi:
            return self._fail("unsupported-stanza-type", "this stream is not bidirectional")
        sender_text, to_text = stanza.get("from"), stanza.get("to")
        if not sender_text or not to_text:
            return self._fail("improper-addressing", "stanzas need 'from' and 'to'")
        try:
            sender = JID.parse(sender_text)
            to = JID.parse(to_text)
        except InvalidJID:
            return self._fail("improper-addressing", "invalid 'from' or 'to'")
        if sender.domain != self.remote:
            return self._fail("invalid-from", f"{sender.domain} is not authenticated here")
        if to.domain not in self.pairs:
            return self._fail("improper-addressing", f"{to.domain} is not authenticated here")
        stanza.attrs["from"] = str(sender)
        stanza.attrs["to"] = str(to)
        return [Stanza(requalify(stanza))]

    def pending_verifications(self) -> list[tuple[str, str]]:
        """(local, stream id) of verification requests not answered (to fail them when
        the stream ends)."""
        return [*self._verifying, *((lo, sid) for lo, sid, _key in self._verify_queue)]


def _bounce_for(stream_condition: str) -> str:
    """The stanza error for what is queued when the peer ends the stream with an error."""
    if stream_condition in ("connection-timeout", "remote-connection-failed"):
        return "remote-server-timeout"
    return "remote-server-not-found"


def _sasl_failure(condition: str) -> Element:
    failure = Element("failure", ns.SASL)
    failure.add(condition)
    return failure
