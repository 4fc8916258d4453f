"""Federation over real sockets (RFC 6120 server-to-server streams, XEP-0220 dialback,
XEP-0288 bidi): two (or three) Dovecote servers in this process, each on its own loopback
address (127.0.0.2, 127.0.0.3: Linux routes all of 127/8 to lo) with `[s2s.routes]`
pointing at each other, self-signed certificates (so dialback authenticates)."""

from __future__ import annotations

import asyncio
import socket
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    Resource,
    add_user,
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
