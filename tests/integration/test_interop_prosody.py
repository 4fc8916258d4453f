"""Dovecote federating with Prosody (Debian's 0.12), a real peer on 127.0.0.4:5269 with a
config made here; both resolve the test domains through dnsmasq (SRV for d.test and
p.test, only an A record for r.test). Dialback (certificates not trusted) and SASL
EXTERNAL (the test CA trusted by both) are exercised; r.test offers no TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.ca import TestCA
from tests.federation import (
    SRV,
    DnsMasq,
    Prosody,
    ProsodyHost,
    free_port,
    loopback_port_free,
    require,
)
from tests.helpers import CLIENT, Client, disconnect, error_condition, q
from tests.interop import (
    PASSWORD,
    exchange,
    foreign_client,
    is_message,
    links,
    local_user,
    start_dovecote,
)

D = "d.example"  # Dovecote (not .test: libunbound answers .test itself, RFC 6761)
P = "p.example"  # Prosody, TLS
R = "r.example"  # Prosody, no TLS
PROSODY_ADDRESS = "127.0.0.4"


@dataclass
class Env:
    root: Path
    ca: TestCA
    other_ca: TestCA
    dns: DnsMasq
    prosody: Prosody
    d_listen: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require("dnsmasq", "prosody")
    if not loopback_port_free(PROSODY_ADDRESS, 5269):
        pytest.skip(f"{PROSODY_ADDRESS}:5269 is taken")
    root = tmp_path_factory.mktemp("prosody-interop")
    ca = TestCA(root / "ca")
    other_ca = TestCA(root / "other-ca", "Another CA")
    p_leaf = ca.issue("prosody", dns=(P,))
    d_port = free_port("127.0.0.2")
    dns = DnsMasq(
        root / "dns",
        hosts={f"xmpp.{D}": "127.0.0.2", f"xmpp.{P}": PROSODY_ADDRESS, R: PROSODY_ADDRESS},
        srv=[SRV(D, f"xmpp.{D}", d_port), SRV(P, f"xmpp.{P}", 5269)],
    ).start()
    prosody = Prosody(
        root / "prosody",
        PROSODY_ADDRESS,
        [ProsodyHost(P, p_leaf.cert, p_leaf.key), ProsodyHost(R, tls=False)],
        dns,
        cafile=ca.path,
    )
    try:
        prosody.write_config()
        prosody.register("rita", R, PASSWORD)
        prosody.start()
        yield Env(root, ca, other_ca, dns, prosody, f"127.0.0.2:{d_port}")
    finally:
        prosody.stop()
        dns.stop()


_serial = iter(range(1_000_000))


async def prosody_user(env: Env, name: str) -> Client:
    """A fresh account on Prosody (no roster state from an earlier test), logged in."""
    local = f"{name}{next(_serial)}"
    env.prosody.register(local, P, PASSWORD)
    return await foreign_client(f"{local}@{P}", PROSODY_ADDRESS, env.prosody.c2s_port)


@pytest.fixture
async def dovecote_untrusted(env: Env, tmp_path: Path) -> AsyncIterator[Server]:
    """Dovecote with its self-signed certificate, trusting another CA than Prosody's:
    neither side trusts the other's certificate: dialback both ways."""
    server = await start_dovecote(tmp_path / "d", D, env.d_listen, env.dns, None, env.other_ca.path)
    yield server
    await server.stop()


@pytest.fixture
async def dovecote_trusted(env: Env, tmp_path: Path) -> AsyncIterator[Server]:
    """Dovecote with a certificate from the test CA, which it trusts: SASL EXTERNAL."""
    leaf = env.ca.issue("dovecote", dns=(D,))
    server = await start_dovecote(tmp_path / "d", D, env.d_listen, env.dns, leaf, env.ca.path)
    yield server
    await server.stop()


async def test_dialback_with_prosody(env: Env, dovecote_untrusted: Server) -> None:
    server = dovecote_untrusted
    log_start = len(env.prosody.log())
    dave = await local_user(server, "dave", D)
    pat = await prosody_user(env, "pat")
    try:
        await exchange(dave, pat)
    finally:
        await disconnect(pat)
        await dave.close()
    (out,) = links(server, "out")
    assert (out["remote"], out["auth"], out["certificate"]) == ([P], "dialback", "invalid")
    (incoming,) = links(server, "in")
    assert (incoming["remote"], incoming["auth"]) == ([P], "dialback")
    log = env.prosody.log()[log_start:]
    # Prosody checked our key with the Authoritative Server (us, <db:verify/>), and
    # answered ours (XEP-0220 §2.1-§2.2).
    assert "verified dialback key... it is valid" in log
    assert "sent dialback key on outgoing s2s stream" in log
    assert f"Outgoing s2s connection {P}->{D} complete" in log
    assert f"Incoming s2s connection {D}->{P} complete" in log


async def test_certificates_with_prosody(env: Env, dovecote_trusted: Server) -> None:
    server = dovecote_trusted
    log_start = len(env.prosody.log())
    dave = await local_user(server, "dave", D)
    pat = await prosody_user(env, "pat")
    try:
        await exchange(dave, pat)
    finally:
        await disconnect(pat)
        await dave.close()
    (out,) = links(server, "out")
    assert (out["remote"], out["auth"], out["certificate"]) == ([P], "external", "valid")
    (incoming,) = links(server, "in")
    assert (incoming["remote"], incoming["auth"], incoming["certificate"]) == (
        [P],
        "external",
        "valid",
    )
    log = env.prosody.log()[log_start:]
    assert f"Accepting SASL EXTERNAL identity from {D}" in log  # our EXTERNAL to Prosody
    assert f"SASL EXTERNAL with {D} succeeded" in log  # Prosody's EXTERNAL to us


async def test_peer_without_tls_bounces(env: Env, dovecote_untrusted: Server) -> None:
    """r.test (Prosody without mod_tls) offers no STARTTLS; Dovecote requires TLS: the
    message comes back with remote-server-not-found (RFC 6120 §5.3.1, §8.3.3.14)."""
    dave = await local_user(dovecote_untrusted, "dave", D)
    dave.send(f"<message to='rita@{R}' type='chat' id='t1'><body>clear?</body></message>")
    got = await dave.take(is_message, timeout=20)
    assert got.get("type") == "error"
    assert got.get("from") == f"rita@{R}"
    assert error_condition(got) == ("cancel", "remote-server-not-found")
    assert got.findtext(q(CLIENT, "body")) == "clear?"
    await dave.close()
