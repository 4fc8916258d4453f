"""XEP-0054 (vcard-temp) and XEP-0049 (private XML storage) with real clients over real
sockets, and their persistence across a server restart."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ElementBase

from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    STANZA_ERRORS,
    Client,
    RawClient,
    add_user,
    connect,
    disconnect,
    error_condition,
    q,
    raw_login,
    start_server,
)

MODULES = {"enabled": ["vcard", "private", "blocking"]}
VCARD = "vcard-temp"
PRIVATE = "jabber:iq:private"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
IQ = q(CLIENT, "iq")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await start_server(data_dir, modules=MODULES, vcard={"max_size": 8192})
    await add_user(srv, "alice")
    await add_user(srv, "bob")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for raw in opened:
        await raw.close()


async def login(
    server: Server, opened: list[RawClient], local: str, resource: str = "raw"
) -> RawClient:
    raw, _jid = await raw_login(server, local, resource)
    opened.append(raw)
    return raw


async def iq(
    raw: RawClient, iq_id: str, body: str, to: str | None = None, iq_type: str = "get"
) -> ET.Element:
    """Send an IQ and return the answer with the same id."""
    to_attr = f" to='{to}'" if to else ""
    raw.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{body}</iq>")
    return await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == iq_id)


def assert_error(el: ET.Element, error_type: str, condition: str) -> None:
    assert el.get("type") == "error", ET.tostring(el)
    assert error_condition(el) == (error_type, condition), ET.tostring(el)


async def test_server_advertises_the_features(server: Server) -> None:
    client = await connect(server, f"{ALICE}/disco", presence=False)
    try:
        info = await client.plugin["xep_0030"].get_info(jid=DOMAIN)
        features = set(info["disco_info"]["features"])
        assert {VCARD, PRIVATE, "urn:xmpp:blocking"} <= features
    finally:
        await disconnect(client)


# ---- XEP-0054 ----------------------------------------------------------------------------------
async def vcard_client(server: Server, jid: str) -> Client:
    client = await connect(server, jid, presence=False)
    client.register_plugin("xep_0054")
    return client


async def test_vcard_published_by_owner_is_read_by_owner_and_others(server: Server) -> None:
    alice = await vcard_client(server, f"{ALICE}/phone")
    bob = await vcard_client(server, f"{BOB}/laptop")
    try:
        vcard = alice.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice Liddell"
        vcard["NICKNAME"] = "alice"
        await alice.plugin["xep_0054"].publish_vcard(vcard)  # no 'to': the own account
        own = await alice.plugin["xep_0054"].get_vcard(ALICE)
        assert own["vcard_temp"]["FN"] == "Alice Liddell"
        # XEP-0054 §3.3: anyone may read it, the server answers for the account.
        other = await bob.plugin["xep_0054"].get_vcard(ALICE)
        assert str(other["from"]) == ALICE
        assert other["vcard_temp"]["FN"] == "Alice Liddell"
        assert other["vcard_temp"]["NICKNAME"] == ["alice"]
        # A new set replaces the whole vCard (§3.2: no partial updates).
        vcard = alice.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Alice"
        await alice.plugin["xep_0054"].publish_vcard(vcard, jid=ALICE)  # 'to' = own bare JID
        again = await bob.plugin["xep_0054"].get_vcard(ALICE)
        assert again["vcard_temp"]["FN"] == "Alice"
        assert not again["vcard_temp"]["NICKNAME"]
    finally:
        await disconnect(alice, bob)


async def test_vcard_is_kept_exactly(server: Server, raw_clients: list[RawClient]) -> None:
    alice = await login(server, raw_clients, "alice")
    bob = await login(server, raw_clients, "bob")
    body = (
        f"<vCard xmlns='{VCARD}' version='3.0'><FN>A &amp; B</FN><N><FAMILY>L</FAMILY>"
        "<GIVEN>A</GIVEN><MIDDLE/></N><x xmlns='urn:example:ext'>kept</x></vCard>"
    )
    el = await iq(alice, "s1", body, iq_type="set")
    assert el.get("type") == "result", ET.tostring(el)
    el = await iq(bob, "g1", f"<vCard xmlns='{VCARD}'/>", to=ALICE)
    assert el.get("type") == "result"
    assert el.get("from") == ALICE
    vcard = el.find(q(VCARD, "vCard"))
    assert vcard is not None and vcard.get("version") == "3.0"
    assert vcard.findtext(q(VCARD, "FN")) == "A & B"
    assert vcard.find(f"{q(VCARD, 'N')}/{q(VCARD, 'MIDDLE')}") is not None
    assert vcard.findtext(q("urn:example:ext", "x")) == "kept"


async def test_no_vcard(server: Server, raw_clients: list[RawClient]) -> None:
    alice = await login(server, raw_clients, "alice")
    # XEP-0054 §3.1: one's own missing vCard is an empty one.
    el = await iq(alice, "own", f"<vCard xmlns='{VCARD}'/>")
    assert el.get("type") == "result", ET.tostring(el)
    vcard = el.find(q(VCARD, "vCard"))
    assert vcard is not None and len(vcard) == 0
    # §3.3: for another user, no vCard and no account give the same error.
    el = await iq(alice, "bob", f"<vCard xmlns='{VCARD}'/>", to=BOB)
    assert_error(el, "cancel", "service-unavailable")
    el = await iq(alice, "nobody", f"<vCard xmlns='{VCARD}'/>", to=f"nobody@{DOMAIN}")
    assert_error(el, "cancel", "service-unavailable")


async def test_vcard_set_for_another_user_is_forbidden(
    server: Server, raw_clients: list[RawClient]
) -> None:
    alice = await login(server, raw_clients, "alice")
    bob = await login(server, raw_clients, "bob")
    el = await iq(bob, "v1", f"<vCard xmlns='{VCARD}'><FN>Bob</FN></vCard>", iq_type="set")
    assert el.get("type") == "result"
    el = await iq(
        alice, "v2", f"<vCard xmlns='{VCARD}'><FN>Mallory</FN></vCard>", to=BOB, iq_type="set"
    )
    # A stranger (no presence subscription) gets what a missing account answers.
    assert_error(el, "cancel", "service-unavailable")
    el = await iq(alice, "v3", f"<vCard xmlns='{VCARD}'/>", to=BOB)
    assert el.find(q(VCARD, "vCard")).findtext(q(VCARD, "FN")) == "Bob"  # type: ignore[union-attr]


async def test_vcard_set_by_slixmpp_for_another_user_is_forbidden(server: Server) -> None:
    alice = await vcard_client(server, f"{ALICE}/phone")
    try:
        vcard = alice.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Not Bob"
        with pytest.raises(IqError) as info:
            await alice.plugin["xep_0054"].publish_vcard(vcard, jid=BOB)
        # A stranger (no presence subscription) gets what a missing account answers.
        assert info.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        await disconnect(alice)


async def test_too_large_vcard_is_not_acceptable(
    server: Server, raw_clients: list[RawClient]
) -> None:
    alice = await login(server, raw_clients, "alice")
    limit = server.config.vcard.max_size  # [vcard] max_size, 8192 in this fixture
    assert limit == 8192
    photo = "A" * (limit + 1)
    el = await iq(
        alice,
        "big",
        f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE>"
        f"<BINVAL>{photo}</BINVAL></PHOTO></vCard>",
        iq_type="set",
    )
    assert_error(el, "modify", "not-acceptable")
    text = el.find(f"{q(CLIENT, 'error')}/{q(STANZA_ERRORS, 'text')}")
    assert text is not None and str(limit) in (text.text or "")
    # Nothing was stored; one just under the limit is fine.
    el = await iq(alice, "get", f"<vCard xmlns='{VCARD}'/>")
    assert len(el.find(q(VCARD, "vCard"))) == 0  # type: ignore[arg-type]
    photo = "A" * (limit - 200)
    el = await iq(
        alice,
        "fits",
        f"<vCard xmlns='{VCARD}'><PHOTO><BINVAL>{photo}</BINVAL></PHOTO></vCard>",
        iq_type="set",
    )
    assert el.get("type") == "result", ET.tostring(el)[:300]


async def test_empty_vcard_set_removes_it(server: Server, raw_clients: list[RawClient]) -> None:
    alice = await login(server, raw_clients, "alice")
    bob = await login(server, raw_clients, "bob")
    await iq(alice, "s1", f"<vCard xmlns='{VCARD}'><FN>A</FN></vCard>", iq_type="set")
    el = await iq(alice, "s2", f"<vCard xmlns='{VCARD}'/>", iq_type="set")
    assert el.get("type") == "result"
    el = await iq(bob, "g", f"<vCard xmlns='{VCARD}'/>", to=ALICE)
    assert_error(el, "cancel", "service-unavailable")


# ---- XEP-0049 ----------------------------------------------------------------------------------
class Prefs(ElementBase):
    name = "prefs"
    namespace = "urn:example:prefs"
    plugin_attrib = "example_prefs"
    interfaces = {"nick"}
    sub_interfaces = interfaces


async def test_private_storage_with_slixmpp(server: Server) -> None:
    client = await connect(server, f"{ALICE}/phone", presence=False)
    client.register_plugin("xep_0049")
    client.plugin["xep_0049"].register(Prefs)
    try:
        empty = await client.plugin["xep_0049"].retrieve("example_prefs")
        assert empty["private"]["example_prefs"]["nick"] == ""
        prefs = Prefs()
        prefs["nick"] = "Hamlet"
        await client.plugin["xep_0049"].store(prefs)
        result = await client.plugin["xep_0049"].retrieve("example_prefs")
        assert result["private"]["example_prefs"]["nick"] == "Hamlet"
    finally:
        await disconnect(client)


async def test_private_storage_get_and_set(server: Server, raw_clients: list[RawClient]) -> None:
    alice = await login(server, raw_clients, "alice")
    # XEP-0049 §2.3: nothing stored yet: the requested element comes back empty.
    el = await iq(alice, "g0", f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/></query>")
    assert el.get("type") == "result", ET.tostring(el)
    query = el.find(q(PRIVATE, "query"))
    assert query is not None
    assert [(c.tag, len(c)) for c in query] == [(q("exodus:prefs", "exodus"), 0)]
    el = await iq(
        alice,
        "s1",
        f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'>"
        "<defaultnick>Hamlet</defaultnick></exodus></query>",
        iq_type="set",
    )
    assert el.get("type") == "result", ET.tostring(el)
    # Another namespace is another entry.
    el = await iq(
        alice,
        "s2",
        f"<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'>"
        "<conference jid='room@muc.example.org' autojoin='true'/></storage></query>",
        iq_type="set",
    )
    assert el.get("type") == "result", ET.tostring(el)
    el = await iq(
        alice, "g1", f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/></query>", to=ALICE
    )
    assert el.get("type") == "result", ET.tostring(el)
    query = el.find(q(PRIVATE, "query"))
    assert query is not None and len(query) == 1
    assert (
        query.findtext(f"{q('exodus:prefs', 'exodus')}/{q('exodus:prefs', 'defaultnick')}")
        == "Hamlet"
    )
    el = await iq(
        alice, "g2", f"<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/></query>"
    )
    conference = el.find(
        f"{q(PRIVATE, 'query')}/{q('storage:bookmarks', 'storage')}/"
        f"{q('storage:bookmarks', 'conference')}"
    )
    assert conference is not None and conference.get("jid") == "room@muc.example.org"
    # The same namespace from a second resource: the same data, replaced by a new set.
    alice2 = await login(server, raw_clients, "alice", "second")
    el = await iq(
        alice2,
        "s3",
        f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'>"
        "<defaultnick>Ophelia</defaultnick></exodus></query>",
        iq_type="set",
    )
    assert el.get("type") == "result"
    el = await iq(alice, "g3", f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/></query>")
    assert (
        el.findtext(
            f"{q(PRIVATE, 'query')}/{q('exodus:prefs', 'exodus')}/"
            f"{q('exodus:prefs', 'defaultnick')}"
        )
        == "Ophelia"
    )


async def test_private_storage_of_another_user_is_forbidden(
    server: Server, raw_clients: list[RawClient]
) -> None:
    alice = await login(server, raw_clients, "alice")
    bob = await login(server, raw_clients, "bob")
    await iq(
        bob,
        "s",
        f"<query xmlns='{PRIVATE}'><secret xmlns='urn:example:s'>bob's</secret></query>",
        iq_type="set",
    )
    for iq_type, body in (
        ("get", "<secret xmlns='urn:example:s'/>"),
        ("set", "<secret xmlns='urn:example:s'>mallory</secret>"),
    ):
        el = await iq(
            alice,
            f"x-{iq_type}",
            f"<query xmlns='{PRIVATE}'>{body}</query>",
            to=BOB,
            iq_type=iq_type,
        )
        # A stranger (no presence subscription) gets what a missing account answers.
        assert_error(el, "cancel", "service-unavailable")
        assert el.get("from") == BOB
    el = await iq(bob, "g", f"<query xmlns='{PRIVATE}'><secret xmlns='urn:example:s'/></query>")
    assert el.findtext(f"{q(PRIVATE, 'query')}/{q('urn:example:s', 'secret')}") == "bob's"


@pytest.mark.parametrize("iq_type", ["get", "set"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("", id="no-child"),
        pytest.param("<x xmlns='jabber:client'/>", id="jabber:client"),
        pytest.param("<x xmlns='jabber:server'/>", id="jabber:server"),
        pytest.param(f"<query xmlns='{PRIVATE}'/>", id="jabber:iq:private"),
        pytest.param("<x/>", id="inherited-private-ns"),
        pytest.param("<x xmlns=''/>", id="empty-ns"),
    ],
)
async def test_private_storage_reserved_or_missing_namespace_is_not_acceptable(
    server: Server, raw_clients: list[RawClient], iq_type: str, body: str
) -> None:
    alice = await login(server, raw_clients, "alice")
    el = await iq(alice, "na", f"<query xmlns='{PRIVATE}'>{body}</query>", iq_type=iq_type)
    assert_error(el, "modify", "not-acceptable")


async def test_private_storage_get_of_two_namespaces_is_bad_request(
    server: Server, raw_clients: list[RawClient]
) -> None:
    alice = await login(server, raw_clients, "alice")
    el = await iq(
        alice,
        "two",
        f"<query xmlns='{PRIVATE}'><a xmlns='urn:example:a'/><b xmlns='urn:example:b'/></query>",
    )
    assert_error(el, "modify", "bad-request")


async def test_private_storage_set_of_several_elements(
    server: Server, raw_clients: list[RawClient]
) -> None:
    """XEP-0049 §2.3: a set MAY carry several elements of one namespace; they come back
    together."""
    alice = await login(server, raw_clients, "alice")
    el = await iq(
        alice,
        "s",
        f"<query xmlns='{PRIVATE}'><a xmlns='urn:example:a'>1</a>"
        "<a xmlns='urn:example:a'>2</a><b xmlns='urn:example:b'>3</b></query>",
        iq_type="set",
    )
    assert el.get("type") == "result", ET.tostring(el)
    el = await iq(alice, "ga", f"<query xmlns='{PRIVATE}'><a xmlns='urn:example:a'/></query>")
    assert [c.text for c in el.find(q(PRIVATE, "query"))] == ["1", "2"]  # type: ignore[union-attr]
    el = await iq(alice, "gb", f"<query xmlns='{PRIVATE}'><b xmlns='urn:example:b'/></query>")
    assert [c.text for c in el.find(q(PRIVATE, "query"))] == ["3"]  # type: ignore[union-attr]


# ---- persistence -------------------------------------------------------------------------------
async def test_vcard_and_private_data_survive_a_restart(data_dir: Path) -> None:
    first = await start_server(data_dir, modules=MODULES)
    try:
        await add_user(first, "alice")
        await add_user(first, "bob")
        raw, _ = await raw_login(first, "alice")
        el = await iq(
            raw, "v", f"<vCard xmlns='{VCARD}'><FN>Persistent Alice</FN></vCard>", iq_type="set"
        )
        assert el.get("type") == "result"
        el = await iq(
            raw,
            "p",
            f"<query xmlns='{PRIVATE}'><notes xmlns='urn:example:notes'>remember</notes></query>",
            iq_type="set",
        )
        assert el.get("type") == "result"
        await raw.close()
    finally:
        await first.stop()
    await asyncio.sleep(0)
    second = await start_server(data_dir, modules=MODULES)
    try:
        bob, _ = await raw_login(second, "bob")
        el = await iq(bob, "v", f"<vCard xmlns='{VCARD}'/>", to=ALICE)
        assert el.findtext(f"{q(VCARD, 'vCard')}/{q(VCARD, 'FN')}") == "Persistent Alice"
        await bob.close()
        alice, _ = await raw_login(second, "alice")
        el = await iq(
            alice, "p", f"<query xmlns='{PRIVATE}'><notes xmlns='urn:example:notes'/></query>"
        )
        assert el.findtext(f"{q(PRIVATE, 'query')}/{q('urn:example:notes', 'notes')}") == "remember"
        await alice.close()
    finally:
        await second.stop()
