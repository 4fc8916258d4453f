"""XEP-0060 publish-subscribe service on its own domain (`[pubsub] domain`), over real
sockets: raw XML clients for exact stanzas, slixmpp's xep_0060 plugin for a real client's
view, and a restart on the same data_dir for persistence."""

from __future__ import annotations

import asyncio
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
    connect,
    disconnect,
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
    srv = await start(data_dir, max_payload_bytes=1024, max_nodes_per_user=5)
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
                 "manage-subscriptions", "modify-affiliations", "publish-options",
                 "auto-create"):  # fmt: skip
        assert f"{PUBSUB}#{name}" in features
    assert f"{PUBSUB}#collections" not in features
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
    changes = config_form(title="Changed", access_model="whitelist")
    submit = f"<configure node='configured'>{changes}</configure>"
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


# ---- access models (§4.5) --------------------------------------------------------------------
async def test_access_models_open_presence_roster_whitelist(
    server: Server, resources: list[Resource]
) -> None:
    await befriend(server, ALICE, BOB, groups=("Friends",))
    await befriend(server, ALICE, CAROL, groups=("Work",))
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "open"))
    ok(await create(alice, "presence", access_model="presence"))
    ok(await create(alice, "roster", access_model="roster", roster_groups_allowed="Friends"))
    ok(await create(alice, "white", access_model="whitelist"))
    for node in ("open", "presence", "roster", "white"):
        ok(await publish(alice, node, entry(node), "x"))
    await add_user(server, "dave")
    dave = await login(server, resources, "dave")
    # open: anyone.
    assert item_ids(ok(await items(dave, "open"))) == ["x"]
    # presence: contacts with a subscription to the owner's presence.
    assert item_ids(ok(await items(carol, "presence"))) == ["x"]
    refused = await items(dave, "presence")
    assert_error(refused, "auth", "not-authorized", "presence-subscription-required")
    assert_error(
        await subscribe(dave, "presence"),
        "auth",
        "not-authorized",
        "presence-subscription-required",
    )
    # roster: contacts in an allowed group of the owner's roster.
    assert item_ids(ok(await items(bob, "roster"))) == ["x"]
    ok(await subscribe(bob, "roster"))
    assert_error(await items(carol, "roster"), "auth", "not-authorized", "not-in-roster-group")
    assert_error(await subscribe(carol, "roster"), "auth", "not-authorized", "not-in-roster-group")
    # whitelist: owners and members only.
    assert_error(await items(bob, "white"), "cancel", "not-allowed", "closed-node")
    assert_error(await subscribe(bob, "white"), "cancel", "not-allowed", "closed-node")
    member = (
        f"<affiliations node='white'><affiliation jid='{BOB}' affiliation='member'/></affiliations>"
    )
    ok(await ps(alice, member, "set", owner=True))
    assert item_ids(ok(await items(bob, "white"))) == ["x"]
    ok(await subscribe(bob, "white"))
    ok(await publish(alice, "white", entry("y"), "y"))
    await bob.take(is_event("white"))


async def test_authorize_owner_approves_and_denies(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "club", access_model="authorize"))
    ok(await publish(alice, "club", entry("inside"), "x"))

    async def request(res: Resource) -> tuple[str, str]:
        answer = ok(await subscribe(res, "club", res.bare))
        sub = answer.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'subscription')}")
        assert sub is not None and sub.get("subscription") == "pending"  # §6.1.4
        # §8.6.1: the owner gets the authorization form.
        message = await alice.take(
            lambda e: e.tag == MESSAGE and e.find(q(DATA, "x")) is not None
            and res.bare in str(ET.tostring(e))
        )  # fmt: skip
        assert message.get("from") == PS
        values = form_values(message.find(q(DATA, "x")))
        assert values["FORM_TYPE"] == [f"{PUBSUB}#subscribe_authorization"]
        assert values["pubsub#node"] == ["club"]
        assert values["pubsub#subscriber_jid"] == [res.bare]
        return values["pubsub#subid"][0], res.bare

    bob_subid, _ = await request(bob)
    assert_error(await items(bob, "club"), "auth", "not-authorized", "not-subscribed")
    again = await subscribe(bob, "club", BOB)
    assert_error(again, "auth", "not-authorized", "pending-subscription")  # §6.1.3.7
    carol_subid, _ = await request(carol)

    def answer(jid: str, subid: str, allow: str) -> str:
        x = form(
            f"{PUBSUB}#subscribe_authorization",
            subid=subid, node="club", subscriber_jid=jid, allow=allow,
        )  # fmt: skip
        return f"<message to='{PS}' id='{subid}'>{x}</message>"

    # §8.6.2: approve bob, deny carol; each is told its subscription's state.
    alice.send(answer(BOB, bob_subid, "true"))
    told = await bob.take(lambda e: e.tag == MESSAGE and e.find(q(EVENT, "event")) is not None)
    sub = told.find(f"{q(EVENT, 'event')}/{q(EVENT, 'subscription')}")
    assert sub is not None
    assert (sub.get("node"), sub.get("jid"), sub.get("subscription")) == ("club", BOB, "subscribed")
    assert item_ids(ok(await items(bob, "club"))) == ["x"]
    alice.send(answer(CAROL, carol_subid, "false"))
    told = await carol.take(lambda e: e.tag == MESSAGE and e.find(q(EVENT, "event")) is not None)
    sub = told.find(f"{q(EVENT, 'event')}/{q(EVENT, 'subscription')}")
    assert sub is not None and sub.get("subscription") == "none"
    assert_error(await items(carol, "club"), "auth", "not-authorized", "not-subscribed")
    # Only an owner decides: bob's answer for carol bounces.
    bob.send(answer(CAROL, carol_subid, "true"))
    bounced = await bob.take(lambda e: e.tag == MESSAGE and e.get("type") == "error")
    assert error_condition(bounced) == ("auth", "forbidden")
    ok(await publish(alice, "club", entry("news"), "n"))
    await bob.take(is_event("club"))
    await carol.assert_none(is_event("club"))


# ---- subscription options (§6.3, §6.4) and presence-based delivery -----------------------------
OPTIONS_FORM = f"{PUBSUB}#subscribe_options"
SHOW = "pubsub#show-values"


async def test_subscription_options_and_presence_based_delivery(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "status", presence_based_delivery="true"))
    default = ok(await ps(bob, "<default node='status'/>"))  # §6.4
    values = form_values(
        default.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'default')}/{q(DATA, 'x')}")
    )
    assert values["pubsub#deliver"] == ["true"]
    assert values["FORM_TYPE"] == [OPTIONS_FORM]
    # Subscribe with options (§6.3.7): only when bob is online or chatty.
    wanted = form(OPTIONS_FORM, **{SHOW: ["online", "chat"]})
    options = f"<options>{wanted}</options>"
    ok(await subscribe(bob, "status", BOB, options))
    ok(await subscribe(carol, "status", CAROL))
    got = ok(await ps(bob, f"<options node='status' jid='{BOB}'/>"))  # §6.3.2
    values = form_values(got.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'options')}/{q(DATA, 'x')}"))
    assert values["pubsub#show-values"] == ["chat", "online"]
    ok(await publish(alice, "status", entry("1"), "1"))
    await bob.take(is_event("status"))
    await carol.take(is_event("status"))
    # bob goes away: not notified (show-values); carol offline: not notified.
    await bob.available(extra="<show>away</show>")
    await asyncio.sleep(0.05)
    await carol.close()
    resources.remove(carol)
    await asyncio.sleep(0.2)
    ok(await publish(alice, "status", entry("2"), "2"))
    await bob.assert_none(is_event("status"))
    # Options changed (§6.3.5): away is fine now; then delivery off.
    changed = form(OPTIONS_FORM, **{SHOW: ["online", "away"]})
    ok(await ps(bob, f"<options node='status' jid='{BOB}'>{changed}</options>", "set"))
    ok(await publish(alice, "status", entry("3"), "3"))
    assert event_items(await bob.take(is_event("status")))[0].get("id") == "3"
    off = form(OPTIONS_FORM, deliver="false")
    ok(await ps(bob, f"<options node='status' jid='{BOB}'>{off}</options>", "set"))
    ok(await publish(alice, "status", entry("4"), "4"))
    await bob.assert_none(is_event("status"))
    # Errors: bad options (§6.3.6), someone else's (§6.3.4.2), not subscribed (§6.3.4.4).
    bad = form(OPTIONS_FORM, **{SHOW: "asleep"})
    refused = await ps(bob, f"<options node='status' jid='{BOB}'>{bad}</options>", "set")
    assert_error(refused, "modify", "bad-request", "invalid-options")
    unknown = form(OPTIONS_FORM, **{"pubsub#digest": "true"})
    refused = await ps(bob, f"<options node='status' jid='{BOB}'>{unknown}</options>", "set")
    assert_error(refused, "modify", "bad-request", "invalid-options")
    assert_error(await ps(alice, f"<options node='status' jid='{BOB}'/>"), "auth", "forbidden")
    missing = await ps(alice, f"<options node='status' jid='{ALICE}'/>")
    assert_error(missing, "modify", "unexpected-request", "not-subscribed")
    no_jid = await ps(bob, "<options node='status'/>")
    assert_error(no_jid, "modify", "bad-request", "jid-required")


# ---- owners manage subscriptions and affiliations (§8.8, §8.9) ---------------------------------
async def test_owner_manages_subscriptions_and_affiliations(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    carol = await login(server, resources, "carol")
    ok(await create(alice, "team"))
    ok(await subscribe(bob, "team"))
    # §8.8.1: the list.
    listing = ok(await ps(alice, "<subscriptions node='team'/>", owner=True))
    subs = [(s.get("jid"), s.get("subscription")) for s in listing.iter(q(OWNER, "subscription"))]
    assert subs == [(bob.jid, "subscribed")]
    assert_error(await ps(bob, "<subscriptions node='team'/>", owner=True), "auth", "forbidden")
    # §8.8.2: subscribe carol, end bob's; both told (§8.8.4).
    change = (
        f"<subscriptions node='team'><subscription jid='{CAROL}' subscription='subscribed'/>"
        f"<subscription jid='{bob.jid}' subscription='none'/></subscriptions>"
    )
    ok(await ps(alice, change, "set", owner=True))
    told = await carol.take(lambda e: e.tag == MESSAGE and e.find(q(EVENT, "event")) is not None)
    assert (
        told.find(f"{q(EVENT, 'event')}/{q(EVENT, 'subscription')}").get("subscription")
        == "subscribed"
    )  # type: ignore[union-attr]
    told = await bob.take(lambda e: e.tag == MESSAGE and e.find(q(EVENT, "event")) is not None)
    assert (
        told.find(f"{q(EVENT, 'event')}/{q(EVENT, 'subscription')}").get("subscription") == "none"
    )  # type: ignore[union-attr]
    # Affiliations (§8.9): bob a publisher, carol an outcast.
    assert_error(await publish(bob, "team", entry("no"), "no"), "auth", "forbidden")
    affs = (
        f"<affiliations node='team'><affiliation jid='{BOB}' affiliation='publisher'/>"
        f"<affiliation jid='{CAROL}' affiliation='outcast'/></affiliations>"
    )
    ok(await ps(alice, affs, "set", owner=True))
    listing = ok(await ps(alice, "<affiliations node='team'/>", owner=True))
    got = {(a.get("jid"), a.get("affiliation")) for a in listing.iter(q(OWNER, "affiliation"))}
    assert got == {(ALICE, "owner"), (BOB, "publisher"), (CAROL, "outcast")}
    ok(await publish(bob, "team", entry("yes"), "yes"))
    assert_error(await items(carol, "team"), "auth", "forbidden")
    assert_error(await subscribe(carol, "team"), "auth", "forbidden")
    own = ok(await ps(bob, "<affiliations node='team'/>"))
    assert [(a.get("node"), a.get("affiliation")) for a in own.iter(q(PUBSUB, "affiliation"))] == [
        ("team", "publisher")
    ]
    # publish-only: publishes, cannot read.
    ok(
        await ps(
            alice,
            f"<affiliations node='team'><affiliation jid='{BOB}' affiliation='publish-only'/>"
            "</affiliations>",
            "set",
            owner=True,
        )
    )
    ok(await publish(bob, "team", entry("blind"), "blind"))
    assert_error(await items(bob, "team"), "auth", "forbidden")
    # Bad input: a JID that is none, an affiliation that is none, the last owner leaving.
    bad_jid = (
        "<affiliations node='team'><affiliation jid='@@bad' affiliation='member'/></affiliations>"
    )
    assert_error(await ps(alice, bad_jid, "set", owner=True), "modify", "jid-malformed")
    bad_aff = (
        f"<affiliations node='team'><affiliation jid='{BOB}' affiliation='king'/></affiliations>"
    )
    assert_error(await ps(alice, bad_aff, "set", owner=True), "modify", "not-acceptable")
    orphan = (
        f"<affiliations node='team'><affiliation jid='{ALICE}' affiliation='none'/></affiliations>"
    )
    assert_error(await ps(alice, orphan, "set", owner=True), "modify", "not-acceptable")
    # Own subscriptions (§5.6).
    own = ok(await ps(carol, "<subscriptions/>"))
    assert list(own.iter(q(PUBSUB, "subscription"))) == []  # the outcast's went


# ---- persistence --------------------------------------------------------------------------------
async def test_nodes_items_subscriptions_and_affiliations_survive_a_restart(
    data_dir: Path,
) -> None:
    server = await start(data_dir)
    opened: list[Resource] = []
    try:
        for name in ("alice", "bob", "carol"):
            await add_user(server, name)
        alice = await login(server, opened, "alice")
        bob = await login(server, opened, "bob")
        ok(
            await create(
                alice, "kept", title="Kept", access_model="whitelist", presence_based_delivery="1"
            )
        )
        members = (
            f"<affiliations node='kept'><affiliation jid='{BOB}' affiliation='member'/>"
            f"<affiliation jid='{CAROL}' affiliation='publisher'/></affiliations>"
        )
        ok(await ps(alice, members, "set", owner=True))
        wanted = form(OPTIONS_FORM, **{SHOW: ["chat"]})
        ok(await subscribe(bob, "kept", BOB, f"<options>{wanted}</options>"))
        ok(await publish(alice, "kept", entry("one"), "one"))
        ok(await publish(alice, "kept", entry("two"), "two"))
    finally:
        for res in opened:
            await res.close()
        await server.stop()
    server = await start(data_dir)
    opened = []
    try:
        alice = await login(server, opened, "alice")
        bob = await login(server, opened, "bob")
        carol = await login(server, opened, "carol")
        assert item_ids(ok(await items(bob, "kept"))) == ["one", "two"]
        got = ok(await ps(alice, "<configure node='kept'/>", owner=True))
        x = got.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'configure')}/{q(DATA, 'x')}")
        assert form_values(x)["pubsub#title"] == ["Kept"]
        listing = ok(await ps(alice, "<affiliations node='kept'/>", owner=True))
        got_affs = {
            (a.get("jid"), a.get("affiliation")) for a in listing.iter(q(OWNER, "affiliation"))
        }
        assert got_affs == {(ALICE, "owner"), (BOB, "member"), (CAROL, "publisher")}
        options = ok(await ps(bob, f"<options node='kept' jid='{BOB}'/>"))
        x = options.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'options')}/{q(DATA, 'x')}")
        assert form_values(x)[SHOW] == ["chat"]
        # The subscription still delivers (bob is online: 'online' is not in his values).
        ok(await publish(carol, "kept", entry("three"), "three"))
        await bob.assert_none(is_event("kept"))
        await bob.available(extra="<show>chat</show>")
        ok(await publish(carol, "kept", entry("four"), "four"))
        assert event_items(await bob.take(is_event("kept")))[0].get("id") == "four"
    finally:
        for res in opened:
            await res.close()
        await server.stop()


# ---- auto-create (§7.1.4, §7.1.5) ---------------------------------------------------------------
async def test_publish_to_a_missing_node_creates_it_with_the_publish_options(
    data_dir: Path,
) -> None:
    server = await start(data_dir)
    opened: list[Resource] = []
    publish_form = f"{PUBSUB}#publish-options"
    whitelist = f"<publish-options>{form(publish_form, access_model='whitelist')}</publish-options>"
    try:
        for name in ("alice", "bob"):
            await add_user(server, name)
        alice = await login(server, opened, "alice")
        bob = await login(server, opened, "bob")
        answer = ok(await publish(alice, "auto", entry("one"), "one", whitelist))
        published = answer.find(f"{q(PUBSUB, 'pubsub')}/{q(PUBSUB, 'publish')}")
        assert published is not None and published.get("node") == "auto"
        # The publisher owns it; the preconditions are its settings, the rest the defaults.
        assert {(a.get("jid"), a.get("affiliation")) for a in listing_of(
            ok(await ps(alice, "<affiliations node='auto'/>", owner=True))
        )} == {(ALICE, "owner")}  # fmt: skip
        got = ok(await ps(alice, "<configure node='auto'/>", owner=True))
        values = form_values(
            got.find(f"{q(OWNER, 'pubsub')}/{q(OWNER, 'configure')}/{q(DATA, 'x')}")
        )
        assert values["pubsub#access_model"] == ["whitelist"]
        assert values["pubsub#max_items"] == ["max"]
        assert_error(await items(bob, "auto"), "cancel", "not-allowed", "closed-node")
        # Now it exists: the same options are met, others are not (§7.1.5).
        ok(await publish(alice, "auto", entry("two"), "two", whitelist))
        opened_form = (
            f"<publish-options>{form(publish_form, access_model='open')}</publish-options>"
        )
        refused = await publish(alice, "auto", entry("three"), "three", opened_form)
        assert_error(refused, "cancel", "conflict", "precondition-not-met")
        # Without options: the defaults (open), and bob creates his own node the same way.
        ok(await publish(bob, "bobs", entry("hi"), "hi"))
        assert item_ids(ok(await items(alice, "bobs"))) == ["hi"]
        # Another's node: publishing there is still judged by its publish model.
        assert_error(await publish(bob, "auto", entry("no"), "no"), "auth", "forbidden")
    finally:
        for res in opened:
            await res.close()
        await server.stop()
    server = await start(data_dir)
    opened = []
    try:
        alice = await login(server, opened, "alice")
        assert item_ids(ok(await items(alice, "auto"))) == ["one", "two"]
    finally:
        for res in opened:
            await res.close()
        await server.stop()


def listing_of(answer: ET.Element) -> list[ET.Element]:
    return list(answer.iter(q(OWNER, "affiliation")))


# ---- bad input and limits ----------------------------------------------------------------------
async def test_bad_input_gets_the_spec_error_and_the_service_goes_on(
    server: Server, resources: list[Resource]
) -> None:
    alice = await login(server, resources, "alice")
    bob = await login(server, resources, "bob")
    ok(await create(alice, "n"))
    # Malformed forms and unknown fields (§8.1.3, §8.2.5).
    broken = f"<configure><x xmlns='{DATA}' type='bogus'/></configure>"
    assert_error(await ps(alice, f"<create node='m'/>{broken}", "set"), "modify", "bad-request")
    unknown = await create(alice, "m", **{"pubsub#colour": "red"})
    assert_error(unknown, "modify", "not-acceptable")
    bad_value = await create(alice, "m", access_model="everyone")
    assert_error(bad_value, "modify", "not-acceptable")
    bad_config = f"<configure node='n'>{config_form(max_items='lots')}</configure>"
    assert_error(await ps(alice, bad_config, "set", owner=True), "modify", "not-acceptable")
    # Collections are not offered (§8.1.3, XEP-0248).
    collection = await create(alice, "c", node_type="collection")
    assert_error(collection, "cancel", "feature-not-implemented", "unsupported")
    # A huge payload (§7.1.3.4).
    huge = entry("x" * 2000)
    assert_error(await publish(alice, "n", huge), "modify", "not-acceptable", "payload-too-big")
    # Publishing: no node and an unknown publish-option (§7.1.5: rejected, nothing is
    # auto-created), no NodeID, no item, two payloads.
    colour = f"<publish-options>{form(f'{PUBSUB}#publish-options', colour='red')}</publish-options>"
    unknown_option = await publish(alice, "nope", entry("a"), "a", colour)
    assert_error(unknown_option, "cancel", "conflict", "precondition-not-met")
    assert_error(await items(alice, "nope"), "cancel", "item-not-found")
    assert_error(await ps(alice, "<publish/>", "set"), "modify", "bad-request", "nodeid-required")
    assert_error(
        await ps(alice, "<publish node='n'/>", "set"), "modify", "bad-request", "item-required"
    )
    two = f"<publish node='n'><item>{entry('a')}{entry('b')}</item></publish>"
    assert_error(await ps(alice, two, "set"), "modify", "bad-request", "invalid-payload")
    # Publish-options as preconditions (§7.1.5).
    options = (
        f"<publish-options>{form(f'{PUBSUB}#publish-options', access_model='whitelist')}"
        "</publish-options>"
    )
    refused = await publish(alice, "n", entry("a"), "a", options)
    assert_error(refused, "cancel", "conflict", "precondition-not-met")
    same_form = form(f"{PUBSUB}#publish-options", access_model="open")
    same = f"<publish-options>{same_form}</publish-options>"
    ok(await publish(alice, "n", entry("a"), "a", same))
    # Subscribing another's JID (§6.1.3.1).
    assert_error(await subscribe(bob, "n", ALICE), "modify", "bad-request", "invalid-jid")
    # Unknown requests.
    unknown_iq = await bob.request("<query xmlns='jabber:iq:version'/>", to=PS)
    assert_error(unknown_iq, "cancel", "service-unavailable")
    # After all that the service still answers.
    assert item_ids(ok(await items(bob, "n"))) == ["a"]


async def test_limits(data_dir: Path) -> None:
    server = await start(
        data_dir, max_nodes=3, max_nodes_per_user=2, max_subscriptions_per_node=1,
        max_items_per_node=2, creators="admins",
    )  # fmt: skip
    opened: list[Resource] = []
    try:
        for name in ("alice", "bob", "carol"):
            await add_user(server, name)
        alice = await login(server, opened, "alice")
        bob = await login(server, opened, "bob")
        carol = await login(server, opened, "carol")
        # creators = "admins": nobody here is one; no auto-create either (§7.1.3.3).
        assert_error(await create(alice, "a"), "auth", "forbidden")
        assert_error(await publish(alice, "a", entry("x"), "x"), "cancel", "item-not-found")
        info = ok(await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=PS))
        assert f"{PUBSUB}#auto-create" in {
            f.get("var") for f in info.iter(q(DISCO_INFO, "feature"))
        }
    finally:
        for res in opened:
            await res.close()
        await server.stop()
    server = await start(
        data_dir, max_nodes=3, max_nodes_per_user=2, max_subscriptions_per_node=1,
        max_items_per_node=2,
    )  # fmt: skip
    opened = []
    try:
        alice = await login(server, opened, "alice")
        bob = await login(server, opened, "bob")
        carol = await login(server, opened, "carol")
        ok(await create(alice, "a1"))
        ok(await create(alice, "a2"))
        too_many = await create(alice, "a3")
        assert_error(too_many, "modify", "policy-violation", "max-nodes-exceeded")
        auto_too_many = await publish(alice, "a3", entry("x"), "x")  # auto-create: same limit
        assert_error(auto_too_many, "modify", "policy-violation", "max-nodes-exceeded")
        ok(await create(bob, "b1"))
        service_full = await create(bob, "b2")
        assert_error(service_full, "modify", "policy-violation", "max-nodes-exceeded")
        ok(await subscribe(bob, "a1"))
        full = await subscribe(carol, "a1")
        assert_error(full, "wait", "policy-violation", "too-many-subscriptions")
        for n in range(3):
            ok(await publish(alice, "a1", entry(str(n)), f"i{n}"))
        assert item_ids(ok(await items(bob, "a1"))) == ["i1", "i2"]
        beyond = f"<configure node='a1'>{config_form(max_items='3')}</configure>"
        assert_error(await ps(alice, beyond, "set", owner=True), "modify", "not-acceptable")
    finally:
        for res in opened:
            await res.close()
        await server.stop()


# ---- a real client ------------------------------------------------------------------------------
async def test_slixmpp_xep_0060_client(server: Server) -> None:
    alice = await connect(server, ALICE)
    bob = await connect(server, BOB)
    try:
        for client in (alice, bob):
            client.register_plugin("xep_0060")
        plugin_a = alice.plugin["xep_0060"]
        plugin_b = bob.plugin["xep_0060"]
        await plugin_a.create_node(PS, "sli")
        await plugin_b.subscribe(PS, "sli")
        got: asyncio.Queue[object] = asyncio.Queue()
        bob.add_event_handler("pubsub_publish", got.put_nowait)
        from slixmpp.xmlstream import ET as SET
        from slixmpp.xmlstream import ElementBase

        payload = SET.fromstring(f"<entry xmlns='{ENTRY}'>from slixmpp</entry>")
        result = await plugin_a.publish(PS, "sli", id="s1", payload=payload)
        assert result["pubsub"]["publish"]["item"]["id"] == "s1"
        message = await asyncio.wait_for(got.get(), 5)
        item = message["pubsub_event"]["items"]["item"]  # type: ignore[index]
        assert item["id"] == "s1"
        assert isinstance(item, ElementBase)
        fetched = await plugin_b.get_items(PS, "sli")
        assert [i["id"] for i in fetched["pubsub"]["items"]] == ["s1"]
        nodes = await bob.plugin["xep_0030"].get_items(jid=PS)
        assert "sli" in [n for _jid, n, _name in nodes["disco_items"]["items"]]
    finally:
        await disconnect(alice, bob)


async def test_server_admins_manage_every_node(data_dir: Path) -> None:
    """`[server] admins` act as owners of the service's nodes (§8), so a node whose owner
    account was deleted can still be configured, purged and deleted; other users still
    get forbidden."""
    srv = await start_server(data_dir, pubsub={"domain": PS}, server={"admins": [CAROL]})
    opened: list[Resource] = []
    try:
        for name in ("alice", "bob", "carol"):
            await add_user(srv, name)
        alice = await login(srv, opened, "alice")
        bob = await login(srv, opened, "bob")
        carol = await login(srv, opened, "carol")
        ok(await create(alice, "orphan"))
        ok(await publish(alice, "orphan", entry("a"), "a"))
        opened.remove(alice)
        await alice.close()
        await srv.storage.accounts.delete("alice", DOMAIN)
        await srv.events.fire_all("account/deleted", JID.parse(ALICE))
        assert_error(
            await ps(bob, "<configure node='orphan'/>", "get", owner=True), "auth", "forbidden"
        )
        assert_error(
            await ps(bob, "<purge node='orphan'/>", "set", owner=True), "auth", "forbidden"
        )
        ok(await ps(carol, "<configure node='orphan'/>", "get", owner=True))
        ok(await ps(carol, "<purge node='orphan'/>", "set", owner=True))
        assert item_ids(ok(await items(bob, "orphan"))) == []
        ok(await ps(carol, "<delete node='orphan'/>", "set", owner=True))
        assert_error(await items(bob, "orphan"), "cancel", "item-not-found")
    finally:
        for res in opened:
            await res.close()
        await srv.stop()
