"""Per-address and per-account limits that keep one client (or one stranger) from
exhausting the server: connections per address, resources per account, directed
presence per session; and negotiation timeouts that leak nothing in clear text."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dovecote.core.throttle import address_key
from dovecote.jid import JID
from dovecote.modules import roster
from tests.helpers import (
    BIND,
    CLIENT,
    TLS_NS,
    RawClient,
    add_user,
    error_condition,
    q,
    start_server,
)


async def test_connections_per_address_are_capped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: 21,000 unauthenticated connections from one address used every file
    descriptor, and real logins failed."""
    caplog.set_level(logging.DEBUG, logger="dovecote.transport.tcp")
    server = await start_server(tmp_path, limits={"max_connections_per_ip": 3})
    try:
        await add_user(server, "alice")
        idle = [await RawClient.open(server.ports["c2s"]) for _ in range(3)]
        await asyncio.sleep(0.1)
        extra = await RawClient.open(server.ports["c2s"])
        assert await extra.stream_error() == "policy-violation"
        # Direct TLS counts towards the same address.
        extra_tls = await RawClient.open(server.ports["c2s_tls"], tls=True)
        assert await extra_tls.stream_error() == "policy-violation"
        # One WARNING per flood, not one per refused connection (log flooding).
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.message
        ]
        assert len(warnings) == 1
        # Others are served as before, and a closed connection frees its place.
        await idle[0].close()
        for _ in range(50):
            if server.connections_per_address.get("127.0.0.1") == 2:
                break
            await asyncio.sleep(0.02)
        raw = await RawClient.open(server.ports["c2s"])
        assert (await raw.login("alice")).startswith("alice@")
        for client in [*idle[1:], raw]:
            await client.close()
        for _ in range(50):
            if not server.connections_per_address:
                break
            await asyncio.sleep(0.02)
        assert server.connections_per_address == {}
    finally:
        await server.stop()


def test_ipv6_addresses_count_by_their_64_network() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"


async def test_resources_per_account_are_capped(tmp_path: Path) -> None:
    """Regression: 500 resources on one account turned one bare-JID message into 500."""
    server = await start_server(tmp_path, limits={"max_resources": 2})
    try:
        await add_user(server, "alice")
        first = await RawClient.open(server.ports["c2s"])
        await first.login("alice", resource="one")
        second = await RawClient.open(server.ports["c2s"])
        await second.login("alice", resource="two")
        third = await RawClient.open(server.ports["c2s"])
        await third.authenticate("alice")
        third.send(
            f"<iq type='set' id='b'><bind xmlns='{BIND}'><resource>three</resource></bind></iq>"
        )
        error = await third.expect(q(CLIENT, "iq"))
        assert error.get("type") == "error"
        assert error_condition(error) == ("wait", "resource-constraint")
        assert server.sessions.get(JID.parse("alice@example.org/three")) is None
        # Taking over an existing resource is not one more (RFC 6120 §7.7.2.2).
        third.send(
            f"<iq type='set' id='c'><bind xmlns='{BIND}'><resource>two</resource></bind></iq>"
        )
        bound = await third.expect(q(CLIENT, "iq"))
        assert bound.get("type") == "result"
        assert await second.stream_error() == "conflict"
        assert len(server.sessions.resources(JID.parse("alice@example.org"))) == 2
        await first.close()
        await third.close()
    finally:
        await server.stop()


async def test_directed_presence_is_capped(tmp_path: Path) -> None:
    """Regression: directed presence to 100,000 addresses was all kept (and re-sent)."""
    server = await start_server(tmp_path, limits={"max_directed_presence": 3})
    try:
        await add_user(server, "alice")
        for name in ("b1", "b2", "b3", "b4"):
            await add_user(server, name)
        raw = await RawClient.open(server.ports["c2s"])
        jid = await raw.login("alice")
        raw.send("<presence/>")
        for name in ("b1", "b2", "b3"):
            raw.send(f"<presence to='{name}@example.org' id='{name}'/>")
        raw.send("<presence to='b1@example.org' id='again'/>")  # already known: fine
        raw.send("<presence to='b4@example.org' id='b4'/>")
        error = await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence") and e.get("id") == "b4")
        assert error.get("type") == "error"
        assert error_condition(error) == ("wait", "resource-constraint")
        session = server.sessions.get(JID.parse(jid))
        assert session is not None
        assert roster.DIRECTED.get(session) == {f"b{i}@example.org" for i in (1, 2, 3)}
        # Unavailable to one frees its place.
        raw.send("<presence to='b2@example.org' type='unavailable'/>")
        raw.send("<presence to='b4@example.org' id='b4-again'/>")
        raw.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = []
        while True:
            el = await raw.next()
            got.append(el)
            if el.get("id") == "sync":
                break
        assert not [e for e in got if e.get("id") == "b4-again"]
        assert roster.DIRECTED.get(session) == {f"b{i}@example.org" for i in (1, 3, 4)}
        await raw.close()
    finally:
        await server.stop()


async def test_timeout_during_starttls_sends_nothing_in_clear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a negotiation timeout in the middle of a STARTTLS handshake sent the
    stream error in plaintext; every connection timeout was an INFO line."""
    server = await start_server(tmp_path, limits={"negotiation_timeout": 0.5})
    try:
        raw = await RawClient.open(server.ports["c2s"])
        raw.open_stream()
        await raw.features()
        raw.send(f"<starttls xmlns='{TLS_NS}'/>")
        await raw.expect(q(TLS_NS, "proceed"))
        caplog.set_level(logging.INFO, logger="dovecote")
        # No TLS ClientHello: the server must give up without writing anything.
        rest = b""
        try:
            while chunk := await asyncio.wait_for(raw.reader.read(4096), 5):
                rest += chunk
        except ConnectionError:
            pass
        assert rest == b""
        # A plain negotiation timeout is a stream error, logged below INFO.
        slow = await RawClient.open(server.ports["c2s"])
        slow.open_stream()
        await slow.features()
        assert await slow.stream_error() == "connection-timeout"
        assert not [
            r for r in caplog.records if r.levelno >= logging.INFO and "timeout" in r.getMessage()
        ]
    finally:
        await server.stop()
