"""Certificate authentication between servers (XEP-0178 SASL EXTERNAL, RFC 6120
§13.7.1.2, RFC 6125 names): two Dovecote servers on 127.0.0.2/127.0.0.3 with leaf
certificates from a test CA made here (tests/ca.py), trusted through `[s2s] ca_file`."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dovecote.server import Server
from tests.ca import Leaf, TestCA
from tests.helpers import CLIENT, RawClient, error_condition, q, start_server
from tests.integration.test_s2s import (
    DB,
    SERVER_NS,
    STREAMS,
    TLS_NS,
    free_port,
    is_message,
    start_peer,
    user,
)

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


async def pair(
    tmp_path: Path,
    a_domain: str,
    b_domain: str,
    a_leaf: Leaf,
    b_leaf: Leaf,
    a_trusts: Path | None,
    b_trusts: Path | None,
    a_s2s: dict[str, Any] | None = None,
    b_s2s: dict[str, Any] | None = None,
) -> tuple[Server, Server, str, str]:
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(
        tmp_path / "a",
        [a_domain],
        a_addr,
        {b_domain: b_addr},
        s2s={"ca_file": str(a_trusts) if a_trusts else None, **(a_s2s or {})},
        tls={"cert": str(a_leaf.cert), "key": str(a_leaf.key)},
    )
    b = await start_peer(
        tmp_path / "b",
        [b_domain],
        b_addr,
        {a_domain: a_addr},
        s2s={"ca_file": str(b_trusts) if b_trusts else None, **(b_s2s or {})},
        tls={"cert": str(b_leaf.cert), "key": str(b_leaf.key)},
    )
    return a, b, a_addr, b_addr


@pytest.fixture
async def stop() -> AsyncIterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        await server.stop()


async def exchange(a: Server, b: Server, a_domain: str, b_domain: str) -> None:
    alice = await user(a, "alice", a_domain, presence=True)
    bob = await user(b, "bob", b_domain, presence=True)
    alice.send(f"<message to='bob@{b_domain}' type='chat' id='m1'><body>to b</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert (got.get("from"), got.findtext(q(CLIENT, "body"))) == (alice.jid, "to b")
    bob.send(f"<message to='{alice.jid}' type='chat' id='m2'><body>to a</body></message>")
    got = await alice.take(is_message, timeout=10)
    assert (got.get("from"), got.findtext(q(CLIENT, "body"))) == (bob.jid, "to a")
    await alice.close()
    await bob.close()


def links(server: Server, direction: str) -> list[dict[str, Any]]:
    assert server.s2s is not None
    return [row for row in server.s2s.describe() if row["direction"] == direction]


@pytest.mark.parametrize(
    ("a_domain", "b_domain", "a_ids", "b_ids"),
    [
        ("a.example", "b.example", {"dns": ("a.example",)}, {"dns": ("b.example",)}),
        # A wildcard DNS-ID (RFC 6125 §6.4.3) and an XmppAddr-only certificate.
        ("xmpp.a.test", "chat.b.test", {"xmpp": ("xmpp.a.test",)}, {"dns": ("*.b.test",)}),
        # An SRV-ID (RFC 6120 §13.7.1.2.1) and a CN without any SAN.
        ("a.example", "b.example", {"srv": ("_xmpp-server.a.example",)}, {"cn": "b.example"}),
    ],
)
async def test_trusted_certificates_use_sasl_external(
    tmp_path: Path,
    stop: list[Server],
    a_domain: str,
    b_domain: str,
    a_ids: dict[str, Any],
    b_ids: dict[str, Any],
) -> None:
    ca = TestCA(tmp_path / "ca")
    a, b, _a_addr, _b_addr = await pair(
        tmp_path,
        a_domain,
        b_domain,
        ca.issue("a", **a_ids),
        ca.issue("b", **b_ids),
        ca.path,
        ca.path,
        # One stream per direction: each side authenticates its own with EXTERNAL.
        a_s2s={"bidi": False},
        b_s2s={"bidi": False},
    )
    stop += [a, b]
    await exchange(a, b, a_domain, b_domain)
    for server, local, remote in ((a, a_domain, b_domain), (b, b_domain, a_domain)):
        (out,) = links(server, "out")
        assert (out["local"], out["remote"], out["auth"]) == ([local], [remote], "external")
        assert out["certificate"] == "valid"
        assert out["tls"].startswith("TLSv1.")
        (incoming,) = links(server, "in")
        assert (incoming["remote"], incoming["auth"]) == ([remote], "external")
        assert incoming["certificate"] == "valid"


async def test_untrusted_certificates_fall_back_to_dialback(
    tmp_path: Path, stop: list[Server]
) -> None:
    """Each side trusts only its own CA: no EXTERNAL offered, dialback authenticates."""
    ca_a = TestCA(tmp_path / "ca-a")
    ca_b = TestCA(tmp_path / "ca-b")
    a, b, _a_addr, _b_addr = await pair(
        tmp_path,
        "a.example",
        "b.example",
        ca_a.issue("a", dns=("a.example",)),
        ca_b.issue("b", dns=("b.example",)),
        ca_a.path,
        ca_b.path,
        a_s2s={"bidi": False},
        b_s2s={"bidi": False},
    )
    stop += [a, b]
    await exchange(a, b, "a.example", "b.example")
    (out,) = links(a, "out")
    assert (out["auth"], out["certificate"]) == ("dialback", "invalid")
    (incoming,) = links(b, "in")
    assert (incoming["auth"], incoming["certificate"]) == ("dialback", "invalid")


async def test_wrong_name_falls_back_to_dialback(tmp_path: Path, stop: list[Server]) -> None:
    """A trusted certificate for another name (RFC 6125 §6.4.3: `*.a.example` does not
    cover a.example) proves nothing: dialback."""
    ca = TestCA(tmp_path / "ca")
    a, b, _a_addr, _b_addr = await pair(
        tmp_path,
        "a.example",
        "b.example",
        ca.issue("a", dns=("*.a.example",)),
        ca.issue("b", dns=("b.example",)),
        ca.path,
        ca.path,
        a_s2s={"bidi": False},
        b_s2s={"bidi": False},
    )
    stop += [a, b]
    await exchange(a, b, "a.example", "b.example")
    (out_a,) = links(a, "out")
    assert out_a["auth"] == "dialback"  # a's own certificate does not name a.example
    (out_b,) = links(b, "out")
    # b's certificate is good: EXTERNAL to a; b sees a's certificate as not for a.example.
    assert out_b["auth"] == "external"
    assert out_b["certificate"] == "invalid"


async def test_trusted_certificate_short_cuts_dialback(tmp_path: Path, stop: list[Server]) -> None:
    """With dialback over a stream whose certificate is trusted for the sender, the
    Receiving Server needs no <db:verify/> round trip (XEP-0344 §2.4)."""
    ca = TestCA(tmp_path / "ca")
    a_leaf = ca.issue("a", dns=("a.example",))
    b_leaf = ca.issue("b", dns=("b.example",))
    a, b, _a_addr, b_addr = await pair(
        tmp_path, "a.example", "b.example", a_leaf, b_leaf, ca.path, ca.path
    )
    stop += [a, b]
    context = ssl.create_default_context(cafile=ca.path)
    context.load_cert_chain(a_leaf.cert, a_leaf.key)
    raw, features = await raw_server_tls(b_addr, "a.example", "b.example", context)
    mechanisms = features.find(q(SASL, "mechanisms"))
    assert mechanisms is not None
    assert [m.text for m in mechanisms] == ["EXTERNAL"]
    raw.send(f"<db:result xmlns:db='{DB}' from='a.example' to='b.example'>{'0' * 64}</db:result>")
    result = await raw.expect(q(DB, "result"), timeout=10)
    assert result.get("type") == "valid"
    await raw.close()


async def raw_server_tls(
    address: str, sender: str, target: str, context: ssl.SSLContext, features: bool = True
) -> tuple[RawClient, Any]:
    """Connect as the server of `sender` with STARTTLS and the client certificate in
    `context`; the features after TLS."""
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
    await raw.expect(q(STREAMS, "features"))
    raw.send(f"<starttls xmlns='{TLS_NS}'/>")
    await raw.expect(q(TLS_NS, "proceed"))
    await writer.start_tls(context, server_hostname=target)
    header()
    return raw, (await raw.expect(q(STREAMS, "features")) if features else None)


async def test_external_authzid_checks(tmp_path: Path, stop: list[Server]) -> None:
    """XEP-0178 §3: an authorization identity other than the certificate's domain is
    refused (<not-authorized/>); the right one succeeds and the stream restarts."""
    ca = TestCA(tmp_path / "ca")
    a_leaf = ca.issue("a", dns=("a.example",))
    a, b, _a_addr, b_addr = await pair(
        tmp_path,
        "a.example",
        "b.example",
        a_leaf,
        ca.issue("b", dns=("b.example",)),
        ca.path,
        ca.path,
    )
    stop += [a, b]
    bob = await user(b, "bob", "b.example", presence=True)
    context = ssl.create_default_context(cafile=ca.path)
    context.load_cert_chain(a_leaf.cert, a_leaf.key)
    raw, _features = await raw_server_tls(b_addr, "a.example", "b.example", context)
    other = base64.b64encode(b"c.example").decode()
    raw.send(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{other}</auth>")
    failure = await raw.expect(q(SASL, "failure"))
    assert failure.find(q(SASL, "not-authorized")) is not None
    mine = base64.b64encode(b"a.example").decode()
    raw.send(f"<auth xmlns='{SASL}' mechanism='EXTERNAL'>{mine}</auth>")
    await raw.expect(q(SASL, "success"))
    raw._new_parser()
    raw.header = None
    raw.send(
        f"<?xml version='1.0'?><stream:stream xmlns='{SERVER_NS}' xmlns:stream='{STREAMS}' "
        f"from='a.example' to='b.example' version='1.0'>"
    )
    features = await raw.expect(q(STREAMS, "features"))
    assert features.find(q(SASL, "mechanisms")) is None
    raw.send("<message from='eve@a.example' to='bob@b.example'><body>by cert</body></message>")
    got = await bob.take(is_message, timeout=5)
    assert (got.get("from"), got.findtext(q(CLIENT, "body"))) == ("eve@a.example", "by cert")
    raw.send("<message from='eve@c.example' to='bob@b.example'><body>x</body></message>")
    assert await raw.stream_error() == "invalid-from"
    await bob.close()


async def test_require_valid_certs_refuses_untrusted_peer(
    tmp_path: Path, stop: list[Server]
) -> None:
    """`require_valid_certs`: b refuses a (untrusted, self-signed) with <not-authorized/>
    (as Prosody does), a's stanzas to b bounce; b does not send to a either."""
    ca = TestCA(tmp_path / "ca")
    b_leaf = ca.issue("b", dns=("b.example",))
    a_addr = f"127.0.0.2:{free_port('127.0.0.2')}"
    b_addr = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(tmp_path / "a", ["a.example"], a_addr, {"b.example": b_addr})
    stop.append(a)
    b = await start_peer(
        tmp_path / "b",
        ["b.example"],
        b_addr,
        {"a.example": a_addr},
        s2s={"ca_file": str(ca.path), "require_valid_certs": True},
        tls={"cert": str(b_leaf.cert), "key": str(b_leaf.key)},
    )
    stop.append(b)
    alice = await user(a, "alice", "a.example")
    alice.send("<message to='bob@b.example' type='chat' id='m1'><body>hi</body></message>")
    got = await alice.take(is_message, timeout=10)
    assert got.get("type") == "error"
    assert error_condition(got) == ("cancel", "remote-server-not-found")
    bob = await user(b, "bob", "b.example")
    bob.send("<message to='alice@a.example' type='chat' id='m2'><body>hi</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert got.get("type") == "error"
    assert error_condition(got) == ("cancel", "remote-server-not-found")
    assert "self-signed" in (
        got.findtext(f"{q(CLIENT, 'error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text") or ""
    )
    # A raw peer with a certificate b does not trust: the stream error names the reason.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    other = TestCA(tmp_path / "other").issue("a", dns=("a.example",))
    context.load_cert_chain(other.cert, other.key)
    raw, _features = await raw_server_tls(b_addr, "a.example", "b.example", context, features=False)
    assert await raw.stream_error() == "not-authorized"
    await alice.close()
    await bob.close()


async def test_direct_tls_route_with_external(tmp_path: Path, stop: list[Server]) -> None:
    """`[s2s.routes]` "tls://host:port": TLS from the first byte to B's `[listen] s2s_tls`
    (XEP-0368), our certificate presented in that handshake, SASL EXTERNAL."""
    ca = TestCA(tmp_path / "ca")
    a_leaf = ca.issue("a", dns=("a.example",))
    b_leaf = ca.issue("b", dns=("b.example",))
    b_tls = f"127.0.0.3:{free_port('127.0.0.3')}"
    a = await start_peer(
        tmp_path / "a",
        ["a.example"],
        f"127.0.0.2:{free_port('127.0.0.2')}",
        {"b.example": f"tls://{b_tls}"},
        s2s={"ca_file": str(ca.path)},
        tls={"cert": str(a_leaf.cert), "key": str(a_leaf.key)},
    )
    stop.append(a)
    b = await start_server(
        tmp_path / "b",
        server={"domains": ["b.example"], "data_dir": str(tmp_path / "b")},
        listen={"s2s": "", "s2s_tls": b_tls},
        s2s={"ca_file": str(ca.path), "routes": {"a.example": "127.0.0.2:1"}},
        tls={"cert": str(b_leaf.cert), "key": str(b_leaf.key)},
    )
    stop.append(b)
    alice = await user(a, "alice", "a.example")
    bob = await user(b, "bob", "b.example", presence=True)
    alice.send("<message to='bob@b.example' id='d1'><body>direct</body></message>")
    got = await bob.take(is_message, timeout=10)
    assert got.findtext(q(CLIENT, "body")) == "direct"
    (out,) = links(a, "out")
    assert (out["auth"], out["certificate"]) == ("external", "valid")
    (incoming,) = links(b, "in")
    assert (incoming["auth"], incoming["certificate"]) == ("external", "valid")
    await alice.close()
    await bob.close()


async def test_without_the_openssl_hook(
    tmp_path: Path, stop: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where stream/certs.py cannot reach OpenSSL (another Python): no certificate is
    requested, dialback authenticates; with `require_valid_certs` OpenSSL checks the
    chain in the handshake and our name check still applies, so EXTERNAL works."""
    from dovecote.stream import certs

    monkeypatch.setattr(certs, "_available", False)
    ca = TestCA(tmp_path / "ca")
    a, b, _a_addr, _b_addr = await pair(
        tmp_path,
        "a.example",
        "b.example",
        ca.issue("a", dns=("a.example",)),
        ca.issue("b", dns=("b.example",)),
        ca.path,
        ca.path,
        a_s2s={"bidi": False},
        b_s2s={"bidi": False, "require_valid_certs": True},
    )
    stop += [a, b]
    await exchange(a, b, "a.example", "b.example")
    (out_a,) = links(a, "out")
    assert (out_a["auth"], out_a["certificate"]) == ("external", "invalid")
    (out_b,) = links(b, "out")
    assert (out_b["auth"], out_b["certificate"]) == ("dialback", "valid")
