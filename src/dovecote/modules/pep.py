"""XEP-0163: Personal Eventing Protocol — every account is a pubsub service (XEP-0060) whose
owner publishes and whose contacts are notified according to their presence subscription
and the interests their clients announce with entity capabilities (XEP-0115, caps.py).

What is implemented (XEP-0163 §5, XEP-0060):

- publish (§7.1) with auto-create (XEP-0163 §3), generated item ids, publish-options as
  preconditions (§7.1.5: a node that exists with other settings answers conflict +
  <precondition-not-met/>; a new node is created with them), as bookmarks (XEP-0402),
  OMEMO, avatars (XEP-0084), nicknames (XEP-0172) and vCard4 (XEP-0292) need;
- create (§8.1, with a configuration form), configure (§8.2), default options (§8.3),
  delete (§8.4), purge (§8.5), retract (§7.2, with notification);
- retrieve items (§6.5: all, max_items, by id), by the owner and by whoever the access
  model lets in: presence (the default: contacts with subscription 'from' or 'both'),
  open, roster (roster groups) and whitelist (the owner and affiliated members);
- explicit subscriptions (§6.1, §6.2, §5.6), affiliations (§5.7, §8.9: member, outcast);
- notifications (XEP-0163 §4): `<message type='headline'>` from the owner's bare JID to
  each available resource of the owner and of each contact the access model allows whose
  verified caps contain NODE+notify (§4.2 filtered notifications, §4.3.1 addressing), one
  serialization for all of them; explicit subscribers get one more;
- the last published item (§4.3.3) of each node a resource is interested in, when it
  sends initial presence, when it announces new caps (caps/updated), and when a contact's
  presence first reaches it (a subscription approved during the session);
- disco (XEP-0163 §6, XEP-0060 §5): the account's identity pubsub/pep with the features,
  its nodes as items (those the asker may see), each node's info.
- limits: `[pep] max_nodes_per_user` (one more node: policy-violation with
  <max-nodes-exceeded/>) and `max_items_per_node` ('max', and the cap of pubsub#max_items;
  a full node drops its oldest item on publish).

Nodes, their items and settings are stored (storage/pubsub.py) and cached in memory per
owner (the node settings, affiliations, subscriptions and each node's last item), so the
fan-out of a publication touches storage only to write the item.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.jid import JID, InvalidJID
from dovecote.modules import caps
from dovecote.storage.base import Roster
from dovecote.storage.pubsub import NodeConfig, PubSubItem
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr, serialize
from dovecote.xml.forms import Field, Form, FormError, find_form, parse_form, submitted_values
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.storage.base import RosterItem

log = logging.getLogger(__name__)

PUBSUB = "http://jabber.org/protocol/pubsub"
PUBSUB_EVENT = f"{PUBSUB}#event"
PUBSUB_OWNER = f"{PUBSUB}#owner"
PUBSUB_ERRORS = f"{PUBSUB}#errors"
NODE_CONFIG = f"{PUBSUB}#node_config"
PUBLISH_OPTIONS = f"{PUBSUB}#publish-options"
META_DATA = f"{PUBSUB}#meta-data"

#: XEP-0060 §10 features this service implements (XEP-0163 §6.1 lists them on the account).
_FEATURE_NAMES = (
    "access-open",
    "access-presence",
    "access-roster",
    "access-whitelist",
    "auto-create",
    "auto-subscribe",
    "config-node",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "filtered-notifications",
    "item-ids",
    "last-published",
    "member-affiliation",
    "modify-affiliations",
    "outcast-affiliation",
    "persistent-items",
    "presence-notifications",
    "publish",
    "publish-options",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-default",
    "retrieve-items",
    "retrieve-subscriptions",
    "subscribe",
)
FEATURES = [PUBSUB, *(f"{PUBSUB}#{name}" for name in _FEATURE_NAMES)]
ACCOUNT_FEATURES = list(FEATURES)
#: Anyone may ask an account's PEP service; each node's access model decides (§4.2.2).
PUBLIC_ACCOUNT_IQS = [f"get/{PUBSUB}:pubsub", f"set/{PUBSUB}:pubsub"]
MODULE = ModuleInfo(
    name="pep",
    summary="Personal eventing (XEP-0163): each account's pubsub service (XEP-0060)",
    features=FEATURES,
    account_features=ACCOUNT_FEATURES,
    public_account_iqs=PUBLIC_ACCOUNT_IQS,
    # Notifications follow presence and are filtered by verified caps (XEP-0163 §4).
    depends=["presence", "caps"],
    config="pep",
)

#: "max" items (XEP-0060 §16.4.4): the most a node keeps, unless `[pep] max_items_per_node`
#: says otherwise.
MAX_ITEMS = 1000
#: The longest NodeID and ItemID kept (the storage's bound, XEP-0060 §12.13 sets none).
MAX_NAME_BYTES = 1023
#: Owners whose service (nodes, settings, last items) stays in memory, least recently
#: used dropped.
CACHE_SIZE = 1000
#: session.data key: what the session was sent last items for (see `Interest`).
INTEREST = "pep_interest"
AFFILIATIONS = ("owner", "member", "outcast", "none")
ACTIONS = frozenset(
    """publish retract create subscribe unsubscribe items subscriptions affiliations default
    configure delete purge""".split()
)


# ---- node configuration (XEP-0060 §16.4.4 pubsub#node_config) ------------------------------
class Option:
    """One node configuration field: its data form type, default and allowed values."""

    __slots__ = ("choices", "default", "label", "type", "var")

    def __init__(
        self,
        var: str,
        type: str,
        default: str | list[str],
        label: str,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.var = var
        self.type = type
        self.default = default
        self.label = label
        self.choices = choices

    def normalize(self, values: list[str], item_cap: int = MAX_ITEMS) -> str | list[str]:
        """The canonical stored form of submitted values; ValueError when invalid
        (pubsub#max_items beyond `item_cap`, the service's limit, too)."""
        if self.type == "list-multi":
            return [v.strip() for v in values if v.strip()]
        if len(values) > 1:
            raise ValueError(f"{self.var} takes one value")
        value = values[0].strip() if values else ""
        if self.type == "boolean":
            if value in ("1", "true"):
                return "true"
            if value in ("0", "false"):
                return "false"
            raise ValueError(f"{self.var} must be a boolean")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.var} must be one of {', '.join(self.choices)}")
        if self.var == "pubsub#max_items" and value != "max":
            if not value.isdigit() or not 1 <= int(value) <= item_cap:
                raise ValueError(f"pubsub#max_items must be 'max' or 1 to {item_cap}")
            return str(int(value))
        return value


# XEP-0163 §5 defaults: presence access, last item sent on presence, notifications with
# payloads; one item kept unless asked for more.
OPTIONS = {
    option.var: option
    for option in (
        Option("pubsub#title", "text-single", "", "A friendly name for the node"),
        Option("pubsub#description", "text-single", "", "A description of the node"),
        Option("pubsub#type", "text-single", "", "The type of the payloads"),
        Option(
            "pubsub#access_model",
            "list-single",
            "presence",
            "Who may subscribe and retrieve items",
            ("open", "presence", "roster", "whitelist"),
        ),
        Option(
            "pubsub#roster_groups_allowed",
            "list-multi",
            [],
            "The roster group(s) allowed to subscribe and retrieve items",
        ),
        Option(
            "pubsub#publish_model", "list-single", "publishers", "Who may publish", ("publishers",)
        ),
        Option("pubsub#persist_items", "boolean", "true", "Whether to persist items"),
        Option(
            "pubsub#max_items",
            "text-single",
            "1",
            "The maximum number of items to keep ('max': the service's limit)",
        ),
        Option(
            "pubsub#send_last_published_item",
            "list-single",
            "on_sub_and_presence",
            "When to send the last published item",
            ("never", "on_sub", "on_sub_and_presence"),
        ),
        Option("pubsub#deliver_notifications", "boolean", "true", "Whether to notify"),
        Option("pubsub#deliver_payloads", "boolean", "true", "Whether to include payloads"),
        Option("pubsub#notify_retract", "boolean", "true", "Notify when items are removed"),
        Option("pubsub#notify_delete", "boolean", "true", "Notify when the node is deleted"),
        Option("pubsub#notify_config", "boolean", "false", "Notify when settings change"),
        Option(
            "pubsub#notification_type",
            "list-single",
            "headline",
            "The message type of notifications",
            ("headline", "normal"),
        ),
        Option(
            "pubsub#itemreply",
            "list-single",
            "owner",
            "Whether notifications name the owner or the item's publisher",
            ("owner", "publisher"),
        ),
    )
}


def default_config() -> NodeConfig:
    return {
        var: list(o.default) if isinstance(o.default, list) else o.default
        for var, o in OPTIONS.items()
    }


def apply_options(
    config: NodeConfig, values: dict[str, list[str]], item_cap: int = MAX_ITEMS
) -> NodeConfig:
    """`config` with submitted values applied; ValueError for unknown fields or values."""
    changed = dict(config)
    for var, submitted in values.items():
        option = OPTIONS.get(var)
        if option is None:
            raise ValueError(f"unsupported option {var}")
        changed[var] = option.normalize(submitted, item_cap)
    return changed


def config_form(config: NodeConfig, form_type: str = "form") -> Element:
    fields = []
    for var, option in OPTIONS.items():
        value = config.get(var, option.default)
        values = list(value) if isinstance(value, list) else [value]
        fields.append(
            Field(
                var,
                option.type,
                values,
                label=option.label,
                options=[(None, choice) for choice in option.choices],
            )
        )
    return Form.with_type(NODE_CONFIG, fields, type=form_type).to_element()


def pubsub_error(
    condition: str, pubsub_condition: str | None = None, feature: str | None = None, text: str = ""
) -> StanzaError:
    """A stanza error with a XEP-0060 §14 application condition."""
    app = None
    if pubsub_condition is not None:
        app = Element(pubsub_condition, PUBSUB_ERRORS, {"feature": feature} if feature else {})
    return StanzaError(condition, text, app_condition=app)


def timestamp(moment: datetime.datetime) -> str:
    """XEP-0082 DateTime in UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- in-memory state ------------------------------------------------------------------------
class Node:
    """A node of a PEP service as kept in memory: settings, affiliations, explicit
    subscriptions and the last published item."""

    __slots__ = ("affiliations", "config", "last", "last_payload", "name", "subscriptions")

    def __init__(self, name: str, config: NodeConfig) -> None:
        self.name = name
        self.config = {**default_config(), **config}
        #: bare JID -> affiliation (the owner is implicit).
        self.affiliations: dict[str, str] = {}
        #: subscribed JID (bare or full) -> subid.
        self.subscriptions: dict[str, str] = {}
        self.last: PubSubItem | None = None
        self.last_payload: Element | None = None

    def flag(self, var: str) -> bool:
        return self.config.get(var) == "true"

    @property
    def access_model(self) -> str:
        return str(self.config["pubsub#access_model"])

    def item_limit(self, cap: int) -> int:
        """Items the node keeps: its pubsub#max_items, at most the service's `cap`."""
        value = self.config["pubsub#max_items"]
        return cap if value == "max" else min(cap, int(str(value)))

    @property
    def roster_groups(self) -> list[str]:
        groups = self.config.get("pubsub#roster_groups_allowed", [])
        return list(groups) if isinstance(groups, list) else [groups]

    def payload_of_last(self) -> Element | None:
        if self.last is None or self.last.payload is None:
            return None
        if self.last_payload is None:
            self.last_payload = _parse_payload(self.last.payload, self.last.id, self.name)
        return self.last_payload

    def allows(self, who: str, subscribed: bool, groups: Iterable[str]) -> bool:
        """May `who` (a bare JID, not the owner) see this node? `subscribed`: has a
        presence subscription to the owner; `groups`: its groups in the owner's roster."""
        affiliation = self.affiliations.get(who)
        if affiliation == "outcast":
            return False
        if affiliation in ("owner", "member", "publisher"):
            return True
        model = self.access_model
        if model == "open":
            return True
        if model == "presence":
            return subscribed
        if model == "roster":
            return bool(set(groups) & set(self.roster_groups))
        return False  # whitelist

    def denial(self, who: str) -> StanzaError:
        """The XEP-0060 §6.1.3 / §6.5.9 error for someone `allows` refused."""
        if self.affiliations.get(who) == "outcast":
            return StanzaError("forbidden")
        model = self.access_model
        if model == "presence":
            return pubsub_error("not-authorized", "presence-subscription-required")
        if model == "roster":
            return pubsub_error("not-authorized", "not-in-roster-group")
        return pubsub_error("not-allowed", "closed-node")


class Service:
    """One account's PEP service: its nodes by NodeID."""

    __slots__ = ("nodes", "owner")

    def __init__(self, owner: JID) -> None:
        self.owner = owner
        self.nodes: dict[str, Node] = {}


class Interest:
    """What a session was sent last items for since its initial presence: the nodes it
    said +notify for, and the owners (itself and contacts) checked for them."""

    __slots__ = ("nodes", "owners")

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.owners: set[JID] = set()


def _parse_payload(text: str, item_id: str, node: str) -> Element | None:
    """A stored payload; None (logged) when unreadable: the item is served without it."""
    return parse_stored(text, f"payload of pubsub item {item_id!r} of node {node!r}")


def interests(features: Iterable[str]) -> set[str]:
    """XEP-0163 §4.2 / XEP-0060 §9.2: the nodes named by NODE+notify features."""
    return {f[:-7] for f in features if f.endswith("+notify") and len(f) > 7}


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    store = server.storage.pubsub
    max_nodes = server.config.pep.max_nodes_per_user
    item_cap = server.config.pep.max_items_per_node
    services: OrderedDict[JID, Service] = OrderedDict()
    locks: weakref.WeakValueDictionary[JID, asyncio.Lock] = weakref.WeakValueDictionary()

    # ---- services in memory ------------------------------------------------------------
    def lock(owner: JID) -> asyncio.Lock:
        found = locks.get(owner)
        if found is None:
            found = locks[owner] = asyncio.Lock()
        return found

    @events.on("account/deleted")
    def forget_service(owner: JID) -> None:
        # Its nodes are gone from storage: contacts must not get them from the cache.
        services.pop(owner, None)

    def remember(service: Service) -> Service:
        services[service.owner] = service
        services.move_to_end(service.owner)
        while len(services) > CACHE_SIZE:
            services.popitem(last=False)
        return service

    async def load(owner: JID) -> Service:
        """The owner's service from storage (call with the owner's lock held)."""
        cached = services.get(owner)
        if cached is not None:
            return remember(cached)
        local, domain = owner.local or "", owner.domain
        service = Service(owner)
        stored = await store.list_nodes(local, domain)
        if stored:
            for stored_node in stored:
                service.nodes[stored_node.name] = Node(stored_node.name, stored_node.config)
            for name, item in (await store.last_items(local, domain)).items():
                if name in service.nodes:
                    service.nodes[name].last = item
            for name, jid, affiliation in await store.get_affiliations(local, domain):
                if name in service.nodes:
                    service.nodes[name].affiliations[jid] = affiliation
            for subscription in await store.get_subscriptions(local, domain):
                node = service.nodes.get(subscription.node)
                if node is not None and subscription.state == "subscribed":
                    node.subscriptions[subscription.jid] = subscription.subid
        return remember(service)

    async def service_of(owner: JID) -> Service:
        cached = services.get(owner)
        if cached is not None:
            services.move_to_end(owner)
            return cached
        async with lock(owner):
            return await load(owner)

    async def roster_of(owner: JID) -> Roster:
        return await server.rosters.get(owner)

    async def check_access(service: Service, node: Node, requester: JID) -> None:
        """Raise the XEP-0060 error when `requester` may not see `node`."""
        who = requester.bare
        if who == service.owner:
            return
        key = str(who)
        item = (await roster_of(service.owner)).items.get(key)
        if not node.allows(key, _subscribed_from(item), item.groups if item else ()):
            raise node.denial(key)

    # ---- the request ---------------------------------------------------------------------
    def owner_of(event: StanzaEvent) -> JID:
        """XEP-0163 §1: one publisher per node, the account owner (forbidden otherwise)."""
        owner = event.to.bare
        if event.sender.bare != owner:
            raise StanzaError("forbidden", "only the account owner may do this")
        return owner

    def action_of(pubsub: Element) -> Element:
        """The request's action; <publish-options/>, <options/> and (in the pubsub
        namespace) <configure/> only accompany one (XEP-0060 §7.1.5, §6.3.7, §8.1.3)."""
        children = list(pubsub.elements)
        for child in children:
            if child.tag in ACTIONS and not (child.tag == "configure" and pubsub.ns == PUBSUB):
                return child
        if children:
            return children[0]
        raise StanzaError("bad-request", "no pubsub action")

    def node_name(action: Element) -> str:
        name = action.get("node")
        if not name:
            raise pubsub_error("bad-request", "nodeid-required")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise StanzaError("not-acceptable", f"NodeIDs are limited to {MAX_NAME_BYTES} bytes")
        return name

    def check_node_count(service: Service) -> None:
        """`[pep] max_nodes_per_user`: XEP-0060 names no error for "too many nodes"; as for
        too many subscriptions (§6.1.3.9, a matter of local service policy), policy-violation
        with the pubsub#errors schema's <max-nodes-exceeded/>."""
        if len(service.nodes) >= max_nodes:
            raise pubsub_error(
                "policy-violation",
                "max-nodes-exceeded",
                text=f"at most {max_nodes} nodes per account",
            )

    def find_node(service: Service, name: str) -> Node:
        node = service.nodes.get(name)
        if node is None:
            raise StanzaError("item-not-found", f"no node {name!r}")
        return node

    @events.on(f"iq/bare/set/{PUBSUB}:pubsub")
    async def pubsub_set(event: StanzaEvent) -> bool:
        pubsub = event.payload
        assert pubsub is not None
        action = action_of(pubsub)
        handler = {
            "publish": publish,
            "retract": retract,
            "create": create,
            "subscribe": subscribe,
            "unsubscribe": unsubscribe,
        }.get(action.tag)
        if handler is None:
            if action.tag == "options":
                raise pubsub_error("feature-not-implemented", "unsupported", "subscription-options")
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        await handler(event, pubsub, action)
        return True

    @events.on(f"iq/bare/get/{PUBSUB}:pubsub")
    async def pubsub_get(event: StanzaEvent) -> bool:
        pubsub = event.payload
        assert pubsub is not None
        action = action_of(pubsub)
        if action.tag == "items":
            await get_items(event, action)
        elif action.tag == "subscriptions":
            await own_subscriptions(event, action)
        elif action.tag == "affiliations":
            await own_affiliations(event, action)
        elif action.tag in ("options", "default"):
            feature = "subscription-options" if action.tag == "options" else "retrieve-default-sub"
            raise pubsub_error("feature-not-implemented", "unsupported", feature)
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        return True

    @events.on(f"iq/bare/get/{PUBSUB_OWNER}:pubsub")
    async def owner_get(event: StanzaEvent) -> bool:
        owner = owner_of(event)
        pubsub = event.payload
        assert pubsub is not None
        action = action_of(pubsub)
        if action.tag == "default":  # XEP-0060 §8.3
            answer = Element("default", PUBSUB_OWNER, {}, [config_form(default_config())])
        elif action.tag == "configure":  # §8.2
            node = find_node(await service_of(owner), node_name(action))
            form = config_form(node.config)
            answer = Element("configure", PUBSUB_OWNER, {"node": node.name}, [form])
        elif action.tag == "affiliations":  # §8.9.1
            node = find_node(await service_of(owner), node_name(action))
            answer = Element("affiliations", PUBSUB_OWNER, {"node": node.name})
            answer.add("affiliation", attrs={"jid": str(owner), "affiliation": "owner"})
            for jid, affiliation in sorted(node.affiliations.items()):
                answer.add("affiliation", attrs={"jid": jid, "affiliation": affiliation})
        elif action.tag == "subscriptions":
            raise pubsub_error("feature-not-implemented", "unsupported", "manage-subscriptions")
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        event.reply(Element("pubsub", PUBSUB_OWNER, {}, [answer]))
        return True

    @events.on(f"iq/bare/set/{PUBSUB_OWNER}:pubsub")
    async def owner_set(event: StanzaEvent) -> bool:
        owner = owner_of(event)
        pubsub = event.payload
        assert pubsub is not None
        action = action_of(pubsub)
        if action.tag == "configure":
            await configure(event, owner, action)
        elif action.tag == "delete":
            await delete_node(event, owner, action)
        elif action.tag == "purge":
            await purge(event, owner, action)
        elif action.tag == "affiliations":
            await set_affiliations(event, owner, action)
        elif action.tag == "subscriptions":
            raise pubsub_error("feature-not-implemented", "unsupported", "manage-subscriptions")
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        return True

    # ---- publish (XEP-0060 §7.1) -----------------------------------------------------------
    def publish_options(pubsub: Element) -> dict[str, list[str]] | None:
        element = pubsub.find("publish-options", PUBSUB)
        if element is None:
            return None
        x = find_form(element)
        if x is None:
            return None  # an empty <publish-options/>: no preconditions
        try:
            form = parse_form(x)
            if form.form_type != PUBLISH_OPTIONS:
                raise FormError("the FORM_TYPE must be " + PUBLISH_OPTIONS)
            return submitted_values(x, PUBLISH_OPTIONS)
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None

    def precondition_not_met(text: str) -> StanzaError:
        return pubsub_error("conflict", "precondition-not-met", text=text)

    async def publish(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        name = node_name(action)
        items = action.find_all("item", PUBSUB)
        if len(items) > 1:
            raise pubsub_error("bad-request", "invalid-payload", text="one item per publish")
        if not items:
            raise pubsub_error("bad-request", "item-required")
        item_el = items[0]
        payloads = list(item_el.elements)
        if len(payloads) > 1:
            raise pubsub_error("bad-request", "invalid-payload", text="one payload per item")
        item_id = item_el.get("id") or uuid.uuid4().hex
        if len(item_id.encode()) > MAX_NAME_BYTES:
            raise StanzaError("not-acceptable", f"ItemIDs are limited to {MAX_NAME_BYTES} bytes")
        payload = payloads[0] if payloads else None
        options = publish_options(pubsub)
        async with lock(owner):
            service = await load(owner)
            node = service.nodes.get(name)
            created = node is None
            if node is None:
                # XEP-0163 §3 auto-create; XEP-0060 §7.1.5: with the preconditions applied.
                try:
                    node = Node(name, apply_options(default_config(), options or {}, item_cap))
                except ValueError as exc:
                    raise precondition_not_met(str(exc)) from None
            elif options:
                try:
                    wanted = apply_options(node.config, options, item_cap)
                except ValueError as exc:
                    raise precondition_not_met(str(exc)) from None
                if wanted != node.config:
                    differing = sorted(k for k in wanted if wanted[k] != node.config.get(k))
                    raise precondition_not_met(f"the node differs in {', '.join(differing)}")
            if payload is None and node.flag("pubsub#deliver_payloads"):
                raise pubsub_error("bad-request", "payload-required")  # §7.1.3.6
            if created:
                check_node_count(service)
                await store.create_node(owner.local or "", owner.domain, name, node.config)
                service.nodes[name] = node
            item = PubSubItem(
                item_id,
                serialize(payload) if payload is not None else None,
                str(event.sender),
                datetime.datetime.now(datetime.UTC),
            )
            if node.flag("pubsub#persist_items"):
                await store.publish(
                    owner.local or "", owner.domain, name, item, node.item_limit(item_cap)
                )
            node.last = item
            node.last_payload = payload
            remember(service)
        result = Element("publish", PUBSUB, {"node": name})
        result.add("item", attrs={"id": item_id})
        event.reply(Element("pubsub", PUBSUB, {}, [result]))
        await notify(service, node, items_event(node, item, payload))

    def item_element(node: Node, item: PubSubItem, payload: Element | None) -> Element:
        el = Element("item", PUBSUB_EVENT, {"id": item.id})
        if node.config.get("pubsub#itemreply") == "publisher":
            el.attrs["publisher"] = item.publisher
        if payload is not None and node.flag("pubsub#deliver_payloads"):
            el.append(payload)
        return el

    def items_event(node: Node, item: PubSubItem, payload: Element | None) -> Element:
        return Element(
            "items", PUBSUB_EVENT, {"node": node.name}, [item_element(node, item, payload)]
        )

    # ---- retract (XEP-0060 §7.2) ------------------------------------------------------------
    async def retract(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        name = node_name(action)
        item_el = action.find("item", PUBSUB)
        item_id = item_el.get("id") if item_el is not None else None
        if not item_id:
            raise pubsub_error("bad-request", "item-required")
        notify_attr = action.get("notify")
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            local, domain = owner.local or "", owner.domain
            if node.flag("pubsub#persist_items"):
                if not await store.retract(local, domain, name, item_id):
                    raise StanzaError("item-not-found", f"no item {item_id!r}")
                if node.last is not None and node.last.id == item_id:
                    newest = await store.get_items(local, domain, name, max_items=1)
                    node.last = newest[0] if newest else None
                    node.last_payload = None
            elif node.last is not None and node.last.id == item_id:
                node.last = node.last_payload = None
            else:
                raise StanzaError("item-not-found", f"no item {item_id!r}")
            remember(service)
        event.reply()
        if notify_attr in ("1", "true") or (
            notify_attr is None and node.flag("pubsub#notify_retract")
        ):
            retraction = Element("items", PUBSUB_EVENT, {"node": name})
            retraction.add("retract", attrs={"id": item_id})
            await notify(service, node, retraction)

    # ---- create, configure, delete, purge (XEP-0060 §8) -------------------------------------
    def submitted_config(parent: Element | None) -> dict[str, list[str]] | None:
        if parent is None:
            return None
        x = find_form(parent)
        if x is None:
            return None
        try:
            if parse_form(x).type == "cancel":
                return None
            return submitted_values(x, NODE_CONFIG)
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None

    async def create(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        name = action.get("node")
        if not name:
            # XEP-0060 §8.1.2.3: instant nodes are not supported.
            raise pubsub_error("not-acceptable", "nodeid-required")
        values = submitted_config(pubsub.find("configure", PUBSUB)) or {}
        try:
            config = apply_options(default_config(), values, item_cap)
        except ValueError as exc:
            raise StanzaError("not-acceptable", str(exc)) from None
        async with lock(owner):
            service = await load(owner)
            if name in service.nodes:
                raise StanzaError("conflict", f"the node {name!r} exists")
            check_node_count(service)
            await store.create_node(owner.local or "", owner.domain, name, config)
            service.nodes[name] = Node(name, config)
            remember(service)
        event.reply()

    async def configure(event: StanzaEvent, owner: JID, action: Element) -> None:
        name = node_name(action)
        values = submitted_config(action)
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            if values is None:
                event.reply()  # XEP-0060 §8.2.5: a cancelled form changes nothing
                return
            try:
                config = apply_options(node.config, values, item_cap)
            except ValueError as exc:
                raise StanzaError("not-acceptable", str(exc)) from None
            local, domain = owner.local or "", owner.domain
            await store.configure_node(local, domain, name, config)
            shrunk = config["pubsub#max_items"] != node.config["pubsub#max_items"]
            node.config = config
            if shrunk and node.flag("pubsub#persist_items"):
                # Keep only the newest max_items now (XEP-0060 §7.1.2 "node is full").
                kept = await store.get_items(local, domain, name)
                for old in kept[: max(0, len(kept) - node.item_limit(item_cap))]:
                    await store.retract(local, domain, name, old.id)
            remember(service)
        event.reply()
        if node.flag("pubsub#notify_config"):
            await notify(service, node, Element("configuration", PUBSUB_EVENT, {"node": name}))

    async def delete_node(event: StanzaEvent, owner: JID, action: Element) -> None:
        name = node_name(action)
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            # Recipients are worked out before the node (and its settings) go.
            targets = await recipients(service, node) if node.flag("pubsub#notify_delete") else []
            await store.delete_node(owner.local or "", owner.domain, name)
            del service.nodes[name]
            remember(service)
        event.reply()
        if targets:
            deliver(
                targets,
                notification(service.owner, node, Element("delete", PUBSUB_EVENT, {"node": name})),
            )

    async def purge(event: StanzaEvent, owner: JID, action: Element) -> None:
        name = node_name(action)
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            await store.purge(owner.local or "", owner.domain, name)
            node.last = node.last_payload = None
            remember(service)
        event.reply()
        if node.flag("pubsub#notify_retract"):
            await notify(service, node, Element("purge", PUBSUB_EVENT, {"node": name}))

    # ---- retrieve items (XEP-0060 §6.5) ----------------------------------------------------
    async def get_items(event: StanzaEvent, action: Element) -> None:
        owner = event.to.bare
        name = node_name(action)
        service = await service_of(owner)
        node = find_node(service, name)
        await check_access(service, node, event.sender)
        max_text = action.get("max_items")
        max_items = None
        if max_text is not None:
            if not max_text.isdigit() or int(max_text) < 1:
                raise StanzaError("bad-request", "max_items must be a positive integer")
            max_items = int(max_text)
        wanted = [el.get("id") or "" for el in action.find_all("item", PUBSUB)]
        if any(not item_id for item_id in wanted):
            raise pubsub_error("bad-request", "item-required")
        if node.flag("pubsub#persist_items"):
            found = await store.get_items(
                owner.local or "",
                owner.domain,
                name,
                item_ids=wanted or None,
                max_items=None if wanted else max_items,
            )
            pairs = [(item, None) for item in found]
        elif node.last is not None and (not wanted or node.last.id in wanted):
            pairs = [(node.last, node.payload_of_last())]
        else:
            pairs = []
        if wanted and not pairs:
            raise StanzaError("item-not-found", "no such item")
        result = Element("items", PUBSUB, {"node": name})
        for item, payload in pairs:
            el = Element("item", PUBSUB, {"id": item.id})
            if node.config.get("pubsub#itemreply") == "publisher":
                el.attrs["publisher"] = item.publisher
            if payload is None and item.payload is not None:
                payload = _parse_payload(item.payload, item.id, name)
            if payload is not None:
                el.append(payload)
            result.append(el)
        event.reply(Element("pubsub", PUBSUB, {}, [result]))

    # ---- subscriptions and affiliations (XEP-0060 §5.6, §5.7, §6.1, §6.2, §8.9) ------------
    def subscriber_jid(event: StanzaEvent, action: Element) -> JID:
        text = action.get("jid")
        try:
            jid = JID.parse(text) if text else None
        except InvalidJID:
            jid = None
        if jid is None or jid.bare != event.sender.bare:
            # §6.1.3.1: the JID must be the subscriber's own (bare or full).
            raise pubsub_error("bad-request", "invalid-jid")
        return jid

    async def subscribe(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = event.to.bare
        name = node_name(action)
        jid = subscriber_jid(event, action)
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            await check_access(service, node, jid)
            key = str(jid)
            subid = node.subscriptions.get(key) or uuid.uuid4().hex
            if key not in node.subscriptions:
                await store.set_subscription(
                    owner.local or "", owner.domain, name, key, "subscribed", subid
                )
                node.subscriptions[key] = subid
            remember(service)
        attrs = {"node": name, "jid": key, "subid": subid, "subscription": "subscribed"}
        event.reply(Element("pubsub", PUBSUB, {}, [Element("subscription", PUBSUB, attrs)]))
        # §6.1.7: the last published item on subscription.
        if (
            node.last is not None
            and node.config["pubsub#send_last_published_item"] in ("on_sub", "on_sub_and_presence")
            and node.flag("pubsub#deliver_notifications")
        ):
            message = last_item_message(service.owner, node)
            message.attrs["to"] = key
            await server.router.route(message)

    async def unsubscribe(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = event.to.bare
        name = node_name(action)
        jid = subscriber_jid(event, action)
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            key = str(jid)
            if key not in node.subscriptions:
                raise pubsub_error("unexpected-request", "not-subscribed")
            subid = action.get("subid")
            if subid and subid != node.subscriptions[key]:
                raise pubsub_error("not-acceptable", "invalid-subid")
            await store.set_subscription(owner.local or "", owner.domain, name, key, None)
            del node.subscriptions[key]
            remember(service)
        event.reply()

    async def own_subscriptions(event: StanzaEvent, action: Element) -> None:
        service = await service_of(event.to.bare)
        who = event.sender.bare
        only = action.get("node")
        listing = Element("subscriptions", PUBSUB, {"node": only} if only else {})
        for node in sorted(service.nodes.values(), key=lambda n: n.name):
            if only and node.name != only:
                continue
            for jid, subid in sorted(node.subscriptions.items()):
                if JID.parse(jid).bare == who:
                    listing.add("subscription", attrs={
                        "node": node.name, "jid": jid, "subid": subid,
                        "subscription": "subscribed",
                    })  # fmt: skip
        event.reply(Element("pubsub", PUBSUB, {}, [listing]))

    async def own_affiliations(event: StanzaEvent, action: Element) -> None:
        owner = event.to.bare
        service = await service_of(owner)
        who = event.sender.bare
        only = action.get("node")
        listing = Element("affiliations", PUBSUB, {"node": only} if only else {})
        for node in sorted(service.nodes.values(), key=lambda n: n.name):
            if only and node.name != only:
                continue
            affiliation = "owner" if who == owner else node.affiliations.get(str(who))
            if affiliation:
                listing.add("affiliation", attrs={"node": node.name, "affiliation": affiliation})
        event.reply(Element("pubsub", PUBSUB, {}, [listing]))

    async def set_affiliations(event: StanzaEvent, owner: JID, action: Element) -> None:
        name = node_name(action)
        changes: list[tuple[str, str]] = []
        for el in action.find_all("affiliation", PUBSUB_OWNER):
            affiliation = el.get("affiliation")
            try:
                jid = JID.parse(el.get("jid") or "").bare
            except InvalidJID:
                raise StanzaError("jid-malformed", "invalid affiliation jid") from None
            if affiliation not in AFFILIATIONS or affiliation == "owner" or jid == owner:
                # §8.9.2.4: PEP has one owner; only member, outcast and none are set.
                raise StanzaError("not-acceptable", f"cannot set {affiliation!r} for {jid}")
            changes.append((str(jid), affiliation))
        async with lock(owner):
            service = await load(owner)
            node = find_node(service, name)
            for jid_text, affiliation in changes:
                await store.set_affiliation(
                    owner.local or "", owner.domain, name, jid_text, affiliation
                )
                if affiliation == "none":
                    node.affiliations.pop(jid_text, None)
                else:
                    node.affiliations[jid_text] = affiliation
            remember(service)
        event.reply()

    # ---- notifications (XEP-0163 §4) --------------------------------------------------------
    def notification(owner: JID, node: Node, child: Element) -> Element:
        """XEP-0163 §4.3.1: from the owner's bare JID, a headline by default."""
        return Element(
            "message",
            ns.CLIENT,
            {
                "from": str(owner),
                "type": str(node.config.get("pubsub#notification_type", "headline")),
                "id": uuid.uuid4().hex,
            },
            [Element("event", PUBSUB_EVENT, {}, [child])],
        )

    def last_item_message(owner: JID, node: Node) -> Element:
        """XEP-0163 §4.3.3: the last item, with the time it was published."""
        assert node.last is not None
        message = notification(owner, node, items_event(node, node.last, node.payload_of_last()))
        message.add(
            "delay", ns.DELAY, {"from": str(owner), "stamp": timestamp(node.last.published_at)}
        )
        return message

    async def recipients(service: Service, node: Node) -> list[Any]:
        """The available sessions to notify (XEP-0163 §4.1): the owner's and those of the
        contacts the access model lets in, each with NODE+notify in its caps (§4.2)."""
        if not node.flag("pubsub#deliver_notifications"):
            return []
        feature = f"{node.name}+notify"
        owner = service.owner
        targets = [s for s in sessions.available(owner, None) if feature in caps.features_of(s)]
        roster = await roster_of(owner)
        for contact, item in roster.items.items():
            if not _subscribed_from(item):
                continue
            try:
                contact_jid = JID.parse(contact)
            except InvalidJID:
                continue
            available = sessions.available(contact_jid, None)
            if not available or not node.allows(contact, True, item.groups):
                continue
            if await blocked(owner, contact_jid):
                continue
            targets.extend(s for s in available if feature in caps.features_of(s))
        return targets

    async def blocked(owner: JID, contact: JID) -> bool:
        """XEP-0191 §3.3: nothing goes between a user and a JID either of them blocks."""
        return await server.blocking.blocked_either_way(owner, contact)

    async def notify(service: Service, node: Node, child: Element) -> None:
        targets = await recipients(service, node)
        message = notification(service.owner, node, child)
        deliver(targets, message)
        if not node.subscriptions:
            return
        # Explicit subscribers (XEP-0060 §6.1) not reached through presence already.
        reached = {s.jid.bare for s in targets} | {service.owner}
        roster = await roster_of(service.owner)
        for jid_text in list(node.subscriptions):
            try:
                jid = JID.parse(jid_text)
            except InvalidJID:
                continue
            bare = str(jid.bare)
            item = roster.items.get(bare)
            if jid.bare in reached or not node.allows(
                bare, _subscribed_from(item), item.groups if item else ()
            ):
                continue
            copy = message.shallow_copy()
            copy.attrs["to"] = jid_text
            await server.router.route(copy)

    def deliver(targets: list[Any], message: Element) -> None:
        """The same notification to each session, addressed to its full JID: serialized
        once (per transport kind) with only 'to' spliced in."""
        templates: dict[type, bytes | None] = {}
        for session in targets:
            copy = message.shallow_copy()
            to = str(session.jid)
            copy.attrs["to"] = to
            kind = type(getattr(session, "transport", session))
            if kind not in templates:
                data = session.serialize(message)
                templates[kind] = data if data.startswith(b"<message ") else None
            template = templates[kind]
            if template is None:
                session.send(copy)
            else:
                session.send(
                    copy, b"<message to='" + escape_attr(to).encode() + b"'" + template[8:]
                )

    # ---- last published items on presence (XEP-0163 §4.3.2, §4.3.3) --------------------
    async def send_last_items(
        session: Any, owners: Iterable[JID], nodes: set[str], roster: Roster | None
    ) -> None:
        """Send `session` the last item of each of `nodes` at each of `owners` that it may
        see. `roster`: the session's user's roster (a contact is an implicit subscriber,
        XEP-0163 §4.1, when the user's item for it says 'to' or 'both')."""
        if not nodes:
            return
        user = session.jid.bare
        for owner in owners:
            if owner != user and await blocked(owner, user):
                continue
            service = await service_of(owner)
            for name in nodes & service.nodes.keys():
                node = service.nodes[name]
                if (
                    node.last is None
                    or node.config["pubsub#send_last_published_item"] != "on_sub_and_presence"
                    or not node.flag("pubsub#deliver_notifications")
                ):
                    continue
                if owner != user:
                    groups: Iterable[str] = ()
                    if node.access_model == "roster":
                        owner_item = (await roster_of(owner)).items.get(str(user))
                        groups = owner_item.groups if owner_item else ()
                    item = roster.items.get(str(owner)) if roster is not None else None
                    if not node.allows(str(user), _subscribed_to(item), groups):
                        continue
                message = last_item_message(owner, node)
                message.attrs["to"] = str(session.jid)
                session.send(message)

    def local_contacts(roster: Roster) -> list[JID]:
        """The local accounts whose presence the user receives."""
        found = []
        for contact, item in roster.items.items():
            if not _subscribed_to(item):
                continue
            try:
                jid = JID.parse(contact)
            except InvalidJID:
                continue
            if jid.domain in server.hosts and jid.local is not None:
                found.append(jid)
        return found

    @events.on("presence/initial")
    async def initial_presence(session: Any) -> None:
        interest = Interest()
        session.data[INTEREST] = interest
        interest.nodes = interests(caps.features_of(session))
        user = session.jid.bare
        roster = await roster_of(user)
        # Contacts whose presence arrived meanwhile were served already (first_presence_of).
        owners = [o for o in (user, *local_contacts(roster)) if o not in interest.owners]
        interest.owners.update(owners)
        await send_last_items(session, owners, set(interest.nodes), roster)

    @events.on("caps/updated")
    async def caps_updated(session: Any) -> None:
        interest = session.data.get(INTEREST)
        if interest is None or not session.available:
            return  # the initial presence sends what the caps then say
        new = interests(caps.features_of(session)) - interest.nodes
        interest.nodes |= new
        if new:
            roster = await roster_of(session.jid.bare)
            await send_last_items(session, list(interest.owners), new, roster)

    def contact_presence(event: StanzaEvent) -> bool:
        """A local contact's available presence, or its approval of the user's subscription,
        reaching the user's sessions: a contact not served before in this session (a
        subscription approved meanwhile) has its last items sent (XEP-0163 §4.3.2)."""
        if event.type is not None and event.type != "subscribed":
            return False
        sender = event.sender.bare
        if sender.local is None or sender.domain not in server.hosts or sender == event.to.bare:
            return False
        if event.to.resource is None:
            targets = sessions.available(event.to.bare, None)
        else:
            one = sessions.get(event.to)
            targets = [one] if one is not None and one.available else []
        for session in targets:
            interest = session.data.get(INTEREST)
            if interest is not None and sender not in interest.owners and interest.nodes:
                server.spawn(first_presence_of(session, interest, sender))
        return False

    async def first_presence_of(session: Any, interest: Interest, owner: JID) -> None:
        user = session.jid.bare
        # The contact's presence may overtake the 'subscribed' that changes the user's
        # roster (both routed at once): read the roster after any change in progress.
        async with server.rosters.lock(user):
            roster = await roster_of(user)
        if owner in interest.owners or not _subscribed_to(roster.items.get(str(owner))):
            return
        interest.owners.add(owner)
        await send_last_items(session, [owner], set(interest.nodes), roster)

    events.add("presence/bare", contact_presence, 20)
    events.add("presence/full", contact_presence, 20)

    @events.on("session/ended")
    def session_ended(session: Any) -> None:
        # The owner is gone: reloaded when next needed (so an account deleted while its
        # owner was online leaves nothing behind in memory).
        owner = session.jid.bare
        if not sessions.is_online(owner):
            services.pop(owner, None)

    @events.on("presence/outgoing")
    def outgoing(args: tuple[Any, Element]) -> None:
        session, stanza = args
        if stanza.attrs.get("type") == "unavailable":
            session.data.pop(INTEREST, None)  # the next available presence is initial

    # ---- disco (XEP-0163 §6, XEP-0060 §5) ----------------------------------------------------
    # XEP-0163 §6.1: the account is a virtual pubsub service, identity pubsub/pep.
    server.account_identities.append(("pubsub", "pep", None))

    @events.on(f"iq/bare/get/{ns.DISCO_INFO}:query", 10)
    async def disco_info(event: StanzaEvent) -> bool:
        query = event.payload
        assert query is not None
        name = query.get("node")
        owner = event.to.bare
        if not name:
            return False  # the account itself: disco.py, with our identity added below
        service = await service_of(owner)
        node = find_node(service, name)
        await check_access(service, node, event.sender)
        # XEP-0060 §5.3: a leaf node, with its metadata (§5.4).
        result = Element("query", ns.DISCO_INFO, {"node": name})
        result.add("identity", attrs={"category": "pubsub", "type": "leaf"})
        result.add("feature", attrs={"var": PUBSUB})
        meta = [
            Field("pubsub#access_model", values=[node.access_model]),
            Field("pubsub#owner", "jid-multi", [str(owner)]),
        ]
        for var in ("pubsub#title", "pubsub#description", "pubsub#type"):
            if node.config.get(var):
                meta.append(Field(var, values=[str(node.config[var])]))
        result.append(Form.with_type(META_DATA, meta, type="result").to_element())
        event.reply(result)
        return True

    @events.on(f"iq/bare/get/{ns.DISCO_ITEMS}:query", 10)
    async def disco_items(event: StanzaEvent) -> bool:
        query = event.payload
        assert query is not None
        owner = event.to.bare
        service = await service_of(owner)
        name = query.get("node")
        result = Element("query", ns.DISCO_ITEMS, {"node": name} if name else {})
        if name:
            # XEP-0060 §5.5: the items of a node, by id.
            node = find_node(service, name)
            await check_access(service, node, event.sender)
            if node.flag("pubsub#persist_items"):
                found = await store.get_items(owner.local or "", owner.domain, name)
            else:
                found = [node.last] if node.last is not None else []
            for item in found:
                result.add("item", attrs={"jid": str(owner), "name": item.id})
        else:
            # XEP-0163 §6.2: only the nodes the asker may subscribe to or retrieve from.
            roster_item: RosterItem | None = None
            asker = event.sender.bare
            if asker != owner and service.nodes:
                roster_item = (await roster_of(owner)).items.get(str(asker))
            for node in sorted(service.nodes.values(), key=lambda n: n.name):
                if asker == owner or node.allows(
                    str(asker),
                    _subscribed_from(roster_item),
                    roster_item.groups if roster_item else (),
                ):
                    result.add("item", attrs={"jid": str(owner), "node": node.name})
        event.reply(result)
        return True


def _subscribed_from(item: RosterItem | None) -> bool:
    """The owner's roster item: the contact receives the owner's presence."""
    return item is not None and item.subscription in ("from", "both")


def _subscribed_to(item: RosterItem | None) -> bool:
    """The user's roster item: the user receives the contact's presence."""
    return item is not None and item.subscription in ("to", "both")
