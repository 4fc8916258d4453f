"""Roster management over real sockets: RFC 6121 §2 (get, set, push, delete, errors) and
roster versioning, XEP-0237."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.helpers import (
    DOMAIN,
    ROSTER,
    Resource,
    add_user,
    authenticated_features,
    error_condition,
    is_roster_push,
    login_resource,
    q,
    roster_item_attrs,
    start_server,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
DAVE = f"dave@{DOMAIN}"

Login = Callable[..., Awaitable[Resource]]


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    """login(local, resource, roster=..., presence=...) -> Resource; closed at the end."""
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


def query_of(iq: ET.Element) -> ET.Element | None:
    return iq.find(q(ROSTER, "query"))


def items_of(iq: ET.Element) -> dict[str, dict[str, str]]:
    query = query_of(iq)
    assert query is not None, ET.tostring(iq)
    return {
        item.get("jid", ""): roster_item_attrs(item) for item in query.findall(q(ROSTER, "item"))
    }


def assert_result(iq: ET.Element) -> None:
    assert iq.get("type") == "result", ET.tostring(iq)


def assert_error(iq: ET.Element, condition: str, error_type: str | None = None) -> None:
    assert iq.get("type") == "error", ET.tostring(iq)
    kind, cond = error_condition(iq)
    assert cond == condition, ET.tostring(iq)
    if error_type is not None:
        assert kind == error_type, ET.tostring(iq)


# ---- §2.1.3 roster get ------------------------------------------------------------------------
async def test_get_empty_roster_has_a_version(login: Login) -> None:
    alice = await login("alice")
    result = await alice.roster_get()
    assert_result(result)
    assert result.get("to") == alice.jid
    query = query_of(result)
    assert query is not None
    assert list(query) == []
    # XEP-0237 §2: a server that advertises versioning always includes 'ver'.
    assert query.get("ver") is not None


async def test_set_adds_item_with_name_and_groups(login: Login) -> None:
    alice = await login("alice", roster=True)
    result = await alice.roster_set(
        f"<item jid='{BOB}' name='Bobby'><group>Friends</group><group>Work</group></item>"
    )
    assert_result(result)
    push = await alice.push(BOB)
    assert push.get("to") == alice.jid
    query = query_of(push)
    assert query is not None and query.get("ver")
    items = items_of(push)
    assert items == {
        BOB: {"jid": BOB, "name": "Bobby", "subscription": "none", "groups": "Friends|Work"}
    }
    roster = items_of(await alice.roster_get())
    assert roster == items


async def test_update_replaces_name_and_groups(login: Login) -> None:
    alice = await login("alice", roster=True)
    assert_result(await alice.roster_set(f"<item jid='{BOB}' name='Bob'><group>A</group></item>"))
    await alice.push(BOB)
    assert_result(
        await alice.roster_set(f"<item jid='{BOB}' name='Robert'><group>B</group></item>")
    )
    assert await alice.push_item(BOB) == {
        "jid": BOB,
        "name": "Robert",
        "subscription": "none",
        "groups": "B",
    }
    # An update without name and groups clears them (§2.1.5: the item is replaced).
    assert_result(await alice.roster_set(f"<item jid='{BOB}'/>"))
    assert await alice.push_item(BOB) == {"jid": BOB, "subscription": "none"}
    assert items_of(await alice.roster_get()) == {BOB: {"jid": BOB, "subscription": "none"}}


async def test_client_cannot_set_subscription_state(login: Login) -> None:
    """RFC 6121 §2.1.2.5: 'subscription' values other than 'remove' from a client are ignored;
    'ask' and 'approved' likewise belong to the server (§2.1.2.1, §2.1.2.2)."""
    alice = await login("alice", roster=True)
    result = await alice.roster_set(
        f"<item jid='{BOB}' subscription='both' ask='subscribe' approved='true'/>"
    )
    assert_result(result)
    assert await alice.push_item(BOB) == {"jid": BOB, "subscription": "none"}


async def test_push_reaches_every_resource_that_requested_the_roster(login: Login) -> None:
    """RFC 6121 §2.1.6: pushes go to the interested resources, and only to them."""
    first = await login("alice", "first", roster=True)
    second = await login("alice", "second", roster=True)
    quiet = await login("alice", "quiet", presence=True)  # never requested the roster
    assert_result(await first.roster_set(f"<item jid='{BOB}' name='Bob'/>"))
    for res in (first, second):
        push = await res.push(BOB)
        assert push.get("to") == res.jid
        assert items_of(push)[BOB]["name"] == "Bob"
    # Removal is pushed to both as subscription='remove'.
    assert_result(await second.roster_set(f"<item jid='{BOB}' subscription='remove'/>"))
    for res in (first, second):
        assert await res.push_item(BOB) == {"jid": BOB, "subscription": "remove"}
    await quiet.assert_none(is_roster_push)
    assert items_of(await first.roster_get()) == {}


async def test_remove_unknown_item_is_item_not_found(login: Login) -> None:
    alice = await login("alice", roster=True)
    result = await alice.roster_set(f"<item jid='{CAROL}' subscription='remove'/>")
    assert_error(result, "item-not-found", "cancel")
    await alice.assert_none(is_roster_push)


# ---- §2.3.3 errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item_xml", "condition"),
    [
        (f"<item jid='{BOB}'/><item jid='{CAROL}'/>", "bad-request"),
        ("<item name='no jid'/>", "bad-request"),
        (f"<item jid='{BOB}'><group>Same</group><group>Same</group></item>", "bad-request"),
        (f"<item jid='{BOB}'><group/></item>", "not-acceptable"),
        (f"<item jid='{BOB}'><group></group></item>", "not-acceptable"),
        (f"<item jid='{BOB}' name='{'n' * 1024}'/>", "not-acceptable"),
    ],
    ids=["two-items", "no-jid", "duplicate-group", "empty-group", "empty-group-pair", "long-name"],
)
async def test_invalid_roster_set_is_refused(login: Login, item_xml: str, condition: str) -> None:
    alice = await login("alice", roster=True)
    result = await alice.roster_set(item_xml)
    assert_error(result, condition, "modify")
    await alice.assert_none(is_roster_push)
    assert items_of(await alice.roster_get()) == {}


async def test_name_of_1023_characters_is_accepted(login: Login) -> None:
    alice = await login("alice", roster=True)
    assert_result(await alice.roster_set(f"<item jid='{BOB}' name='{'n' * 1023}'/>"))
    assert (await alice.push_item(BOB))["name"] == "n" * 1023


@pytest.mark.parametrize("iq_type", ["get", "set"])
async def test_roster_of_another_user_is_forbidden(login: Login, iq_type: str) -> None:
    """RFC 6121 §2.1.3 / §2.3.3: only the owner reads or writes a roster."""
    bob = await login("bob", roster=True)
    assert_result(await bob.roster_set(f"<item jid='{CAROL}'/>"))
    await bob.push(CAROL)
    alice = await login("alice")
    if iq_type == "get":
        result = await alice.roster_get(to=BOB)
    else:
        result = await alice.roster_set(f"<item jid='{DAVE}'/>", to=BOB)
    # A stranger (no presence subscription) gets what a missing account answers.
    assert_error(result, "service-unavailable", "cancel")
    assert ET.tostring(result).find(CAROL.encode()) == -1  # bob's roster is not revealed
    await bob.assert_none(is_roster_push)
    assert set(items_of(await bob.roster_get())) == {CAROL}


async def test_roster_get_addressed_to_own_bare_jid_works(login: Login) -> None:
    alice = await login("alice")
    assert_result(await alice.roster_get(to=ALICE))


# ---- XEP-0237 roster versioning ----------------------------------------------------------
async def test_roster_versioning_stream_feature(server: Server) -> None:
    await add_user(server, "alice")
    raw, features = await authenticated_features(server, "alice")
    try:
        assert features.find(q("urn:xmpp:features:rosterver", "ver")) is not None
    finally:
        await raw.close()


async def add_items(res: Resource, *jids: str) -> str:
    """Add items; returns the version of the last push."""
    ver = ""
    for jid in jids:
        assert_result(await res.roster_set(f"<item jid='{jid}'/>"))
        query = query_of(await res.push(jid))
        assert query is not None
        ver = query.get("ver") or ""
        assert ver
    return ver


async def test_get_with_current_version_is_an_empty_result(login: Login) -> None:
    alice = await login("alice", roster=True)
    ver = await add_items(alice, BOB, CAROL)
    full = await alice.roster_get()
    assert query_of(full).get("ver") == ver  # type: ignore[union-attr]
    other = await login("alice", "other")
    result = await other.roster_get(ver=ver)
    assert_result(result)
    assert list(result) == []  # XEP-0237 §3: no query element at all
    await other.assert_none(is_roster_push)


async def test_get_with_older_version_pushes_only_changes(login: Login) -> None:
    alice = await login("alice", roster=True)
    old_ver = await add_items(alice, BOB, CAROL)
    # Changes after old_ver: DAVE added, BOB renamed, CAROL removed.
    await add_items(alice, DAVE)
    assert_result(await alice.roster_set(f"<item jid='{BOB}' name='Bobby'/>"))
    await alice.push(BOB)
    assert_result(await alice.roster_set(f"<item jid='{CAROL}' subscription='remove'/>"))
    last = query_of(await alice.push(CAROL))
    assert last is not None
    current = last.get("ver")

    other = await login("alice", "other")
    result = await other.roster_get(ver=old_ver)
    assert_result(result)
    assert list(result) == []  # the pushes carry the changes
    changes: dict[str, dict[str, str]] = {}
    versions: list[str] = []
    for _ in range(3):
        push = await other.push()
        query = query_of(push)
        assert query is not None
        versions.append(query.get("ver") or "")
        changes.update(items_of(push))
    assert changes == {
        DAVE: {"jid": DAVE, "subscription": "none"},
        BOB: {"jid": BOB, "name": "Bobby", "subscription": "none"},
        CAROL: {"jid": CAROL, "subscription": "remove"},
    }
    assert versions[-1] == current  # the last push brings the client up to date
    await other.assert_none(is_roster_push)
    # A resource that synchronised this way is interested: it gets later pushes too.
    assert_result(await alice.roster_set(f"<item jid='{CAROL}'/>"))
    assert (await other.push_item(CAROL))["jid"] == CAROL


@pytest.mark.parametrize("ver", ["", "unknown-version", "999999"])
async def test_get_with_empty_or_unknown_version_returns_full_roster(
    login: Login, ver: str
) -> None:
    alice = await login("alice", roster=True)
    current = await add_items(alice, BOB, CAROL)
    other = await login("alice", "other")
    result = await other.roster_get(ver=ver)
    assert_result(result)
    query = query_of(result)
    assert query is not None
    assert query.get("ver") == current
    assert set(items_of(result)) == {BOB, CAROL}


# ---- persistence ------------------------------------------------------------------------------
async def test_roster_survives_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = await start_server(data_dir)
    try:
        await add_user(first, "alice")
        alice = await login_resource(first, "alice", roster=True)
        assert_result(
            await alice.roster_set(f"<item jid='{BOB}' name='Bob'><group>G</group></item>")
        )
        ver = query_of(await alice.push(BOB)).get("ver")  # type: ignore[union-attr]
        await alice.close()
    finally:
        await first.stop()
    second = await start_server(data_dir)
    try:
        alice = await login_resource(second, "alice")
        result = await alice.roster_get()
        assert items_of(result) == {
            BOB: {"jid": BOB, "name": "Bob", "subscription": "none", "groups": "G"}
        }
        assert query_of(result).get("ver") == ver  # type: ignore[union-attr]
        unchanged = await alice.roster_get(ver=ver)
        assert_result(unchanged)
        assert list(unchanged) == []
        await alice.close()
    finally:
        await second.stop()
