"""Deleting an account cleans up after it (the security issue's item 14), by the CLI path
(storage deletion in another process, then the control socket's ``account-deleted``) and by
XEP-0077 in-band removal (§3.2): its contacts online get a roster push removing it and its
unavailable presence; a new account of the same name inherits no subscription, no roster,
no offline messages, no archive, no vCard, no PEP nodes."""

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
