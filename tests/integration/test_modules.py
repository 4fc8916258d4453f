"""Modules and the core services they share: a missing dependency stops the start, and
rosters and blocklists answer the same whichever modules are loaded (core/rosters.py,
core/blocking.py)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dovecote.config import ConfigError
from dovecote.jid import JID
from dovecote.server import StartupError
from dovecote.storage.archive import ArchiveFilter
from dovecote.storage.base import RosterItem
from tests.helpers import CLIENT, DOMAIN, RawClient, add_user, error_condition, q, start_server

LAST = "jabber:iq:last"
PUBSUB = "http://jabber.org/protocol/pubsub"
MAM = "urn:xmpp:mam:2"
TUNE = "http://jabber.org/protocol/tune"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


async def request(
    raw: RawClient, ident: str, body: str, to: str = "", kind: str = "get"
) -> ET.Element:
    to_attr = f" to='{to}'" if to else ""
    raw.send(f"<iq type='{kind}' id='{ident}'{to_attr}>{body}</iq>")
    return await raw.wait_for(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == ident)


async def login(server: object, local: str) -> RawClient:
    raw = await RawClient.open(server.ports["c2s"])  # type: ignore[attr-defined]
    await raw.login(local)
    raw.send("<presence/>")
    await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence"))
    return raw


async def test_a_disabled_dependency_stops_the_start(tmp_path: Path) -> None:
    # PEP filters notifications by verified caps: without caps it cannot work.
    with pytest.raises(StartupError, match="module 'pep' needs 'caps', which is disabled"):
        await start_server(tmp_path, modules={"disabled": ["caps"]})
    # Without PEP too, the server starts, and neither is loaded.
    server = await start_server(tmp_path, modules={"disabled": ["caps", "pep"]})
    try:
        assert "caps" not in server.modules and "pep" not in server.modules
        assert f"{PUBSUB}#publish" not in server.features
    finally:
        await server.stop()


async def test_a_typo_in_disabled_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown module 'mma'"):
        await start_server(tmp_path, modules={"disabled": ["mma"]})


async def test_without_the_roster_module_rosters_still_apply(tmp_path: Path) -> None:
    """The roster module is the protocol; subscriptions in storage still decide what
    contacts see (RFC 6121 §4.1): last activity (XEP-0012 §3), MAM's 'roster' preference
    (XEP-0441 §2.1.1) and PEP's presence access model (XEP-0163 §4) answer from them."""
    server = await start_server(
        tmp_path, modules={"disabled": ["roster"]}, mam={"default": "roster"}
    )
    try:
        assert "roster" not in server.modules
        for name in ("alice", "bob", "carol"):
            await add_user(server, name)
        # bob sees alice's presence (and she his); carol is a stranger.
        await server.storage.roster.put("alice", DOMAIN, RosterItem(BOB, subscription="both"))
        await server.storage.roster.put("bob", DOMAIN, RosterItem(ALICE, subscription="both"))
        alice = await login(server, "alice")
        bob = await login(server, "bob")
        carol = await login(server, "carol")

        # XEP-0012: the contact gets an answer, the stranger what a missing account gets.
        last = await request(bob, "l1", f"<query xmlns='{LAST}'/>", ALICE)
        assert last.get("type") == "result", ET.tostring(last)
        stranger = await request(carol, "l2", f"<query xmlns='{LAST}'/>", ALICE)
        assert error_condition(stranger) == ("cancel", "service-unavailable")

        # XEP-0163: a node with the default access model 'presence'.
        published = await request(
            alice,
            "p1",
            f"<pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item id='t'>"
            f"<tune xmlns='{TUNE}'><title>x</title></tune></item></publish></pubsub>",
            kind="set",
        )
        assert published.get("type") == "result", ET.tostring(published)
        items = f"<pubsub xmlns='{PUBSUB}'><items node='{TUNE}'/></pubsub>"
        got = await request(bob, "p2", items, ALICE)
        assert got.get("type") == "result", ET.tostring(got)
        assert [i.get("id") for i in got.iter(q(PUBSUB, "item"))] == ["t"]
        refused = await request(carol, "p3", items, ALICE)
        assert error_condition(refused) == ("auth", "not-authorized")

        # XEP-0441 'roster': bob's message is archived for alice, carol's is not.
        for sender, body in ((bob, "from a contact"), (carol, "from a stranger")):
            sender.send(f"<message type='chat' to='{ALICE}/raw'><body>{body}</body></message>")
            await alice.wait_for(lambda e, b=body: e.findtext(q(CLIENT, "body")) == b)
        await asyncio.sleep(0.2)
        await server.wait_durable()
        page = await server.storage.archive.query("alice", DOMAIN, ArchiveFilter(), 10)
        assert [m.with_bare for m in page.messages] == [BOB]
        assert "from a contact" in page.messages[0].stanza
        for raw in (alice, bob, carol):
            await raw.close()
    finally:
        await server.stop()


async def test_without_the_blocking_module_nothing_is_blocked(tmp_path: Path) -> None:
    """The documented choice: no XEP-0191 module, no blocking anywhere (also for the
    modules that ask the service, like PEP), even with lists in storage."""
    alice, bob = JID.parse(ALICE), JID.parse(BOB)
    server = await start_server(tmp_path)
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        await server.blocking.store(alice, {bob})
        assert await server.blocking.blocked_either_way(alice, bob)
        assert await server.blocking.blocked_either_way(bob, alice)
    finally:
        await server.stop()
    server = await start_server(tmp_path, modules={"disabled": ["blocking"]})
    try:
        assert not await server.blocking.blocked_either_way(alice, bob)
        assert not await server.blocking.blocked_either_way(bob, alice)
        assert await server.blocking.blocklist(alice) == set()
        assert "urn:xmpp:blocking" not in server.features
    finally:
        await server.stop()
