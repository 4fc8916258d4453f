"""RFC 6125 name matching of peer certificates (stream/certs.py), XEP-0178 / RFC 6120
§13.7.1.2: DNS-ID, wildcards, SRV-ID, XmppAddr, the CN fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dovecote.stream.certs import Identities, identities
from tests.ca import TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize(
    ("presented", "reference", "expected"),
    [
        ("example.org", "example.org", True),
        ("EXAMPLE.org.", "example.ORG", True),  # §6.4.1: case-insensitive, no root dot
        ("example.org", "www.example.org", False),
        ("*.example.org", "chat.example.org", True),  # §6.4.3
        ("*.example.org", "example.org", False),  # the wildcard is one whole label
        ("*.example.org", "a.b.example.org", False),  # ... exactly one label
        ("a.*.example.org", "a.b.example.org", False),  # only left-most
        ("f*o.example.org", "foo.example.org", False),  # partial wildcards refused
        ("*.org", "example.org", False),  # too wide
        ("*.example.org", "xn--bcher-kva.example.org", False),  # not over an A-label
        ("bücher.example", "xn--bcher-kva.example", True),  # IDNA compared as A-labels
    ],
)
def test_dns_id(presented: str, reference: str, expected: bool) -> None:
    assert Identities(dns=(presented,), has_san_ids=True).matches(reference) is expected


@pytest.mark.parametrize(
    ("presented", "reference", "expected"),
    [
        ("_xmpp-server.example.org", "example.org", True),
        ("_XMPP-Server.example.org", "example.org", True),
        ("_xmpp-client.example.org", "example.org", False),  # another service
        ("_xmpp-server.example.org", "im.example.org", False),
        ("_xmpp-server.*.org", "example.org", False),  # no wildcards in SRV-IDs
    ],
)
def test_srv_id(presented: str, reference: str, expected: bool) -> None:
    assert Identities(srv=(presented,), has_san_ids=True).matches(reference) is expected


def test_cn_only_without_san() -> None:
    # §6.4.4: the CN is a fallback only when the SAN has no identifier of those kinds.
    assert Identities(cn=("example.org",)).matches("example.org")
    assert not Identities(cn=("example.org",)).matches("other.org")
    assert not Identities(dns=("other.org",), cn=("example.org",), has_san_ids=True).matches(
        "example.org"
    )
    assert not Identities().matches("example.org")
    assert not Identities(dns=("example.org",), has_san_ids=True).matches("")


def test_parsed_dns_and_wildcard(ca: TestCA) -> None:
    leaf = ca.issue("dns", dns=("a.test", "*.b.test"), cn="ignored.test")
    ids = identities(leaf.der)
    assert ids.dns == ("a.test", "*.b.test")
    assert ids.matches("a.test")
    assert ids.matches("x.b.test")
    assert not ids.matches("b.test")
    assert not ids.matches("ignored.test")  # a SAN is there: the CN does not count


def test_parsed_xmpp_addr(ca: TestCA) -> None:
    leaf = ca.issue("xmpp", xmpp=("x.test",))
    ids = identities(leaf.der)
    assert ids.xmpp == ("x.test",)
    assert ids.matches("x.test")
    assert ids.matches("X.TEST")
    assert not ids.matches("y.x.test")


def test_parsed_srv_id(ca: TestCA) -> None:
    leaf = ca.issue("srv", srv=("_xmpp-server.s.test", "_xmpp-client.c.test"))
    ids = identities(leaf.der)
    assert ids.matches("s.test")
    assert not ids.matches("c.test")


def test_parsed_cn_fallback(ca: TestCA) -> None:
    leaf = ca.issue("cn", cn="cn.test")
    assert identities(leaf.der).matches("cn.test")
    assert not identities(leaf.der).matches("other.test")


def test_garbage_presents_nothing(tmp_path: Path) -> None:
    assert identities(b"not a certificate") == Identities()
