"""Module handlers that fail, routing order and presence fan-out, over real sockets.

- A failing handler is isolated: a raising `presence/outgoing` or `session/ended` handler
  skips neither offline delivery nor the broadcasts, a raising send filter keeps a stanza
  from no session, a raising stanza handler costs that stanza an internal-server-error
  (RFC 6120 §8.3.3.9) and nothing else.
- Stanzas the server sends in a row arrive in that order (RFC 6120 §10.1).
- Presence broadcast is serialized once for all contacts (only 'to' differs), and each
  contact still passes the blocking check (XEP-0191 §3.3).
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dovecote.core.router import StanzaEvent
from dovecote.core.session import ClientSession
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from dovecote.xml.element import Element
from tests.helpers import (
    CLIENT,
    DOMAIN,
    Resource,
    add_user,
    error_condition,
    is_presence,
    login_resource,
    q,
    start_server,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
DAVE = f"dave@{DOMAIN}"
BLOCKING = "urn:xmpp:blocking"
PING = "urn:xmpp:ping"


class Boom(RuntimeError):
    """What the injected handlers raise."""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path / "data")
    for local in ("alice", "bob", "carol", "dave"):
        await add_user(srv, local)
    try:
        yield srv
    finally:
        await srv.stop()


async def befriend(server: Server, user: str, *contacts: str) -> None:
    """Mutual ('both') subscriptions between `user` and each contact, in storage."""
    roster = server.storage.roster
    for contact in contacts:
        await roster.put(user.split("@")[0], DOMAIN, RosterItem(contact, subscription="both"))
        await roster.put(contact.split("@")[0], DOMAIN, RosterItem(user, subscription="both"))


async def still_connected(res: Resource) -> None:
    """The stream is up: a ping to the server is answered."""
    result = await res.request(f"<ping xmlns='{PING}'/>", to=DOMAIN)
    assert result.get("type") == "result", ET.tostring(result)


def has_body(el: ET.Element, body: str) -> bool:
    return el.tag == q(CLIENT, "message") and el.findtext(q(CLIENT, "body")) == body


# ---- failing handlers ---------------------------------------------------------------------
async def test_failing_presence_outgoing_handler_skips_nothing(server: Server) -> None:
    """A raising presence/outgoing handler (first in line) neither stops offline delivery
    nor the broadcast to contacts, and the user's presence gets no error."""

    def broken(args: Any) -> None:
        raise Boom("presence/outgoing")

    server.events.add("presence/outgoing", broken, 1000)
    await befriend(server, ALICE, BOB)
    bob = await login_resource(server, "bob", presence=True)
    bob.send(f"<message to='{ALICE}' type='chat' id='m1'><body>while away</body></message>")
    await asyncio.sleep(0.2)  # stored offline
    alice = await login_resource(server, "alice", presence=True)
    await alice.take(lambda e: has_body(e, "while away"))
    await bob.presence(from_=alice.jid, type=None)
    await alice.assert_none(lambda e: e.get("type") == "error")
    await still_connected(alice)


async def test_failing_session_ended_handler_skips_nothing(server: Server) -> None:
    """RFC 6121 §4.5.3.2: the unavailable broadcast happens although another
    session/ended handler (run before it) raises."""

    def broken(session: Any) -> None:
        raise Boom("session/ended")

    server.events.add("session/ended", broken, 1000)
    await befriend(server, ALICE, BOB)
    bob = await login_resource(server, "bob", presence=True)
    alice = await login_resource(server, "alice", presence=True)
    await bob.presence(from_=alice.jid, type=None)
    await alice.close()
    await bob.presence(from_=alice.jid, type="unavailable")


async def test_failing_send_filter_keeps_the_stanza_from_no_session(server: Server) -> None:
    """A send filter raising for one session: that session still gets the stanza (the
    filter is skipped), the other sessions too, the sender no error, the connections
    stay up."""

    def broken(session: Any, stanza: Element) -> bool:
        if str(session.jid).endswith("/first") and stanza.tag == "message":
            raise Boom("send filter")
        return False

    server.send_filters.insert(0, broken)
    alice = await login_resource(server, "alice", presence=True)
    first = await login_resource(server, "bob", "first", presence=True)
    second = await login_resource(server, "bob", "second", presence=True)
    # A headline to the bare JID goes to every available resource, serialized once.
    alice.send(f"<message to='{BOB}' type='headline' id='h1'><body>news</body></message>")
    await first.take(lambda e: has_body(e, "news"))
    await second.take(lambda e: has_body(e, "news"))
    await alice.assert_none(lambda e: e.get("type") == "error")
    await still_connected(first)
    await still_connected(alice)


async def test_failing_message_handler_bounces_that_stanza_only(server: Server) -> None:
    """A message/bare handler at high priority raising for one message: the sender gets
    internal-server-error for it (RFC 6120 §8.3.3.9), stays connected, and the next
    message is delivered."""

    def broken(event: StanzaEvent) -> bool:
        if event.stanza.find_text("body", "jabber:client") == "boom":
            raise Boom("message/bare")
        return False

    server.events.add("message/bare", broken, 1000)
    alice = await login_resource(server, "alice", presence=True)
    bob = await login_resource(server, "bob", presence=True)
    alice.send(f"<message to='{BOB}' type='chat' id='bad'><body>boom</body></message>")
    error = await alice.take(lambda e: e.get("id") == "bad")
    assert error.get("type") == "error"
    assert error_condition(error) == ("cancel", "internal-server-error")
    alice.send(f"<message to='{BOB}' type='chat' id='good'><body>fine</body></message>")
    await bob.take(lambda e: has_body(e, "fine"))
    await bob.assert_none(lambda e: has_body(e, "boom"))
    await still_connected(alice)


# ---- order (RFC 6120 §10.1) -----------------------------------------------------------------
async def test_stanzas_the_server_sends_in_a_row_arrive_in_order(server: Server) -> None:
    """Alice removes Bob, with whom she has a mutual subscription (RFC 6121 §2.5.2): the
    server sends 'unsubscribe' then 'unsubscribed' on her behalf. Bob gets them in that
    order even when the first one takes longer to route (a slow handler)."""

    async def slow_unsubscribe(event: StanzaEvent) -> bool:
        if event.type == "unsubscribe":
            await asyncio.sleep(0.3)
        return False

    server.events.add("presence/bare", slow_unsubscribe, 1000)
    await befriend(server, ALICE, BOB)
    alice = await login_resource(server, "alice", roster=True, presence=True)
    bob = await login_resource(server, "bob", roster=True, presence=True)
    result = await alice.roster_set(f"<item jid='{BOB}' subscription='remove'/>")
    assert result.get("type") == "result"
    arrived: list[str | None] = []
    while len(arrived) < 2:
        # The backlog first: what arrives earlier is taken earlier.
        el = await bob.take(
            lambda e: (
                is_presence(e, from_=ALICE) and e.get("type") in ("unsubscribe", "unsubscribed")
            )
        )
        arrived.append(el.get("type"))
    assert arrived == ["unsubscribe", "unsubscribed"]
    # Both processed in order: Bob's item ends with no subscription at all.
    assert (await bob.push_item(ALICE))["subscription"] == "to"
    assert (await bob.push_item(ALICE))["subscription"] == "none"


# ---- fan-out --------------------------------------------------------------------------------
async def test_presence_broadcast_is_serialized_once_and_blocking_still_applies(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's presence reaches each contact's resources as the same bytes with only 'to'
    changed; Carol, who blocks Alice (XEP-0191 §3.3), gets nothing."""
    sent: list[tuple[str, Element, bytes | None]] = []
    original_send = ClientSession.send

    def spy(self: ClientSession, stanza: Element, data: bytes | None = None) -> None:
        to = stanza.get("to") or ""
        if (
            stanza.tag == "presence"
            and stanza.find_text("status", CLIENT) == "fan-out"
            and "/" not in to  # the broadcast to contacts, not an answer to a late probe
        ):
            sent.append((str(self.jid), stanza, data))
        original_send(self, stanza, data)

    monkeypatch.setattr(ClientSession, "send", spy)
    await befriend(server, ALICE, BOB, CAROL, DAVE)
    bob1 = await login_resource(server, "bob", "one", presence=True)
    bob2 = await login_resource(server, "bob", "two", presence=True)
    carol = await login_resource(server, "carol", presence=True)
    dave = await login_resource(server, "dave", presence=True)
    result = await carol.request(
        f"<block xmlns='{BLOCKING}'><item jid='{ALICE}'/></block>", iq_type="set"
    )
    assert result.get("type") == "result"
    for res in (bob1, bob2, dave):
        # Their initial presence has probed Alice (offline): no probe answer comes later.
        pong = await res.request("<ping xmlns='urn:xmpp:ping'/>")
        assert pong.get("type") == "result"
    alice = await login_resource(server, "alice")
    alice.send("<presence><status>fan-out</status></presence>")
    for res in (bob1, bob2, dave):
        el = await res.take(
            lambda e, res=res: is_presence(e, from_=alice.jid, type=None, to=res.bare)
        )
        assert el.findtext(q(CLIENT, "status")) == "fan-out"
    await carol.assert_none(lambda e: is_presence(e, from_=alice.jid))
    to_contacts = {jid: data for jid, stanza, data in sent if stanza.get("to")}
    assert set(to_contacts) == {bob1.jid, bob2.jid, dave.jid}
    # Written from one serialization: bytes handed over, equal but for 'to'.
    bob_data, dave_data = to_contacts[bob1.jid], to_contacts[dave.jid]
    assert bob_data is not None and dave_data is not None
    assert to_contacts[bob2.jid] == bob_data
    assert bob_data.replace(BOB.encode(), DAVE.encode()) == dave_data
    assert ET.fromstring(bob_data.replace(b"<presence", b"<presence xmlns='jabber:client'", 1))
