"""XEP-0352 Client State Indication with real clients over real sockets: alice's phone goes
inactive; presence updates, chat states and PEP notifications wait, the latest of each
kept; anything important is delivered at once, after what was held."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.modules import csi
from dovecote.modules.csi import MAX_HELD
from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    RawClient,
    Resource,
    add_user,
    authenticated_features,
    collect,
    login_resource,
    q,
    start_server,
)

CSI = "urn:xmpp:csi:0"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
PING = "urn:xmpp:ping"
SM = "urn:xmpp:sm:3"
MESSAGE = q(CLIENT, "message")
PRESENCE = q(CLIENT, "presence")
IQ = q(CLIENT, "iq")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
MODULES = {"enabled": ["carbons", "csi"]}


def summary(el: ET.Element) -> tuple[str, ...]:
    """(kind, from, what) of a stanza: the show of a presence, the body or the chat state
    of a message, the type of an IQ; a carbon copy is summarized by what it carries."""
    kind = el.tag.split("}")[1]
    sender = el.get("from") or ""
    if kind == "presence":
        return (kind, sender, el.get("type") or el.findtext(q(CLIENT, "show")) or "available")
    if kind == "iq":
        return (kind, sender, el.get("type") or "")
    for direction in ("sent", "received"):
        carbon = el.find(f"{q(CARBONS, direction)}/{q(FORWARD, 'forwarded')}/{MESSAGE}")
        if carbon is not None:
            return (direction, *summary(carbon)[1:])
    body = el.findtext(q(CLIENT, "body"))
    if body is not None:
        return (kind, sender, body)
    event = el.find(q(PUBSUB_EVENT, "event"))
    if event is not None:
        items = event.find(q(PUBSUB_EVENT, "items"))
        assert items is not None
        item = items.find(q(PUBSUB_EVENT, "item"))
        assert item is not None
        return (
            "pep",
            sender,
            f"{items.get('node')}#{item.get('id')}:{item.findtext(q(PUBSUB_EVENT, 'value'))}",
        )
    states = [c.tag.split("}")[1] for c in el if c.tag.startswith(f"{{{CHAT_STATES}}}")]
    return (kind, sender, *states)


def chat_state(to: str, state: str) -> str:
    return f"<message to='{to}' type='chat'><{state} xmlns='{CHAT_STATES}'/></message>"


def pep(to: str, node: str, item: str, value: str) -> str:
    return (
        f"<message to='{to}' type='headline'><event xmlns='{PUBSUB_EVENT}'>"
        f"<items node='{node}'><item id='{item}'><value>{value}</value></item></items>"
        "</event></message>"
    )


@dataclass
class Peers:
    phone: Resource
    desk: Resource
    bob: Resource


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(
        tmp_path / "data", modules=MODULES, stream_management={"ack_delay": 30}
    )
    for name in ("alice", "bob"):
        await add_user(srv, name)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def peers(server: Server) -> AsyncIterator[Peers]:
    """alice/phone and alice/desk available (each sees the other's presence), bob."""
    phone = await login_resource(server, "alice", "phone", presence=True)
    desk = await login_resource(server, "alice", "desk", presence=True)
    bob = await login_resource(server, "bob", "pc", presence=True)
    await phone.presence(from_=desk.jid, type=None)
    await phone.drain()
    try:
        yield Peers(phone, desk, bob)
    finally:
        for res in (phone, desk, bob):
            await res.close()


async def ping(res: Resource) -> list[ET.Element]:
    """Ping the server; everything the resource receives before the answer (the server
    handles a stream's input in order, XEP-0352 §5.1)."""
    assert res.backlog == [], res.backlog
    iq_id = res.next_id()
    res.send(f"<iq type='get' id='{iq_id}' to='{DOMAIN}'><ping xmlns='{PING}'/></iq>")
    before: list[ET.Element] = []
    while True:
        el = await res.raw.next()
        if el.tag == IQ and el.get("id") == iq_id:
            assert el.get("type") == "result"
            return before
        before.append(el)


async def set_state(res: Resource, state: str) -> list[ET.Element]:
    """Send <active/> or <inactive/>; what came before the next ping's answer."""
    res.send(f"<{state} xmlns='{CSI}'/>")
    return await ping(res)


async def synced(res: Resource) -> None:
    """Everything the resource sent before has been routed."""
    result = await res.request(f"<ping xmlns='{PING}'/>", "get", DOMAIN)
    assert result.get("type") == "result"


async def nothing(res: Resource, within: float = 0.3) -> None:
    got = await collect(res.raw, within)
    assert got == [], [ET.tostring(e) for e in got]


async def test_csi_is_offered_after_authentication(server: Server) -> None:
    await add_user(server, "carol")
    raw, features = await authenticated_features(server, "carol")
    assert features.find(q(CSI, "csi")) is not None  # §4.1
    await raw.close()
    raw = await RawClient.open(server.ports["c2s"])
    raw.open_stream()
    before_auth = await raw.features()
    assert before_auth.find(q(CSI, "csi")) is None
    await raw.close()


async def test_presence_waits_for_active_and_only_the_latest_is_sent(peers: Peers) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    assert await set_state(phone, "inactive") == []  # §4.2: no answer
    await desk.available(extra="<show>away</show>")
    await desk.available(extra="<show>xa</show>")
    bob.send(f"<presence to='{phone.jid}'><show>chat</show></presence>")
    bob.send(f"<presence to='{phone.jid}'><show>dnd</show></presence>")
    await synced(bob)
    await nothing(phone)
    got = await set_state(phone, "active")
    assert [summary(e) for e in got] == [
        ("presence", desk.jid, "xa"),
        ("presence", bob.jid, "dnd"),
    ]
    # Active again: presence goes out at once.
    await desk.available(extra="<show>chat</show>")
    assert summary(await phone.raw.next()) == ("presence", desk.jid, "chat")


async def test_unavailable_supersedes_available(peers: Peers) -> None:
    phone, bob = peers.phone, peers.bob
    await set_state(phone, "inactive")
    bob.send(f"<presence to='{phone.jid}'><show>away</show></presence>")
    bob.send(f"<presence to='{phone.jid}' type='unavailable'/>")
    await synced(bob)
    await nothing(phone)
    assert [summary(e) for e in await set_state(phone, "active")] == [
        ("presence", bob.jid, "unavailable"),
    ]


async def test_chat_states_are_held_and_only_the_latest_kept(peers: Peers) -> None:
    phone, bob = peers.phone, peers.bob
    await set_state(phone, "inactive")
    for state in ("active", "composing", "paused"):
        bob.send(chat_state(phone.jid, state))
    await synced(bob)
    await nothing(phone)
    assert [summary(e) for e in await set_state(phone, "active")] == [
        ("message", bob.jid, "paused"),
    ]


async def test_a_message_with_a_body_flushes_what_was_held_first(peers: Peers) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    await set_state(phone, "inactive")
    await desk.available(extra="<show>away</show>")
    bob.send(chat_state(phone.jid, "composing"))
    bob.send(f"<presence to='{phone.jid}'><show>dnd</show></presence>")
    bob.send(
        f"<message to='{phone.jid}' type='chat'><body>hello</body>"
        f"<active xmlns='{CHAT_STATES}'/></message>"
    )
    got = [await phone.raw.next() for _ in range(4)]
    assert [summary(e) for e in got] == [
        ("presence", desk.jid, "away"),
        ("message", bob.jid, "composing"),
        ("presence", bob.jid, "dnd"),
        ("message", bob.jid, "hello"),
    ]
    # Still inactive: the next presence update waits again.
    await desk.available(extra="<show>xa</show>")
    await nothing(phone)
    assert [summary(e) for e in await set_state(phone, "active")] == [
        ("presence", desk.jid, "xa"),
    ]


async def test_an_iq_is_delivered_at_once(peers: Peers) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    await set_state(phone, "inactive")
    await desk.available(extra="<show>away</show>")
    bob.send(f"<iq type='get' id='ping1' to='{phone.jid}'><ping xmlns='{PING}'/></iq>")
    first, second = await phone.raw.next(), await phone.raw.next()
    assert summary(first) == ("presence", desk.jid, "away")
    assert second.tag == IQ and second.get("id") == "ping1" and second.get("from") == bob.jid
    # The answer goes back (CSI is about what the client receives).
    phone.send(f"<iq type='result' id='ping1' to='{bob.jid}'/>")
    answer = await bob.iq("ping1")
    assert answer.get("type") == "result" and answer.get("from") == phone.jid
    await nothing(phone)


async def test_subscription_requests_and_encrypted_messages_are_important(
    peers: Peers,
) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    await set_state(phone, "inactive")
    await desk.available(extra="<show>away</show>")
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    first, second = await phone.raw.next(), await phone.raw.next()
    assert summary(first) == ("presence", desk.jid, "away")
    assert summary(second) == ("presence", BOB, "subscribe")
    # An OMEMO message has no body to look at, but it is a message for the user.
    await desk.available(extra="<show>xa</show>")
    bob.send(
        f"<message to='{phone.jid}' type='chat' id='e1'><encrypted "
        "xmlns='eu.siacs.conversations.axolotl'><header sid='1'/></encrypted></message>"
    )
    first, second = await phone.raw.next(), await phone.raw.next()
    assert summary(first) == ("presence", desk.jid, "xa")
    assert second.tag == MESSAGE and second.get("id") == "e1"


async def test_error_and_muc_self_presence_are_important(peers: Peers) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    await set_state(phone, "inactive")
    await desk.available(extra="<show>away</show>")
    muc = "http://jabber.org/protocol/muc#user"
    # The room's answer to the client's own join (XEP-0045 §7.2.2, status 110).
    bob.send(
        f"<presence to='{phone.jid}'><x xmlns='{muc}'><item affiliation='none' "
        "role='participant'/><status code='110'/></x></presence>"
    )
    first, second = await phone.raw.next(), await phone.raw.next()
    assert summary(first) == ("presence", desk.jid, "away")
    assert summary(second) == ("presence", bob.jid, "available")
    await desk.available(extra="<show>xa</show>")
    bob.send(
        f"<presence to='{phone.jid}' type='error'><error type='cancel'><item-not-found "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
    )
    first, second = await phone.raw.next(), await phone.raw.next()
    assert summary(first) == ("presence", desk.jid, "xa")
    assert summary(second) == ("presence", bob.jid, "error")


async def test_pep_notifications_are_held_per_item(peers: Peers) -> None:
    phone, bob = peers.phone, peers.bob
    await set_state(phone, "inactive")
    bob.send(pep(phone.jid, "urn:xmpp:avatar:metadata", "current", "v1"))
    bob.send(pep(phone.jid, "http://jabber.org/protocol/mood", "current", "happy"))
    bob.send(pep(phone.jid, "urn:xmpp:bookmarks:1", "room1@muc.example.org", "r1"))
    bob.send(pep(phone.jid, "urn:xmpp:bookmarks:1", "room2@muc.example.org", "r2"))
    bob.send(pep(phone.jid, "urn:xmpp:avatar:metadata", "current", "v2"))
    await synced(bob)
    await nothing(phone)
    assert [summary(e) for e in await set_state(phone, "active")] == [
        ("pep", bob.jid, "http://jabber.org/protocol/mood#current:happy"),
        ("pep", bob.jid, "urn:xmpp:bookmarks:1#room1@muc.example.org:r1"),
        ("pep", bob.jid, "urn:xmpp:bookmarks:1#room2@muc.example.org:r2"),
        ("pep", bob.jid, "urn:xmpp:avatar:metadata#current:v2"),
    ]


async def test_held_stanzas_are_sent_when_the_limit_is_reached(peers: Peers) -> None:
    phone, bob = peers.phone, peers.bob
    await set_state(phone, "inactive")
    for i in range(MAX_HELD + 1):
        bob.send(pep(phone.jid, "urn:example:feed", f"item{i}", str(i)))
    got = [await phone.raw.next() for _ in range(MAX_HELD)]
    assert [summary(e)[2] for e in got] == [
        f"urn:example:feed#item{i}:{i}" for i in range(MAX_HELD)
    ]
    await synced(bob)
    await nothing(phone)  # the last one waits again
    assert [summary(e)[2] for e in await set_state(phone, "active")] == [
        f"urn:example:feed#item{MAX_HELD}:{MAX_HELD}"
    ]


async def test_repeated_states_change_nothing(peers: Peers) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    assert await set_state(phone, "active") == []
    await set_state(phone, "inactive")
    await desk.available(extra="<show>away</show>")
    phone.send(f"<inactive xmlns='{CSI}'/>")  # again: what is held stays held
    bob.send(f"<presence to='{phone.jid}'><show>dnd</show></presence>")
    await synced(bob)
    await nothing(phone)
    assert [summary(e) for e in await set_state(phone, "active")] == [
        ("presence", desk.jid, "away"),
        ("presence", bob.jid, "dnd"),
    ]
    assert await set_state(phone, "active") == []


async def test_carbon_copies_of_chat_states_wait_those_of_messages_do_not(
    peers: Peers,
) -> None:
    phone, desk, bob = peers.phone, peers.desk, peers.bob
    enabled = await phone.request(f"<enable xmlns='{CARBONS}'/>", "set")
    assert enabled.get("type") == "result"
    await set_state(phone, "inactive")
    desk.send(chat_state(bob.jid, "composing"))
    desk.send(chat_state(bob.jid, "paused"))
    bob.send(chat_state(desk.jid, "composing"))
    await synced(desk)
    await synced(bob)
    await nothing(phone)
    desk.send(f"<message to='{bob.jid}' type='chat'><body>hi bob</body></message>")
    got = [await phone.raw.next() for _ in range(3)]
    assert [summary(e) for e in got] == [
        ("sent", desk.jid, "paused"),
        ("received", bob.jid, "composing"),
        ("sent", desk.jid, "hi bob"),
    ]
    await nothing(phone)


async def test_held_stanzas_are_dropped_with_the_session(server: Server, peers: Peers) -> None:
    phone, bob = peers.phone, peers.bob
    session = server.sessions.get(JID.parse(phone.jid))
    assert session is not None
    await set_state(phone, "inactive")
    bob.send(f"<presence to='{phone.jid}'><show>away</show></presence>")
    await synced(bob)
    held = csi.STATE.get(session)
    assert held is not None and len(held.stanzas) == 1
    await phone.close()
    for _ in range(100):
        if not csi.STATE.has(session):
            break
        await asyncio.sleep(0.02)
    assert not csi.STATE.has(session)
    assert server.sessions.get(JID.parse(phone.jid)) is None


async def test_a_resumed_stream_is_active(server: Server, peers: Peers) -> None:
    """§5.2: the CSI state is not restored by XEP-0198 resumption; what was held for the
    old connection is sent on the new one."""
    bob = peers.bob
    raw = await RawClient.open(server.ports["c2s"])
    jid = await raw.login("alice", resource="tablet")
    raw.send(f"<enable xmlns='{SM}' resume='true'/>")
    sm_id = (await raw.expect(q(SM, "enabled"))).get("id")
    tablet = Resource(raw, jid)
    assert await set_state(tablet, "inactive") == []
    bob.send(f"<presence to='{jid}'><show>away</show></presence>")
    await synced(bob)
    await nothing(tablet)
    raw.writer.transport.abort()  # the connection dies; the session hibernates
    await asyncio.sleep(0.2)

    raw2 = await RawClient.open(server.ports["c2s"])
    await raw2.authenticate("alice")
    raw2.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='1'/>")
    await raw2.expect(q(SM, "resumed"))
    # What was held goes out as soon as the stream is resumed, without waiting for traffic.
    held = await raw2.wait_for(lambda e: e.tag.endswith("}presence"))
    assert summary(held) == ("presence", bob.jid, "away")
    # And the resumed stream is active: a chat state arrives at once.
    bob.send(chat_state(jid, "composing"))
    got = await raw2.wait_for(lambda e: e.tag.endswith("}message"))
    assert summary(got) == ("message", bob.jid, "composing")
    await raw2.close()
