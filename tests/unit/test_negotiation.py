"""Client stream negotiation (RFC 6120 §4-§7) driven without a socket, a loop or a clock:
`ClientNegotiation` gets parsed input and answers, and returns actions."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest
import scramp

from dovecote.core.throttle import AccountThrottle, AuthThrottle
from dovecote.jid import JID
from dovecote.storage.credentials import derive_credentials, verify_password
from dovecote.stream import sm
from dovecote.stream.errors import StanzaError
from dovecote.stream.negotiation import (
    MAX_SASL_ATTEMPTS,
    Action,
    Authenticated,
    Bind,
    Bound,
    ClientNegotiation,
    Close,
    Delay,
    Framing,
    LookupCredentials,
    NegotiationConfig,
    NegotiationMisuse,
    OfferElement,
    ResetStream,
    Resume,
    Send,
    SendHeader,
    StartTLS,
    StreamError,
    UnauthenticatedIQ,
    VerifyPassword,
)
from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, Element
from dovecote.xml.parser import StreamHeader

DOMAIN = "example.org"
USER = "juliet"
PASSWORD = "r0m3o-pässword"
ACCOUNTS = {USER: derive_credentials(PASSWORD)}
CB_NAME = "tls-server-end-point"
BINDINGS = {CB_NAME: hashlib.sha256(b"the server certificate").digest()}
REGISTER_FEATURE = Element("register", "http://jabber.org/features/iq-register")
ROSTER_VER = Element("ver", "urn:xmpp:features:rosterver")


def header(to: str | None = DOMAIN, **attrs: str) -> StreamHeader:
    """<stream:stream xmlns='jabber:client' xmlns:stream='...' to=... version='1.0'>"""
    values = {"version": "1.0", **attrs}
    if to is not None:
        values["to"] = to
    return StreamHeader(
        "stream", ns.STREAMS, "stream", values, {"": ns.CLIENT, "stream": ns.STREAMS}
    )


def machine(
    *,
    secure: bool = True,
    can_starttls: bool = False,
    tls_required: bool = False,
    allow_plain: bool = True,
    bindings: dict[str, bytes] | None = None,
    address_throttle: AuthThrottle | None = None,
    account_throttle: AccountThrottle | None = None,
    framing: Framing | None = None,
) -> ClientNegotiation:
    config = NegotiationConfig(
        hosts={DOMAIN, "other.example"},
        default_host=DOMAIN,
        tls_required=tls_required,
        allow_plain=allow_plain,
        sm_enabled=True,
        pre_auth_features=[REGISTER_FEATURE],
        stream_features=[ROSTER_VER],
        **({"framing": framing} if framing is not None else {}),
    )
    return ClientNegotiation(
        config,
        secure=secure,
        can_starttls=can_starttls,
        channel_bindings=BINDINGS if bindings is None and secure else bindings,
        peer_address="192.0.2.7",
        # Fresh bookkeeping per test; generous budgets unless a test sets its own.
        address_throttle=address_throttle or AuthThrottle(free_failures=100),
        account_throttle=account_throttle or AccountThrottle(free_failures=100),
    )


class Driver:
    """What C2SStream does with the actions, minus the I/O: requests are answered at
    once (credentials from ACCOUNTS, PBKDF2 inline, delays over immediately, binding
    accepted), and every action is recorded in order."""

    def __init__(self, negotiation: ClientNegotiation) -> None:
        self.m = negotiation
        self.bind_error: StanzaError | None = None
        self.resumed = True
        self.handler_takes = True

    def run(self, actions: list[Action]) -> list[Action]:
        done: list[Action] = []
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            done.append(action)
            more: list[Action] = []
            match action:
                case LookupCredentials(local, domain, hash_name):
                    assert domain == DOMAIN
                    more = self.m.credentials(ACCOUNTS.get(local, {}).get(hash_name))
                case VerifyPassword(password, credentials):
                    more = self.m.password_checked(verify_password(password, credentials))
                case Delay():
                    more = self.m.delay_over()
                case StartTLS():
                    more = self.m.tls_started(BINDINGS)
                case Bind():
                    more = self.m.bind_result(self.bind_error)
                case Resume():
                    more = self.m.resume_result(self.resumed)
                case UnauthenticatedIQ() | OfferElement():
                    more = self.m.handler_result(self.handler_takes)
            if more:
                assert not pending, "a request is the last action of its list"
                pending = list(more)
        return done

    def open(self) -> list[Action]:
        return self.run(self.m.stream_opened(header()))

    def element(self, element: Element) -> list[Action]:
        return self.run(self.m.element(element))


def sent(actions: list[Action]) -> list[Element]:
    return [a.element for a in actions if isinstance(a, Send)]


def stream_errors(actions: list[Action]) -> list[str]:
    return [a.condition for a in actions if isinstance(a, StreamError)]


def auth(mechanism: str, data: bytes | None) -> Element:
    text = None if data is None else (base64.b64encode(data).decode() or "=")
    return Element("auth", ns.SASL, {"mechanism": mechanism}, text=text)


def response(data: bytes) -> Element:
    return Element("response", ns.SASL, text=base64.b64encode(data).decode() or "=")


def sasl_condition(element: Element) -> str:
    assert element.ns == ns.SASL and element.tag == "failure", element
    return next(element.elements).tag


def plain(user: str = USER, password: str = PASSWORD) -> Element:
    return auth("PLAIN", f"\0{user}\0{password}".encode())


def authenticated_driver() -> Driver:
    driver = Driver(machine())
    driver.open()
    actions = driver.element(plain())
    assert isinstance(actions[-1], Authenticated)
    restart = driver.open()
    assert driver.m.state == "authenticated"
    assert [f.tag for f in sent(restart)[0].elements][:2] == ["bind", "session"]
    return driver


def bind_iq(resource: str | None = "balcony", iq_id: str = "b1") -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": iq_id})
    bind = iq.add("bind", ns.BIND)
    if resource is not None:
        bind.add("resource", text=resource)
    return iq


# ---- stream header (RFC 6120 §4.7) -------------------------------------------------
def test_header_answered_with_ours_and_the_features() -> None:
    m = machine(secure=False, can_starttls=True)
    actions = m.stream_opened(header(**{"from": "juliet@example.org", XML_LANG: "fr"}))
    opened, features = actions
    assert isinstance(opened, SendHeader)
    assert opened.attrs["from"] == DOMAIN
    assert opened.attrs["to"] == "juliet@example.org"  # RFC 6120 §4.7.2
    assert opened.attrs["version"] == "1.0"
    assert opened.attrs["id"] == m.stream_id and len(m.stream_id) >= 16
    assert m.lang == "fr" and m.state == "negotiating"
    assert isinstance(features, Send)
    children = [(c.ns, c.tag) for c in features.element.elements]
    assert children == [
        (ns.TLS, "starttls"),
        (ns.SASL, "mechanisms"),
        (REGISTER_FEATURE.ns, "register"),
    ]
    mechanisms = [c.text for c in features.element.find("mechanisms", ns.SASL).elements]  # type: ignore[union-attr]
    assert mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-1"]  # no PLAIN, no -PLUS in clear


def test_junk_from_is_not_echoed() -> None:
    opened = machine().stream_opened(header(**{"from": "a@b@c/" + "x" * 5000}))[0]
    assert isinstance(opened, SendHeader) and "to" not in opened.attrs


def _wrong_namespace() -> StreamHeader:
    h = header()
    h.ns = "urn:example:not-streams"
    return h


def _wrong_prefix() -> StreamHeader:
    h = header()
    h.prefix = "s"
    return h


def _wrong_content_namespace() -> StreamHeader:
    h = header()
    h.namespaces[""] = "jabber:server"
    return h


@pytest.mark.parametrize(
    ("opening", "condition"),
    [
        (_wrong_namespace, "invalid-namespace"),  # RFC 6120 §4.9.3.10
        (_wrong_prefix, "bad-namespace-prefix"),  # §4.9.3.2
        (_wrong_content_namespace, "invalid-namespace"),
        (lambda: header(to=None), "improper-addressing"),  # §4.9.3.7
        (lambda: header(to="exa mple.org"), "host-unknown"),  # §4.9.3.6
        (lambda: header(to="elsewhere.example"), "host-unknown"),
    ],
)
def test_header_errors(opening, condition: str) -> None:  # type: ignore[no-untyped-def]
    m = machine()
    actions = m.stream_opened(opening())
    # RFC 6120 §4.9.1.2: a header of ours first, so that the error can be sent.
    opened, error = actions
    assert isinstance(opened, SendHeader) and opened.attrs["from"] == DOMAIN
    assert error == StreamError(condition, error.text)
    assert m.state == "closed"


def test_unsupported_version_after_our_header() -> None:
    """RFC 6120 §4.7.5: our header says 1.0, then the error."""
    m = machine()
    opened, error = m.stream_opened(header(version="0.9"))
    assert isinstance(opened, SendHeader) and opened.attrs["version"] == "1.0"
    assert isinstance(error, StreamError) and error.condition == "unsupported-version"


def test_domain_may_not_change_on_restart() -> None:
    driver = Driver(machine())
    driver.open()
    driver.element(plain())
    actions = driver.m.stream_opened(header(to="other.example"))
    assert actions == [StreamError("host-unknown", actions[0].text)]  # type: ignore[union-attr]


def test_header_where_none_is_expected() -> None:
    m = machine()
    m.stream_opened(header())
    assert stream_errors(m.stream_opened(header())) == ["bad-format"]


def test_stream_close_is_answered() -> None:
    m = machine()
    m.stream_opened(header())
    assert m.stream_closed() == [Close()]
    assert m.state == "closed"


def test_error_header_for_errors_found_outside() -> None:
    m = machine()
    (opened,) = m.error_header()
    assert isinstance(opened, SendHeader) and opened.attrs["from"] == DOMAIN
    assert m.error_header() == []


def test_websocket_framing_reuses_the_machine() -> None:
    """RFC 7395 §3.3: <open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/> opens the
    stream; no prefix, jabber:client implied."""
    framing = Framing("urn:ietf:params:xml:ns:xmpp-framing", "open", None, None)
    m = machine(framing=framing)
    opening = StreamHeader("open", framing.ns, None, {"to": DOMAIN, "version": "1.0"}, {})
    opened, features = m.stream_opened(opening)
    assert isinstance(opened, SendHeader) and isinstance(features, Send)
    assert stream_errors(machine(framing=framing).stream_opened(header())) == ["invalid-namespace"]


# ---- STARTTLS (RFC 6120 §5) ------------------------------------------------------------
def test_starttls_required() -> None:
    driver = Driver(machine(secure=False, can_starttls=True, tls_required=True))
    (features,) = sent(driver.open())
    starttls = features.find("starttls", ns.TLS)
    assert starttls is not None and starttls.find("required") is not None
    assert features.find("mechanisms", ns.SASL) is None
    # RFC 6120 §5.3.1: SASL before TLS is refused, the stream stays.
    (failure,) = sent(driver.element(plain()))
    assert sasl_condition(failure) == "encryption-required"
    assert driver.m.state == "negotiating"
    actions = driver.element(Element("starttls", ns.TLS))
    assert [type(a) for a in actions] == [Send, ResetStream, StartTLS]
    assert actions[0].element.tag == "proceed"  # type: ignore[union-attr]
    assert driver.m.secure and driver.m.state == "wait-restart"
    (features,) = sent(driver.open())
    assert features.find("starttls", ns.TLS) is None
    mechanisms = [c.text for c in features.find("mechanisms", ns.SASL).elements]  # type: ignore[union-attr]
    assert mechanisms[:2] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]
    assert "PLAIN" in mechanisms
    cb = features.find("sasl-channel-binding", ns.SASL_CB)
    assert cb is not None and [c.get("type") for c in cb.elements] == [CB_NAME]


def test_starttls_not_offered_on_direct_tls() -> None:
    driver = Driver(machine(secure=True, can_starttls=True))
    (features,) = sent(driver.open())
    assert features.find("starttls", ns.TLS) is None
    actions = driver.element(Element("starttls", ns.TLS))
    assert [type(a) for a in actions] == [Send, Close]
    assert actions[0].element.tag == "failure"  # type: ignore[union-attr]
    assert driver.m.state == "closed"


def test_failed_handshake_drops_the_connection() -> None:
    m = machine(secure=False, can_starttls=True)
    m.stream_opened(header())
    assert isinstance(m.element(Element("starttls", ns.TLS))[-1], StartTLS)
    assert m.waiting == "tls"
    assert m.tls_failed() == [Close(graceful=False)]  # no clear text after <proceed/>


# ---- SASL (RFC 6120 §6) ---------------------------------------------------------------
def test_plain_success_then_bind_features() -> None:
    driver = Driver(machine())
    driver.open()
    actions = driver.element(plain())
    lookup, verify, reset, success, authenticated = actions
    assert lookup == LookupCredentials(USER, DOMAIN, "SHA-256")
    assert isinstance(verify, VerifyPassword) and PASSWORD not in repr(verify)
    assert isinstance(reset, ResetStream)  # before <success/> (RFC 6120 §6.4.6)
    assert isinstance(success, Send) and success.element.tag == "success"
    assert authenticated == Authenticated(USER)
    assert driver.m.local == USER and driver.m.state == "wait-restart"
    (features,) = sent(driver.open())
    assert [(c.ns, c.tag) for c in features.elements] == [
        (ns.BIND, "bind"),
        (ns.SESSION, "session"),
        (sm.NS, "sm"),
        (ROSTER_VER.ns, "ver"),
    ]


@pytest.mark.parametrize(
    ("mechanism", "binding"),
    [
        ("SCRAM-SHA-1", None),
        ("SCRAM-SHA-256", None),
        ("SCRAM-SHA-256-PLUS", (CB_NAME, BINDINGS[CB_NAME])),
    ],
)
def test_scram_success(mechanism: str, binding: tuple[str, bytes] | None) -> None:
    driver = Driver(machine())
    driver.open()
    client = scramp.ScramClient([mechanism], USER, PASSWORD, channel_binding=binding)
    actions = driver.element(auth(mechanism, client.get_client_first().encode()))
    family = mechanism.removeprefix("SCRAM-").removesuffix("-PLUS")
    assert actions[0] == LookupCredentials(USER, DOMAIN, family)
    (challenge,) = sent(actions)
    assert challenge.tag == "challenge"
    client.set_server_first(base64.b64decode(challenge.text).decode())
    actions = driver.element(response(client.get_client_final().encode()))
    (success,) = sent(actions)
    client.set_server_final(base64.b64decode(success.text).decode())  # raises if forged
    assert actions[-1] == Authenticated(USER)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_wrong_password(mechanism: str) -> None:
    driver = Driver(machine())
    driver.open()
    client = scramp.ScramClient([mechanism], USER, "not the password")
    (challenge,) = sent(driver.element(auth(mechanism, client.get_client_first().encode())))
    client.set_server_first(base64.b64decode(challenge.text).decode())
    (failure,) = sent(driver.element(response(client.get_client_final().encode())))
    assert sasl_condition(failure) == "not-authorized"
    assert driver.m.local is None and driver.m.sasl_failures == 1
    assert driver.m.state == "negotiating"  # the client may try again


def test_plain_wrong_password() -> None:
    driver = Driver(machine())
    driver.open()
    (failure,) = sent(driver.element(plain(password="wrong")))
    assert sasl_condition(failure) == "not-authorized"


def test_unknown_user_gets_a_decoy() -> None:
    """SCRAM: a salt and iteration count like a real account's, failure only at the
    proof; PLAIN: the same lookup and the same PBKDF2 against a decoy record."""
    driver = Driver(machine())
    driver.open()
    client = scramp.ScramClient(["SCRAM-SHA-256"], "nobody", PASSWORD)
    actions = driver.element(auth("SCRAM-SHA-256", client.get_client_first().encode()))
    assert actions[0] == LookupCredentials("nobody", DOMAIN, "SHA-256")
    (challenge,) = sent(actions)
    server_first = base64.b64decode(challenge.text).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    assert len(base64.b64decode(attrs["s"])) == len(ACCOUNTS[USER]["SHA-256"].salt)
    assert attrs["i"] == "4096"
    client.set_server_first(server_first)
    (failure,) = sent(driver.element(response(client.get_client_final().encode())))
    assert sasl_condition(failure) == "not-authorized"

    actions = driver.element(plain(user="nobody"))
    assert actions[0] == LookupCredentials("nobody", DOMAIN, "SHA-256")
    verify = actions[1]
    assert isinstance(verify, VerifyPassword)
    assert verify.credentials.iterations == 4096  # PBKDF2 as costly as for a real one
    # Even a decoy that matched could not let anyone in.
    m = machine()
    m.stream_opened(header())
    m.element(plain(user="nobody"))
    m.credentials(None)
    (failure,) = sent(m.password_checked(True))
    assert sasl_condition(failure) == "not-authorized"


def test_encryption_required_for_plain_in_clear() -> None:
    driver = Driver(machine(secure=False, can_starttls=True))
    driver.open()
    (failure,) = sent(driver.element(plain()))
    assert sasl_condition(failure) == "encryption-required"


def test_abort_is_not_a_failure() -> None:
    driver = Driver(machine())
    driver.open()
    driver.element(auth("SCRAM-SHA-256", None))  # empty challenge: wait for client-first
    (failure,) = sent(driver.element(Element("abort", ns.SASL)))
    assert sasl_condition(failure) == "aborted"
    assert driver.m.sasl_failures == 0
    assert isinstance(driver.element(plain())[-1], Authenticated)


def test_too_many_attempts_is_a_policy_violation() -> None:
    driver = Driver(machine())
    driver.open()
    for _ in range(MAX_SASL_ATTEMPTS - 1):
        assert stream_errors(driver.element(plain(password="wrong"))) == []
    actions = driver.element(plain(password="wrong"))
    assert sasl_condition(sent(actions)[0]) == "not-authorized"
    assert stream_errors(actions) == ["policy-violation"]
    assert driver.m.state == "closed"


@pytest.mark.parametrize(
    ("element", "condition"),
    [
        (Element("response", ns.SASL, text="AAAA"), "policy-violation"),  # nothing started
        (Element("success", ns.SASL), "unsupported-stanza-type"),
    ],
)
def test_sasl_elements_out_of_place(element: Element, condition: str) -> None:
    m = machine()
    m.stream_opened(header())
    assert stream_errors(m.element(element)) == [condition]


def test_second_auth_while_one_is_running() -> None:
    driver = Driver(machine())
    driver.open()
    driver.element(auth("SCRAM-SHA-256", None))
    assert stream_errors(driver.element(plain())) == ["policy-violation"]


def test_bad_base64_is_incorrect_encoding() -> None:
    driver = Driver(machine())
    driver.open()
    bad = Element("auth", ns.SASL, {"mechanism": "PLAIN"}, text="not base64!")
    (failure,) = sent(driver.element(bad))
    assert sasl_condition(failure) == "incorrect-encoding"


def test_failures_are_logged_for_fail2ban(caplog: pytest.LogCaptureFixture) -> None:
    driver = Driver(machine())
    driver.open()
    with caplog.at_level(logging.WARNING, logger="dovecote.auth"):
        driver.element(plain(password="wrong"))
    assert caplog.messages == [f"authentication failed for {USER}@{DOMAIN} from 192.0.2.7 (PLAIN)"]


def test_address_throttle_delays_the_failure() -> None:
    """The per-address delay is an action: the driver sleeps, then the answer goes."""
    m = machine(address_throttle=AuthThrottle(free_failures=1))
    driver = Driver(m)
    driver.open()
    assert not any(isinstance(a, Delay) for a in driver.element(plain(password="wrong")))
    actions = m.element(plain(password="wrong"))
    actions = driver.run(actions)
    delay_at = next(i for i, a in enumerate(actions) if isinstance(a, Delay))
    assert actions[delay_at] == Delay(0.25)
    # Nothing reaches the client before the delay is over.
    assert not sent(actions[:delay_at]) and sent(actions[delay_at:])


def test_account_throttle_holds_back_right_and_wrong_answers() -> None:
    """Past the account's budget both answers wait (or the delay tells which is right);
    past the queue the right password is refused too."""
    accounts = AccountThrottle(free_failures=1, max_delay=1.0)
    m = machine(account_throttle=accounts)
    driver = Driver(m)
    driver.open()
    assert not any(isinstance(a, Delay) for a in driver.element(plain(password="wrong")))
    for _ in range(2):
        actions = driver.element(plain(password="wrong"))
        assert any(isinstance(a, Delay) and 0 < a.seconds <= 1.0 for a in actions)
    # The queue is now longer than max_delay allows: the right password is refused,
    # after max_delay like any other answer.
    actions = driver.element(plain())
    assert Delay(1.0) in actions
    assert sasl_condition(sent(actions)[0]) == "not-authorized"
    assert m.local is None


def test_requests_must_be_answered_first() -> None:
    m = machine()
    m.stream_opened(header())
    (lookup,) = m.element(plain())
    assert isinstance(lookup, LookupCredentials) and m.waiting == "credentials"
    with pytest.raises(NegotiationMisuse):
        m.element(plain())
    with pytest.raises(NegotiationMisuse):
        m.delay_over()
    (verify,) = m.credentials(ACCOUNTS[USER]["SHA-256"])
    assert isinstance(verify, VerifyPassword) and m.waiting == "password"


# ---- before authentication --------------------------------------------------------------
def test_stanzas_before_auth_are_not_authorized() -> None:
    """RFC 6120 §4.9.3.12."""
    driver = Driver(machine())
    driver.open()
    message = Element("message", ns.CLIENT, {"to": "romeo@example.org"})
    assert stream_errors(driver.element(message)) == ["not-authorized"]


def test_unauthenticated_iq_is_handed_out() -> None:
    """XEP-0077: an IQ before authentication goes to the modules; if none takes it, the
    stream ends with not-authorized."""
    m = machine()
    m.stream_opened(header())
    iq = Element("iq", ns.CLIENT, {"type": "get", "id": "r1"})
    iq.add("query", "jabber:iq:register")
    assert m.element(iq) == [UnauthenticatedIQ(iq)]
    assert m.handler_result(True) == []
    assert m.state == "negotiating"
    assert m.element(iq) == [UnauthenticatedIQ(iq)]
    assert stream_errors(m.handler_result(False)) == ["not-authorized"]
    # An IQ without a payload is no module's business.
    m = machine()
    m.stream_opened(header())
    assert stream_errors(m.element(Element("iq", ns.CLIENT, {"type": "get"}))) == ["not-authorized"]


# ---- resource binding (RFC 6120 §7) ---------------------------------------------------
def test_bind_request() -> None:
    driver = authenticated_driver()
    actions = driver.element(bind_iq("Balcony"))
    bind, bound, result = actions
    assert isinstance(bind, Bind) and bind.jid == JID(USER, DOMAIN, "Balcony")
    assert bound == Bound(JID(USER, DOMAIN, "Balcony"))
    assert isinstance(result, Send) and result.element.get("type") == "result"
    assert result.element.get("id") == "b1"
    assert result.element.find("bind", ns.BIND).find_text("jid") == f"{USER}@{DOMAIN}/Balcony"  # type: ignore[union-attr]
    assert driver.m.state == "bound"


def test_bind_without_resource_gets_one() -> None:
    driver = authenticated_driver()
    bind = driver.element(bind_iq(None))[0]
    assert isinstance(bind, Bind) and bind.jid.resource


def test_bind_refused_by_the_session_manager() -> None:
    driver = authenticated_driver()
    driver.bind_error = StanzaError("resource-constraint", "too many resources")
    actions = driver.element(bind_iq())
    (reply,) = sent(actions)
    assert reply.get("type") == "error"
    assert reply.find("error").find("resource-constraint", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
    assert not any(isinstance(a, Bound) for a in actions)
    assert driver.m.state == "authenticated"  # may try another resource


def test_bind_invalid_resource_is_bad_request() -> None:
    """RFC 6120 §7.7.2.1: not even asked of the session manager."""
    driver = authenticated_driver()
    actions = driver.element(bind_iq("bad\u0000resource"))
    assert not any(isinstance(a, Bind) for a in actions)
    (reply,) = sent(actions)
    assert reply.find("error").find("bad-request", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


def test_resume_request() -> None:
    """XEP-0198 §5: the driver resumes; the machine learns the outcome."""
    driver = authenticated_driver()
    resume = Element("resume", sm.NS, {"previd": "abc", "h": "3"})
    actions = driver.m.element(resume)
    assert actions == [Resume(resume)] and actions[0].previd == "abc"  # type: ignore[union-attr]
    assert driver.m.resume_result(False) == []
    assert driver.m.state == "authenticated"
    driver.m.element(resume)
    driver.m.resume_result(True)
    assert driver.m.state == "bound"


def test_before_bind() -> None:
    driver = authenticated_driver()
    # XEP-0198 §3: enable only after binding.
    (failed,) = sent(driver.element(Element("enable", sm.NS)))
    assert failed.tag == "failed" and failed.find("unexpected-request") is not None
    # RFC 3921 session: a no-op result.
    session = Element("iq", ns.CLIENT, {"type": "set", "id": "s1"})
    session.add("session", ns.SESSION)
    (result,) = sent(driver.element(session))
    assert result.get("type") == "result" and result.get("id") == "s1"
    # Other requests: not-authorized, the stream stays; results are not answered.
    roster = Element("iq", ns.CLIENT, {"type": "get", "id": "r1"})
    roster.add("query", "jabber:iq:roster")
    (error,) = sent(driver.element(roster))
    assert error.find("error").find("not-authorized", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
    assert driver.element(Element("iq", ns.CLIENT, {"type": "result", "id": "x"})) == []
    # Other elements go to modules (CSI and the like), unhandled ones end the stream.
    csi = Element("inactive", "urn:xmpp:csi:0")
    assert driver.m.element(csi) == [OfferElement(csi)]
    assert stream_errors(driver.m.handler_result(False)) == ["unsupported-stanza-type"]


def test_stanza_before_bind_is_not_authorized() -> None:
    driver = authenticated_driver()
    presence = Element("presence", ns.CLIENT)
    assert stream_errors(driver.element(presence)) == ["not-authorized"]


def test_unreadable_credentials_are_a_temporary_failure() -> None:
    """Regression: a storage error while looking up credentials (a pool exhausted by a
    burst of logins) closed the stream with internal-server-error; it is RFC 6120 §6.5.11
    temporary-auth-failure, not counted as a failed attempt, and the client may retry."""
    m = machine()
    Driver(m).open()
    (lookup,) = m.element(plain())
    assert isinstance(lookup, LookupCredentials)
    (failure,) = sent(m.credentials_unavailable())
    assert sasl_condition(failure) == "temporary-auth-failure"
    assert m.sasl_failures == 0 and m.state == "negotiating"
    driver = Driver(m)
    assert isinstance(driver.element(plain())[-1], Authenticated)
