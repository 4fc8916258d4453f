"""XEP-0045 multi-user chat over real sockets: raw XML clients where the exact stanzas
matter, slixmpp's XEP-0045 plugin for a real client's view."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.server import Server
from dovecote.transport.tcp import XMLStreamProtocol
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
    return (
        el.tag == MESSAGE
        and el.find(q(CLIENT, "subject")) is not None
        and el.find(q(CLIENT, "body")) is None
    )


def presence_from(jid: str, type_: str | None = None):
    return lambda e: e.tag == PRESENCE and e.get("from") == jid and e.get("type") == type_


def groupchat_from(jid: str):
    return lambda e: (
        e.tag == MESSAGE
        and e.get("from") == jid
        and e.get("type") == "groupchat"
        and e.find(q(CLIENT, "body")) is not None
    )


async def join(
    res: Resource, nick: str, room: str = ROOM, extra: str = "", *, x: bool = True
) -> ET.Element:
    """Enter: returns the own presence (status 110); waits for the subject too."""
    inner = f"<x xmlns='{MUC}'>{extra}</x>" if x else ""
    res.send(f"<presence to='{room}/{nick}'>{inner}</presence>")
    own = await res.take(
        lambda e: (
            e.tag == PRESENCE
            and e.get("from") == f"{room}/{nick}"
            and ("110" in codes(e) or e.get("type") == "error")
        )
    )
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
    res.send(
        f"<message to='{room}' type='groupchat' id='{res.next_id()}'><body>{body}</body></message>"
    )


# ---- tests --------------------------------------------------------------------------------
async def test_disco_of_server_and_service(server: Server) -> None:
    alice = await login_resource(server, "alice")
    items = await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", "get", DOMAIN)
    jids = [i.get("jid") for i in items.iter(q(DISCO_ITEMS, "item"))]
    assert MUC_DOMAIN in jids
    info = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", "get", MUC_DOMAIN)
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and (identity.get("category"), identity.get("type")) == (
        "conference",
        "text",
    )
    features = {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    assert {
        MUC,
        "muc_persistent",
        "muc_membersonly",
        OCCUPANT_ID,
        "urn:xmpp:message-moderate:1",
    } <= features
    await alice.close()


async def test_join_message_leave_with_status_codes(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    own = await create(alice, "Alice")
    assert item(own) == {"affiliation": "owner", "role": "moderator", "jid": alice.jid}
    own = await join(bob, "Bob")
    assert codes(own) == {"110", "170"}  # 170: the room is archived
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


async def test_locked_room_nick_change_conflicts_and_multi_session(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    bob2 = await login_resource(server, "bob", "second")
    carol = await login_resource(server, "carol")
    own = await join(alice, "Alice")
    assert {"110", "201"} <= codes(own)
    # §10.1.3: locked until configured.
    assert await join_error(bob, "Bob") == "item-not-found"
    assert (await alice.request(instant_form(), "set", ROOM)).get("type") == "result"
    await join(bob, "Bob")
    # §7.2.9: the nick of someone else.
    assert await join_error(carol, "Bob") == "conflict"
    # No nick at all: jid-malformed; a too long nick too.
    carol.send(f"<presence to='{ROOM}'><x xmlns='{MUC}'/></presence>")
    err = await carol.take(lambda e: e.tag == PRESENCE and e.get("type") == "error")
    assert error_condition(err)[1] == "jid-malformed"
    assert await join_error(carol, "x" * 21) == "jid-malformed"
    # A second resource of Bob shares the nick: one occupant, Alice sees no new presence.
    await alice.take(presence_from(f"{ROOM}/Bob"))
    own2 = await join(bob2, "Bob")
    assert "110" in codes(own2)
    await alice.assert_none(presence_from(f"{ROOM}/Bob"))
    say(alice, "to both")
    await bob.take(groupchat_from(f"{ROOM}/Alice"))
    await bob2.take(groupchat_from(f"{ROOM}/Alice"))
    # One resource leaves: only it hears; the occupant stays.
    bob2.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    await bob2.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    await alice.assert_none(presence_from(f"{ROOM}/Bob", "unavailable"))
    # §7.6 nick change: 303 with the new nick, then the new presence.
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    old = await alice.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    assert codes(old) == {"303"} and item(old)["nick"] == "Robert"
    new = await alice.take(presence_from(f"{ROOM}/Robert"))
    assert item(new)["role"] == "participant"
    mine = await bob.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    assert codes(mine) == {"303", "110"}
    await bob.take(presence_from(f"{ROOM}/Robert"))
    # Nick change onto a used nick: conflict.
    bob.send(f"<presence to='{ROOM}/Alice'/>")
    err = await bob.take(lambda e: e.tag == PRESENCE and e.get("type") == "error")
    assert error_condition(err)[1] == "conflict"
    for res in (alice, bob, bob2, carol):
        await res.close()


async def test_history_on_join_and_subject(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice")
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Topic</subject></message>")
    subject = await alice.take(is_subject)
    assert subject.findtext(q(CLIENT, "subject")) == "Topic"
    for n in range(5):
        say(alice, f"m{n}")
        await alice.take(groupchat_from(f"{ROOM}/Alice"))
    # maxstanzas
    bob.send(f"<presence to='{ROOM}/Bob'><x xmlns='{MUC}'><history maxstanzas='2'/></x></presence>")
    await bob.take(is_self_presence)
    got = [await bob.take(groupchat_from(f"{ROOM}/Alice")) for _ in range(2)]
    assert [m.findtext(q(CLIENT, "body")) for m in got] == ["m3", "m4"]
    delay = got[0].find(q(DELAY, "delay"))
    assert delay is not None and delay.get("from") == ROOM
    subject = await bob.take(is_subject)  # the subject after the history (§7.2.15)
    assert subject.findtext(q(CLIENT, "subject")) == "Topic"
    assert subject.get("from") == f"{ROOM}/Alice"
    await bob.assert_none(groupchat_from(f"{ROOM}/Alice"))
    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    await bob.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    # since: in the future -> nothing
    bob.send(
        f"<presence to='{ROOM}/Bob'><x xmlns='{MUC}'>"
        "<history since='2999-01-01T00:00:00Z'/></x></presence>"
    )
    await bob.take(is_self_presence)
    await bob.take(is_subject)
    await bob.assert_none(groupchat_from(f"{ROOM}/Alice"))
    # A participant may not change the subject (changesubject off): forbidden; too long:
    bob.send(f"<message to='{ROOM}' type='groupchat'><subject>mine</subject></message>")
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "forbidden"
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>{'s' * 101}</subject></message>")
    err = await alice.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "not-acceptable"
    await alice.close()
    await bob.close()


async def test_config_round_trip_and_bad_forms(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice")
    form = await alice.request(f"<query xmlns='{MUC_OWNER}'/>", "get", ROOM)
    fields = {
        f.get("var"): [v.text for v in f.findall(q(DATA, "value"))]
        for f in form.iter(q(DATA, "field"))
    }
    assert fields["FORM_TYPE"] == ["http://jabber.org/protocol/muc#roomconfig"]
    assert fields["muc#roomconfig_persistentroom"] == ["0"]
    assert fields["muc#roomconfig_roomowners"] == [f"alice@{DOMAIN}"]
    submit = (
        f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
        "<field var='muc#roomconfig_roomname'><value>The Room</value></field>"
        "<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
        "<field var='muc#roomconfig_whois'><value>anyone</value></field>"
        "<field var='muc#roomconfig_maxusers'><value>30</value></field>"
        "</x></query>"
    )
    assert (await alice.request(submit, "set", ROOM)).get("type") == "result"
    changed = await alice.take(lambda e: e.tag == MESSAGE and "104" in codes(e))
    assert codes(changed) == {"104", "172"}
    form = await alice.request(f"<query xmlns='{MUC_OWNER}'/>", "get", ROOM)
    fields = {
        f.get("var"): [v.text for v in f.findall(q(DATA, "value"))]
        for f in form.iter(q(DATA, "field"))
    }
    assert fields["muc#roomconfig_roomname"] == ["The Room"]
    assert fields["muc#roomconfig_persistentroom"] == ["1"]
    assert fields["muc#roomconfig_whois"] == ["anyone"]
    assert fields["muc#roomconfig_maxusers"] == ["30"]
    # Room disco: identity with the name, features, roominfo with the occupant count.
    info = await bob.request(f"<query xmlns='{DISCO_INFO}'/>", "get", ROOM)
    features = {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    assert {"muc_persistent", "muc_nonanonymous", "muc_public", "muc_open"} <= features
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and identity.get("name") == "The Room"
    occupants = [f for f in info.iter(q(DATA, "field")) if f.get("var") == "muc#roominfo_occupants"]
    assert occupants[0].findtext(q(DATA, "value")) == "1"
    items = await bob.request(f"<query xmlns='{DISCO_ITEMS}'/>", "get", MUC_DOMAIN)
    listed = {i.get("jid"): i.get("name") for i in items.iter(q(DISCO_ITEMS, "item"))}
    assert listed == {ROOM: "The Room"}
    # Bad input.
    bad = {
        "<field var='muc#roomconfig_colour'><value>blue</value></field>": "not-acceptable",
        "<field var='muc#roomconfig_maxusers'><value>100000</value></field>": "not-acceptable",
        "<field var='muc#roomconfig_maxusers'><value>many</value></field>": "bad-request",
        "<field var='muc#roomconfig_persistentroom'><value>maybe</value></field>": "bad-request",
        "<field var='muc#roomconfig_whois'><value>nobody</value></field>": "not-acceptable",
        "<field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>": (
            "not-acceptable"
        ),
        "<field var='muc#roomconfig_roomowners'></field>": "conflict",
        "<field var='muc#roomconfig_roomadmins'><value>@@</value></field>": "jid-malformed",
        "<field><value>no var</value></field>": "bad-request",
    }
    for fields_xml, condition in bad.items():
        result = await alice.request(
            f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>{fields_xml}</x></query>",
            "set",
            ROOM,
        )
        assert error_condition(result)[1] == condition, fields_xml
    # Not an owner: forbidden.
    result = await bob.request(f"<query xmlns='{MUC_OWNER}'/>", "get", ROOM)
    assert error_condition(result)[1] == "forbidden"
    await alice.close()
    await bob.close()


async def test_password_and_members_only(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    carol = await login_resource(server, "carol")
    await create(alice, "Alice", **cfg(passwordprotectedroom="1", roomsecret="sesame"))
    assert await join_error(bob, "Bob") == "not-authorized"
    assert await join_error(bob, "Bob", extra="<password>wrong</password>") == "not-authorized"
    await join(bob, "Bob", extra="<password>sesame</password>")
    # Members-only: Carol needs membership; Bob (present, not a member) is removed (322).
    form = (
        f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>"
        "<field var='muc#roomconfig_membersonly'><value>1</value></field></x></query>"
    )
    assert (await alice.request(form, "set", ROOM)).get("type") == "result"
    removed = await bob.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    assert "322" in codes(removed)
    assert (
        await join_error(carol, "Carol", extra="<password>sesame</password>")
        == "registration-required"
    )
    result = await admin(alice, f"<item affiliation='member' jid='carol@{DOMAIN}' nick='Caz'/>")
    assert result.get("type") == "result"
    await join(carol, "Carol", extra="<password>sesame</password>")
    members = await admin(alice, "<item affiliation='member'/>", "get")
    listed = [dict(i.attrib) for i in members.iter(q(MUC_ADMIN, "item"))]
    assert listed == [{"affiliation": "member", "jid": f"carol@{DOMAIN}", "nick": "Caz"}]
    # Removing Carol's membership removes her (321).
    assert (await admin(alice, f"<item affiliation='none' jid='carol@{DOMAIN}'/>")).get(
        "type"
    ) == "result"
    removed = await carol.take(presence_from(f"{ROOM}/Carol", "unavailable"))
    assert "321" in codes(removed)
    for res in (alice, bob, carol):
        await res.close()


async def test_roles_affiliations_and_their_errors(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    carol = await login_resource(server, "carol")
    dave = await login_resource(server, "dave")
    await create(alice, "Alice", **cfg(moderatedroom="1"))
    own = await join(bob, "Bob")
    assert item(own)["role"] == "visitor"  # moderated room, no affiliation
    say(bob, "may I?")
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "forbidden"
    # Visitor cannot kick; unknown nick; malformed JID.
    assert error_condition(await admin(bob, "<item nick='Alice' role='none'/>"))[1] == "forbidden"
    assert (
        error_condition(await admin(alice, "<item nick='Nobody' role='participant'/>"))[1]
        == "item-not-found"
    )
    assert (
        error_condition(await admin(alice, "<item jid='@bad@' affiliation='member'/>"))[1]
        == "jid-malformed"
    )
    assert (
        error_condition(await admin(alice, "<item jid='x@y' affiliation='emperor'/>"))[1]
        == "bad-request"
    )
    # Voice grant (§8.3).
    assert (await admin(alice, "<item nick='Bob' role='participant'/>")).get("type") == "result"
    voiced = await bob.take(lambda e: is_self_presence(e) and item(e).get("role") == "participant")
    assert voiced is not None
    voice = await admin(alice, "<item role='participant'/>", "get")
    assert [i.get("nick") for i in voice.iter(q(MUC_ADMIN, "item"))] == ["Bob"]
    # Admin: Bob becomes admin (moderator); an admin may not touch an owner.
    assert (await admin(alice, f"<item affiliation='admin' jid='bob@{DOMAIN}'/>")).get(
        "type"
    ) == "result"
    await bob.take(lambda e: is_self_presence(e) and item(e).get("role") == "moderator")
    assert (
        error_condition(await admin(bob, f"<item affiliation='outcast' jid='alice@{DOMAIN}'/>"))[1]
        == "not-allowed"
    )
    assert (
        error_condition(await admin(bob, f"<item affiliation='owner' jid='carol@{DOMAIN}'/>"))[1]
        == "forbidden"
    )
    assert error_condition(await admin(bob, "<item nick='Alice' role='none'/>"))[1] == "not-allowed"
    # Kick (307) and ban (301).
    await join(carol, "Carol")
    assert (await admin(bob, "<item nick='Carol' role='none'><reason>out</reason></item>")).get(
        "type"
    ) == "result"
    kicked = await carol.take(presence_from(f"{ROOM}/Carol", "unavailable"))
    assert codes(kicked) == {"307", "110"}
    assert (
        kicked.findtext(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'item')}/{q(MUC_USER, 'reason')}")
        == "out"
    )
    await join(carol, "Carol")
    assert (await admin(bob, f"<item affiliation='outcast' jid='carol@{DOMAIN}'/>")).get(
        "type"
    ) == "result"
    banned = await carol.take(presence_from(f"{ROOM}/Carol", "unavailable"))
    assert "301" in codes(banned)
    assert await join_error(carol, "Carol") == "forbidden"
    bans = await admin(bob, "<item affiliation='outcast'/>", "get")
    assert [i.get("jid") for i in bans.iter(q(MUC_ADMIN, "item"))] == [f"carol@{DOMAIN}"]
    # Ban list changed several at once.
    result = await admin(
        alice,
        f"<item affiliation='none' jid='carol@{DOMAIN}'/>"
        f"<item affiliation='outcast' jid='dave@{DOMAIN}'/>",
    )
    assert result.get("type") == "result"
    assert await join_error(dave, "Dave") == "forbidden"
    # The last owner cannot go.
    assert (
        error_condition(await admin(alice, f"<item affiliation='member' jid='alice@{DOMAIN}'/>"))[1]
        == "conflict"
    )
    # Owner lists are for owners; participants get forbidden.
    assert (
        error_condition(await admin(carol, "<item affiliation='owner'/>", "get"))[1] == "forbidden"
    )
    owners = await admin(alice, "<item affiliation='owner'/>", "get")
    assert [i.get("jid") for i in owners.iter(q(MUC_ADMIN, "item"))] == [f"alice@{DOMAIN}"]
    for res in (alice, bob, carol, dave):
        await res.close()


async def test_persistence_across_restart(data_dir: Path) -> None:
    srv = await muc_server(data_dir)
    for name in ("alice", "bob", "carol"):
        await add_user(srv, name)
    alice = await login_resource(srv, "alice")
    await create(alice, "Alice", **cfg(persistentroom="1", roomname="Kept", membersonly="1"))
    assert (await admin(alice, f"<item affiliation='member' jid='bob@{DOMAIN}'/>")).get(
        "type"
    ) == "result"
    assert (
        await admin(
            alice, f"<item affiliation='outcast' jid='carol@{DOMAIN}'><reason>spam</reason></item>"
        )
    ).get("type") == "result"
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Kept topic</subject></message>")
    await alice.take(is_subject)
    # A temporary room next to it.
    await create(alice, "Alice", room=f"temp@{MUC_DOMAIN}")
    own_id = None
    say(alice, "x")
    msg = await alice.take(groupchat_from(f"{ROOM}/Alice"))
    own_id = msg.find(q(OCCUPANT_ID, "occupant-id")).get("id")  # type: ignore[union-attr]
    await alice.close()
    await asyncio.sleep(0.2)
    await srv.stop()

    srv = await muc_server(data_dir)
    try:
        alice = await login_resource(srv, "alice")
        bob = await login_resource(srv, "bob")
        carol = await login_resource(srv, "carol")
        items = await bob.request(f"<query xmlns='{DISCO_ITEMS}'/>", "get", MUC_DOMAIN)
        assert {i.get("jid"): i.get("name") for i in items.iter(q(DISCO_ITEMS, "item"))} == {
            ROOM: "Kept"
        }
        await join(bob, "Bob")  # a member
        assert await join_error(carol, "Carol") == "forbidden"  # still banned
        alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{MUC}'/></presence>")
        own = await alice.take(lambda e: is_self_presence(e) and e.get("from") == f"{ROOM}/Alice")
        assert item(own)["affiliation"] == "owner"
        # §7.2.15: the stored subject, after the (empty) history.
        subject = await alice.take(is_subject)
        assert subject.findtext(q(CLIENT, "subject")) == "Kept topic"
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>back</body></message>")
        msg = await alice.take(groupchat_from(f"{ROOM}/Alice"))
        # XEP-0421: the same occupant id after a restart.
        assert msg.find(q(OCCUPANT_ID, "occupant-id")).get("id") == own_id  # type: ignore[union-attr]
        bans = await admin(alice, "<item affiliation='outcast'/>", "get")
        ban = bans.find(f"{q(MUC_ADMIN, 'query')}/{q(MUC_ADMIN, 'item')}")
        assert ban is not None and ban.findtext(q(MUC_ADMIN, "reason")) == "spam"
        # The temporary room is gone.
        info = await bob.request(f"<query xmlns='{DISCO_INFO}'/>", "get", f"temp@{MUC_DOMAIN}")
        assert error_condition(info)[1] == "item-not-found"
        for res in (alice, bob, carol):
            await res.close()
    finally:
        await srv.stop()


async def test_private_messages_invitations_and_direct_invites(server: Server) -> None:
    alice = await login_resource(server, "alice", presence=True)
    bob = await login_resource(server, "bob", presence=True)
    carol = await login_resource(server, "carol", presence=True)
    await create(alice, "Alice", **cfg(membersonly="1"))
    assert (await admin(alice, f"<item affiliation='member' jid='bob@{DOMAIN}'/>")).get(
        "type"
    ) == "result"
    await join(bob, "Bob")
    # §7.5 private message, with <x xmlns=muc#user/>.
    bob.send(f"<message to='{ROOM}/Alice' type='chat' id='pm1'><body>psst</body></message>")
    pm = await alice.take(lambda e: e.tag == MESSAGE and e.get("type") == "chat")
    assert pm.get("from") == f"{ROOM}/Bob" and pm.findtext(q(CLIENT, "body")) == "psst"
    assert pm.find(q(MUC_USER, "x")) is not None
    bob.send(f"<message to='{ROOM}/Alice' type='groupchat'><body>x</body></message>")
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "bad-request"
    bob.send(f"<message to='{ROOM}/Nobody' type='chat'><body>x</body></message>")
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "item-not-found"
    carol.send(f"<message to='{ROOM}/Alice' type='chat'><body>x</body></message>")
    err = await carol.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "not-acceptable"
    # §7.8.2: Bob (member, allowinvites off) may not invite to a members-only room.
    bob.send(
        f"<message to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='carol@{DOMAIN}'/></x></message>"
    )
    err = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(err)[1] == "forbidden"
    # The owner invites Carol: she gets the invitation and becomes a member.
    alice.send(
        f"<message to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='carol@{DOMAIN}'>"
        "<reason>join us</reason></invite></x></message>"
    )
    inv = await carol.take(lambda e: e.tag == MESSAGE and e.find(q(MUC_USER, "x")) is not None)
    assert inv.get("from") == ROOM
    invite = inv.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'invite')}")
    assert invite is not None and invite.findtext(q(MUC_USER, "reason")) == "join us"
    await join(carol, "Carol")
    # Decline goes back to the inviter.
    carol.send(
        f"<message to='{ROOM}'><x xmlns='{MUC_USER}'><decline to='{alice.bare}'>"
        "<reason>no</reason></decline></x></message>"
    )
    dec = await alice.take(
        lambda e: (
            e.tag == MESSAGE and e.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'decline')}") is not None
        )
    )
    assert dec.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'decline')}").get("from") == carol.bare  # type: ignore[union-attr]
    # XEP-0249 direct invitation: a message between users, routed as any.
    alice.send(f"<message to='{bob.bare}'><x xmlns='jabber:x:conference' jid='{ROOM}'/></message>")
    direct = await bob.take(
        lambda e: e.tag == MESSAGE and e.find(q("jabber:x:conference", "x")) is not None
    )
    assert direct.get("from") == alice.jid
    for res in (alice, bob, carol):
        await res.close()


async def test_destroy_with_alternate_venue(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice", **cfg(persistentroom="1"))
    await join(bob, "Bob")
    result = await bob.request(f"<query xmlns='{MUC_OWNER}'><destroy/></query>", "set", ROOM)
    assert error_condition(result)[1] == "forbidden"
    result = await alice.request(
        f"<query xmlns='{MUC_OWNER}'><destroy jid='new@{MUC_DOMAIN}'>"
        "<reason>moved</reason></destroy></query>",
        "set",
        ROOM,
    )
    assert result.get("type") == "result"
    gone = await bob.take(presence_from(f"{ROOM}/Bob", "unavailable"))
    destroy = gone.find(f"{q(MUC_USER, 'x')}/{q(MUC_USER, 'destroy')}")
    assert destroy is not None and destroy.get("jid") == f"new@{MUC_DOMAIN}"
    assert destroy.findtext(q(MUC_USER, "reason")) == "moved"
    assert item(gone) == {"affiliation": "none", "role": "none"}
    assert await server.storage.muc.load_room(MUC_DOMAIN, "room") is None
    info = await bob.request(f"<query xmlns='{DISCO_INFO}'/>", "get", ROOM)
    assert error_condition(info)[1] == "item-not-found"
    await alice.close()
    await bob.close()


async def test_moderation_and_retraction(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice")
    await join(bob, "Bob")
    say(bob, "bad words")
    msg = await alice.take(groupchat_from(f"{ROOM}/Bob"))
    sid = msg.find(q(SID, "stanza-id")).get("id")  # type: ignore[union-attr]
    await bob.take(groupchat_from(f"{ROOM}/Bob"))
    moderate = (
        f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sid}'>"
        "<retract xmlns='urn:xmpp:message-retract:1'/><reason>spam</reason></moderate>"
    )
    assert error_condition(await bob.request(moderate, "set", ROOM))[1] == "forbidden"
    unknown = moderate.replace(f"id='{sid}'", "id='nope'")
    assert error_condition(await alice.request(unknown, "set", ROOM))[1] == "item-not-found"
    assert (await alice.request(moderate, "set", ROOM)).get("type") == "result"
    for res in (alice, bob):
        retraction = await res.take(
            lambda e: (
                e.tag == MESSAGE and e.find(q("urn:xmpp:message-retract:1", "retract")) is not None
            )
        )
        retract = retraction.find(q("urn:xmpp:message-retract:1", "retract"))
        assert retract is not None and retract.get("id") == sid and retraction.get("from") == ROOM
        moderated = retract.find(q("urn:xmpp:message-moderate:1", "moderated"))
        assert moderated is not None and moderated.get("by") == f"{ROOM}/Alice"
        assert retract.findtext(q("urn:xmpp:message-retract:1", "reason")) == "spam"
    # The history now holds the tombstone, not the words.
    carol = await login_resource(server, "carol")
    carol.send(f"<presence to='{ROOM}/Carol'><x xmlns='{MUC}'/></presence>")
    await carol.take(is_self_presence)
    await carol.take(is_subject)
    history = [e for e in carol.backlog if e.tag == MESSAGE and e.get("from") == f"{ROOM}/Bob"]
    assert history and history[0].find(q(CLIENT, "body")) is None
    assert history[0].find(q("urn:xmpp:message-retract:1", "retracted")) is not None
    for res in (alice, bob, carol):
        await res.close()


async def test_self_ping_and_iq_forwarding(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice")
    ping = "<ping xmlns='urn:xmpp:ping'/>"
    # XEP-0410: not joined -> not-acceptable; joined -> result from the occupant JID.
    result = await bob.request(ping, "get", f"{ROOM}/Bob")
    assert error_condition(result)[1] == "not-acceptable"
    await join(bob, "Bob")
    result = await bob.request(ping, "get", f"{ROOM}/Bob")
    assert result.get("type") == "result" and result.get("from") == f"{ROOM}/Bob"
    # An IQ to another occupant is forwarded to one of its sessions, the answer comes back.
    bob.send(f"<iq type='get' id='v1' to='{ROOM}/Alice'><query xmlns='jabber:iq:version'/></iq>")
    forwarded = await alice.take(lambda e: e.tag == q(CLIENT, "iq") and e.get("type") == "get")
    assert forwarded.get("from") == f"{ROOM}/Bob"
    alice.send(
        f"<iq type='result' id='{forwarded.get('id')}' to='{ROOM}/Bob'>"
        "<query xmlns='jabber:iq:version'><name>X</name></query></iq>"
    )
    answer = await bob.iq("v1")
    assert answer.get("type") == "result" and answer.get("from") == f"{ROOM}/Alice"
    assert (
        answer.findtext(f"{q('jabber:iq:version', 'query')}/{q('jabber:iq:version', 'name')}")
        == "X"
    )
    await alice.close()
    await bob.close()


async def test_registration_and_reserved_nick(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    carol = await login_resource(server, "carol")
    await create(alice, "Alice")
    form = await bob.request("<query xmlns='jabber:iq:register'/>", "get", ROOM)
    assert any(f.get("var") == "muc#register_roomnick" for f in form.iter(q(DATA, "field")))
    submit = (
        f"<query xmlns='jabber:iq:register'><x xmlns='{DATA}' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#register</value></field>"
        "<field var='muc#register_roomnick'><value>Bobby</value></field></x></query>"
    )
    assert (await bob.request(submit, "set", ROOM)).get("type") == "result"
    # §7.11: the reserved nick by disco.
    info = await bob.request(f"<query xmlns='{DISCO_INFO}' node='x-roomuser-item'/>", "get", ROOM)
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and identity.get("name") == "Bobby"
    # Someone else may not take it (§7.2.9), nor register it.
    assert await join_error(carol, "Bobby") == "conflict"
    assert error_condition(await carol.request(submit, "set", ROOM))[1] == "conflict"
    members = await admin(alice, "<item affiliation='member'/>", "get")
    assert [(i.get("jid"), i.get("nick")) for i in members.iter(q(MUC_ADMIN, "item"))] == [
        (bob.bare, "Bobby")
    ]
    for res in (alice, bob, carol):
        await res.close()


async def test_voice_request(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice", **cfg(moderatedroom="1"))
    await join(bob, "Bob")
    bob.send(
        f"<message to='{ROOM}'><x xmlns='{DATA}' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
        "<field var='muc#role'><value>participant</value></field></x></message>"
    )
    request = await alice.take(lambda e: e.tag == MESSAGE and e.find(q(DATA, "x")) is not None)
    fields = {f.get("var"): f.findtext(q(DATA, "value")) for f in request.iter(q(DATA, "field"))}
    assert fields["muc#roomnick"] == "Bob" and fields["muc#jid"] == bob.jid
    alice.send(
        f"<message to='{ROOM}'><x xmlns='{DATA}' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>"
        "<field var='muc#role'><value>participant</value></field>"
        "<field var='muc#roomnick'><value>Bob</value></field>"
        "<field var='muc#request_allow'><value>true</value></field></x></message>"
    )
    await bob.take(lambda e: is_self_presence(e) and item(e).get("role") == "participant")
    await alice.close()
    await bob.close()


async def test_fifty_joins_at_login_and_disconnect_leaves(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    rooms = [f"r{n}@{MUC_DOMAIN}" for n in range(50)]
    for room in rooms:
        await create(alice, "Alice", room=room)
    for room in rooms:
        bob.send(
            f"<presence to='{room}/Bob'><x xmlns='{MUC}'><history maxstanzas='0'/></x></presence>"
        )
    # Every join is answered (the take's timeout bounds a stall; no wall-clock assertion).
    subjects = [await bob.take(is_subject, timeout=10) for _ in rooms]
    assert sorted(s.get("from", "") for s in subjects) == sorted(rooms)
    # Bob's client goes away without leaving: the rooms hear he is gone (RFC 6121 §4.6).
    await bob.close()
    for room in rooms[:3]:
        await alice.take(presence_from(f"{room}/Bob", "unavailable"), timeout=10)
    await alice.close()


async def test_big_subjects(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    await create(alice, "Alice")
    await join(bob, "Bob")
    # Over max_stanza_size: a stream error for that client only, the room goes on.
    big = "s" * (server.config.limits.max_stanza_size + 10)
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>{big}</subject></message>")
    condition = await alice.raw.stream_error(10)
    assert condition == "policy-violation"
    gone = await bob.take(presence_from(f"{ROOM}/Alice", "unavailable"))
    assert gone is not None
    say(bob, "still on")
    await bob.take(groupchat_from(f"{ROOM}/Bob"))
    await bob.close()


async def test_slixmpp_clients(server: Server) -> None:
    alice = await login_resource(server, "alice")
    await create(alice, "Alice")
    clients = [await connect(server, f"{name}@{DOMAIN}") for name in ("bob", "carol")]
    for client in clients:
        client.register_plugin("xep_0045")
    try:
        for client, nick in zip(clients, ("Bob", "Carol"), strict=True):
            await asyncio.wait_for(
                client.plugin["xep_0045"].join_muc_wait(ROOM, nick, maxstanzas=0), 10
            )
        roster = clients[0].plugin["xep_0045"].get_roster(ROOM)
        assert set(roster) >= {"Alice", "Bob"}
        clients[1].send_message(mto=ROOM, mbody="from carol", mtype="groupchat")
        while True:
            msg = await asyncio.wait_for(clients[0].messages.get(), 5)
            if msg["type"] == "groupchat" and msg["body"] == "from carol":
                break
        assert msg["from"].resource == "Carol"
        assert msg["occupant-id"]["id"] if "occupant-id" in msg.plugins else True
    finally:
        await disconnect(*clients)
        await alice.close()


MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"


async def test_room_archive_queries_with_paging(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    carol = await login_resource(server, "carol")
    await create(alice, "Alice")
    info = await bob.request(f"<query xmlns='{DISCO_INFO}'/>", "get", ROOM)
    assert MAM in {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    await join(bob, "Bob")
    ids = []
    for n in range(5):
        say(bob, f"n{n}")
        msg = await bob.take(groupchat_from(f"{ROOM}/Bob"))
        ids.append(msg.find(q(SID, "stanza-id")).get("id"))  # type: ignore[union-attr]
    await asyncio.sleep(0.2)
    # The whole archive, then pages of 2 (XEP-0059).
    fin = await bob.request(f"<query xmlns='{MAM}' queryid='all'/>", "set", ROOM)
    assert fin.get("type") == "result"
    results = [
        await bob.take(lambda e: e.tag == MESSAGE and e.find(q(MAM, "result")) is not None)
        for _ in ids
    ]
    assert [r.find(q(MAM, "result")).get("id") for r in results] == ids  # type: ignore[union-attr]
    inner = results[0].find(f"{q(MAM, 'result')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
    assert inner is not None and inner.get("from") == f"{ROOM}/Bob"
    assert inner.findtext(q(CLIENT, "body")) == "n0", ET.tostring(results[0])
    assert results[0].get("from") == ROOM
    page = await bob.request(
        f"<query xmlns='{MAM}' queryid='p'><set xmlns='{RSM}'><max>2</max></set></query>",
        "set",
        ROOM,
    )
    last = page.findtext(f"{q(MAM, 'fin')}/{q(RSM, 'set')}/{q(RSM, 'last')}")
    assert last == ids[1]
    first_page = [
        await bob.take(lambda e: e.tag == MESSAGE and e.find(q(MAM, "result")) is not None)
        for _ in range(2)
    ]
    assert [r.find(q(MAM, "result")).get("id") for r in first_page] == ids[:2]  # type: ignore[union-attr]
    page = await bob.request(
        f"<query xmlns='{MAM}' queryid='p2'><set xmlns='{RSM}'><max>2</max>"
        f"<after>{last}</after></set></query>",
        "set",
        ROOM,
    )
    second = [
        await bob.take(lambda e: e.tag == MESSAGE and e.find(q(MAM, "result")) is not None)
        for _ in range(2)
    ]
    assert [r.find(q(MAM, "result")).get("id") for r in second] == ids[2:4]  # type: ignore[union-attr]
    # A moderated message leaves a tombstone in the archive.
    moderate = (
        f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{ids[0]}'>"
        "<retract xmlns='urn:xmpp:message-retract:1'/></moderate>"
    )
    assert (await alice.request(moderate, "set", ROOM)).get("type") == "result"
    await bob.request(
        f"<query xmlns='{MAM}' queryid='t'><set xmlns='{RSM}'><max>1</max></set></query>",
        "set",
        ROOM,
    )
    tomb = await bob.take(lambda e: e.tag == MESSAGE and e.find(q(MAM, "result")) is not None)
    inner = tomb.find(f"{q(MAM, 'result')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
    assert inner is not None and inner.find(q(CLIENT, "body")) is None
    assert inner.find(q("urn:xmpp:message-retract:1", "retracted")) is not None
    # Members-only room: a non-member outsider is refused.
    form = (
        f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>"
        "<field var='muc#roomconfig_membersonly'><value>1</value></field></x></query>"
    )
    assert (await alice.request(form, "set", ROOM)).get("type") == "result"
    refused = await carol.request(f"<query xmlns='{MAM}'/>", "set", ROOM)
    assert error_condition(refused)[1] == "forbidden"
    # Archiving off: no MAM feature, status 171 to the occupants.
    form = (
        f"<query xmlns='{MUC_OWNER}'><x xmlns='{DATA}' type='submit'>"
        "<field var='muc#roomconfig_enablearchiving'><value>0</value></field></x></query>"
    )
    assert (await alice.request(form, "set", ROOM)).get("type") == "result"
    notice = await alice.take(
        lambda e: e.tag == MESSAGE and "104" in codes(e) and "171" in codes(e)
    )
    assert notice is not None
    info = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", "get", ROOM)
    assert MAM not in {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    for res in (alice, bob, carol):
        await res.close()


async def test_occupants_are_told_when_the_service_shuts_down(data_dir: Path) -> None:
    """XEP-0045 §11.2 (service shut down): every occupant gets unavailable presence with
    status 332 before the server closes the streams."""
    srv = await muc_server(data_dir)
    await add_user(srv, "alice")
    await add_user(srv, "bob")
    alice = await login_resource(srv, "alice")
    bob = await login_resource(srv, "bob")
    await create(alice, "Alice")
    await join(bob, "Bob")
    await srv.stop()
    for res, nick in ((alice, "Alice"), (bob, "Bob")):
        gone = await res.take(presence_from(f"{ROOM}/{nick}", "unavailable"))
        assert {"110", "332"} <= codes(gone), ET.tostring(gone)
        assert item(gone)["role"] == "none"


async def test_broadcasts_are_serialized_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's design constraint: a groupchat message or a presence to N occupants is
    serialized once (per kind of connection), not N times (core/router.py Fanout)."""
    count = 12
    for n in range(count):
        await add_user(server, f"u{n}")
    users = [await login_resource(server, f"u{n}") for n in range(count)]
    await create(users[0], "n0")
    for n, res in enumerate(users[1:], 1):
        await join(res, f"n{n}", extra="<history maxstanzas='0'/>")
    for res in users:
        await res.drain()
    serialized: list[str] = []
    original = XMLStreamProtocol.serialize

    def counting(self: XMLStreamProtocol, element):  # type: ignore[no-untyped-def]
        serialized.append(element.tag)
        return original(self, element)

    monkeypatch.setattr(XMLStreamProtocol, "serialize", counting)
    say(users[3], "to everyone")
    for res in users:
        await res.take(groupchat_from(f"{ROOM}/n3"))
    assert serialized.count("message") == 1, serialized
    # A presence change: one serialization for the occupants, at most one more for the
    # variant with the real JID (moderators of a semi-anonymous room) and the 110 self copy.
    serialized.clear()
    users[5].send(f"<presence to='{ROOM}/n5'><show>away</show></presence>")
    for res in users:
        await res.take(presence_from(f"{ROOM}/n5"))
    assert serialized.count("presence") <= 3, serialized
    for res in users:
        await res.close()
