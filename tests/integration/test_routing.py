"""Local routing between users of one server over real sockets: RFC 6120 §10 (server rules
for processing XML stanzas) and RFC 6121 §8 (delivery to bare and full JIDs, priorities)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

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
    send_presence,
    start_server,
)

OTHER = "other.example"
MESSAGE = q(CLIENT, "message")
IQ = q(CLIENT, "iq")
PRESENCE = q(CLIENT, "presence")
PING = "urn:xmpp:ping"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
CUSTOM = "urn:example:dovecote:test"
#: How long a "nothing arrives" check waits.
QUIET = 0.3


@dataclass
class Peer:
    """One logged-in raw client and its full JID."""

    raw: RawClient
    jid: str

    @property
    def bare(self) -> str:
        return self.jid.split("/", 1)[0]

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    async def message(self) -> ET.Element:
        """The next message (presence in between is skipped)."""
        return await self.raw.wait_for(lambda e: e.tag == MESSAGE)

    async def iq(self, iq_id: str | None) -> ET.Element:
        """The next IQ with this id (None: an IQ without an id)."""
        return await self.raw.wait_for(lambda e: e.tag == IQ and e.get("id") == iq_id)

    async def presence(self, **attrs: str | None) -> ET.Element:
        return await self.raw.wait_for(
            lambda e: e.tag == PRESENCE and all(e.get(k) == v for k, v in attrs.items())
        )

    async def assert_nothing(self, ignore_presence: bool = True) -> None:
        """No stanza arrives within QUIET seconds (by default, presence broadcasts of the
        user's own resources coming and going are not counted)."""
        got = [
            e for e in await collect(self.raw, QUIET) if not (ignore_presence and e.tag == PRESENCE)
        ]
        assert got == [], [ET.tostring(e) for e in got]


async def all_quiet(*peers: Peer, ignore_presence: bool = True) -> None:
    """Check several clients get nothing, in one shared short wait."""
    await asyncio.gather(*(p.assert_nothing(ignore_presence=ignore_presence) for p in peers))


Login = Callable[..., Awaitable[Peer]]


@asynccontextmanager
async def logins(server: Server) -> AsyncIterator[Login]:
    """Users alice, bob (example.org) and carol (other.example), and a login factory
    login(local, resource, priority=..., presence=True, domain=...) -> Peer."""
    await add_user(server, "alice")
    await add_user(server, "bob")
    await add_user(server, "carol", domain=OTHER)
    opened: list[RawClient] = []

    async def _login(
        local: str,
        resource: str = "r",
        *,
        priority: int | None = None,
        presence: bool = True,
        domain: str = DOMAIN,
    ) -> Peer:
        raw, jid = await raw_login(server, local, resource, domain=domain)
        opened.append(raw)
        if presence:
            await send_presence(raw, jid, priority)
        return Peer(raw, jid)

    try:
        yield _login
    finally:
        for raw in opened:
            await raw.close()


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    async with logins(server) as factory:
        yield factory


@pytest.fixture
async def login_no_offline(tmp_path: Path) -> AsyncIterator[Login]:
    """A server without offline storage: RFC 6121 §8.5.2.2 then wants service-unavailable
    for chat and normal messages to an account with no available resource."""
    server = await start_server(tmp_path / "no-offline", modules={"disabled": ["offline"]})
    try:
        async with logins(server) as factory:
            yield factory
    finally:
        await server.stop()


def message(
    to: str | None, msg_type: str | None = "chat", msg_id: str = "m1", body: str = "hello"
) -> str:
    attrs = f" id='{msg_id}'"
    if to is not None:
        attrs += f" to='{to}'"
    if msg_type is not None:
        attrs += f" type='{msg_type}'"
    return f"<message{attrs}><body>{body}</body></message>"


def body_of(el: ET.Element) -> str | None:
    return el.findtext(q(CLIENT, "body"))


def assert_delivered(
    el: ET.Element,
    *,
    sender: str,
    to: str,
    msg_type: str | None,
    msg_id: str = "m1",
    body: str = "hello",
) -> None:
    assert el.tag == MESSAGE, ET.tostring(el)
    assert el.get("from") == sender
    assert el.get("to") == to
    assert el.get("type") == msg_type
    assert el.get("id") == msg_id
    assert body_of(el) == body


def assert_error(
    el: ET.Element,
    tag: str,
    condition: str,
    error_type: str,
    *,
    stanza_id: str | None,
    to: str,
    sender: str | None = None,
) -> None:
    """An error answer: kind, type='error', id kept, addressed back to the sender."""
    assert el.tag == q(CLIENT, tag), ET.tostring(el)
    assert el.get("type") == "error", ET.tostring(el)
    assert el.get("id") == stanza_id
    assert el.get("to") == to
    if sender is not None:
        assert el.get("from") == sender
    assert error_condition(el) == (error_type, condition), ET.tostring(el)


# ---- RFC 6121 §8.5.3.1: full JID of an online resource ----------------------------------------
@pytest.mark.parametrize("msg_type", ["chat", "normal", "headline", None])
async def test_message_to_full_jid_reaches_only_that_resource(
    login: Login, msg_type: str | None
) -> None:
    alice = await login("alice")
    bob_a = await login("bob", "a")
    bob_b = await login("bob", "b")
    alice.send(message(bob_a.jid, msg_type, body="only for a"))
    assert_delivered(
        await bob_a.message(), sender=alice.jid, to=bob_a.jid, msg_type=msg_type, body="only for a"
    )
    await all_quiet(bob_b, alice, bob_a)


async def test_message_to_full_jid_of_lower_priority_resource_is_delivered(login: Login) -> None:
    """A full JID names one resource: its priority does not matter (even negative)."""
    alice = await login("alice")
    high = await login("bob", "high", priority=10)
    low = await login("bob", "low", priority=-5)
    alice.send(message(low.jid))
    assert_delivered(await low.message(), sender=alice.jid, to=low.jid, msg_type="chat")
    await all_quiet(high, alice)


async def test_addresses_are_compared_after_preparation(login: Login) -> None:
    """RFC 7622 §3.2-3.4: localpart and domainpart are case-insensitive, resourcepart is
    not (a resource 'A' is another, offline, resource: chat goes to the bare JID)."""
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(message("Bob@EXAMPLE.org/a", "chat", "c1"))
    msg = await bob.message()
    assert (msg.get("id"), msg.get("from"), body_of(msg)) == ("c1", alice.jid, "hello")
    alice.send(message("bob@example.org/A", "headline", "c2"))
    await all_quiet(bob, alice)


async def test_message_to_own_full_jid(login: Login) -> None:
    a = await login("alice", "a")
    b = await login("alice", "b")
    a.send(message(b.jid, "chat", "own"))
    assert_delivered(await b.message(), sender=a.jid, to=b.jid, msg_type="chat", msg_id="own")


async def test_message_between_two_slixmpp_clients(server: Server) -> None:
    await add_user(server, "alice")
    await add_user(server, "bob")
    alice = await connect(server, "alice@example.org/phone")
    bob = await connect(server, "bob@example.org/laptop")
    try:
        alice.send_message(mto="bob@example.org/laptop", mbody="real clients", mtype="chat")
        msg = await asyncio.wait_for(bob.messages.get(), 5)
        assert msg["type"] == "chat"
        assert str(msg["from"]) == "alice@example.org/phone"
        assert str(msg["to"]) == "bob@example.org/laptop"
        assert msg["body"] == "real clients"
    finally:
        await disconnect(alice, bob)


# ---- RFC 6121 §8.5.2.1.1: bare JID, priorities -------------------------------------------------
@pytest.mark.parametrize("msg_type", ["chat", "normal", None])
async def test_bare_jid_message_goes_to_highest_priority_resource(
    login: Login, msg_type: str | None
) -> None:
    alice = await login("alice")
    high = await login("bob", "high", priority=5)
    low = await login("bob", "low", priority=1)
    alice.send(message("bob@example.org", msg_type))
    assert_delivered(
        await high.message(), sender=alice.jid, to="bob@example.org", msg_type=msg_type
    )
    await all_quiet(low, alice, high)


@pytest.mark.parametrize("msg_type", ["chat", "normal"])
async def test_bare_jid_message_goes_to_all_resources_tied_for_highest_priority(
    login: Login, msg_type: str
) -> None:
    alice = await login("alice")
    first = await login("bob", "first", priority=5)
    second = await login("bob", "second", priority=5)
    low = await login("bob", "low", priority=1)
    alice.send(message("bob@example.org", msg_type))
    for peer in (first, second):
        assert_delivered(
            await peer.message(), sender=alice.jid, to="bob@example.org", msg_type=msg_type
        )
    await all_quiet(low, alice, first, second)


async def test_priority_change_moves_bare_jid_delivery(login: Login) -> None:
    """RFC 6121 §4.7.2.3: the priority of the latest available presence counts."""
    alice = await login("alice")
    a = await login("bob", "a", priority=5)
    b = await login("bob", "b", priority=1)
    await send_presence(b.raw, b.jid, priority=9)
    alice.send(message("bob@example.org"))
    assert_delivered(await b.message(), sender=alice.jid, to="bob@example.org", msg_type="chat")
    await all_quiet(a, alice)


@pytest.mark.parametrize("msg_type", ["chat", "normal"])
async def test_negative_priority_resource_gets_no_bare_jid_message(
    login: Login, msg_type: str
) -> None:
    alice = await login("alice")
    zero = await login("bob", "zero", priority=0)
    negative = await login("bob", "negative", priority=-1)
    alice.send(message("bob@example.org", msg_type))
    assert_delivered(
        await zero.message(), sender=alice.jid, to="bob@example.org", msg_type=msg_type
    )
    await all_quiet(negative, alice, zero)


async def test_only_negative_priority_resources_count_as_offline(
    login_no_offline: Login,
) -> None:
    """RFC 6121 §8.5.2.1.1: with only negative-priority resources, the message is handled as
    if no resource were available (§8.5.2.2): no offline storage here, so an error."""
    login = login_no_offline
    alice = await login("alice")
    negative = await login("bob", "negative", priority=-1)
    alice.send(message("bob@example.org", "chat", "neg1"))
    err = await alice.message()
    assert_error(
        err,
        "message",
        "service-unavailable",
        "cancel",
        stanza_id="neg1",
        to=alice.jid,
        sender="bob@example.org",
    )
    alice.send(message("bob@example.org", "headline", "neg2"))
    await all_quiet(negative, alice)


async def test_headline_to_bare_jid_reaches_all_non_negative_resources(login: Login) -> None:
    alice = await login("alice")
    a = await login("bob", "a", priority=5)
    b = await login("bob", "b", priority=1)
    c = await login("bob", "c", priority=0)
    negative = await login("bob", "negative", priority=-1)
    alice.send(message("bob@example.org", "headline", body="news"))
    for peer in (a, b, c):
        assert_delivered(
            await peer.message(),
            sender=alice.jid,
            to="bob@example.org",
            msg_type="headline",
            body="news",
        )
    await all_quiet(negative, alice, a, b, c)


async def test_groupchat_to_bare_jid_is_service_unavailable(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob", "a", priority=5)
    alice.send(message("bob@example.org", "groupchat", "gc1", body="room?"))
    err = await alice.message()
    assert_error(
        err,
        "message",
        "service-unavailable",
        "cancel",
        stanza_id="gc1",
        to=alice.jid,
        sender="bob@example.org",
    )
    await all_quiet(bob, alice)


async def test_error_messages_are_never_answered(login: Login) -> None:
    """RFC 6120 §8.3.1: an entity never answers an error stanza with an error, wherever it
    was going (online resource, offline resource, no such user, the server, a remote or
    malformed address)."""
    alice = await login("alice")
    await login("bob", "a")
    targets = [
        "bob@example.org",
        "bob@example.org/a",
        "bob@example.org/gone",
        "nobody@example.org",
        "nobody@example.org/x",
        "example.org",
        "someone@remote.invalid",
        "a@b@c",
    ]
    for n, to in enumerate(targets):
        alice.send(
            f"<message to='{to}' type='error' id='e{n}'><body>x</body>"
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></message>"
        )
    alice.send(
        "<message type='error' id='e-no-to'><error type='cancel'><item-not-found "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
    )
    await alice.assert_nothing()


# ---- RFC 6121 §8.5.3.2.1: full JID with no such resource ---------------------------------------
@pytest.mark.parametrize("msg_type", ["chat", "normal", None])
async def test_message_to_offline_resource_is_delivered_as_to_bare_jid(
    login: Login, msg_type: str | None
) -> None:
    alice = await login("alice")
    online = await login("bob", "online", priority=1)
    alice.send(message("bob@example.org/gone", msg_type))
    assert_delivered(
        await online.message(), sender=alice.jid, to="bob@example.org/gone", msg_type=msg_type
    )
    await all_quiet(alice, online)


async def test_headline_to_offline_resource_is_dropped(login: Login) -> None:
    alice = await login("alice")
    online = await login("bob", "online", priority=1)
    alice.send(message("bob@example.org/gone", "headline"))
    await all_quiet(alice, online)


async def test_groupchat_to_offline_resource_is_service_unavailable(login: Login) -> None:
    alice = await login("alice")
    online = await login("bob", "online", priority=1)
    alice.send(message("bob@example.org/gone", "groupchat", "gc2"))
    err = await alice.message()
    assert_error(
        err,
        "message",
        "service-unavailable",
        "cancel",
        stanza_id="gc2",
        to=alice.jid,
        sender="bob@example.org/gone",
    )
    await all_quiet(alice, online)


# ---- RFC 6121 §8.5.2.2: an existing account with no available resource --------------------------
@pytest.mark.parametrize("to", ["bob@example.org", "bob@example.org/laptop"])
@pytest.mark.parametrize("msg_type", ["chat", "normal", None])
async def test_message_to_offline_user_without_offline_storage_is_service_unavailable(
    login_no_offline: Login, to: str, msg_type: str | None
) -> None:
    alice = await login_no_offline("alice")
    alice.send(message(to, msg_type, "off1"))
    err = await alice.message()
    assert_error(
        err, "message", "service-unavailable", "cancel", stanza_id="off1", to=alice.jid, sender=to
    )
    # The payload comes back so the sender can tell which message failed (RFC 6120 §8.3.1).
    assert body_of(err) == "hello"


@pytest.mark.parametrize("to", ["bob@example.org", "bob@example.org/laptop"])
async def test_groupchat_to_offline_user_is_service_unavailable(login: Login, to: str) -> None:
    """RFC 6121 §8.5.2.2.1: groupchat is never stored offline."""
    alice = await login("alice")
    alice.send(message(to, "groupchat", "off2"))
    err = await alice.message()
    assert_error(
        err, "message", "service-unavailable", "cancel", stanza_id="off2", to=alice.jid, sender=to
    )


@pytest.mark.parametrize("to", ["bob@example.org", "bob@example.org/laptop"])
async def test_headline_to_offline_user_is_dropped(login: Login, to: str) -> None:
    alice = await login("alice")
    alice.send(message(to, "headline"))
    await alice.assert_nothing()


async def test_chat_to_offline_user_with_offline_storage_is_kept_not_bounced(
    login: Login,
) -> None:
    """RFC 6121 §8.5.2.2.1 option (a) with the default offline module: no error to the
    sender; the message comes when bob is available again (XEP-0160), delay-stamped."""
    alice = await login("alice")
    alice.send(message("bob@example.org", "chat", "kept", "while you were out"))
    await alice.assert_nothing()
    bob = await login("bob", "back")
    msg = await bob.message()
    assert (msg.get("id"), msg.get("from"), body_of(msg)) == (
        "kept",
        alice.jid,
        "while you were out",
    )
    delay = msg.find(q("urn:xmpp:delay", "delay"))
    assert delay is not None and delay.get("stamp")


async def test_user_who_went_offline_is_offline_again(login_no_offline: Login) -> None:
    login = login_no_offline
    alice = await login("alice")
    bob = await login("bob", "a")
    await bob.raw.close()
    await asyncio.sleep(0.1)
    alice.send(message("bob@example.org", "chat", "late"))
    err = await alice.message()
    assert_error(
        err,
        "message",
        "service-unavailable",
        "cancel",
        stanza_id="late",
        to=alice.jid,
        sender="bob@example.org",
    )


# ---- RFC 6121 §8.5.1 / RFC 6120 §10.5.3.1: no such user ---------------------------------------
@pytest.mark.parametrize("to", ["nobody@example.org", "nobody@example.org/x"])
@pytest.mark.parametrize("msg_type", ["chat", "normal"])
async def test_message_to_nonexistent_user_is_service_unavailable(
    login: Login, to: str, msg_type: str
) -> None:
    alice = await login("alice")
    alice.send(message(to, msg_type, "nx1"))
    err = await alice.message()
    assert_error(
        err, "message", "service-unavailable", "cancel", stanza_id="nx1", to=alice.jid, sender=to
    )


@pytest.mark.parametrize("to", ["nobody@example.org", "nobody@example.org/x"])
@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(f"<ping xmlns='{PING}'/>", id="ping"),
        pytest.param(f"<query xmlns='{CUSTOM}'/>", id="unknown-ns"),
        pytest.param(f"<query xmlns='{DISCO_INFO}'/>", id="disco-info"),
    ],
)
async def test_iq_to_nonexistent_user_is_service_unavailable(
    login: Login, to: str, payload: str
) -> None:
    alice = await login("alice")
    alice.send(f"<iq type='get' id='nx2' to='{to}'>{payload}</iq>")
    err = await alice.iq("nx2")
    assert_error(
        err, "iq", "service-unavailable", "cancel", stanza_id="nx2", to=alice.jid, sender=to
    )


async def test_iq_set_to_nonexistent_user_is_service_unavailable(login: Login) -> None:
    alice = await login("alice")
    alice.send(f"<iq type='set' id='nx3' to='nobody@example.org'><query xmlns='{CUSTOM}'/></iq>")
    err = await alice.iq("nx3")
    assert_error(
        err,
        "iq",
        "service-unavailable",
        "cancel",
        stanza_id="nx3",
        to=alice.jid,
        sender="nobody@example.org",
    )


async def test_presence_to_nonexistent_user_gets_nothing_back(login: Login) -> None:
    """RFC 6121 §8.5.1: presence to no such user is silently ignored."""
    alice = await login("alice")
    for to in ("nobody@example.org", "nobody@example.org/x"):
        for type_attr in ("", " type='unavailable'", " type='probe'"):
            alice.send(f"<presence to='{to}'{type_attr}/>")
    await alice.assert_nothing(ignore_presence=False)


# ---- IQ to a full JID (RFC 6121 §8.5.3.1, §8.5.3.2.3) ------------------------------------------
async def test_iq_to_full_jid_is_delivered_and_its_result_returns(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    other = await login("bob", "b")
    alice.send(
        f"<iq type='get' id='q1' to='{bob.jid}'><query xmlns='{CUSTOM}'>"
        "<question>6*7</question></query></iq>"
    )
    request = await bob.iq("q1")
    assert request.get("type") == "get"
    assert request.get("from") == alice.jid
    assert request.get("to") == bob.jid
    assert request.findtext(f"{q(CUSTOM, 'query')}/{q(CUSTOM, 'question')}") == "6*7"
    bob.send(
        f"<iq type='result' id='q1' to='{alice.jid}'><query xmlns='{CUSTOM}'>"
        "<answer>42</answer></query></iq>"
    )
    result = await alice.iq("q1")
    assert result.get("type") == "result"
    assert result.get("from") == bob.jid
    assert result.get("to") == alice.jid
    assert result.findtext(f"{q(CUSTOM, 'query')}/{q(CUSTOM, 'answer')}") == "42"
    await all_quiet(other, alice, bob)


async def test_iq_set_to_full_jid_and_error_reply_from_the_client(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(f"<iq type='set' id='s1' to='{bob.jid}'><query xmlns='{CUSTOM}'/></iq>")
    request = await bob.iq("s1")
    assert request.get("type") == "set"
    assert request.get("from") == alice.jid
    bob.send(
        f"<iq type='error' id='s1' to='{alice.jid}'><error type='cancel'>"
        "<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></iq>"
    )
    err = await alice.iq("s1")
    assert_error(
        err, "iq", "feature-not-implemented", "cancel", stanza_id="s1", to=alice.jid, sender=bob.jid
    )
    await all_quiet(alice, bob)


async def test_iq_to_full_jid_of_slixmpp_client_is_answered_by_it(
    server: Server, login: Login
) -> None:
    alice = await login("alice")
    bob = await connect(server, "bob@example.org/slix")
    try:
        alice.send(
            "<iq type='get' id='v1' to='bob@example.org/slix'>"
            "<query xmlns='jabber:iq:version'/></iq>"
        )
        result = await alice.iq("v1")
        assert result.get("type") == "result", ET.tostring(result)
        assert result.get("from") == "bob@example.org/slix"
        assert result.get("to") == alice.jid
        version = q("jabber:iq:version", "query")
        name = result.findtext(f"{version}/{q('jabber:iq:version', 'name')}")
        assert name == bob.plugin["xep_0092"].software_name
    finally:
        await disconnect(bob)


@pytest.mark.parametrize("iq_type", ["get", "set"])
async def test_iq_to_offline_full_jid_is_service_unavailable(login: Login, iq_type: str) -> None:
    alice = await login("alice")
    online = await login("bob", "online", priority=10)
    alice.send(
        f"<iq type='{iq_type}' id='of1' to='bob@example.org/gone'><query xmlns='{CUSTOM}'/></iq>"
    )
    err = await alice.iq("of1")
    assert_error(
        err,
        "iq",
        "service-unavailable",
        "cancel",
        stanza_id="of1",
        to=alice.jid,
        sender="bob@example.org/gone",
    )
    # Not redirected to the bare JID or another resource (RFC 6121 §8.5.3.2.3).
    await all_quiet(online, alice)


async def test_iq_to_full_jid_of_offline_user_is_service_unavailable(login: Login) -> None:
    alice = await login("alice")
    alice.send(f"<iq type='get' id='of2' to='bob@example.org/gone'><ping xmlns='{PING}'/></iq>")
    err = await alice.iq("of2")
    assert_error(
        err,
        "iq",
        "service-unavailable",
        "cancel",
        stanza_id="of2",
        to=alice.jid,
        sender="bob@example.org/gone",
    )


async def test_iq_result_or_error_to_unreachable_entity_is_not_answered(login: Login) -> None:
    """RFC 6120 §8.2.3 / RFC 6121 §8.5.3.2.3: results and errors are never answered, even
    when they cannot be delivered."""
    alice = await login("alice")
    online = await login("bob", "online")
    error = (
        "<error type='cancel'><service-unavailable "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    )
    targets = [
        "bob@example.org/gone",
        "nobody@example.org/x",
        "bob@example.org",
        "nobody@example.org",
        "someone@remote.invalid",
    ]
    for n, to in enumerate(targets):
        alice.send(f"<iq type='result' id='r{n}' to='{to}'/>")
        alice.send(f"<iq type='error' id='e{n}' to='{to}'>{error}</iq>")
    await all_quiet(alice, online)


# ---- IQ to a bare JID: the server answers for the account (RFC 6121 §8.5.2.1.2, §8.5.2.2.2) ----
async def alice_sees_bob(server: Server) -> None:
    """bob's account answers alice: she has a presence subscription to him."""
    await server.storage.roster.put(
        "bob", DOMAIN, RosterItem("alice@example.org", subscription="from")
    )


async def test_ping_to_bare_jid_of_offline_user_is_answered_by_server(
    server: Server, login: Login
) -> None:
    await alice_sees_bob(server)
    alice = await login("alice")
    alice.send(f"<iq type='get' id='p1' to='bob@example.org'><ping xmlns='{PING}'/></iq>")
    result = await alice.iq("p1")
    assert result.get("type") == "result", ET.tostring(result)
    assert result.get("from") == "bob@example.org"
    assert result.get("to") == alice.jid
    assert list(result) == []


async def test_ping_to_bare_jid_of_online_user_is_not_forwarded(
    server: Server, login: Login
) -> None:
    await alice_sees_bob(server)
    alice = await login("alice")
    bob = await login("bob", "a", priority=5)
    alice.send(f"<iq type='get' id='p2' to='bob@example.org'><ping xmlns='{PING}'/></iq>")
    result = await alice.iq("p2")
    assert result.get("type") == "result"
    assert result.get("from") == "bob@example.org"
    await bob.assert_nothing()


@pytest.mark.parametrize("online", [False, True])
async def test_disco_info_to_bare_jid_is_account_registered(
    server: Server, login: Login, online: bool
) -> None:
    await alice_sees_bob(server)
    alice = await login("alice")
    if online:
        await login("bob", "a")
    alice.send(f"<iq type='get' id='d1' to='bob@example.org'><query xmlns='{DISCO_INFO}'/></iq>")
    result = await alice.iq("d1")
    assert result.get("type") == "result", ET.tostring(result)
    assert result.get("from") == "bob@example.org"
    query = result.find(q(DISCO_INFO, "query"))
    assert query is not None
    identities = [(i.get("category"), i.get("type")) for i in query.iter(q(DISCO_INFO, "identity"))]
    assert identities == [("account", "registered"), ("pubsub", "pep")]  # PEP: XEP-0163 §6.1


@pytest.mark.parametrize("iq_type", ["get", "set"])
async def test_unknown_namespace_iq_is_service_unavailable(login: Login, iq_type: str) -> None:
    """RFC 6121 §8.5.2.1.2 / RFC 6120 §10.3.3: the server answers for the domain, the bare
    JID (online or not) and a 'to'-less IQ, and does not know this namespace."""
    alice = await login("alice")
    bob = await login("bob", "a")
    targets = {
        "u-host": "example.org",
        "u-other-host": "other.example",
        "u-bob": "bob@example.org",
        "u-self": "alice@example.org",
        "u-no-to": None,
    }
    for iq_id, to in targets.items():
        to_attr = f" to='{to}'" if to is not None else ""
        alice.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}><query xmlns='{CUSTOM}'/></iq>")
    for iq_id, to in targets.items():
        err = await alice.iq(iq_id)
        assert_error(
            err, "iq", "service-unavailable", "cancel", stanza_id=iq_id, to=alice.jid, sender=to
        )
    await all_quiet(bob, alice)


async def test_iq_without_to_is_answered_for_the_sender_account(login: Login) -> None:
    """RFC 6120 §10.3.3: no 'to' means the sender's own account."""
    alice = await login("alice")
    alice.send(f"<iq type='get' id='n1'><ping xmlns='{PING}'/></iq>")
    result = await alice.iq("n1")
    assert result.get("type") == "result"
    assert result.get("to") == alice.jid
    alice.send(f"<iq type='get' id='n2'><query xmlns='{DISCO_INFO}'/></iq>")
    result = await alice.iq("n2")
    assert result.get("type") == "result", ET.tostring(result)
    identities = [
        (i.get("category"), i.get("type")) for i in result.iter(q(DISCO_INFO, "identity"))
    ]
    assert identities == [("account", "registered"), ("pubsub", "pep")]  # PEP: XEP-0163 §6.1


# ---- RFC 6120 §8.1.2.1: the server stamps 'from' ------------------------------------------------
async def test_forged_from_on_message_is_replaced(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(
        f"<message from='mallory@example.org/x' to='{bob.jid}' type='chat' id='f1'>"
        "<body>trust me</body></message>"
    )
    assert_delivered(
        await bob.message(),
        sender=alice.jid,
        to=bob.jid,
        msg_type="chat",
        msg_id="f1",
        body="trust me",
    )


@pytest.mark.parametrize(
    "forged", ["mallory@example.org/x", "alice@example.org", "bob@example.org/a", "example.org"]
)
async def test_forged_from_on_presence_and_iq_is_replaced(login: Login, forged: str) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(f"<presence from='{forged}' to='{bob.jid}'><status>hi</status></presence>")
    pres = await bob.presence(**{"from": alice.jid})
    assert pres.get("to") == bob.jid
    alice.send(
        f"<iq from='{forged}' type='get' id='f2' to='{bob.jid}'><query xmlns='{CUSTOM}'/></iq>"
    )
    request = await bob.iq("f2")
    assert request.get("from") == alice.jid
    # The server's own answer goes to the real sender.
    alice.send(
        f"<iq from='{forged}' type='get' id='f3' to='example.org'><ping xmlns='{PING}'/></iq>"
    )
    result = await alice.iq("f3")
    assert result.get("type") == "result"
    assert result.get("to") == alice.jid


# ---- RFC 6120 §8.2.3: IQ semantics ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("stanza", "stanza_id"),
    [
        pytest.param(
            f"<iq type='get' id='b1' to='example.org'><ping xmlns='{PING}'/>"
            "<query xmlns='jabber:iq:version'/></iq>",
            "b1",
            id="get-two-children",
        ),
        pytest.param(
            f"<iq type='set' id='b2' to='bob@example.org/a'><query xmlns='{CUSTOM}'/>"
            f"<query xmlns='{CUSTOM}'/></iq>",
            "b2",
            id="set-two-children-to-full",
        ),
        pytest.param("<iq type='get' id='b3' to='example.org'/>", "b3", id="get-no-child"),
        pytest.param(
            "<iq type='set' id='b4' to='bob@example.org/a'/>", "b4", id="set-no-child-to-full"
        ),
        pytest.param(
            "<iq type='get' id='b5' to='bob@example.org'>text only</iq>", "b5", id="get-text-only"
        ),
        pytest.param(
            f"<iq type='get' to='example.org'><ping xmlns='{PING}'/></iq>", None, id="get-no-id"
        ),
        pytest.param(
            f"<iq type='bogus' id='b6' to='example.org'><ping xmlns='{PING}'/></iq>",
            "b6",
            id="type-bogus",
        ),
        pytest.param(
            f"<iq id='b7' to='bob@example.org/a'><ping xmlns='{PING}'/></iq>", "b7", id="no-type"
        ),
    ],
)
async def test_invalid_iq_is_bad_request(login: Login, stanza: str, stanza_id: str | None) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(stanza)
    err = await alice.iq(stanza_id)
    assert_error(err, "iq", "bad-request", "modify", stanza_id=stanza_id, to=alice.jid)
    # Never forwarded to the addressee, and the stream stays usable.
    await all_quiet(bob, alice)
    alice.send(f"<iq type='get' id='alive' to='example.org'><ping xmlns='{PING}'/></iq>")
    assert (await alice.iq("alive")).get("type") == "result"


async def test_results_and_errors_to_the_server_are_not_answered(login: Login) -> None:
    alice = await login("alice")
    error = (
        "<error type='cancel'><service-unavailable "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    )
    for stanza in (
        "<iq type='result' id='x1' to='example.org'/>",
        f"<iq type='result' id='x2' to='example.org'><query xmlns='{CUSTOM}'/></iq>",
        "<iq type='result' id='x3'/>",
        "<iq type='result' to='example.org'/>",
        f"<iq type='error' id='x4' to='example.org'>{error}</iq>",
        f"<iq type='error' id='x5'>{error}</iq>",
        "<iq type='error' to='example.org'/>",
        "<iq type='result' id='x6' to='other.example'/>",
        "<iq type='result' id='x7' to='alice@example.org'/>",
    ):
        alice.send(stanza)
    await alice.assert_nothing()


# ---- RFC 6120 §8.3.3.8 / RFC 7622: malformed 'to' ---------------------------------------------
MALFORMED = [
    pytest.param("a@b@c", id="two-ats"),
    pytest.param("user@exa mple.org", id="space-in-domain"),
    pytest.param("a b@example.org", id="space-in-localpart"),
    pytest.param("x" * 1024 + "@example.org", id="overlong-localpart"),
    pytest.param("bob@example.org/" + "r" * 1024, id="overlong-resource"),
    pytest.param("@example.org", id="empty-localpart"),
    pytest.param("bob@example.org/", id="empty-resource"),
]


@pytest.mark.parametrize("to", MALFORMED)
async def test_message_to_malformed_jid_is_jid_malformed(login: Login, to: str) -> None:
    alice = await login("alice")
    alice.send(message(to, "chat", "jm1"))
    err = await alice.message()
    assert_error(err, "message", "jid-malformed", "modify", stanza_id="jm1", to=alice.jid)


@pytest.mark.parametrize("to", MALFORMED)
async def test_iq_to_malformed_jid_is_jid_malformed(login: Login, to: str) -> None:
    alice = await login("alice")
    alice.send(f"<iq type='get' id='jm2' to='{to}'><ping xmlns='{PING}'/></iq>")
    err = await alice.iq("jm2")
    assert_error(err, "iq", "jid-malformed", "modify", stanza_id="jm2", to=alice.jid)


# ---- RFC 6120 §10.3.1 / §8.1.1.1: message with no 'to' ------------------------------------------
async def test_message_without_to_goes_to_own_bare_jid(login: Login) -> None:
    high = await login("alice", "high", priority=5)
    low = await login("alice", "low", priority=1)
    low.send(message(None, "chat", "self1", "note to self"))
    msg = await high.message()
    assert msg.get("from") == low.jid
    assert msg.get("type") == "chat"
    assert msg.get("id") == "self1"
    assert body_of(msg) == "note to self"
    assert msg.get("to") in (None, "alice@example.org")
    await all_quiet(low, high)


async def test_message_without_to_and_no_available_resource_is_service_unavailable(
    login_no_offline: Login,
) -> None:
    """The sender has not sent presence: its own bare JID has no available resource."""
    alice = await login_no_offline("alice", presence=False)
    alice.send(message(None, "chat", "self2"))
    err = await alice.message()
    assert_error(err, "message", "service-unavailable", "cancel", stanza_id="self2", to=alice.jid)


# ---- directed presence (RFC 6121 §4.6) ---------------------------------------------------------
async def test_directed_presence_to_full_jid_arrives_from_sender_full_jid(login: Login) -> None:
    alice = await login("alice")
    bob_a = await login("bob", "a")
    bob_b = await login("bob", "b")
    alice.send(f"<presence to='{bob_a.jid}'><show>chat</show><status>here</status></presence>")
    pres = await bob_a.presence(**{"from": alice.jid})
    assert pres.get("to") == bob_a.jid
    assert pres.get("type") is None
    assert pres.findtext(q(CLIENT, "show")) == "chat"
    assert pres.findtext(q(CLIENT, "status")) == "here"
    await all_quiet(bob_b, alice, bob_a, ignore_presence=False)


async def test_directed_presence_to_bare_jid_reaches_every_available_resource(
    login: Login,
) -> None:
    alice = await login("alice")
    bob_a = await login("bob", "a", priority=5)
    bob_b = await login("bob", "b", priority=0)
    alice.send("<presence to='bob@example.org'><status>hi all</status></presence>")
    for peer in (bob_a, bob_b):
        pres = await peer.presence(**{"from": alice.jid})
        assert pres.get("to") == "bob@example.org"
        assert pres.findtext(q(CLIENT, "status")) == "hi all"
    await all_quiet(alice, ignore_presence=False)


async def test_directed_unavailable_presence_to_full_jid(login: Login) -> None:
    alice = await login("alice")
    bob = await login("bob", "a")
    alice.send(f"<presence to='{bob.jid}' type='unavailable'/>")
    pres = await bob.presence(**{"from": alice.jid})
    assert pres.get("type") == "unavailable"


async def test_presence_to_offline_resource_is_dropped(login: Login) -> None:
    alice = await login("alice")
    online = await login("bob", "online")
    alice.send("<presence to='bob@example.org/gone'/>")
    await all_quiet(alice, online, ignore_presence=False)


# ---- remote domains (no federation yet: RFC 6120 §10.4.3) ---------------------------------------
@pytest.mark.parametrize(
    "to", ["someone@remote.invalid", "remote.invalid", "someone@remote.invalid/res"]
)
@pytest.mark.parametrize("msg_type", ["chat", "normal"])
async def test_message_to_remote_domain_is_remote_server_not_found(
    login: Login, to: str, msg_type: str
) -> None:
    alice = await login("alice")
    alice.send(message(to, msg_type, "rm1"))
    err = await alice.message()
    assert_error(
        err,
        "message",
        "remote-server-not-found",
        "cancel",
        stanza_id="rm1",
        to=alice.jid,
        sender=to,
    )


@pytest.mark.parametrize(
    "to", ["someone@remote.invalid", "remote.invalid", "someone@remote.invalid/res"]
)
@pytest.mark.parametrize("iq_type", ["get", "set"])
async def test_iq_to_remote_domain_is_remote_server_not_found(
    login: Login, to: str, iq_type: str
) -> None:
    alice = await login("alice")
    alice.send(f"<iq type='{iq_type}' id='rm2' to='{to}'><ping xmlns='{PING}'/></iq>")
    err = await alice.iq("rm2")
    assert_error(
        err, "iq", "remote-server-not-found", "cancel", stanza_id="rm2", to=alice.jid, sender=to
    )


# ---- the second domain -------------------------------------------------------------------------
async def test_users_on_two_domains_exchange_messages(server: Server) -> None:
    await add_user(server, "alice")
    await add_user(server, "carol", domain=OTHER)
    # alice's account answers carol's pings: carol may see alice's presence.
    await server.storage.roster.put(
        "alice", DOMAIN, RosterItem("carol@other.example", subscription="from")
    )
    alice = await connect(server, "alice@example.org/desk")
    carol = await connect(server, "carol@other.example/phone")
    try:
        assert str(carol.boundjid) == "carol@other.example/phone"
        alice.send_message(mto="carol@other.example", mbody="hi carol", mtype="chat")
        msg = await asyncio.wait_for(carol.messages.get(), 5)
        assert (msg["type"], str(msg["from"]), msg["body"]) == (
            "chat",
            "alice@example.org/desk",
            "hi carol",
        )
        carol.send_message(mto="alice@example.org/desk", mbody="hi alice", mtype="normal")
        msg = await asyncio.wait_for(alice.messages.get(), 5)
        assert (msg["type"], str(msg["from"]), msg["body"]) == (
            "normal",
            "carol@other.example/phone",
            "hi alice",
        )
        result = await carol.plugin["xep_0199"].send_ping("alice@example.org", timeout=5)
        assert result["type"] == "result"
        assert str(result["from"]) == "alice@example.org"
    finally:
        await disconnect(alice, carol)


async def test_raw_clients_on_two_domains(login: Login) -> None:
    alice = await login("alice")
    carol = await login("carol", "c", domain=OTHER)
    assert carol.jid == "carol@other.example/c"
    carol.send(message("alice@example.org", "chat", "x1", "from the other domain"))
    assert_delivered(
        await alice.message(),
        sender=carol.jid,
        to="alice@example.org",
        msg_type="chat",
        msg_id="x1",
        body="from the other domain",
    )
    alice.send(f"<iq type='get' id='x2' to='{carol.jid}'><query xmlns='{CUSTOM}'/></iq>")
    request = await carol.iq("x2")
    assert request.get("from") == alice.jid
    carol.send(f"<iq type='result' id='x2' to='{alice.jid}'/>")
    result = await alice.iq("x2")
    assert (result.get("type"), result.get("from")) == ("result", carol.jid)


async def test_accounts_on_two_domains_are_distinct(login: Login) -> None:
    """alice exists on example.org only: alice@other.example is no such user."""
    carol = await login("carol", "c", domain=OTHER)
    carol.send(message("alice@other.example", "chat", "d1"))
    err = await carol.message()
    assert_error(
        err,
        "message",
        "service-unavailable",
        "cancel",
        stanza_id="d1",
        to=carol.jid,
        sender="alice@other.example",
    )
    carol.send(f"<iq type='get' id='d2' to='bob@other.example'><query xmlns='{DISCO_INFO}'/></iq>")
    err = await carol.iq("d2")
    assert_error(
        err,
        "iq",
        "service-unavailable",
        "cancel",
        stanza_id="d2",
        to=carol.jid,
        sender="bob@other.example",
    )
