"""XEP-0280 Message Carbons (and XEP-0359 origin-id passing through) with real clients over
real sockets: alice is online with three resources, A (carbons off), B and C (carbons on);
bob writes to her and she writes to bob."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dovecote.jid import JID
from dovecote.modules.carbons import is_eligible
from dovecote.server import Server
from dovecote.storage.archive import ArchiveFilter
from dovecote.xml.element import Element
from dovecote.xml.parser import parse_element
from tests.helpers import (
    CLIENT,
    DOMAIN,
    Resource,
    add_user,
    connect,
    disconnect,
    error_condition,
    login_resource,
    q,
    start_server,
)

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
SID = "urn:xmpp:sid:0"
HINTS = "urn:xmpp:hints"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
MESSAGE = q(CLIENT, "message")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
# The copies' exact payloads are checked here; archiving (which adds <stanza-id/>) has its
# own tests, and one test below checks that the archive's id travels inside copies.
MODULES = {"enabled": ["carbons", "csi"], "disabled": ["mam"]}


def is_message(el: ET.Element) -> bool:
    return el.tag == MESSAGE


def message_with_id(msg_id: str):  # type: ignore[no-untyped-def]
    return lambda el: el.tag == MESSAGE and el.get("id") == msg_id


def unwrap(el: ET.Element, direction: str) -> ET.Element:
    """The forwarded message of a carbon copy, checking the exact wrapping (§7, §8)."""
    assert el.tag == MESSAGE, ET.tostring(el)
    assert [c.tag for c in el] == [q(CARBONS, direction)], ET.tostring(el)
    wrapper = el[0]
    assert [c.tag for c in wrapper] == [q(FORWARD, "forwarded")], ET.tostring(el)
    forwarded = wrapper[0]
    assert [c.tag for c in forwarded] == [MESSAGE], ET.tostring(el)
    return forwarded[0]


def is_carbon(el: ET.Element) -> bool:
    return el.tag == MESSAGE and any(c.tag.startswith(f"{{{CARBONS}}}") for c in el)


@dataclass
class Account:
    a: Resource
    b: Resource
    c: Resource
    bob: Resource

    async def quiet(self, *resources: Resource) -> None:
        """None of them gets a message."""
        await asyncio.gather(*(r.assert_none(is_message) for r in resources))


async def set_carbons(res: Resource, enable: bool = True, to: str | None = None) -> ET.Element:
    tag = "enable" if enable else "disable"
    return await res.request(f"<{tag} xmlns='{CARBONS}'/>", "set", to)


async def enable(res: Resource) -> None:
    el = await set_carbons(res)
    # §4: the result comes from the account, to the client.
    assert el.get("type") == "result", ET.tostring(el)
    assert el.get("from") == res.bare and el.get("to") == res.jid, ET.tostring(el)
    assert list(el) == []


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path / "data", modules=MODULES)
    for name in ("alice", "bob"):
        await add_user(srv, name)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def account(server: Server) -> AsyncIterator[Account]:
    """A has the highest priority; B and C enable carbons."""
    a = await login_resource(server, "alice", "A", priority=5)
    b = await login_resource(server, "alice", "B", priority=0)
    c = await login_resource(server, "alice", "C", priority=0)
    bob = await login_resource(server, "bob", "pc", presence=True)
    await enable(b)
    await enable(c)
    acct = Account(a, b, c, bob)
    try:
        yield acct
    finally:
        for res in (a, b, c, bob):
            await res.close()


# ---- §3, §4, §5: discovery, enabling, disabling -------------------------------------------
async def test_server_advertises_carbons_and_rules(account: Account) -> None:
    el = await account.a.request(f"<query xmlns='{DISCO_INFO}'/>", "get", DOMAIN)
    features = {f.get("var") for f in el.iter(q(DISCO_INFO, "feature"))}
    assert {CARBONS, "urn:xmpp:carbons:rules:0"} <= features


async def test_enable_to_own_bare_jid_and_repeated_requests(account: Account) -> None:
    a = account.a
    for enable_it in (True, True, False, False, True):  # §10.1: repeats are no error
        el = await set_carbons(a, enable_it, to=ALICE)
        assert el.get("type") == "result", ET.tostring(el)
        assert el.get("from") == ALICE and el.get("to") == a.jid


async def test_enable_for_another_account_is_not_allowed(account: Account) -> None:
    for enable_it in (True, False):
        el = await set_carbons(account.a, enable_it, to=BOB)
        assert el.get("type") == "error", ET.tostring(el)
        # A stranger (no presence subscription) gets what a missing account answers.
        assert error_condition(el) == ("cancel", "service-unavailable")
        assert el.get("from") == BOB
    # A did not get carbons by it, nor did bob.
    account.bob.send(f"<message to='{ALICE}/B' id='x1' type='chat'><body>x</body></message>")
    assert unwrap(await account.c.message(), "received").get("id") == "x1"
    await account.quiet(account.a)


# ---- §7: received copies -------------------------------------------------------------------
async def test_message_to_full_jid_is_copied_to_other_enabled_resources(account: Account) -> None:
    a, b, c, bob = account.a, account.b, account.c, account.bob
    bob.send(f"<message to='{a.jid}' id='m1' type='chat'><body>hi A</body></message>")
    original = await a.message()
    assert original.attrib == {"from": bob.jid, "to": a.jid, "id": "m1", "type": "chat"}
    assert [child.tag for child in original] == [q(CLIENT, "body")]
    for res in (b, c):
        copy = await res.message()
        # §7: from the bare JID, to the resource's full JID, same type.
        assert copy.attrib == {"from": ALICE, "to": res.jid, "type": "chat"}
        inner = unwrap(copy, "received")
        assert inner.attrib == {"from": bob.jid, "to": a.jid, "id": "m1", "type": "chat"}
        assert inner.findtext(q(CLIENT, "body")) == "hi A"
    await account.quiet(a, b, c, bob)


async def test_message_to_enabled_resource_copies_to_the_other_one(account: Account) -> None:
    b, c = account.b, account.c
    account.bob.send(f"<message to='{b.jid}' id='m2'><body>hi B</body></message>")
    original = await b.message()
    assert original.get("id") == "m2" and not is_carbon(original)
    copy = await c.message()
    assert copy.attrib == {"from": ALICE, "to": c.jid}  # type normal: none on the copy
    assert unwrap(copy, "received").get("id") == "m2"
    await account.quiet(account.a, b, c)


async def test_message_to_bare_jid_copied_beside_the_highest_priority(account: Account) -> None:
    a, b, c = account.a, account.b, account.c
    account.bob.send(f"<message to='{ALICE}' id='m3' type='chat'><body>hi</body></message>")
    assert (await a.message()).get("id") == "m3"  # RFC 6121 §8.5.2.1.1: priority 5
    for res in (b, c):
        inner = unwrap(await res.message(), "received")
        assert inner.attrib == {"from": account.bob.jid, "to": ALICE, "id": "m3", "type": "chat"}
    await account.quiet(a, b, c)

    # Now B has the highest priority: it gets the original, C a copy, A (carbons off) none.
    await b.available(priority=10)
    account.bob.send(f"<message to='{ALICE}' id='m4' type='chat'><body>hi</body></message>")
    original = await b.message()
    assert original.get("id") == "m4" and not is_carbon(original)
    assert unwrap(await c.message(), "received").get("id") == "m4"
    await account.quiet(a, b, c)


async def test_no_copy_when_the_message_goes_to_offline_storage(server: Server) -> None:
    # B and C enabled carbons but are not available: the message is stored, not delivered.
    b = await login_resource(server, "alice", "B")
    c = await login_resource(server, "alice", "C")
    bob = await login_resource(server, "bob", "pc", presence=True)
    await enable(b)
    await enable(c)
    bob.send(f"<message to='{ALICE}' id='off1' type='chat'><body>later</body></message>")
    await asyncio.gather(b.assert_none(is_message), c.assert_none(is_message))
    await bob.assert_none(is_message)  # stored: no error to bob
    # The stored message is delivered once, by offline delivery, not as a copy.
    await b.available()
    delivered = await b.message()
    assert delivered.get("id") == "off1" and not is_carbon(delivered)
    await c.assert_none(is_message)


async def test_enabled_resource_without_presence_still_gets_copies(server: Server) -> None:
    """§7: "each Carbons-enabled resource" that did not get the message (as Prosody and
    ejabberd do): enabling carbons is the resource's own request for the traffic."""
    a = await login_resource(server, "alice", "A", presence=True)
    c = await login_resource(server, "alice", "C")
    bob = await login_resource(server, "bob", "pc", presence=True)
    await enable(c)
    bob.send(f"<message to='{ALICE}' id='np1' type='chat'><body>hi</body></message>")
    assert (await a.message()).get("id") == "np1"
    assert unwrap(await c.message(), "received").get("id") == "np1"


# ---- §8: sent copies -----------------------------------------------------------------------
async def test_sent_message_is_copied_to_other_enabled_resources(account: Account) -> None:
    a, b, c, bob = account.a, account.b, account.c, account.bob
    a.send(f"<message to='{bob.jid}' id='s1' type='chat'><body>hi bob</body></message>")
    got = await bob.message()
    assert got.attrib == {"from": a.jid, "to": bob.jid, "id": "s1", "type": "chat"}
    for res in (b, c):
        copy = await res.message()
        assert copy.attrib == {"from": ALICE, "to": res.jid, "type": "chat"}
        inner = unwrap(copy, "sent")
        assert inner.attrib == {"from": a.jid, "to": bob.jid, "id": "s1", "type": "chat"}
        assert inner.findtext(q(CLIENT, "body")) == "hi bob"
    await account.quiet(a, b, c, bob)


async def test_sender_with_carbons_gets_no_copy_of_its_own_message(account: Account) -> None:
    b, c = account.b, account.c
    b.send(f"<message to='{BOB}' id='s2' type='chat'><body>from B</body></message>")
    assert (await account.bob.message()).get("id") == "s2"
    inner = unwrap(await c.message(), "sent")
    assert inner.attrib == {"from": b.jid, "to": BOB, "id": "s2", "type": "chat"}
    await account.quiet(account.a, b, c)


async def test_message_to_own_other_resource(account: Account) -> None:
    """Sender and recipient are one account, and both rules apply as written: §8 copies to
    every enabled resource but the sender (B, the recipient, too: first the sent copy, then
    the original), §7 to every enabled resource that did not get it (C: sent, then
    received). A sent it with carbons off: nothing comes back to it."""
    a, b, c = account.a, account.b, account.c
    a.send(f"<message to='{b.jid}' id='self1' type='chat'><body>note</body></message>")
    sent_attrs = {"from": a.jid, "to": b.jid, "id": "self1", "type": "chat"}
    assert unwrap(await b.message(), "sent").attrib == sent_attrs
    original = await b.message()
    assert original.attrib == sent_attrs and not is_carbon(original)
    assert unwrap(await c.message(), "sent").attrib == sent_attrs
    assert unwrap(await c.message(), "received").attrib == sent_attrs
    await account.quiet(a, b, c)

    # To the own bare JID: the original to A (priority 5), sent and received copies to B
    # and C, from a sender with carbons on (B): no sent copy back to it.
    b.send(f"<message to='{ALICE}' id='self2' type='chat'><body>note</body></message>")
    assert (await a.message()).get("id") == "self2"
    assert unwrap(await b.message(), "received").get("id") == "self2"
    assert unwrap(await c.message(), "sent").get("id") == "self2"
    assert unwrap(await c.message(), "received").get("id") == "self2"
    await account.quiet(a, b, c)


# ---- §9: private messages; disabling ----------------------------------------------------
async def test_private_no_copy_messages_are_not_copied(account: Account) -> None:
    a, b, c, bob = account.a, account.b, account.c, account.bob
    private = f"<private xmlns='{CARBONS}'/><no-copy xmlns='{HINTS}'/>"
    bob.send(f"<message to='{a.jid}' id='p1' type='chat'><body>psst</body>{private}</message>")
    a.send(f"<message to='{bob.jid}' id='p2' type='chat'><body>psst</body>{private}</message>")
    # Then an ordinary message each way, which is copied: nothing came before it.
    bob.send(f"<message to='{a.jid}' id='p3' type='chat'><body>hi</body></message>")
    a.send(f"<message to='{bob.jid}' id='p4' type='chat'><body>hi</body></message>")
    received = await a.message()
    assert received.get("id") == "p1"
    # §9 interoperability note: the <private/> element stays in the delivered message.
    assert received.find(q(CARBONS, "private")) is not None
    assert (await bob.message()).get("id") == "p2"
    assert (await a.message()).get("id") == "p3"
    assert (await bob.message()).get("id") == "p4"
    for res in (b, c):
        copies = []
        for _ in range(2):
            el = await res.message()
            direction = el[0].tag.split("}")[1]
            copies.append((direction, unwrap(el, direction).get("id")))
        assert sorted(copies) == [("received", "p3"), ("sent", "p4")]
    await account.quiet(a, b, c)


async def test_disable_stops_copies(account: Account) -> None:
    b, c = account.b, account.c
    el = await set_carbons(b, enable=False)
    assert el.get("type") == "result" and el.get("from") == ALICE
    account.bob.send(f"<message to='{account.a.jid}' id='d1' type='chat'><body>x</body></message>")
    assert (await account.a.message()).get("id") == "d1"
    assert unwrap(await c.message(), "received").get("id") == "d1"
    await account.quiet(b)
    # Enabled twice, one copy.
    await enable(c)
    account.a.send(f"<message to='{BOB}' id='d2' type='chat'><body>y</body></message>")
    assert unwrap(await c.message(), "sent").get("id") == "d2"
    await account.quiet(b, c)


async def test_carbons_state_belongs_to_the_session(server: Server, account: Account) -> None:
    """A new session on the same resource starts with carbons off."""
    await account.c.close()
    for _ in range(50):
        if server.sessions.get(JID.parse(account.c.jid)) is None:
            break
        await asyncio.sleep(0.02)
    c2 = await login_resource(server, "alice", "C", presence=True)
    account.bob.send(f"<message to='{account.a.jid}' id='n1' type='chat'><body>x</body></message>")
    assert (await account.a.message()).get("id") == "n1"
    assert unwrap(await account.b.message(), "received").get("id") == "n1"
    await c2.assert_none(is_message)
    await c2.close()


# ---- §6.1: which messages ------------------------------------------------------------------
INCOMING = [
    # (id, attributes and payload, copied?)
    ("groupchat", "type='groupchat'><body>x</body>", False),
    ("headline", "type='headline'><body>x</body>", False),
    ("normal-no-body", "><x xmlns='jabber:x:oob'><url>http://x.example/</url></x>", False),
    ("private", f"type='chat'><body>x</body><private xmlns='{CARBONS}'/>", False),
    ("no-copy", f"type='chat'><body>x</body><no-copy xmlns='{HINTS}'/>", False),
    ("muc-pm", "type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/>", False),
    (
        "forged-carbon",
        f"type='chat'><received xmlns='{CARBONS}'><forwarded xmlns='{FORWARD}'>"
        f"<message xmlns='jabber:client' type='chat' from='eve@{DOMAIN}/x'><body>x</body>"
        "</message></forwarded></received>",
        False,
    ),
    (
        "error-bare",
        "type='error'><error type='cancel'><service-unavailable "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
        False,
    ),
    ("chat", "type='chat'><body>x</body>", True),
    ("chat-state", "type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>", True),
    ("normal-body", "><body>x</body>", True),
    ("receipt", "><received xmlns='urn:xmpp:receipts' id='m1'/>", True),
    ("marker", "><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>", True),
    ("direct-invite", "><x xmlns='jabber:x:conference' jid='room@muc.example.org'/>", True),
    (
        "mediated-invite",
        f"><x xmlns='http://jabber.org/protocol/muc#user'><invite from='{BOB}'/></x>",
        True,
    ),
    (
        "error-bounce",
        "type='error'><body>x</body><error type='cancel'><service-unavailable "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
        True,
    ),
]


async def test_which_received_messages_are_copied(account: Account) -> None:
    a, b, bob = account.a, account.b, account.bob
    for msg_id, rest, _copied in INCOMING:
        bob.send(f"<message to='{a.jid}' id='{msg_id}' {rest}</message>")
    bob.send(f"<message to='{a.jid}' id='end' type='chat'><body>end</body></message>")
    copied: list[str] = []
    while True:
        inner = unwrap(await b.message(), "received")
        if inner.get("id") == "end":
            break
        copied.append(inner.get("id") or "")
    assert copied == [msg_id for msg_id, _rest, copy in INCOMING if copy]
    # A got every original, as it was sent.
    for msg_id, _rest, _copied in INCOMING:
        el = await a.take(message_with_id(msg_id))
        assert el.get("from") == bob.jid


OUTGOING = [
    ("groupchat", "type='groupchat'><body>x</body>", False),
    ("headline", "type='headline'><body>x</body>", False),
    ("private", f"type='chat'><body>x</body><private xmlns='{CARBONS}'/>", False),
    ("normal-no-body", "><x xmlns='jabber:x:oob'><url>http://x.example/</url></x>", False),
    # §6.1: a private message to an occupant is copied.
    ("muc-pm", "type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/>", True),
    ("chat", "type='chat'><body>x</body>", True),
    ("receipt", "><received xmlns='urn:xmpp:receipts' id='m1'/>", True),
    ("chat-state", "><composing xmlns='http://jabber.org/protocol/chatstates'/>", True),
]


async def test_which_sent_messages_are_copied(account: Account) -> None:
    a, c, bob = account.a, account.c, account.bob
    for msg_id, rest, _copied in OUTGOING:
        a.send(f"<message to='{bob.jid}' id='{msg_id}' {rest}</message>")
    a.send(f"<message to='{bob.jid}' id='end' type='chat'><body>end</body></message>")
    copied: list[str] = []
    while True:
        inner = unwrap(await c.message(), "sent")
        if inner.get("id") == "end":
            break
        copied.append(inner.get("id") or "")
    assert copied == [msg_id for msg_id, _rest, copy in OUTGOING if copy]


@pytest.mark.parametrize(
    ("xml", "outgoing", "sender", "expected"),
    [
        ("<message type='error'><error type='cancel'/></message>", False, BOB, True),
        ("<message type='error'><error type='cancel'/></message>", False, f"{BOB}/pc", False),
        ("<message type='error'><error type='cancel'/></message>", True, None, False),
        (
            f"<message type='error'><body>x</body><no-copy xmlns='{HINTS}'/></message>",
            False,
            f"{BOB}/pc",
            True,
        ),
        (
            "<message type='headline'><x xmlns='jabber:x:conference' jid='r@m.example'/></message>",
            False,
            f"{BOB}/pc",
            True,
        ),
        (
            "<message type='groupchat'><x xmlns='jabber:x:conference' jid='r@m.example'/>"
            "</message>",
            False,
            f"{BOB}/pc",
            False,
        ),
        ("<message type='normal'><subject>s</subject></message>", False, f"{BOB}/pc", False),
    ],
)
def test_eligibility_rules(xml: str, outgoing: bool, sender: str | None, expected: bool) -> None:
    """§6.1 rules that the server can only tell apart from the stanza (errors: a bounce
    of an eligible message carries its body, or comes from the account it was sent to)."""
    stanza = parse_element(f"<wrapper xmlns='jabber:client'>{xml}</wrapper>")
    message = next(stanza.elements)
    jid = JID.parse(sender) if sender else None
    assert is_eligible(message, outgoing=outgoing, sender=jid) is expected


# ---- what the server adds before delivery, and XEP-0359 origin-id ----------------------------
async def test_origin_id_and_stanza_id_are_kept_in_copies(server: Server, account: Account) -> None:
    """XEP-0359 §2.2: origin-id reaches the recipient untouched; what the archive adds
    before delivery (a <stanza-id/>, at priority 50) is in the received copies too."""

    def add_stanza_id(event: Any) -> bool:
        by = str(event.to.bare)
        event.stanza.append(Element("stanza-id", SID, {"id": f"sid-{by}", "by": by}))
        return False

    for name in ("message/bare", "message/full"):
        server.events.add(name, add_stanza_id, 50)
    a, b, c, bob = account.a, account.b, account.c, account.bob
    origin = f"<origin-id xmlns='{SID}' id='de305d54-75b4-431b-adb2-eb6b9e546013'/>"
    bob.send(f"<message to='{a.jid}' id='o1' type='chat'><body>x</body>{origin}</message>")
    original = await a.message()
    expected = [
        (q(CLIENT, "body"), {}),
        (q(SID, "origin-id"), {"id": "de305d54-75b4-431b-adb2-eb6b9e546013"}),
        (q(SID, "stanza-id"), {"id": f"sid-{ALICE}", "by": ALICE}),
    ]
    assert [(ch.tag, ch.attrib) for ch in original] == expected
    for res in (b, c):
        inner = unwrap(await res.message(), "received")
        assert [(ch.tag, ch.attrib) for ch in inner] == expected
    # Sent copies carry the message as the client sent it; bob's server adds its own id.
    a.send(f"<message to='{bob.jid}' id='o2' type='chat'><body>y</body>{origin}</message>")
    got = await bob.message()
    assert [(ch.tag, ch.attrib) for ch in got] == [
        (q(CLIENT, "body"), {}),
        (q(SID, "origin-id"), {"id": "de305d54-75b4-431b-adb2-eb6b9e546013"}),
        (q(SID, "stanza-id"), {"id": f"sid-{BOB}", "by": BOB}),
    ]
    for res in (b, c):
        inner = unwrap(await res.message(), "sent")
        assert [(ch.tag, ch.attrib) for ch in inner] == expected[:2]


# ---- a real client ------------------------------------------------------------------------
async def test_slixmpp_carbons(server: Server) -> None:
    phone = await connect(server, f"{ALICE}/phone")
    laptop = await connect(server, f"{ALICE}/laptop")
    bob = await connect(server, f"{BOB}/pc")
    try:
        received: asyncio.Queue[Any] = asyncio.Queue()
        sent: asyncio.Queue[Any] = asyncio.Queue()
        for client in (phone, laptop):
            client.register_plugin("xep_0280")
            await client.plugin["xep_0280"].enable(timeout=5)
        laptop.add_event_handler("carbon_received", received.put_nowait)
        laptop.add_event_handler("carbon_sent", sent.put_nowait)
        bob.send_message(mto=f"{ALICE}/phone", mbody="to the phone", mtype="chat")
        msg = await asyncio.wait_for(received.get(), 5)
        assert msg["carbon_received"]["body"] == "to the phone"
        assert msg["carbon_received"]["from"] == f"{BOB}/pc"
        phone.send_message(mto=f"{BOB}/pc", mbody="from the phone", mtype="chat")
        msg = await asyncio.wait_for(sent.get(), 5)
        assert msg["carbon_sent"]["body"] == "from the phone"
        assert msg["carbon_sent"]["to"] == f"{BOB}/pc"
    finally:
        await disconnect(phone, laptop, bob)


async def test_received_copies_carry_the_archive_stanza_id(tmp_path: Path) -> None:
    """With the real archive (default modules): the <stanza-id/> the archive gives the
    message (XEP-0359) is the same in the original and in the received copy."""
    srv = await start_server(tmp_path / "mam")
    try:
        for name in ("alice", "bob"):
            await add_user(srv, name)
        a = await login_resource(srv, "alice", "A", priority=5)
        b = await login_resource(srv, "alice", "B", priority=0)
        bob = await login_resource(srv, "bob", "pc", presence=True)
        await enable(b)
        bob.send(f"<message to='{a.jid}' id='s1' type='chat'><body>archived</body></message>")
        original = await a.message()
        inner = unwrap(await b.message(), "received")
        ids = [ch.attrib for ch in original if ch.tag == q(SID, "stanza-id")]
        assert len(ids) == 1 and ids[0]["by"] == ALICE and ids[0]["id"]
        assert [ch.attrib for ch in inner if ch.tag == q(SID, "stanza-id")] == ids
        # XEP-0313 §3.5: the sent copy carries the sender's archive id; the contact never
        # sees it (bob gets only the id of his own archive).
        a.send(f"<message to='{bob.jid}' id='s2' type='chat'><body>mine</body></message>")
        got = await bob.message()
        assert [ch.attrib["by"] for ch in got if ch.tag == q(SID, "stanza-id")] == [BOB]
        sent = unwrap(await b.message(), "sent")
        sent_ids = [ch.attrib for ch in sent if ch.tag == q(SID, "stanza-id")]
        assert len(sent_ids) == 1 and sent_ids[0]["by"] == ALICE
        # The id is the one the archive holds for that message.
        alice_archive = await srv.storage.archive.query("alice", "example.org", ArchiveFilter(), 50)
        assert sent_ids[0]["id"] in [m.id for m in alice_archive.messages]
        for res in (a, b, bob):
            await res.close()
    finally:
        await srv.stop()
