"""Per-user quotas and limits over real sockets, with small limits so the tests stay small:
offline bytes (XEP-0160, RFC 6121 §8.5.2.2), archive bytes (XEP-0313), PEP nodes and items
(XEP-0060/XEP-0163), private XML (XEP-0049), blocklists (XEP-0191), roster items made by
subscription presence and pending subscription requests (RFC 6121 §3.1)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from tests.integration.test_mam import MODULES, query, rsm

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_ERRORS = f"{PUBSUB}#errors"
PRIVATE = "jabber:iq:private"
BLOCKING = "urn:xmpp:blocking"
XDATA = "jabber:x:data"


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Any]:
    """make_server(users, **sections) -> a started server with those accounts."""
    started: list[Server] = []

    async def _make(users: tuple[str, ...] = ("alice", "bob"), **sections: Any) -> Server:
        server = await start_server(tmp_path / f"data{len(started)}", **sections)
        started.append(server)
        for local in users:
            await add_user(server, local)
        return server

    yield _make
    for server in started:
        await server.stop()


def chat_message(to: str, body: str, msg_id: str) -> str:
    return f"<message to='{to}' id='{msg_id}' type='chat'><body>{body}</body></message>"


def is_message(el: ET.Element) -> bool:
    return el.tag == q(CLIENT, "message")


# ---- offline bytes -----------------------------------------------------------------------------
async def test_offline_byte_quota_refuses_with_resource_constraint(make_server: Any) -> None:
    """Few messages, but big ones: the byte quota, not the count, refuses the next."""
    server = await make_server(offline={"max_messages": 1000, "max_bytes": 8 * 1024})
    bob = await login_resource(server, "bob", presence=True)
    body = "x" * 2000
    for n in range(3):
        bob.send(chat_message(ALICE, body, f"m{n}"))
    for _ in range(100):  # all three fit (3 x ~2.2 KB)
        if await server.storage.offline.count("alice", DOMAIN) == 3:
            break
        await asyncio.sleep(0.02)
    assert await server.storage.offline.count("alice", DOMAIN) == 3
    bob.send(chat_message(ALICE, body * 2, "big"))  # ~4 KB more would pass 8 KiB
    error = await bob.message()
    assert error.get("type") == "error" and error.get("id") == "big", ET.tostring(error)
    assert error_condition(error) == ("wait", "resource-constraint")
    assert await server.storage.offline.count("alice", DOMAIN) == 3
    # A small one still fits.
    bob.send(chat_message(ALICE, "small", "small"))
    await bob.assert_none(is_message)
    alice = await login_resource(server, "alice", presence=True)
    bodies = [(await alice.take(is_message)).findtext(q(CLIENT, "body")) for _ in range(4)]
    assert bodies == [body, body, body, "small"]
    await alice.close()
    await bob.close()


async def test_concurrent_senders_cannot_overshoot_the_offline_quota(make_server: Any) -> None:
    """Many senders at once: each message is stored or bounced, and the store never holds
    more than the quota (the check and the insert are one statement)."""
    senders = [f"s{n}" for n in range(10)]
    server = await make_server(
        ("alice", *senders), offline={"max_messages": 1000, "max_bytes": 8 * 1024}
    )
    clients = await asyncio.gather(*(login_resource(server, s, presence=True) for s in senders))
    body = "y" * 1000  # ~1.2 KB stored each: 6 fit into 8 KiB
    for n, client in enumerate(clients):
        for k in range(3):
            client.send(chat_message(ALICE, body, f"c{n}-{k}"))
    errors = 0
    stored: list[tuple[int, str]] = []
    for _ in range(20):  # until every message is accounted for (bounded)
        for client in clients:
            for el in await client.drain(timeout=0.05):
                if is_message(el) and el.get("type") == "error":
                    assert error_condition(el) == ("wait", "resource-constraint"), ET.tostring(el)
                    errors += 1
        stored = await server.storage.offline.fetch("alice", DOMAIN)
        if len(stored) + errors >= 30:
            break
        await asyncio.sleep(0.2)
    assert 0 < len(stored) < 30
    assert len(stored) + errors == 30  # nothing lost, nothing doubled
    assert sum(len(text.encode()) for _, text in stored) <= 8 * 1024
    for client in clients:
        await client.close()


# ---- archive bytes -----------------------------------------------------------------------------
async def send_archived(sender: Resource, receiver: Resource, count: int, size: int) -> None:
    for n in range(count):
        sender.send(chat_message(receiver.bare, f"{n:04d}" + "z" * size, f"a{n}"))
        got = await receiver.take(is_message)
        assert got.findtext(q(CLIENT, "body"), "").startswith(f"{n:04d}")


async def test_archive_over_quota_expires_the_oldest(make_server: Any) -> None:
    server = await make_server(modules=MODULES, mam={"max_bytes_per_user": 6000})
    alice = await login_resource(server, "alice", presence=True)
    bob = await login_resource(server, "bob", presence=True)
    await send_archived(alice, bob, 20, 500)  # ~20 x 650 bytes into each archive
    await server.storage.archive.flush()
    for user, res in (("alice", alice), ("bob", bob)):
        page = await query(res, rsm(max=50))
        numbers = [int((b or "")[:4]) for b in page.bodies]
        # The newest are kept, in order and without holes; the oldest went first.
        assert numbers == list(range(20 - len(numbers), 20)), numbers
        assert 5 <= len(numbers) < 20
        assert await server.storage.archive.usage(user, DOMAIN) <= 6000
    await alice.close()
    await bob.close()


async def test_archive_quota_policy_stop_keeps_the_first(make_server: Any) -> None:
    server = await make_server(
        modules=MODULES, mam={"max_bytes_per_user": 6000, "quota_policy": "stop"}
    )
    alice = await login_resource(server, "alice", presence=True)
    bob = await login_resource(server, "bob", presence=True)
    await send_archived(alice, bob, 20, 500)  # every message is still delivered
    page = await query(bob, rsm(max=50))
    numbers = [int((b or "")[:4]) for b in page.bodies]
    assert numbers == list(range(len(numbers))) and 5 <= len(numbers) < 20, numbers
    await alice.close()
    await bob.close()


async def test_message_to_a_missing_account_is_not_archived(make_server: Any) -> None:
    server = await make_server(modules=MODULES)
    alice = await login_resource(server, "alice", presence=True)
    alice.send(chat_message(f"nobody@{DOMAIN}", "lost", "x1"))
    error = await alice.message()
    assert error_condition(error) == ("cancel", "service-unavailable"), ET.tostring(error)
    page = await query(alice)
    assert page.bodies == []
    assert await server.storage.archive.usage("alice", DOMAIN) == 0
    await alice.close()


# ---- PEP ---------------------------------------------------------------------------------------
def pubsub_error(iq: ET.Element) -> tuple[tuple[str | None, str | None], str | None]:
    error = iq.find(q(CLIENT, "error"))
    assert error is not None, ET.tostring(iq)
    app = [
        child.tag.split("}")[1] for child in error if child.tag.startswith(f"{{{PUBSUB_ERRORS}}}")
    ]
    return error_condition(iq), app[0] if app else None


async def test_pep_node_beyond_the_limit_is_refused(make_server: Any) -> None:
    server = await make_server(pep={"max_nodes_per_user": 3})
    alice = await login_resource(server, "alice", presence=True)
    for n in range(3):
        iq = await alice.request(f"<pubsub xmlns='{PUBSUB}'><create node='n{n}'/></pubsub>", "set")
        assert iq.get("type") == "result", ET.tostring(iq)
    iq = await alice.request(f"<pubsub xmlns='{PUBSUB}'><create node='n3'/></pubsub>", "set")
    assert pubsub_error(iq) == (("modify", "policy-violation"), "max-nodes-exceeded")
    # Publishing to a new node (auto-create, XEP-0163 §3) is refused the same way.
    iq = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><publish node='n4'><item id='1'><x xmlns='urn:t'/></item>"
        "</publish></pubsub>",
        "set",
    )
    assert pubsub_error(iq) == (("modify", "policy-violation"), "max-nodes-exceeded")
    assert len(await server.storage.pubsub.list_nodes("alice", DOMAIN)) == 3
    # An existing node still takes items; after a delete there is room again.
    iq = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><publish node='n0'><item id='1'><x xmlns='urn:t'/></item>"
        "</publish></pubsub>",
        "set",
    )
    assert iq.get("type") == "result", ET.tostring(iq)
    iq = await alice.request(f"<pubsub xmlns='{PUBSUB}#owner'><delete node='n1'/></pubsub>", "set")
    assert iq.get("type") == "result", ET.tostring(iq)
    iq = await alice.request(f"<pubsub xmlns='{PUBSUB}'><create node='n3'/></pubsub>", "set")
    assert iq.get("type") == "result", ET.tostring(iq)
    await alice.close()


def max_items_form(value: str) -> str:
    return (
        f"<x xmlns='{XDATA}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config</value></field>"
        f"<field var='pubsub#max_items'><value>{value}</value></field></x>"
    )


async def test_pep_items_per_node_are_capped(make_server: Any) -> None:
    server = await make_server(pep={"max_items_per_node": 2})
    alice = await login_resource(server, "alice", presence=True)
    iq = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><create node='big'/>"
        f"<configure>{max_items_form('3')}</configure></pubsub>",
        "set",
    )
    assert error_condition(iq) == ("modify", "not-acceptable"), ET.tostring(iq)
    iq = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><create node='big'/>"
        f"<configure>{max_items_form('max')}</configure></pubsub>",
        "set",
    )
    assert iq.get("type") == "result", ET.tostring(iq)
    for n in range(4):
        iq = await alice.request(
            f"<pubsub xmlns='{PUBSUB}'><publish node='big'><item id='i{n}'><x xmlns='urn:t'/>"
            "</item></publish></pubsub>",
            "set",
        )
        assert iq.get("type") == "result", ET.tostring(iq)
    items = await server.storage.pubsub.get_items("alice", DOMAIN, "big")
    assert [item.id for item in items] == ["i2", "i3"]  # 'max' is the service's 2
    await alice.close()


# ---- private XML -------------------------------------------------------------------------------
async def test_private_storage_limits(make_server: Any) -> None:
    server = await make_server(private={"max_namespaces": 2, "max_bytes": 2048})
    alice = await login_resource(server, "alice", presence=True)

    async def store(namespace: str, text: str = "v") -> ET.Element:
        return await alice.request(
            f"<query xmlns='{PRIVATE}'><data xmlns='{namespace}'>{text}</data></query>", "set"
        )

    assert (await store("urn:a")).get("type") == "result"
    assert (await store("urn:b")).get("type") == "result"
    assert error_condition(await store("urn:c")) == ("wait", "resource-constraint")
    assert await server.storage.kv.get("alice", DOMAIN, "private:urn:c") is None
    # Replacing a stored namespace is no new one; too many bytes are refused.
    assert (await store("urn:a", "w")).get("type") == "result"
    assert error_condition(await store("urn:a", "w" * 3000)) == ("wait", "resource-constraint")
    assert "w" * 3000 not in (await server.storage.kv.get("alice", DOMAIN, "private:urn:a") or "")
    # Clearing one (an empty element) makes room.
    iq = await alice.request(f"<query xmlns='{PRIVATE}'><data xmlns='urn:b'/></query>", "set")
    assert iq.get("type") == "result"
    assert (await store("urn:c")).get("type") == "result"
    await alice.close()


# ---- blocking ----------------------------------------------------------------------------------
async def test_blocklist_limit(make_server: Any) -> None:
    server = await make_server(blocking={"max_items": 3})
    alice = await login_resource(server, "alice", presence=True)

    async def block(*jids: str) -> ET.Element:
        items = "".join(f"<item jid='{jid}'/>" for jid in jids)
        return await alice.request(f"<block xmlns='{BLOCKING}'>{items}</block>", "set")

    assert (await block("a@x.example", "b@x.example")).get("type") == "result"
    assert error_condition(await block("c@x.example", "d@x.example")) == (
        "wait",
        "resource-constraint",
    )
    assert (await block("c@x.example", "a@x.example")).get("type") == "result"
    assert error_condition(await block("e@x.example")) == ("wait", "resource-constraint")
    stored = await server.storage.kv.get("alice", DOMAIN, "blocklist")
    assert stored is not None and "e@x.example" not in stored and "c@x.example" in stored
    await alice.close()


# ---- roster ------------------------------------------------------------------------------------
def is_presence_error(el: ET.Element) -> bool:
    return el.tag == q(CLIENT, "presence") and el.get("type") == "error"


async def test_outbound_subscribe_beyond_the_roster_limit(make_server: Any) -> None:
    contacts = [f"c{n}" for n in range(4)]
    server = await make_server(("alice", *contacts), roster={"max_items": 3})
    alice = await login_resource(server, "alice", roster=True, presence=True)
    for contact in contacts[:3]:
        alice.send(f"<presence to='{contact}@{DOMAIN}' type='subscribe'/>")
        await alice.push(f"{contact}@{DOMAIN}")
    alice.send(f"<presence to='c3@{DOMAIN}' type='subscribe' id='s4'/>")
    error = await alice.take(is_presence_error)
    assert error.get("id") == "s4" and error.get("from") == f"c3@{DOMAIN}", ET.tostring(error)
    assert error_condition(error) == ("wait", "resource-constraint")
    roster = await server.storage.roster.load("alice", DOMAIN)
    assert sorted(roster.items) == [f"c{n}@{DOMAIN}" for n in range(3)]
    # Nothing reached the contact either.
    assert await server.storage.roster.load("c3", DOMAIN) is not None
    assert (await server.storage.roster.load("c3", DOMAIN)).pending == {}
    # Pre-approval (RFC 6121 §3.4) would add an item too.
    alice.send(f"<presence to='c3@{DOMAIN}' type='subscribed' id='p4'/>")
    error = await alice.take(is_presence_error)
    assert error.get("id") == "p4" and error_condition(error) == ("wait", "resource-constraint")
    await alice.close()


async def test_pending_subscription_requests_are_limited(make_server: Any) -> None:
    senders = [f"s{n}" for n in range(3)]
    server = await make_server(("alice", *senders), roster={"max_pending": 2})
    clients = [await login_resource(server, s, presence=True) for s in senders]
    for n, client in enumerate(clients):
        client.send(f"<presence to='{ALICE}' type='subscribe' id='r{n}'/>")
        if n < 2:  # one after the other: the third is the one too many
            for _ in range(250):
                if len((await server.storage.roster.load("alice", DOMAIN)).pending) == n + 1:
                    break
                await asyncio.sleep(0.02)
    for client in clients[:2]:
        await client.assert_none(is_presence_error)
    error = await clients[2].take(is_presence_error)
    assert error.get("id") == "r2" and error.get("from") == ALICE, ET.tostring(error)
    assert error_condition(error) == ("wait", "resource-constraint")
    pending = (await server.storage.roster.load("alice", DOMAIN)).pending
    assert sorted(pending) == [f"s0@{DOMAIN}", f"s1@{DOMAIN}"]
    # Asking again while pending is no new request.
    clients[0].send(f"<presence to='{ALICE}' type='subscribe' id='again'/>")
    await clients[0].assert_none(is_presence_error)
    for client in clients:
        await client.close()
