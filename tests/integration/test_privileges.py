"""Gateways as privileged components over real sockets: XEP-0356 (privileged entity: the
announcement, rosters, messages and IQs on a user's behalf, presence) and XEP-0355
(namespace delegation: forwarding, answers, disco, absence and timeouts), with raw XML and
slixmpp's ComponentXMPP and its xep_0356 plugin."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import slixmpp

from dovecote.config import ConfigError, config_from_dict
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    ROSTER,
    Resource,
    add_user,
    error_condition,
    is_roster_push,
    q,
    raw_login,
    send_presence,
    start_server,
)
from tests.integration.test_component import COMPONENT_NS, RawComponent, cq, wait_disconnected

GATEWAY = "gateway.example.org"
SECRET = "gateway-secret"
PLAIN = "plain.example.org"  # the short form: a secret, no privileges
READER = "reader.example.org"  # roster "get" only
OTHER_HOST = "other.example"  # the second domain tests.helpers serves
PRIVILEGE = "urn:xmpp:privilege:2"
DELEGATION = "urn:xmpp:delegation:2"
FORWARD = "urn:xmpp:forward:0"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
BLOCKING = "urn:xmpp:blocking"
CARBONS = "urn:xmpp:carbons:2"
WEATHER = "urn:example:weather:0"  # a namespace delegated to the gateway
WEATHER_FEATURES = (WEATHER, "urn:example:weather:0#forecast")
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"

GATEWAY_SETTINGS = {
    "secret": SECRET,
    "roster": "both",
    "message": "outgoing",
    "presence": "managed_entity",
    "iq": {BLOCKING: "get", WEATHER: "get"},
    "delegations": [WEATHER],
    "delegation_timeout": 1,
    "delegation_max_pending": 2,
}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(
        tmp_path / "data",
        listen={"component": "127.0.0.1:0"},
        components={
            GATEWAY: GATEWAY_SETTINGS,
            PLAIN: "plain-secret",
            READER: {
                "secret": "reader-secret",
                "roster": "get",
                "roster_push": False,
                "presence": "roster",
            },
        },
        modules={"enabled": ["carbons"]},
    )
    for user in ("alice", "bob"):
        await add_user(srv, user)
    try:
        yield srv
    finally:
        await srv.stop()


def component_error(el: ET.Element) -> tuple[str | None, str | None]:
    """(type, condition) of a stanza error on the component stream."""
    error = el.find(cq("error"))
    assert error is not None, ET.tostring(el)
    for child in error:
        if child.tag.startswith(f"{{{STANZA_ERRORS}}}") and not child.tag.endswith("}text"):
            return error.get("type"), child.tag.split("}")[1]
    return error.get("type"), None


class Component(Resource):
    """A raw component connection with Resource's take/assert_none (component namespace)."""

    @classmethod
    async def login(cls, server: Server, domain: str, secret: str) -> Component:
        raw = await RawComponent.open(server, domain)
        el = await raw.handshake(secret)
        assert el.tag == cq("handshake"), ET.tostring(el)
        return cls(raw.raw, domain)

    async def iq(self, iq_id: str, timeout: float = 5) -> ET.Element:
        return await self.take(lambda e: e.tag == cq("iq") and e.get("id") == iq_id, timeout)


def privilege_announcement(el: ET.Element) -> bool:
    return el.tag == cq("message") and el.find(q(PRIVILEGE, "privilege")) is not None


def delegation_announcement(el: ET.Element) -> bool:
    return el.tag == cq("message") and el.find(q(DELEGATION, "delegation")) is not None


def delegation_disco(el: ET.Element) -> bool:
    query = el.find(q(DISCO_INFO, "query"))
    return (
        el.tag == cq("iq") and query is not None and query.get("node") == f"{DELEGATION}::{WEATHER}"
    )


async def gateway_login(server: Server, features: tuple[str, ...] = WEATHER_FEATURES) -> Component:
    """The gateway, connected, its announcements read and the server's disco#info question
    about its delegated namespace answered with `features` (XEP-0355 §7.2)."""
    gateway = await Component.login(server, GATEWAY, SECRET)
    await gateway.take(privilege_announcement)
    await gateway.take(delegation_announcement)
    asked = await gateway.take(delegation_disco)
    feature_xml = "".join(f"<feature var='{f}'/>" for f in features)
    gateway.send(
        f"<iq type='result' id='{asked.get('id')}' from='{GATEWAY}' to='{asked.get('from')}'>"
        f"<query xmlns='{DISCO_INFO}' node='{DELEGATION}::{WEATHER}'>"
        f"<identity category='component' type='generic'/>{feature_xml}</query></iq>"
    )
    for _ in range(100):
        if server.components[GATEWAY].state.get("delegated_features"):
            break
        await asyncio.sleep(0.02)
    return gateway


async def user(server: Server, local: str, resource: str = "raw") -> Resource:
    raw, jid = await raw_login(server, local, resource)
    return Resource(raw, jid)


# ---- XEP-0356 §3.2, §4.2, §5.2, §6.2: the announcement -----------------------------------------
async def test_privileges_are_announced_after_the_handshake(server: Server) -> None:
    gateway = await Component.login(server, GATEWAY, SECRET)
    try:
        announcements = [await gateway.take(privilege_announcement) for _ in range(2)]
        # One per served domain, from that domain, to the component.
        assert sorted(a.get("from") or "" for a in announcements) == sorted([DOMAIN, OTHER_HOST])
        for message in announcements:
            assert message.get("to") == GATEWAY and message.get("id")
            privilege = message.find(q(PRIVILEGE, "privilege"))
            assert privilege is not None
            perms = {p.get("access"): p for p in privilege.findall(q(PRIVILEGE, "perm"))}
            assert set(perms) == {"roster", "message", "iq", "presence"}
            assert perms["roster"].attrib == {"access": "roster", "type": "both", "push": "true"}
            assert perms["message"].get("type") == "outgoing"
            assert perms["presence"].get("type") == "managed_entity"
            namespaces = [n.attrib for n in perms["iq"].findall(q(PRIVILEGE, "namespace"))]
            assert namespaces == [{"ns": WEATHER, "type": "get"}, {"ns": BLOCKING, "type": "get"}]
        # XEP-0355 §4.2: the delegations follow, one message per domain.
        delegations = [await gateway.take(delegation_announcement) for _ in range(2)]
        for message in delegations:
            delegated = message.findall(
                f"{q(DELEGATION, 'delegation')}/{q(DELEGATION, 'delegated')}"
            )
            assert [d.attrib for d in delegated] == [{"namespace": WEATHER}]
    finally:
        await gateway.raw.close()


async def test_component_without_privileges_is_told_nothing(server: Server) -> None:
    plain = await Component.login(server, PLAIN, "plain-secret")
    try:
        await plain.assert_none()
    finally:
        await plain.raw.close()


async def test_roster_get_without_push_and_roster_presence_announced(server: Server) -> None:
    reader = await Component.login(server, READER, "reader-secret")
    try:
        message = await reader.take(privilege_announcement)
        perms = message.findall(f"{q(PRIVILEGE, 'privilege')}/{q(PRIVILEGE, 'perm')}")
        assert [p.attrib for p in perms] == [
            {"access": "roster", "type": "get", "push": "false"},
            {"access": "presence", "type": "roster"},
        ]
    finally:
        await reader.raw.close()


# ---- XEP-0356 §3: rosters, with slixmpp's xep_0356 -------------------------------------------
class PrivilegedComponent(slixmpp.ComponentXMPP):
    def __init__(self, server: Server) -> None:
        super().__init__(GATEWAY, SECRET, "127.0.0.1", server.ports["component"])
        self.register_plugin("xep_0356")
        self.advertised = asyncio.Event()
        self.add_event_handler("privileges_advertised", lambda *_a: self.advertised.set())
        self.pushes: asyncio.Queue[slixmpp.Iq] = asyncio.Queue()
        self.register_handler(
            slixmpp.xmlstream.handler.Callback(
                "roster pushes",
                slixmpp.xmlstream.matcher.StanzaPath("iq@type=set/roster"),
                self._push,
            )
        )

    def _push(self, iq: slixmpp.Iq) -> None:
        self.pushes.put_nowait(iq)
        iq.reply().send()


@pytest.fixture
async def slix_gateway(server: Server) -> AsyncIterator[PrivilegedComponent]:
    component = PrivilegedComponent(server)
    component.connect()
    await asyncio.wait_for(component.advertised.wait(), 10)
    try:
        yield component
    finally:
        component.disconnect()
        await wait_disconnected(server, GATEWAY)


async def test_component_gets_and_sets_a_users_roster(
    server: Server, slix_gateway: PrivilegedComponent
) -> None:
    alice = await user(server, "alice")
    try:
        first = await alice.roster_get()
        assert first.get("type") == "result"  # alice's client now gets pushes
        result = await slix_gateway.plugin["xep_0356"].get_roster(f"alice@{DOMAIN}")
        assert result["type"] == "result"
        assert str(result["from"]) == f"alice@{DOMAIN}"
        assert list(result["roster"]["items"]) == []

        await slix_gateway.plugin["xep_0356"].set_roster(
            f"alice@{DOMAIN}",
            {
                f"legacy-friend@{GATEWAY}": {
                    "name": "Friend",
                    "subscription": "both",
                    "groups": ["Legacy"],
                }
            },
        )
        # The user's client sees the push (RFC 6121 §2.1.6) ...
        push = await alice.take(is_roster_push)
        item = push.find(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
        assert item is not None
        # The component sets names and groups, not subscription states (the server's).
        assert (item.get("jid"), item.get("name"), item.get("subscription")) == (
            f"legacy-friend@{GATEWAY}",
            "Friend",
            "none",
        )
        assert [g.text for g in item.findall(q(ROSTER, "group"))] == ["Legacy"]
        # ... and so does the component, from the user's bare JID (§3.3, v0.4).
        component_push = await asyncio.wait_for(slix_gateway.pushes.get(), 5)
        assert str(component_push["from"]) == f"alice@{DOMAIN}"
        assert f"legacy-friend@{GATEWAY}" in component_push["roster"]["items"]

        again = await slix_gateway.plugin["xep_0356"].get_roster(f"alice@{DOMAIN}")
        assert list(again["roster"]["items"]) == [f"legacy-friend@{GATEWAY}"]
        # Stored: what alice reads is what the component wrote.
        stored = await server.storage.roster.load("alice", DOMAIN)
        assert stored.items[f"legacy-friend@{GATEWAY}"].groups == ("Legacy",)
    finally:
        await alice.raw.close()


async def test_privileged_message_goes_out_as_the_user(
    server: Server, slix_gateway: PrivilegedComponent
) -> None:
    bob = await user(server, "bob")
    alice_phone = await user(server, "alice", "phone")
    try:
        await send_presence(bob.raw, bob.jid)
        await send_presence(alice_phone.raw, alice_phone.jid)
        enabled = await alice_phone.request(f"<enable xmlns='{CARBONS}'/>", "set")
        assert enabled.get("type") == "result"
        msg = slix_gateway.make_message(
            mto=f"bob@{DOMAIN}", mfrom=f"alice@{DOMAIN}", mbody="sent on the legacy network"
        )
        msg["type"] = "chat"
        msg["id"] = "legacy-1"
        slix_gateway.plugin["xep_0356"].send_privileged_message(msg)
        got = await bob.take(lambda e: e.tag == q(CLIENT, "message"))
        assert got.get("from") == f"alice@{DOMAIN}"
        assert got.findtext(q(CLIENT, "body")) == "sent on the legacy network"
        # The user's own clients see it as one of theirs: a sent carbon (XEP-0280 §8).
        carbon = await alice_phone.take(lambda e: e.tag == q(CLIENT, "message"))
        forwarded = carbon.find(
            f"{q(CARBONS, 'sent')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}"
        )
        assert forwarded is not None, ET.tostring(carbon)
        assert forwarded.get("id") == "legacy-1" and forwarded.get("to") == f"bob@{DOMAIN}"
    finally:
        await bob.raw.close()
        await alice_phone.raw.close()


# ---- what was not granted: forbidden ------------------------------------------------------------
def privileged_message_xml(component: str, sender: str, to: str, ns: str = PRIVILEGE) -> str:
    return (
        f"<message from='{component}' to='{DOMAIN}' id='pm1'><privilege xmlns='{ns}'>"
        f"<forwarded xmlns='{FORWARD}'><message xmlns='jabber:client' from='{sender}' "
        f"to='{to}' type='chat' id='inner1'><body>hi</body></message></forwarded>"
        f"</privilege></message>"
    )


async def test_ungranted_privileges_are_forbidden(server: Server) -> None:
    plain = await Component.login(server, PLAIN, "plain-secret")
    reader = await Component.login(server, READER, "reader-secret")
    bob = await user(server, "bob")
    try:
        await send_presence(bob.raw, bob.jid)
        # No roster permission (§3.3).
        plain.send(
            f"<iq from='{PLAIN}' to='alice@{DOMAIN}' type='get' id='r1'>"
            f"<query xmlns='{ROSTER}'/></iq>"
        )
        el = await plain.iq("r1")
        assert el.get("type") == "error" and component_error(el) == ("auth", "forbidden")
        assert el.get("from") == f"alice@{DOMAIN}"
        # No message permission (§4.1): a message error, and nothing reaches bob.
        plain.send(privileged_message_xml(PLAIN, f"alice@{DOMAIN}", f"bob@{DOMAIN}"))
        el = await plain.take(lambda e: e.tag == cq("message") and e.get("id") == "pm1")
        assert el.get("type") == "error" and component_error(el)[1] == "forbidden"
        # No IQ permission (§5).
        plain.send(
            f"<iq from='{PLAIN}' to='alice@{DOMAIN}' type='get' id='p1'>"
            f"<privileged_iq xmlns='{PRIVILEGE}'><iq xmlns='jabber:client' type='get' "
            f"from='alice@{DOMAIN}' to='alice@{DOMAIN}' id='x'><blocklist xmlns='{BLOCKING}'/>"
            f"</iq></privileged_iq></iq>"
        )
        assert component_error(await plain.iq("p1"))[1] == "forbidden"
        # Roster "get" only: the get works, a set is forbidden.
        reader.send(
            f"<iq from='{READER}' to='alice@{DOMAIN}' type='get' id='r2'>"
            f"<query xmlns='{ROSTER}'/></iq>"
        )
        el = await reader.iq("r2")
        assert el.get("type") == "result" and el.find(q(ROSTER, "query")) is not None
        reader.send(
            f"<iq from='{READER}' to='alice@{DOMAIN}' type='set' id='r3'><query xmlns='{ROSTER}'>"
            f"<item jid='x@{READER}'/></query></iq>"
        )
        assert component_error(await reader.iq("r3")) == ("auth", "forbidden")
        assert await server.storage.roster.load("alice", DOMAIN) is not None
        assert f"x@{READER}" not in (await server.storage.roster.load("alice", DOMAIN)).items
        await bob.assert_none(lambda e: e.tag == q(CLIENT, "message"))
    finally:
        for conn in (plain, reader, bob):
            await conn.raw.close()


async def test_privileged_message_must_come_from_a_bare_local_jid(server: Server) -> None:
    gateway = await gateway_login(server)
    bob = await user(server, "bob")
    try:
        await send_presence(bob.raw, bob.jid)
        for sender in (f"alice@{DOMAIN}/phone", "alice@elsewhere.example"):
            gateway.send(privileged_message_xml(GATEWAY, sender, f"bob@{DOMAIN}"))
            el = await gateway.take(lambda e: e.tag == cq("message") and e.get("id") == "pm1")
            assert el.get("type") == "error" and component_error(el)[1] == "forbidden", sender
        await bob.assert_none(lambda e: e.tag == q(CLIENT, "message"))
        # The urn:xmpp:privilege:1 wrapper (XEP-0356 v0.2) is accepted too.
        gateway.send(
            privileged_message_xml(
                GATEWAY, f"alice@{DOMAIN}", f"bob@{DOMAIN}", "urn:xmpp:privilege:1"
            )
        )
        got = await bob.take(lambda e: e.tag == q(CLIENT, "message"))
        assert got.get("from") == f"alice@{DOMAIN}" and got.get("id") == "inner1"
    finally:
        await gateway.raw.close()
        await bob.raw.close()


# ---- XEP-0356 §5 (v0.4): IQs on a user's behalf -------------------------------------------------
async def test_privileged_iq_is_answered_as_to_the_user(server: Server) -> None:
    gateway = await gateway_login(server)
    alice = await user(server, "alice")
    try:
        blocked = await alice.request(
            f"<block xmlns='{BLOCKING}'><item jid='spam@elsewhere.example'/></block>", "set"
        )
        assert blocked.get("type") == "result"
        gateway.send(
            f"<iq from='{GATEWAY}' to='alice@{DOMAIN}' type='get' id='p1'>"
            f"<privileged_iq xmlns='{PRIVILEGE}'><iq xmlns='jabber:client' type='get' "
            f"from='alice@{DOMAIN}' to='alice@{DOMAIN}' id='inner-p1'>"
            f"<blocklist xmlns='{BLOCKING}'/></iq></privileged_iq></iq>"
        )
        el = await gateway.iq("p1")
        assert el.get("type") == "result", ET.tostring(el)
        assert (el.get("from"), el.get("to")) == (f"alice@{DOMAIN}", GATEWAY)
        inner = el.find(f"{q(PRIVILEGE, 'privilege')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'iq')}")
        assert inner is not None, ET.tostring(el)
        assert inner.get("type") == "result" and inner.get("id") == "inner-p1"
        items = inner.findall(f"{q(BLOCKING, 'blocklist')}/{q(BLOCKING, 'item')}")
        assert [i.get("jid") for i in items] == ["spam@elsewhere.example"]
        # "get" was granted, not "set"; another namespace not at all.
        for iq_type, payload in (
            ("set", f"<block xmlns='{BLOCKING}'><item jid='x@elsewhere.example'/></block>"),
            ("get", "<query xmlns='jabber:iq:private'><x xmlns='urn:example'/></query>"),
        ):
            gateway.send(
                f"<iq from='{GATEWAY}' to='alice@{DOMAIN}' type='{iq_type}' id='p2'>"
                f"<privileged_iq xmlns='{PRIVILEGE}'><iq xmlns='jabber:client' type='{iq_type}' "
                f"from='alice@{DOMAIN}' to='alice@{DOMAIN}' id='inner-p2'>{payload}</iq>"
                f"</privileged_iq></iq>"
            )
            assert component_error(await gateway.iq("p2")) == ("auth", "forbidden"), payload
        # XEP-0355 §4.4: an IQ it sends on a user's behalf in a namespace delegated to it
        # is handled by the server, not delegated back (nothing answers it here).
        gateway.send(
            f"<iq from='{GATEWAY}' to='alice@{DOMAIN}' type='get' id='p4'>"
            f"<privileged_iq xmlns='{PRIVILEGE}'><iq xmlns='jabber:client' type='get' "
            f"from='alice@{DOMAIN}' to='alice@{DOMAIN}' id='inner-p4'>"
            f"<forecast xmlns='{WEATHER}'/></iq></privileged_iq></iq>"
        )
        el = await gateway.iq("p4")
        assert component_error(el) == ("cancel", "service-unavailable"), ET.tostring(el)
        inner = el.find(f"{q(PRIVILEGE, 'privilege')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'iq')}")
        assert inner is not None and inner.get("type") == "error" and inner.get("id") == "inner-p4"
        await gateway.assert_none(
            lambda e: e.tag == cq("iq") and e.find(q(DELEGATION, "delegation")) is not None
        )
        # On behalf of a JID that is not a user of this server.
        gateway.send(
            f"<iq from='{GATEWAY}' to='x@elsewhere.example' type='get' id='p3'>"
            f"<privileged_iq xmlns='{PRIVILEGE}'><iq xmlns='jabber:client' type='get' "
            f"from='x@elsewhere.example' to='x@elsewhere.example' id='i'>"
            f"<blocklist xmlns='{BLOCKING}'/></iq></privileged_iq></iq>"
        )
        assert component_error(await gateway.iq("p3"))[1] == "forbidden"
    finally:
        await gateway.raw.close()
        await alice.raw.close()


# ---- XEP-0356 §6: presence ---------------------------------------------------------------------
async def test_users_presence_reaches_the_component(server: Server) -> None:
    alice = await user(server, "alice")
    await send_presence(alice.raw, alice.jid)
    gateway = await gateway_login(server)
    try:

        def from_alice(kind: str | None) -> Callable[[ET.Element], bool]:
            return lambda e: (
                e.tag == cq("presence") and e.get("from") == alice.jid and e.get("type") == kind
            )

        # Connected after alice came online: her current presence (§6.3).
        el = await gateway.take(from_alice(None))
        assert el.get("to") == GATEWAY
        # (The same presence may come twice: once from the connection, once from the
        # broadcast still on its way when the component connected.)
        await gateway.drain()
        alice.send("<presence><show>away</show></presence>")
        el = await gateway.take(from_alice(None))
        assert el.findtext(cq("show")) == "away"
        alice.send("<presence type='unavailable'/>")
        await gateway.take(from_alice("unavailable"))
    finally:
        await gateway.raw.close()
        await alice.raw.close()


async def test_contacts_presence_reaches_a_roster_presence_component(server: Server) -> None:
    """§6.4: with "roster", the presence users get from contacts they subscribe to, once
    per change however many users share the contact; not from strangers."""
    friend = f"friend@{PLAIN}"
    for local in ("alice", "bob"):
        await server.storage.roster.put(local, DOMAIN, RosterItem(friend, subscription="to"))
    reader = await Component.login(server, READER, "reader-secret")
    plain = await Component.login(server, PLAIN, "plain-secret")
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    try:
        await reader.take(privilege_announcement)
        for someone in (alice, bob):
            await send_presence(someone.raw, someone.jid)
        # "roster" includes the users' own presence (§6.1).
        await reader.take(lambda e: e.tag == cq("presence") and e.get("from") == alice.jid)
        await reader.drain()
        for local in ("alice", "bob"):
            plain.send(
                f"<presence from='{friend}/legacy' to='{local}@{DOMAIN}'>"
                f"<show>dnd</show></presence>"
            )
        el = await reader.take(
            lambda e: e.tag == cq("presence") and e.get("from") == f"{friend}/legacy"
        )
        assert el.get("to") == READER and el.findtext(cq("show")) == "dnd"
        got = await alice.take(
            lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == f"{friend}/legacy"
        )
        assert got.findtext(q(CLIENT, "show")) == "dnd"
        plain.send(f"<presence from='stranger@{PLAIN}/x' to='alice@{DOMAIN}'/>")
        plain.send(f"<presence from='{friend}/legacy' to='alice@{DOMAIN}' type='unavailable'/>")
        el = await reader.take(lambda e: e.tag == cq("presence") and e.get("type") == "unavailable")
        assert el.get("from") == f"{friend}/legacy"
        # Neither bob's copy of the dnd presence nor the stranger's reached the component.
        await reader.assert_none(lambda e: e.tag == cq("presence"))
    finally:
        for conn in (reader, plain, alice, bob):
            await conn.raw.close()


# ---- XEP-0355: delegation ----------------------------------------------------------------------
def weather_request(iq_id: str, to: str | None = None) -> str:
    to_attr = f" to='{to}'" if to else ""
    return f"<iq type='get' id='{iq_id}'{to_attr}><forecast xmlns='{WEATHER}' city='Verona'/></iq>"


async def test_delegated_iq_is_forwarded_and_answered(server: Server) -> None:
    gateway = await gateway_login(server)
    alice = await user(server, "alice")
    try:
        for iq_id, to, addressed in (
            ("w1", DOMAIN, DOMAIN),  # to the server (§4.3)
            ("w2", None, f"alice@{DOMAIN}"),  # to the account: no 'to' ...
            ("w3", f"alice@{DOMAIN}", f"alice@{DOMAIN}"),  # ... or the own bare JID
        ):
            alice.send(weather_request(iq_id, to))
            wrapped = await gateway.take(
                lambda e: e.tag == cq("iq") and e.find(q(DELEGATION, "delegation")) is not None
            )
            assert (wrapped.get("type"), wrapped.get("from"), wrapped.get("to")) == (
                "get",
                DOMAIN,
                GATEWAY,
            )
            inner = wrapped.find(
                f"{q(DELEGATION, 'delegation')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'iq')}"
            )
            assert inner is not None, ET.tostring(wrapped)
            assert (inner.get("from"), inner.get("to"), inner.get("id")) == (
                alice.jid,
                addressed,
                iq_id,
            )
            assert inner.find(q(WEATHER, "forecast")).get("city") == "Verona"  # type: ignore[union-attr]
            gateway.send(
                f"<iq type='result' id='{wrapped.get('id')}' from='{GATEWAY}' to='{DOMAIN}'>"
                f"<delegation xmlns='{DELEGATION}'><forwarded xmlns='{FORWARD}'>"
                f"<iq xmlns='jabber:client' type='result' id='{iq_id}' from='{addressed}' "
                f"to='{alice.jid}'><forecast xmlns='{WEATHER}'><sky>clear</sky></forecast></iq>"
                f"</forwarded></delegation></iq>"
            )
            answer = await alice.iq(iq_id)
            assert answer.get("type") == "result", ET.tostring(answer)
            assert answer.get("from") == addressed
            assert answer.findtext(f"{q(WEATHER, 'forecast')}/{q(WEATHER, 'sky')}") == "clear"
        # The component's error answer reaches the user as it is.
        alice.send(weather_request("w4", DOMAIN))
        wrapped = await gateway.take(lambda e: e.tag == cq("iq") and e.get("type") == "get")
        gateway.send(
            f"<iq type='result' id='{wrapped.get('id')}' from='{GATEWAY}' to='{DOMAIN}'>"
            f"<delegation xmlns='{DELEGATION}'><forwarded xmlns='{FORWARD}'>"
            f"<iq xmlns='jabber:client' type='error' id='w4' from='{DOMAIN}' to='{alice.jid}'>"
            f"<error type='cancel'><item-not-found xmlns='{STANZA_ERRORS}'/></error></iq>"
            f"</forwarded></delegation></iq>"
        )
        assert error_condition(await alice.iq("w4")) == ("cancel", "item-not-found")
        # An answer that is no forwarded IQ: internal-server-error.
        alice.send(weather_request("w5", DOMAIN))
        wrapped = await gateway.take(lambda e: e.tag == cq("iq") and e.get("type") == "get")
        gateway.send(f"<iq type='result' id='{wrapped.get('id')}' from='{GATEWAY}' to='{DOMAIN}'/>")
        assert error_condition(await alice.iq("w5"))[1] == "internal-server-error"
        # An IQ to another user's bare JID is not delegated (only one's own, §4.3).
        alice.send(weather_request("w6", f"bob@{DOMAIN}"))
        assert error_condition(await alice.iq("w6"))[1] == "service-unavailable"
        # What the managing entity sends itself is handled by the server (§4.4).
        gateway.send(
            f"<iq type='get' id='self1' from='{GATEWAY}' to='{DOMAIN}'>"
            f"<forecast xmlns='{WEATHER}'/></iq>"
        )
        assert component_error(await gateway.iq("self1"))[1] == "service-unavailable"
    finally:
        await gateway.raw.close()
        await alice.raw.close()


async def test_server_disco_lists_delegated_features_while_connected(server: Server) -> None:
    alice = await user(server, "alice")
    try:

        def features(el: ET.Element) -> set[str]:
            return {f.get("var") or "" for f in el.iter(q(DISCO_INFO, "feature"))}

        before = features(await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN))
        assert DELEGATION in before  # XEP-0355 §7.1
        assert not set(WEATHER_FEATURES) & before
        gateway = await gateway_login(server)
        during = features(await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN))
        assert set(WEATHER_FEATURES) <= during  # §7.2
        await gateway.raw.close()
        await wait_disconnected(server, GATEWAY)
        after = features(await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN))
        assert not set(WEATHER_FEATURES) & after
    finally:
        await alice.raw.close()


async def test_delegation_without_the_component(server: Server) -> None:
    alice = await user(server, "alice")
    try:
        # Not connected: service-unavailable, at once.
        alice.send(weather_request("n1", DOMAIN))
        assert error_condition(await alice.iq("n1")) == ("cancel", "service-unavailable")
        gateway = await gateway_login(server)
        # No answer within delegation_timeout (1 s here): remote-server-timeout.
        alice.send(weather_request("n2", DOMAIN))
        await gateway.take(lambda e: e.tag == cq("iq") and e.get("type") == "get")
        assert error_condition(await alice.iq("n2", timeout=5)) == ("wait", "remote-server-timeout")
        # Two waiting (delegation_max_pending = 2): a third is refused at once.
        for iq_id in ("n3", "n4", "n5"):
            alice.send(weather_request(iq_id, DOMAIN))
        assert error_condition(await alice.iq("n5")) == ("wait", "resource-constraint")
        for _ in range(2):
            await gateway.take(lambda e: e.tag == cq("iq") and e.get("type") == "get")
        # Gone before answering: service-unavailable for what it held.
        await gateway.raw.close()
        for iq_id in ("n3", "n4"):
            assert error_condition(await alice.iq(iq_id))[1] == "service-unavailable"
    finally:
        await alice.raw.close()


# ---- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secret": "s", "roster": "all"}, f"'components.{GATEWAY}.roster'"),
        ({"secret": "s", "message": "incoming"}, f"'components.{GATEWAY}.message'"),
        ({"secret": "s", "presence": "everyone"}, f"'components.{GATEWAY}.presence'"),
        ({"secret": "s", "iq": {BLOCKING: "write"}}, f"'components.{GATEWAY}.iq.{BLOCKING}'"),
        ({"secret": "s", "delegations": [PRIVILEGE]}, f"'components.{GATEWAY}.delegations.0'"),
        ({"secret": "s", "priviledges": "all"}, f"'components.{GATEWAY}.priviledges'"),
        ({"roster": "get"}, f"'components.{GATEWAY}.secret'"),
    ],
    ids=["roster", "message", "presence", "iq", "reserved-namespace", "unknown-key", "no-secret"],
)
def test_bad_privilege_configuration_names_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": {"domains": [DOMAIN]}, "components": {GATEWAY: settings}})
    assert message in str(info.value)


def test_a_namespace_is_delegated_to_one_component() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "components": {
                    GATEWAY: {"secret": "a", "delegations": [WEATHER]},
                    PLAIN: {"secret": "b", "delegations": [WEATHER]},
                }
            }
        )
    assert f"already delegated to {GATEWAY}" in str(info.value)


def test_short_and_long_forms_agree() -> None:
    config = config_from_dict({"components": {GATEWAY: SECRET, PLAIN: {"secret": "b"}}})
    assert config.components[GATEWAY].secret == SECRET
    assert config.components[GATEWAY].roster == "none"
    assert not config.components[PLAIN].privileged
    assert COMPONENT_NS  # the component stream namespace used above
