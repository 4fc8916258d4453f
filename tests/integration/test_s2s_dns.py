"""Federation found through a real DNS server: dnsmasq (tests/federation.py) serves SRV
and A records for the test domains; the servers have no `[s2s.routes]` and resolve
through `[s2s] nameservers` (RFC 6120 §3.2, RFC 2782 order, §3.2.2 fallback)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.federation import SRV, DnsMasq, free_port, loopback_port_free, require
from tests.helpers import CLIENT, error_condition, q
from tests.integration.test_s2s import is_message, user

A = "a.test"
B = "b.test"
C = "c.test"


@pytest.fixture
def dnsmasq_ready() -> None:
    require("dnsmasq")


@pytest.fixture
def dns(tmp_path: Path, dnsmasq_ready: None) -> Iterator[DnsMasq]:
    server = DnsMasq(tmp_path / "dns")
    yield server
    server.stop()


@pytest.fixture
async def servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        await server.stop()


async def peer(
    tmp_path: Path, domain: str, listen: str, dns: DnsMasq, servers: list[Server]
) -> Server:
    from tests.helpers import start_server

    server = await start_server(
        tmp_path / domain,
        server={"domains": [domain], "data_dir": str(tmp_path / domain)},
        listen={"s2s": listen},
        s2s={"nameservers": [dns.address], "connect_timeout": 5},
    )
    servers.append(server)
    return server


async def test_srv_records_without_routes(
    tmp_path: Path, dns: DnsMasq, servers: list[Server]
) -> None:
    a_port, b_port = free_port("127.0.0.2"), free_port("127.0.0.3")
    dns.hosts = {f"xmpp.{A}": "127.0.0.2", f"xmpp.{B}": "127.0.0.3"}
    dns.srv = [SRV(A, f"xmpp.{A}", a_port), SRV(B, f"xmpp.{B}", b_port)]
    dns.start()
    a = await peer(tmp_path, A, f"127.0.0.2:{a_port}", dns, servers)
    b = await peer(tmp_path, B, f"127.0.0.3:{b_port}", dns, servers)
    alice = await user(a, "alice", A, presence=True)
    bob = await user(b, "bob", B, presence=True)
    alice.send(f"<message to='bob@{B}' type='chat' id='m1'><body>by SRV</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert (got.get("from"), got.findtext(q(CLIENT, "body"))) == (alice.jid, "by SRV")
    bob.send(f"<message to='{alice.jid}' type='chat' id='m2'><body>back</body></message>")
    got = await alice.take(is_message, timeout=10)
    assert got.findtext(q(CLIENT, "body")) == "back"
    log = (dns.directory / "dnsmasq.log").read_text()
    assert f"_xmpp-server._tcp.{B}" in log and f"_xmpp-server._tcp.{A}" in log
    await alice.close()
    await bob.close()


async def test_srv_priority_next_target_when_first_is_down(
    tmp_path: Path, dns: DnsMasq, servers: list[Server]
) -> None:
    """RFC 2782: priority 0 first (nothing listens there), then priority 5 (B); the
    priority 10 target (a listener that counts connections) is never tried."""
    b_port = free_port("127.0.0.3")
    dead_port = free_port("127.0.0.3")
    decoy = socket.socket()
    decoy.bind(("127.0.0.3", 0))
    decoy.listen(5)
    decoy.setblocking(False)
    a_port = free_port("127.0.0.2")
    dns.hosts = {
        f"down.{B}": "127.0.0.3",
        f"up.{B}": "127.0.0.3",
        f"last.{B}": "127.0.0.3",
        f"xmpp.{A}": "127.0.0.2",  # B asks A's Authoritative Server (dialback)
    }
    dns.srv = [
        SRV(A, f"xmpp.{A}", a_port),
        SRV(B, f"last.{B}", decoy.getsockname()[1], priority=10, weight=100),
        SRV(B, f"up.{B}", b_port, priority=5, weight=0),
        SRV(B, f"down.{B}", dead_port, priority=0, weight=50),
    ]
    dns.start()
    try:
        a = await peer(tmp_path, A, f"127.0.0.2:{a_port}", dns, servers)
        b = await peer(tmp_path, B, f"127.0.0.3:{b_port}", dns, servers)
        alice = await user(a, "alice", A)
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<message to='bob@{B}' id='m1'><body>second target</body></message>")
        got = await bob.take(is_message, timeout=10)
        assert got.findtext(q(CLIENT, "body")) == "second target"
        with pytest.raises(BlockingIOError):
            decoy.accept()
        await alice.close()
        await bob.close()
    finally:
        decoy.close()


async def test_a_record_fallback_on_5269(
    tmp_path: Path, dns: DnsMasq, servers: list[Server]
) -> None:
    """RFC 6120 §3.2.2: no SRV record: the domain's own address, port 5269."""
    if not loopback_port_free("127.0.0.6", 5269):
        pytest.skip("127.0.0.6:5269 is taken")
    a_port = free_port("127.0.0.2")
    dns.hosts = {C: "127.0.0.6", f"xmpp.{A}": "127.0.0.2"}
    dns.srv = [SRV(A, f"xmpp.{A}", a_port)]  # for C's dialback check with A
    dns.start()
    a = await peer(tmp_path, A, f"127.0.0.2:{a_port}", dns, servers)
    c = await peer(tmp_path, C, "127.0.0.6:5269", dns, servers)
    alice = await user(a, "alice", A)
    carol = await user(c, "carol", C, presence=True)
    alice.send(f"<message to='carol@{C}' id='m1'><body>by A record</body></message>")
    got = await carol.take(is_message, timeout=10)
    assert got.findtext(q(CLIENT, "body")) == "by A record"
    await alice.close()
    await carol.close()


async def test_unknown_domain_bounces(tmp_path: Path, dns: DnsMasq, servers: list[Server]) -> None:
    """NXDOMAIN for the SRV and A look-ups: remote-server-not-found."""
    dns.start()
    a = await peer(tmp_path, A, f"127.0.0.2:{free_port('127.0.0.2')}", dns, servers)
    alice = await user(a, "alice", A)
    alice.send("<message to='nobody@nowhere.test' id='m1'><body>x</body></message>")
    got = await alice.take(is_message, timeout=10)
    assert got.get("type") == "error"
    assert error_condition(got) == ("cancel", "remote-server-not-found")
    await alice.close()
    await asyncio.sleep(0)


async def test_next_target_when_the_first_offers_no_tls(
    tmp_path: Path, dns: DnsMasq, servers: list[Server]
) -> None:
    """RFC 6120 §3.2.1: the first SRV target answers but offers no STARTTLS (TLS is
    required): the link goes on to the next target instead of bouncing."""
    seen: list[str] = []

    async def no_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        seen.append("connected")
        writer.write(
            (
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                "xmlns:stream='http://etherx.jabber.org/streams' "
                f"xmlns:db='jabber:server:dialback' from='{B}' id='x1' version='1.0'>"
                "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                "</stream:features>"
            ).encode()
        )
        await writer.drain()
        await reader.read(4096)
        writer.close()

    plain = await asyncio.start_server(no_tls, "127.0.0.3", 0)
    a_port, b_port = free_port("127.0.0.2"), free_port("127.0.0.3")
    dns.hosts = {f"xmpp.{A}": "127.0.0.2", f"plain.{B}": "127.0.0.3", f"xmpp.{B}": "127.0.0.3"}
    dns.srv = [
        SRV(A, f"xmpp.{A}", a_port),
        SRV(B, f"plain.{B}", plain.sockets[0].getsockname()[1], priority=0),
        SRV(B, f"xmpp.{B}", b_port, priority=10),
    ]
    dns.start()
    try:
        a = await peer(tmp_path, A, f"127.0.0.2:{a_port}", dns, servers)
        b = await peer(tmp_path, B, f"127.0.0.3:{b_port}", dns, servers)
        alice = await user(a, "alice", A)
        bob = await user(b, "bob", B, presence=True)
        alice.send(f"<message to='bob@{B}' id='m1'><body>past the first</body></message>")
        got = await bob.take(is_message, timeout=10)
        assert got.findtext(q(CLIENT, "body")) == "past the first"
        assert seen == ["connected"]
        await alice.close()
        await bob.close()
    finally:
        plain.close()
