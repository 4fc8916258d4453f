"""Router.route_soon keeps the order of stanzas from one account (RFC 6120 §10.1) with a
bounded queue, and Fanout splices 'to' into one serialization."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from dovecote.core.events import EventBus
from dovecote.core.router import Fanout, Router
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize


class FakeServer:
    """What Router.route_soon needs: the bus, the limit and background tasks."""

    def __init__(self, max_route_queue: int = 1000) -> None:
        self.events = EventBus()
        self.config = SimpleNamespace(limits=SimpleNamespace(max_route_queue=max_route_queue))
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task


def presence(sender: str, kind: str) -> Element:
    return Element("presence", ns.CLIENT, {"from": sender, "to": "bob@example.org", "type": kind})


def recording_router(server: FakeServer, slow: str) -> tuple[Router, list[str]]:
    """A router whose `route` records the type, the `slow` one taking longest."""
    router = Router(server)  # type: ignore[arg-type]
    routed: list[str] = []

    async def route(stanza: Element, origin: Any = None, **_: Any) -> None:
        if stanza.attrs["type"] == slow:
            await asyncio.sleep(0.05)
        routed.append(stanza.attrs["type"])

    router.route = route  # type: ignore[method-assign]
    return router, routed


async def settle(server: FakeServer) -> None:
    while server.tasks:
        await server.tasks.pop(0)


async def test_route_soon_keeps_the_order_of_one_account() -> None:
    server = FakeServer()
    router, routed = recording_router(server, slow="unsubscribe")
    # A full and a bare JID of the same account share the queue.
    router.route_soon(presence("alice@example.org", "unsubscribe"))
    router.route_soon(presence("alice@example.org/phone", "unsubscribed"))
    router.route_soon(presence("alice@example.org", "subscribe"))
    await settle(server)
    assert routed == ["unsubscribe", "unsubscribed", "subscribe"]
    assert router._outbox == {}  # nothing left behind


async def test_route_soon_does_not_hold_other_accounts_back() -> None:
    server = FakeServer()
    router, routed = recording_router(server, slow="unsubscribe")
    router.route_soon(presence("alice@example.org", "unsubscribe"))
    router.route_soon(presence("carol@example.org", "subscribed"))
    await settle(server)
    assert routed == ["subscribed", "unsubscribe"]


async def test_route_soon_beyond_the_queue_limit_routes_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Memory stays bounded: past `max_route_queue` waiting, a stanza is routed at once
    (out of order, logged), never dropped."""
    server = FakeServer(max_route_queue=2)
    router, routed = recording_router(server, slow="first")
    with caplog.at_level(logging.WARNING, "dovecote.core.router"):
        router.route_soon(presence("alice@example.org", "first"))
        for n in range(4):
            router.route_soon(presence("alice@example.org", f"n{n}"))
        await settle(server)
    assert sorted(routed) == ["first", "n0", "n1", "n2", "n3"]
    # 'first' and 'n0' filled the queue and kept their order; the rest went at once.
    assert routed.index("first") < routed.index("n0")
    warnings = [r for r in caplog.records if "wait to be routed" in r.getMessage()]
    assert len(warnings) == 1  # once per backlog


async def test_route_soon_goes_on_after_a_failure() -> None:
    server = FakeServer()
    router = Router(server)  # type: ignore[arg-type]
    routed: list[str] = []

    async def route(stanza: Element, origin: Any = None, **_: Any) -> None:
        if stanza.attrs["type"] == "bad":
            raise RuntimeError("broken")
        routed.append(stanza.attrs["type"])

    router.route = route  # type: ignore[method-assign]
    # route() itself never raises; were it to, the stanzas behind would still go.
    router.route_soon(presence("alice@example.org", "bad"))
    router.route_soon(presence("alice@example.org", "good"))
    await settle(server)
    assert router._outbox == {}
    router.route_soon(presence("alice@example.org", "later"))
    await settle(server)
    assert routed == ["good", "later"]


class TCPWire:
    """Stands for a kind of connection (what `ClientSession.wire` names)."""


class OtherWire:
    """Another kind, serializing with an explicit namespace (as WebSocket framing does)."""


class FakeSession:
    def __init__(self, wire: type = TCPWire) -> None:
        self.wire = wire

    def serialize(self, stanza: Element) -> bytes:
        default = ns.CLIENT if self.wire is TCPWire else ""
        return serialize(stanza, default).encode()


def test_fanout_splices_to_into_one_serialization() -> None:
    stanza = Element("presence", ns.CLIENT, {"from": "alice@example.org/r"})
    stanza.add("status", text="it's <here>")
    fanout = Fanout(stanza)
    copy = stanza.shallow_copy()
    copy.attrs["to"] = "o'brien@example.org"
    assert fanout.is_copy(copy)
    data = fanout.data_for(FakeSession(), copy.attrs["to"])
    assert data is not None
    # Equal to a serialization of its own (attribute order aside: 'to' comes first).
    own = serialize(copy, ns.CLIENT).encode()
    assert sorted(data.decode()) == sorted(own.decode())
    assert data.startswith(b"<presence to='o&apos;brien@example.org' from=")


def test_fanout_refuses_a_copy_a_handler_changed() -> None:
    stanza = Element("presence", ns.CLIENT, {"from": "alice@example.org/r"})
    fanout = Fanout(stanza)
    changed = stanza.shallow_copy()
    changed.attrs["type"] = "unavailable"
    assert not fanout.is_copy(changed)
    extra = stanza.shallow_copy()
    extra.add("x", "urn:example")
    assert not fanout.is_copy(extra)


def test_fanout_serializes_once_per_kind_of_connection() -> None:
    """Sessions on different kinds of connection get their own serialization; sessions on
    the same kind share one."""
    stanza = Element("presence", ns.CLIENT, {"from": "alice@example.org/r"})
    fanout = Fanout(stanza)
    tcp = fanout.data_for(FakeSession(TCPWire), "bob@example.org")
    other = fanout.data_for(FakeSession(OtherWire), "bob@example.org")
    assert tcp == b"<presence to='bob@example.org' from='alice@example.org/r'/>"
    assert other == (
        b"<presence to='bob@example.org' xmlns='jabber:client' from='alice@example.org/r'/>"
    )
    assert len(fanout._templates) == 2
    fanout.data_for(FakeSession(TCPWire), "carol@example.org")
    assert len(fanout._templates) == 2
