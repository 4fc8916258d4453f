"""RFC 6120 client streams over real sockets: headers, STARTTLS, SASL, binding, stream errors."""

from __future__ import annotations

import asyncio
import base64
import time
import xml.etree.ElementTree as ET

import pytest

from dovecote.server import Server
from tests.helpers import (
    BIND,
    CLIENT,
    DOMAIN,
    PASSWORD,
    SASL,
    STREAMS,
    TLS_NS,
    RawClient,
    add_user,
    connect,
    disconnect,
    q,
    start_server,
)

SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"
SASL_CB = "urn:xmpp:sasl-cb:0"


def mechanisms(features: ET.Element) -> list[str]:
    mechs = features.find(q(SASL, "mechanisms"))
    return [m.text or "" for m in mechs] if mechs is not None else []


async def assert_still_serving(server: Server, local: str = "witness") -> None:
    """Another client can still log in and get answers: nothing else broke."""
    raw = await RawClient.open(server.ports["c2s"])
    await raw.login(local)
    raw.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "result" and el.get("id") == "p1"
    await raw.close()


@pytest.fixture
async def users(server: Server) -> Server:
    for name in ("alice", "bob", "witness"):
        await add_user(server, name)
    return server


# ---- stream header and features -------------------------------------------------------------
async def test_header_and_features_before_tls(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream(extra="from='alice@example.org'")
    features = await raw.features()
    assert raw.header is not None
    assert raw.header["from"] == DOMAIN
    assert raw.header["version"] == "1.0"
    assert raw.header["to"] == "alice@example.org"
    assert raw.header.get("id")
    starttls = features.find(q(TLS_NS, "starttls"))
    assert starttls is not None and starttls.find(q(TLS_NS, "required")) is not None
    # TLS is required first: no SASL mechanisms are offered in clear text.
    assert features.find(q(SASL, "mechanisms")) is None
    await raw.close()


async def test_features_after_tls_offer_scram_plus_and_channel_binding(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    raw.send(f"<starttls xmlns='{TLS_NS}'/>")
    await raw.expect(q(TLS_NS, "proceed"))
    await raw.writer.start_tls(
        __import__("tests.helpers").helpers.client_ssl_context(), server_hostname=DOMAIN
    )
    raw.open_stream()
    features = await raw.features()
    assert mechanisms(features) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    assert features.find(q(TLS_NS, "starttls")) is None
    cb = features.find(q(SASL_CB, "sasl-channel-binding"))  # XEP-0440
    assert cb is not None
    assert "tls-server-end-point" in {c.get("type") for c in cb}
    await raw.close()


async def test_bind_and_optional_session_features(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    features = await raw.authenticate("alice")
    assert features.find(q(BIND, "bind")) is not None
    session = features.find(q(SESSION_NS, "session"))
    assert session is not None and session.find(q(SESSION_NS, "optional")) is not None
    raw.send(f"<iq type='set' id='b'><bind xmlns='{BIND}'><resource>desk</resource></bind></iq>")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}").text == "alice@example.org/desk"  # type: ignore[union-attr]
    # Legacy session establishment still answers (RFC 3921 clients).
    raw.send(f"<iq type='set' id='s'><session xmlns='{SESSION_NS}'/></iq>")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "result" and el.get("id") == "s"
    await raw.close()


# ---- SASL mechanisms ----------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_login_and_wrong_password(users: Server, mechanism: str) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    el = await raw.auth_scram("alice", "wrong", mechanism=mechanism)
    assert el.tag == q(SASL, "failure")
    assert el.find(q(SASL, "not-authorized")) is not None
    el = await raw.auth_scram("alice", PASSWORD, mechanism=mechanism)
    assert el.tag == q(SASL, "success")
    await raw.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
async def test_scram_plus_with_tls_server_end_point(users: Server, mechanism: str) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    binding = ("tls-server-end-point", raw.tls_end_point_hash())
    el = await raw.auth_scram("alice", PASSWORD, mechanism=mechanism, channel_binding=binding)
    assert el.tag == q(SASL, "success"), ET.tostring(el)
    raw.open_stream()
    await raw.features()
    raw.send(f"<iq type='set' id='b'><bind xmlns='{BIND}'/></iq>")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "result"
    await raw.close()


async def test_scram_plus_with_wrong_binding_fails(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    binding = ("tls-server-end-point", b"\x00" * 32)
    el = await raw.auth_scram(
        "alice", PASSWORD, mechanism="SCRAM-SHA-256-PLUS", channel_binding=binding
    )
    assert el.tag == q(SASL, "failure")
    assert el.find(q(SASL, "not-authorized")) is not None
    await raw.close()


async def test_plain_over_tls(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    el = await raw.auth_plain("alice", "nope")
    assert el.tag == q(SASL, "failure") and el.find(q(SASL, "not-authorized")) is not None
    el = await raw.auth_plain("nosuchuser", "nope")
    assert el.tag == q(SASL, "failure") and el.find(q(SASL, "not-authorized")) is not None
    el = await raw.auth_plain("ALICE")  # the localpart is case-folded (RFC 7622)
    assert el.tag == q(SASL, "success")
    await raw.close()


async def test_auth_before_starttls_is_refused(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
    el = await raw.expect(q(SASL, "failure"))
    assert el.find(q(SASL, "encryption-required")) is not None
    await raw.close()


async def test_plain_not_offered_without_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(tmp_path, tls={"required": False})
    try:
        await add_user(server, "alice")
        raw = await RawClient.open(server.ports["c2s"])
        raw.open_stream()
        features = await raw.features()
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
        el = await raw.auth_plain("alice")
        assert el.tag == q(SASL, "failure")
        assert el.find(q(SASL, "encryption-required")) is not None
        # SCRAM without TLS works when the operator allows it.
        assert (await raw.auth_scram("alice")).tag == q(SASL, "success")
        await raw.close()
    finally:
        await server.stop()


async def test_invalid_mechanism_and_bad_base64_and_abort(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    raw.send(f"<auth xmlns='{SASL}' mechanism='DIGEST-MD5'/>")
    el = await raw.expect(q(SASL, "failure"))
    assert el.find(q(SASL, "invalid-mechanism")) is not None
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>!!notbase64</auth>")
    el = await raw.expect(q(SASL, "failure"))
    assert el.find(q(SASL, "incorrect-encoding")) is not None
    # No initial response: an empty challenge, then abort.
    raw.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'/>")
    el = await raw.expect(q(SASL, "challenge"))
    raw.send(f"<abort xmlns='{SASL}'/>")
    el = await raw.expect(q(SASL, "failure"))
    assert el.find(q(SASL, "aborted")) is not None
    await raw.close()


async def test_repeated_failures_slow_down_then_close(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    durations = []
    for _ in range(4):
        start = time.monotonic()
        el = await raw.auth_plain("alice", "wrong")
        durations.append(time.monotonic() - start)
        assert el.find(q(SASL, "not-authorized")) is not None
    # The 4th failure from this address is delayed (a lower bound only: never flaky).
    assert durations[3] >= 0.2
    el = await raw.auth_plain(
        "alice",
        "wrong",
    )
    assert el.find(q(SASL, "not-authorized")) is not None
    # RFC 6120 §6.4.5: after a reasonable number of retries the stream is closed.
    assert await raw.stream_error(timeout=15) == "policy-violation"
    users.auth_throttle.succeeded("127.0.0.1")
    await assert_still_serving(users)


async def test_slixmpp_logins_starttls_and_direct_tls(users: Server) -> None:
    alice = await connect(users, "alice@example.org/phone")
    bob = await connect(users, "bob@example.org/tab", direct_tls=True)
    assert str(bob.boundjid) == "bob@example.org/tab"
    alice.send_message(mto="bob@example.org/tab", mbody="over direct TLS", mtype="chat")
    msg = await asyncio.wait_for(bob.messages.get(), 5)
    assert msg["body"] == "over direct TLS"
    assert str(msg["from"]) == "alice@example.org/phone"
    await disconnect(alice, bob)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"])
async def test_slixmpp_each_mechanism(users: Server, mech: str) -> None:
    client = await connect(users, "alice@example.org/m", sasl_mech=mech)
    assert str(client.boundjid) == "alice@example.org/m"
    await disconnect(client)
    with pytest.raises(PermissionError):
        await connect(users, "alice@example.org/m", "bad password", sasl_mech=mech)


# ---- binding ------------------------------------------------------------------------------------
async def test_server_generated_resource(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    jid = await raw.login("alice", resource=None)
    local, _, resource = jid.partition("/")
    assert local == "alice@example.org" and len(resource) >= 8
    await raw.close()


async def test_invalid_resource_is_bad_request(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    await raw.authenticate("alice")
    raw.send(
        f"<iq type='set' id='b'><bind xmlns='{BIND}'><resource>soft\u00adhyphen</resource>"
        "</bind></iq>"
    )
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "error"
    assert (
        el.find(f"{q(CLIENT, 'error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}bad-request")
        is not None
    )
    await raw.close()


async def test_resource_conflict_replaces_old_session(users: Server) -> None:
    old = await RawClient.open(users.ports["c2s"])
    assert await old.login("alice", resource="same") == "alice@example.org/same"
    new = await RawClient.open(users.ports["c2s"])
    assert await new.login("alice", resource="same") == "alice@example.org/same"
    assert await old.stream_error() == "conflict"
    # The new session owns the resource: a message to it arrives there.
    bob = await RawClient.open(users.ports["c2s"])
    await bob.login("bob")
    bob.send("<message to='alice@example.org/same' type='chat'><body>hi</body></message>")
    el = await new.expect(q(CLIENT, "message"))
    assert el.findtext(q(CLIENT, "body")) == "hi"
    for c in (new, bob):
        await c.close()


async def test_stanza_before_bind_is_refused(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    await raw.authenticate("alice")
    raw.send(f"<iq type='get' id='x' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "error"
    assert (
        el.find(f"{q(CLIENT, 'error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}not-authorized")
        is not None
    )
    await raw.close()


# ---- keepalives and closing -----------------------------------------------------------------
async def test_whitespace_keepalive_and_clean_close(users: Server) -> None:
    raw = await RawClient.open(users.ports["c2s"])
    await raw.login("alice")
    raw.send(" \n ")
    raw.send(f"<iq type='get' id='k' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>  ")
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "result"
    raw.send("</stream:stream>")
    # The server answers with its closing tag and closes the connection.
    await raw.closed()
    assert raw.closed_by_server
    await asyncio.sleep(0.05)
    assert (
        users.sessions.get(__import__("dovecote.jid").jid.JID.parse("alice@example.org/raw"))
        is None
    )


# ---- stream errors (RFC 6120 §4.9.3) -----------------------------------------------------------
async def _error_for(
    server: Server, data: str, *, tls_first: bool = False, login: bool = False
) -> str:
    raw = await RawClient.open(server.ports["c2s"])
    if login:
        await raw.login("alice")
    elif tls_first:
        raw.open_stream()
        await raw.features()
        await raw.starttls()
    raw.send(data)
    return await raw.stream_error()


HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    f"xmlns:stream='{STREAMS}' version='1.0' "
)


@pytest.mark.parametrize(
    ("data", "condition"),
    [
        (HEADER + "to='unknown.example'>", "host-unknown"),
        (HEADER + ">", "improper-addressing"),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='example.org' "
            "version='1.0'>",
            "invalid-namespace",
        ),
        (
            "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
            "to='example.org' version='1.0'>",
            "invalid-namespace",
        ),
        (
            "<stream xmlns='http://etherx.jabber.org/streams' to='example.org' version='1.0'>",
            "bad-namespace-prefix",
        ),
        (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            "to='example.org'>",
            "unsupported-version",
        ),
        ("<?xml version='1.0' encoding='ISO-8859-1'?>", "unsupported-encoding"),
        ("<<<not xml", "not-well-formed"),
        ("<!DOCTYPE foo [<!ENTITY x 'y'>]>", "restricted-xml"),
        (HEADER + "to='example.org'><!-- a comment -->", "restricted-xml"),
        (HEADER + "to='example.org'><?pi data?>", "restricted-xml"),
        (
            HEADER + "to='example.org'><message to='a@example.org'><body>x</body></message>",
            "not-authorized",
        ),
    ],
    ids=[
        "host-unknown",
        "no-to",
        "stream-ns",
        "content-ns",
        "no-prefix",
        "no-version",
        "encoding",
        "garbage",
        "dtd",
        "comment",
        "pi",
        "stanza-before-auth",
    ],
)
async def test_stream_errors_before_auth(users: Server, data: str, condition: str) -> None:
    assert await _error_for(users, data) == condition
    await assert_still_serving(users)


async def test_stream_errors_after_login(users: Server) -> None:
    assert (
        await _error_for(users, "<message><body>&undefined;</body></message>", login=True)
        == "not-well-formed"
    )
    assert (
        await _error_for(users, "<foo xmlns='urn:example:unknown'/>", login=True)
        == "unsupported-stanza-type"
    )
    assert await _error_for(users, "<message><!-- c --></message>", login=True) == "restricted-xml"
    await assert_still_serving(users)


async def test_oversized_stanza_is_policy_violation(users: Server) -> None:
    bob = await connect(users, "bob@example.org/b")
    big = "x" * (300 * 1024)
    condition = await _error_for(
        users, f"<message to='bob@example.org' type='chat'><body>{big}</body></message>", login=True
    )
    assert condition == "policy-violation"
    assert bob.messages.empty()
    # Other sessions go on: bob still gets messages.
    alice = await connect(users, "alice@example.org/again")
    alice.send_message(mto="bob@example.org/b", mbody="still here", mtype="chat")
    msg = await asyncio.wait_for(bob.messages.get(), 5)
    assert msg["body"] == "still here"
    await disconnect(alice, bob)


async def test_negotiation_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(tmp_path, limits={"negotiation_timeout": 0.5})
    try:
        raw = await RawClient.open(server.ports["c2s"])
        raw.open_stream()
        await raw.features()
        assert await raw.stream_error(timeout=5) == "connection-timeout"
    finally:
        await server.stop()


async def test_system_shutdown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = await start_server(tmp_path)
    await add_user(server, "alice")
    raw = await RawClient.open(server.ports["c2s"])
    await raw.login("alice")
    stopping = asyncio.create_task(server.stop())
    assert await raw.stream_error() == "system-shutdown"
    await stopping


async def test_conflict_does_not_announce_the_resource_as_gone(users: Server) -> None:
    """A resource taken over by a new connection stays: its contacts get no unavailable
    presence for it (only the new connection's presence)."""
    from dovecote.storage.base import RosterItem

    for user, contact in (("alice", "bob@example.org"), ("bob", "alice@example.org")):
        await users.storage.roster.put(user, DOMAIN, RosterItem(contact, subscription="both"))
    alice = await RawClient.open(users.ports["c2s"])
    await alice.login("alice", resource="desk")
    alice.send("<presence/>")
    old = await RawClient.open(users.ports["c2s"])
    await old.login("bob", resource="same")
    old.send("<presence><status>old</status></presence>")
    await alice.wait_for(
        lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == "bob@example.org/same"
    )
    new = await RawClient.open(users.ports["c2s"])
    await new.login("bob", resource="same")
    assert await old.stream_error() == "conflict"
    new.send("<presence><status>new</status></presence>")
    # Until the new connection's presence arrives, nothing says the resource went away
    # (the old presence may come again: RFC 6121 allows repeats).
    while True:
        seen = await alice.wait_for(
            lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == "bob@example.org/same"
        )
        assert seen.get("type") is None, ET.tostring(seen)
        if seen.findtext(q(CLIENT, "status")) == "new":
            break


async def test_client_connections_use_tcp_keepalive(users: Server) -> None:
    """Dead connections (no FIN) are found by TCP keepalives."""
    import socket

    raw = await RawClient.open(users.ports["c2s"])
    await raw.login("alice")
    (stream,) = [s for s in users.streams if s.bound]
    sock = stream.transport._transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 120
    await raw.close()


async def test_flood_is_slowed_down_not_lost(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """[limits] c2s_rate: past its burst a client is read at its rate; nothing is lost and
    other clients are unaffected."""
    server = await start_server(tmp_path, limits={"c2s_rate": 100_000, "c2s_burst": 10_000})
    try:
        for name in ("alice", "bob", "witness"):
            await add_user(server, name)
        bob = await RawClient.open(server.ports["c2s"])
        await bob.login("bob", resource="b")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        (flooder,) = [s for s in server.streams if s.bound and s.jid.local == "alice"]
        body = "x" * 1000
        alice.send(
            "".join(
                f"<message to='bob@example.org/b' type='chat' id='f{i}'><body>{body}</body>"
                "</message>"
                for i in range(400)
            )
        )
        await assert_still_serving(server)  # another client is served meanwhile
        got = []
        while len(got) < 400:
            el = await bob.next(timeout=30)
            if el.tag == q(CLIENT, "message"):
                got.append(el.get("id"))
        assert got == [f"f{i}" for i in range(400)]
        assert flooder.transport.throttled > 0
    finally:
        await server.stop()
