"""The event bus (hooks with priorities) and the online-session registry (RFC 6121 §8)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from dovecote.core.events import EventBus
from dovecote.core.sessions import SessionManager
from dovecote.jid import JID


# ---- EventBus -----------------------------------------------------------------------
def recorder(calls: list[str], name: str, result: Any = None) -> Any:
    def handler(event: Any) -> Any:
        calls.append(name)
        return result

    return handler


def async_recorder(calls: list[str], name: str, result: Any = None) -> Any:
    async def handler(event: Any) -> Any:
        await asyncio.sleep(0)
        calls.append(name)
        return result

    return handler


async def test_fire_without_handlers() -> None:
    bus = EventBus()
    assert await bus.fire("nothing", object()) is False
    assert not bus.has("nothing")
    await bus.fire_all("nothing", object())


async def test_higher_priority_runs_first() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.add("e", recorder(calls, "low"), priority=-10)
    bus.add("e", recorder(calls, "high"), priority=10)
    bus.add("e", recorder(calls, "default"))
    bus.add("e", recorder(calls, "highest"), priority=100)
    assert await bus.fire("e", None) is False
    assert calls == ["highest", "high", "default", "low"]


async def test_equal_priority_keeps_registration_order() -> None:
    bus = EventBus()
    calls: list[str] = []
    for name in ("a", "b", "c", "d"):
        bus.add("e", recorder(calls, name), priority=5)
    await bus.fire("e", None)
    assert calls == ["a", "b", "c", "d"]


async def test_handler_returning_true_stops_the_chain() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.add("e", recorder(calls, "first"), priority=2)
    bus.add("e", recorder(calls, "handler", True), priority=1)
    bus.add("e", recorder(calls, "never"), priority=0)
    assert await bus.fire("e", None) is True
    assert calls == ["first", "handler"]


async def test_falsy_results_do_not_stop() -> None:
    bus = EventBus()
    calls: list[str] = []
    for i, result in enumerate([None, False, 0, ""]):
        bus.add("e", recorder(calls, str(i), result), priority=-i)
    assert await bus.fire("e", None) is False
    assert calls == ["0", "1", "2", "3"]


async def test_sync_and_async_handlers_mix() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.add("e", async_recorder(calls, "async-high"), priority=3)
    bus.add("e", recorder(calls, "sync-mid"), priority=2)
    bus.add("e", async_recorder(calls, "async-stops", True), priority=1)
    bus.add("e", recorder(calls, "never"), priority=0)
    assert await bus.fire("e", None) is True
    assert calls == ["async-high", "sync-mid", "async-stops"]


async def test_handlers_receive_the_event() -> None:
    bus = EventBus()
    seen: list[Any] = []
    event = {"stanza": "x"}
    bus.add("e", seen.append)

    async def async_handler(ev: Any) -> None:
        seen.append(ev)

    bus.add("e", async_handler)
    await bus.fire("e", event)
    assert seen == [event, event]
    assert seen[0] is event


async def test_decorator_registers_and_returns_the_handler() -> None:
    bus = EventBus()
    calls: list[str] = []

    @bus.on("iq/get/urn:xmpp:ping:ping", priority=5)
    async def pong(event: Any) -> bool:
        calls.append("pong")
        return True

    assert callable(pong)
    assert bus.has("iq/get/urn:xmpp:ping:ping")
    assert await bus.fire("iq/get/urn:xmpp:ping:ping", None) is True
    assert calls == ["pong"]


async def test_events_are_separate_by_name() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.add("a", recorder(calls, "a"))
    bus.add("b", recorder(calls, "b"))
    await bus.fire("a", None)
    assert calls == ["a"]


async def test_remove() -> None:
    bus = EventBus()
    calls: list[str] = []
    keep = recorder(calls, "keep")
    drop = recorder(calls, "drop", True)
    bus.add("e", drop, priority=1)
    bus.add("e", keep)
    bus.remove("e", drop)
    assert await bus.fire("e", None) is False
    assert calls == ["keep"]
    bus.remove("e", keep)
    assert not bus.has("e")
    # Removing what is not there is harmless.
    bus.remove("e", keep)
    bus.remove("never-registered", keep)


async def test_remove_only_that_event() -> None:
    bus = EventBus()
    calls: list[str] = []
    handler = recorder(calls, "h")
    bus.add("a", handler)
    bus.add("b", handler)
    bus.remove("a", handler)
    await bus.fire("a", None)
    await bus.fire("b", None)
    assert calls == ["h"]


async def test_handler_removing_itself_during_fire() -> None:
    bus = EventBus()
    calls: list[str] = []

    def once(event: Any) -> None:
        calls.append("once")
        bus.remove("e", once)

    bus.add("e", once, priority=1)
    bus.add("e", recorder(calls, "after"))
    await bus.fire("e", None)
    await bus.fire("e", None)
    assert calls == ["once", "after", "after"]


async def test_fire_all_runs_every_handler() -> None:
    bus = EventBus()
    calls: list[str] = []
    bus.add("e", recorder(calls, "low", True), priority=-1)
    bus.add("e", async_recorder(calls, "high", True), priority=1)
    bus.add("e", recorder(calls, "mid", True))
    assert await bus.fire_all("e", None) is None
    assert calls == ["high", "mid", "low"]


# ---- SessionManager -----------------------------------------------------------------
NOWHERE = JID.parse("nobody.invalid")


@dataclass(eq=False)
class FakeSession:
    """The attributes SessionManager reads; identity is what matters."""

    name: str
    jid: JID = NOWHERE
    priority: int = 0
    available: bool = False
    presence: Any = None


JULIET = JID.parse("juliet@example.com")
ROMEO = JID.parse("romeo@example.net")


def bound(
    manager: SessionManager, resource: str, priority: int = 0, available: bool = True
) -> FakeSession:
    session = FakeSession(resource, priority=priority, available=available)
    assert manager.bind(session, JULIET.with_resource(resource)) is None  # type: ignore[arg-type]
    return session


def test_bind_registers_and_sets_the_jid() -> None:
    manager = SessionManager()
    session = FakeSession("balcony")
    full = JULIET.with_resource("balcony")
    assert manager.bind(session, full) is None  # type: ignore[arg-type]
    assert session.jid == full
    assert manager.get(full) is session
    assert manager.resources(JULIET) == [session]
    assert manager.is_online(JULIET)
    assert len(manager) == 1
    assert manager.user_count == 1
    assert list(manager) == [session]


def test_get_needs_a_full_jid() -> None:
    manager = SessionManager()
    bound(manager, "balcony")
    assert manager.get(JULIET) is None
    assert manager.get(JULIET.with_resource("other")) is None
    assert manager.get(ROMEO.with_resource("balcony")) is None


def test_several_resources_of_one_user() -> None:
    manager = SessionManager()
    a = bound(manager, "a")
    b = bound(manager, "b")
    c = FakeSession("c")
    manager.bind(c, ROMEO.with_resource("c"))  # type: ignore[arg-type]
    assert set(map(id, manager.resources(JULIET))) == {id(a), id(b)}
    assert manager.resources(ROMEO) == [c]
    assert len(manager) == 3
    assert manager.user_count == 2
    assert {s.name for s in manager} == {"a", "b", "c"}  # type: ignore[attr-defined]


def test_bind_replaces_a_session_with_the_same_resource() -> None:
    """RFC 6120 §7.7.2.2: the new session may take the resource over."""
    manager = SessionManager()
    old = bound(manager, "balcony")
    new = FakeSession("balcony-new")
    full = JULIET.with_resource("balcony")
    assert manager.bind(new, full) is old  # type: ignore[arg-type]
    assert manager.get(full) is new
    assert len(manager) == 1
    # The replaced session going away later must not unbind its successor.
    assert manager.unbind(old) is False  # type: ignore[arg-type]
    assert manager.get(full) is new
    assert len(manager) == 1


def test_unbind() -> None:
    manager = SessionManager()
    a = bound(manager, "a")
    b = bound(manager, "b")
    assert manager.unbind(a) is True  # type: ignore[arg-type]
    assert manager.get(JULIET.with_resource("a")) is None
    assert manager.resources(JULIET) == [b]
    assert manager.is_online(JULIET)
    assert manager.unbind(a) is False  # type: ignore[arg-type]
    assert manager.unbind(b) is True  # type: ignore[arg-type]
    assert not manager.is_online(JULIET)
    assert manager.resources(JULIET) == []
    assert len(manager) == 0
    assert manager.user_count == 0


def test_unbind_of_a_never_bound_session() -> None:
    manager = SessionManager()
    bound(manager, "a")
    stranger = FakeSession("x", jid=JULIET.with_resource("a"))
    assert manager.unbind(stranger) is False  # type: ignore[arg-type]
    assert len(manager) == 1
    assert manager.unbind(FakeSession("y", jid=ROMEO.with_resource("z"))) is False  # type: ignore[arg-type]


def test_available_filters_unavailable_and_negative_priority() -> None:
    """RFC 6121 §8.5.2: negative-priority resources get no bare-JID messages."""
    manager = SessionManager()
    bound(manager, "unavailable", priority=10, available=False)
    zero = bound(manager, "zero", priority=0)
    positive = bound(manager, "positive", priority=5)
    negative = bound(manager, "negative", priority=-1)
    assert {s.name for s in manager.available(JULIET)} == {zero.name, positive.name}
    every = manager.available(JULIET, min_priority=None)
    assert {s.name for s in every} == {zero.name, positive.name, negative.name}
    assert {s.name for s in manager.available(JULIET, min_priority=3)} == {positive.name}
    assert manager.available(ROMEO) == []


def test_available_follows_session_state() -> None:
    manager = SessionManager()
    session = bound(manager, "a", available=False)
    assert manager.available(JULIET) == []
    session.available = True
    assert manager.available(JULIET) == [session]
    session.priority = -5
    assert manager.available(JULIET) == []


def test_highest_priority() -> None:
    manager = SessionManager()
    bound(manager, "low", priority=1)
    top1 = bound(manager, "top1", priority=7)
    top2 = bound(manager, "top2", priority=7)
    bound(manager, "hidden", priority=50, available=False)
    bound(manager, "negative", priority=-3)
    assert {s.name for s in manager.highest_priority(JULIET)} == {top1.name, top2.name}


def test_highest_priority_with_only_negative_or_unavailable() -> None:
    manager = SessionManager()
    bound(manager, "negative", priority=-1)
    bound(manager, "away", priority=3, available=False)
    assert manager.highest_priority(JULIET) == []
    assert manager.highest_priority(ROMEO) == []


def test_highest_priority_zero() -> None:
    manager = SessionManager()
    only = bound(manager, "only", priority=0)
    assert manager.highest_priority(JULIET) == [only]


def test_iteration_is_safe_while_unbinding() -> None:
    manager = SessionManager()
    for name in ("a", "b", "c"):
        bound(manager, name)
    for session in manager:
        manager.unbind(session)
    assert len(manager) == 0


# ---- failures -----------------------------------------------------------------------
async def test_fire_all_runs_the_others_when_one_raises(caplog: Any) -> None:
    """A failing notification handler is logged (event, handler, stanza id, session) and
    the handlers after it still run."""
    from dovecote.xml.element import Element

    bus = EventBus()
    calls: list[str] = []

    def broken(event: Any) -> None:
        raise RuntimeError("boom")

    async def broken_async(event: Any) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    bus.add("presence/outgoing", broken, priority=2)
    bus.add("presence/outgoing", broken_async, priority=1)
    bus.add("presence/outgoing", recorder(calls, "after"))
    session = FakeSession("s", jid=JULIET.with_resource("balcony"))
    stanza = Element("presence", "jabber:client", {"id": "p1", "from": "juliet@example.com"})
    with caplog.at_level("ERROR", "dovecote.core.events"):
        await bus.fire_all("presence/outgoing", (session, stanza))
    assert calls == ["after"]
    failures = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(failures) == 2
    message = failures[0].getMessage()
    assert "presence/outgoing" in message
    assert "test_fire_all_runs_the_others_when_one_raises.<locals>.broken" in message
    assert "id='p1'" in message
    assert "juliet@example.com/balcony" in message
    assert failures[0].exc_info is not None


async def test_fire_lets_exceptions_propagate_and_stop_the_chain() -> None:
    """`fire` is a decision chain: a raising handler (StanzaError: its answer; anything
    else: a bug the router answers with internal-server-error) stops it, so a lower
    handler never runs in place of a check that failed."""
    from dovecote.stream.errors import StanzaError

    bus = EventBus()
    calls: list[str] = []

    def refuse(event: Any) -> bool:
        raise StanzaError("forbidden")

    bus.add("e", refuse, priority=1)
    bus.add("e", recorder(calls, "never", True))
    with pytest.raises(StanzaError):
        await bus.fire("e", None)
    assert calls == []
