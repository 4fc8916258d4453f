"""XEP-0198 Stream Management over real sockets: counting, acks, resumption, expiry."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.server import Server
from tests.helpers import CLIENT, DOMAIN, PASSWORD, RawClient, add_user, q, start_server

SM = "urn:xmpp:sm:3"
DELAY = "urn:xmpp:delay"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture
async def sm_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = await start_server(tmp_path, stream_management={"resume_timeout": 30, "ack_delay": 30})
    for name in ("alice", "bob"):
        await add_user(server, name)
    try:
        yield server
    finally:
        await server.stop()


async def login_sm(
    server: Server, local: str, resource: str, resume: bool = True
) -> tuple[RawClient, str]:
    raw = await RawClient.open(server.ports["c2s"])
    await raw.login(local, resource=resource)
    raw.send(f"<enable xmlns='{SM}' resume='{'true' if resume else 'false'}'/>")
    enabled = await raw.expect(q(SM, "enabled"))
    return raw, enabled.get("id") or ""


async def authenticate_only(server: Server, local: str) -> RawClient:
    raw = await RawClient.open(server.ports["c2s"])
    features = await raw.authenticate(local)
    assert features.find(q(SM, "sm")) is not None
    return raw


async def messages(raw: RawClient, count: int) -> list[ET.Element]:
    got: list[ET.Element] = []
    while len(got) < count:
        el = await raw.next()
        if el.tag == q(CLIENT, "message"):
            got.append(el)
    return got


async def nothing_more(raw: RawClient, wait: float = 0.3) -> list[ET.Element]:
    extra: list[ET.Element] = []
    while True:
        try:
            el = await raw.next(wait)
        except TimeoutError:
            return extra
        if el.tag != q(SM, "r"):
            extra.append(el)


def send_chat(raw: RawClient, to: str, ident: str) -> None:
    raw.send(f"<message to='{to}' type='chat' id='{ident}'><body>{ident}</body></message>")


async def test_enable_and_counting(sm_server: Server) -> None:
    raw, sm_id = await login_sm(sm_server, "alice", "a")
    assert sm_id
    # Three stanzas from the client, then a request: h counts exactly those.
    raw.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    raw.send("<presence/>")
    raw.send(f"<iq type='get' id='p2' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    raw.send(f"<r xmlns='{SM}'/>")
    ack = await raw.wait_for(lambda e: e.tag == q(SM, "a"))
    assert ack.get("h") == "3"
    await raw.close()


async def test_enable_before_bind_and_twice(sm_server: Server) -> None:
    raw = await authenticate_only(sm_server, "alice")
    raw.send(f"<enable xmlns='{SM}'/>")
    failed = await raw.expect(q(SM, "failed"))
    assert failed.find(q(STANZAS, "unexpected-request")) is not None
    await raw.close()
    raw, _ = await login_sm(sm_server, "alice", "a")
    raw.send(f"<enable xmlns='{SM}'/>")
    failed = await raw.expect(q(SM, "failed"))
    assert failed.find(q(STANZAS, "unexpected-request")) is not None
    await raw.close()


async def test_server_requests_acks(sm_server: Server) -> None:
    bob, _ = await login_sm(sm_server, "bob", "b")
    alice = await RawClient.open(sm_server.ports["c2s"])
    await alice.login("alice")
    for i in range(5):
        send_chat(alice, "bob@example.org/b", f"m{i}")
    seen: list[str] = []
    while seen.count(q(CLIENT, "message")) < 5 or q(SM, "r") not in seen:
        seen.append((await bob.next()).tag)
    # The request comes after the fifth unacknowledged stanza.
    assert seen.index(q(SM, "r")) == 5
    bob.send(f"<a xmlns='{SM}' h='5'/>")
    await asyncio.sleep(0.1)
    session = sm_server.sessions.get(JID.parse("bob@example.org/b"))
    assert session is not None and session.sm is not None and not session.sm.unacked


async def test_resume_resends_exactly_the_unacked(sm_server: Server) -> None:
    bob, sm_id = await login_sm(sm_server, "bob", "b")
    bob.send("<presence/>")  # one stanza handled from bob
    alice = await RawClient.open(sm_server.ports["c2s"])
    await alice.login("alice")
    for i in range(4):
        send_chat(alice, "bob@example.org/b", f"m{i}")
    got = await messages(bob, 4)
    assert [m.get("id") for m in got] == ["m0", "m1", "m2", "m3"]
    # bob saw its own presence echo + 4 messages, but acknowledges only 3 stanzas.
    bob.send(f"<a xmlns='{SM}' h='3'/>")
    await asyncio.sleep(0.1)
    bob.writer.transport.abort()  # the TCP connection dies
    await asyncio.sleep(0.2)
    # While hibernating, the session still receives (and queues) its stanzas.
    send_chat(alice, "bob@example.org/b", "m4")
    await asyncio.sleep(0.2)
    assert sm_server.sessions.get(JID.parse("bob@example.org/b")) is not None

    bob2 = await authenticate_only(sm_server, "bob")
    bob2.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='3'/>")
    resumed = await bob2.expect(q(SM, "resumed"))
    assert resumed.get("previd") == sm_id
    assert resumed.get("h") == "1"  # the server handled bob's one presence
    resent = await messages(bob2, 3)
    assert [m.get("id") for m in resent] == ["m2", "m3", "m4"]
    assert [e for e in await nothing_more(bob2) if e.tag == q(CLIENT, "message")] == []
    # The session goes on: a new message arrives once, the session is the same resource.
    send_chat(alice, "bob@example.org/b", "m5")
    (new,) = await messages(bob2, 1)
    assert new.get("id") == "m5"
    bob2.send(f"<r xmlns='{SM}'/>")
    ack = await bob2.wait_for(lambda e: e.tag == q(SM, "a"))
    assert ack.get("h") == "1"


async def test_resume_unknown_or_foreign_session_fails(sm_server: Server) -> None:
    _bob, bob_id = await login_sm(sm_server, "bob", "b")
    alice = await authenticate_only(sm_server, "alice")
    alice.send(f"<resume xmlns='{SM}' previd='no-such-id' h='0'/>")
    failed = await alice.expect(q(SM, "failed"))
    assert failed.find(q(STANZAS, "item-not-found")) is not None
    # Alice may not take over bob's session.
    alice.send(f"<resume xmlns='{SM}' previd='{bob_id}' h='0'/>")
    failed = await alice.expect(q(SM, "failed"))
    assert failed.find(q(STANZAS, "item-not-found")) is not None
    # The failure leaves the stream usable: alice can still bind.
    alice.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert (await alice.expect(q(CLIENT, "iq"))).get("type") == "result"


async def test_ack_of_unsent_stanzas_is_a_stream_error(sm_server: Server) -> None:
    raw, _ = await login_sm(sm_server, "alice", "a")
    raw.send(f"<a xmlns='{SM}' h='10'/>")
    error = await raw.wait_for(lambda e: e.tag == "{http://etherx.jabber.org/streams}error")
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}undefined-condition") is not None
    too_high = error.find(q(SM, "handled-count-too-high"))
    assert too_high is not None and too_high.get("h") == "10"
    assert too_high.get("send-count") == "0"


async def test_timeout_stores_unacked_offline_and_broadcasts_unavailable(
    tmp_path: Path,
) -> None:
    server = await start_server(
        tmp_path, stream_management={"resume_timeout": 0.5, "ack_delay": 30}
    )
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, sm_id = await login_sm(server, "bob", "b")
        bob.send("<presence/>")
        watcher = await RawClient.open(server.ports["c2s"])
        await watcher.login("bob", resource="watcher")
        watcher.send("<presence/>")
        await asyncio.sleep(0.2)
        # The watcher has a negative priority: bare-JID messages do not go to it.
        watcher.send("<presence><priority>-1</priority></presence>")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        send_chat(alice, "bob@example.org/b", "lost1")
        send_chat(alice, "bob@example.org/b", "lost2")
        await messages(bob, 2)
        bob.writer.transport.abort()
        # After the timeout: unavailable presence for the resource, messages kept offline.
        unavailable = await watcher.wait_for(
            lambda e: (
                e.tag == q(CLIENT, "presence")
                and e.get("type") == "unavailable"
                and e.get("from") == "bob@example.org/b"
            ),
            timeout=10,
        )
        assert unavailable is not None
        await asyncio.sleep(0.2)
        assert server.sessions.get(JID.parse("bob@example.org/b")) is None
        assert await server.storage.offline.count("bob", DOMAIN) == 2
        # Resuming now fails, telling the client how far the server got.
        late = await authenticate_only(server, "bob")
        late.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
        failed = await late.expect(q(SM, "failed"))
        assert failed.find(q(STANZAS, "item-not-found")) is not None
        assert failed.get("h") == "1"
        # The next login gets the messages once, with delay stamps.
        again = await RawClient.open(server.ports["c2s"])
        await again.login("bob", resource="new")
        again.send("<presence/>")
        got = await messages(again, 2)
        assert [m.get("id") for m in got] == ["lost1", "lost2"]
        assert all(m.find(q(DELAY, "delay")) is not None for m in got)
    finally:
        await server.stop()


async def test_timeout_delivers_unacked_to_another_resource(tmp_path: Path) -> None:
    server = await start_server(
        tmp_path, stream_management={"resume_timeout": 0.3, "ack_delay": 30}
    )
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, _ = await login_sm(server, "bob", "b")
        other = await RawClient.open(server.ports["c2s"])
        await other.login("bob", resource="other")
        other.send("<presence/>")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        send_chat(alice, "bob@example.org/b", "x1")
        await messages(bob, 1)
        bob.writer.transport.abort()
        (moved,) = await messages(other, 1)
        assert moved.get("id") == "x1"
        assert moved.find(q(DELAY, "delay")) is not None
        assert [e for e in await nothing_more(other) if e.tag == q(CLIENT, "message")] == []
    finally:
        await server.stop()


async def test_clean_close_does_not_hibernate(sm_server: Server) -> None:
    bob, sm_id = await login_sm(sm_server, "bob", "b")
    alice = await RawClient.open(sm_server.ports["c2s"])
    await alice.login("alice")
    send_chat(alice, "bob@example.org/b", "c1")
    await messages(bob, 1)
    bob.send("</stream:stream>")
    await bob.closed()
    await asyncio.sleep(0.2)
    assert sm_server.sessions.get(JID.parse("bob@example.org/b")) is None
    assert sm_id not in sm_server.sm_sessions
    # The unacknowledged message was not lost: it waits offline.
    assert await sm_server.storage.offline.count("bob", DOMAIN) == 1


async def test_not_resumable_session_ends_with_connection(sm_server: Server) -> None:
    bob, sm_id = await login_sm(sm_server, "bob", "b", resume=False)
    bob.writer.transport.abort()
    await asyncio.sleep(0.2)
    assert sm_server.sessions.get(JID.parse("bob@example.org/b")) is None
    assert sm_id not in sm_server.sm_sessions


async def test_slixmpp_enables_acks_and_resumes(sm_server: Server) -> None:
    """A real client's XEP-0198 implementation (slixmpp) against the server: enable,
    acknowledgements in both directions, and resumption after the connection drops."""
    from tests.helpers import Client, client_ssl_context

    client = Client("bob@example.org/phone", PASSWORD)
    client.register_plugin("xep_0198")
    client.enable_direct_tls = False
    sm_plugin = client.plugin["xep_0198"]
    started, enabled, resumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    client.add_event_handler("session_start", lambda _e: started.set())
    client.add_event_handler("sm_enabled", lambda _e: enabled.set())
    client.add_event_handler("session_resumed", lambda _e: resumed.set())
    client.ssl_context = client_ssl_context()
    client.connect("127.0.0.1", sm_server.ports["c2s"])
    await asyncio.wait_for(asyncio.gather(started.wait(), enabled.wait()), 15)
    session = sm_server.sessions.get(JID.parse("bob@example.org/phone"))
    assert session is not None and session.sm is not None and session.sm.resumable
    assert session.sm.id == sm_plugin.sm_id

    alice = await RawClient.open(sm_server.ports["c2s"])
    await alice.login("alice")
    for i in range(3):
        send_chat(alice, "bob@example.org/phone", f"s{i}")
    for _ in range(3):
        await asyncio.wait_for(client.messages.get(), 5)
    # The client asks the server for an ack of what it sent: the server has handled it all.
    client.send_presence()
    sm_plugin.request_ack()
    for _ in range(50):
        if sm_plugin.last_ack == sm_plugin.seq:
            break
        await asyncio.sleep(0.05)
    assert sm_plugin.last_ack == sm_plugin.seq == session.sm.handled
    # The server asks the client: the client's h matches what the server sent (after
    # the client has processed the presence echo it just got).
    await asyncio.sleep(0.3)
    session._request_ack()
    for _ in range(50):
        if not session.sm.unacked:
            break
        await asyncio.sleep(0.05)
    assert not session.sm.unacked

    # The connection dies; a message arrives meanwhile; the client reconnects and resumes.
    client.transport.abort()
    await asyncio.sleep(0.3)
    send_chat(alice, "bob@example.org/phone", "while-away")
    await asyncio.sleep(0.2)
    client.connect("127.0.0.1", sm_server.ports["c2s"])
    await asyncio.wait_for(resumed.wait(), 15)
    message = await asyncio.wait_for(client.messages.get(), 5)
    assert message["id"] == "while-away"
    assert client.messages.empty()
    client.disconnect()
