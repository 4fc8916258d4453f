"""XEP-0191 (blocking command) with real clients over real sockets: the list and its pushes,
enforcement both ways, presence on block and unblock, JID matching, persistence."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecote.server import Server
from dovecote.xml.element import Element
from tests.helpers import (
    CLIENT,
    DOMAIN,
    RawClient,
    add_user,
    collect,
    connect,
    disconnect,
    error_condition,
    q,
    raw_login,
    send_presence,
    start_server,
)

MODULES = {"enabled": ["vcard", "private", "blocking"]}
OTHER = "other.example"
BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
PING = "urn:xmpp:ping"
IQ = q(CLIENT, "iq")
MESSAGE = q(CLIENT, "message")
PRESENCE = q(CLIENT, "presence")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
DAVE = f"dave@{OTHER}"
QUIET = 0.3


@dataclass
class Peer:
    raw: RawClient
    jid: str

    @property
    def bare(self) -> str:
        return self.jid.split("/", 1)[0]

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    async def iq(
        self, iq_id: str, body: str, iq_type: str = "get", to: str | None = None
    ) -> ET.Element:
        """Send an IQ and return the answer with the same id."""
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{body}</iq>")
        return await self.raw.wait_for(
            lambda e: e.tag == IQ and e.get("id") == iq_id and e.get("type") != "set"
        )

    async def request_list(self) -> list[str]:
        el = await self.iq("bl", f"<blocklist xmlns='{BLOCKING}'/>")
        assert el.get("type") == "result", ET.tostring(el)
        blocklist = el.find(q(BLOCKING, "blocklist"))
        assert blocklist is not None
        return [item.get("jid", "") for item in blocklist]

    async def block(self, *jids: str) -> ET.Element:
        items = "".join(f"<item jid='{j}'/>" for j in jids)
        return await self.iq("b", f"<block xmlns='{BLOCKING}'>{items}</block>", "set")

    async def unblock(self, *jids: str) -> ET.Element:
        items = "".join(f"<item jid='{j}'/>" for j in jids)
        return await self.iq("u", f"<unblock xmlns='{BLOCKING}'>{items}</unblock>", "set")

    async def push(self) -> ET.Element:
        return await self.raw.wait_for(lambda e: e.tag == IQ and e.get("type") == "set")

    async def message(self) -> ET.Element:
        return await self.raw.wait_for(lambda e: e.tag == MESSAGE)

    async def presence(self, **attrs: str | None) -> ET.Element:
        return await self.raw.wait_for(
            lambda e: e.tag == PRESENCE and all(e.get(k) == v for k, v in attrs.items())
        )

    async def received(self, within: float = QUIET) -> list[ET.Element]:
        """Everything that arrives `within` seconds."""
        return await collect(self.raw, within)


Login = Callable[..., Awaitable[Peer]]


async def quiet(*peers: Peer, ignore_own_presence: bool = True) -> None:
    """None of the peers gets anything (but the presence of their own resources)."""
    results = await asyncio.gather(*(p.received() for p in peers))
    for peer, got in zip(peers, results, strict=True):
        got = [
            e
            for e in got
            if not (
                ignore_own_presence
                and e.tag == PRESENCE
                and (e.get("from") or "").startswith(peer.bare + "/")
            )
        ]
        assert got == [], (peer.jid, [ET.tostring(e) for e in got])


def chat(to: str, msg_id: str = "m1", body: str = "hello", msg_type: str = "chat") -> str:
    return f"<message to='{to}' id='{msg_id}' type='{msg_type}'><body>{body}</body></message>"


def assert_error(el: ET.Element, error_type: str, condition: str) -> None:
    assert el.get("type") == "error", ET.tostring(el)
    assert error_condition(el) == (error_type, condition), ET.tostring(el)


def push_items(el: ET.Element, tag: str) -> list[str]:
    command = el.find(q(BLOCKING, tag))
    assert command is not None, ET.tostring(el)
    return [item.get("jid", "") for item in command]


def make_login(server: Server, opened: list[RawClient]) -> Login:
    async def login(
        local: str, resource: str = "r", *, presence: bool = True, domain: str = DOMAIN
    ) -> Peer:
        raw, jid = await raw_login(server, local, resource, domain=domain)
        opened.append(raw)
        if presence:
            await send_presence(raw, jid)
        return Peer(raw, jid)

    return login


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await start_server(data_dir, modules=MODULES)
    for local in ("alice", "bob", "carol"):
        await add_user(srv, local)
    await add_user(srv, "dave", domain=OTHER)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    opened: list[RawClient] = []
    yield make_login(server, opened)
    for raw in opened:
        await raw.close()


# ---- §3.2-§3.5: the list and its pushes ---------------------------------------------------------
async def test_block_is_pushed_to_every_resource_that_requested_the_list(login: Login) -> None:
    a = await login("alice", "a")
    b = await login("alice", "b")
    c = await login("alice", "c")  # never asks for the list: gets no push
    assert await a.request_list() == []
    assert await b.request_list() == []
    el = await a.block(BOB, f"{BOB}/x", BOB)
    assert el.get("type") == "result", ET.tostring(el)
    for peer in (a, b):
        push = await peer.push()
        assert push.get("to") == peer.jid
        assert push.get("from") in (None, ALICE)
        assert push_items(push, "block") == [BOB, f"{BOB}/x"]
        peer.send(f"<iq type='result' id='{push.get('id')}'/>")
    await quiet(c)
    assert sorted(await c.request_list()) == [BOB, f"{BOB}/x"]
    el = await b.unblock(f"{BOB}/x")
    assert el.get("type") == "result", ET.tostring(el)
    for peer in (a, b, c):
        assert push_items(await peer.push(), "unblock") == [f"{BOB}/x"]
    assert await a.request_list() == [BOB]


async def test_pushes_reach_slixmpp_clients(server: Server) -> None:
    phone = await connect(server, f"{ALICE}/phone")
    laptop = await connect(server, f"{ALICE}/laptop")
    clients = (phone, laptop)
    events: dict[str, asyncio.Queue[object]] = {}
    try:
        for client in clients:
            client.register_plugin("xep_0191")
            queue: asyncio.Queue[object] = asyncio.Queue()
            events[str(client.boundjid)] = queue
            client.add_event_handler("blocked", queue.put_nowait)
            client.add_event_handler("unblocked", queue.put_nowait)
            assert await client.plugin["xep_0191"].get_blocked_jids() == set()
        await phone.plugin["xep_0191"].block([BOB, CAROL])
        for client in clients:
            iq = await asyncio.wait_for(events[str(client.boundjid)].get(), 5)
            assert {str(item["jid"]) for item in iq["block"]} == {BOB, CAROL}  # type: ignore[index]
        assert {str(j) for j in await laptop.plugin["xep_0191"].get_blocked_jids()} == {BOB, CAROL}
        await laptop.plugin["xep_0191"].unblock(BOB)
        for client in clients:
            iq = await asyncio.wait_for(events[str(client.boundjid)].get(), 5)
            assert [str(item["jid"]) for item in iq["unblock"]] == [BOB]  # type: ignore[index]
        assert {str(j) for j in await phone.plugin["xep_0191"].get_blocked_jids()} == {CAROL}
    finally:
        await disconnect(*clients)


async def test_block_without_items_is_bad_request(login: Login) -> None:
    alice = await login("alice")
    el = await alice.iq("b", f"<block xmlns='{BLOCKING}'/>", "set")
    assert_error(el, "modify", "bad-request")


@pytest.mark.parametrize(
    "item", ["<item jid='a@b@c'/>", "<item jid=''/>", "<item/>", "<item jid='@example.org'/>"]
)
@pytest.mark.parametrize("command", ["block", "unblock"])
async def test_invalid_jid_is_jid_malformed(login: Login, item: str, command: str) -> None:
    alice = await login("alice")
    await alice.block(CAROL)
    el = await alice.iq(
        "x", f"<{command} xmlns='{BLOCKING}'><item jid='{BOB}'/>{item}</{command}>", "set"
    )
    assert_error(el, "modify", "jid-malformed")
    assert await alice.request_list() == [CAROL]  # unchanged


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"<blocklist xmlns='{BLOCKING}'/>", id="get"),
        pytest.param(f"<block xmlns='{BLOCKING}'><item jid='{CAROL}'/></block>", id="block"),
        pytest.param(f"<unblock xmlns='{BLOCKING}'/>", id="unblock"),
    ],
)
async def test_another_users_list_is_forbidden(login: Login, body: str) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await alice.block(DAVE)
    iq_type = "get" if "blocklist" in body else "set"
    el = await bob.iq("x", body, iq_type, to=ALICE)
    # A stranger (no presence subscription) gets what a missing account answers.
    assert_error(el, "cancel", "service-unavailable")
    assert await alice.request_list() == [DAVE]


# ---- §3.3: enforcement --------------------------------------------------------------------------
async def test_blocked_contact_cannot_reach_the_user(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await alice.block(BOB)
    # Messages: service-unavailable, as if the user were offline.
    for n, to in enumerate((ALICE, alice.jid, f"{ALICE}/gone")):
        bob.send(chat(to, f"m{n}"))
        err = await bob.message()
        assert err.get("id") == f"m{n}"
        assert err.get("from") == to
        assert_error(err, "cancel", "service-unavailable")
    # IQ get/set: service-unavailable.
    el = await bob.iq("p", f"<ping xmlns='{PING}'/>", to=alice.jid)
    assert_error(el, "cancel", "service-unavailable")
    # Presence (directed, subscription requests, probes), headlines, IQ results: no answer.
    bob.send(f"<presence to='{ALICE}'/>")
    bob.send(f"<presence to='{alice.jid}'><status>hi</status></presence>")
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    bob.send(f"<presence to='{ALICE}' type='probe'/>")
    bob.send(chat(ALICE, "h", msg_type="headline"))
    bob.send(f"<iq type='result' id='r' to='{alice.jid}'/>")
    await quiet(alice, bob)


async def test_user_cannot_reach_blocked_contact(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await alice.block(BOB)
    for n, to in enumerate((BOB, bob.jid)):
        alice.send(chat(to, f"o{n}", body="Can you hear me now?"))
        err = await alice.message()
        assert err.get("id") == f"o{n}"
        assert err.get("from") == to
        assert err.findtext(q(CLIENT, "body")) == "Can you hear me now?"
        assert_error(err, "cancel", "not-acceptable")
        assert err.find(f"{q(CLIENT, 'error')}/{q(BLOCKING_ERRORS, 'blocked')}") is not None
    el = await alice.iq("p", f"<ping xmlns='{PING}'/>", to=bob.jid)
    assert_error(el, "cancel", "not-acceptable")
    assert el.find(f"{q(CLIENT, 'error')}/{q(BLOCKING_ERRORS, 'blocked')}") is not None
    # Presence to a blocked JID is dropped without an error.
    alice.send(f"<presence to='{BOB}'/>")
    alice.send(f"<presence to='{bob.jid}' type='unavailable'/>")
    await quiet(alice, bob)


async def test_slixmpp_user_gets_blocked_error(server: Server, login: Login) -> None:
    bob = await login("bob")
    alice = await connect(server, f"{ALICE}/phone")
    try:
        alice.register_plugin("xep_0191")
        await alice.plugin["xep_0191"].block(BOB)
        alice.send_message(mto=BOB, mbody="blocked?", mtype="chat")
        err = await asyncio.wait_for(alice.messages.get(), 5)
        assert err["type"] == "error"
        assert err["error"]["condition"] == "not-acceptable"
        assert err.xml.find(f"{q(CLIENT, 'error')}/{q(BLOCKING_ERRORS, 'blocked')}") is not None
        await quiet(bob)
    finally:
        await disconnect(alice)


async def test_own_resources_are_never_blocked(login: Login) -> None:
    """XEP-0191 §5 (XEP-0016 note): not even by blocking one's own domain."""
    a = await login("alice", "a")
    b = await login("alice", "b")
    bob = await login("bob")
    await a.block(DOMAIN)
    a.send(chat(b.jid, "own"))
    assert (await b.message()).get("id") == "own"
    bob.send(chat(a.jid, "bob"))
    assert_error(await bob.message(), "cancel", "service-unavailable")


# ---- JID matching (XEP-0191 §6) -----------------------------------------------------------------
async def test_domain_block_covers_everyone_there(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    dave = await login("dave", domain=OTHER)
    await alice.block(OTHER)
    dave.send(chat(ALICE, "d"))
    assert_error(await dave.message(), "cancel", "service-unavailable")
    alice.send(chat(dave.jid, "a"))
    assert_error(await alice.message(), "cancel", "not-acceptable")
    # The domain itself too (an IQ to the server of the blocked domain).
    el = await alice.iq("p", f"<ping xmlns='{PING}'/>", to=OTHER)
    assert_error(el, "cancel", "not-acceptable")
    # Others are not affected.
    bob.send(chat(ALICE, "b"))
    assert (await alice.message()).get("id") == "b"


async def test_full_jid_and_domain_resource_items_match_only_that_resource(
    login: Login,
) -> None:
    alice = await login("alice")
    evil = await login("bob", "evil")
    good = await login("bob", "good")
    dave = await login("dave", "evil", domain=OTHER)
    await alice.block(f"{BOB}/evil", f"{OTHER}/evil")
    for peer in (evil, dave):
        peer.send(chat(ALICE, "x"))
        assert_error(await peer.message(), "cancel", "service-unavailable")
    good.send(chat(ALICE, "ok"))
    assert (await alice.message()).get("id") == "ok"
    # The bare JID of a user with one blocked resource is not blocked.
    alice.send(chat(BOB, "to-bare"))
    msgs = [await p.message() for p in (evil, good)]
    assert [m.get("id") for m in msgs] == ["to-bare", "to-bare"]
    alice.send(chat(evil.jid, "to-evil"))
    assert_error(await alice.message(), "cancel", "not-acceptable")


# ---- presence on block / unblock (§3.3, §3.4) -----------------------------------------------


async def subscribe(user: Peer, contact: Peer) -> None:
    """RFC 6121 §3.1: `user` subscribes to `contact`'s presence, `contact` approves."""
    user.send(f"<presence to='{contact.bare}' type='subscribe'/>")
    await contact.presence(type="subscribe", **{"from": user.bare})
    contact.send(f"<presence to='{user.bare}' type='subscribed'/>")
    await user.presence(**{"from": contact.jid, "type": None})


def presence_from_server(sender: str, to: str, presence_type: str | None = None) -> Element:
    """A presence stanza as the server routes it on a user's behalf (no client origin)."""
    attrs = {"from": sender, "to": to}
    if presence_type:
        attrs["type"] = presence_type
    return Element("presence", CLIENT, attrs)


def presences(received: list[ET.Element]) -> set[tuple[str | None, str | None]]:
    return {(e.get("from"), e.get("type")) for e in received if e.tag == PRESENCE}


async def test_subscribed_contact_gets_unavailable_then_no_presence(
    server: Server, login: Login
) -> None:
    a = await login("alice", "a")
    b = await login("alice", "b")
    bob = await login("bob")
    await subscribe(bob, a)  # bob sees alice's presence
    await subscribe(a, bob)
    await asyncio.gather(bob.received(), a.received(), b.received())
    await a.block(BOB)
    # §3.3: unavailable presence from each available resource of alice.
    assert presences(await bob.received(0.5)) == {(a.jid, "unavailable"), (b.jid, "unavailable")}
    # Afterwards, no presence either way: broadcasts, a new resource (initial presence and
    # its probes), directed presence, and what the server sends on alice's behalf.
    a.send("<presence><show>away</show></presence>")
    c = await login("alice", "c")
    bob.send("<presence><show>dnd</show></presence>")
    bob.send(f"<presence to='{ALICE}' type='probe'/>")
    a.send(f"<presence to='{bob.jid}'/>")
    await server.router.route(presence_from_server(a.jid, BOB))
    await server.router.route(presence_from_server(b.jid, bob.jid, "unavailable"))
    await quiet(bob, a, b, c)
    await b.raw.close()
    await quiet(bob)
    # §3.4: unblocking sends alice's current presence again.
    await a.unblock(BOB)
    got = await bob.received(0.5)
    assert presences(got) == {(a.jid, None), (c.jid, None)}
    assert any(e.findtext(q(CLIENT, "show")) == "away" for e in got)
    bob.send("<presence><show>chat</show></presence>")
    await a.presence(**{"from": bob.jid})


async def test_directed_presence_recipient_gets_unavailable(server: Server, login: Login) -> None:
    a = await login("alice", "a")
    b = await login("alice", "b")
    silent = await login("alice", "silent", presence=False)
    bob = await login("bob")
    a.send(f"<presence to='{bob.jid}'/>")  # RFC 6121 §4.6
    await bob.presence(**{"from": a.jid, "type": None})
    await a.block(BOB)
    # Only the resource that sent directed presence: bob never saw b's or silent's.
    assert presences(await bob.received(0.5)) == {(a.jid, "unavailable")}
    silent.send(f"<presence to='{BOB}'/>")
    await quiet(bob)
    await a.unblock()
    assert presences(await bob.received(0.5)) == {(a.jid, None)}
    await quiet(b, silent)


async def test_strangers_learn_nothing_from_block_and_unblock(server: Server, login: Login) -> None:
    """§3.3/§3.4: presence only to JIDs allowed to receive it, so no resource names leak."""
    alice = await login("alice")
    bob = await login("bob")
    dave = await login("dave", domain=OTHER)
    await alice.block(BOB, OTHER)
    await alice.unblock()
    await quiet(bob, dave)


async def test_domain_block_sends_unavailable_to_contacts_there(
    server: Server, login: Login
) -> None:
    alice = await login("alice")
    bob = await login("bob")
    dave = await login("dave", domain=OTHER)
    for contact in (bob, dave):
        await subscribe(contact, alice)
    await asyncio.gather(bob.received(), dave.received())
    await alice.block(OTHER)
    assert presences(await dave.received(0.5)) == {(alice.jid, "unavailable")}
    await quiet(bob)


async def test_unblock_lets_stanzas_through_again(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob")
    await alice.request_list()
    await alice.block(BOB)
    await alice.push()
    await alice.unblock(BOB)
    assert push_items(await alice.push(), "unblock") == [BOB]
    bob.send(chat(ALICE, "again"))
    assert (await alice.message()).get("id") == "again"
    alice.send(chat(BOB, "back"))
    assert (await bob.message()).get("id") == "back"
    bob.send(f"<presence to='{alice.jid}'/>")
    await alice.presence(**{"from": bob.jid})


async def test_unblock_all(login: Login) -> None:
    a = await login("alice", "a")
    b = await login("alice", "b")
    bob = await login("bob")
    dave = await login("dave", domain=OTHER)
    await b.request_list()
    await a.block(BOB, OTHER)
    await b.push()
    el = await a.unblock()
    assert el.get("type") == "result", ET.tostring(el)
    push = await b.push()
    assert push_items(push, "unblock") == []  # §3.5: an empty <unblock/>
    assert await a.request_list() == []
    for peer in (bob, dave):
        peer.send(chat(ALICE, peer.bare))
        assert (await a.message()).get("id") == peer.bare


# ---- persistence -------------------------------------------------------------------------------
async def test_blocklist_survives_a_restart(data_dir: Path) -> None:
    first = await start_server(data_dir, modules=MODULES)
    opened: list[RawClient] = []
    try:
        await add_user(first, "alice")
        await add_user(first, "bob")
        alice = await make_login(first, opened)("alice")
        await alice.block(BOB, OTHER)
    finally:
        for raw in opened:
            await raw.close()
        await first.stop()
    opened.clear()
    second = await start_server(data_dir, modules=MODULES)
    try:
        login = make_login(second, opened)
        alice = await login("alice")
        bob = await login("bob")
        # Enforced from the start of the session, without asking for the list.
        bob.send(chat(ALICE, "after-restart"))
        assert_error(await bob.message(), "cancel", "service-unavailable")
        assert sorted(await alice.request_list()) == sorted([BOB, OTHER])
    finally:
        for raw in opened:
            await raw.close()
        await second.stop()


async def test_blocklist_applies_while_the_user_is_offline(server: Server, login: Login) -> None:
    alice = await login("alice")
    await alice.block(BOB)
    await alice.raw.close()
    await asyncio.sleep(0.1)
    bob = await login("bob")
    carol = await login("carol")
    # What would be kept for later (offline messages, subscription requests) never gets
    # that far from a blocked JID: an error for the message, nothing for the presence.
    reached: list[tuple[str, str]] = []
    for name in ("message/offline", "presence/bare"):
        server.events.add(name, lambda e, name=name: reached.append((name, str(e.sender.bare))), 50)
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    bob.send(chat(ALICE, "offline"))
    assert_error(await bob.message(), "cancel", "service-unavailable")
    await quiet(bob)
    assert reached == []
    # From someone not blocked, they do (and the message is kept: no error).
    carol.send(f"<presence to='{ALICE}' type='subscribe'/>")
    carol.send(chat(ALICE, "offline"))
    await quiet(carol)
    assert sorted(reached) == [("message/offline", CAROL), ("presence/bare", CAROL)]
