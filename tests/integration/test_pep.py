"""XEP-0163 Personal Eventing Protocol (with the XEP-0060 subset it needs) and XEP-0115
entity capabilities, over real sockets: raw XML clients that announce caps and answer the
server's disco#info query themselves, and slixmpp for a real client's view."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.modules import caps
from dovecote.server import Server
from dovecote.storage.base import RosterItem
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

MODULES = {"enabled": ["caps", "pep"]}
PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = f"{PUBSUB}#event"
OWNER = f"{PUBSUB}#owner"
ERRORS = f"{PUBSUB}#errors"
CAPS = "http://jabber.org/protocol/caps"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
DELAY = "urn:xmpp:delay"

TUNE = "http://jabber.org/protocol/tune"
NICK = "http://jabber.org/protocol/nick"
BOOKMARKS = "urn:xmpp:bookmarks:1"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_META = "urn:xmpp:avatar:metadata"
VCARD4_NODE = "urn:xmpp:vcard4"
VCARD4 = "urn:ietf:params:xml:ns:vcard-4.0"
CLIENT_NODE = "https://dovecote.example/test-client"

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
IQ = q(CLIENT, "iq")


# ---- set-up --------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await start_server(data_dir, modules=MODULES)
    for name in ("alice", "bob", "carol"):
        await add_user(srv, name)
    await add_user(srv, "dave", domain="other.example")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def resources() -> AsyncIterator[list[Resource]]:
    opened: list[Resource] = []
    yield opened
    for res in opened:
        await res.close()


async def befriend(server: Server, a: str, b: str) -> None:
    """Mutual presence subscription ('both'), written to storage before anyone logs in."""
    for user, contact in ((a, b), (b, a)):
        jid = JID.parse(user)
        await server.storage.roster.put(
            jid.local, jid.domain, RosterItem(contact, subscription="both")
        )


def caps_answer(features: list[str]) -> tuple[str, str]:
    """A client's disco#info <query/> and its XEP-0115 §5.1 ver (computed here, by hand)."""
    all_features = sorted(set(features) | {DISCO_INFO, CAPS})
    s = "client/pc//Test<" + "".join(f"{f}<" for f in all_features)
    ver = base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()
    body = "".join(f"<feature var='{f}'/>" for f in all_features)
    query = (
        f"<query xmlns='{DISCO_INFO}' node='{CLIENT_NODE}#{ver}'>"
        f"<identity category='client' type='pc' name='Test'/>{body}</query>"
    )
    return query, ver


def is_caps_query(el: ET.Element) -> bool:
    query = el.find(q(DISCO_INFO, "query"))
    return el.tag == IQ and el.get("type") == "get" and query is not None


async def until(predicate: Callable[[], bool], timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def features_on_server(server: Server, res: Resource) -> frozenset[str]:
    session = server.sessions.get(JID.parse(res.jid))
    assert session is not None
    return caps.features_of(session)


async def until_believed(server: Server, res: Resource, features: set[str]) -> None:
    """Wait until the server believes the session has `features` (verified caps)."""
    await until(lambda: features <= features_on_server(server, res))


async def announce(
    server: Server,
    res: Resource,
    features: list[str],
    *,
    ver: str | None = None,
    expect_query: bool = True,
    initial: bool = True,
) -> str:
    """Send presence with caps for `features` (or a given, possibly wrong, `ver`), answer
    the server's disco#info query with `features` and wait until it has been processed."""
    query, right_ver = caps_answer(features)
    ver = ver or right_ver
    c = f"<c xmlns='{CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{ver}'/>"
    if initial:
        await res.available(extra=c)
    else:
        res.send(f"<presence>{c}</presence>")
    if expect_query:
        request = await res.take(is_caps_query)
        assert request.get("from") == DOMAIN
        asked = request.find(q(DISCO_INFO, "query"))
        assert asked is not None and asked.get("node") == f"{CLIENT_NODE}#{ver}"
        res.send(f"<iq type='result' id='{request.get('id')}' to='{DOMAIN}'>{query}</iq>")
    if ver == right_ver:
        await until_believed(server, res, set(features))
    else:
        # The answer is read in order: after a ping's result, it has been handled.
        ping = await res.request("<ping xmlns='urn:xmpp:ping'/>", to=DOMAIN)
        assert ping.get("type") == "result"
        await asyncio.sleep(0.05)
    return ver


async def login(
    server: Server,
    opened: list[Resource],
    local: str,
    resource: str = "r",
    notify: list[str] | None = None,
    domain: str = DOMAIN,
) -> Resource:
    """Log in; with `notify`, become available with caps saying NODE+notify for those."""
    res = await login_resource(server, local, resource, roster=True, domain=domain)
    opened.append(res)
    if notify is not None:
        # A feature of its own, so that its caps are not in the server's cache yet.
        unique = f"urn:dovecote:test:{res.jid}"
        await announce(server, res, [unique, *(f"{node}+notify" for node in notify)])
    return res


def publish_xml(node: str, payload: str, item_id: str | None = None, options: str = "") -> str:
    id_attr = f" id='{item_id}'" if item_id else ""
    return (
        f"<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item{id_attr}>{payload}</item>"
        f"</publish>{options}</pubsub>"
    )


def options_xml(**fields: str) -> str:
    body = "".join(
        f"<field var='pubsub#{var}'><value>{value}</value></field>" for var, value in fields.items()
    )
    return (
        f"<publish-options><x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#publish-options</value></field>"
        f"{body}</x></publish-options>"
    )


def tune(title: str) -> str:
    return f"<tune xmlns='{TUNE}'><title>{title}</title></tune>"


async def publish(
    res: Resource, node: str, payload: str, item_id: str | None = None, options: str = ""
) -> ET.Element:
    return await res.request(publish_xml(node, payload, item_id, options), "set")


async def get_items(
    res: Resource, owner: str, node: str, inside: str = "", attrs: str = ""
) -> ET.Element:
    return await res.request(
        f"<pubsub xmlns='{PUBSUB}'><items node='{node}'{attrs}>{inside}</items></pubsub>", to=owner
    )


def is_event(node: str, sender: str | None = None) -> Callable[[ET.Element], bool]:
    def check(el: ET.Element) -> bool:
        event = el.find(q(EVENT, "event"))
        if el.tag != q(CLIENT, "message") or event is None:
            return False
        child = next(iter(event), None)
        return (
            child is not None
            and child.get("node") == node
            and (sender is None or el.get("from") == sender)
        )

    return check


def event_items(message: ET.Element) -> list[ET.Element]:
    items = message.find(f"{q(EVENT, 'event')}/{q(EVENT, 'items')}")
    assert items is not None, ET.tostring(message)
    return list(items)


def item_ids(result: ET.Element) -> list[str | None]:
    items = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'items')}")
    assert items is not None, ET.tostring(result)
    return [item.get("id") for item in items.findall(q(PUBSUB, "item"))]


def app_condition(el: ET.Element) -> str | None:
    error = el.find(q(CLIENT, "error"))
    assert error is not None, ET.tostring(el)
    for child in error:
        if child.tag.startswith(f"{{{ERRORS}}}"):
            return child.tag.split("}")[1]
    return None


def assert_error(el: ET.Element, error_type: str, condition: str, app: str | None = None) -> None:
    assert el.get("type") == "error", ET.tostring(el)
    assert error_condition(el) == (error_type, condition), ET.tostring(el)
    if app is not None:
        assert app_condition(el) == app, ET.tostring(el)


def config_values(result: ET.Element) -> dict[str, list[str]]:
    x = result.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'configure')}/{q(DATA, 'x')}")
    assert x is not None, ET.tostring(result)
    return {
        f.get("var") or "": [v.text or "" for v in f.findall(q(DATA, "value"))]
        for f in x.findall(q(DATA, "field"))
    }


async def get_config(res: Resource, node: str) -> dict[str, list[str]]:
    result = await res.request(f"<pubsub xmlns='{OWNER}'><configure node='{node}'/></pubsub>")
    assert result.get("type") == "result", ET.tostring(result)
    return config_values(result)


# ---- discovery (XEP-0163 §6) -----------------------------------------------------------------
async def test_account_is_a_pep_service(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)  # account disco: the owner and contacts only
    alice = await login(server, resources, "alice")
    result = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=ALICE)
    assert result.get("type") == "result", ET.tostring(result)
    query = result.find(q(DISCO_INFO, "query"))
    assert query is not None
    identities = {
        (i.get("category"), i.get("type")) for i in query.findall(q(DISCO_INFO, "identity"))
    }
    assert identities == {("account", "registered"), ("pubsub", "pep")}
    features = {f.get("var") for f in query.findall(q(DISCO_INFO, "feature"))}
    for name in (
        "publish",
        "publish-options",
        "auto-create",
        "auto-subscribe",
        "access-presence",
        "access-open",
        "access-whitelist",
        "retrieve-items",
        "retract-items",
        "delete-items",
        "delete-nodes",
        "config-node",
        "filtered-notifications",
        "last-published",
        "persistent-items",
        "item-ids",
    ):
        assert f"{PUBSUB}#{name}" in features, name
    # The server lists them too, and a contact sees the same identity.
    server_info = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN)
    server_features = {f.get("var") for f in server_info.iter(q(DISCO_INFO, "feature"))}
    assert f"{PUBSUB}#publish" in server_features
    bob = await login(server, resources, "bob")
    seen = await bob.request(f"<query xmlns='{DISCO_INFO}'/>", to=ALICE)
    assert ("pubsub", "pep") in {
        (i.get("category"), i.get("type")) for i in seen.iter(q(DISCO_INFO, "identity"))
    }


async def test_disco_items_lists_the_nodes_the_asker_may_see(
    server: Server, resources: list[Resource]
) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    assert (await publish(alice, TUNE, tune("a"))).get("type") == "result"
    opened = options_xml(access_model="open")
    assert (
        await publish(
            alice, DEVICELIST, "<list xmlns='eu.siacs.conversations.axolotl'/>", options=opened
        )
    ).get("type") == "result"
    bookmark = options_xml(access_model="whitelist", max_items="max")
    assert (
        await publish(
            alice,
            BOOKMARKS,
            f"<conference xmlns='{BOOKMARKS}'/>",
            "r@muc.example",
            options=bookmark,
        )
    ).get("type") == "result"

    async def nodes(res: Resource) -> set[str | None]:
        result = await res.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=ALICE)
        assert result.get("type") == "result", ET.tostring(result)
        items = result.findall(f"{q(DISCO_ITEMS, 'query')}/{q(DISCO_ITEMS, 'item')}")
        assert all(i.get("jid") == ALICE for i in items)
        return {i.get("node") for i in items}

    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    assert await nodes(alice) == {TUNE, DEVICELIST, BOOKMARKS}
    assert await nodes(bob) == {TUNE, DEVICELIST}  # a contact: presence and open
    # A stranger: nothing, like for a missing account (RFC 6121 §8.5.1); open nodes are
    # reached by name.
    refused = await carol.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=ALICE)
    assert error_condition(refused) == ("cancel", "service-unavailable")
    info = await bob.request(f"<query xmlns='{DISCO_INFO}' node='{TUNE}'/>", to=ALICE)
    assert info.get("type") == "result", ET.tostring(info)
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and identity.get("type") == "leaf"
    missing = await bob.request(f"<query xmlns='{DISCO_INFO}' node='nope'/>", to=ALICE)
    assert_error(missing, "cancel", "item-not-found")


# ---- publish and notify (XEP-0163 §3, §4) ------------------------------------------------------
async def test_publish_notifies_owner_and_contacts_with_notify(
    server: Server, resources: list[Resource]
) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice", "desk", notify=[TUNE])
    bob = await login(server, resources, "bob", "phone", notify=[TUNE])
    carol = await login(server, resources, "carol", notify=[TUNE])  # no subscription
    result = await publish(alice, TUNE, tune("Introduction"))
    assert result.get("type") == "result", ET.tostring(result)
    published = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'publish')}")
    assert published is not None and published.get("node") == TUNE
    item = published.find(q(PUBSUB, "item"))
    assert item is not None and item.get("id")  # §7.1.2: the generated id
    item_id = item.get("id")
    for res in (bob, alice):
        message = await res.take(is_event(TUNE))
        assert message.get("type") == "headline"
        assert message.get("from") == ALICE  # XEP-0163 §4.3.1: the owner's bare JID
        assert message.get("to") == res.jid  # to each interested full JID
        (got,) = event_items(message)
        assert got.tag == q(EVENT, "item") and got.get("id") == item_id
        title = got.find(f"{q(TUNE, 'tune')}/{q(TUNE, 'title')}")
        assert title is not None and title.text == "Introduction"
    await carol.assert_none(is_event(TUNE))


async def test_notifications_follow_plus_notify(server: Server, resources: list[Resource]) -> None:
    """XEP-0163 §4.2: only resources whose verified caps include NODE+notify."""
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice", notify=[])
    bob_tune = await login(server, resources, "bob", "tune", notify=[TUNE])
    bob_nick = await login(server, resources, "bob", "nick", notify=[NICK])
    bob_none = await login(server, resources, "bob", "none")
    await bob_none.available()  # available, without caps at all
    await publish(alice, TUNE, tune("one"))
    await bob_tune.take(is_event(TUNE))
    await publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>")
    message = await bob_nick.take(is_event(NICK))
    (item,) = event_items(message)
    nick = item.find(q(NICK, "nick"))
    assert nick is not None and nick.text == "Alice"
    await bob_tune.assert_none(is_event(NICK))
    await bob_nick.assert_none(is_event(TUNE))
    await bob_none.assert_none(lambda e: e.find(q(EVENT, "event")) is not None)
    await alice.assert_none(lambda e: e.find(q(EVENT, "event")) is not None)


async def test_caps_with_a_wrong_hash_are_not_believed(
    server: Server, resources: list[Resource]
) -> None:
    """XEP-0115 §5.4: the disco#info answer must hash to the announced ver."""
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    await announce(server, bob, [f"{TUNE}+notify"], ver="bm90IHRoZSByaWdodCBoYXNoIQ==")
    assert features_on_server(server, bob) == frozenset()
    await publish(alice, TUNE, tune("unheard"), "t1")
    await bob.assert_none(is_event(TUNE))
    # Announcing honest caps later is believed, and brings the last item (§4.3.2).
    await announce(server, bob, [f"{TUNE}+notify"], initial=False)
    message = await bob.take(is_event(TUNE))
    assert [i.get("id") for i in event_items(message)] == ["t1"]
    assert message.find(q(DELAY, "delay")) is not None


async def test_unsupported_hash_is_believed_for_that_session_only(
    server: Server, resources: list[Resource]
) -> None:
    """XEP-0115 §5.4 step 2: a hash function the server does not support (MD5 on purpose)
    is asked, believed for the announcing session, and not cached for others."""
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob", "one")
    query, _ = caps_answer([f"{TUNE}+notify"])
    c = f"<c xmlns='{CAPS}' hash='md5' node='{CLIENT_NODE}' ver='whatever'/>"
    for res in (bob, await login(server, resources, "bob", "two")):
        await res.available(extra=c)
        request = await res.take(is_caps_query)  # asked again: nothing cached
        res.send(f"<iq type='result' id='{request.get('id')}' to='{DOMAIN}'>{query}</iq>")
        await until_believed(server, res, {f"{TUNE}+notify"})
    await publish(alice, TUNE, tune("md5"))
    await bob.take(is_event(TUNE))


async def test_server_iq_requests(server: Server, resources: list[Resource]) -> None:
    """core/iq.py: the answer is matched by id and by who answers; errors and a session
    that ends raise IQRequestError."""
    from dovecote.core import iq
    from dovecote.xml.element import Element

    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")

    def version_request() -> Element:
        query = Element("query", "jabber:iq:version")
        return Element(
            "iq", "jabber:client", {"type": "get", "from": DOMAIN, "to": bob.jid}, [query]
        )

    async def asked() -> ET.Element:
        return await bob.take(
            lambda e: e.tag == IQ and e.get("type") == "get" and e.get("from") == DOMAIN
        )

    pending = asyncio.ensure_future(iq.request(server, version_request(), timeout=5))
    request = await asked()
    # Someone else answering with the same id is not taken for bob.
    carol.send(f"<iq type='result' id='{request.get('id')}' to='{DOMAIN}'/>")
    await asyncio.sleep(0.1)
    assert not pending.done()
    bob.send(
        f"<iq type='result' id='{request.get('id')}' to='{DOMAIN}'>"
        "<query xmlns='jabber:iq:version'><name>raw</name></query></iq>"
    )
    result = await pending
    assert result.attrs["type"] == "result"
    assert result.find("query", "jabber:iq:version") is not None

    pending = asyncio.ensure_future(iq.request(server, version_request(), timeout=5))
    request = await asked()
    bob.send(
        f"<iq type='error' id='{request.get('id')}' to='{DOMAIN}'><error type='cancel'>"
        "<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    with pytest.raises(iq.IQRequestError) as failed:
        await pending
    assert failed.value.condition == "feature-not-implemented"

    with pytest.raises(TimeoutError):
        await iq.request(server, version_request(), timeout=0.2)
    await asked()

    pending = asyncio.ensure_future(iq.request(server, version_request(), timeout=30))
    await asked()
    await bob.close()
    with pytest.raises(iq.IQRequestError) as failed:
        await asyncio.wait_for(pending, 5)
    assert failed.value.condition == "service-unavailable"


async def test_verified_caps_are_cached_for_other_sessions(
    server: Server, resources: list[Resource]
) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    first = await login(server, resources, "bob", "one")
    second = await login(server, resources, "bob", "two")
    features = [f"{TUNE}+notify"]
    await announce(server, first, features)
    await announce(server, second, features, expect_query=False)  # the same ver: cached
    await second.assert_none(is_caps_query)
    await publish(alice, TUNE, tune("both"))
    for res in (first, second):
        await res.take(is_event(TUNE))


async def test_last_item_sent_on_login(server: Server, resources: list[Resource]) -> None:
    """XEP-0163 §4.3.3: the last published item to each newly available resource that is
    interested, the owner's own included, with a delay stamp."""
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    await publish(alice, TUNE, tune("first"), "one")
    await publish(alice, TUNE, tune("second"), "two")
    await publish(alice, NICK, f"<nick xmlns='{NICK}'>Al</nick>", "n")
    bob = await login(server, resources, "bob", notify=[TUNE])
    message = await bob.take(is_event(TUNE, ALICE))
    assert message.get("to") == bob.jid
    (item,) = event_items(message)
    assert item.get("id") == "two"
    delay = message.find(q(DELAY, "delay"))
    assert delay is not None and delay.get("stamp", "").endswith("Z")
    await bob.assert_none(is_event(NICK))  # not interested
    await bob.assert_none(is_event(TUNE))  # once only
    # The owner's other resource gets her own last items.
    laptop = await login(server, resources, "alice", "laptop", notify=[TUNE, NICK])
    got = {event_items(await laptop.take(is_event(node)))[0].get("id") for node in (TUNE, NICK)}
    assert got == {"two", "n"}
    # A stranger gets nothing on login.
    carol = await login(server, resources, "carol", notify=[TUNE])
    await carol.assert_none(is_event(TUNE))


async def test_new_caps_bring_the_last_items(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    await publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>", "current")
    bob = await login(server, resources, "bob", notify=[TUNE])
    await bob.assert_none(is_event(NICK))
    await announce(server, bob, [f"{TUNE}+notify", f"{NICK}+notify"], initial=False)
    message = await bob.take(is_event(NICK))
    assert [i.get("id") for i in event_items(message)] == ["current"]
    # Presence again with the same caps: nothing new (§4.3.2 note).
    bob.send("<presence><show>away</show></presence>")
    await bob.assert_none(is_event(NICK))


async def test_subscription_approved_during_the_session(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice", notify=[])
    await publish(alice, TUNE, tune("now playing"), "np")
    bob = await login(server, resources, "bob", notify=[TUNE])
    await bob.assert_none(is_event(TUNE))
    bob.send(f"<presence to='{ALICE}' type='subscribe'/>")
    await alice.take(lambda e: e.tag == q(CLIENT, "presence") and e.get("type") == "subscribe")
    alice.send(f"<presence to='{BOB}' type='subscribed'/>")
    message = await bob.take(is_event(TUNE, ALICE))
    assert [i.get("id") for i in event_items(message)] == ["np"]
    # From now on bob is notified of new items too.
    await publish(alice, TUNE, tune("next"), "next")
    message = await bob.take(is_event(TUNE, ALICE))
    assert [i.get("id") for i in event_items(message)] == ["next"]


async def test_only_the_owner_publishes(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    bob = await login(server, resources, "bob")
    result = await bob.request(publish_xml(TUNE, tune("x")), "set", to=ALICE)
    assert_error(result, "auth", "forbidden")
    no_node = await bob.request(f"<pubsub xmlns='{PUBSUB}'><publish/></pubsub>", "set")
    assert_error(no_node, "modify", "bad-request", "nodeid-required")
    two = await bob.request(
        f"<pubsub xmlns='{PUBSUB}'><publish node='{TUNE}'><item>{tune('a')}{tune('b')}</item>"
        f"</publish></pubsub>",
        "set",
    )
    assert_error(two, "modify", "bad-request", "invalid-payload")


# ---- publish-options (XEP-0060 §7.1.5), bookmarks (XEP-0402) -----------------------------------
BOOKMARK_OPTIONS = options_xml(
    persist_items="true",
    max_items="max",
    send_last_published_item="never",
    access_model="whitelist",
)


def conference(name: str) -> str:
    return (
        f"<conference xmlns='{BOOKMARKS}' name='{name}' autojoin='true'>"
        "<nick>JC</nick></conference>"
    )


async def test_bookmarks_with_publish_options(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice", "one", notify=[BOOKMARKS])
    other = await login(server, resources, "alice", "two", notify=[BOOKMARKS])
    for room, name in (("play@muc.example", "The Play"), ("orchard@muc.example", "Orchard")):
        result = await publish(alice, BOOKMARKS, conference(name), room, BOOKMARK_OPTIONS)
        assert result.get("type") == "result", ET.tostring(result)
        # XEP-0402 §4: the user's other clients are told.
        message = await other.take(is_event(BOOKMARKS))
        assert [i.get("id") for i in event_items(message)] == [room]
    config = await get_config(alice, BOOKMARKS)
    assert config["pubsub#access_model"] == ["whitelist"]
    assert config["pubsub#max_items"] == ["max"]
    assert config["pubsub#persist_items"] == ["true"]
    assert config["pubsub#send_last_published_item"] == ["never"]
    everything = await get_items(alice, ALICE, BOOKMARKS)
    assert item_ids(everything) == ["play@muc.example", "orchard@muc.example"]
    # Whitelist: a contact may not read them (XEP-0060 §6.5.9.8).
    bob = await login(server, resources, "bob")
    refused = await get_items(bob, ALICE, BOOKMARKS)
    assert_error(refused, "cancel", "not-allowed", "closed-node")
    # Editing with the same options succeeds; other options are a conflict.
    again = await publish(
        alice, BOOKMARKS, conference("The Play!"), "play@muc.example", BOOKMARK_OPTIONS
    )
    assert again.get("type") == "result", ET.tostring(again)
    message = await other.take(is_event(BOOKMARKS))
    assert [i.get("id") for i in event_items(message)] == ["play@muc.example"]
    conflict = await publish(
        alice, BOOKMARKS, conference("x"), "x@muc.example", options_xml(access_model="presence")
    )
    assert_error(conflict, "cancel", "conflict", "precondition-not-met")
    unknown = await publish(
        alice, BOOKMARKS, conference("x"), "x@muc.example", options_xml(colour="blue")
    )
    assert_error(unknown, "cancel", "conflict", "precondition-not-met")
    assert item_ids(await get_items(alice, ALICE, BOOKMARKS)) == [
        "orchard@muc.example",
        "play@muc.example",
    ]
    # send_last_published_item=never: a new resource is not sent bookmarks.
    third = await login(server, resources, "alice", "three", notify=[BOOKMARKS])
    await third.assert_none(is_event(BOOKMARKS))
    # Removing one, with notify (XEP-0402 §4).
    removed = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS}' notify='true'>"
        f"<item id='orchard@muc.example'/></retract></pubsub>",
        "set",
    )
    assert removed.get("type") == "result", ET.tostring(removed)
    for res in (other, third):
        message = await res.take(is_event(BOOKMARKS))
        (retract,) = event_items(message)
        assert retract.tag == q(EVENT, "retract") and retract.get("id") == "orchard@muc.example"
    await bob.assert_none(is_event(BOOKMARKS))


async def test_publish_options_on_an_auto_created_node(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bad_value = await publish(alice, TUNE, tune("x"), options=options_xml(access_model="nobody"))
    assert_error(bad_value, "cancel", "conflict", "precondition-not-met")
    wrong_form = await publish(
        alice,
        TUNE,
        tune("x"),
        options=f"<publish-options><x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' "
        f"type='hidden'><value>urn:other</value></field></x></publish-options>",
    )
    assert_error(wrong_form, "modify", "bad-request")
    missing = await get_items(alice, ALICE, TUNE)
    assert_error(missing, "cancel", "item-not-found")  # nothing was created
    created = await publish(alice, TUNE, tune("x"), options=options_xml(max_items="3"))
    assert created.get("type") == "result"
    assert (await get_config(alice, TUNE))["pubsub#max_items"] == ["3"]
    assert (await get_config(alice, TUNE))["pubsub#access_model"] == ["presence"]  # default


# ---- access models (XEP-0060 §4.5, §6.5.9) -----------------------------------------------------
async def test_access_models(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    dave = await login(server, resources, "dave", domain="other.example")
    await publish(alice, TUNE, tune("presence"), "p")
    await publish(
        alice,
        DEVICELIST,
        "<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>",
        "current",
        options_xml(access_model="open"),
    )
    await publish(
        alice,
        "private",
        "<secret xmlns='urn:example'/>",
        "s",
        options_xml(access_model="whitelist"),
    )
    # presence: the owner and contacts with a subscription.
    assert item_ids(await get_items(alice, ALICE, TUNE)) == ["p"]
    assert item_ids(await get_items(bob, ALICE, TUNE)) == ["p"]
    assert_error(
        await get_items(carol, ALICE, TUNE),
        "auth",
        "not-authorized",
        "presence-subscription-required",
    )
    # open: anyone, on any domain.
    for res in (bob, carol, dave):
        assert item_ids(await get_items(res, ALICE, DEVICELIST)) == ["current"]
    # whitelist: the owner, and members she adds (XEP-0060 §8.9).
    assert item_ids(await get_items(alice, ALICE, "private")) == ["s"]
    assert_error(await get_items(bob, ALICE, "private"), "cancel", "not-allowed", "closed-node")
    added = await alice.request(
        f"<pubsub xmlns='{OWNER}'><affiliations node='private'>"
        f"<affiliation jid='{CAROL}' affiliation='member'/></affiliations></pubsub>",
        "set",
    )
    assert added.get("type") == "result", ET.tostring(added)
    assert item_ids(await get_items(carol, ALICE, "private")) == ["s"]
    listing = await alice.request(
        f"<pubsub xmlns='{OWNER}'><affiliations node='private'/></pubsub>"
    )
    affs = {(a.get("jid"), a.get("affiliation")) for a in listing.iter(q(OWNER, "affiliation"))}
    assert affs == {(ALICE, "owner"), (CAROL, "member")}
    # An outcast is refused even where the model would let it in.
    await alice.request(
        f"<pubsub xmlns='{OWNER}'><affiliations node='{DEVICELIST}'>"
        f"<affiliation jid='dave@other.example' affiliation='outcast'/></affiliations></pubsub>",
        "set",
    )
    assert_error(await get_items(dave, ALICE, DEVICELIST), "auth", "forbidden")
    # A node that does not exist, and an account that does not exist.
    assert_error(await get_items(bob, ALICE, "nothing"), "cancel", "item-not-found")
    assert_error(await get_items(bob, f"nobody@{DOMAIN}", TUNE), "cancel", "service-unavailable")


async def test_open_node_explicit_subscription(server: Server, resources: list[Resource]) -> None:
    """XEP-0060 §6.1/§6.2: a stranger may subscribe to an open node and is notified."""
    alice = await login(server, resources, "alice")
    await publish(
        alice,
        DEVICELIST,
        "<list xmlns='eu.siacs.conversations.axolotl'/>",
        "current",
        options_xml(access_model="open"),
    )
    carol = await login(server, resources, "carol")
    await carol.available()
    result = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{DEVICELIST}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert result.get("type") == "result", ET.tostring(result)
    sub = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'subscription')}")
    assert sub is not None and sub.get("subscription") == "subscribed" and sub.get("jid") == CAROL
    # §6.1.7: the last item on subscription.
    message = await carol.take(is_event(DEVICELIST, ALICE))
    assert [i.get("id") for i in event_items(message)] == ["current"]
    await publish(
        alice,
        DEVICELIST,
        "<list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list>",
        "current",
    )
    message = await carol.take(is_event(DEVICELIST, ALICE))
    assert [i.get("id") for i in event_items(message)] == ["current"]
    mine = await carol.request(f"<pubsub xmlns='{PUBSUB}'><subscriptions/></pubsub>", to=ALICE)
    assert [s.get("node") for s in mine.iter(q(PUBSUB, "subscription"))] == [DEVICELIST]
    forged = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{DEVICELIST}' jid='{BOB}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert_error(forged, "modify", "bad-request", "invalid-jid")
    closed = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{TUNE}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert_error(closed, "cancel", "item-not-found")
    gone = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><unsubscribe node='{DEVICELIST}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert gone.get("type") == "result", ET.tostring(gone)
    await publish(alice, DEVICELIST, "<list xmlns='eu.siacs.conversations.axolotl'/>", "current")
    await carol.assert_none(is_event(DEVICELIST))
    again = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><unsubscribe node='{DEVICELIST}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert_error(again, "cancel", "unexpected-request", "not-subscribed")  # §6.2.3.2


# ---- items, retract, delete, purge, configure ----------------------------------------------------
async def test_retrieve_items(server: Server, resources: list[Resource]) -> None:
    alice = await login(server, resources, "alice")
    await publish(
        alice,
        AVATAR_DATA,
        "<data xmlns='urn:xmpp:avatar:data'>AAAA</data>",
        "a1",
        options_xml(max_items="3"),
    )
    for n in (2, 3, 4):
        await publish(
            alice, AVATAR_DATA, f"<data xmlns='urn:xmpp:avatar:data'>{'B' * n}</data>", f"a{n}"
        )
    # max_items=3: the oldest went.
    assert item_ids(await get_items(alice, ALICE, AVATAR_DATA)) == ["a2", "a3", "a4"]
    assert item_ids(await get_items(alice, ALICE, AVATAR_DATA, attrs=" max_items='2'")) == [
        "a3",
        "a4",
    ]
    one = await get_items(alice, ALICE, AVATAR_DATA, "<item id='a3'/>")
    assert item_ids(one) == ["a3"]
    data = one.find(f".//{q('urn:xmpp:avatar:data', 'data')}")
    assert data is not None and data.text == "BBB"
    # Republishing an id makes it the newest.
    await publish(alice, AVATAR_DATA, "<data xmlns='urn:xmpp:avatar:data'>CC</data>", "a2")
    assert item_ids(await get_items(alice, ALICE, AVATAR_DATA)) == ["a3", "a4", "a2"]
    missing = await get_items(alice, ALICE, AVATAR_DATA, "<item id='zzz'/>")
    assert_error(missing, "cancel", "item-not-found")
    bad = await get_items(alice, ALICE, AVATAR_DATA, attrs=" max_items='many'")
    assert_error(bad, "modify", "bad-request")
    no_node = await alice.request(f"<pubsub xmlns='{PUBSUB}'><items/></pubsub>")
    assert_error(no_node, "modify", "bad-request", "nodeid-required")
    # Owner with no 'to': the own account.
    own = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><items node='{AVATAR_DATA}' max_items='1'/></pubsub>"
    )
    assert item_ids(own) == ["a2"]


async def test_retract_purge_and_delete_notify(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob", notify=[AVATAR_META])
    meta = (
        f"<metadata xmlns='{AVATAR_META}'><info bytes='12' id='abc' height='64' width='64' "
        "type='image/png'/></metadata>"
    )
    await publish(alice, AVATAR_META, meta, "abc", options_xml(max_items="2"))
    await bob.take(is_event(AVATAR_META))
    await publish(alice, AVATAR_META, meta.replace("abc", "def"), "def")
    await bob.take(is_event(AVATAR_META))
    retract = (
        f"<pubsub xmlns='{PUBSUB}'><retract node='{AVATAR_META}' notify='1'>"
        f"<item id='def'/></retract></pubsub>"
    )
    assert (await alice.request(retract, "set")).get("type") == "result"
    (gone,) = event_items(await bob.take(is_event(AVATAR_META)))
    assert gone.tag == q(EVENT, "retract") and gone.get("id") == "def"
    assert item_ids(await get_items(bob, ALICE, AVATAR_META)) == ["abc"]
    assert_error(await alice.request(retract, "set"), "cancel", "item-not-found")
    no_id = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><retract node='{AVATAR_META}'><item/></retract></pubsub>", "set"
    )
    assert_error(no_id, "modify", "bad-request", "item-required")
    not_owner = await bob.request(retract.replace("def", "abc"), "set", to=ALICE)
    assert_error(not_owner, "auth", "forbidden")
    # The last item is now 'abc' again: a new resource of bob gets that one.
    bob2 = await login(server, resources, "bob", "two", notify=[AVATAR_META])
    assert [i.get("id") for i in event_items(await bob2.take(is_event(AVATAR_META)))] == ["abc"]
    # Purge (XEP-0060 §8.5).
    purge = f"<pubsub xmlns='{OWNER}'><purge node='{AVATAR_META}'/></pubsub>"
    assert (await alice.request(purge, "set")).get("type") == "result"
    purged = await bob.take(is_event(AVATAR_META))
    assert purged.find(f"{q(EVENT, 'event')}/{q(EVENT, 'purge')}") is not None
    assert item_ids(await get_items(bob, ALICE, AVATAR_META)) == []
    # Delete (XEP-0060 §8.4).
    delete = f"<pubsub xmlns='{OWNER}'><delete node='{AVATAR_META}'/></pubsub>"
    assert_error(await bob.request(delete, "set", to=ALICE), "auth", "forbidden")
    assert (await alice.request(delete, "set")).get("type") == "result"
    deleted = await bob.take(is_event(AVATAR_META))
    assert deleted.find(f"{q(EVENT, 'event')}/{q(EVENT, 'delete')}") is not None
    assert_error(await get_items(bob, ALICE, AVATAR_META), "cancel", "item-not-found")
    assert_error(await alice.request(delete, "set"), "cancel", "item-not-found")


async def test_configure_node(server: Server, resources: list[Resource]) -> None:
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    create = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><create node='{VCARD4_NODE}'/></pubsub>", "set"
    )
    assert create.get("type") == "result", ET.tostring(create)
    exists = await alice.request(
        f"<pubsub xmlns='{PUBSUB}'><create node='{VCARD4_NODE}'/></pubsub>", "set"
    )
    assert_error(exists, "cancel", "conflict")
    config = await get_config(alice, VCARD4_NODE)
    assert config["FORM_TYPE"] == [f"{PUBSUB}#node_config"]
    assert config["pubsub#access_model"] == ["presence"]  # XEP-0163 §5 defaults
    assert config["pubsub#send_last_published_item"] == ["on_sub_and_presence"]
    await publish(
        alice,
        VCARD4_NODE,
        f"<vcard xmlns='{VCARD4}'><fn><text>Alice</text></fn></vcard>",
        "current",
    )
    carol = await login(server, resources, "carol")
    assert_error(await get_items(carol, ALICE, VCARD4_NODE), "auth", "not-authorized")

    def submit(**fields: str) -> str:
        body = "".join(
            f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items()
        )
        return (
            f"<pubsub xmlns='{OWNER}'><configure node='{VCARD4_NODE}'><x xmlns='{DATA}' "
            f"type='submit'><field var='FORM_TYPE' type='hidden'><value>{PUBSUB}#node_config"
            f"</value></field>{body}</x></configure></pubsub>"
        )

    changed = await alice.request(submit(access_model="open"), "set")
    assert changed.get("type") == "result", ET.tostring(changed)
    assert (await get_config(alice, VCARD4_NODE))["pubsub#access_model"] == ["open"]
    assert item_ids(await get_items(carol, ALICE, VCARD4_NODE)) == ["current"]
    invalid = await alice.request(submit(max_items="-4"), "set")
    assert_error(invalid, "modify", "not-acceptable")
    not_owner = await bob.request(submit(access_model="presence"), "set", to=ALICE)
    assert_error(not_owner, "auth", "forbidden")
    missing = await alice.request(f"<pubsub xmlns='{OWNER}'><configure node='nope'/></pubsub>")
    assert_error(missing, "cancel", "item-not-found")
    default = await alice.request(f"<pubsub xmlns='{OWNER}'><default/></pubsub>")
    assert default.get("type") == "result"
    assert default.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'default')}/{q(DATA, 'x')}") is not None


# ---- persistence ---------------------------------------------------------------------------------
async def test_nodes_and_items_survive_a_restart(data_dir: Path) -> None:
    server = await start_server(data_dir, modules=MODULES)
    opened: list[Resource] = []
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        await befriend(server, ALICE, BOB)
        alice = await login(server, opened, "alice")
        await publish(alice, BOOKMARKS, conference("Play"), "play@muc.example", BOOKMARK_OPTIONS)
        await publish(alice, NICK, f"<nick xmlns='{NICK}'>Alice</nick>", "nick")
    finally:
        for res in opened:
            await res.close()
        await server.stop()
    server = await start_server(data_dir, modules=MODULES)
    opened = []
    try:
        alice = await login(server, opened, "alice")
        assert item_ids(await get_items(alice, ALICE, BOOKMARKS)) == ["play@muc.example"]
        config = await get_config(alice, BOOKMARKS)
        assert config["pubsub#access_model"] == ["whitelist"]
        assert config["pubsub#max_items"] == ["max"]
        bob = await login(server, opened, "bob", notify=[NICK, BOOKMARKS])
        message = await bob.take(is_event(NICK, ALICE))
        (item,) = event_items(message)
        nick = item.find(q(NICK, "nick"))
        assert item.get("id") == "nick" and nick is not None and nick.text == "Alice"
        await bob.assert_none(is_event(BOOKMARKS))
    finally:
        for res in opened:
            await res.close()
        await server.stop()


async def test_store_keeps_order_and_goes_with_the_account(server: Server) -> None:
    """The PubSubStore itself: eviction order, last items, per-service data, and PEP data
    deleted with the account (ACCOUNT_DATA tables)."""
    from datetime import UTC, datetime

    from dovecote.storage.pubsub import PubSubItem

    store = server.storage.pubsub
    assert await store.create_node("alice", DOMAIN, "n", {"pubsub#max_items": "2"})
    assert not await store.create_node("alice", DOMAIN, "n", {})
    assert await store.create_node("", "pubsub.example.org", "n", {})  # a service, no account
    for name in ("i1", "i2", "i3"):
        item = PubSubItem(name, f"<x xmlns='urn:t'>{name}</x>", ALICE, datetime.now(UTC))
        evicted = await store.publish("alice", DOMAIN, "n", item, 2)
    assert evicted == ["i1"]
    assert [i.id for i in await store.get_items("alice", DOMAIN, "n")] == ["i2", "i3"]
    last = (await store.last_items("alice", DOMAIN))["n"]
    assert last.id == "i3" and last.payload == "<x xmlns='urn:t'>i3</x>"
    assert last.published_at.tzinfo is not None
    await store.set_affiliation("alice", DOMAIN, "n", BOB, "member")
    await store.set_subscription("alice", DOMAIN, "n", CAROL, "subscribed", "s1")
    assert await store.get_affiliations("alice", DOMAIN) == [("n", BOB, "member")]
    assert await server.storage.accounts.delete("alice", DOMAIN)
    assert await store.list_nodes("alice", DOMAIN) == []
    assert await store.get_items("alice", DOMAIN, "n") == []
    assert await store.get_subscriptions("alice", DOMAIN) == []
    assert await store.get_affiliations("alice", DOMAIN) == []
    # Another service is untouched.
    assert [n.name for n in await store.list_nodes("", "pubsub.example.org")] == ["n"]


# ---- a real client ----------------------------------------------------------------------------
async def test_slixmpp_nick_and_tune(server: Server) -> None:
    """slixmpp with its XEP-0115, XEP-0163 and XEP-0172 plugins: interest announced in its
    caps, a nickname published by one contact reaches the other."""
    await befriend(server, ALICE, BOB)
    alice = await connect(server, ALICE, presence=False)
    bob = await connect(server, BOB, presence=False)
    try:
        for client in (alice, bob):
            client.register_plugin("xep_0115")
            client.register_plugin("xep_0163")
            client.register_plugin("xep_0172")
        nicks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        bob.add_event_handler(
            "user_nick_publish",
            lambda msg: nicks.put_nowait(
                (str(msg["from"]), msg["pubsub_event"]["items"]["item"]["nick"]["nick"])
            ),
        )
        bob.plugin["xep_0163"].add_interest(NICK)
        await bob.plugin["xep_0115"].update_caps(broadcast=False)
        bob.send_presence()
        bob_session = JID.parse(str(bob.boundjid))
        await until(
            lambda: (
                server.sessions.get(bob_session) is not None
                and f"{NICK}+notify" in caps.features_of(server.sessions.get(bob_session))
            )
        )
        alice.send_presence()
        await alice.plugin["xep_0172"].publish_nick("Ally")
        sender, nick = await asyncio.wait_for(nicks.get(), 5)
        assert (sender, nick) == (ALICE, "Ally")
    finally:
        await disconnect(alice, bob)


async def test_blocked_contacts_get_no_notifications(
    server: Server, resources: list[Resource]
) -> None:
    """XEP-0191 §3.3: nothing goes between a user and a JID the user blocks: no PEP
    notification when publishing, no last item at login, in either direction."""
    await befriend(server, ALICE, BOB)
    await server.storage.kv.set("alice", "example.org", "blocklist", json.dumps([BOB]))
    alice = await login(server, resources, "alice", notify=[TUNE])
    bob = await login(server, resources, "bob", notify=[TUNE])
    await publish(alice, TUNE, tune("not for bob"))
    await alice.take(is_event(TUNE))  # the owner still gets her own
    await bob.assert_none(is_event(TUNE))
    await publish(bob, TUNE, tune("not for alice"))
    await alice.assert_none(is_event(TUNE, BOB))
    # And at login: bob's new resource gets no last item of alice's.
    tablet = await login(server, resources, "bob", "tablet", notify=[TUNE])
    await tablet.assert_none(is_event(TUNE, ALICE))


async def test_deleted_account_leaves_no_cached_items(
    server: Server, resources: list[Resource]
) -> None:
    """An account deleted by `dovecote user del` (the control socket event) takes its PEP
    data along: a new account of the same name starts empty, even while cached."""
    await befriend(server, ALICE, BOB)
    alice = await login(server, resources, "alice")
    await publish(alice, TUNE, tune("old life"), "one")
    await alice.close()
    bob = await login(server, resources, "bob")
    # bob reads them while alice is offline: her service is now in the server's cache.
    assert (await get_items(bob, ALICE, TUNE)).get("type") == "result"
    await server.storage.accounts.delete("alice", "example.org")
    await server._control_event({"event": "account-deleted", "jid": ALICE})
    await add_user(server, "alice")
    again = await login(server, resources, "alice", "new")
    result = await get_items(again, ALICE, TUNE)
    assert_error(result, "cancel", "item-not-found")


async def test_explicit_subscribers_get_the_delete_notification(
    server: Server, resources: list[Resource]
) -> None:
    """XEP-0060 §8.4.2: deleting a node notifies its subscribers, the explicit ones too
    (not only the contacts reached through presence)."""
    alice = await login(server, resources, "alice")
    await publish(alice, TUNE, tune("one"), "current", options_xml(access_model="open"))
    carol = await login(server, resources, "carol")
    await carol.available()
    result = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{TUNE}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert result.get("type") == "result", ET.tostring(result)
    await carol.take(is_event(TUNE, ALICE))  # the last item (§6.1.7)
    deleted = await alice.request(
        f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>", "set"
    )
    assert deleted.get("type") == "result", ET.tostring(deleted)
    message = await carol.take(is_event(TUNE, ALICE))
    event = message.find(q(EVENT, "event"))
    assert event is not None and [child.tag for child in event] == [q(EVENT, "delete")]


async def test_no_notifications_from_a_node_that_delivers_none(
    server: Server, resources: list[Resource]
) -> None:
    """XEP-0060 §16.4.4 pubsub#deliver_notifications off: nobody is notified, explicit
    subscribers neither."""
    alice = await login(server, resources, "alice")
    options = options_xml(access_model="open", deliver_notifications="0")
    await publish(alice, TUNE, tune("one"), "current", options)
    carol = await login(server, resources, "carol")
    await carol.available()
    result = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><subscribe node='{TUNE}' jid='{CAROL}'/></pubsub>",
        "set",
        to=ALICE,
    )
    assert result.get("type") == "result", ET.tostring(result)
    published = await publish(alice, TUNE, tune("two"), "current", options)
    assert published.get("type") == "result", ET.tostring(published)
    await carol.assert_none(is_event(TUNE))
    # The item is there for whoever asks (§6.5).
    items = await carol.request(
        f"<pubsub xmlns='{PUBSUB}'><items node='{TUNE}'/></pubsub>", to=ALICE
    )
    assert item_ids(items) == ["current"]
