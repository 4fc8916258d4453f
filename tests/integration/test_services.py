"""The server's own services over real sockets: XEP-0030 (service discovery), XEP-0199 (ping),
XEP-0092 (software version), XEP-0202 (entity time), XEP-0012 (last activity / uptime)."""

from __future__ import annotations

import asyncio
import datetime
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import dovecote
from dovecote.server import Server
from dovecote.storage.base import RosterItem
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
)

OTHER = "other.example"
IQ = q(CLIENT, "iq")
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
PING = "urn:xmpp:ping"
VERSION = "jabber:iq:version"
TIME = "urn:xmpp:time"
LAST = "jabber:iq:last"
SERVER_FEATURES = {DISCO_INFO, DISCO_ITEMS, PING, VERSION, TIME, LAST}


@dataclass
class Asker:
    raw: RawClient
    jid: str
    _count: int = 0

    async def iq(self, payload: str, to: str | None = DOMAIN, iq_type: str = "get") -> ET.Element:
        """Send an IQ and return the answer with the same id."""
        self._count += 1
        iq_id = f"s{self._count}"
        to_attr = f" to='{to}'" if to is not None else ""
        self.raw.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{payload}</iq>")
        answer = await self.raw.wait_for(lambda e: e.tag == IQ and e.get("id") == iq_id)
        assert answer.get("to") == self.jid, ET.tostring(answer)
        return answer


def result_of(answer: ET.Element, sender: str) -> ET.Element:
    assert answer.get("type") == "result", ET.tostring(answer)
    assert answer.get("from") == sender
    return answer


def assert_error(answer: ET.Element, condition: str, error_type: str, sender: str) -> None:
    assert answer.get("type") == "error", ET.tostring(answer)
    assert answer.get("from") == sender
    assert error_condition(answer) == (error_type, condition), ET.tostring(answer)


@pytest.fixture
async def alice(server: Server) -> AsyncIterator[Asker]:
    await add_user(server, "alice")
    await add_user(server, "bob")
    # alice may see bob (a presence subscription): his account answers her.
    await server.storage.roster.put(
        "bob", DOMAIN, RosterItem("alice@example.org", subscription="from")
    )
    raw, jid = await raw_login(server, "alice")
    yield Asker(raw, jid)
    await raw.close()


def identities(query: ET.Element) -> list[tuple[str | None, str | None]]:
    return [(i.get("category"), i.get("type")) for i in query.findall(q(DISCO_INFO, "identity"))]


def features(query: ET.Element) -> list[str]:
    return [f.get("var") or "" for f in query.findall(q(DISCO_INFO, "feature"))]


# ---- XEP-0030: the server ------------------------------------------------------------------
@pytest.mark.parametrize("host", [DOMAIN, OTHER])
async def test_server_disco_info(server: Server, alice: Asker, host: str) -> None:
    answer = result_of(await alice.iq(f"<query xmlns='{DISCO_INFO}'/>", to=host), host)
    query = answer.find(q(DISCO_INFO, "query"))
    assert query is not None
    assert query.get("node") is None
    # XEP-0030 §3.1: at least one identity; a server is category 'server', type 'im'.
    assert identities(query) == [("server", "im")]
    declared = set().union(*(m.MODULE.features for m in server.modules.values()))
    offered = features(query)
    assert len(offered) == len(set(offered)), "a feature is listed twice"
    assert set(offered) == server.features == declared
    assert SERVER_FEATURES <= set(offered)
    assert query.find("{jabber:x:data}x") is None  # no XEP-0157 contacts configured


async def test_server_disco_items(server: Server, alice: Asker) -> None:
    answer = result_of(await alice.iq(f"<query xmlns='{DISCO_ITEMS}'/>"), DOMAIN)
    query = answer.find(q(DISCO_ITEMS, "query"))
    assert query is not None
    assert query.get("node") is None
    items = [item.get("jid") for item in query.findall(q(DISCO_ITEMS, "item"))]
    assert items == sorted(server.components)


@pytest.mark.parametrize("namespace", [DISCO_INFO, DISCO_ITEMS])
async def test_server_disco_unknown_node_is_item_not_found(alice: Asker, namespace: str) -> None:
    """XEP-0030 §3.3 / §4.3: a node the entity does not know."""
    answer = await alice.iq(f"<query xmlns='{namespace}' node='urn:example:no-such-node'/>")
    assert_error(answer, "item-not-found", "cancel", DOMAIN)


async def test_server_disco_with_slixmpp(server: Server) -> None:
    """A real client library understands the answers."""
    await add_user(server, "carol")
    client = await connect(server, "carol@example.org/disco", presence=False)
    try:
        info = await client.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=5)
        found = {(c, t) for c, t, _lang, _name in info["disco_info"]["identities"]}
        assert ("server", "im") in found
        assert set(info["disco_info"]["features"]) == server.features
        items = await client.plugin["xep_0030"].get_items(jid=DOMAIN, timeout=5)
        assert items["type"] == "result"
        version = await client.plugin["xep_0092"].get_version(DOMAIN, timeout=5)
        assert version["software_version"]["name"] == "Dovecote"
        assert version["software_version"]["version"] == dovecote.__version__
        pong = await client.plugin["xep_0199"].send_ping(DOMAIN, timeout=5)
        assert pong["type"] == "result"
    finally:
        await disconnect(client)


# ---- XEP-0030: accounts ----------------------------------------------------------------------
async def test_account_disco_info_of_existing_user(alice: Asker) -> None:
    answer = result_of(
        await alice.iq(f"<query xmlns='{DISCO_INFO}'/>", to="bob@example.org"), "bob@example.org"
    )
    query = answer.find(q(DISCO_INFO, "query"))
    assert query is not None
    # An account, and with PEP loaded by default a virtual pubsub service (XEP-0163 §6.1).
    assert identities(query) == [("account", "registered"), ("pubsub", "pep")]
    assert DISCO_INFO in features(query)
    assert "http://jabber.org/protocol/pubsub#publish" in features(query)


async def test_account_disco_items_of_existing_user(alice: Asker) -> None:
    answer = result_of(
        await alice.iq(f"<query xmlns='{DISCO_ITEMS}'/>", to="bob@example.org"), "bob@example.org"
    )
    assert answer.find(q(DISCO_ITEMS, "query")) is not None


@pytest.mark.parametrize("namespace", [DISCO_INFO, DISCO_ITEMS])
@pytest.mark.parametrize("to", ["nobody@example.org", "alice@other.example"])
async def test_account_disco_of_nonexistent_user_is_service_unavailable(
    alice: Asker, namespace: str, to: str
) -> None:
    """RFC 6121 §8.5.1: IQs to no such user get service-unavailable."""
    answer = await alice.iq(f"<query xmlns='{namespace}'/>", to=to)
    assert_error(answer, "service-unavailable", "cancel", to)


# ---- XEP-0199 -------------------------------------------------------------------------------
@pytest.mark.parametrize("to", [DOMAIN, OTHER])
async def test_ping_the_server(alice: Asker, to: str) -> None:
    answer = result_of(await alice.iq(f"<ping xmlns='{PING}'/>", to=to), to)
    assert list(answer) == []  # XEP-0199 §4.2: an empty result


@pytest.mark.parametrize("to", ["bob@example.org", "alice@example.org"])
async def test_ping_an_account(alice: Asker, to: str) -> None:
    """XEP-0199 §4.3 ... the server answers for the account's bare JID."""
    answer = result_of(await alice.iq(f"<ping xmlns='{PING}'/>", to=to), to)
    assert list(answer) == []


# ---- XEP-0092 -------------------------------------------------------------------------------
@pytest.mark.parametrize("to", [DOMAIN, OTHER])
async def test_software_version(alice: Asker, to: str) -> None:
    answer = result_of(await alice.iq(f"<query xmlns='{VERSION}'/>", to=to), to)
    query = answer.find(q(VERSION, "query"))
    assert query is not None
    assert query.findtext(q(VERSION, "name")) == "Dovecote"
    assert query.findtext(q(VERSION, "version")) == dovecote.__version__
    os_name = query.find(q(VERSION, "os"))
    assert os_name is None or (os_name.text or "").strip()


# ---- XEP-0202 -------------------------------------------------------------------------------
async def test_entity_time(alice: Asker) -> None:
    before = datetime.datetime.now(datetime.UTC)
    answer = result_of(await alice.iq(f"<time xmlns='{TIME}'/>"), DOMAIN)
    time_el = answer.find(q(TIME, "time"))
    assert time_el is not None
    tzo = time_el.findtext(q(TIME, "tzo"))
    utc = time_el.findtext(q(TIME, "utc"))
    assert tzo is not None and re.fullmatch(r"[+-](0\d|1\d|2[0-3]):[0-5]\d", tzo), tzo
    # XEP-0082 DateTime in UTC: 'Z', optional fraction of a second.
    assert utc is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", utc), (
        utc
    )
    stamp = datetime.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((stamp - before).total_seconds()) < 60
    # The server runs in this process: its offset is the local one.
    offset = datetime.datetime.now().astimezone().utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    assert tzo == f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# ---- XEP-0012 -------------------------------------------------------------------------------
async def test_last_activity_of_server_is_uptime(alice: Asker) -> None:
    """XEP-0012 §5: for a server, 'seconds' is the time since it started."""

    async def uptime() -> int:
        answer = result_of(await alice.iq(f"<query xmlns='{LAST}'/>"), DOMAIN)
        query = answer.find(q(LAST, "query"))
        assert query is not None
        seconds = query.get("seconds")
        assert seconds is not None and re.fullmatch(r"\d+", seconds), seconds
        return int(seconds)

    first = await uptime()
    assert first >= 0
    await asyncio.sleep(1.1)
    second = await uptime()
    assert second > first
    assert second - first <= 3


# ---- what the server does not offer ------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(f"<ping xmlns='{PING}'/>", id="ping"),
        pytest.param(f"<query xmlns='{VERSION}'/>", id="version"),
        pytest.param(f"<time xmlns='{TIME}'/>", id="time"),
        pytest.param(f"<query xmlns='{LAST}'/>", id="last"),
        pytest.param(f"<query xmlns='{DISCO_INFO}'/>", id="disco-info"),
        pytest.param(f"<query xmlns='{DISCO_ITEMS}'/>", id="disco-items"),
    ],
)
async def test_iq_set_of_a_get_only_protocol_is_an_error(alice: Asker, payload: str) -> None:
    """These protocols define only 'get': a 'set' is not answered with a result."""
    answer = await alice.iq(payload, iq_type="set")
    assert answer.get("type") == "error", ET.tostring(answer)
    assert error_condition(answer) in {
        ("cancel", "service-unavailable"),
        ("cancel", "feature-not-implemented"),
        ("modify", "bad-request"),
        ("cancel", "not-allowed"),
    }, ET.tostring(answer)


async def test_unknown_namespace_to_the_server_is_service_unavailable(alice: Asker) -> None:
    answer = await alice.iq("<query xmlns='urn:example:unknown'/>")
    assert_error(answer, "service-unavailable", "cancel", DOMAIN)


async def test_message_to_the_server(alice: Asker) -> None:
    """RFC 6120 §10.3.1: the server has nothing to do with a chat message: service-unavailable;
    a headline is dropped."""
    alice.raw.send("<message to='example.org' type='chat' id='h1'><body>hi server</body></message>")
    answer = await alice.raw.wait_for(lambda e: e.tag == q(CLIENT, "message"))
    assert answer.get("id") == "h1"
    assert_error(answer, "service-unavailable", "cancel", DOMAIN)
    alice.raw.send("<message to='example.org' type='headline' id='h2'><body>news</body></message>")
    assert [e for e in await collect(alice.raw) if e.tag != q(CLIENT, "presence")] == []


async def test_contact_addresses_in_server_disco(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """XEP-0157: [server] contacts shows up as a serverinfo form in the server's disco#info
    (XEP-0128); without it there is no form."""
    from tests.helpers import start_server

    contacts = {
        "abuse": ["mailto:abuse@example.org", "xmpp:abuse@example.org"],
        "admin": ["xmpp:admin@example.org"],
    }
    server = await start_server(tmp_path, server={"contacts": contacts})
    try:
        await add_user(server, "alice")
        raw, jid = await raw_login(server, "alice")
        asker = Asker(raw, jid)
        answer = result_of(await asker.iq(f"<query xmlns='{DISCO_INFO}'/>"), DOMAIN)
        forms = answer.findall(f"{q(DISCO_INFO, 'query')}/{{jabber:x:data}}x")
        assert len(forms) == 1 and forms[0].get("type") == "result"
        fields = {
            f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")] for f in forms[0]
        }
        assert fields == {
            "FORM_TYPE": ["http://jabber.org/network/serverinfo"],
            "abuse-addresses": contacts["abuse"],
            "admin-addresses": contacts["admin"],
        }
        await raw.close()
    finally:
        await server.stop()
