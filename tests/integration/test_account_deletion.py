"""Deleting an account cleans up after it (the security issue's item 14), by the CLI path
(storage deletion in another process, then the control socket's ``account-deleted``) and by
XEP-0077 in-band removal (§3.2): its contacts online get a roster push removing it and its
unavailable presence; a new account of the same name inherits no subscription, no roster,
no offline messages, no archive, no vCard, no PEP nodes, no subscription or affiliation on
the pubsub service, no affiliation in a MUC room."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dovecote.server import Server
from dovecote.storage.archive import ArchivedMessage
from dovecote.storage.base import RosterItem
from dovecote.storage.pubsub import PubSubItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    ROSTER,
    Resource,
    add_user,
    is_presence,
    login_resource,
    q,
    start_server,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
REGISTER = "jabber:iq:register"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path / "data")
    try:
        await add_user(srv, "alice")
        await add_user(srv, "bob")
        yield srv
    finally:
        await srv.stop()


async def _bob_has_data(server: Server) -> None:
    """A mutual subscription with alice, and something of bob's in every store."""
    storage = server.storage
    await storage.roster.put("alice", DOMAIN, RosterItem(BOB, subscription="both"))
    await storage.roster.put("bob", DOMAIN, RosterItem(ALICE, subscription="both"))
    await storage.kv.set("bob", DOMAIN, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
    assert await storage.offline.store("bob", DOMAIN, "<message from='x@y'/>", 10)
    message = ArchivedMessage("arch1", datetime.now(UTC), ALICE, None, "<message/>")
    await storage.archive.append("bob", DOMAIN, message)
    assert await storage.pubsub.create_node("bob", DOMAIN, "urn:xmpp:avatar:metadata", {})
    item = PubSubItem("i1", "<metadata xmlns='urn:xmpp:avatar:metadata'/>", BOB, datetime.now(UTC))
    await storage.pubsub.publish("bob", DOMAIN, "urn:xmpp:avatar:metadata", item, 1)


async def _delete_by_cli(server: Server) -> None:
    # What `dovecote user del` does: the storage, then the running server's control event.
    assert await server.storage.accounts.delete("bob", DOMAIN)
    await server._control_event({"event": "account-deleted", "jid": BOB})


@pytest.mark.parametrize("path", ["cli", "in-band"])
async def test_deleted_account_leaves_contacts_and_a_new_namesake_clean(
    server: Server, path: str
) -> None:
    await _bob_has_data(server)
    alice = await login_resource(server, "alice", roster=True, presence=True)
    bob = await login_resource(server, "bob", roster=True, presence=True)
    try:
        await alice.presence(from_=bob.jid, type=None)  # subscribed: alice sees bob
        if path == "cli":
            await _delete_by_cli(server)
        else:
            answer = await bob.request(f"<query xmlns='{REGISTER}'><remove/></query>", "set")
            assert answer.get("type") == "result", ET.tostring(answer)
            assert await bob.raw.stream_error() == "not-authorized"
        # RFC 6121 §2.1.6: the removal pushed, at a new roster version.
        push = await alice.push(BOB)
        query = push.find(q(ROSTER, "query"))
        assert query is not None
        item = query.find(q(ROSTER, "item"))
        assert item is not None and item.get("subscription") == "remove"
        await alice.presence(type="unavailable", from_=BOB)
        result = await alice.roster_get()
        items = result.findall(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
        assert [i.get("jid") for i in items] == []
        assert query.get("ver") == result.find(q(ROSTER, "query")).get("ver")  # type: ignore[union-attr]
    finally:
        await bob.close()

    # A new account named bob: nothing of the old one, and no subscription to alice.
    await add_user(server, "bob")
    new_bob = await login_resource(server, "bob", "new", roster=False)
    try:
        result = await new_bob.roster_get()
        assert result.findall(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}") == []
        await new_bob.available()
        alice.send("<presence><status>still here</status></presence>")
        await alice.presence(from_=alice.jid, type=None)
        # No presence of alice (no probe answered, no broadcast), no offline message.
        await new_bob.assert_none(
            lambda e: is_presence(e, from_=alice.jid) or e.tag == q(CLIENT, "message")
        )
        await alice.assert_none(lambda e: is_presence(e, from_=new_bob.jid))
    finally:
        await new_bob.close()
        await alice.close()
    storage = server.storage
    assert await storage.offline.fetch("bob", DOMAIN) == []
    assert await storage.archive.count("bob", DOMAIN) == 0
    assert await storage.kv.get("bob", DOMAIN, "vcard-temp") is None
    assert await storage.pubsub.list_nodes("bob", DOMAIN) == []
    assert BOB not in (await storage.roster.load("alice", DOMAIN)).items


async def test_deletion_while_the_contact_is_offline(server: Server) -> None:
    """Alice offline at the deletion: her stored roster is cleaned; at her next login the
    roster has no bob, and XEP-0237 tells a client at the old version about the removal."""
    await _bob_has_data(server)
    old_version = (await server.storage.roster.load("alice", DOMAIN)).version
    await _delete_by_cli(server)
    alice = await login_resource(server, "alice")
    try:
        result = await alice.roster_get(ver=str(old_version))
        assert result.get("type") == "result"
        push = await alice.push(BOB)
        item = push.find(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
        assert item is not None and item.get("subscription") == "remove"
    finally:
        await alice.close()


# ---- the pubsub service and MUC rooms ---------------------------------------------------------
PS = "pubsub.example.org"
MUC_DOMAIN = "conference.example.org"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_OWNER = f"{PUBSUB}#owner"
MUC = "http://jabber.org/protocol/muc"
MUC_ADMIN = f"{MUC}#admin"
MUC_OWNER = f"{MUC}#owner"
DATA = "jabber:x:data"
CAROL = f"carol@{DOMAIN}"
TEAM_ROOM = f"team@{MUC_DOMAIN}"
BOB_ROOM = f"bobs@{MUC_DOMAIN}"


def _ok(el: ET.Element) -> ET.Element:
    assert el.get("type") == "result", ET.tostring(el)
    return el


def _error(el: ET.Element) -> str:
    assert el.get("type") == "error", ET.tostring(el)
    error = el.find(q(CLIENT, "error"))
    assert error is not None
    return next(c.tag.split("}")[1] for c in error if c.tag.startswith("{urn:ietf"))


async def _ps(res: Resource, inside: str, iq_type: str = "get", owner: bool = False) -> ET.Element:
    namespace = PUBSUB_OWNER if owner else PUBSUB
    return await res.request(f"<pubsub xmlns='{namespace}'>{inside}</pubsub>", iq_type, PS)


async def _node_affiliations(res: Resource, node: str) -> set[tuple[str | None, str | None]]:
    listing = _ok(await _ps(res, f"<affiliations node='{node}'/>", owner=True))
    return {
        (a.get("jid"), a.get("affiliation")) for a in listing.iter(q(PUBSUB_OWNER, "affiliation"))
    }


async def _own(res: Resource, what: str) -> list[tuple[str | None, ...]]:
    """§5.6 / §5.7: one's own subscriptions or affiliations on the service."""
    listing = _ok(await _ps(res, f"<{what}/>"))
    return [tuple(sorted(el.attrib.items())) for el in listing.iter(q(PUBSUB, what[:-1]))]  # type: ignore[misc]


async def _enter_room(res: Resource, room: str, nick: str, persistent: bool) -> None:
    res.send(f"<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")
    await res.take(
        lambda e: (
            e.tag == q(CLIENT, "presence")
            and e.get("from") == f"{room}/{nick}"
            and e.find(f"{{{MUC}#user}}x/{{{MUC}#user}}status[@code='110']") is not None
        )
    )
    if persistent:
        field = "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
        form = f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>{field}</x></query>"
        _ok(await res.request(form, "set", room))


async def _set_room_affiliation(res: Resource, room: str, jid: str, affiliation: str) -> None:
    query = f"<query xmlns='{MUC_ADMIN}'><item jid='{jid}' affiliation='{affiliation}'/></query>"
    _ok(await res.request(query, "set", room))


async def _room_list(res: Resource, room: str, affiliation: str) -> list[str | None]:
    query = f"<query xmlns='{MUC_ADMIN}'><item affiliation='{affiliation}'/></query>"
    answer = _ok(await res.request(query, "get", room))
    return sorted(i.get("jid") for i in answer.iter(f"{{{MUC_ADMIN}}}item"))


@pytest.mark.parametrize("path", ["cli", "in-band"])
async def test_deletion_ends_pubsub_service_and_room_affiliations(
    tmp_path: Path, path: str
) -> None:
    """The pubsub service's subscriptions and affiliations of a deleted account and its
    affiliations in MUC rooms go, loaded or not; a node or room whose only owner it was
    stays ownerless with its other affiliations; a namesake starts clean, also after a
    restart."""
    data_dir = tmp_path / "data"
    config: dict[str, dict[str, object]] = {"pubsub": {"domain": PS}, "muc": {"domain": MUC_DOMAIN}}
    server = await start_server(data_dir, **config)
    try:
        for name in ("alice", "bob", "carol"):
            await add_user(server, name)
        alice = await login_resource(server, "alice", presence=True)
        bob = await login_resource(server, "bob", presence=True)
        try:
            # Pubsub: alice's node with bob a publisher, subscribed bare and full; bob's
            # own node with carol a member.
            _ok(await _ps(alice, "<create node='team'/>", "set"))
            affs = (
                f"<affiliations node='team'><affiliation jid='{BOB}' affiliation='publisher'/>"
                "</affiliations>"
            )
            _ok(await _ps(alice, affs, "set", owner=True))
            _ok(await _ps(bob, f"<subscribe node='team' jid='{BOB}'/>", "set"))
            _ok(await _ps(bob, f"<subscribe node='team' jid='{bob.jid}'/>", "set"))
            _ok(await _ps(bob, "<create node='bobs'/>", "set"))
            member = (
                f"<affiliations node='bobs'><affiliation jid='{CAROL}' affiliation='member'/>"
                "</affiliations>"
            )
            _ok(await _ps(bob, member, "set", owner=True))
            assert len(await _own(bob, "subscriptions")) == 2
            # MUC: alice's room with bob an admin (bob in it), bob's room with carol a member.
            await _enter_room(alice, TEAM_ROOM, "Alice", persistent=True)
            await _set_room_affiliation(alice, TEAM_ROOM, BOB, "admin")
            await _enter_room(bob, TEAM_ROOM, "Bob", persistent=False)
            await _enter_room(bob, BOB_ROOM, "Bob", persistent=True)
            await _set_room_affiliation(bob, BOB_ROOM, CAROL, "member")
            if path == "cli":
                await _delete_by_cli(server)
            else:
                answer = await bob.request(f"<query xmlns='{REGISTER}'><remove/></query>", "set")
                assert answer.get("type") == "result", ET.tostring(answer)
            # Loaded state: alice's lists no longer name bob.
            assert await _node_affiliations(alice, "team") == {(ALICE, "owner")}
            assert await _room_list(alice, TEAM_ROOM, "admin") == []
        finally:
            await bob.close()
            await alice.close()
        await _namesake_starts_clean(server)
    finally:
        await server.stop()
    # Storage too: a restart loads none of it.
    server = await start_server(data_dir, **config)
    try:
        await _namesake_starts_clean(server)
        stored = await server.storage.muc.load_room(MUC_DOMAIN, "bobs")
        assert stored is not None
        assert [(a.jid, a.affiliation) for a in stored.affiliations] == [(CAROL, "member")]
    finally:
        await server.stop()


async def _namesake_starts_clean(server: Server) -> None:
    if not await server.storage.accounts.exists("bob", DOMAIN):
        await add_user(server, "bob")
    bob = await login_resource(server, "bob", "new", presence=True)
    alice = await login_resource(server, "alice", "again", presence=True)
    try:
        assert await _own(bob, "subscriptions") == []
        assert await _own(bob, "affiliations") == []
        assert _error(await _ps(bob, "<publish node='team'><item/></publish>", "set")) == (
            "forbidden"
        )
        # bob's node stays, ownerless, with carol a member; the namesake does not own it.
        assert _error(await _ps(bob, "<configure node='bobs'/>", owner=True)) == "forbidden"
        subs = await server.storage.pubsub.get_subscriptions("", PS)
        assert [s.jid for s in subs] == []
        affs = await server.storage.pubsub.get_affiliations("", PS)
        assert sorted(affs) == [("bobs", CAROL, "member"), ("team", ALICE, "owner")]
        # Rooms: no admin in alice's room; bob's room has no owner and no namesake owner.
        await _enter_room(alice, TEAM_ROOM, "Alice", persistent=False)
        assert await _room_list(alice, TEAM_ROOM, "admin") == []
        query = f"<query xmlns='{MUC_ADMIN}'><item affiliation='member'/></query>"
        assert _error(await bob.request(query, "get", BOB_ROOM)) == "forbidden"
        query = f"<query xmlns='{MUC_OWNER}'/>"
        assert _error(await bob.request(query, "get", BOB_ROOM)) == "forbidden"
    finally:
        await bob.close()
        await alice.close()
