"""Federation over real sockets (RFC 6120 server-to-server streams, XEP-0220 dialback,
XEP-0288 bidi): two (or three) Dovecote servers in this process, each on its own loopback
address (127.0.0.2, 127.0.0.3: Linux routes all of 127/8 to lo) with `[s2s.routes]`
pointing at each other, self-signed certificates (so dialback authenticates)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dovecote.server import Server
from dovecote.stream.s2s_negotiation import dialback_key
from tests.helpers import (
    CLIENT,
    STANZA_ERRORS,
    RawClient,
    Resource,
    add_user,
    client_ssl_context,
    error_condition,
    login_resource,
    q,
    start_server,
)

A = "a.example"
B = "b.example"
ROSTER = "jabber:iq:roster"


def free_port(address: str) -> int:
    """A port free on `address` right now (the servers must know each other's before
    either starts)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class Federation:
    a: Server
    b: Server
    a_address: str
    b_address: str


async def start_peer(
    data_dir: Path,
    domains: list[str],
    address: str,
    routes: dict[str, str],
    s2s: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Server:
    return await start_server(
        data_dir,
        server={"domains": domains, "data_dir": str(data_dir)},
        listen={"s2s": address},
        s2s={"routes": routes, "connect_timeout": 5, **(s2s or {})},
        **sections,
    )


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr})
    try:
        yield Federation(a, b, a_addr, b_addr)
    finally:
        await a.stop()
        await b.stop()


async def user(server: Server, local: str, domain: str, **kwargs: Any) -> Resource:
    await add_user(server, local, domain=domain)
    return await login_resource(server, local, domain=domain, **kwargs)


def is_message(el: ET.Element) -> bool:
    return el.tag == q(CLIENT, "message")


async def test_message_both_ways(fed: Federation) -> None:
    alice = await user(fed.a, "alice", A, presence=True)
    bob = await user(fed.b, "bob", B, presence=True)
    alice.send(f"<message to='bob@{B}' type='chat' id='m1'><body>hello b</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert got.get("from") == alice.jid
    assert got.findtext(q(CLIENT, "body")) == "hello b"
    bob.send(f"<message to='{alice.jid}' type='chat' id='m2'><body>hello a</body></message>")
    got = await alice.take(is_message, timeout=10)
    assert got.get("from") == bob.jid
    assert got.findtext(q(CLIENT, "body")) == "hello a"
    # One link each way at most (bidi may fold them into one), dialback, TLS.
    links = fed.a.s2s.describe()
    assert links, links
    assert all(link["auth"] in ("dialback", "none") for link in links)
    assert any(link["auth"] == "dialback" and link["tls"] for link in links)
    await alice.close()
    await bob.close()


async def test_peer_down_bounces_remote_server_not_found(tmp_path: Path) -> None:
    dead = f"127.0.0.3:{free_port('127.0.0.3')}"  # nothing listens there
    a = await start_peer(tmp_path / "a", [A], f"127.0.0.2:{free_port('127.0.0.2')}", {B: dead})
    try:
        alice = await user(a, "alice", A)
        alice.send(
            f"<message to='bob@{B}' type='chat' id='m1'><body>anyone?</body>"
            "<thread>t1</thread></message>"
        )
        got = await alice.take(is_message, timeout=10)
        assert got.get("type") == "error"
        assert got.get("from") == f"bob@{B}"
        assert error_condition(got) == ("cancel", "remote-server-not-found")
        # RFC 6120 §8.3: the original payload comes back with the error.
        assert got.findtext(q(CLIENT, "body")) == "anyone?"
        assert got.findtext(q(CLIENT, "thread")) == "t1"
        await alice.close()
    finally:
        await a.stop()


# ---- a raw socket acting as a server ---------------------------------------------------------
SERVER_NS = "jabber:server"
DB = "jabber:server:dialback"
STREAMS = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


async def raw_server(address: str, sender: str, target: str) -> tuple[RawClient, ET.Element]:
    """Connect to `address` as the server of `sender`: header, STARTTLS, header again;
    returns the client and the features after TLS (`raw.header['id']`: the stream id)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    raw = RawClient(reader, writer)

    def header() -> None:
        raw._new_parser()
        raw.header = None
        raw.send(
            f"<?xml version='1.0'?><stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS}' "
            f"xmlns:db='{DB}' from='{sender}' to='{target}' version='1.0'>"
        )

    header()
    features = await raw.expect(q(STREAMS, "features"))
    starttls = features.find(q(TLS_NS, "starttls"))
    assert starttls is not None and starttls.find(q(TLS_NS, "required")) is not None
    raw.send(f"<starttls xmlns='{TLS_NS}'/>")
    await raw.expect(q(TLS_NS, "proceed"))
    await writer.start_tls(client_ssl_context(), server_hostname=target)
    header()
    features = await raw.expect(q(STREAMS, "features"))
    return raw, features


async def test_raw_peer_dialback_then_forged_from(fed: Federation) -> None:
    """A peer authenticated for a.example by dialback (a key made with a.example's
    secret, checked by B with the real a.example) sending from another domain gets the
    stream error invalid-from (RFC 6120 §4.9.3.9)."""
    bob = await user(fed.b, "bob", B, presence=True)
    raw, features = await raw_server(fed.b_address, A, B)
    assert features.find(q("urn:xmpp:features:dialback", "dialback")) is not None
    assert features.find(q("urn:xmpp:features:bidi", "bidi")) is not None
    assert raw.header is not None
    key = dialback_key(fed.a.s2s.secret, B, A, raw.header["id"])
    raw.send(f"<db:result xmlns:db='{DB}' from='{A}' to='{B}'>{key}</db:result>")
    result = await raw.expect(q(DB, "result"), timeout=10)
    assert (result.get("type"), result.get("from"), result.get("to")) == ("valid", B, A)
    # An honest stanza goes through...
    raw.send(f"<message from='eve@{A}' to='bob@{B}' type='chat'><body>hi</body></message>")
    got = await bob.take(is_message, timeout=5)
    assert got.get("from") == f"eve@{A}"
    assert got.findtext(q(CLIENT, "body")) == "hi"
    # ...a forged one ends the stream.
    raw.send(f"<message from='mallory@evil.example' to='bob@{B}'><body>x</body></message>")
    assert await raw.stream_error() == "invalid-from"
    await bob.assert_none(is_message)
    await bob.close()


async def test_raw_peer_addressing_errors(fed: Federation) -> None:
    raw, _features = await raw_server(fed.b_address, A, B)
    # Stanzas before any pair is authenticated: not-authorized (RFC 6120 §4.9.3.12).
    raw.send(f"<message from='eve@{A}' to='bob@{B}'><body>x</body></message>")
    assert await raw.stream_error() == "not-authorized"
    raw, _features = await raw_server(fed.b_address, A, B)
    assert raw.header is not None
    key = dialback_key(fed.a.s2s.secret, B, A, raw.header["id"])
    # A dialback request for a domain B does not serve: item-not-found, stream kept.
    raw.send(f"<db:result xmlns:db='{DB}' from='{A}' to='c.example'>{key}</db:result>")
    error = await raw.expect(q(DB, "result"))
    assert error.get("type") == "error"
    assert error.find(f"{q(SERVER_NS, 'error')}/{q(STANZA_ERRORS, 'item-not-found')}") is not None
    raw.send(f"<db:result xmlns:db='{DB}' from='{A}' to='{B}'>{key}</db:result>")
    result = await raw.expect(q(DB, "result"), timeout=10)
    assert result.get("type") == "valid"
    # To a domain B does not serve: host-unknown.
    raw.send(f"<message from='eve@{A}' to='x@c.example'><body>x</body></message>")
    assert await raw.stream_error() == "host-unknown"


async def test_dialback_wrong_key_is_invalid(fed: Federation) -> None:
    raw, _features = await raw_server(fed.b_address, A, B)
    raw.send(f"<db:result xmlns:db='{DB}' from='{A}' to='{B}'>{'0' * 64}</db:result>")
    result = await raw.expect(q(DB, "result"), timeout=10)
    assert (result.get("type"), result.get("from"), result.get("to")) == ("invalid", B, A)
    # XEP-0220 §2.2.1: the first (only) pair is invalid: the stream is closed.
    await raw.closed()


async def test_authoritative_server_answers_db_verify(fed: Federation) -> None:
    """XEP-0220 §2.2.2: A answers <db:verify/> about its own keys."""
    raw, _features = await raw_server(fed.a_address, B, A)
    good = dialback_key(fed.a.s2s.secret, B, A, "stream-1")
    raw.send(f"<db:verify xmlns:db='{DB}' from='{B}' to='{A}' id='stream-1'>{good}</db:verify>")
    answer = await raw.expect(q(DB, "verify"))
    assert (answer.get("type"), answer.get("from"), answer.get("to"), answer.get("id")) == (
        "valid",
        A,
        B,
        "stream-1",
    )
    raw.send(f"<db:verify xmlns:db='{DB}' from='{B}' to='{A}' id='stream-2'>{good}</db:verify>")
    answer = await raw.expect(q(DB, "verify"))
    assert answer.get("type") == "invalid"
    raw.send(f"<db:verify xmlns:db='{DB}' from='{B}' to='z.example' id='s'>{good}</db:verify>")
    answer = await raw.expect(q(DB, "verify"))
    assert answer.get("type") == "error"
    await raw.close()


async def test_peer_that_never_answers_bounces_timeout(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.3", 0))
    silent.listen(5)  # accepts into the backlog, never reads or writes
    route = f"127.0.0.3:{silent.getsockname()[1]}"
    a = await start_peer(
        tmp_path / "a",
        [A],
        f"127.0.0.2:{free_port('127.0.0.2')}",
        {B: route},
        s2s={"connect_timeout": 1},
    )
    try:
        alice = await user(a, "alice", A)
        alice.send(f"<message to='bob@{B}' id='m1'><body>hello?</body></message>")
        got = await alice.take(is_message, timeout=10)
        assert error_condition(got) == ("wait", "remote-server-timeout")
        assert got.findtext(q(CLIENT, "body")) == "hello?"
        await alice.close()
    finally:
        await a.stop()
        silent.close()


async def test_peer_without_tls_bounces(tmp_path: Path) -> None:
    """A peer that offers no STARTTLS: our link refuses to go on in clear text."""

    async def plain_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(
            f"<?xml version='1.0'?><stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS}' "
            f"xmlns:db='{DB}' from='{B}' to='{A}' id='plain1' version='1.0'>"
            "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>"
            "</dialback></stream:features>".encode()
        )
        await writer.drain()
        await reader.read(4096)
        writer.close()

    peer = await asyncio.start_server(plain_peer, "127.0.0.3", 0)
    route = f"127.0.0.3:{peer.sockets[0].getsockname()[1]}"
    a = await start_peer(tmp_path / "a", [A], f"127.0.0.2:{free_port('127.0.0.2')}", {B: route})
    try:
        alice = await user(a, "alice", A)
        alice.send(f"<iq to='bob@{B}' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>")
        got = await alice.take(lambda e: e.tag == q(CLIENT, "iq"), timeout=10)
        assert got.get("type") == "error"
        assert error_condition(got) == ("cancel", "remote-server-not-found")
        assert (got.get("id"), got.get("from")) == ("v1", f"bob@{B}")
        await alice.close()
    finally:
        await a.stop()
        peer.close()


async def test_piggybacking_two_domains_one_link(tmp_path: Path) -> None:
    """XEP-0220 §2.6.1: a second sender domain is authenticated on the same stream."""
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A, "a2.example"], a_addr, {B: b_addr})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr, "a2.example": a_addr})
    try:
        alice = await user(a, "alice", A)
        carol = await user(a, "carol", "a2.example")
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<message to='bob@{B}' id='m1'><body>from a</body></message>")
        first = await bob.take(is_message, timeout=10)
        carol.send(f"<message to='bob@{B}' id='m2'><body>from a2</body></message>")
        second = await bob.take(is_message, timeout=10)
        assert (first.get("from"), second.get("from")) == (alice.jid, carol.jid)
        outgoing = [link for link in a.s2s.describe() if link["direction"] == "out"]
        assert len(outgoing) == 1, outgoing
        assert outgoing[0]["local"] == [A, "a2.example"]
        assert outgoing[0]["remote"] == [B]
        incoming = [link for link in b.s2s.describe() if link["direction"] == "in"]
        assert any(link["remote"] == [A, "a2.example"] for link in incoming), incoming
        await alice.close()
        await carol.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


async def test_idle_link_is_closed(tmp_path: Path) -> None:
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr}, s2s={"idle_timeout": 1})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr})
    try:
        alice = await user(a, "alice", A)
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<message to='bob@{B}' id='m1'><body>once</body></message>")
        await bob.take(is_message, timeout=10)
        assert a.s2s.describe()
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not a.s2s.describe() and not b.s2s.describe():
                break
        assert a.s2s.describe() == [] and b.s2s.describe() == []
        # The next message opens a new link.
        alice.send(f"<message to='bob@{B}' id='m2'><body>again</body></message>")
        got = await bob.take(is_message, timeout=10)
        assert got.findtext(q(CLIENT, "body")) == "again"
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


async def test_blocked_domain(tmp_path: Path) -> None:
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr}, s2s={"blocked_domains": [B]})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr})
    try:
        alice = await user(a, "alice", A)
        bob = await user(b, "bob", B)
        alice.send(f"<message to='bob@{B}' id='m1'><body>x</body></message>")
        got = await alice.take(is_message, timeout=10)
        assert error_condition(got) == ("cancel", "not-allowed")
        # B's attempt is refused by A: B bounces it.
        bob.send(f"<message to='alice@{A}' id='m2'><body>y</body></message>")
        got = await bob.take(is_message, timeout=10)
        assert got.get("type") == "error"
        assert error_condition(got)[1] == "remote-server-not-found"
        await alice.assert_none(is_message)
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


async def test_cli_lists_links(fed: Federation, tmp_path: Path) -> None:
    alice = await user(fed.a, "alice", A)
    bob = await user(fed.b, "bob", B, presence=True)
    alice.send(f"<message to='bob@{B}' id='m1'><body>x</body></message>")
    await bob.take(is_message, timeout=10)
    config = tmp_path / "a.toml"
    config.write_text(f"[server]\ndomains = ['{A}']\ndata_dir = '{fed.a.config.data_path}'\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dovecote",
        "s2s",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].split() == ["DIR", "LOCAL", "REMOTE", "AUTH", "TLS", "CERT", "IDLE"]
    row = next(line.split() for line in lines[1:] if line.startswith("out"))
    assert row[:4] == ["out", A, B, "dialback"]
    assert row[4].startswith("TLSv1.")
    assert row[5] == "invalid"  # self-signed: not trusted
    await alice.close()
    await bob.close()


# ---- everything local works across servers --------------------------------------------------
async def subscribe_both_ways(alice: Resource, bob: Resource) -> None:
    """RFC 6121 §3: alice and bob (on two servers) subscribe to each other."""
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    request = await bob.presence(timeout=10, type="subscribe")
    assert request.get("from") == alice.bare
    bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    await alice.presence(timeout=10, type="subscribed")
    bob.send(f"<presence to='{alice.bare}' type='subscribe'/>")
    await alice.presence(timeout=10, type="subscribe")
    alice.send(f"<presence to='{bob.bare}' type='subscribed'/>")
    await bob.presence(timeout=10, type="subscribed")


async def test_subscription_and_presence_both_ways(fed: Federation) -> None:
    alice = await user(fed.a, "alice", A, roster=True, presence=True)
    bob = await user(fed.b, "bob", B, roster=True, presence=True)
    await subscribe_both_ways(alice, bob)
    item = await alice.push_item(bob.bare)
    while item.get("subscription") != "both":
        item = await alice.push_item(bob.bare)
    item = await bob.push_item(alice.bare)
    while item.get("subscription") != "both":
        item = await bob.push_item(alice.bare)
    # Each gets the other's available presence once subscribed.
    await alice.presence(timeout=10, from_=bob.jid, type=None)
    await bob.presence(timeout=10, from_=alice.jid, type=None)
    # Presence changes travel across.
    alice.send("<presence><show>away</show></presence>")
    away = await bob.presence(timeout=10, from_=alice.jid, type=None)
    while away.findtext(q(CLIENT, "show")) != "away":
        away = await bob.presence(timeout=10, from_=alice.jid, type=None)
    # A new session of bob's probes alice's server (RFC 6121 §4.3) and learns her presence.
    bob2 = await login_resource(fed.b, "bob", "second", domain=B)
    await bob2.available()
    probed = await bob2.presence(timeout=10, from_=alice.jid, type=None)
    assert probed.findtext(q(CLIENT, "show")) == "away"
    # Logging out sends unavailable to the remote contact (RFC 6121 §4.5.2).
    await alice.close()
    await bob.presence(timeout=10, from_=alice.jid, type="unavailable")
    await bob.close()
    await bob2.close()


async def test_offline_and_mam_for_remote_sender(fed: Federation) -> None:
    alice = await user(fed.a, "alice", A, roster=True, presence=True)
    await add_user(fed.b, "bob", domain=B)
    # bob is offline: stored on B, delivered when he comes.
    alice.send(f"<message to='bob@{B}' type='chat' id='o1'><body>while away</body></message>")
    await asyncio.sleep(0.5)
    bob = await login_resource(fed.b, "bob", domain=B)
    await bob.available()
    got = await bob.take(is_message)
    assert got.get("from") == alice.jid
    assert got.findtext(q(CLIENT, "body")) == "while away"
    bob.send(f"<message to='{alice.jid}' type='chat' id='o2'><body>back now</body></message>")
    await alice.take(is_message, timeout=10)
    # Both archives (XEP-0313) hold the conversation with the remote party.
    for res, peer in ((alice, "bob@" + B), (bob, "alice@" + A)):
        res.send(
            f"<iq type='set' id='mam1'><query xmlns='urn:xmpp:mam:2' queryid='q1'>"
            f"<x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>"
            f"<field var='with'><value>{peer}</value></field></x></query></iq>"
        )
        bodies = []
        while True:
            el = await res.take(
                lambda e: (
                    (
                        e.tag == q(CLIENT, "message")
                        and e.find(q("urn:xmpp:mam:2", "result")) is not None
                    )
                    or (e.tag == q(CLIENT, "iq") and e.get("id") == "mam1")
                )
            )
            if el.tag == q(CLIENT, "iq"):
                assert el.get("type") == "result", ET.tostring(el)
                break
            forwarded = el.find(
                f"{q('urn:xmpp:mam:2', 'result')}/{q('urn:xmpp:forward:0', 'forwarded')}"
            )
            assert forwarded is not None
            bodies.append(forwarded.findtext(f"{q(CLIENT, 'message')}/{q(CLIENT, 'body')}"))
        assert bodies == ["while away", "back now"], (res.jid, bodies)
    await alice.close()
    await bob.close()


async def test_iq_to_remote_account(fed: Federation) -> None:
    """vCard and disco#info of an account on the other server (RFC 6120 §10, XEP-0054)."""
    alice = await user(fed.a, "alice", A, roster=True, presence=True)
    bob = await user(fed.b, "bob", B, roster=True, presence=True)
    result = await bob.request("<vCard xmlns='vcard-temp'><FN>Bob B</FN></vCard>", "set")
    assert result.get("type") == "result", ET.tostring(result)
    card = await alice.request("<vCard xmlns='vcard-temp'/>", "get", to=bob.bare, timeout=10)
    assert card.get("type") == "result", ET.tostring(card)
    assert card.get("from") == bob.bare
    assert card.findtext(f"{q('vcard-temp', 'vCard')}/{q('vcard-temp', 'FN')}") == "Bob B"
    # The server's disco#info across.
    info = await alice.request(
        "<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", to=B, timeout=10
    )
    assert info.get("type") == "result", ET.tostring(info)
    assert info.get("from") == B
    # An IQ to a full JID of the other server reaches that client, and the answer comes back.
    alice.send(f"<iq type='get' id='p1' to='{bob.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    ping = await bob.take(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == "p1", timeout=10)
    assert ping.get("from") == alice.jid
    bob.send(f"<iq type='result' id='p1' to='{alice.jid}'/>")
    pong = await alice.iq("p1", timeout=10)
    assert (pong.get("type"), pong.get("from")) == ("result", bob.jid)
    # No such account there: service-unavailable from B (RFC 6121 §8.5.1).
    missing = await alice.request(
        "<vCard xmlns='vcard-temp'/>", "get", to=f"nobody@{B}", timeout=10
    )
    assert error_condition(missing) == ("cancel", "service-unavailable")
    await alice.close()
    await bob.close()


PEP_MODULES = {"enabled": ["caps", "pep"]}
CAPS_NS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
TUNE = "http://jabber.org/protocol/tune"
PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = f"{PUBSUB}#event"


def caps_answer(features: list[str]) -> tuple[str, str]:
    """A client's disco#info <query/> and its XEP-0115 §5.1 ver."""
    import base64
    import hashlib

    node = "https://dovecote.example/s2s-test"
    all_features = sorted(set(features) | {DISCO_INFO, CAPS_NS})
    s = "client/pc//Test<" + "".join(f"{f}<" for f in all_features)
    ver = base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()
    body = "".join(f"<feature var='{f}'/>" for f in all_features)
    query = (
        f"<query xmlns='{DISCO_INFO}' node='{node}#{ver}'>"
        f"<identity category='client' type='pc' name='Test'/>{body}</query>"
    )
    return query, f"<c xmlns='{CAPS_NS}' hash='sha-1' node='{node}' ver='{ver}'/>"


def is_caps_query(sender: str) -> Any:
    def check(el: ET.Element) -> bool:
        return (
            el.tag == q(CLIENT, "iq")
            and el.get("type") == "get"
            and el.get("from") == sender
            and el.find(q(DISCO_INFO, "query")) is not None
        )

    return check


async def test_pep_notification_to_remote_contact(tmp_path: Path) -> None:
    """XEP-0163 §4: bob (on B) publishes; alice (on A, a 'both' contact whose caps say
    tune+notify) gets the notification over s2s, and B learned her caps by asking her
    full JID across (XEP-0115 §6.2)."""
    from dovecote.storage.base import RosterItem

    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr}, modules=PEP_MODULES)
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr}, modules=PEP_MODULES)
    try:
        await add_user(a, "alice", domain=A)
        await add_user(b, "bob", domain=B)
        await a.storage.roster.put("alice", A, RosterItem(f"bob@{B}", subscription="both"))
        await b.storage.roster.put("bob", B, RosterItem(f"alice@{A}", subscription="both"))
        bob = await login_resource(b, "bob", domain=B, roster=True, presence=True)
        # A first publication: sent as the last item when alice's caps become known.
        first = await bob.request(
            f"<pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item id='t1'>"
            f"<tune xmlns='{TUNE}'><title>First</title></tune></item></publish></pubsub>",
            "set",
        )
        assert first.get("type") == "result", ET.tostring(first)
        alice = await login_resource(a, "alice", domain=A, roster=True)
        query, c = caps_answer([f"{TUNE}+notify"])
        alice.send(f"<presence>{c}</presence>")
        # Her own server asks, then bob's server asks across.
        for asker in (A, B):
            request = await alice.take(is_caps_query(asker), timeout=10)
            alice.send(f"<iq type='result' id='{request.get('id')}' to='{asker}'>{query}</iq>")
        last = await alice.take(
            lambda e: e.tag == q(CLIENT, "message") and e.find(q(EVENT, "event")) is not None,
            timeout=10,
        )
        assert last.get("from") == f"bob@{B}"
        assert last.get("to") == alice.jid
        title = f"{q(EVENT, 'event')}/{q(EVENT, 'items')}/{q(EVENT, 'item')}/{q(TUNE, 'tune')}"
        assert last.findtext(f"{title}/{q(TUNE, 'title')}") == "First"
        published = await bob.request(
            f"<pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item id='t2'>"
            f"<tune xmlns='{TUNE}'><title>Second</title></tune></item></publish></pubsub>",
            "set",
        )
        assert published.get("type") == "result", ET.tostring(published)
        note = await alice.take(
            lambda e: e.tag == q(CLIENT, "message") and e.find(q(EVENT, "event")) is not None,
            timeout=10,
        )
        assert note.get("from") == f"bob@{B}"
        assert note.findtext(f"{title}/{q(TUNE, 'title')}") == "Second"
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MUC_OWNER = f"{MUC}#owner"


async def test_muc_occupant_from_other_server(tmp_path: Path) -> None:
    """XEP-0045: bob (on B) joins a room on A's MUC service, talks, and leaves; the
    service domain muc.a.example is authenticated by dialback like any sender domain."""
    muc = f"muc.{A}"
    room = f"lounge@{muc}"
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr}, muc={"domain": muc})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr, muc: a_addr})
    try:
        alice = await user(a, "alice", A, presence=True)
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<presence to='{room}/alice'><x xmlns='{MUC}'/></presence>")
        await alice.presence(from_=f"{room}/alice")
        form = f"<query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query>"
        created = await alice.request(form, "set", room)
        assert created.get("type") == "result", ET.tostring(created)

        bob.send(f"<presence to='{room}/bob'><x xmlns='{MUC}'/></presence>")
        own = await bob.presence(timeout=10, from_=f"{room}/bob", type=None)
        statuses = {s.get("code") for s in own.iter(q(MUC_USER, "status"))}
        assert "110" in statuses, ET.tostring(own)
        await bob.presence(from_=f"{room}/alice", type=None)
        joined = await alice.presence(timeout=10, from_=f"{room}/bob", type=None)
        real = joined.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'item')}")
        assert real is not None

        bob.send(f"<message to='{room}' type='groupchat' id='g1'><body>hi all</body></message>")
        for res in (alice, bob):
            got = await res.take(
                lambda e: (
                    e.tag == q(CLIENT, "message")
                    and e.get("type") == "groupchat"
                    and e.findtext(q(CLIENT, "body")) == "hi all"
                ),
                timeout=10,
            )
            assert got.get("from") == f"{room}/bob"
        alice.send(f"<message to='{room}' type='groupchat' id='g2'><body>welcome</body></message>")
        got = await bob.take(
            lambda e: e.tag == q(CLIENT, "message") and e.findtext(q(CLIENT, "body")) == "welcome",
            timeout=10,
        )
        assert (got.get("from"), got.get("type")) == (f"{room}/alice", "groupchat")

        bob.send(f"<presence to='{room}/bob' type='unavailable'/>")
        await bob.presence(timeout=10, from_=f"{room}/bob", type="unavailable")
        await alice.presence(timeout=10, from_=f"{room}/bob", type="unavailable")
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


CARBONS = "urn:xmpp:carbons:2"


async def test_carbons_and_blocking_with_a_remote_contact(fed: Federation) -> None:
    """XEP-0280 copies of a conversation with a remote contact, and XEP-0191 blocking of
    a remote JID."""
    await add_user(fed.a, "alice", domain=A)
    alice1 = await login_resource(fed.a, "alice", "one", domain=A, presence=True)
    alice2 = await login_resource(fed.a, "alice", "two", domain=A, presence=True)
    for res in (alice1, alice2):
        enabled = await res.request(f"<enable xmlns='{CARBONS}'/>", "set")
        assert enabled.get("type") == "result", ET.tostring(enabled)
    bob = await user(fed.b, "bob", B, presence=True)
    bob.send(f"<message to='{alice1.jid}' type='chat' id='c1'><body>to one</body></message>")
    direct = await alice1.take(is_message, timeout=10)
    assert direct.get("from") == bob.jid
    copy = await alice2.take(
        lambda e: is_message(e) and e.find(q(CARBONS, "received")) is not None, timeout=10
    )
    forwarded = copy.find(f"{q(CARBONS, 'received')}/{{urn:xmpp:forward:0}}forwarded")
    assert forwarded is not None
    assert forwarded.find(q(CLIENT, "message")).get("from") == bob.jid  # type: ignore[union-attr]
    alice1.send(f"<message to='{bob.jid}' type='chat' id='c2'><body>to bob</body></message>")
    await bob.take(is_message, timeout=10)
    await alice2.take(
        lambda e: is_message(e) and e.find(q(CARBONS, "sent")) is not None, timeout=10
    )
    # alice blocks bob@b.example: his messages no longer reach her.
    blocked = await alice1.request(
        f"<block xmlns='urn:xmpp:blocking'><item jid='bob@{B}'/></block>", "set"
    )
    assert blocked.get("type") == "result", ET.tostring(blocked)
    bob.send(f"<message to='alice@{A}' type='chat' id='c3'><body>blocked?</body></message>")
    bounced = await bob.take(is_message, timeout=10)
    assert bounced.get("type") == "error"
    assert error_condition(bounced)[1] == "service-unavailable"
    await alice1.assert_none(lambda e: is_message(e) and e.get("id") == "c3")
    await alice2.assert_none(lambda e: is_message(e) and e.get("id") == "c3")
    for res in (alice1, alice2, bob):
        await res.close()


async def test_pubsub_subscriber_on_other_server(tmp_path: Path) -> None:
    """XEP-0060 §6.1, §7.1.2.1: a subscriber on another server gets the notifications of
    a node on this server's pubsub service."""
    service = f"pubsub.{A}"
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {B: b_addr}, pubsub={"domain": service})
    b = await start_peer(tmp_path / "b", [B], b_addr, {A: a_addr, service: a_addr})
    try:
        alice = await user(a, "alice", A, presence=True)
        bob = await user(b, "bob", B, presence=True)
        created = await alice.request(
            f"<pubsub xmlns='{PUBSUB}'><create node='news'/></pubsub>", "set", service
        )
        assert created.get("type") == "result", ET.tostring(created)
        subscribed = await bob.request(
            f"<pubsub xmlns='{PUBSUB}'><subscribe node='news' jid='{bob.jid}'/></pubsub>",
            "set",
            service,
            timeout=10,
        )
        assert subscribed.get("type") == "result", ET.tostring(subscribed)
        subscription = subscribed.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'subscription')}")
        assert subscription is not None and subscription.get("subscription") == "subscribed"
        published = await alice.request(
            f"<pubsub xmlns='{PUBSUB}'><publish node='news'><item id='n1'>"
            f"<entry xmlns='http://www.w3.org/2005/Atom'><title>Hello</title></entry>"
            f"</item></publish></pubsub>",
            "set",
            service,
        )
        assert published.get("type") == "result", ET.tostring(published)
        note = await bob.take(
            lambda e: is_message(e) and e.find(q(EVENT, "event")) is not None, timeout=10
        )
        assert note.get("from") == service
        item = note.find(f"{q(EVENT, 'event')}/{q(EVENT, 'items')}/{q(EVENT, 'item')}")
        assert item is not None and item.get("id") == "n1"
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()


async def test_srv_lookup_and_direct_tls(tmp_path: Path) -> None:
    """A finds B through DNS (`[s2s] nameservers`: a responder in this test) whose
    `_xmpps-server._tcp` record points at B's direct TLS port (XEP-0368)."""
    from tests.unit.test_dns import Responder

    b_tls_port = free_port("127.0.0.3")
    zone = {(f"_xmpps-server._tcp.{B}.", "SRV"): [f"0 0 {b_tls_port} 127.0.0.3."]}
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Responder(zone), local_addr=("127.0.0.1", 0)
    )
    dns_server = f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    a = await start_peer(tmp_path / "a", [A], a_addr, {}, s2s={"nameservers": [dns_server]})
    b = await start_server(
        tmp_path / "b",
        server={"domains": [B], "data_dir": str(tmp_path / "b")},
        listen={"s2s": "", "s2s_tls": f"127.0.0.3:{b_tls_port}"},
        s2s={"routes": {A: a_addr}},
    )
    try:
        alice = await user(a, "alice", A)
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<message to='bob@{B}' id='d1'><body>via SRV</body></message>")
        got = await bob.take(is_message, timeout=10)
        assert got.findtext(q(CLIENT, "body")) == "via SRV"
        (link,) = [row for row in a.s2s.describe() if row["direction"] == "out"]
        assert link["auth"] == "dialback" and link["tls"].startswith("TLSv1.")
        await alice.close()
        await bob.close()
    finally:
        await a.stop()
        await b.stop()
        transport.close()


async def test_peer_stream_error_closes_only_that_link(fed: Federation) -> None:
    alice = await user(fed.a, "alice", A, presence=True)
    bob = await user(fed.b, "bob", B, presence=True)
    alice.send(f"<message to='bob@{B}' id='e1'><body>first</body></message>")
    await bob.take(is_message, timeout=10)
    raw, _features = await raw_server(fed.b_address, A, B)
    assert raw.header is not None
    key = dialback_key(fed.a.s2s.secret, B, A, raw.header["id"])
    raw.send(f"<db:result xmlns:db='{DB}' from='{A}' to='{B}'>{key}</db:result>")
    assert (await raw.expect(q(DB, "result"), timeout=10)).get("type") == "valid"
    raw.send(
        "<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        "</stream:error></stream:stream>"
    )
    await raw.closed()
    # The real link between A and B is untouched.
    alice.send(f"<message to='bob@{B}' id='e2'><body>second</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert got.findtext(q(CLIENT, "body")) == "second"
    await alice.close()
    await bob.close()


async def test_dialback_secret_survives_a_restart(tmp_path: Path) -> None:
    """The generated secret is kept in data_dir: keys handed out before a restart still
    verify after it."""
    address = f"127.0.0.2:{free_port('127.0.0.2')}"
    a = await start_peer(tmp_path / "a", [A], address, {})
    secret = a.s2s.secret
    await a.stop()
    assert (tmp_path / "a" / "s2s-secret").stat().st_mode & 0o777 == 0o600
    a = await start_peer(tmp_path / "a", [A], address, {})
    try:
        assert a.s2s.secret == secret
    finally:
        await a.stop()


async def test_queue_limit_while_connecting(tmp_path: Path) -> None:
    """`max_queue` stanzas wait for a link being set up; one more is refused at once with
    resource-constraint; the waiting ones bounce when the peer never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.3", 0))
    silent.listen(5)
    route = f"127.0.0.3:{silent.getsockname()[1]}"
    a = await start_peer(
        tmp_path / "a",
        [A],
        f"127.0.0.2:{free_port('127.0.0.2')}",
        {B: route},
        s2s={"connect_timeout": 2, "max_queue": 2},
    )
    try:
        alice = await user(a, "alice", A)
        for n in range(3):
            alice.send(f"<message to='bob@{B}' id='q{n}'><body>{n}</body></message>")
        refused = await alice.take(is_message, timeout=5)
        assert (refused.get("id"), error_condition(refused)) == (
            "q2",
            ("wait", "resource-constraint"),
        )
        for _ in range(2):
            late = await alice.take(is_message, timeout=10)
            assert late.get("id") in ("q0", "q1")
            assert error_condition(late) == ("wait", "remote-server-timeout")
        await alice.close()
    finally:
        await a.stop()
        silent.close()


async def test_federation_off_keeps_remote_server_not_found(tmp_path: Path) -> None:
    a = await start_peer(tmp_path / "a", [A], "", {}, s2s={"enabled": False})
    try:
        assert a.s2s is None and "s2s" not in a.ports
        alice = await user(a, "alice", A)
        alice.send(f"<message to='bob@{B}' id='x1'><body>x</body></message>")
        got = await alice.take(is_message)
        assert error_condition(got) == ("cancel", "remote-server-not-found")
        await alice.close()
    finally:
        await a.stop()
