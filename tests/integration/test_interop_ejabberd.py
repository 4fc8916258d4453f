"""Dovecote federating with ejabberd (Debian's 23.01), a real peer on 127.0.0.5:5269 with
a config made here (one Erlang VM for the module: its start is the slow part); names
resolve through dnsmasq on both sides. Dialback (certificates not trusted) and SASL
EXTERNAL (the test CA trusted by both) are exercised."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.ca import TestCA
from tests.federation import SRV, DnsMasq, Ejabberd, free_port, loopback_port_free, require
from tests.helpers import Client, disconnect
from tests.interop import PASSWORD, exchange, foreign_client, links, local_user, start_dovecote

D = "d.example"  # Dovecote
E = "e.example"  # ejabberd
EJABBERD_ADDRESS = "127.0.0.5"


@dataclass
class Env:
    ca: TestCA
    other_ca: TestCA
    dns: DnsMasq
    ejabberd: Ejabberd
    d_listen: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require("dnsmasq", "ejabberd")
    if not loopback_port_free(EJABBERD_ADDRESS, 5269):
        pytest.skip(f"{EJABBERD_ADDRESS}:5269 is taken")
    root = tmp_path_factory.mktemp("ejabberd-interop")
    ca = TestCA(root / "ca")
    other_ca = TestCA(root / "other-ca", "Another CA")
    e_leaf = ca.issue("ejabberd", dns=(E,))
    d_port = free_port("127.0.0.2")
    dns = DnsMasq(
        root / "dns",
        hosts={E: EJABBERD_ADDRESS},
        # ejabberd by SRV-less A record (RFC 6120 §3.2.2, port 5269), Dovecote by SRV.
        # ejabberd 23.01 resolves SRV targets with getaddrinfo (the system's resolver,
        # not its inetrc name server): the target is an address literal.
        srv=[SRV(D, "127.0.0.2", d_port)],
    ).start()
    ejabberd = Ejabberd(
        root / "ejabberd", EJABBERD_ADDRESS, E, dns, [e_leaf.cert, e_leaf.key], cafile=ca.path
    )
    try:
        ejabberd.start()
        yield Env(ca, other_ca, dns, ejabberd, f"127.0.0.2:{d_port}")
    finally:
        ejabberd.stop()
        dns.stop()


_serial = iter(range(1_000_000))


async def ejabberd_user(env: Env, name: str) -> Client:
    local = f"{name}{next(_serial)}"
    env.ejabberd.register(local, PASSWORD)
    return await foreign_client(f"{local}@{E}", EJABBERD_ADDRESS, env.ejabberd.c2s_port)


@pytest.fixture
async def dovecote_untrusted(env: Env, tmp_path: Path) -> AsyncIterator[Server]:
    server = await start_dovecote(tmp_path / "d", D, env.d_listen, env.dns, None, env.other_ca.path)
    yield server
    await server.stop()


@pytest.fixture
async def dovecote_trusted(env: Env, tmp_path: Path) -> AsyncIterator[Server]:
    leaf = env.ca.issue("dovecote", dns=(D,))
    server = await start_dovecote(tmp_path / "d", D, env.d_listen, env.dns, leaf, env.ca.path)
    yield server
    await server.stop()


async def test_dialback_with_ejabberd(env: Env, dovecote_untrusted: Server) -> None:
    server = dovecote_untrusted
    log_start = len(env.ejabberd.log())
    dave = await local_user(server, "dave", D)
    eve = await ejabberd_user(env, "eve")
    try:
        await exchange(dave, eve)
    finally:
        await disconnect(eve)
        await dave.close()
    (out,) = links(server, "out")
    assert (out["remote"], out["auth"], out["certificate"]) == ([E], "dialback", "invalid")
    (incoming,) = links(server, "in")
    assert (incoming["remote"], incoming["auth"]) == ([E], "dialback")
    log = env.ejabberd.log()[log_start:]
    assert f"Accepted inbound s2s dialback authentication {D} -> {E}" in log, log
    assert f"Accepted outbound s2s dialback authentication {E} -> {D}" in log, log


async def test_certificates_with_ejabberd(env: Env, dovecote_trusted: Server) -> None:
    server = dovecote_trusted
    log_start = len(env.ejabberd.log())
    dave = await local_user(server, "dave", D)
    eve = await ejabberd_user(env, "eve")
    try:
        await exchange(dave, eve)
    finally:
        await disconnect(eve)
        await dave.close()
    (out,) = links(server, "out")
    assert (out["remote"], out["auth"], out["certificate"]) == ([E], "external", "valid")
    (incoming,) = links(server, "in")
    assert (incoming["remote"], incoming["auth"], incoming["certificate"]) == (
        [E],
        "external",
        "valid",
    )
    log = env.ejabberd.log()[log_start:]
    assert f"Accepted inbound s2s EXTERNAL authentication {D} -> {E}" in log, log
    assert f"Accepted outbound s2s EXTERNAL authentication {E} -> {D}" in log, log
