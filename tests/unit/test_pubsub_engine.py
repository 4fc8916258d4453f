"""The XEP-0060 engine (services/pubsub) driven directly over a SQLite store in a temporary
directory: no server, no sockets. Node life cycle (§8), publish and retract (§7), items
(§6.5), subscriptions (§6.1, §6.2), access models (§4.5), publish-options (§7.1.5),
max_items trimming and the typed errors with their RFC 6120 / §14 conditions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.services.pubsub import access, errors, requests
from dovecote.services.pubsub import node as node_module
from dovecote.services.pubsub.access import Asker
from dovecote.services.pubsub.engine import PubSubService, last_item_message
from dovecote.services.pubsub.node import NodePolicy, publish_options
from dovecote.services.pubsub.ns import PUBSUB, PUBSUB_ERRORS, PUBSUB_EVENT
from dovecote.storage import SQLStorage, open_storage
from dovecote.storage.pubsub import PubSubStore
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_element

D = "example.org"
OWNER = f"alice@{D}"
ME = Asker(OWNER, is_owner=True)
FRIEND = Asker(f"bob@{D}", presence_subscription=True, roster_groups=("Friends",))
STRANGER = Asker(f"eve@{D}")
PEP = NodePolicy(
    defaults={"pubsub#access_model": "presence"},
    access_models=("open", "presence", "roster", "whitelist"),
    item_cap=5,
    max_nodes=3,
)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLStorage]:
    storage = await open_storage(f"sqlite+aiosqlite:///{tmp_path}/pubsub.sqlite3")
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def store(storage: SQLStorage) -> PubSubStore:
    return storage.pubsub


def pep(store: PubSubStore) -> PubSubService:
    """An account's PEP service: alice owns every node."""
    return PubSubService(store, "alice", D, PEP, owner=OWNER)


def payload(text: str = "v") -> Element:
    return parse_element(f"<x xmlns='urn:test'>{text}</x>")


def config(**values: str) -> dict[str, list[str]]:
    """Submitted node_config values: config(max_items="3")."""
    return {f"pubsub#{var}": [value] for var, value in values.items()}


# ---- node life cycle (§8) ------------------------------------------------------------------------
async def test_create_configure_delete_and_reload(store: PubSubStore) -> None:
    service = pep(store)
    node = await service.create_node("n", ME, config(max_items="3"))
    assert node.config["pubsub#access_model"] == "presence"  # the policy's default
    assert node.config["pubsub#max_items"] == "3"
    with pytest.raises(errors.NodeExists):
        await service.create_node("n", ME)
    with pytest.raises(errors.InstantNodesUnsupported):
        await service.create_node(None, ME)  # §8.1.2.3
    with pytest.raises(errors.InvalidConfiguration):
        await service.create_node("m", ME, {"pubsub#access_model": ["authorize"]})
    with pytest.raises(errors.InvalidConfiguration):
        await service.create_node("m", ME, {"pubsub#unknown": ["1"]})
    with pytest.raises(errors.Forbidden):
        await service.create_node("m", FRIEND)

    outcome = await service.configure_node("n", ME, {"pubsub#title": ["Title"]})
    assert outcome.node.config["pubsub#title"] == "Title"
    assert outcome.event is None  # notify_config is off by default
    assert (await service.configure_node("n", ME, None)).node.config["pubsub#title"] == "Title"
    with pytest.raises(errors.NodeNotFound):
        await service.configure_node("missing", ME, {})

    # Another object over the same storage sees what was stored.
    reloaded = pep(store)
    await reloaded.load()
    assert reloaded.node("n").config["pubsub#title"] == "Title"

    outcome = await service.delete_node("n", ME)
    assert outcome.event is not None and outcome.event.tag == "delete"
    assert await store.get_node("alice", D, "n") is None
    with pytest.raises(errors.NodeNotFound):
        service.node("n")


async def test_node_limit(store: PubSubStore) -> None:
    service = pep(store)
    for n in range(3):
        await service.create_node(f"n{n}", ME)
    with pytest.raises(errors.MaxNodesExceeded) as refused:
        await service.create_node("n3", ME)
    with pytest.raises(errors.MaxNodesExceeded):
        await service.publish("n3", ME, "1", payload())  # auto-create counts too
    error = errors.to_stanza_error(refused.value)
    assert error.condition == "policy-violation"
    assert error.app_condition is not None
    assert (error.app_condition.tag, error.app_condition.ns) == (
        "max-nodes-exceeded",
        PUBSUB_ERRORS,
    )
    assert len(await store.list_nodes("alice", D)) == 3


# ---- publish and retract (§7) ------------------------------------------------------------------
async def test_publish_auto_creates_generates_ids_and_notifies(store: PubSubStore) -> None:
    service = pep(store)
    outcome = await service.publish("mood", ME, None, payload("happy"), publisher=OWNER + "/r")
    assert outcome.created and outcome.item is not None
    assert len(outcome.item.id) == 32  # generated (§7.1.4)
    assert outcome.event is not None
    assert serialize(outcome.event) == (
        f"<items xmlns='{PUBSUB_EVENT}' node='mood'><item id='{outcome.item.id}'>"
        "<x xmlns='urn:test'>happy</x></item></items>"
    )
    stored = await store.get_items("alice", D, "mood")
    assert [(i.id, i.payload, i.publisher) for i in stored] == [
        (outcome.item.id, "<x xmlns='urn:test'>happy</x>", OWNER + "/r")
    ]
    again = await service.publish("mood", ME, "fixed", payload("sad"))
    assert not again.created
    assert service.node("mood").last is not None and service.node("mood").last.id == "fixed"
    message = last_item_message(OWNER, service.node("mood"))
    assert message.find("delay", "urn:xmpp:delay") is not None
    with pytest.raises(errors.PayloadRequired):
        await service.publish("mood", ME, "3", None)  # §7.1.3.6
    with pytest.raises(errors.Forbidden):
        await service.publish("mood", FRIEND, "4", payload())  # §7.1.3.1


async def test_max_items_trimming(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("feed", ME, {"pubsub#max_items": ["3"]})
    for n in range(5):
        await service.publish("feed", ME, f"i{n}", payload(str(n)))
    assert [i.id for i in await store.get_items("alice", D, "feed")] == ["i2", "i3", "i4"]
    # Republishing an id makes it the newest without growing the node.
    await service.publish("feed", ME, "i2", payload("again"))
    assert [i.id for i in await store.get_items("alice", D, "feed")] == ["i3", "i4", "i2"]
    # A lower max_items drops the oldest at once.
    await service.configure_node("feed", ME, {"pubsub#max_items": ["1"]})
    assert [i.id for i in await store.get_items("alice", D, "feed")] == ["i2"]
    # 'max' is the policy's cap (5), a number beyond it is refused.
    await service.configure_node("feed", ME, {"pubsub#max_items": ["max"]})
    for n in range(10):
        await service.publish("feed", ME, f"j{n}", payload())
    assert len(await store.get_items("alice", D, "feed")) == 5
    with pytest.raises(errors.InvalidConfiguration):
        await service.configure_node("feed", ME, {"pubsub#max_items": ["6"]})


async def test_publish_options_are_preconditions(store: PubSubStore) -> None:
    service = pep(store)
    whitelist = {"pubsub#access_model": ["whitelist"], "pubsub#persist_items": ["1"]}
    outcome = await service.publish("bookmarks", ME, "room", payload(), options=whitelist)
    assert outcome.created
    assert outcome.node.config["pubsub#access_model"] == "whitelist"
    # Same settings (in another spelling of the boolean): accepted.
    await service.publish("bookmarks", ME, "room2", payload(), options=whitelist)
    with pytest.raises(errors.PreconditionNotMet) as differs:
        await service.publish(
            "bookmarks", ME, "x", payload(), options={"pubsub#access_model": ["open"]}
        )
    assert "pubsub#access_model" in str(differs.value)
    error = errors.to_stanza_error(differs.value)
    assert error.condition == "conflict" and error.app_condition is not None
    assert error.app_condition.tag == "precondition-not-met"
    with pytest.raises(errors.PreconditionNotMet):  # a value the service cannot take
        await service.publish("new", ME, "x", payload(), options={"pubsub#max_items": ["99"]})
    assert "new" not in service.nodes
    # The form is read from <publish-options/>: its FORM_TYPE must be publish-options.
    element = parse_element(
        f"<publish-options xmlns='{PUBSUB}'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>urn:other</value></field></x></publish-options>"
    )
    with pytest.raises(errors.BadRequest):
        publish_options(element)


async def test_retract_and_purge(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("feed", ME, {"pubsub#max_items": ["5"]})
    for n in range(3):
        await service.publish("feed", ME, f"i{n}", payload(str(n)))
    outcome = await service.retract("feed", ME, "i2")
    assert outcome.event is not None
    assert serialize(outcome.event) == (
        f"<items xmlns='{PUBSUB_EVENT}' node='feed'><retract id='i2'/></items>"
    )
    node = service.node("feed")
    assert node.last is not None and node.last.id == "i1"  # the newest left
    assert (await service.retract("feed", ME, "i1", notify=False)).event is None
    with pytest.raises(errors.ItemNotFound):
        await service.retract("feed", ME, "i2")
    outcome = await service.purge_node("feed", ME)
    assert outcome.event is not None and outcome.event.tag == "purge"
    assert node.last is None and await store.get_items("alice", D, "feed") == []
    with pytest.raises(errors.Forbidden):
        await service.purge_node("feed", FRIEND)


async def test_no_notifications_when_switched_off(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node(
        "quiet", ME, {"pubsub#deliver_notifications": ["0"], "pubsub#access_model": ["open"]}
    )
    assert (await service.publish("quiet", ME, "1", payload())).event is None
    outcome = await service.subscribe("quiet", STRANGER, STRANGER.jid)
    assert outcome.event is None  # no last item either (§6.1.7)


# ---- items (§6.5) ---------------------------------------------------------------------------
async def test_get_items(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("feed", ME, {"pubsub#max_items": ["5"]})
    for n in range(4):
        await service.publish("feed", ME, f"i{n}", payload(str(n)))
    everything = await service.get_items("feed", FRIEND)
    assert [item.id for item, _ in everything] == ["i0", "i1", "i2", "i3"]
    assert [serialize(p) for _, p in everything if p is not None][:1] == [
        "<x xmlns='urn:test'>0</x>"
    ]
    newest = await service.get_items("feed", FRIEND, max_items=2)
    assert [item.id for item, _ in newest] == ["i2", "i3"]
    chosen = await service.get_items("feed", FRIEND, item_ids=["i3", "i1", "nope"])
    assert [item.id for item, _ in chosen] == ["i1", "i3"]
    with pytest.raises(errors.ItemNotFound):
        await service.get_items("feed", FRIEND, item_ids=["nope"])
    with pytest.raises(errors.PresenceSubscriptionRequired):
        await service.get_items("feed", STRANGER)
    with pytest.raises(errors.NodeNotFound):
        await service.get_items("missing", ME)
    assert await service.item_ids("feed", ME) == ["i0", "i1", "i2", "i3"]


async def test_transient_node_keeps_its_last_item(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("now", ME, {"pubsub#persist_items": ["0"]})
    await service.publish("now", ME, "a", payload("a"))
    await service.publish("now", ME, "b", payload("b"))
    assert await store.get_items("alice", D, "now") == []
    assert [item.id for item, _ in await service.get_items("now", ME)] == ["b"]
    with pytest.raises(errors.ItemNotFound):
        await service.retract("now", ME, "a")
    await service.retract("now", ME, "b")
    assert await service.get_items("now", ME) == []


# ---- access models (§4.5) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "asker", "refusal"),
    [
        ("open", STRANGER, None),
        ("presence", FRIEND, None),
        ("presence", STRANGER, errors.PresenceSubscriptionRequired),
        ("roster", FRIEND, None),
        ("roster", Asker("carol@x", presence_subscription=True), errors.NotInRosterGroup),
        ("whitelist", FRIEND, errors.ClosedNode),
        ("whitelist", ME, None),
        ("authorize", FRIEND, errors.NotSubscribedToRetrieve),
    ],
)
def test_access_models(model: str, asker: Asker, refusal: type[errors.PubSubError] | None) -> None:
    found = access.denial(model, ["Friends"], asker)
    assert type(found) is refusal if refusal else found is None


def test_affiliations_override_the_access_model() -> None:
    assert access.allows("whitelist", [], STRANGER, affiliation="member")
    assert access.allows("presence", [], STRANGER, affiliation="publisher")
    assert isinstance(access.denial("open", [], FRIEND, affiliation="outcast"), errors.Forbidden)
    assert access.allows("authorize", [], STRANGER, subscription="subscribed")
    # §6.1.4: an 'authorize' node takes subscription requests as pending; asking again while
    # one waits is §6.1.3.7.
    assert access.subscription_state("authorize", [], STRANGER) == "pending"
    with pytest.raises(errors.PendingSubscription):
        access.subscription_state("authorize", [], STRANGER, subscription="pending")
    assert access.subscription_state("open", [], STRANGER) == "subscribed"
    with pytest.raises(errors.ClosedNode):
        access.subscription_state("whitelist", [], STRANGER)


def test_errors_carry_their_conditions() -> None:
    cases = [
        (errors.NodeNotFound(), "item-not-found", None),
        (errors.NodeExists(), "conflict", None),
        (errors.PresenceSubscriptionRequired(), "not-authorized", "presence-subscription-required"),
        (errors.NotInRosterGroup(), "not-authorized", "not-in-roster-group"),
        (errors.ClosedNode(), "not-allowed", "closed-node"),
        (errors.NotSubscribed(), "unexpected-request", "not-subscribed"),
        (errors.InvalidSubId(), "not-acceptable", "invalid-subid"),
        (errors.InstantNodesUnsupported(), "not-acceptable", "nodeid-required"),
    ]
    for error, condition, app in cases:
        stanza_error = errors.to_stanza_error(error)
        assert stanza_error.condition == condition
        found = stanza_error.app_condition
        assert (found.tag if found is not None else None) == app
    unsupported = errors.to_stanza_error(errors.Unsupported(feature="subscription-options"))
    assert unsupported.app_condition is not None
    assert unsupported.app_condition.attrs == {"feature": "subscription-options"}


async def test_whitelist_members_and_outcasts(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("private", ME, {"pubsub#access_model": ["whitelist"]})
    await service.publish("private", ME, "1", payload())
    with pytest.raises(errors.ClosedNode):
        await service.get_items("private", FRIEND)
    await service.set_affiliations("private", ME, [(FRIEND.jid, "member")])
    assert len(await service.get_items("private", FRIEND)) == 1
    assert service.node_affiliations("private", ME) == [(OWNER, "owner"), (FRIEND.jid, "member")]
    assert service.affiliations_of(FRIEND.jid) == [("private", "member")]
    await service.set_affiliations("private", ME, [(FRIEND.jid, "outcast")])
    with pytest.raises(errors.Forbidden):
        await service.get_items("private", FRIEND)
    # PEP's one owner is implicit (§8.9.2.4).
    with pytest.raises(errors.NotAcceptable):
        await service.set_affiliations("private", ME, [(FRIEND.jid, "owner")])
    with pytest.raises(errors.NotAcceptable):
        await service.set_affiliations("private", ME, [(OWNER, "none")])
    # Stored: another object over the same storage knows them.
    reloaded = pep(store)
    await reloaded.load()
    assert reloaded.node("private").affiliations == {FRIEND.jid: "outcast"}
    assert [node.name for node in reloaded.visible_nodes(FRIEND)] == []
    assert [node.name for node in reloaded.visible_nodes(ME)] == ["private"]


# ---- subscriptions (§6.1, §6.2) ------------------------------------------------------------------
async def test_subscribe_and_unsubscribe(store: PubSubStore) -> None:
    service = pep(store)
    await service.create_node("blog", ME, {"pubsub#access_model": ["open"]})
    await service.publish("blog", ME, "first", payload())
    full = STRANGER.jid + "/laptop"
    outcome = await service.subscribe("blog", STRANGER, full)
    subscription = outcome.subscription
    assert subscription is not None and subscription.state == "subscribed"
    assert outcome.event is not None and outcome.event.tag == "items"  # last item, §6.1.7
    again = await service.subscribe("blog", STRANGER, full)
    assert again.subscription is not None and again.subscription.subid == subscription.subid
    assert service.subscriptions_of(STRANGER.jid) == [subscription]
    assert service.node("blog").subscribers() == [full]
    with pytest.raises(errors.InvalidJid):
        await service.subscribe("blog", STRANGER, FRIEND.jid)  # §6.1.3.1
    with pytest.raises(errors.InvalidSubId):
        await service.unsubscribe("blog", STRANGER, full, "wrong")
    await service.unsubscribe("blog", STRANGER, full, subscription.subid)
    with pytest.raises(errors.NotSubscribed):
        await service.unsubscribe("blog", STRANGER, full)
    assert await store.get_subscriptions("alice", D) == []
    await service.create_node("mood", ME)  # presence access
    with pytest.raises(errors.PresenceSubscriptionRequired):
        await service.subscribe("mood", STRANGER, STRANGER.jid)


async def test_authorize_subscriptions_wait_for_approval(store: PubSubStore) -> None:
    """A service offering 'authorize' (§4.5): a subscription request is pending (§6.1.4),
    a second one is refused (§6.1.3.7), items wait for the approval (§6.5.9.3)."""
    service = PubSubService(store, "", f"pubsub.{D}")
    await service.create_node("news", STRANGER, {"pubsub#access_model": ["authorize"]})
    # Without an implicit owner, the creator is the node's owner (§8.1.1).
    assert service.affiliations_of(STRANGER.jid) == [("news", "owner")]
    await service.publish("news", STRANGER, "1", payload())
    outcome = await service.subscribe("news", FRIEND, FRIEND.jid)
    assert outcome.subscription is not None and outcome.subscription.state == "pending"
    assert outcome.event is None
    with pytest.raises(errors.PendingSubscription):
        await service.subscribe("news", FRIEND, FRIEND.jid)
    with pytest.raises(errors.NotSubscribedToRetrieve):
        await service.get_items("news", FRIEND)
    assert service.node("news").subscribers() == []
    with pytest.raises(errors.Forbidden):
        await service.publish("news", FRIEND, "2", payload())
    with pytest.raises(errors.Forbidden):
        await service.delete_node("news", FRIEND)


# ---- reading requests ----------------------------------------------------------------------------
def test_request_parsing() -> None:
    def publish(items: str) -> Element:
        return parse_element(f"<publish xmlns='{PUBSUB}' node='n'>{items}</publish>")

    assert requests.publish_item(publish("<item/>")) == (None, None)
    item_id, found = requests.publish_item(publish("<item id='a'><x xmlns='urn:t'/></item>"))
    assert item_id == "a" and found is not None and found.tag == "x"
    with pytest.raises(errors.ItemRequired):
        requests.publish_item(publish(""))
    with pytest.raises(errors.InvalidPayload):
        requests.publish_item(publish("<item/><item/>"))
    with pytest.raises(errors.InvalidPayload):
        requests.publish_item(publish("<item><a xmlns='urn:t'/><b xmlns='urn:t'/></item>"))
    with pytest.raises(errors.NameTooLong):
        requests.publish_item(publish(f"<item id='{'x' * 1024}'/>"))
    with pytest.raises(errors.NodeIdRequired):
        requests.node_name(parse_element(f"<items xmlns='{PUBSUB}'/>"))
    with pytest.raises(errors.BadRequest):
        requests.items_request(parse_element(f"<items xmlns='{PUBSUB}' node='n' max_items='0'/>"))
    action = requests.action_of(
        parse_element(f"<pubsub xmlns='{PUBSUB}'><publish-options/><publish node='n'/></pubsub>")
    )
    assert action.tag == "publish"


# ---- a pubsub service on its own domain (owners are affiliations) --------------------------------
SERVICE = NodePolicy(
    item_cap=10,
    max_nodes=4,
    max_nodes_per_owner=2,
    max_subscriptions=2,
    publish_models=("open", "publishers", "subscribers"),
    service_options=True,
    instant_nodes=True,
)
ALICE = Asker(f"alice@{D}")
BOB = Asker(f"bob@{D}")
CAROL = Asker(f"carol@{D}")


def domain_service(store: PubSubStore) -> PubSubService:
    return PubSubService(store, "", "pubsub.example.org", SERVICE)


async def test_service_nodes_instant_and_limits(store: PubSubStore) -> None:
    service = domain_service(store)
    instant = await service.create_node(None, ALICE)  # §8.1.2
    assert instant.name and instant.affiliations == {ALICE.jid: "owner"}
    await service.create_node("two", ALICE)
    with pytest.raises(errors.MaxNodesExceeded):
        await service.create_node("three", ALICE)  # two per owner
    await service.create_node("b1", BOB)
    await service.create_node("b2", BOB)
    with pytest.raises(errors.MaxNodesExceeded) as info:
        await service.create_node("c1", CAROL)  # four per service
    assert to_stanza_condition(info.value) == ("policy-violation", "modify")
    # presence_based_delivery is a service option; PEP has none.
    assert instant.config["pubsub#presence_based_delivery"] == "false"
    with pytest.raises(errors.InvalidConfiguration):
        await pep(store).create_node("x", ME, {"pubsub#presence_based_delivery": ["1"]})


def to_stanza_condition(error: errors.PubSubError) -> tuple[str, str]:
    stanza_error = errors.to_stanza_error(error)
    return stanza_error.condition, stanza_error.type


async def test_subscription_options_limits_and_reload(store: PubSubStore) -> None:
    service = domain_service(store)
    await service.create_node("n", ALICE)
    with pytest.raises(errors.InvalidOptions):
        await service.subscribe("n", BOB, BOB.jid, {"pubsub#show-values": ["asleep"]})
    outcome = await service.subscribe("n", BOB, BOB.jid, {"pubsub#show-values": ["chat"]})
    assert outcome.subscription is not None
    assert outcome.subscription.options == {"pubsub#show-values": ["chat"]}
    await service.subscribe("n", CAROL, CAROL.jid + "/phone")
    with pytest.raises(errors.TooManySubscriptions) as info:
        await service.subscribe("n", ALICE, ALICE.jid)
    assert to_stanza_condition(info.value) == ("policy-violation", "wait")
    # Subscribing again keeps the options; set_options replaces them (§6.3.5).
    again = await service.subscribe("n", BOB, BOB.jid)
    assert again.subscription is not None and again.subscription.options["pubsub#show-values"]
    await service.set_options("n", BOB, BOB.jid, None, {"pubsub#deliver": ["0"]})
    with pytest.raises(errors.Forbidden):
        await service.get_options("n", CAROL, BOB.jid)
    with pytest.raises(errors.JidRequired):
        await service.get_options("n", CAROL, None)
    with pytest.raises(errors.InvalidSubId):
        await service.get_options("n", BOB, BOB.jid, "wrong")
    reloaded = domain_service(store)
    kept = await reloaded.get_options("n", BOB, BOB.jid)
    assert kept.options == {"pubsub#deliver": ["false"]}  # the defaults are not stored
    assert not node_module.delivers(kept.options)
    assert node_module.delivers({"pubsub#show-values": ["chat"]}, "chat")
    assert not node_module.delivers({"pubsub#show-values": ["chat"]}, "away")


async def test_authorize_and_owner_managed_subscriptions(store: PubSubStore) -> None:
    service = domain_service(store)
    await service.create_node("club", ALICE, {"pubsub#access_model": ["authorize"]})
    outcome = await service.subscribe("club", BOB, BOB.jid)
    assert outcome.subscription is not None and outcome.subscription.state == "pending"
    with pytest.raises(errors.PendingSubscription):
        await service.subscribe("club", BOB, BOB.jid)
    with pytest.raises(errors.Forbidden):
        await service.authorize("club", CAROL, BOB.jid, True)
    approved = await service.authorize("club", ALICE, BOB.jid, True)
    assert approved.state == "subscribed"
    with pytest.raises(errors.NotSubscribed):
        await service.authorize("club", ALICE, BOB.jid, True)  # nothing pending now
    await service.subscribe("club", CAROL, CAROL.jid)
    denied = await service.authorize("club", ALICE, CAROL.jid, False)
    assert denied.state == "none"
    assert [s.jid for s in service.node_subscriptions("club", ALICE)] == [BOB.jid]
    changed = await service.set_subscriptions(
        "club", ALICE, [(BOB.jid, "none"), (CAROL.jid, "subscribed")]
    )
    assert [(s.jid, s.state) for s in changed] == [(BOB.jid, "none"), (CAROL.jid, "subscribed")]
    with pytest.raises(errors.BadRequest):
        await service.set_subscriptions("club", ALICE, [(BOB.jid, "maybe")])
    reloaded = domain_service(store)
    await reloaded.load()
    assert [(s.jid, s.state) for s in reloaded.node_subscriptions("club", ALICE)] == [
        (CAROL.jid, "subscribed")
    ]


async def test_affiliations_publish_models_and_redirect(store: PubSubStore) -> None:
    service = domain_service(store)
    await service.create_node("n", ALICE)
    await service.subscribe("n", CAROL, CAROL.jid)
    with pytest.raises(errors.Forbidden):
        await service.publish("n", BOB, None, payload(), auto_create=False)
    await service.set_affiliations("n", ALICE, [(BOB.jid, "publish-only"), (CAROL.jid, "outcast")])
    await service.publish("n", BOB, "i", payload(), auto_create=False)
    with pytest.raises(errors.Forbidden):
        await service.get_items("n", BOB)  # publish-only reads nothing (§4.1)
    assert service.subscriptions_of(CAROL.jid) == []  # the outcast's subscription ended
    with pytest.raises(errors.NotAcceptable):
        await service.set_affiliations("n", ALICE, [(ALICE.jid, "none")])  # no owner left
    await service.set_affiliations("n", ALICE, [(BOB.jid, "owner"), (ALICE.jid, "none")])
    assert service.owners(service.node("n")) == [BOB.jid]
    # publish_model subscribers / open.
    await service.configure_node("n", BOB, {"pubsub#publish_model": ["subscribers"]})
    with pytest.raises(errors.Forbidden):
        await service.publish("n", ALICE, None, payload(), auto_create=False)
    await service.subscribe("n", ALICE, ALICE.jid)
    await service.publish("n", ALICE, None, payload(), auto_create=False)
    await service.configure_node("n", BOB, {"pubsub#publish_model": ["open"]})
    await service.publish("n", Asker(f"dave@{D}"), None, payload(), auto_create=False)
    with pytest.raises(errors.NodeNotFound):
        await service.publish("missing", BOB, None, payload(), auto_create=False)
    outcome = await service.delete_node("n", BOB, redirect="xmpp:pubsub.example.org?;node=m")
    assert outcome.event is not None
    redirect = outcome.event.find("redirect", PUBSUB_EVENT)
    assert redirect is not None and redirect.get("uri") == "xmpp:pubsub.example.org?;node=m"
