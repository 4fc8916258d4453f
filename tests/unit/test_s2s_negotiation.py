"""Server-to-server negotiation (RFC 6120, XEP-0220 dialback, XEP-0288 bidi) without a
socket: the incoming and outgoing machines are fed each other's output (elements are
serialized and parsed again, as on the wire), and the tests check the actions."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dovecote.stream.s2s_negotiation import (
    BIDI,
    BIDI_FEATURE,
    DIALBACK,
    DIALBACK_FEATURE,
    Action,
    Close,
    IncomingNegotiation,
    KeyVerified,
    LinkFailed,
    OutgoingNegotiation,
    PairAuthenticated,
    PairRejected,
    ReadyForDialback,
    ResetStream,
    S2SConfig,
    Send,
    SendHeader,
    Stanza,
    StartTLS,
    StreamError,
    VerifyKey,
    dialback_key,
)
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import ElementReceived, StreamHeader, StreamParser

A, A2, B = "a.example", "a2.example", "b.example"
SECRET_A = "secret-of-a-0123456789"
SECRET_B = "secret-of-b-0123456789"


def config(domains: set[str], secret: str, **kwargs: object) -> S2SConfig:
    return S2SConfig(
        is_local=domains.__contains__, default_host=sorted(domains)[0], secret=secret, **kwargs
    )  # type: ignore[arg-type]


def server_header(attrs: dict[str, str], dialback: bool = True) -> StreamHeader:
    namespaces = {"": ns.SERVER, "stream": ns.STREAMS}
    if dialback:
        namespaces["db"] = DIALBACK
    return StreamHeader("stream", ns.STREAMS, "stream", dict(attrs), namespaces)


def wire(element: Element) -> Element:
    """Serialize as the s2s transport does and parse back (jabber:server on the wire)."""
    parser = StreamParser()
    data = (
        f"<stream:stream xmlns='{ns.SERVER}' xmlns:stream='{ns.STREAMS}' xmlns:db='{DIALBACK}'>"
        + serialize(element, ns.CLIENT, {ns.STREAMS: "stream", DIALBACK: "db"})
    )
    events = parser.feed(data.encode())
    received = [e for e in events if isinstance(e, ElementReceived)]
    assert len(received) == 1
    return received[0].element


def sent(actions: list[Action]) -> list[Element]:
    return [a.element for a in actions if isinstance(a, Send)]


def only(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


@dataclass
class Pair:
    """An outgoing machine (on A) and the incoming machine (on B) it talks to, both past
    TLS; `verify` stands for B asking A (the Authoritative Server) about a key."""

    out: OutgoingNegotiation
    inc: IncomingNegotiation
    authoritative: IncomingNegotiation
    log: list[Action] = field(default_factory=list)

    def to_incoming(self, actions: list[Action]) -> list[Action]:
        """Feed what the outgoing side sent to the incoming side; return its actions."""
        answers: list[Action] = []
        for action in actions:
            if isinstance(action, SendHeader):
                answers += self.inc.stream_opened(server_header(action.attrs))
            elif isinstance(action, Send):
                answers += self.inc.element(wire(action.element))
        self.log += answers
        return answers

    def to_outgoing(self, actions: list[Action]) -> list[Action]:
        answers: list[Action] = []
        for action in actions:
            if isinstance(action, SendHeader):
                answers += self.out.stream_opened(server_header(action.attrs))
            elif isinstance(action, Send):
                answers += self.out.element(wire(action.element))
        return answers

    def verify(self, request: VerifyKey) -> str:
        """B asks A's authoritative side with <db:verify/> (XEP-0220 §2.1.2)."""
        verify = Element(
            "verify",
            DIALBACK,
            {"from": request.target, "to": request.sender, "id": request.stream_id},
            text=request.key,
        )
        (answer,) = sent(self.authoritative.element(wire(verify)))
        assert answer.attrs["id"] == request.stream_id
        return answer.attrs["type"]


def secure_pair(**incoming: object) -> Pair:
    """A opens a stream to B, already over TLS (direct TLS), features read."""
    out = OutgoingNegotiation(config({A, A2}, SECRET_A), A, B, secure=True)
    inc = IncomingNegotiation(config({B}, SECRET_B, **incoming), secure=True)  # type: ignore[arg-type]
    authoritative = IncomingNegotiation(config({A, A2}, SECRET_A), secure=True)
    authoritative.stream_opened(server_header({"from": B, "to": A, "version": "1.0"}))
    pair = Pair(out, inc, authoritative)
    answers = pair.to_incoming(out.start())
    assert out.state == "wait-header"
    more = pair.to_outgoing(answers)
    assert out.ready
    assert only(more, ReadyForDialback)
    pair.to_incoming(more)
    return pair


def dialback(pair: Pair, local: str) -> list[Action]:
    """Run dialback for `local` -> B; the outgoing side's actions at the end."""
    requests = pair.to_incoming(pair.out.request_pair(local))
    (request,) = only(requests, VerifyKey)
    answers = pair.inc.key_verified(request.target, request.sender, pair.verify(request))
    return pair.to_outgoing(answers)


def test_dialback_key_matches_the_xep_example() -> None:
    # XEP-0220 §2.2.2 (Example 5/13): the key for capulet.example -> montague.example.
    key = dialback_key("d14lb4ck43v3r", "capulet.example", "montague.example", "417GAF25")
    assert key == "225cc5aa6a071133249d25fef42ae516fc7a86c523aa1c6980a7f73e784c972d"


def test_incoming_header_and_features_before_and_after_tls() -> None:
    inc = IncomingNegotiation(config({B}, SECRET_B), can_starttls=True)
    actions = inc.stream_opened(server_header({"from": A, "to": B, "version": "1.0"}))
    header = actions[0]
    assert isinstance(header, SendHeader)
    assert header.attrs["from"] == B and header.attrs["to"] == A and header.attrs["id"]
    (features,) = sent(actions)
    starttls = features.find("starttls", ns.TLS)
    assert starttls is not None and starttls.find("required") is not None
    # RFC 6120 §5.3.1: nothing to authenticate with before TLS when it is required.
    assert features.find("dialback", DIALBACK_FEATURE) is None
    assert features.find("bidi", BIDI_FEATURE) is not None
    actions = inc.element(Element("starttls", ns.TLS))
    assert [type(a) for a in actions] == [Send, ResetStream, StartTLS]
    assert inc.waiting == "tls"
    assert inc.tls_started() == []
    actions = inc.stream_opened(server_header({"from": A, "to": B, "version": "1.0"}))
    (features,) = sent(actions)
    assert features.find("starttls", ns.TLS) is None
    dialback_feature = features.find("dialback", DIALBACK_FEATURE)
    assert dialback_feature is not None and dialback_feature.find("errors") is not None
    # No certificate proven: no SASL EXTERNAL offered.
    assert features.find("mechanisms", ns.SASL) is None


@pytest.mark.parametrize(
    ("attrs", "namespaces", "condition"),
    [
        ({"to": "c.example", "version": "1.0"}, None, "host-unknown"),
        ({"to": B, "from": B, "version": "1.0"}, None, "invalid-from"),
        ({"to": B, "version": "1.0"}, {"": ns.CLIENT, "stream": ns.STREAMS}, "invalid-namespace"),
        ({"to": B}, None, "unsupported-version"),
    ],
)
def test_incoming_header_errors(
    attrs: dict[str, str], namespaces: dict[str, str] | None, condition: str
) -> None:
    inc = IncomingNegotiation(config({B}, SECRET_B), secure=True)
    header = server_header(attrs)
    if namespaces is not None:
        header = StreamHeader("stream", ns.STREAMS, "stream", attrs, namespaces)
    actions = inc.stream_opened(header)
    assert isinstance(actions[0], SendHeader)
    assert only(actions, StreamError) == [StreamError(condition, actions[-1].text)]  # type: ignore[union-attr]
    assert inc.state == "closed"


def test_blocked_domain_is_refused_at_the_header() -> None:
    inc = IncomingNegotiation(config({B}, SECRET_B, domain_allowed=lambda d: d != A), secure=True)
    actions = inc.stream_opened(server_header({"from": A, "to": B, "version": "1.0"}))
    assert [a.condition for a in only(actions, StreamError)] == ["policy-violation"]  # type: ignore[attr-defined]


def test_dialback_valid_then_stanzas_checked() -> None:
    pair = secure_pair()
    actions = dialback(pair, A)
    assert actions == [PairAuthenticated(A, B)]
    assert pair.inc.pairs == {(B, A)}
    # A stanza on the authenticated pair comes out re-qualified as jabber:client.
    message = Element("message", ns.CLIENT, {"from": f"alice@{A}/r", "to": f"bob@{B}"})
    message.add("body", text="hi")
    (stanza,) = pair.inc.element(wire(message))
    assert isinstance(stanza, Stanza)
    assert stanza.element.ns == ns.CLIENT
    assert stanza.element.find("body", ns.CLIENT) is not None
    # 'from' outside the authenticated domains: invalid-from (RFC 6120 §4.9.3.9).
    forged = Element("message", ns.CLIENT, {"from": "eve@evil.example", "to": f"bob@{B}"})
    actions = pair.inc.element(wire(forged))
    assert [a.condition for a in only(actions, StreamError)] == ["invalid-from"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("attrs", "condition"),
    [
        ({"to": f"bob@{B}"}, "improper-addressing"),
        ({"from": f"alice@{A}", "to": "x@c.example"}, "host-unknown"),
    ],
)
def test_stanza_addressing_errors(attrs: dict[str, str], condition: str) -> None:
    pair = secure_pair()
    dialback(pair, A)
    actions = pair.inc.element(wire(Element("message", ns.CLIENT, attrs)))
    assert [a.condition for a in only(actions, StreamError)] == [condition]  # type: ignore[attr-defined]


def test_stanza_before_authentication_is_not_authorized() -> None:
    pair = secure_pair()
    message = Element("message", ns.CLIENT, {"from": f"alice@{A}", "to": f"bob@{B}"})
    actions = pair.inc.element(wire(message))
    assert [a.condition for a in only(actions, StreamError)] == ["not-authorized"]  # type: ignore[attr-defined]


def test_wrong_key_is_invalid_and_closes_a_stream_without_other_pairs() -> None:
    pair = secure_pair()
    request = Element("result", DIALBACK, {"from": A, "to": B}, text="0" * 64)
    (verify_request,) = pair.inc.element(wire(request))
    assert isinstance(verify_request, VerifyKey)
    assert pair.verify(verify_request) == "invalid"
    actions = pair.inc.key_verified(B, A, "invalid")
    (answer,) = sent(actions)
    assert answer.attrs == {"from": B, "to": A, "type": "invalid"}
    assert isinstance(actions[-1], Close)


def test_piggybacking_second_domain_and_forbidden_after_a_valid_pair() -> None:
    """XEP-0220 §2.6.1 sender multiplexing; an invalid second pair keeps the first
    (§2.2.1: <forbidden/> instead of closing)."""
    pair = secure_pair()
    dialback(pair, A)
    assert dialback(pair, A2) == [PairAuthenticated(A2, B)]
    assert pair.inc.pairs == {(B, A), (B, A2)}
    assert pair.out.pairs == {A, A2}
    # A third domain whose key is rejected.
    request = Element("result", DIALBACK, {"from": "a3.example", "to": B}, text="bad")
    pair.inc.element(wire(request))
    actions = pair.inc.key_verified(B, "a3.example", "invalid")
    (answer,) = sent(actions)
    assert answer.attrs["type"] == "error"
    assert answer.find("error", ns.CLIENT).find("forbidden", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
    assert not only(actions, Close)
    assert pair.inc.state == "open"


def test_dialback_errors() -> None:
    """XEP-0220 §2.4: errors are per pair, the stream stays."""
    pair = secure_pair()
    # A target this server does not host: item-not-found.
    request = Element("result", DIALBACK, {"from": A, "to": "c.example"}, text="k")
    (answer,) = sent(pair.inc.element(wire(request)))
    assert answer.attrs["type"] == "error" and answer.attrs["from"] == "c.example"
    error = answer.find("error", ns.CLIENT)
    assert error is not None and error.find("item-not-found", ns.STANZA_ERRORS) is not None
    # The Authoritative Server could not be reached: the condition goes back.
    request = Element("result", DIALBACK, {"from": A, "to": B}, text="k")
    (verify_request,) = pair.inc.element(wire(request))
    assert isinstance(verify_request, VerifyKey)
    (answer,) = sent(pair.inc.key_verified(B, A, "remote-connection-failed"))
    condition = answer.find("error", ns.CLIENT).find("remote-connection-failed", ns.STANZA_ERRORS)  # type: ignore[union-attr]
    assert condition is not None
    # The outgoing side turns an error into a rejected pair (queued stanzas bounce).
    pair.out.pending.add(A)
    actions = pair.out.element(wire(answer))
    assert actions == [PairRejected(A, B, "remote-server-timeout", "remote-connection-failed")]
    assert pair.inc.state == "open"


def test_dialback_before_tls_is_refused_when_tls_is_required() -> None:
    inc = IncomingNegotiation(config({B}, SECRET_B), can_starttls=True)
    inc.stream_opened(server_header({"from": A, "to": B, "version": "1.0"}))
    request = Element("result", DIALBACK, {"from": A, "to": B}, text="k")
    (answer,) = sent(inc.element(wire(request)))
    assert answer.attrs["type"] == "error"
    assert answer.find("error", ns.CLIENT).find("policy-violation", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


def test_authoritative_verify_answers() -> None:
    auth = IncomingNegotiation(config({A}, SECRET_A), secure=True)
    auth.stream_opened(server_header({"from": B, "to": A, "version": "1.0"}))
    key = dialback_key(SECRET_A, B, A, "sid-1")
    request = Element("verify", DIALBACK, {"from": B, "to": A, "id": "sid-1"}, text=key)
    (answer,) = sent(auth.element(wire(request)))
    assert answer.attrs == {"from": A, "to": B, "type": "valid", "id": "sid-1"}
    request.attrs["id"] = "sid-2"
    (answer,) = sent(auth.element(wire(request)))
    assert answer.attrs["type"] == "invalid"
    request.attrs["to"] = "z.example"
    (answer,) = sent(auth.element(wire(request)))
    assert answer.attrs["type"] == "error"


def test_unsolicited_dialback_answers_are_ignored() -> None:
    """XEP-0220 §4.1: a 'valid' nobody asked for authenticates nothing."""
    pair = secure_pair()
    valid = Element("result", DIALBACK, {"from": B, "to": A, "type": "valid"})
    assert pair.out.element(wire(valid)) == []
    assert pair.out.pairs == set()
    assert pair.inc.element(wire(valid)) == []
    verify = Element("verify", DIALBACK, {"from": B, "to": A, "type": "valid", "id": "x"})
    assert pair.out.element(wire(verify)) == []


def test_outgoing_verification_request_and_answer() -> None:
    pair = secure_pair()
    actions = pair.out.verify_key(A, "their-stream", "k" * 64)
    (request,) = sent(actions)
    assert request.tag == "verify" and request.attrs["id"] == "their-stream"
    answer = Element(
        "verify", DIALBACK, {"from": B, "to": A, "type": "invalid", "id": "their-stream"}
    )
    assert pair.out.element(wire(answer)) == [KeyVerified(A, B, "their-stream", "invalid")]


def test_outgoing_starttls_then_restart() -> None:
    out = OutgoingNegotiation(config({A}, SECRET_A), A, B)
    out.start()
    assert (
        out.stream_opened(server_header({"from": B, "to": A, "id": "s1", "version": "1.0"})) == []
    )
    features = Element("features", ns.STREAMS)
    features.add("starttls", ns.TLS).add("required")
    (starttls,) = sent(out.element(features))
    assert starttls.tag == "starttls"
    actions = out.element(Element("proceed", ns.TLS))
    assert [type(a) for a in actions] == [ResetStream, StartTLS]
    (header,) = out.tls_started()
    assert isinstance(header, SendHeader) and header.attrs["to"] == B
    assert out.secure


def test_outgoing_refuses_a_peer_without_tls() -> None:
    out = OutgoingNegotiation(config({A}, SECRET_A), A, B)
    out.start()
    out.stream_opened(server_header({"from": B, "to": A, "id": "s1", "version": "1.0"}))
    features = Element("features", ns.STREAMS)
    features.add("dialback", DIALBACK_FEATURE).add("errors")
    actions = out.element(features)
    assert only(actions, LinkFailed) == [
        LinkFailed("remote-server-not-found", "the peer offers no TLS")
    ]
    out2 = OutgoingNegotiation(config({A}, SECRET_A), A, B)
    out2.start()
    out2.stream_opened(server_header({"from": B, "to": A, "id": "s1", "version": "1.0"}))
    features = Element("features", ns.STREAMS)
    features.add("starttls", ns.TLS)
    out2.element(features)
    actions = out2.element(Element("failure", ns.TLS))
    assert [a.condition for a in only(actions, LinkFailed)] == ["remote-server-not-found"]  # type: ignore[attr-defined]


def test_outgoing_stream_error_fails_the_link() -> None:
    pair = secure_pair()
    error = Element("error", ns.STREAMS)
    error.add("connection-timeout", ns.STREAM_ERRORS)
    actions = pair.out.element(error)
    assert actions[0] == LinkFailed("remote-server-timeout", "stream error connection-timeout")


def test_bidi_lets_the_receiving_server_send_back() -> None:
    """XEP-0288 §2.2: with bidi on, stanzas from B to A come back over A's stream."""
    pair = secure_pair()
    assert pair.out.bidi and pair.inc.bidi
    dialback(pair, A)
    back = Element("message", ns.CLIENT, {"from": f"bob@{B}/r", "to": f"alice@{A}"})
    (stanza,) = pair.out.element(wire(back))
    assert isinstance(stanza, Stanza)
    wrong = Element("message", ns.CLIENT, {"from": f"bob@{B}/r", "to": f"carol@{A2}"})
    actions = pair.out.element(wire(wrong))
    assert [a.condition for a in only(actions, StreamError)] == ["improper-addressing"]  # type: ignore[attr-defined]


def test_no_bidi_when_off() -> None:
    pair = secure_pair(bidi=False)
    assert not pair.out.bidi
    assert all(e.ns != BIDI for a in pair.log for e in ([a.element] if isinstance(a, Send) else []))


# ---- certificates: SASL EXTERNAL (XEP-0178) ------------------------------------------------
def sasl(actions: list[Action]) -> list[Element]:
    return [e for e in sent(actions) if e.ns == ns.SASL]


def first_child(element: Element) -> str:
    return next(iter(element.elements)).tag


def external_pair(
    valid_for: set[str], use_external: bool = True, **incoming: object
) -> tuple[Pair, list[Action]]:
    """A to B over TLS; B's driver says the certificate is good for `valid_for`."""
    out = OutgoingNegotiation(config({A, A2}, SECRET_A), A, B, secure=True)
    out.use_external = use_external
    inc = IncomingNegotiation(config({B}, SECRET_B, **incoming), secure=True)  # type: ignore[arg-type]
    inc.certificate_problem = lambda d: None if d in valid_for else "is self-signed"
    authoritative = IncomingNegotiation(config({A, A2}, SECRET_A), secure=True)
    authoritative.stream_opened(server_header({"from": B, "to": A, "version": "1.0"}))
    pair = Pair(out, inc, authoritative)
    return pair, pair.to_outgoing(pair.to_incoming(out.start()))


def test_external_offered_used_and_restarted() -> None:
    pair, actions = external_pair({A})
    # XEP-0178 §4 step 8: <auth mechanism='EXTERNAL'>, the authzid our domain.
    (auth,) = sasl(actions)
    assert (auth.tag, auth.attrs["mechanism"], auth.text) == ("auth", "EXTERNAL", "YS5leGFtcGxl")
    answers = pair.to_incoming(actions)
    assert [type(a) for a in answers] == [ResetStream, Send, PairAuthenticated]
    assert answers[2] == PairAuthenticated(B, A, "external")
    restart = pair.to_outgoing(answers)
    assert [type(a) for a in restart] == [ResetStream, SendHeader]
    # The features after the restart offer no SASL; the pair is ours without dialback.
    after = pair.to_outgoing(pair.to_incoming(restart))
    assert PairAuthenticated(A, B, "external") in after
    assert pair.out.ready and pair.out.pairs == {A}
    assert not sent(after)  # no <db:result/>, no second <bidi/>
    assert pair.out.bidi  # enabled before EXTERNAL
    # Stanzas from A flow; a second sender domain uses dialback on the same stream.
    message = Element("message", ns.CLIENT, {"from": f"x@{A}", "to": f"y@{B}"})
    (stanza,) = only(pair.to_incoming([Send(message)]), Stanza)
    assert stanza.element.attrs["from"] == f"x@{A}"
    result = dialback(pair, A2)
    assert PairAuthenticated(A2, B) in result


def test_external_not_offered_for_an_untrusted_certificate() -> None:
    pair, actions = external_pair(set())
    (features_answer,) = [a for a in actions if isinstance(a, ReadyForDialback)]
    assert features_answer == ReadyForDialback()
    assert pair.out.ready and not sasl(actions)  # straight to dialback


def test_external_failure_falls_back_to_dialback() -> None:
    """The peer offers EXTERNAL but refuses it (ejabberd does so for self-signed
    certificates): dialback on the same stream."""
    pair, actions = external_pair({A})
    pair.inc.certificate_domains = frozenset()  # it changed its mind
    pair.inc.certificate_problem = lambda _d: "is self-signed"
    answers = pair.to_incoming(actions)
    (failure,) = sasl(answers)
    assert failure.tag == "failure" and first_child(failure) == "not-authorized"
    more = pair.to_outgoing(answers)
    assert only(more, ReadyForDialback) and pair.out.ready
    assert PairAuthenticated(A, B) in dialback(pair, A)


def test_incoming_external_authzid_checks() -> None:
    pair, _actions = external_pair({A})
    for text, condition in (("Yy5leGFtcGxl", "not-authorized"), ("%%%", "incorrect-encoding")):
        auth = Element("auth", ns.SASL, {"mechanism": "EXTERNAL"}, text=text)
        (failure,) = sent(pair.inc.element(wire(auth)))
        assert first_child(failure) == condition
    plain = Element("auth", ns.SASL, {"mechanism": "PLAIN"})
    (failure,) = sent(pair.inc.element(wire(plain)))
    assert first_child(failure) == "invalid-mechanism"
    # "=": no authorization identity: the header's 'from' (XEP-0178 §3 note).
    auth = Element("auth", ns.SASL, {"mechanism": "EXTERNAL"}, text="=")
    assert PairAuthenticated(B, A, "external") in pair.inc.element(wire(auth))


def test_trusted_certificate_answers_dialback_without_verify() -> None:
    """XEP-0344 §2.4: no VerifyKey when the certificate is trusted for the sender."""
    pair, _actions = external_pair({A}, use_external=False)
    result = pair.to_incoming(pair.out.request_pair(A))
    assert not only(result, VerifyKey)
    assert PairAuthenticated(B, A, "dialback+cert") in result
    assert PairAuthenticated(A, B) in pair.to_outgoing(result)


def test_require_valid_certs_refuses_at_the_header_and_at_dialback() -> None:
    out = OutgoingNegotiation(config({A}, SECRET_A), A, B, secure=True)
    inc = IncomingNegotiation(config({B}, SECRET_B, require_valid_certs=True), secure=True)
    inc.certificate_problem = lambda _d: "is self-signed"
    actions = inc.stream_opened(server_header({"from": A, "to": B, "version": "1.0"}))
    (error,) = only(actions, StreamError)
    assert error == StreamError("not-authorized", "Your server's certificate is self-signed")
    # No 'from' on the header: refused at the first <db:result/>.
    inc = IncomingNegotiation(config({B}, SECRET_B, require_valid_certs=True), secure=True)
    inc.certificate_problem = lambda d: None if d == A2 else f"is not valid for {d}"
    inc.stream_opened(server_header({"to": B, "version": "1.0"}))
    key = dialback_key(SECRET_A, B, A, inc.stream_id)
    request = Element("result", DIALBACK, {"from": A, "to": B}, text=key)
    (error,) = only(inc.element(wire(request)), StreamError)
    assert error.condition == "not-authorized"
    assert out.state == "start"


def test_outgoing_certificate_refused() -> None:
    out = OutgoingNegotiation(config({A}, SECRET_A), A, B)
    out.start()
    actions = out.certificate_refused("Your server's certificate is self-signed")
    assert only(actions, LinkFailed)[0].condition == "remote-server-not-found"
    assert only(actions, StreamError)[0].condition == "not-authorized"
    assert out.state == "closed"
