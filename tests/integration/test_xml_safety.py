"""What a sender puts in a stanza cannot break its recipient, over real sockets: elements
in the reserved XML namespace (`<xml:foo/>`) reach online (slixmpp) and offline users,
subscription requests, vCards, private storage and the archive as well-formed XML;
unreadable stored rows are skipped without blocking the rows after them; namespace names
that are no URI and text between stanzas end the sender's stream; error texts do not echo
huge input back (RFC 6120 §4.9.3, §11.7; Namespaces in XML §3)."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dovecote.modules.private import storage_key
from dovecote.modules.vcard import STORAGE_KEY as VCARD_KEY
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    STREAM_ERRORS,
    STREAMS,
    RawClient,
    add_user,
    connect,
    disconnect,
    error_condition,
    login_resource,
    q,
    start_server,
)

XML_NS = "http://www.w3.org/XML/1998/namespace"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
VCARD = "vcard-temp"
PRIVATE = "jabber:iq:private"
PREFS = "urn:example:prefs"
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"
#: The payload of the security report: a child in the XML namespace.
POISON = "<xml:foo/>"
#: A row as the serializer wrote it before the fix: the XML namespace declared as the
#: default namespace, which no namespace-aware parser accepts.
POISONED_MESSAGE_ROW = (
    f"<message xmlns='jabber:client' from='{ALICE}/r' to='{BOB}' type='chat'>"
    f"<body>poisoned</body><foo xmlns='{XML_NS}'/></message>"
)
POISONED_SUBSCRIBE_ROW = (
    f"<presence xmlns='jabber:client' from='{ALICE}' to='{BOB}' type='subscribe'>"
    f"<foo xmlns='{XML_NS}'/></presence>"
)


@pytest.fixture
async def users(server: Server) -> None:
    for local in ("alice", "bob", "carol"):
        await add_user(server, local)


def chat(to: str, body: str, extra: str = "") -> str:
    return f"<message to='{to}' type='chat'><body>{body}</body>{extra}</message>"


def body_of(el: ET.Element) -> str | None:
    return el.findtext(q(CLIENT, "body"))


def is_error(el: ET.Element) -> bool:
    return el.get("type") == "error" or el.tag == q(STREAMS, "error")


async def wait_offline(server: Server, local: str, count: int) -> None:
    for _ in range(200):
        if await server.storage.offline.count(local, DOMAIN) == count:
            return
        await asyncio.sleep(0.02)
    assert await server.storage.offline.count(local, DOMAIN) == count


async def offline_row(server: Server, text: str) -> None:
    assert await server.storage.offline.store("bob", DOMAIN, text, 100)


def good_row(body: str) -> str:
    return (
        f"<message xmlns='jabber:client' from='{ALICE}/r' to='{BOB}' type='chat'>"
        f"<body>{body}</body></message>"
    )


def error_logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(
        record.levelno == logging.ERROR and all(w in record.getMessage() for w in words)
        for record in caplog.records
    )


# ---- the attack: messages --------------------------------------------------------------
@pytest.mark.usefixtures("users")
async def test_online_slixmpp_victim_gets_the_message_and_stays_connected(
    server: Server,
) -> None:
    alice = await login_resource(server, "alice")
    bob = await connect(server, f"{BOB}/slix")
    try:
        alice.send(chat(f"{BOB}/slix", "poisoned", POISON))
        msg = await asyncio.wait_for(bob.messages.get(), 5)
        assert msg["body"] == "poisoned"
        assert msg.xml.find(q(XML_NS, "foo")) is not None
        alice.send(chat(f"{BOB}/slix", "after"))
        msg = await asyncio.wait_for(bob.messages.get(), 5)
        assert msg["body"] == "after"
        assert not bob.disconnected_event.is_set()
        assert bob.stream_errors == []
        await alice.assert_none(is_error)
    finally:
        await disconnect(bob)
        await alice.close()


@pytest.mark.usefixtures("users")
async def test_offline_victim_gets_every_message_and_the_contacts_presence(
    server: Server,
) -> None:
    await server.storage.roster.put("bob", DOMAIN, RosterItem(CAROL, None, "both"))
    await server.storage.roster.put("carol", DOMAIN, RosterItem(BOB, None, "both"))
    carol = await login_resource(server, "carol", presence=True)
    alice = await login_resource(server, "alice")
    try:
        alice.send(chat(BOB, "before"))
        alice.send(chat(BOB, "poisoned", POISON))
        alice.send(chat(BOB, "after"))
        await wait_offline(server, "bob", 3)
        for _login in range(2):  # a second login finds nothing left over
            bob = await login_resource(server, "bob", roster=True)
            try:
                bob.send("<presence/>")
                if _login == 0:
                    received = [await bob.message() for _ in range(3)]
                    assert [body_of(m) for m in received] == ["before", "poisoned", "after"]
                    assert received[1].find(q(XML_NS, "foo")) is not None
                await bob.presence(from_=carol.jid, type=None)
                await bob.assert_none(lambda e: is_error(e) or e.tag == q(CLIENT, "message"))
                assert await server.storage.offline.count("bob", DOMAIN) == 0
            finally:
                await bob.close()
        await alice.assert_none(is_error)
    finally:
        await alice.close()
        await carol.close()


@pytest.mark.usefixtures("users")
async def test_unreadable_stored_offline_message_does_not_block_the_others(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    await offline_row(server, good_row("one"))
    await offline_row(server, POISONED_MESSAGE_ROW)
    await offline_row(server, good_row("three"))
    with caplog.at_level(logging.ERROR):
        bob = await login_resource(server, "bob")
        try:
            bob.send("<presence/>")
            assert [body_of(await bob.message()) for _ in range(2)] == ["one", "three"]
            await bob.presence(from_=bob.jid, type=None)
            await bob.assert_none(lambda e: is_error(e) or e.tag == q(CLIENT, "message"))
        finally:
            await bob.close()
    # The bad row is gone with the others (not retried at every login), and logged.
    assert await server.storage.offline.count("bob", DOMAIN) == 0
    assert error_logged(caplog, "offline message", BOB)


# ---- subscription requests --------------------------------------------------------------
async def bob_sees_request(server: Server) -> ET.Element:
    bob = await login_resource(server, "bob", roster=True)
    try:
        bob.send("<presence/>")
        request = await bob.presence(type="subscribe")
        assert request.get("from") == ALICE
        await bob.presence(from_=bob.jid, type=None)
        await bob.assert_none(is_error)
        return request
    finally:
        await bob.close()


@pytest.mark.usefixtures("users")
async def test_subscription_request_with_an_xml_namespace_child(server: Server) -> None:
    alice = await login_resource(server, "alice")
    try:
        alice.send(f"<presence to='{BOB}' type='subscribe'>{POISON}<status>hi</status></presence>")
        await alice.assert_none(is_error)
        for _login in range(2):  # shown again at each login until answered
            request = await bob_sees_request(server)
            assert request.find(q(XML_NS, "foo")) is not None
            assert request.findtext(q(CLIENT, "status")) == "hi"
    finally:
        await alice.close()


@pytest.mark.usefixtures("users")
async def test_unreadable_stored_subscription_request_is_still_shown(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    await server.storage.roster.add_pending("bob", DOMAIN, ALICE, POISONED_SUBSCRIBE_ROW)
    with caplog.at_level(logging.ERROR):
        for _login in range(2):
            request = await bob_sees_request(server)
            assert request.find(q(XML_NS, "foo")) is None
    assert error_logged(caplog, "subscription request", ALICE)
    # Stored again readable: logged once, not at every login.
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1


# ---- vCard, private storage, archive ----------------------------------------------------
@pytest.mark.usefixtures("users")
async def test_vcard_with_xml_namespace_content_reads_back(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    try:
        vcard = f"<vCard xmlns='{VCARD}'><FN>Alice</FN><xml:foo xml:bar='1'>x</xml:foo></vCard>"
        result = await alice.request(vcard, "set")
        assert result.get("type") == "result", ET.tostring(result)
        for reader, to in ((alice, None), (bob, ALICE)):
            result = await reader.request(f"<vCard xmlns='{VCARD}'/>", "get", to)
            assert result.get("type") == "result", ET.tostring(result)
            foo = result.find(f"{q(VCARD, 'vCard')}/{q(XML_NS, 'foo')}")
            assert foo is not None and foo.get(q(XML_NS, "bar")) == "1" and foo.text == "x"
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.usefixtures("users")
async def test_unreadable_stored_vcard_is_no_vcard(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    await server.storage.kv.set("alice", DOMAIN, VCARD_KEY, f"<vCard xmlns='{XML_NS}'/>")
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob")
    try:
        with caplog.at_level(logging.ERROR):
            own = await alice.request(f"<vCard xmlns='{VCARD}'/>", "get")
            other = await bob.request(f"<vCard xmlns='{VCARD}'/>", "get", ALICE)
        assert own.get("type") == "result", ET.tostring(own)
        assert list(own.find(q(VCARD, "vCard"))) == []  # type: ignore[arg-type]
        # XEP-0054 §3.3: what anyone else gets for "no vCard".
        assert error_condition(other) == ("cancel", "service-unavailable")
        assert error_logged(caplog, "vCard", ALICE)
        # Setting a new one repairs it.
        result = await alice.request(f"<vCard xmlns='{VCARD}'><FN>A</FN></vCard>", "set")
        assert result.get("type") == "result"
        own = await alice.request(f"<vCard xmlns='{VCARD}'/>", "get")
        assert own.findtext(f"{q(VCARD, 'vCard')}/{q(VCARD, 'FN')}") == "A"
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.usefixtures("users")
async def test_private_storage_with_xml_namespace_content_reads_back(server: Server) -> None:
    alice = await login_resource(server, "alice")
    try:
        stored = f"<query xmlns='{PRIVATE}'><prefs xmlns='{PREFS}'>{POISON}</prefs></query>"
        result = await alice.request(stored, "set")
        assert result.get("type") == "result", ET.tostring(result)
        result = await alice.request(f"<query xmlns='{PRIVATE}'><prefs xmlns='{PREFS}'/></query>")
        assert result.get("type") == "result", ET.tostring(result)
        path = f"{q(PRIVATE, 'query')}/{q(PREFS, 'prefs')}/{q(XML_NS, 'foo')}"
        assert result.find(path) is not None
    finally:
        await alice.close()


@pytest.mark.usefixtures("users")
async def test_unreadable_stored_private_xml_is_nothing_stored(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    await server.storage.kv.set("alice", DOMAIN, storage_key(PREFS), f"<query xmlns='{XML_NS}'/>")
    alice = await login_resource(server, "alice")
    try:
        with caplog.at_level(logging.ERROR):
            result = await alice.request(
                f"<query xmlns='{PRIVATE}'><prefs xmlns='{PREFS}'/></query>"
            )
        assert result.get("type") == "result", ET.tostring(result)
        prefs = result.find(f"{q(PRIVATE, 'query')}/{q(PREFS, 'prefs')}")
        assert prefs is not None and list(prefs) == []
        assert error_logged(caplog, "private XML", PREFS)
    finally:
        await alice.close()


@pytest.mark.usefixtures("users")
async def test_archived_message_with_xml_namespace_child_is_returned(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob", presence=True)
    try:
        alice.send(chat(BOB, "poisoned", POISON))
        assert body_of(await bob.message()) == "poisoned"
        iq_id = alice.next_id()
        alice.send(f"<iq type='set' id='{iq_id}'><query xmlns='{MAM}' queryid='f'/></iq>")
        fin = await alice.iq(iq_id)
        assert fin.get("type") == "result", ET.tostring(fin)
        results = [el for el in alice.backlog if el.find(q(MAM, "result")) is not None]
        forwarded = [
            r.find(f"{q(MAM, 'result')}/{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
            for r in results
        ]
        assert [body_of(m) for m in forwarded if m is not None] == ["poisoned"]
        assert forwarded[0].find(q(XML_NS, "foo")) is not None  # type: ignore[union-attr]
    finally:
        await alice.close()
        await bob.close()


# ---- what ends the sender's stream ------------------------------------------------------
@pytest.mark.usefixtures("users")
async def test_namespace_name_with_a_brace_ends_the_senders_stream_not_the_victims(
    server: Server,
) -> None:
    alice = await login_resource(server, "alice")
    bob = await connect(server, f"{BOB}/slix")
    try:
        alice.send(chat(f"{BOB}/slix", "poisoned", "<x xmlns='urn:a}b'/>"))
        assert await alice.raw.stream_error() == "not-well-formed"
        carol = await login_resource(server, "carol")
        carol.send(chat(f"{BOB}/slix", "after"))
        msg = await asyncio.wait_for(bob.messages.get(), 5)
        assert msg["body"] == "after"
        assert not bob.disconnected_event.is_set()
        await carol.close()
    finally:
        await disconnect(bob)
        await alice.close()


@pytest.mark.usefixtures("users")
async def test_text_between_stanzas_is_bad_format(server: Server) -> None:
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob", presence=True)
    try:
        alice.send(" \n\t ")  # whitespace keepalive: fine
        alice.send(chat(BOB, "one"))
        assert body_of(await bob.message()) == "one"
        alice.send(f"junk{chat(BOB, 'two')}")
        # RFC 6120 §11.7 allows only whitespace between stanzas.
        assert await alice.raw.stream_error() == "bad-format"
        await bob.assert_none(lambda e: e.tag == q(CLIENT, "message"))
    finally:
        await alice.close()
        await bob.close()


# ---- error texts quote bad input briefly ------------------------------------------------
def stream_error_text(el: ET.Element) -> str:
    return el.findtext(q(STREAM_ERRORS, "text")) or ""


async def test_host_unknown_does_not_echo_a_huge_to(server: Server) -> None:
    raw = await RawClient.open(server.ports["c2s"])
    try:
        raw.open_stream(to="x" * (200 * 1024))
        error = await raw.wait_for(lambda e: e.tag == q(STREAMS, "error"))
        assert error.find(q(STREAM_ERRORS, "host-unknown")) is not None
        text = stream_error_text(error)
        assert "xxxxxxxx" in text and len(text) < 200, len(text)
    finally:
        await raw.close()


@pytest.mark.usefixtures("users")
async def test_jid_malformed_does_not_echo_a_huge_to(server: Server) -> None:
    alice = await login_resource(server, "alice")
    try:
        huge = "a@" + "b" * (100 * 1024)
        alice.send(f"<message to='{huge}' id='m1' type='chat'><body>x</body></message>")
        error = await alice.message()
        assert error_condition(error) == ("modify", "jid-malformed")
        text = error.findtext(f"{q(CLIENT, 'error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text")
        assert text is not None and "bbbbbbbb" in text and len(text) < 200, len(text or "")
        assert len(ET.tostring(error)) < 1024
    finally:
        await alice.close()


async def test_component_host_unknown_does_not_echo_a_huge_to(tmp_path: Path) -> None:
    server = await start_server(
        tmp_path / "data",
        listen={"component": "127.0.0.1:0"},
        components={"gateway.example.org": "secret"},
    )
    raw = await RawClient.open(server.ports["component"])
    try:
        raw.send(
            f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{STREAMS}' "
            f"to='{'x' * (200 * 1024)}'>"
        )
        error = await raw.wait_for(lambda e: e.tag == q(STREAMS, "error"))
        assert error.find(q(STREAM_ERRORS, "host-unknown")) is not None
        text = stream_error_text(error)
        assert "xxxxxxxx" in text and len(text) < 200, len(text)
    finally:
        await raw.close()
        await server.stop()


async def test_stream_header_does_not_echo_a_huge_from(server: Server) -> None:
    raw = await RawClient.open(server.ports["c2s"])
    try:
        raw.open_stream(extra=f"from='{'y' * (200 * 1024)}'")
        await raw.features()
        assert raw.header is not None and "to" not in raw.header
    finally:
        await raw.close()
    raw = await RawClient.open(server.ports["c2s"])
    try:
        raw.open_stream(extra=f"from='{ALICE}'")
        await raw.features()
        assert raw.header is not None and raw.header["to"] == ALICE
    finally:
        await raw.close()
