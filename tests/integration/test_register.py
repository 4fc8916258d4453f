"""XEP-0077 In-Band Registration over real sockets: creating an account before
authentication, then the account's own administration (registration on file, password
change, removal), with raw XML and with slixmpp's xep_0077 plugin."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError

from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    PASSWORD,
    SASL,
    TLS_NS,
    Client,
    RawClient,
    add_user,
    client_ssl_context,
    connect,
    disconnect,
    error_condition,
    q,
    raw_login,
    start_server,
)

REGISTER = "jabber:iq:register"
REGISTER_FEATURE = "http://jabber.org/features/iq-register"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
IQ = q(CLIENT, "iq")
MODULES = {"enabled": ["register"]}
NEW_PASSWORD = "another-long-secret"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def closed(data_dir: Path) -> AsyncIterator[Server]:
    """Registration at its default: closed."""
    srv = await start_server(data_dir, modules=MODULES)
    await add_user(srv, "alice")
    await add_user(srv, "bob")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def open_server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await start_server(data_dir, modules=MODULES, registration={"open": True})
    await add_user(srv, "alice")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def raws() -> AsyncIterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for raw in opened:
        await raw.close()


async def encrypted_stream(server: Server, raws: list[RawClient]) -> tuple[RawClient, ET.Element]:
    """A new connection after STARTTLS, not authenticated; returns it and its features."""
    raw = await RawClient.open(server.ports["c2s"])
    raws.append(raw)
    raw.open_stream()
    await raw.features()
    raw.send(f"<starttls xmlns='{TLS_NS}'/>")
    await raw.expect(q(TLS_NS, "proceed"))
    await raw.writer.start_tls(client_ssl_context(), server_hostname=DOMAIN)
    raw.open_stream()
    return raw, await raw.features()


async def iq(
    raw: RawClient, iq_id: str, body: str, iq_type: str = "get", to: str = ""
) -> ET.Element:
    to_attr = f" to='{to}'" if to else ""
    raw.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{body}</iq>")
    return await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == iq_id)


def register_set(username: str | None, password: str | None) -> str:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<query xmlns='{REGISTER}'>{fields}</query>"


def assert_error(answer: ET.Element, error_type: str, condition: str) -> None:
    assert answer.get("type") == "error", ET.tostring(answer)
    assert error_condition(answer) == (error_type, condition), ET.tostring(answer)


async def can_log_in(server: Server, local: str, password: str) -> bool:
    raw = await RawClient.open(server.ports["c2s"])
    try:
        raw.open_stream()
        await raw.features()
        await raw.starttls()
        return (await raw.auth_scram(local, password)).tag == q(SASL, "success")
    finally:
        await raw.close()


async def register(
    server: Server, raws: list[RawClient], local: str, password: str = PASSWORD
) -> ET.Element:
    raw, _features = await encrypted_stream(server, raws)
    return await iq(raw, "r1", register_set(local, password), "set")


# ---- registration closed ----------------------------------------------------------------
async def test_closed_by_default_no_feature_and_service_unavailable(
    closed: Server, raws: list[RawClient]
) -> None:
    assert closed.config.registration.open is False
    raw, features = await encrypted_stream(closed, raws)
    assert features.find(q(REGISTER_FEATURE, "register")) is None
    # XEP-0077 §3.1: a host without in-band registration answers service-unavailable.
    answer = await iq(raw, "g1", f"<query xmlns='{REGISTER}'/>")
    assert_error(answer, "cancel", "service-unavailable")
    answer = await iq(raw, "s1", register_set("newbie", PASSWORD), "set")
    assert_error(answer, "cancel", "service-unavailable")
    assert answer.get("to") is None
    assert not await closed.storage.accounts.exists("newbie", DOMAIN)
    # The stream goes on: the client can still authenticate on it.
    assert (await raw.auth_scram("alice")).tag == q(SASL, "success")


async def test_disco_feature_declared_even_when_closed(closed: Server) -> None:
    raw, _jid = await raw_login(closed, "alice")
    try:
        answer = await iq(raw, "d1", f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN)
        features = {f.get("var") for f in answer.iter(q(DISCO_INFO, "feature"))}
        assert REGISTER in features  # XEP-0077 §10: password change and removal work
    finally:
        await raw.close()


# ---- registration open --------------------------------------------------------------------
async def test_register_then_log_in_as_the_new_user(
    open_server: Server, raws: list[RawClient]
) -> None:
    raw, features = await encrypted_stream(open_server, raws)
    assert features.find(q(REGISTER_FEATURE, "register")) is not None
    # §3.1: the fields to fill in, answered with no 'to' (there is no session yet).
    answer = await iq(raw, "g1", f"<query xmlns='{REGISTER}'/>")
    assert answer.get("type") == "result" and answer.get("to") is None, ET.tostring(answer)
    query = answer.find(q(REGISTER, "query"))
    assert query is not None
    assert [c.tag for c in query] == [
        q(REGISTER, "instructions"),
        q(REGISTER, "username"),
        q(REGISTER, "password"),
    ]
    assert (query.findtext(q(REGISTER, "instructions")) or "").strip()
    answer = await iq(raw, "s1", register_set("Newbie", PASSWORD), "set")
    assert answer.get("type") == "result" and answer.get("to") is None, ET.tostring(answer)
    assert list(answer) == []
    # The username was prepared (RFC 7622 §3.3: case-mapped).
    assert await open_server.storage.accounts.exists("newbie", DOMAIN)
    # §3.1.1: then authenticate on the same stream with the new identity.
    assert (await raw.auth_scram("newbie")).tag == q(SASL, "success")
    fresh, jid = await raw_login(open_server, "newbie")
    raws.append(fresh)
    assert jid == f"newbie@{DOMAIN}/raw"


async def test_not_offered_or_answered_before_tls(
    open_server: Server, raws: list[RawClient]
) -> None:
    raw = await RawClient.open(open_server.ports["c2s"])
    raws.append(raw)
    raw.open_stream()
    features = await raw.features()
    assert features.find(q(REGISTER_FEATURE, "register")) is None
    answer = await iq(raw, "s1", register_set("newbie", PASSWORD), "set")
    assert_error(answer, "auth", "not-authorized")  # XEP-0077 §11: a secured channel only
    assert not await open_server.storage.accounts.exists("newbie", DOMAIN)


async def test_existing_user_is_a_conflict(open_server: Server, raws: list[RawClient]) -> None:
    answer = await register(open_server, raws, "alice", "some-other-password")
    assert_error(answer, "cancel", "conflict")  # §3.1, example 6
    assert await can_log_in(open_server, "alice", PASSWORD)
    assert not await can_log_in(open_server, "alice", "some-other-password")


@pytest.mark.parametrize(
    ("username", "password", "error_type", "condition"),
    [
        ("newbie", None, "modify", "not-acceptable"),  # §3.1, example 7
        ("newbie", "", "modify", "not-acceptable"),  # §3.1: an empty password too
        (None, PASSWORD, "modify", "not-acceptable"),
        ("", PASSWORD, "modify", "not-acceptable"),
        ("newbie", "short", "modify", "not-acceptable"),  # min_password_length
        ("new bie", PASSWORD, "modify", "jid-malformed"),  # RFC 7622 §3.3.1
        ("new@bie", PASSWORD, "modify", "jid-malformed"),
    ],
    ids=[
        "no-password",
        "empty-password",
        "no-username",
        "empty-username",
        "short-password",
        "space",
        "at-sign",
    ],
)
async def test_incomplete_or_invalid_registration(
    open_server: Server,
    raws: list[RawClient],
    username: str | None,
    password: str | None,
    error_type: str,
    condition: str,
) -> None:
    raw, _features = await encrypted_stream(open_server, raws)
    answer = await iq(raw, "s1", register_set(username, password), "set")
    assert_error(answer, error_type, condition)
    assert await open_server.storage.accounts.list_accounts(DOMAIN) == ["alice"]


async def test_remove_before_authentication_is_unexpected(
    open_server: Server, raws: list[RawClient]
) -> None:
    raw, _features = await encrypted_stream(open_server, raws)
    answer = await iq(raw, "x1", f"<query xmlns='{REGISTER}'><remove/></query>", "set")
    assert_error(answer, "wait", "unexpected-request")  # §3.2 error cases
    assert await open_server.storage.accounts.exists("alice", DOMAIN)


async def test_rate_limit_per_address(data_dir: Path, raws: list[RawClient]) -> None:
    server = await start_server(
        data_dir, modules=MODULES, registration={"open": True, "max_per_ip": 2}
    )
    try:
        assert (await register(server, raws, "one")).get("type") == "result"
        # A failed attempt does not use up the allowance.
        assert_error(await register(server, raws, "one"), "cancel", "conflict")
        assert (await register(server, raws, "two")).get("type") == "result"
        answer = await register(server, raws, "three")
        assert_error(answer, "wait", "policy-violation")
        assert not await server.storage.accounts.exists("three", DOMAIN)
        # Existing accounts are unaffected.
        assert await can_log_in(server, "two", PASSWORD)
    finally:
        await server.stop()


async def test_slixmpp_registers_with_the_register_event(open_server: Server) -> None:
    client = Client(f"carol@{DOMAIN}", PASSWORD)
    client.register_plugin("xep_0004")
    client.register_plugin("xep_0066")
    client.register_plugin("xep_0077")
    client.enable_direct_tls = False
    fields: list[set[str]] = []
    started = asyncio.Event()

    async def on_register(form: Any) -> None:
        fields.append({el.tag for el in form["register"].xml})
        resp = client.Iq()
        resp["type"] = "set"
        resp["register"]["username"] = client.boundjid.user
        resp["register"]["password"] = client.password
        await resp.send()

    client.add_event_handler("register", on_register)
    client.add_event_handler("session_start", lambda _e: started.set())
    client.connect("127.0.0.1", open_server.ports["c2s"])
    try:
        await asyncio.wait_for(started.wait(), 15)
        assert fields == [
            {q(REGISTER, "instructions"), q(REGISTER, "username"), q(REGISTER, "password")}
        ]
        assert str(client.boundjid.bare) == f"carol@{DOMAIN}"
        assert await open_server.storage.accounts.exists("carol", DOMAIN)
    finally:
        await disconnect(client)


# ---- the logged-in user's account -----------------------------------------------------------
async def test_registration_on_file(closed: Server) -> None:
    raw, _jid = await raw_login(closed, "alice")
    try:
        answer = await iq(raw, "g1", f"<query xmlns='{REGISTER}'/>")
        assert answer.get("type") == "result", ET.tostring(answer)
        query = answer.find(q(REGISTER, "query"))
        assert query is not None
        assert query.find(q(REGISTER, "registered")) is not None  # §3.1, example 3
        assert query.findtext(q(REGISTER, "username")) == "alice"
        assert not query.findtext(q(REGISTER, "password"))
    finally:
        await raw.close()


async def test_password_change_resets_other_sessions(closed: Server) -> None:
    """§3.3, with registration closed: account administration still works."""
    raw1, _jid1 = await raw_login(closed, "alice", "one")
    raw2, _jid2 = await raw_login(closed, "alice", "two")
    try:
        answer = await iq(raw1, "c1", register_set("alice", NEW_PASSWORD), "set", to=DOMAIN)
        assert answer.get("type") == "result", ET.tostring(answer)
        # RFC 6120 §4.9.3.16: the other session is closed with <reset/>.
        assert await raw2.stream_error() == "reset"
        # The session that asked carries on.
        answer = await iq(raw1, "p1", "<ping xmlns='urn:xmpp:ping'/>", to=DOMAIN)
        assert answer.get("type") == "result"
        assert not await can_log_in(closed, "alice", PASSWORD)
        assert await can_log_in(closed, "alice", NEW_PASSWORD)
    finally:
        await raw1.close()
        await raw2.close()


@pytest.mark.parametrize(
    ("body", "error_type", "condition"),
    [
        (register_set("alice", ""), "modify", "bad-request"),  # §3.3: never a null password
        (register_set("alice", None), "modify", "bad-request"),
        (register_set(None, NEW_PASSWORD), "modify", "bad-request"),  # §3.3 error cases
        (register_set("alice", "short"), "modify", "not-acceptable"),
        (register_set("bob", NEW_PASSWORD), "auth", "forbidden"),
    ],
    ids=["empty", "no-password", "no-username", "too-short", "someone-else"],
)
async def test_refused_password_changes_keep_the_password(
    closed: Server, body: str, error_type: str, condition: str
) -> None:
    raw, _jid = await raw_login(closed, "alice")
    try:
        answer = await iq(raw, "c1", body, "set")
        assert_error(answer, error_type, condition)
        assert answer.find(q(REGISTER, "query")) is None  # §3.3: the request is not echoed
    finally:
        await raw.close()
    assert await can_log_in(closed, "alice", PASSWORD)
    assert await can_log_in(closed, "bob", PASSWORD)


async def test_slixmpp_change_password(closed: Server) -> None:
    client = await connect(closed, f"alice@{DOMAIN}")
    try:
        client.register_plugin("xep_0004")
        client.register_plugin("xep_0066")
        client.register_plugin("xep_0077")
        await client.plugin["xep_0077"].change_password(NEW_PASSWORD, jid=DOMAIN)
    finally:
        await disconnect(client)
    assert await can_log_in(closed, "alice", NEW_PASSWORD)


async def test_account_removal(closed: Server) -> None:
    storage = closed.storage
    # A mutual subscription, and data of alice's own.
    await storage.roster.put("alice", DOMAIN, RosterItem(f"bob@{DOMAIN}", subscription="both"))
    await storage.roster.put("bob", DOMAIN, RosterItem(f"alice@{DOMAIN}", subscription="both"))
    await storage.kv.set("alice", DOMAIN, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
    raw1, _jid1 = await raw_login(closed, "alice", "one")
    raw2, _jid2 = await raw_login(closed, "alice", "two")
    try:
        answer = await iq(raw1, "u1", f"<query xmlns='{REGISTER}'><remove/></query>", "set")
        # §3.2: the result, then <not-authorized/> on every session, this one included.
        assert answer.get("type") == "result", ET.tostring(answer)
        assert await raw1.stream_error() == "not-authorized"
        assert await raw2.stream_error() == "not-authorized"
    finally:
        await raw1.close()
        await raw2.close()
    assert not await storage.accounts.exists("alice", DOMAIN)
    assert (await storage.roster.load("alice", DOMAIN)).items == {}
    assert await storage.kv.get("alice", DOMAIN, "vcard-temp") is None
    assert not await can_log_in(closed, "alice", PASSWORD)
    # §3.2: the subscriptions were cancelled on the contact's side: alice is gone from
    # bob's roster (a new alice must not inherit the subscription).
    assert f"alice@{DOMAIN}" not in (await storage.roster.load("bob", DOMAIN)).items


async def test_remove_with_other_children_is_bad_request(closed: Server) -> None:
    raw, _jid = await raw_login(closed, "alice")
    try:
        body = f"<query xmlns='{REGISTER}'><remove/><username>alice</username></query>"
        assert_error(await iq(raw, "u1", body, "set"), "modify", "bad-request")  # §3.2
    finally:
        await raw.close()
    assert await closed.storage.accounts.exists("alice", DOMAIN)


async def test_slixmpp_cancel_registration(closed: Server) -> None:
    client = await connect(closed, f"bob@{DOMAIN}")
    client.register_plugin("xep_0004")
    client.register_plugin("xep_0066")
    client.register_plugin("xep_0077")
    try:
        try:
            await client.plugin["xep_0077"].cancel_registration(timeout=5)
        except IqError as exc:  # pragma: no cover - shows the server's answer
            raise AssertionError(str(exc.iq)) from None
        await asyncio.wait_for(client.disconnected_event.wait(), 5)
        assert client.stream_errors == ["not-authorized"]
    finally:
        await disconnect(client)
    assert not await closed.storage.accounts.exists("bob", DOMAIN)
