"""Finding a remote server (RFC 6120 §3.2, RFC 2782, XEP-0368): SRV ordering as pure
functions, and `Resolver` against a tiny DNS responder on a UDP socket in this test
(answers built with dnspython), reached through `[s2s] nameservers`."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dovecote.core.dns import SRV, Resolver, Target, order_srv, targets_from_srv


def test_lower_priority_first_whatever_the_weight() -> None:
    records = [SRV(20, 100, 5269, "c."), SRV(10, 0, 5269, "a."), SRV(10, 5, 5269, "b.")]
    ordered = order_srv(records, random.Random(1))
    assert {r.target for r in ordered[:2]} == {"a.", "b."}
    assert ordered[2].target == "c."


def test_weights_share_the_first_place() -> None:
    """RFC 2782: within a priority, a record is first with probability weight/total."""
    records = [SRV(10, 90, 5269, "heavy."), SRV(10, 10, 5269, "light.")]
    rng = random.Random(7)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert 1650 < firsts["heavy."] < 1950
    assert firsts["light."] > 50


def test_zero_weight_records_are_rarely_first() -> None:
    records = [SRV(0, 0, 1, "zero."), SRV(0, 100, 2, "full.")]
    rng = random.Random(3)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(1000))
    assert firsts["full."] > 950


def test_targets_from_srv() -> None:
    assert targets_from_srv([], "x.example") is None  # no records: fall back
    assert targets_from_srv([SRV(0, 0, 0, ".")], "x.example") == []  # "no service"
    assert targets_from_srv([SRV(0, 0, 5270, "xmpp.x.example.", True)], "x.example") == [
        Target("xmpp.x.example", 5270, True)
    ]


# ---- a DNS responder -------------------------------------------------------------------------
ZONE: dict[tuple[str, str], list[str]] = {
    ("_xmpp-server._tcp.srv.example.", "SRV"): [
        "20 0 5270 backup.srv.example.",
        "10 0 5269 main.srv.example.",
    ],
    ("_xmpps-server._tcp.srv.example.", "SRV"): ["5 0 5223 tls.srv.example."],
    ("main.srv.example.", "A"): ["192.0.2.10"],
    ("main.srv.example.", "AAAA"): ["2001:db8::10"],
    ("_xmpp-server._tcp.none.example.", "SRV"): ["0 0 0 ."],
    ("plain.example.", "A"): ["192.0.2.20"],
}


class Responder(asyncio.DatagramProtocol):
    """Answers from `zone`: (name with the final dot, type) -> records as text."""

    def __init__(self, zone: dict[tuple[str, str], list[str]] | None = None) -> None:
        self.zone = ZONE if zone is None else zone

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        rdtype = dns.rdatatype.to_text(question.rdtype)
        answers = self.zone.get((question.name.to_text(), rdtype))
        if answers:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", rdtype, answers)
            )
        elif not any(name == question.name.to_text() for name, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)  # type: ignore[attr-defined]


@pytest.fixture
async def nameserver() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.create_datagram_endpoint(
        Responder, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        transport.close()


async def test_srv_targets_in_order_with_direct_tls(nameserver: str) -> None:
    resolver = Resolver([nameserver])
    targets = await resolver.targets("srv.example")
    assert targets == [
        Target("tls.srv.example", 5223, True),
        Target("main.srv.example", 5269, False),
        Target("backup.srv.example", 5270, False),
    ]
    # Target names are resolved through the same name servers.
    assert await resolver.addresses("main.srv.example", 5269) == [
        ("2001:db8::10", 5269),
        ("192.0.2.10", 5269),
    ]
    assert await resolver.addresses("192.0.2.99", 1) == [("192.0.2.99", 1)]


async def test_no_srv_falls_back_to_the_domain(nameserver: str) -> None:
    resolver = Resolver([nameserver])
    assert await resolver.targets("plain.example") == [Target("plain.example", 5269)]
    assert await resolver.addresses("plain.example", 5269) == [("192.0.2.20", 5269)]
    assert await resolver.addresses("missing.example", 5269) == []


async def test_dot_target_means_no_service(nameserver: str) -> None:
    assert await Resolver([nameserver]).targets("none.example") == []
