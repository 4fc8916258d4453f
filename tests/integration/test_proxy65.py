"""XEP-0065 SOCKS5 bytestreams proxy at `[proxy65] domain`, over real sockets: slixmpp's
xep_0065 plugin transferring a file through it, raw XML for exact stanzas, raw SOCKS5
(RFC 1928) for the listener's answers to good and bad input."""

from __future__ import annotations

import asyncio
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.server import Server
from dovecote.services.proxy65.service import Proxy65Service
from dovecote.services.proxy65.socks5 import stream_hash
from dovecote.stream.errors import StanzaError
from tests.helpers import (
    CLIENT,
    DOMAIN,
    RawClient,
    add_user,
    connect,
    disconnect,
    error_condition,
    q,
    raw_login,
    start_server,
)

PROXY = "proxy.example.org"
BYTESTREAMS = "http://jabber.org/protocol/bytestreams"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
TARGET = f"bob@{DOMAIN}/target"
IQ = q(CLIENT, "iq")


# ---- set-up --------------------------------------------------------------------------------
async def start(data_dir: Path, **proxy65: object) -> Server:
    srv = await start_server(
        data_dir, proxy65={"domain": PROXY, "address": "127.0.0.1:0", **proxy65}
    )
    for name in ("alice", "bob"):
        await add_user(srv, name)
    return srv


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start(tmp_path / "data")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def alice(server: Server) -> AsyncIterator[tuple[RawClient, str]]:
    raw, jid = await raw_login(server, "alice")
    try:
        yield raw, jid
    finally:
        await raw.close()


def service_of(server: Server) -> Proxy65Service:
    service = server.components[PROXY]
    assert isinstance(service, Proxy65Service)
    return service


async def iq(raw: RawClient, body: str, *, type: str = "get", to: str = PROXY) -> ET.Element:
    ident = os.urandom(4).hex()
    raw.send(f"<iq type='{type}' id='{ident}' to='{to}'>{body}</iq>")
    return await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == ident)


def activation(sid: str, target: str) -> str:
    return f"<query xmlns='{BYTESTREAMS}' sid='{sid}'><activate>{target}</activate></query>"


# ---- raw SOCKS5 ----------------------------------------------------------------------------
class Socks:
    """A SOCKS5 client connection to the proxy (RFC 1928, as XEP-0065 §5.3.2 uses it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: Server) -> Socks:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["proxy65"])
        return cls(reader, writer)

    @classmethod
    async def connected(cls, server: Server, digest: str) -> Socks:
        """Greeting (no authentication) and CONNECT to `digest`; the reply must succeed."""
        socks = await cls.open(server)
        socks.send(b"\x05\x01\x00")
        assert await socks.read_exactly(2) == b"\x05\x00"
        socks.send(request(digest))
        reply = await socks.read_exactly(5 + len(digest) + 2)
        name = digest.encode()
        assert reply == b"\x05\x00\x00\x03" + bytes([len(name)]) + name + b"\0\0"
        return socks

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_exactly(self, count: int, timeout: float = 10) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(count), timeout)

    async def read_until_closed(self, timeout: float = 10) -> bytes:
        """Everything until the proxy closes the connection."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def request(digest: str, command: int = 1, address_type: int = 3) -> bytes:
    name = digest.encode()
    return bytes([5, command, 0, address_type, len(name)]) + name + struct.pack(">H", 0)


async def activated_pair(
    server: Server, alice: tuple[RawClient, str], sid: str = "s1"
) -> tuple[Socks, Socks]:
    """Target and Requester connected (XEP-0065 §6.3.2, §6.3.4) and activated (§6.3.5)."""
    raw, jid = alice
    digest = stream_hash(sid, jid, TARGET)
    target = await Socks.connected(server, digest)
    requester = await Socks.connected(server, digest)
    result = await iq(raw, activation(sid, TARGET), type="set")
    assert result.get("type") == "result", ET.tostring(result)
    assert list(result) == []
    return target, requester


# ---- discovery (§4) --------------------------------------------------------------------------
async def test_server_disco_items_list_the_proxy(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    raw, _jid = alice
    result = await iq(raw, f"<query xmlns='{DISCO_ITEMS}'/>", to=DOMAIN)
    assert result.get("type") == "result"
    items = {
        item.get("jid"): item.get("name")
        for item in result.findall(f"{q(DISCO_ITEMS, 'query')}/{q(DISCO_ITEMS, 'item')}")
    }
    assert items[PROXY] == "File transfer proxy"


async def test_proxy_disco_info(server: Server, alice: tuple[RawClient, str]) -> None:
    raw, _jid = alice
    result = await iq(raw, f"<query xmlns='{DISCO_INFO}'/>")
    assert result.get("type") == "result" and result.get("from") == PROXY
    query = result.find(q(DISCO_INFO, "query"))
    assert query is not None
    identities = [
        (i.get("category"), i.get("type"), i.get("name"))
        for i in query.findall(q(DISCO_INFO, "identity"))
    ]
    assert identities == [("proxy", "bytestreams", "File transfer proxy")]
    features = {f.get("var") for f in query.findall(q(DISCO_INFO, "feature"))}
    assert BYTESTREAMS in features and DISCO_INFO in features
    # A node the proxy does not have; an address on its domain that does not exist.
    result = await iq(raw, f"<query xmlns='{DISCO_INFO}' node='x'/>")
    assert error_condition(result) == ("cancel", "item-not-found")
    result = await iq(raw, f"<query xmlns='{DISCO_INFO}'/>", to=f"someone@{PROXY}")
    assert error_condition(result) == ("cancel", "service-unavailable")


async def test_streamhost_address(server: Server, alice: tuple[RawClient, str]) -> None:
    raw, _jid = alice
    result = await iq(raw, f"<query xmlns='{BYTESTREAMS}'/>")
    assert result.get("type") == "result"
    hosts = result.findall(f"{q(BYTESTREAMS, 'query')}/{q(BYTESTREAMS, 'streamhost')}")
    assert [dict(h.attrib) for h in hosts] == [
        {"jid": PROXY, "host": "127.0.0.1", "port": str(server.ports["proxy65"])}
    ]
    assert server.ports["proxy65"] != 0


@pytest.mark.parametrize(
    ("settings", "announced"),
    [
        ({"public_host": "files.example.org"}, "files.example.org"),
        ({"public_host": "[2001:DB8:0:0::1]"}, "2001:db8::1"),  # RFC 5952 (§4)
        ({"address": "0.0.0.0:0"}, DOMAIN),  # every address: the server's first domain
    ],
)
async def test_public_host_is_announced(
    tmp_path: Path, settings: dict[str, str], announced: str
) -> None:
    srv = await start(tmp_path / "data", **settings)
    try:
        raw, _jid = await raw_login(srv, "alice")
        result = await iq(raw, f"<query xmlns='{BYTESTREAMS}'/>")
        host = result.find(f"{q(BYTESTREAMS, 'query')}/{q(BYTESTREAMS, 'streamhost')}")
        assert host is not None and host.get("host") == announced
        await raw.close()
    finally:
        await srv.stop()


async def test_only_local_accounts_may_use_the_proxy(server: Server) -> None:
    """§4: a Requester without permission gets forbidden (`allowed = "local"`); the server's
    other domain counts as local. Without federation no remote JID can ask over a
    socket, so the check is called directly for one."""
    service = service_of(server)
    service._check_allowed(JID.parse("carol@other.example/r"))
    with pytest.raises(StanzaError) as raised:
        service._check_allowed(JID.parse("mallory@remote.example/r"))
    assert raised.value.condition == "forbidden" and raised.value.type == "auth"


# ---- a real client's file transfer -----------------------------------------------------------
async def test_slixmpp_transfer_through_the_proxy(server: Server) -> None:
    """Two slixmpp clients: the Requester finds the proxy by disco (§4), offers it, the
    Target connects and says which streamhost it used, the Requester connects and
    activates (§6), and 1 MiB arrives byte for byte."""
    requester = await connect(server, ALICE)
    target = await connect(server, BOB)
    try:
        for client in (requester, target):
            client.register_plugin("xep_0065", pconfig={"auto_accept": True})
        received = bytearray()
        done = asyncio.Event()
        size = 1024 * 1024
        payload = os.urandom(size)

        def on_data(data: bytes) -> None:
            received.extend(data)
            if len(received) >= size:
                done.set()

        target.add_event_handler("socks5_data", on_data)
        proxies = await requester.plugin["xep_0065"].discover_proxies()
        assert {str(jid): addr for jid, addr in proxies.items()} == {
            PROXY: ("127.0.0.1", str(server.ports["proxy65"]))
        }
        sock = await asyncio.wait_for(requester.plugin["xep_0065"].handshake(target.boundjid), 15)
        assert sock is not None
        for offset in range(0, size, 65536):
            await sock.write(payload[offset : offset + 65536])
        await asyncio.wait_for(done.wait(), 30)
        assert bytes(received) == payload
        relays = service_of(server).relays
        assert len(relays) == 1 and next(iter(relays)).relayed == size
        sock.transport.close()
    finally:
        await disconnect(requester, target)


# ---- relaying ---------------------------------------------------------------------------------
async def test_raw_relay_both_ways_and_close(server: Server, alice: tuple[RawClient, str]) -> None:
    raw, jid = alice
    digest = stream_hash("s1", jid, TARGET)
    target = await Socks.connected(server, digest)
    requester = await Socks.connected(server, digest)
    # §9.1: what is sent before activation is ignored.
    target.send(b"early bytes")
    await asyncio.sleep(0.2)
    result = await iq(raw, activation("s1", TARGET), type="set")
    assert result.get("type") == "result"
    requester.send(b"hello target")
    assert await target.read_exactly(12) == b"hello target"
    target.send(b"hello requester")
    assert await requester.read_exactly(15) == b"hello requester"
    # The Requester finishes: the Target gets the last bytes, then the end.
    requester.send(b"the end")
    requester.writer.write_eof()
    assert await target.read_until_closed() == b"the end"
    assert await requester.read_until_closed() == b""
    await asyncio.sleep(0.05)
    service = service_of(server)
    assert service.relays == set() and service.waiting == {} and service.connections == set()


async def test_activation_with_the_target_as_addressed(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    """The Target hashed its JID as the Requester addressed it; the Requester may name it
    in another case in <activate/>: the normalized form is tried too."""
    raw, jid = alice
    digest = stream_hash("s2", jid, TARGET)
    first = await Socks.connected(server, digest)
    second = await Socks.connected(server, digest)
    result = await iq(raw, activation("s2", f"BOB@{DOMAIN.upper()}/target"), type="set")
    assert result.get("type") == "result", ET.tostring(result)
    first.send(b"x")
    assert await second.read_exactly(1) == b"x"
    await first.close()
    await second.close()


# ---- activation errors (§6.3.5) -----------------------------------------------------------------
async def test_activation_of_an_unknown_stream(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    raw, _jid = alice
    result = await iq(raw, activation("nothing", TARGET), type="set")
    assert error_condition(result) == ("cancel", "item-not-found")


async def test_activation_with_one_party_connected(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    raw, jid = alice
    target = await Socks.connected(server, stream_hash("s1", jid, TARGET))
    result = await iq(raw, activation("s1", TARGET), type="set")
    assert error_condition(result) == ("cancel", "not-allowed")
    await target.close()


async def test_activation_by_someone_else(server: Server, alice: tuple[RawClient, str]) -> None:
    """§6.3.5: item-not-found when the 'from' is not the Requester's full JID (it is in the
    hash); the stream stays, and its Requester can still activate it."""
    raw, jid = alice
    digest = stream_hash("s1", jid, TARGET)
    target = await Socks.connected(server, digest)
    requester = await Socks.connected(server, digest)
    bob, _bob_jid = await raw_login(server, "bob", "target")
    try:
        result = await iq(bob, activation("s1", TARGET), type="set")
        assert error_condition(result) == ("cancel", "item-not-found")
        # Alice's other resource is not her either.
        other, _other_jid = await raw_login(server, "alice", "other")
        result = await iq(other, activation("s1", TARGET), type="set")
        assert error_condition(result) == ("cancel", "item-not-found")
        await other.close()
        result = await iq(raw, activation("s1", TARGET), type="set")
        assert result.get("type") == "result"
        requester.send(b"ok")
        assert await target.read_exactly(2) == b"ok"
    finally:
        await bob.close()
        await target.close()
        await requester.close()


async def test_activation_requests_that_are_malformed(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    raw, _jid = alice
    result = await iq(raw, f"<query xmlns='{BYTESTREAMS}' sid='s1'/>", type="set")
    assert error_condition(result) == ("modify", "bad-request")
    no_sid = f"<query xmlns='{BYTESTREAMS}'><activate>{TARGET}</activate></query>"
    result = await iq(raw, no_sid, type="set")
    assert error_condition(result) == ("modify", "bad-request")
    result = await iq(raw, activation("s1", "@bad@"), type="set")
    assert error_condition(result) == ("modify", "jid-malformed")
    result = await iq(raw, "<query xmlns='urn:unknown'/>")
    assert error_condition(result) == ("cancel", "service-unavailable")


async def test_a_stream_is_activated_once(server: Server, alice: tuple[RawClient, str]) -> None:
    raw, _jid = alice
    target, requester = await activated_pair(server, alice)
    result = await iq(raw, activation("s1", TARGET), type="set")
    assert error_condition(result) == ("cancel", "item-not-found")
    await target.close()
    await requester.close()


# ---- SOCKS5 input (RFC 1928, XEP-0065 §9.2) ----------------------------------------------------
async def test_wrong_socks_version_is_closed(server: Server) -> None:
    socks = await Socks.open(server)
    socks.send(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")  # a SOCKS4 CONNECT
    assert await socks.read_until_closed() == b""


async def test_no_acceptable_method_is_closed(server: Server) -> None:
    socks = await Socks.open(server)
    socks.send(b"\x05\x01\x02")  # username/password only
    assert await socks.read_until_closed() == b"\x05\xff"


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (request("a" * 40, command=2), 7),  # BIND: command not supported
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", 8),  # IPv4: address type not supported
        (request("not a hash"), 4),
        (request("g" * 40), 4),
    ],
)
async def test_bad_requests_get_their_reply_and_are_closed(
    server: Server, alice: tuple[RawClient, str], req: bytes, code: int
) -> None:
    socks = await Socks.open(server)
    # The greeting and the request in one write, and in pieces: the same answers.
    socks.send(b"\x05\x02\x00\x02" + req[:3])
    socks.send(req[3:])
    assert await socks.read_exactly(2) == b"\x05\x00"
    reply = await socks.read_until_closed()
    assert reply[:2] == bytes([5, code]) and len(reply) == 10
    # The proxy goes on serving.
    target, requester = await activated_pair(server, alice)
    requester.send(b"still here")
    assert await target.read_exactly(10) == b"still here"


async def test_handshake_byte_by_byte(server: Server) -> None:
    socks = await Socks.open(server)
    digest = "ab" * 20
    for byte in b"\x05\x01\x00":
        socks.send(bytes([byte]))
        await asyncio.sleep(0.01)
    assert await socks.read_exactly(2) == b"\x05\x00"
    for byte in request(digest.upper()):
        socks.send(bytes([byte]))
    reply = await socks.read_exactly(47)
    assert reply[:5] == b"\x05\x00\x00\x03\x28"
    assert service_of(server).waiting.keys() == {digest}
    await socks.close()


async def test_a_third_connection_to_a_stream_is_refused(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    """XEP-0065 §9.1: one Target per bytestream."""
    _raw, jid = alice
    digest = stream_hash("s1", jid, TARGET)
    first = await Socks.connected(server, digest)
    second = await Socks.connected(server, digest)
    third = await Socks.open(server)
    third.send(b"\x05\x01\x00" + request(digest))
    assert await third.read_exactly(2) == b"\x05\x00"
    reply = await third.read_until_closed()
    assert reply[:2] == b"\x05\x02"
    await first.close()
    await second.close()


# ---- timeouts and limits ----------------------------------------------------------------------
async def test_a_pair_never_activated_times_out(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data", activation_timeout=0.5)
    try:
        digest = stream_hash("s1", f"{ALICE}/r", TARGET)
        first = await Socks.connected(srv, digest)
        second = await Socks.connected(srv, digest)
        silent = await Socks.open(srv)  # never even greets
        for socks in (first, second, silent):
            assert await socks.read_until_closed() == b""
        await asyncio.sleep(0.05)
        service = service_of(srv)
        assert service.waiting == {} and service.connections == set()
    finally:
        await srv.stop()


async def test_an_idle_relay_is_closed(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data", idle_timeout=0.5)
    raw, jid = await raw_login(srv, "alice")
    try:
        target, requester = await activated_pair(srv, (raw, jid))
        requester.send(b"one")
        assert await target.read_exactly(3) == b"one"
        assert await target.read_until_closed() == b""
        assert await requester.read_until_closed() == b""
    finally:
        await raw.close()
        await srv.stop()


async def test_max_transfer_size(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data", max_transfer_size=1000, max_bandwidth=0)
    raw, jid = await raw_login(srv, "alice")
    try:
        target, requester = await activated_pair(srv, (raw, jid))
        requester.send(b"a" * 600)
        assert await target.read_exactly(600) == b"a" * 600
        requester.send(b"b" * 600)
        assert await target.read_until_closed() == b""
        assert await requester.read_until_closed() == b""
    finally:
        await raw.close()
        await srv.stop()


async def test_connections_per_address(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data", max_connections_per_ip=2)
    try:
        first = await Socks.open(srv)
        second = await Socks.open(srv)
        third = await Socks.open(srv)
        assert await third.read_until_closed() == b""
        # The first two are served.
        for socks in (first, second):
            socks.send(b"\x05\x01\x00")
            assert await socks.read_exactly(2) == b"\x05\x00"
        await first.close()
        await asyncio.sleep(0.1)
        fourth = await Socks.open(srv)
        fourth.send(b"\x05\x01\x00")
        assert await fourth.read_exactly(2) == b"\x05\x00"
        await second.close()
        await fourth.close()
    finally:
        await srv.stop()


async def test_connections_in_all(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data", max_connections=2, max_connections_per_ip=0)
    try:
        first = await Socks.open(srv)
        second = await Socks.open(srv)
        third = await Socks.open(srv)
        assert await third.read_until_closed() == b""
        second.send(b"\x05\x01\x00")
        assert await second.read_exactly(2) == b"\x05\x00"
        await first.close()
        await second.close()
    finally:
        await srv.stop()


async def test_bandwidth_cap(tmp_path: Path) -> None:
    """200 KB at 100 KB/s take at least 1.5 s to arrive (no upper bound: CI is noisy)."""
    srv = await start(tmp_path / "data", max_bandwidth=100_000)
    raw, jid = await raw_login(srv, "alice")
    try:
        target, requester = await activated_pair(srv, (raw, jid))
        payload = os.urandom(200_000)
        loop = asyncio.get_running_loop()
        began = loop.time()
        requester.send(payload)
        received = await target.read_exactly(len(payload), timeout=60)
        elapsed = loop.time() - began
        assert received == payload
        assert elapsed >= 1.5, elapsed
        await target.close()
        await requester.close()
    finally:
        await raw.close()
        await srv.stop()


async def test_a_target_that_never_reads_is_not_buffered(
    server: Server, alice: tuple[RawClient, str]
) -> None:
    """Flow control: while the destination's write buffer is full the proxy stops reading
    the source; what it holds stays within a read chunk and the write buffer."""
    target, requester = await activated_pair(server, alice)
    chunk = os.urandom(65536)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while sent < 64 * 1024 * 1024:
            requester.send(chunk)
            sent += len(chunk)
            await requester.writer.drain()

    flooding = asyncio.ensure_future(flood())
    try:
        await asyncio.sleep(1.5)
        relay = next(iter(service_of(server).relays))
        ends = [relay.first, relay.second]
        destination = next(e for e in ends if e.write_paused)
        source = relay.other(destination)
        assert source.reading_paused
        assert destination.transport is not None
        held = sum(len(v) for v in relay.pending.values())
        buffered = destination.transport.get_write_buffer_size()
        assert held + buffered < 2 * 1024 * 1024, (held, buffered)
        assert sent < 64 * 1024 * 1024  # the sender was pushed back
        # Reading again drains everything in order.
        flooding.cancel()
        count = 0
        while count < relay.relayed - 65536:
            data = await asyncio.wait_for(target.reader.read(1 << 20), 10)
            assert data
            count += len(data)
    finally:
        flooding.cancel()
        await target.close()
        await requester.close()


async def test_stopping_the_server_closes_the_proxy(tmp_path: Path) -> None:
    srv = await start(tmp_path / "data")
    raw, jid = await raw_login(srv, "alice")
    target, requester = await activated_pair(srv, (raw, jid))
    waiting = await Socks.connected(srv, "cd" * 20)
    port = srv.ports["proxy65"]
    await raw.close()
    await srv.stop()
    for socks in (target, requester, waiting):
        assert await socks.read_until_closed() == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_no_proxy_without_a_domain(tmp_path: Path) -> None:
    srv = await start_server(tmp_path / "data")
    try:
        assert "proxy65" not in srv.ports
        assert not any(isinstance(c, Proxy65Service) for c in srv.components.values())
    finally:
        await srv.stop()


async def test_port_in_use_fails_start(tmp_path: Path) -> None:
    from dovecote.server import StartupError

    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        with pytest.raises(StartupError, match="proxy65"):
            await start_server(
                tmp_path / "data", proxy65={"domain": PROXY, "address": f"127.0.0.1:{port}"}
            )
    finally:
        holder.close()
