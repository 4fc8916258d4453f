"""Presence subscriptions over real sockets: RFC 6121 §3 (request, approve, cancel,
unsubscribe, deny, pre-approval) with the roster pushes each step makes, checked on every
resource of both users, and §2.5.2 (deleting an item cancels the subscriptions)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.helpers import (
    DOMAIN,
    ROSTER,
    Resource,
    add_user,
    authenticated_features,
    connect,
    disconnect,
    is_presence,
    is_roster_push,
    login_resource,
    q,
    start_server,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
NOBODY = f"nobody@{DOMAIN}"


def is_subscription(el: ET.Element) -> bool:
    return el.tag == q("jabber:client", "presence") and el.get("type") in (
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
    )


def is_status(el: ET.Element, sender: str, status: str) -> bool:
    """Available presence from `sender` with this status text."""
    return is_presence(el, from_=sender, type=None) and (
        el.findtext(q("jabber:client", "status")) == status
    )


@dataclass
class User:
    """Two resources of one account, both interested (roster requested) and available."""

    bare: str
    resources: list[Resource]

    def send(self, xml: str, index: int = 0) -> None:
        self.resources[index].send(xml)

    async def pushes(self, jid: str) -> list[dict[str, str]]:
        """The next push about `jid` on every resource; all must be the same."""
        items = [await res.push_item(jid) for res in self.resources]
        assert all(item == items[0] for item in items), items
        return items

    async def push(self, jid: str) -> dict[str, str]:
        return (await self.pushes(jid))[0]

    async def presence_on_all(self, **attrs: str | None) -> list[ET.Element]:
        return [await res.presence(**attrs) for res in self.resources]

    async def assert_none(self, predicate: Callable[[ET.Element], bool]) -> None:
        await asyncio.gather(*(res.assert_none(predicate) for res in self.resources))


Login = Callable[..., Awaitable[User]]


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    """login(local) -> User with resources 'one' and 'two' (roster requested, available)."""
    for local in ("alice", "bob"):
        await add_user(server, local)
    opened: list[Resource] = []

    async def _login(local: str, resources: tuple[str, ...] = ("one", "two")) -> User:
        made = []
        for name in resources:
            res = await login_resource(server, local, name, roster=True, presence=True)
            opened.append(res)
            made.append(res)
        # Let each resource see the others' initial presence before the test starts.
        for res in made:
            await res.drain(0.05)
        return User(f"{local}@{DOMAIN}", made)

    yield _login
    for res in opened:
        await res.close()


async def subscribe(alice: User, bob: User) -> None:
    """alice -> bob subscribe, bob approves: alice 'to'/'both' on bob, bob 'from'/'both'."""
    alice.send(f"<presence to='{bob.bare}' type='subscribe'/>")
    await alice.push(bob.bare)
    await bob.presence_on_all(type="subscribe", from_=alice.bare)
    bob.send(f"<presence to='{alice.bare}' type='subscribed'/>")
    await bob.push(alice.bare)
    await alice.push(bob.bare)
    await alice.presence_on_all(type="subscribed", from_=bob.bare)
    for res in bob.resources:
        await alice.presence_on_all(from_=res.jid, type=None)


# ---- §3.1 request and approval -------------------------------------------------------------
async def test_subscribe_and_approve(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")

    # §3.1.2: the user's server pushes the item with ask='subscribe' ...
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "none", "ask": "subscribe"}
    # §3.1.3: ... and the contact's available resources get the request, from the bare JID.
    for request in await bob.presence_on_all(type="subscribe"):
        assert request.get("from") == ALICE
        assert request.get("to") == BOB
    await bob.assert_none(is_roster_push)  # no item for a request not yet answered

    # §3.1.5: the contact approves: 'from' for the contact ...
    bob.send(f"<presence to='{ALICE}' type='subscribed'/>", index=1)
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "from"}
    # §3.1.6: ... 'to' for the user, who gets 'subscribed' and the contact's presence.
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "to"}
    for answer in await alice.presence_on_all(type="subscribed"):
        assert answer.get("from") == BOB
    for bob_res in bob.resources:
        for got in await alice.presence_on_all(from_=bob_res.jid, type=None):
            assert got.get("to") in (ALICE, *(r.jid for r in alice.resources))

    # From now on bob's presence reaches alice, alice's does not reach bob.
    bob.send("<presence><show>away</show><status>lunch</status></presence>")
    for got in await alice.presence_on_all(from_=bob.resources[0].jid, type=None):
        assert got.findtext(q("jabber:client", "show")) == "away"
        assert got.findtext(q("jabber:client", "status")) == "lunch"
    alice.send("<presence><show>dnd</show></presence>")
    await bob.assert_none(lambda e: is_presence(e, from_=alice.resources[0].jid))


async def test_mutual_subscription_is_both(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    # bob subscribes back: bob 'from' + ask, alice gets the request.
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "from", "ask": "subscribe"}
    await alice.presence_on_all(type="subscribe", from_=BOB)
    alice.send(f"<presence to='{BOB}' type='subscribed'/>")
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "both"}
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "both"}
    await bob.presence_on_all(type="subscribed", from_=ALICE)
    for alice_res in alice.resources:
        await bob.presence_on_all(from_=alice_res.jid, type=None)
    # Both ways now.
    alice.send("<presence><status>a</status></presence>")
    for res in bob.resources:
        await res.take(lambda e: is_status(e, alice.resources[0].jid, "a"))
    bob.send("<presence><status>b</status></presence>")
    for res in alice.resources:
        await res.take(lambda e: is_status(e, bob.resources[0].jid, "b"))


# ---- §3.2 cancellation by the contact ------------------------------------------------------
async def test_contact_cancels_subscription(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    bob.send(f"<presence to='{ALICE}' type='unsubscribed'/>")
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "none"}
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "none"}
    for got in await alice.presence_on_all(type="unsubscribed"):
        assert got.get("from") == BOB
    # §3.2.2: unavailable from each of bob's resources, so alice's client stops showing bob.
    for bob_res in bob.resources:
        await alice.presence_on_all(from_=bob_res.jid, type="unavailable")
    bob.send("<presence><status>later</status></presence>")
    await alice.assert_none(lambda e: is_status(e, bob.resources[0].jid, "later"))


async def test_contact_cancels_one_direction_of_both(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    await subscribe(bob, alice)
    assert (await alice.resources[0].roster_get()).find(
        f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}"
    ).get("subscription") == "both"  # type: ignore[union-attr]
    bob.send(f"<presence to='{ALICE}' type='unsubscribed'/>")
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "to"}
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "from"}
    await alice.presence_on_all(type="unsubscribed", from_=BOB)


# ---- §3.3 unsubscribing by the user ------------------------------------------------------------
async def test_user_unsubscribes(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    alice.send(f"<presence to='{BOB}' type='unsubscribe'/>")
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "none"}
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "none"}
    for got in await bob.presence_on_all(type="unsubscribe"):
        assert got.get("from") == ALICE
        assert got.get("to") == BOB
    bob.send("<presence><status>later</status></presence>")
    await alice.assert_none(lambda e: is_status(e, bob.resources[0].jid, "later"))


# ---- denial of a request ---------------------------------------------------------------------
async def test_contact_denies_pending_request(login: Login, server: Server) -> None:
    alice = await login("alice")
    bob = await login("bob")
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await alice.push(BOB)
    await bob.presence_on_all(type="subscribe", from_=ALICE)
    bob.send(f"<presence to='{ALICE}' type='unsubscribed'/>")
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "none"}
    for got in await alice.presence_on_all(type="unsubscribed"):
        assert got.get("from") == BOB
    # The request is gone: bob's next login does not show it again.
    late = await login_resource(server, "bob", "late", roster=True, presence=True)
    try:
        await late.assert_none(is_subscription)
    finally:
        await late.close()


# ---- stored requests (§3.1.3: the contact's server keeps the request) ------------------
async def wait_until_stored(server: Server, local: str, contact: str) -> None:
    for _ in range(100):
        if contact in (await server.storage.roster.load(local, DOMAIN)).pending:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the request of {contact} to {local} was not stored")


async def test_request_to_offline_contact_is_delivered_at_each_login(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = await start_server(data_dir)
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        alice = await login_resource(server, "alice", roster=True, presence=True)
        alice.send(f"<presence to='{BOB}' type='subscribe'/>")
        assert await alice.push_item(BOB) == {
            "jid": BOB,
            "subscription": "none",
            "ask": "subscribe",
        }
        await wait_until_stored(server, "bob", ALICE)
        for _ in range(2):  # shown again at every login until answered
            bob = await login_resource(server, "bob", roster=True, presence=True)
            request = await bob.presence(type="subscribe")
            assert request.get("from") == ALICE
            await bob.close()
        await alice.close()
    finally:
        await server.stop()
    server = await start_server(data_dir)
    try:
        bob = await login_resource(server, "bob", roster=True, presence=True)
        request = await bob.presence(type="subscribe")
        assert request.get("from") == ALICE
        # The request survived; so did alice's pending-out state.
        alice = await login_resource(server, "alice")
        result = await alice.roster_get()
        item = result.find(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
        assert item is not None and item.get("ask") == "subscribe"
        await alice.roster_get()
        await alice.available()
        bob.send(f"<presence to='{ALICE}' type='subscribed'/>")
        assert await bob.push_item(ALICE) == {"jid": ALICE, "subscription": "from"}
        assert await alice.push_item(BOB) == {"jid": BOB, "subscription": "to"}
        await alice.presence(type="subscribed", from_=BOB)
        await bob.close()
        again = await login_resource(server, "bob", "again", roster=True, presence=True)
        await again.assert_none(is_subscription)
        await again.close()
        await alice.close()
    finally:
        await server.stop()


async def test_request_keeps_status_and_nick(login: Login, server: Server) -> None:
    """RFC 6121 §3.1.1 (status in a request) and XEP-0172 §4.1 (nick in a request): the
    contact sees them, now and when the stored request is shown at a later login."""
    alice = await login("alice")
    bob = await login("bob")
    alice.send(
        f"<presence to='{BOB}' type='subscribe'><status>It is Alice</status>"
        "<nick xmlns='http://jabber.org/protocol/nick'>Al</nick></presence>"
    )
    await alice.push(BOB)
    await wait_until_stored(server, "bob", ALICE)
    late = await login_resource(server, "bob", "late", roster=True, presence=True)
    try:
        for res in (*bob.resources, late):
            got = await res.presence(type="subscribe", from_=ALICE)
            assert got.findtext(q("jabber:client", "status")) == "It is Alice"
            assert got.findtext(q("http://jabber.org/protocol/nick", "nick")) == "Al"
    finally:
        await late.close()


async def test_request_while_contact_has_no_available_resource(
    login: Login, server: Server
) -> None:
    alice = await login("alice")
    # bob is connected but has not sent initial presence: not available.
    bob = await login_resource(server, "bob", "early", roster=True)
    try:
        alice.send(f"<presence to='{BOB}' type='subscribe'/>")
        await alice.push(BOB)
        await bob.assert_none(is_subscription)
        await bob.available()
        request = await bob.presence(type="subscribe")
        assert request.get("from") == ALICE
    finally:
        await bob.close()


# ---- §3.4 pre-approval ----------------------------------------------------------------------
async def test_pre_approval_stream_feature(server: Server) -> None:
    await add_user(server, "alice")
    raw, features = await authenticated_features(server, "alice")
    try:
        assert features.find(q("urn:xmpp:features:pre-approval", "sub")) is not None
    finally:
        await raw.close()


async def test_pre_approved_request_is_approved_automatically(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    # bob approves before any request: an item with approved='true', nothing sent to alice.
    bob.send(f"<presence to='{ALICE}' type='subscribed'/>")
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "none", "approved": "true"}
    await alice.assert_none(is_subscription)

    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "none", "ask": "subscribe"}
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "to"}
    await alice.presence_on_all(type="subscribed", from_=BOB)
    for bob_res in bob.resources:
        await alice.presence_on_all(from_=bob_res.jid, type=None)
    # bob: 'from', the pre-approval used up; no request shown.
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "from"}
    await bob.assert_none(is_subscription)


async def test_pre_approval_can_be_withdrawn(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    bob.send(f"<presence to='{ALICE}' type='subscribed'/>")
    assert (await bob.push(ALICE)).get("approved") == "true"
    bob.send(f"<presence to='{ALICE}' type='unsubscribed'/>")
    assert await bob.push(ALICE) == {"jid": ALICE, "subscription": "none"}
    await alice.assert_none(is_subscription)  # §3.2.2 rule 2: not routed
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await alice.push(BOB)
    await bob.presence_on_all(type="subscribe", from_=ALICE)  # asked again, not auto-approved


# ---- errors and edge cases --------------------------------------------------------------------
async def test_subscribe_to_nonexistent_local_user_is_refused(login: Login) -> None:
    """RFC 6121 §3.1.3: no such contact -> the user's server answers 'unsubscribed'."""
    alice = await login("alice")
    alice.send(f"<presence to='{NOBODY}' type='subscribe'/>")
    assert await alice.push(NOBODY) == {"jid": NOBODY, "subscription": "none", "ask": "subscribe"}
    for got in await alice.presence_on_all(type="unsubscribed"):
        assert got.get("from") == NOBODY
    assert await alice.push(NOBODY) == {"jid": NOBODY, "subscription": "none"}


async def test_removing_item_with_both_cancels_both_ways(login: Login) -> None:
    """RFC 6121 §2.5.2: removing an item sends unsubscribe and unsubscribed."""
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    await subscribe(bob, alice)
    result = await alice.resources[0].roster_set(f"<item jid='{BOB}' subscription='remove'/>")
    assert result.get("type") == "result", ET.tostring(result)
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "remove"}
    for res in bob.resources:
        await res.presence(type="unsubscribe", from_=ALICE)
        await res.presence(type="unsubscribed", from_=ALICE)
    pushes = [await res.push_item(ALICE) for res in bob.resources]
    while pushes[0]["subscription"] != "none":  # 'to' or 'from' first, then 'none'
        pushes = [await res.push_item(ALICE) for res in bob.resources]
    assert pushes == [{"jid": ALICE, "subscription": "none"}] * 2
    # No presence crosses any more, either way.
    alice.send("<presence><status>gone</status></presence>")
    await bob.assert_none(lambda e: is_status(e, alice.resources[0].jid, "gone"))
    bob.send("<presence><status>gone</status></presence>")
    await alice.assert_none(lambda e: is_status(e, bob.resources[0].jid, "gone"))


async def test_removing_item_with_pending_out_cancels_the_request(
    login: Login, server: Server
) -> None:
    alice = await login("alice")
    bob = await login("bob")
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await alice.push(BOB)
    await bob.presence_on_all(type="subscribe", from_=ALICE)
    assert (await alice.resources[0].roster_set(f"<item jid='{BOB}' subscription='remove'/>")).get(
        "type"
    ) == "result"
    assert await alice.push(BOB) == {"jid": BOB, "subscription": "remove"}
    await bob.presence_on_all(type="unsubscribe", from_=ALICE)
    # The request is withdrawn: a new login of bob is not asked.
    late = await login_resource(server, "bob", "late", roster=True, presence=True)
    try:
        await late.assert_none(is_subscription)
    finally:
        await late.close()


async def test_subscription_stanzas_are_stamped_with_bare_jids(login: Login) -> None:
    """RFC 6121 §3.1.2 / §3.1.5: the user's server stamps bare JIDs, whatever the client
    put in 'to' (a full JID) or 'from' (a forgery)."""
    alice = await login("alice")
    bob = await login("bob")
    alice.send(
        f"<presence from='mallory@{DOMAIN}/x' to='{bob.resources[1].jid}' "
        "type='subscribe' id='s1'/>"
    )
    assert (await alice.push(BOB))["jid"] == BOB
    for got in await bob.presence_on_all(type="subscribe"):
        assert got.get("from") == ALICE
        assert got.get("to") == BOB
        assert got.get("id") == "s1"
    bob.send(f"<presence to='{alice.resources[0].jid}' type='subscribed' id='s2'/>")
    assert (await bob.push(ALICE))["jid"] == ALICE
    for got in await alice.presence_on_all(type="subscribed"):
        assert got.get("from") == BOB
        assert got.get("to") == ALICE
        assert got.get("id") == "s2"


async def test_duplicate_subscribe_does_not_push_again(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await subscribe(alice, bob)
    # §3.1.3: already subscribed: the contact's server answers 'subscribed' itself, and
    # §3.1.6: the user's server, with the item already at 'to', ignores that answer.
    alice.send(f"<presence to='{BOB}' type='subscribe'/>")
    await bob.assert_none(lambda e: is_subscription(e) or is_roster_push(e))
    await alice.assert_none(lambda e: is_subscription(e) or is_roster_push(e))
    assert (await alice.resources[0].roster_get()).find(
        f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}"
    ).attrib == {  # type: ignore[union-attr]
        "jid": BOB,
        "subscription": "to",
    }


# ---- a real client library -------------------------------------------------------------------
async def test_slixmpp_clients_subscribe(server: Server) -> None:
    await add_user(server, "alice")
    await add_user(server, "bob")
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    for client in (alice, bob):
        client.roster.auto_authorize = None  # False would make slixmpp refuse every request
        client.roster.auto_subscribe = False
    try:
        await alice.get_roster()
        await bob.get_roster()
        requested = asyncio.Event()
        bob.add_event_handler("presence_subscribe", lambda _p: requested.set())
        alice.send_presence(pto=BOB, ptype="subscribe")
        await asyncio.wait_for(requested.wait(), 5)
        bob.send_presence(pto=ALICE, ptype="subscribed")
        deadline = asyncio.get_running_loop().time() + 5
        while alice.client_roster[BOB]["subscription"] != "to":
            assert asyncio.get_running_loop().time() < deadline, alice.client_roster[BOB]
            await asyncio.sleep(0.02)
        while bob.client_roster[ALICE]["subscription"] != "from":
            assert asyncio.get_running_loop().time() < deadline, bob.client_roster[ALICE]
            await asyncio.sleep(0.02)
    finally:
        await disconnect(alice, bob)
