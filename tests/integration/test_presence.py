"""Presence over real sockets: RFC 6121 §4 (initial presence and probes, updates,
unavailable on logout and on a dropped connection, directed presence, priority)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    Resource,
    add_user,
    error_condition,
    is_presence,
    login_resource,
    q,
)

USERS = ("alice", "bob", "carol", "dave", "erin")
MIRROR = {"none": "none", "to": "from", "from": "to", "both": "both"}

Login = Callable[..., Awaitable[Resource]]


def jid(local: str) -> str:
    return f"{local}@{DOMAIN}"


async def relate(server: Server, user: str, contact: str, subscription: str) -> None:
    """Put `contact` in `user`'s roster with `subscription`, and the mirror item in the
    contact's roster (set in storage before anyone logs in)."""
    await server.storage.roster.put(user, DOMAIN, RosterItem(jid(contact), None, subscription))
    await server.storage.roster.put(
        contact, DOMAIN, RosterItem(jid(user), None, MIRROR[subscription])
    )


@pytest.fixture
async def login(server: Server) -> AsyncIterator[Login]:
    """login(local, resource, presence=..., priority=..., roster=...) -> Resource."""
    for local in USERS:
        await add_user(server, local)
    opened: list[Resource] = []

    async def _login(local: str, resource: str = "r", **kwargs: object) -> Resource:
        res = await login_resource(server, local, resource, **kwargs)  # type: ignore[arg-type]
        opened.append(res)
        return res

    yield _login
    for res in opened:
        await res.close()


def is_presence_from(res: Resource) -> Callable[[ET.Element], bool]:
    return lambda e: is_presence(e) and e.get("from") == res.jid


def child_text(el: ET.Element, tag: str) -> str | None:
    return el.findtext(q(CLIENT, tag))


async def settle(*resources: Resource) -> None:
    """Let login work finish (probes answered) so that its presence does not arrive in the
    middle of the next step."""
    await asyncio.gather(*(res.drain(0.1) for res in resources))


async def quiet(*resources: Resource, predicate: Callable[[ET.Element], bool]) -> None:
    await asyncio.gather(*(res.assert_none(predicate) for res in resources))


# ---- §4.2 initial presence --------------------------------------------------------------------
async def test_initial_presence_goes_to_subscribers_and_own_resources(
    server: Server, login: Login
) -> None:
    await relate(server, "alice", "bob", "from")
    await relate(server, "alice", "carol", "both")
    await relate(server, "alice", "dave", "to")
    await relate(server, "alice", "erin", "none")
    bob = await login("bob", presence=True)
    carol = await login("carol", presence=True)
    dave = await login("dave", presence=True)
    erin = await login("erin", presence=True)
    first = await login("alice", "first", presence=True)
    await asyncio.gather(*(r.drain(0.1) for r in (bob, carol, dave, erin, first)))

    second = await login("alice", "second")
    second.send(
        "<presence><show>chat</show><status>hello</status><priority>3</priority></presence>"
    )
    for res in (bob, carol, first, second):  # the sender's own resource too (§4.2.2)
        got = await res.presence(from_=second.jid, type=None)
        assert child_text(got, "show") == "chat"
        assert child_text(got, "status") == "hello"
        assert child_text(got, "priority") == "3"
    await quiet(dave, erin, predicate=is_presence_from(second))


async def test_initial_presence_is_sent_to_each_contact_once(server: Server, login: Login) -> None:
    await relate(server, "alice", "bob", "both")
    bob = await login("bob", presence=True)
    await settle(bob)
    alice = await login("alice", presence=True)
    got = await bob.presence(from_=alice.jid, type=None)
    assert got.get("to") == jid("bob")
    await bob.assert_none(is_presence_from(alice))


async def test_new_resource_learns_presence_of_own_other_resources(login: Login) -> None:
    """A resource becoming available gets the current presence of the user's other available
    resources, as Prosody and ejabberd send it (clients list the user's other devices from it;
    the RFC 6121 §4.2.2 broadcast only tells the *older* resources about the new one)."""
    first = await login("alice", "first")
    await first.available(extra="<show>away</show><status>desk</status>")
    second = await login("alice", "second")
    await second.available()
    got = await second.presence(from_=first.jid)
    assert got.get("type") is None
    assert child_text(got, "show") == "away"
    assert child_text(got, "status") == "desk"


# ---- §4.3 probes ------------------------------------------------------------------------------
async def test_login_probes_contacts_and_receives_their_presence(
    server: Server, login: Login
) -> None:
    await relate(server, "alice", "bob", "to")
    await relate(server, "alice", "carol", "both")
    await relate(server, "alice", "dave", "none")
    bob_home = await login("bob", "home")
    await bob_home.available(extra="<show>away</show><status>out</status><priority>5</priority>")
    bob_work = await login("bob", "work")
    await bob_work.available(extra="<show>dnd</show><priority>-1</priority>")
    carol = await login("carol", presence=True)
    dave = await login("dave", presence=True)
    await dave.available(extra="<status>secret</status>")

    alice = await login("alice", roster=True)
    await alice.available()
    home = await alice.presence(from_=bob_home.jid)
    assert home.get("type") is None
    assert child_text(home, "show") == "away"
    assert child_text(home, "status") == "out"
    assert child_text(home, "priority") == "5"
    assert home.get("to") in (alice.jid, alice.bare)
    work = await alice.presence(from_=bob_work.jid)
    assert work.get("type") is None
    assert child_text(work, "show") == "dnd"
    assert child_text(work, "priority") == "-1"
    await alice.presence(from_=carol.jid, type=None)
    # No subscription to dave: his presence is not revealed.
    await alice.assert_none(is_presence_from(dave))
    # alice's presence went to carol ('both'), not to bob (alice only has 'to').
    await carol.presence(from_=alice.jid, type=None)
    await bob_home.assert_none(is_presence_from(alice))


async def test_probe_from_non_subscriber_reveals_nothing(server: Server, login: Login) -> None:
    await relate(server, "alice", "bob", "none")
    bob = await login("bob")
    await bob.available(extra="<status>private</status>")
    alice = await login("alice", presence=True)
    alice.send(f"<presence type='probe' to='{jid('bob')}'/>")
    await alice.assert_none(lambda e: is_presence(e, from_=bob.jid, type=None))


# ---- §4.4 updates, §4.5 unavailable ----------------------------------------------------------
async def subscribed_pair(server: Server, login: Login) -> tuple[Resource, Resource, Resource]:
    """bob subscribed to alice ('from' for alice); alice online twice, bob online."""
    await relate(server, "alice", "bob", "from")
    bob = await login("bob", presence=True)
    await settle(bob)
    one = await login("alice", "one", presence=True)
    two = await login("alice", "two", presence=True)
    await bob.presence(from_=one.jid, type=None)
    await bob.presence(from_=two.jid, type=None)
    await one.presence(from_=two.jid, type=None)
    return bob, one, two


async def test_presence_update_is_broadcast(server: Server, login: Login) -> None:
    bob, one, two = await subscribed_pair(server, login)
    one.send("<presence><show>xa</show><status>gone fishing</status></presence>")
    for res in (bob, one, two):
        got = await res.take(
            lambda e: is_presence(e, from_=one.jid, type=None) and child_text(e, "show") == "xa"
        )
        assert child_text(got, "status") == "gone fishing"


async def test_explicit_unavailable_is_broadcast(server: Server, login: Login) -> None:
    bob, one, two = await subscribed_pair(server, login)
    one.send("<presence type='unavailable'><status>bye</status></presence>")
    for res in (bob, two, one):
        got = await res.presence(from_=one.jid, type="unavailable")
        assert child_text(got, "status") == "bye"
    # one is no longer available: it gets no presence broadcasts and no bare-JID chat.
    two.send("<presence><status>still here</status></presence>")
    await bob.presence(from_=two.jid, type=None)
    await one.assert_none(is_presence_from(two))


async def test_unavailable_on_clean_disconnect(server: Server, login: Login) -> None:
    bob, one, two = await subscribed_pair(server, login)
    one.send("</stream:stream>")
    for res in (bob, two):
        await res.presence(from_=one.jid, type="unavailable")


async def test_unavailable_on_dropped_connection(server: Server, login: Login) -> None:
    bob, one, two = await subscribed_pair(server, login)
    one.raw.writer.transport.abort()  # no closing tag, no TLS close_notify: just gone
    for res in (bob, two):
        await res.presence(from_=one.jid, type="unavailable")


async def test_no_unavailable_for_a_session_that_never_was_available(
    server: Server, login: Login
) -> None:
    await relate(server, "alice", "bob", "from")
    bob = await login("bob", presence=True)
    silent = await login("alice", "silent")  # bound, never sent presence
    silent.raw.writer.transport.abort()
    await bob.assert_none(lambda e: is_presence(e, from_=silent.jid))


# ---- §4.6 directed presence ----------------------------------------------------------------------
@pytest.mark.parametrize("ending", ["unavailable", "disconnect", "drop"])
async def test_directed_presence_then_unavailable_on_logout(login: Login, ending: str) -> None:
    carol = await login("carol", presence=True)
    alice = await login("alice", presence=True)
    alice.send(f"<presence to='{carol.jid}'><status>just for you</status></presence>")
    got = await carol.presence(from_=alice.jid, type=None)
    assert child_text(got, "status") == "just for you"
    if ending == "unavailable":
        alice.send("<presence type='unavailable'/>")
    elif ending == "disconnect":
        alice.send("</stream:stream>")
    else:
        alice.raw.writer.transport.abort()
    await carol.presence(from_=alice.jid, type="unavailable")


async def test_directed_presence_to_bare_jid_reaches_available_resources(login: Login) -> None:
    carol_a = await login("carol", "a", presence=True)
    carol_b = await login("carol", "b", presence=True)
    alice = await login("alice", presence=True)
    alice.send(f"<presence to='{jid('carol')}'/>")
    await carol_a.presence(from_=alice.jid, type=None)
    await carol_b.presence(from_=alice.jid, type=None)
    # Broadcasts go to subscribers only: an update does not reach carol.
    alice.send("<presence><status>update</status></presence>")
    await alice.presence(from_=alice.jid, type=None)
    await quiet(carol_a, carol_b, predicate=is_presence_from(alice))
    alice.send("<presence type='unavailable'/>")
    await carol_a.presence(from_=alice.jid, type="unavailable")
    await carol_b.presence(from_=alice.jid, type="unavailable")


async def test_directed_unavailable_is_not_repeated_at_logout(login: Login) -> None:
    carol = await login("carol", presence=True)
    alice = await login("alice", presence=True)
    alice.send(f"<presence to='{carol.jid}'/>")
    await carol.presence(from_=alice.jid, type=None)
    alice.send(f"<presence to='{carol.jid}' type='unavailable'/>")
    await carol.presence(from_=alice.jid, type="unavailable")
    alice.send("<presence type='unavailable'/>")
    await carol.assert_none(is_presence_from(alice))


# ---- no subscription, no presence --------------------------------------------------------------
async def test_no_presence_to_contacts_without_subscription_from(
    server: Server, login: Login
) -> None:
    await relate(server, "alice", "bob", "none")
    await relate(server, "alice", "carol", "to")
    bob = await login("bob", presence=True)
    carol = await login("carol", presence=True)
    alice = await login("alice", presence=True)
    alice.send("<presence><show>away</show></presence>")
    await alice.presence(from_=alice.jid, type=None)
    alice.send("<presence type='unavailable'/>")
    await quiet(bob, carol, predicate=is_presence_from(alice))


# ---- §4.7.2.3 priority -------------------------------------------------------------------------
@pytest.mark.parametrize("priority", ["abc", "200", "-129", "1.5"])
async def test_invalid_priority_is_bad_request(server: Server, login: Login, priority: str) -> None:
    await relate(server, "alice", "bob", "from")
    bob = await login("bob", presence=True)
    alice = await login("alice")
    alice.send(f"<presence id='p1'><priority>{priority}</priority></presence>")
    error = await alice.presence(type="error")
    assert error.get("id") == "p1"
    assert error_condition(error) == ("modify", "bad-request"), ET.tostring(error)
    await bob.assert_none(is_presence_from(alice))


@pytest.mark.parametrize("priority", ["-128", "127", " 7 "])
async def test_priority_limits_are_accepted(login: Login, priority: str) -> None:
    alice = await login("alice")
    alice.send(f"<presence><priority>{priority}</priority></presence>")
    got = await alice.presence(from_=alice.jid)
    assert got.get("type") is None, ET.tostring(got)


async def test_negative_priority_resource_gets_no_bare_jid_messages(login: Login) -> None:
    """RFC 6121 §8.5.2.1.1: messages to the bare JID go to non-negative resources only."""
    negative = await login("alice", "negative", priority=-1)
    positive = await login("alice", "positive", priority=0)
    bob = await login("bob", presence=True)
    bob.send(f"<message to='{jid('alice')}' type='chat' id='m1'><body>hi</body></message>")
    got = await positive.message()
    assert got.findtext(q(CLIENT, "body")) == "hi"
    await negative.assert_none(lambda e: e.tag == q(CLIENT, "message"))
    # A message to its full JID still reaches it.
    bob.send(f"<message to='{negative.jid}' type='chat' id='m2'><body>direct</body></message>")
    assert (await negative.message()).findtext(q(CLIENT, "body")) == "direct"
