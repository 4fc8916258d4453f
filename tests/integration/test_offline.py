"""Offline messages over real sockets: XEP-0160 (storage while no resource is available,
delivery at the next available presence of non-negative priority), XEP-0203 delay stamps,
XEP-0334 hints, RFC 6121 §8.5.2.2 (which types are stored, errors otherwise)."""

from __future__ import annotations

import asyncio
import datetime
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    Resource,
    add_user,
    error_condition,
    login_resource,
    q,
    start_server,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
DELAY = "urn:xmpp:delay"
MESSAGE = q(CLIENT, "message")

Login = Callable[..., Awaitable[Resource]]


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    """login(local, resource, presence=..., priority=...) -> Resource."""
    for local in ("alice", "bob"):
        await add_user(server, local)
    opened: list[Resource] = []

    async def _login(local: str, resource: str = "r", **kwargs: object) -> Resource:
        res = await login_resource(server, local, resource, **kwargs)  # type: ignore[arg-type]
        opened.append(res)
        return res

    yield _login
    for res in opened:
        await res.close()


def message(
    to: str, body: str, msg_type: str | None = "chat", msg_id: str = "m", extra: str = ""
) -> str:
    type_attr = f" type='{msg_type}'" if msg_type is not None else ""
    return f"<message to='{to}' id='{msg_id}'{type_attr}><body>{body}</body>{extra}</message>"


def is_message(el: ET.Element) -> bool:
    return el.tag == MESSAGE


def body_of(el: ET.Element) -> str | None:
    return el.findtext(q(CLIENT, "body"))


async def stored_count(server: Server, local: str = "alice") -> int:
    return await server.storage.offline.count(local, DOMAIN)


async def wait_stored(server: Server, count: int, local: str = "alice") -> None:
    """Wait until `count` messages are in `local`'s offline store."""
    for _ in range(100):
        if await stored_count(server, local) == count:
            return
        await asyncio.sleep(0.02)
    assert await stored_count(server, local) == count


async def messages(res: Resource, count: int) -> list[ET.Element]:
    return [await res.message() for _ in range(count)]


def assert_delayed(el: ET.Element, before: datetime.datetime) -> None:
    """XEP-0203: a delay from the server's domain with a UTC stamp of when it was stored."""
    delay = el.find(q(DELAY, "delay"))
    assert delay is not None, ET.tostring(el)
    assert delay.get("from") == DOMAIN
    stamp = delay.get("stamp") or ""
    assert stamp.endswith("Z"), stamp
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.UTC)
    assert before - datetime.timedelta(seconds=1) <= when <= now, (stamp, before, now)


# ---- storage and delivery ------------------------------------------------------------------
async def test_chat_and_normal_are_stored_and_delivered_in_order(
    server: Server, login: Login
) -> None:
    bob = await login("bob", presence=True)
    before = datetime.datetime.now(datetime.UTC)
    bob.send(message(ALICE, "one", "chat", "m1"))
    bob.send(message(ALICE, "two", None, "m2"))
    bob.send(message(ALICE, "three", "normal", "m3"))
    bob.send(message(f"{ALICE}/gone", "four", "chat", "m4"))  # no such resource: as bare
    await wait_stored(server, 4)
    await bob.assert_none(is_message)  # stored, so no error

    alice = await login("alice")
    await alice.assert_none(is_message)  # not before available presence
    await alice.available()
    got = await messages(alice, 4)
    assert [body_of(m) for m in got] == ["one", "two", "three", "four"]
    assert [m.get("id") for m in got] == ["m1", "m2", "m3", "m4"]
    assert [m.get("type") for m in got] == ["chat", None, "normal", "chat"]
    for m in got:
        assert m.get("from") == bob.jid
        assert_delayed(m, before)
    await wait_stored(server, 0)  # removed once delivered


async def test_not_delivered_to_negative_priority_until_raised(
    server: Server, login: Login
) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "waiting"))
    await wait_stored(server, 1)
    alice = await login("alice", priority=-1)
    await alice.assert_none(is_message)
    assert await stored_count(server) == 1
    # A bare-JID message now is stored too: the only resource has negative priority.
    bob.send(message(ALICE, "still waiting", msg_id="m2"))
    await wait_stored(server, 2)
    await alice.assert_none(is_message)
    await alice.available(priority=0)
    got = await messages(alice, 2)
    assert [body_of(m) for m in got] == ["waiting", "still waiting"]
    await wait_stored(server, 0)


async def test_delivered_when_a_second_resource_becomes_available(
    server: Server, login: Login
) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "for whoever comes"))
    await wait_stored(server, 1)
    negative = await login("alice", "negative", priority=-5)
    positive = await login("alice", "positive")
    await positive.available(priority=1)
    assert body_of(await positive.message()) == "for whoever comes"
    await negative.assert_none(is_message)


async def test_delivered_only_once(server: Server, login: Login) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "once"))
    await wait_stored(server, 1)
    first = await login("alice", "first", presence=True)
    assert body_of(await first.message()) == "once"
    # Another resource logging in while the first is online gets nothing.
    second = await login("alice", "second", presence=True)
    await second.assert_none(is_message)
    await first.close()
    await second.close()
    again = await login("alice", "again", presence=True)
    await again.assert_none(is_message)
    # Neither does a presence update on a resource that already got them.
    again.send("<presence><show>away</show></presence>")
    await again.assert_none(is_message)


# ---- what is not stored ----------------------------------------------------------------------
async def test_headline_is_not_stored(server: Server, login: Login) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "news", "headline"))
    await bob.assert_none()  # RFC 6121 §8.5.2.2.1: silently ignored
    assert await stored_count(server) == 0
    alice = await login("alice", presence=True)
    await alice.assert_none(is_message)


async def test_groupchat_is_refused(server: Server, login: Login) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "room talk", "groupchat", "g1"))
    error = await bob.message()
    assert error.get("type") == "error"
    assert error.get("id") == "g1"
    assert error.get("from") == ALICE
    assert error_condition(error) == ("cancel", "service-unavailable"), ET.tostring(error)
    assert await stored_count(server) == 0


@pytest.mark.parametrize("hint", ["no-store", "no-permanent-store"])
async def test_no_store_hint_is_respected(server: Server, login: Login, hint: str) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(ALICE, "ephemeral", extra=f"<{hint} xmlns='urn:xmpp:hints'/>"))
    bob.send(message(ALICE, "kept", msg_id="m2"))  # a marker that storage has run
    await wait_stored(server, 1)
    alice = await login("alice", presence=True)
    got = await alice.message()
    assert body_of(got) == "kept"
    await alice.assert_none(is_message)


async def test_chat_state_only_message_is_not_stored(server: Server, login: Login) -> None:
    bob = await login("bob", presence=True)
    bob.send(
        f"<message to='{ALICE}' type='chat' id='cs'>"
        "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )
    bob.send(
        message(
            ALICE,
            "with state",
            msg_id="m2",
            extra="<active xmlns='http://jabber.org/protocol/chatstates'/>",
        )
    )
    await wait_stored(server, 1)
    await bob.assert_none(is_message)
    alice = await login("alice", presence=True)
    got = await alice.message()
    assert got.get("id") == "m2"  # a chat state with a body is kept
    await alice.assert_none(is_message)


async def test_message_to_nonexistent_user_is_service_unavailable(
    server: Server, login: Login
) -> None:
    bob = await login("bob", presence=True)
    bob.send(message(f"nobody@{DOMAIN}", "hello?", msg_id="x1"))
    error = await bob.message()
    assert error.get("type") == "error"
    assert error.get("id") == "x1"
    assert error_condition(error) == ("cancel", "service-unavailable"), ET.tostring(error)
    assert await stored_count(server, "nobody") == 0


# ---- quota -----------------------------------------------------------------------------------
async def test_quota_refuses_with_resource_constraint(tmp_path: Path) -> None:
    server = await start_server(tmp_path / "data", offline={"max_messages": 3})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob = await login_resource(server, "bob", presence=True)
        for n in range(1, 4):
            bob.send(message(ALICE, f"m{n}", msg_id=f"m{n}"))
        await wait_stored(server, 3)
        await bob.assert_none(is_message)
        bob.send(message(ALICE, "one too many", msg_id="m4"))
        error = await bob.message()
        assert error.get("type") == "error"
        assert error.get("id") == "m4"
        assert error_condition(error) == ("wait", "resource-constraint"), ET.tostring(error)
        assert await stored_count(server) == 3
        # Once delivered, there is room again.
        alice = await login_resource(server, "alice", presence=True)
        assert [body_of(m) for m in await messages(alice, 3)] == ["m1", "m2", "m3"]
        alice.send("<presence type='unavailable'/>")
        await alice.presence(from_=alice.jid, type="unavailable")
        await alice.close()
        bob.send(message(ALICE, "room again", msg_id="m5"))
        await wait_stored(server, 1)
        await bob.assert_none(is_message)
        await bob.close()
    finally:
        await server.stop()


# ---- durability ------------------------------------------------------------------------------
async def test_offline_messages_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = await start_server(data_dir)
    try:
        await add_user(first, "alice")
        await add_user(first, "bob")
        bob = await login_resource(first, "bob", presence=True)
        before = datetime.datetime.now(datetime.UTC)
        bob.send(message(ALICE, "before restart", msg_id="r1"))
        bob.send(message(ALICE, "also before", msg_id="r2"))
        await wait_stored(first, 2)
        await bob.close()
    finally:
        await first.stop()
    second = await start_server(data_dir)
    try:
        alice = await login_resource(second, "alice", presence=True)
        got = await messages(alice, 2)
        assert [body_of(m) for m in got] == ["before restart", "also before"]
        for m in got:
            assert_delayed(m, before)
        await alice.close()
    finally:
        await second.stop()
