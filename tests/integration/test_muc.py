"""XEP-0045 multi-user chat over real sockets: raw XML clients where the exact stanzas
matter, slixmpp's XEP-0045 plugin for a real client's view."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.server import Server
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

MUC_DOMAIN = "conference.example.org"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = f"{MUC}#user"
MUC_ADMIN = f"{MUC}#admin"
MUC_OWNER = f"{MUC}#owner"
DATA = "jabber:x:data"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DELAY = "urn:xmpp:delay"
SID = "urn:xmpp:sid:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
ROOM = f"room@{MUC_DOMAIN}"
PRESENCE = q(CLIENT, "presence")
MESSAGE = q(CLIENT, "message")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def muc_server(data_dir: Path, **muc: object) -> Server:
    srv = await start_server(data_dir, muc={"domain": MUC_DOMAIN, **muc})
    return srv


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await muc_server(data_dir, max_subject_length=100, max_nick_length=20)
    for name in ("alice", "bob", "carol", "dave"):
        await add_user(srv, name)
    try:
        yield srv
    finally:
        await srv.stop()


# ---- helpers ---------------------------------------------------------------------------------
def codes(el: ET.Element) -> set[str]:
    x = el.find(q(MUC_USER, "x"))
    return {s.get("code", "") for s in x.findall(q(MUC_USER, "status"))} if x is not None else set()


def item(el: ET.Element) -> dict[str, str]:
    found = el.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'item')}")
    return dict(found.attrib) if found is not None else {}


def is_self_presence(el: ET.Element) -> bool:
    return el.tag == PRESENCE and "110" in codes(el)


def is_subject(el: ET.Element) -> bool:
    return el.tag == MESSAGE and el.find(q(CLIENT, "subject")) is not None and el.find(q(CLIENT, "body")) is None


def presence_from(jid: str, type_: str | None = None):  # noqa: ANN201
    return lambda e: e.tag == PRESENCE and e.get("from") == jid and e.get("type") == type_


def groupchat_from(jid: str):  # noqa: ANN201
    return lambda e: e.tag == MESSAGE and e.get("from") == jid and e.get("type") == "groupchat" and e.find(q(CLIENT, "body")) is not None


async def join(
    res: Resource, nick: str, room: str = ROOM, extra: str = "", *, x: bool = True
) -> ET.Element:
    """Enter: returns the own presence (status 110); waits for the subject too."""
    inner = f"<x xmlns='{MUC}'>{extra}</x>" if x else ""
    res.send(f"<presence to='{room}/{nick}'>{inner}</presence>")
    own = await res.take(lambda e: e.tag == PRESENCE and e.get("from") == f"{room}/{nick}" and ("110" in codes(e) or e.get("type") == "error"))
    if own.get("type") != "error":
        await res.take(lambda e: is_subject(e) and e.get("from", "").startswith(room))
    return own


async def join_error(res: Resource, nick: str, room: str = ROOM, extra: str = "") -> str | None:
    res.send(f"<presence to='{room}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>")
    el = await res.take(lambda e: e.tag == PRESENCE and e.get("type") == "error")
    return error_condition(el)[1]


def instant_form() -> str:
    return f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'/></query>"


async def create(res: Resource, nick: str = "owner", room: str = ROOM, **config: str) -> ET.Element:
    """Create the room (status 201) and configure it (instant when no options)."""
    own = await join(res, nick, room)
    assert {"110", "201"} <= codes(own), ET.tostring(own)
    fields = "".join(
        f"<field var='{var}'><value>{value}</value></field>" for var, value in config.items()
    )
    form = f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>{fields}</x></query>"
    result = await res.request(form, "set", room)
    assert result.get("type") == "result", ET.tostring(result)
    return own


def cfg(**values: str) -> dict[str, str]:
    return {f"muc#roomconfig_{k}": v for k, v in values.items()}


async def admin(res: Resource, items: str, type_: str = "set", room: str = ROOM) -> ET.Element:
    return await res.request(f"<query xmlns='{MUC_ADMIN}'>{items}</query>", type_, room)


def say(res: Resource, body: str, room: str = ROOM) -> None:
    res.send(f"<message to='{room}' type='groupchat' id='{res.next_id()}'><body>{body}</body></message>")


# ---- tests --------------------------------------------------------------------------------
async def test_disco_of_server_and_service(server: Server) -> None:
    alice = await login_resource(server, "alice")
    items = await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", "get", DOMAIN)
    jids = [i.get("jid") for i in items.iter(q(DISCO_ITEMS, "item"))]
    assert MUC_DOMAIN in jids
    info = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", "get", MUC_DOMAIN)
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and (identity.get("category"), identity.get("type")) == ("conference", "text")
    features = {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    assert {MUC, "muc_persistent", "muc_membersonly", OCCUPANT_ID, "urn:xmpp:message-moderate:1"} <= features
    await alice.close()


async def test_join_message_leave_with_status_codes(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    own = await create(alice, "Alice")
    assert item(own) == {"affiliation": "owner", "role": "moderator", "jid": alice.jid}
    own = await join(bob, "Bob")
    assert codes(own) == {"110"}
    assert item(own)["role"] == "participant" and item(own)["jid"] == bob.jid
    # Bob first received Alice's presence (semi-anonymous: no jid for a participant).
    first = [e for e in bob.backlog if e.tag == PRESENCE and e.get("from") == f"{ROOM}/Alice"]
    assert first == [] or "jid" not in item(first[0])
    seen = await alice.take(presence_from(f"{ROOM}/Bob"))
    assert item(seen)["jid"] == bob.jid  # moderators see real JIDs
    assert seen.find(q(OCCUPANT_ID, "occupant-id")) is not None
    # Groupchat: to everyone, from the nick, with stanza-id and occupant-id.
    bob.send(
        f"<message to='{ROOM}' type='groupchat' id='m1'><body>hi</body>"
        f"<stanza-id xmlns='{SID}' by='{ROOM}' id='forged'/>"
        f"<occupant-id xmlns='{OCCUPANT_ID}' id='forged'/></message>"
    )
    for res in (alice, bob):
        msg = await res.take(groupchat_from(f"{ROOM}/Bob"))
        assert msg.get("id") == "m1" and msg.get("to") == res.jid
        ids = msg.findall(q(SID, "stanza-id"))
        assert len(ids) == 1 and ids[0].get("by") == ROOM and ids[0].get("id") != "forged"
        occ = msg.findall(q(OCCUPANT_ID, "occupant-id"))
        assert len(occ) == 1 and occ[0].get("id") not in ("forged", "")
    # Leave: 110 to self, unavailable to the others.
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'><status>bye</status></presence>")
    gone = await bob.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    assert "110" in codes(gone) and item(gone)["role"] == "none"
    gone = await alice.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    assert "110" not in codes(gone) and gone.findtext(q(CLIENT, "status")) == "bye"
    # Not an occupant any more: not-acceptable.
    say(bob, "still here?")
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err) == ("modify", "not-acceptable")
    await alice.close()
    await bob.close()
