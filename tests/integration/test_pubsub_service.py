"""XEP-0060 publish-subscribe service on its own domain (`[pubsub] domain`), over real
sockets: raw XML clients for exact stanzas, slixmpp's xep_0060 plugin for a real client's
view, and a restart on the same data_dir for persistence."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import (
    CLIENT,
    DOMAIN,
    Resource,
    add_user,
    error_condition,
    login_resource,
    q,
    start_server,
)

PS = "pubsub.example.org"
PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = f"{PUBSUB}#event"
OWNER = f"{PUBSUB}#owner"
ERRORS = f"{PUBSUB}#errors"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
DELAY = "urn:xmpp:delay"
ENTRY = "urn:test:entry"

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
IQ = q(CLIENT, "iq")
MESSAGE = q(CLIENT, "message")


# ---- set-up --------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


async def start(data_dir: Path, **pubsub: object) -> Server:
    srv = await start_server(data_dir, pubsub={"domain": PS, **pubsub})
    return srv


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await start(data_dir, max_payload_bytes=1024, max_nodes_per_user=3)
    for name in ("alice", "bob", "carol"):
        await add_user(srv, name)
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


async def login(
    server: Server, opened: list[Resource], local: str, resource: str = "r", **kw: object
) -> Resource:
    res = await login_resource(server, local, resource, presence=True, **kw)  # type: ignore[arg-type]
    opened.append(res)
    return res


# ---- stanzas -----------------------------------------------------------------------------------
def form(form_type: str, form_kind: str = "submit", **fields: str | list[str]) -> str:
    body = f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        name = var if var.startswith("pubsub#") else f"pubsub#{var}"
        body += f"<field var='{name}'>" + "".join(f"<value>{v}</value>" for v in values)
        body += "</field>"
    return f"<x xmlns='{DATA}' type='{form_kind}'>{body}</x>"


def config_form(**fields: str | list[str]) -> str:
    return form(f"{PUBSUB}#node_config", **fields)


async def ps(res: Resource, inside: str, iq_type: str = "get", owner: bool = False) -> ET.Element:
    namespace = OWNER if owner else PUBSUB
    return await res.request(f"<pubsub xmlns='{namespace}'>{inside}</pubsub>", iq_type, PS)


async def create(res: Resource, node: str, **config: str | list[str]) -> ET.Element:
    conf = f"<configure>{config_form(**config)}</configure>" if config else ""
    return await ps(res, f"<create node='{node}'/>{conf}", "set")


def entry(text: str) -> str:
    return f"<entry xmlns='{ENTRY}'>{text}</entry>"


async def publish(
    res: Resource, node: str, payload: str, item_id: str | None = None, extra: str = ""
) -> ET.Element:
    id_attr = f" id='{item_id}'" if item_id else ""
    return await ps(
        res, f"<publish node='{node}'><item{id_attr}>{payload}</item></publish>{extra}", "set"
    )


async def subscribe(
    res: Resource, node: str, jid: str | None = None, extra: str = ""
) -> ET.Element:
    return await ps(res, f"<subscribe node='{node}' jid='{jid or res.jid}'/>{extra}", "set")


async def items(res: Resource, node: str, attrs: str = "", inside: str = "") -> ET.Element:
    return await ps(res, f"<items node='{node}'{attrs}>{inside}</items>")


def ok(el: ET.Element) -> ET.Element:
    assert el.get("type") == "result", ET.tostring(el)
    return el


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
    assert app_condition(el) == app, ET.tostring(el)


def is_event(node: str, kind: str = "items") -> Callable[[ET.Element], bool]:
    def check(el: ET.Element) -> bool:
        child = el.find(f"{q(EVENT, 'event')}/{q(EVENT, kind)}")
        return el.tag == MESSAGE and child is not None and child.get("node") == node

    return check


def item_ids(result: ET.Element) -> list[str | None]:
    found = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'items')}")
    assert found is not None, ET.tostring(result)
    return [item.get("id") for item in found.findall(q(PUBSUB, "item"))]


def event_items(message: ET.Element) -> list[ET.Element]:
    found = message.find(f"{q(EVENT, 'event')}/{q(EVENT, 'items')}")
    assert found is not None, ET.tostring(message)
    return list(found)


def form_values(x: ET.Element | None) -> dict[str, list[str]]:
    assert x is not None
    return {
        f.get("var") or "": [v.text or "" for v in f.findall(q(DATA, "value"))]
        for f in x.findall(q(DATA, "field"))
    }


async def befriend(server: Server, a: str, b: str, groups: tuple[str, ...] = ()) -> None:
    """Mutual presence subscription ('both'), written to storage before anyone logs in."""
    for user, contact in ((a, b), (b, a)):
        jid = JID.parse(user)
        await server.storage.roster.put(
            jid.local, jid.domain, RosterItem(contact, subscription="both", groups=groups)
        )


# ---- disco -------------------------------------------------------------------------------------
async def test_server_lists_the_service_with_its_identity_and_features(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    listing = ok(await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=DOMAIN))
    jids = [i.get("jid") for i in listing.iter(q(DISCO_ITEMS, "item"))]
    assert PS in jids
    info = ok(await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=PS))
    identities = [(i.get("category"), i.get("type")) for i in info.iter(q(DISCO_INFO, "identity"))]
    assert identities == [("pubsub", "service")]
    features = {f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))}
    assert PUBSUB in features
    for name in ("create-nodes", "instant-nodes", "subscription-options", "access-authorize",
                 "manage-subscriptions", "modify-affiliations", "publish-options"):  # fmt: skip
        assert f"{PUBSUB}#{name}" in features
    assert f"{PUBSUB}#collections" not in features
    assert f"{PUBSUB}#auto-create" not in features
    assert f"{PUBSUB}#get-pending" not in features


async def test_without_domain_there_is_no_service(data_dir: Path) -> None:
    srv = await start_server(data_dir)
    try:
        assert srv.components == {}
        assert "pubsub" in srv.modules
    finally:
        await srv.stop()


async def test_disco_of_nodes_and_items(server: Server, resources: list[Resource]) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    ok(await create(alice, "news", title="The News"))
    ok(await create(alice, "secret", access_model="whitelist"))
    ok(await publish(alice, "news", entry("one"), "i1"))
    ok(await publish(alice, "news", entry("two"), "i2"))
    nodes = ok(await bob.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=PS))
    listed = [
        (i.get("jid"), i.get("node"), i.get("name")) for i in nodes.iter(q(DISCO_ITEMS, "item"))
    ]
    assert listed == [(PS, "news", "The News")]  # bob may not see the whitelist node
    nodes = ok(await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=PS))
    assert {i.get("node") for i in nodes.iter(q(DISCO_ITEMS, "item"))} == {"news", "secret"}
    ids = ok(await bob.request(f"<query xmlns='{DISCO_ITEMS}' node='news'/>", to=PS))
    assert [i.get("name") for i in ids.iter(q(DISCO_ITEMS, "item"))] == ["i1", "i2"]
    info = ok(await bob.request(f"<query xmlns='{DISCO_INFO}' node='news'/>", to=PS))
    identity = info.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and identity.get("type") == "leaf"
    meta = form_values(info.find(f"{q(DISCO_INFO, 'query')}/{q(DATA, 'x')}"))
    assert meta["FORM_TYPE"] == [f"{PUBSUB}#meta-data"]
    assert meta["pubsub#owner"] == [ALICE]
    assert meta["pubsub#access_model"] == ["open"]
    assert meta["pubsub#title"] == ["The News"]
    denied = await bob.request(f"<query xmlns='{DISCO_INFO}' node='secret'/>", to=PS)
    assert_error(denied, "cancel", "not-allowed", "closed-node")
    missing = await bob.request(f"<query xmlns='{DISCO_INFO}' node='nope'/>", to=PS)
    assert_error(missing, "cancel", "item-not-found")


# ---- node life cycle (§8) ---------------------------------------------------------------------
async def test_create_configure_default_and_instant_nodes(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    ok(await create(alice, "plain"))
    assert_error(await create(bob, "plain"), "cancel", "conflict")
    # With a configuration form (§8.1.3).
    ok(await create(alice, "configured", title="Hi", max_items="3", notify_retract="false"))
    got = ok(await ps(alice, "<configure node='configured'/>", owner=True))
    values = form_values(got.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'configure')}/{q(DATA, 'x')}"))
    assert values["pubsub#title"] == ["Hi"]
    assert values["pubsub#max_items"] == ["3"]
    assert values["pubsub#notify_retract"] == ["false"]
    assert values["pubsub#access_model"] == ["open"]
    # Round trip: submit, read back; a cancelled form changes nothing (§8.2.5).
    submit = f"<configure node='configured'>{config_form(title='Changed', access_model='whitelist')}</configure>"
    ok(await ps(alice, submit, "set", owner=True))
    cancel = f"<configure node='configured'><x xmlns='{DATA}' type='cancel'/></configure>"
    ok(await ps(alice, cancel, "set", owner=True))
    got = ok(await ps(alice, "<configure node='configured'/>", owner=True))
    values = form_values(got.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'configure')}/{q(DATA, 'x')}"))
    assert values["pubsub#title"] == ["Changed"]
    assert values["pubsub#access_model"] == ["whitelist"]
    # Only owners configure (§8.2.3.2).
    assert_error(await ps(bob, "<configure node='configured'/>", owner=True), "auth", "forbidden")
    # Default configuration (§8.3).
    default = ok(await ps(bob, "<default/>", owner=True))
    values = form_values(default.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'default')}/{q(DATA, 'x')}"))
    assert values["pubsub#access_model"] == ["open"]
    assert values["pubsub#max_items"] == ["max"]
    # Instant node (§8.1.2): the service makes up the NodeID and says it.
    instant = ok(await ps(bob, "<create/>", "set"))
    created = instant.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'create')}")
    assert created is not None and created.get("node")
    affs = ok(await ps(bob, "<affiliations/>"))
    listed = [(a.get("node"), a.get("affiliation")) for a in affs.iter(q(PUBSUB, "affiliation"))]
    assert listed == [(created.get("node"), "owner")]


async def test_delete_with_redirect_and_purge_notify_subscribers(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "old"))
    ok(await create(alice, "new"))
    for res in (bob, carol):
        ok(await subscribe(res, "old"))
    ok(await publish(alice, "old", entry("a"), "a"))
    for res in (bob, carol):
        await res.take(is_event("old"))
    # Purge (§8.5): items gone, subscribers told.
    ok(await ps(alice, "<purge node='old'/>", "set", owner=True))
    for res in (bob, carol):
        purged = await res.take(is_event("old", "purge"))
        assert purged.get("from") == PS
    assert item_ids(ok(await items(bob, "old"))) == []
    assert_error(await ps(bob, "<purge node='old'/>", "set", owner=True), "auth", "forbidden")
    # Delete with redirect (§8.4.1).
    assert_error(await ps(bob, "<delete node='old'/>", "set", owner=True), "auth", "forbidden")
    uri = f"xmpp:{PS}?;node=new"
    ok(await ps(alice, f"<delete node='old'><redirect uri='{uri}'/></delete>", "set", owner=True))
    for res in (bob, carol):
        deleted = await res.take(is_event("old", "delete"))
        redirect = deleted.find(f"{q(EVENT, 'event')}/{q(EVENT, 'delete')}/{q(EVENT, 'redirect')}")
        assert redirect is not None and redirect.get("uri") == uri
    assert_error(await items(bob, "old"), "cancel", "item-not-found")
    assert_error(
        await ps(alice, "<delete node='old'/>", "set", owner=True), "cancel", "item-not-found"
    )


# ---- publish, notify, retract, items (§7, §6.5) ----------------------------------------------
async def test_publish_notifies_every_subscriber(server: Server, resources: list[Resource]) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    bob2 = await login(server, resources, "bob", "second")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "feed"))
    sub = ok(await subscribe(bob, "feed", BOB))  # bare JID: every resource of bob
    element = sub.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'subscription')}")
    assert element is not None
    assert (element.get("jid"), element.get("subscription")) == (BOB, "subscribed")
    assert element.get("subid")
    ok(await subscribe(carol, "feed"))  # full JID: that resource only
    # With an ItemID.
    result = ok(await publish(alice, "feed", entry("first"), "one"))
    published = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'publish')}/{q(PUBSUB, 'item')}")
    assert published is not None and published.get("id") == "one"
    for res, to in ((bob, BOB), (bob2, BOB), (carol, carol.jid)):
        message = await res.take(is_event("feed"))
        assert message.get("from") == PS
        assert message.get("to") == to
        assert message.get("type") == "headline"
        [item] = event_items(message)
        assert item.get("id") == "one"
        assert item.find(f"{q(ENTRY, 'entry')}").text == "first"  # type: ignore[union-attr]
    await alice.assert_none(is_event("feed"))  # not subscribed
    # Without: an ItemID is made up (§7.1.2).
    result = ok(await publish(alice, "feed", entry("second")))
    published = result.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'publish')}/{q(PUBSUB, 'item')}")
    assert published is not None and published.get("id")
    for res in (bob, bob2, carol):
        message = await res.take(is_event("feed"))
        assert event_items(message)[0].get("id") == published.get("id")
    # Retract with notify (§7.2.2.1).
    ok(await ps(alice, "<retract node='feed' notify='true'><item id='one'/></retract>", "set"))
    for res in (bob, carol):
        message = await res.take(is_event("feed"))
        [retracted] = event_items(message)
        assert retracted.tag == q(EVENT, "retract") and retracted.get("id") == "one"
    assert item_ids(ok(await items(bob, "feed"))) == [published.get("id")]
    retract_missing = await ps(alice, "<retract node='feed'><item id='one'/></retract>", "set")
    assert_error(retract_missing, "cancel", "item-not-found")
    not_publisher = await ps(
        bob, f"<retract node='feed'><item id='{published.get('id')}'/></retract>", "set"
    )
    assert_error(not_publisher, "auth", "forbidden")
    # Unsubscribe (§6.2): no more notifications.
    ok(await ps(carol, f"<unsubscribe node='feed' jid='{carol.jid}'/>", "set"))
    again = await ps(carol, f"<unsubscribe node='feed' jid='{carol.jid}'/>", "set")
    assert_error(again, "cancel", "unexpected-request", "not-subscribed")
    ok(await publish(alice, "feed", entry("third"), "three"))
    await bob.take(is_event("feed"))
    await carol.assert_none(is_event("feed"))


async def test_notification_type_and_last_item_on_subscribe(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    ok(await create(alice, "chat", notification_type="normal"))
    ok(await publish(alice, "chat", entry("before"), "b"))
    ok(await subscribe(bob, "chat"))
    last = await bob.take(is_event("chat"))  # §6.1.7
    assert last.find(q(DELAY, "delay")) is not None
    assert last.get("type") == "normal"
    assert event_items(last)[0].get("id") == "b"
    ok(await publish(alice, "chat", entry("after"), "a"))
    message = await bob.take(is_event("chat"))
    assert message.get("type") == "normal"
    assert message.find(q(DELAY, "delay")) is None


async def test_items_retrieval(server: Server, resources: list[Resource]) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    ok(await create(alice, "log"))
    for n in range(5):
        ok(await publish(alice, "log", entry(str(n)), f"i{n}"))
    assert item_ids(ok(await items(bob, "log"))) == [f"i{n}" for n in range(5)]
    assert item_ids(ok(await items(bob, "log", " max_items='2'"))) == ["i3", "i4"]
    by_id = ok(await items(bob, "log", inside="<item id='i1'/><item id='i3'/>"))
    assert item_ids(by_id) == ["i1", "i3"]
    assert_error(await items(bob, "log", inside="<item id='zz'/>"), "cancel", "item-not-found")
    assert_error(await items(bob, "log", " max_items='x'"), "modify", "bad-request")
    assert_error(await items(bob, "nope"), "cancel", "item-not-found")
    # pubsub#max_items keeps the newest (§7.1.2).
    config = f"<configure node='log'>{config_form(max_items='2')}</configure>"
    ok(await ps(alice, config, "set", owner=True))
    assert item_ids(ok(await items(bob, "log"))) == ["i3", "i4"]
