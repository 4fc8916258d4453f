"""`PubSubService`: one XEP-0060 publish-subscribe service over a `PubSubStore`.

The engine keeps a service's nodes (settings, affiliations, subscriptions and each node's
last item) in memory, writes every change to storage, and answers with results and the
notification payloads to send (<items/>, <retract/>, <purge/>, <delete/>,
<configuration/> in the pubsub#event namespace, XEP-0060 §7.1.2.1, §7.2.2.1, §8.5.2,
§8.4.2, §8.2.6). It knows no sockets, sessions or router: who is asking comes as an
`access.Asker` the caller fills, and delivering notifications is the caller's business.

A service is named by its storage address (local, domain), as `storage/pubsub.py` says:
an account's PEP service (XEP-0163) is the account's (local, domain) with that account as
the implicit owner of every node (`owner`); a pubsub domain is ("", domain), its node
owners recorded as affiliations (§4.1).
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dovecote.services.pubsub import errors
from dovecote.services.pubsub.access import Asker, subscription_state
from dovecote.services.pubsub.node import (
    Node,
    NodePolicy,
    check_name,
    parse_payload,
    subscription_options,
)
from dovecote.services.pubsub.ns import PUBSUB_EVENT
from dovecote.storage.pubsub import PubSubItem, PubSubSubscription
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from dovecote.storage.pubsub import PubSubStore

#: Affiliations an owner may set (§8.9.2); 'none' removes one.
SETTABLE_AFFILIATIONS = ("owner", "publisher", "publish-only", "member", "outcast", "none")
#: Subscription states an owner may set (§8.8.2); 'none' removes one.
SETTABLE_SUBSCRIPTIONS = ("subscribed", "pending", "none")


@dataclass(slots=True)
class Outcome:
    """What a change did: the node, the notification payload to send to those who may see
    the node (None: nothing to send), and for a publication the item and whether the node
    was created for it; for a subscription, the subscription."""

    node: Node
    event: Element | None = None
    item: PubSubItem | None = None
    payload: Element | None = None
    created: bool = False
    subscription: PubSubSubscription | None = None


def timestamp(moment: datetime.datetime) -> str:
    """XEP-0082 DateTime in UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def item_event(node: Node, item: PubSubItem, payload: Element | None) -> Element:
    """XEP-0060 §7.1.2.1: <items node=...><item id=...>payload</item></items>, the payload
    only when the node delivers payloads, the publisher when pubsub#itemreply says so."""
    el = Element("item", PUBSUB_EVENT, {"id": item.id})
    if node.config.get("pubsub#itemreply") == "publisher":
        el.attrs["publisher"] = item.publisher
    if payload is not None and node.flag("pubsub#deliver_payloads"):
        el.append(payload)
    return Element("items", PUBSUB_EVENT, {"node": node.name}, [el])


def notification_message(sender: str, node: Node, event: Element) -> Element:
    """The <message/> carrying a notification payload (XEP-0060 §7.1.2.1, XEP-0163
    §4.3.1): from the service (a PEP service: the owner's bare JID), of the node's
    pubsub#notification_type; the caller addresses it."""
    return Element(
        "message",
        ns.CLIENT,
        {
            "from": sender,
            "type": str(node.config.get("pubsub#notification_type", "headline")),
            "id": uuid.uuid4().hex,
        },
        [Element("event", PUBSUB_EVENT, {}, [event])],
    )


def last_item_message(sender: str, node: Node) -> Element:
    """The last published item (XEP-0060 §6.1.7, XEP-0163 §4.3.3) with the time it was
    published (XEP-0203 delay)."""
    assert node.last is not None
    event = item_event(node, node.last, node.payload_of_last())
    message = notification_message(sender, node, event)
    message.add("delay", ns.DELAY, {"from": sender, "stamp": timestamp(node.last.published_at)})
    return message


class PubSubService:
    """The nodes of one service at (`local`, `domain`) in `store`, loaded on first use.

    Changes are serialized by `lock` (one per service; pass a shared one when more than
    one object may stand for the same service). `owner`: the bare JID owning every node
    (XEP-0163 §1, PEP), or None when owners are affiliations (§4.1)."""

    def __init__(
        self,
        store: PubSubStore,
        local: str,
        domain: str,
        policy: NodePolicy | None = None,
        *,
        owner: str | None = None,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.store = store
        self.local = local
        self.domain = domain
        self.policy = policy or NodePolicy()
        self.owner = owner
        self.lock = lock or asyncio.Lock()
        self.nodes: dict[str, Node] = {}
        self._loaded = False

    # ---- loading and looking up -----------------------------------------------------------
    async def load(self) -> None:
        """Read the service's nodes, last items, affiliations and subscriptions (once)."""
        if self._loaded:
            return
        async with self.lock:
            if not self._loaded:
                await self._load()

    async def _load(self) -> None:
        local, domain = self.local, self.domain
        stored = await self.store.list_nodes(local, domain)
        if stored:
            defaults = self.policy.default_config()
            for node in stored:
                self.nodes[node.name] = Node(node.name, {**defaults, **node.config})
            for name, item in (await self.store.last_items(local, domain)).items():
                if name in self.nodes:
                    self.nodes[name].last = item
            for name, jid, affiliation in await self.store.get_affiliations(local, domain):
                if name in self.nodes:
                    self.nodes[name].affiliations[jid] = affiliation
            for subscription in await self.store.get_subscriptions(local, domain):
                found = self.nodes.get(subscription.node)
                if found is not None:
                    found.subscriptions[subscription.jid] = subscription
        self._loaded = True

    def node(self, name: str) -> Node:
        """The node named `name` (NodeNotFound: XEP-0060 §6.1.3.12, §7.1.3.3, ...)."""
        found = self.nodes.get(name)
        if found is None:
            raise errors.NodeNotFound(f"no node {name!r}")
        return found

    def affiliation(self, node: Node, jid: str) -> str | None:
        """`jid`'s (bare) affiliation with `node` (XEP-0060 §4.1)."""
        if jid == self.owner:
            return "owner"
        return node.affiliations.get(jid)

    def check_access(self, node: Node, asker: Asker) -> None:
        """Raise the XEP-0060 §6.5.9 / §6.1.3 error when `asker` may not see `node`."""
        refused = node.denial(asker)
        if refused is not None:
            raise refused

    def check_owner(self, node: Node | None, asker: Asker) -> None:
        """Raise Forbidden unless `asker` owns `node` (XEP-0060 §8)."""
        self._check_owner(node, asker)

    def _check_owner(self, node: Node | None, asker: Asker) -> None:
        """Owner-only requests (XEP-0060 §8): the service owner or an 'owner' affiliate."""
        if asker.is_owner or (node is not None and node.affiliations.get(asker.jid) == "owner"):
            return
        raise errors.Forbidden("only an owner of the node may do this")

    def owners(self, node: Node) -> list[str]:
        """The bare JIDs owning `node` (§4.1): the implicit owner, or 'owner' affiliates."""
        if self.owner is not None:
            return [self.owner]
        return sorted(jid for jid, aff in node.affiliations.items() if aff == "owner")

    def _check_node_count(self, asker: Asker) -> None:
        limit = self.policy.max_nodes
        if limit is not None and len(self.nodes) >= limit:
            raise errors.MaxNodesExceeded(f"at most {limit} nodes per service")
        per_owner = self.policy.max_nodes_per_owner
        if per_owner is not None and self.owner is None:
            owned = sum(1 for n in self.nodes.values() if n.affiliations.get(asker.jid) == "owner")
            if owned >= per_owner:
                raise errors.MaxNodesExceeded(f"at most {per_owner} nodes per owner")

    async def _add_node(self, node: Node, asker: Asker) -> None:
        self._check_node_count(asker)
        if not await self.store.create_node(self.local, self.domain, node.name, node.config):
            raise errors.NodeExists(f"the node {node.name!r} exists")
        if not asker.is_owner and self.owner is None:
            # The creator owns the node (§8.1.1); a PEP owner is implicit.
            await self.store.set_affiliation(self.local, self.domain, node.name, asker.jid, "owner")
            node.affiliations[asker.jid] = "owner"
        self.nodes[node.name] = node

    def visible_nodes(self, asker: Asker) -> list[Node]:
        """The nodes `asker` may see, by NodeID (XEP-0060 §5.2, XEP-0163 §6.2)."""
        return [
            node
            for name, node in sorted(self.nodes.items())
            if asker.is_owner or node.allows(asker)
        ]

    # ---- owner use cases (XEP-0060 §8) ------------------------------------------------------
    async def create_node(
        self, name: str | None, asker: Asker, values: Mapping[str, list[str]] | None = None
    ) -> Node:
        """§8.1: a node with the default settings and the submitted `values` (§8.1.3).
        Without a NodeID: an instant node with a NodeID made up (§8.1.2) when the policy
        offers them, else InstantNodesUnsupported (§8.1.2.3)."""
        if not name:
            if not self.policy.instant_nodes:
                raise errors.InstantNodesUnsupported()
            name = uuid.uuid4().hex
        name = check_name(name)
        try:
            config = self.policy.apply(self.policy.default_config(), values or {})
        except ValueError as exc:
            raise errors.InvalidConfiguration(str(exc)) from None
        await self.load()
        async with self.lock:
            if self.owner is not None:
                self._check_owner(None, asker)
            if name in self.nodes:
                raise errors.NodeExists(f"the node {name!r} exists")
            node = Node(name, config)
            await self._add_node(node, asker)
        return node

    async def configure_node(
        self, name: str, asker: Asker, values: Mapping[str, list[str]] | None
    ) -> Outcome:
        """§8.2.4: apply submitted `values` (None: a cancelled form, §8.2.5, changes
        nothing). A lower pubsub#max_items drops the oldest items now. The outcome's event
        is the <configuration/> notification when pubsub#notify_config is on (§8.2.6)."""
        await self.load()
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            if values is None:
                return Outcome(node)
            try:
                config = self.policy.apply(node.config, values)
            except ValueError as exc:
                raise errors.InvalidConfiguration(str(exc)) from None
            await self.store.configure_node(self.local, self.domain, name, config)
            shrunk = config["pubsub#max_items"] != node.config["pubsub#max_items"]
            node.config = config
            if shrunk and node.flag("pubsub#persist_items"):
                # Keep only the newest max_items now (§7.1.2 "node is full").
                kept = await self.store.get_items(self.local, self.domain, name)
                for old in kept[: max(0, len(kept) - self.policy.item_limit(node.config))]:
                    await self.store.retract(self.local, self.domain, name, old.id)
        event = None
        if node.flag("pubsub#notify_config"):
            event = Element("configuration", PUBSUB_EVENT, {"node": name})
        return Outcome(node, event)

    async def delete_node(self, name: str, asker: Asker, redirect: str | None = None) -> Outcome:
        """§8.4: the node goes with its items, subscriptions and affiliations; the event is
        <delete/> when pubsub#notify_delete is on (§8.4.2), with <redirect uri=.../> when
        given (§8.4.1). The outcome's node keeps the settings and subscriptions it had, to
        work out who is told."""
        await self.load()
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            await self.store.delete_node(self.local, self.domain, name)
            del self.nodes[name]
        event = None
        if node.flag("pubsub#notify_delete"):
            event = Element("delete", PUBSUB_EVENT, {"node": name})
            if redirect:
                event.add("redirect", attrs={"uri": redirect})
        return Outcome(node, event)

    async def purge_node(self, name: str, asker: Asker) -> Outcome:
        """§8.5: every item goes; the event is <purge/> when pubsub#notify_retract is on
        (§8.5.2)."""
        await self.load()
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            await self.store.purge(self.local, self.domain, name)
            node.last = node.last_payload = None
        event = None
        if node.flag("pubsub#notify_retract"):
            event = Element("purge", PUBSUB_EVENT, {"node": name})
        return Outcome(node, event)

    def node_affiliations(self, name: str, asker: Asker) -> list[tuple[str, str]]:
        """§8.9.1: (bare JID, affiliation) of a node, the implicit owner first."""
        node = self.node(name)
        self._check_owner(node, asker)
        listed = [(self.owner, "owner")] if self.owner is not None else []
        return listed + sorted(node.affiliations.items())

    async def set_affiliations(
        self, name: str, asker: Asker, changes: Iterable[tuple[str, str]]
    ) -> Node:
        """§8.9.2: set (bare JID, affiliation) pairs; 'none' removes one. With an implicit
        owner (PEP) only member, publisher, outcast and none, never for the owner
        (§8.9.2.4: not-acceptable); without, a node keeps at least one owner
        (not-acceptable). An outcast's subscriptions end (§4.1: it may not subscribe)."""
        wanted = list(changes)
        for jid, affiliation in wanted:
            implicit = self.owner is not None and (affiliation == "owner" or jid == self.owner)
            if affiliation not in SETTABLE_AFFILIATIONS or implicit:
                raise errors.NotAcceptable(f"cannot set {affiliation!r} for {jid}")
        await self.load()
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            if self.owner is None:
                after = dict(node.affiliations)
                for jid, affiliation in wanted:
                    after[jid] = affiliation
                if not any(aff == "owner" for aff in after.values()):
                    raise errors.NotAcceptable("a node keeps at least one owner")
            for jid, affiliation in wanted:
                await self.store.set_affiliation(self.local, self.domain, name, jid, affiliation)
                if affiliation == "none":
                    node.affiliations.pop(jid, None)
                else:
                    node.affiliations[jid] = affiliation
                if affiliation in ("outcast", "publish-only"):
                    for sub in self.subscriptions_of(jid, name):
                        await self.store.set_subscription(
                            self.local, self.domain, name, sub.jid, None
                        )
                        del node.subscriptions[sub.jid]
        return node

    # ---- publish and retract (XEP-0060 §7) --------------------------------------------------
    async def publish(
        self,
        name: str,
        asker: Asker,
        item_id: str | None,
        payload: Element | None,
        *,
        publisher: str | None = None,
        options: Mapping[str, list[str]] | None = None,
        auto_create: bool = True,
    ) -> Outcome:
        """§7.1: store an item (a generated ItemID when none, §7.1.4) as the node's newest,
        dropping the oldest beyond pubsub#max_items (§7.1.2, capped by the policy).

        A missing node is created (auto-create, §7.1.4 / XEP-0163 §3) with `options`
        applied; an existing one must match `options` (§7.1.5: PreconditionNotMet
        otherwise). `publisher`: the JID stamped on the item (default: the asker). The
        outcome's event is the <items/> notification (§7.1.2.1) when the node notifies."""
        name = check_name(name)
        await self.load()
        async with self.lock:
            node = self.nodes.get(name)
            created = node is None
            if node is None:
                if not auto_create:
                    raise errors.NodeNotFound(f"no node {name!r}")
                if self.owner is not None:
                    self._check_owner(None, asker)
                try:
                    config = self.policy.apply(self.policy.default_config(), options or {})
                except ValueError as exc:
                    raise errors.PreconditionNotMet(str(exc)) from None
                node = Node(name, config)
            else:
                self._check_publisher(node, asker)
                if options:
                    self._check_preconditions(node, options)
            if payload is None and node.flag("pubsub#deliver_payloads"):
                raise errors.PayloadRequired()  # §7.1.3.6
            if created:
                await self._add_node(node, asker)
            item = PubSubItem(
                item_id or uuid.uuid4().hex,
                serialize(payload) if payload is not None else None,
                publisher or asker.jid,
                datetime.datetime.now(datetime.UTC),
            )
            if node.flag("pubsub#persist_items"):
                await self.store.publish(
                    self.local, self.domain, name, item, self.policy.item_limit(node.config)
                )
            node.last = item
            node.last_payload = payload
        event = None
        if node.flag("pubsub#deliver_notifications"):
            event = item_event(node, item, payload)
        return Outcome(node, event, item=item, payload=payload, created=created)

    def _check_publisher(self, node: Node, asker: Asker) -> None:
        """§7.1.3.1: who may publish, by affiliation (§4.1) and pubsub#publish_model."""
        if asker.is_owner:
            return
        affiliation = self.affiliation(node, asker.jid)
        if affiliation in ("owner", "publisher", "publish-only"):
            return
        model = node.config.get("pubsub#publish_model", "publishers")
        if affiliation != "outcast":
            if model == "open":
                return
            if model == "subscribers" and node.subscription_of(asker.jid) == "subscribed":
                return
        raise errors.Forbidden("only publishers may publish")

    def _check_preconditions(self, node: Node, options: Mapping[str, list[str]]) -> None:
        """§7.1.5: the node's settings must be those the publish-options ask for."""
        try:
            wanted = self.policy.apply(node.config, options)
        except ValueError as exc:
            raise errors.PreconditionNotMet(str(exc)) from None
        if wanted != node.config:
            differing = sorted(k for k in wanted if wanted[k] != node.config.get(k))
            raise errors.PreconditionNotMet(f"the node differs in {', '.join(differing)}")

    async def retract(
        self, name: str, asker: Asker, item_id: str, notify: bool | None = None
    ) -> Outcome:
        """§7.2: delete an item (ItemNotFound when there is none, §7.2.3.3). The event is
        <items><retract id=.../></items> when `notify` says so, or, when it is None,
        pubsub#notify_retract (§7.2.2.1)."""
        await self.load()
        async with self.lock:
            node = self.node(name)
            if not asker.is_owner and self.affiliation(node, asker.jid) not in (
                "owner",
                "publisher",
                "publish-only",
            ):
                raise errors.Forbidden("only publishers may retract")  # §7.2.3.1
            local, domain = self.local, self.domain
            if node.flag("pubsub#persist_items"):
                if not await self.store.retract(local, domain, name, item_id):
                    raise errors.ItemNotFound(f"no item {item_id!r}")
                if node.last is not None and node.last.id == item_id:
                    newest = await self.store.get_items(local, domain, name, max_items=1)
                    node.last = newest[0] if newest else None
                    node.last_payload = None
            elif node.last is not None and node.last.id == item_id:
                node.last = node.last_payload = None
            else:
                raise errors.ItemNotFound(f"no item {item_id!r}")
        event = None
        if notify or (notify is None and node.flag("pubsub#notify_retract")):
            event = Element("items", PUBSUB_EVENT, {"node": name})
            event.add("retract", attrs={"id": item_id})
        return Outcome(node, event)

    # ---- subscribers (XEP-0060 §6) ---------------------------------------------------------
    async def get_items(
        self,
        name: str,
        asker: Asker,
        *,
        max_items: int | None = None,
        item_ids: Iterable[str] = (),
    ) -> list[tuple[PubSubItem, Element | None]]:
        """§6.5: (item, payload) oldest first: those named by `item_ids` (ItemNotFound
        when none exists, §6.5.8), else all (§6.5.2) or the newest `max_items` (§6.5.7).
        A node that does not persist items has its last one (§6.5.5)."""
        await self.load()
        node = self.node(name)
        self.check_access(node, asker)
        wanted = list(item_ids)
        if node.flag("pubsub#persist_items"):
            found = await self.store.get_items(
                self.local,
                self.domain,
                name,
                item_ids=wanted or None,
                max_items=None if wanted else max_items,
            )
            pairs: list[tuple[PubSubItem, Element | None]] = [
                (item, parse_payload(item.payload, item.id, name) if item.payload else None)
                for item in found
            ]
        elif node.last is not None and (not wanted or node.last.id in wanted):
            pairs = [(node.last, node.payload_of_last())]
        else:
            pairs = []
        if wanted and not pairs:
            raise errors.ItemNotFound("no such item")
        return pairs

    async def item_ids(self, name: str, asker: Asker) -> list[str]:
        """§5.5: the ItemIDs of a node (disco#items)."""
        await self.load()
        node = self.node(name)
        self.check_access(node, asker)
        if node.flag("pubsub#persist_items"):
            found = await self.store.get_items(self.local, self.domain, name)
            return [item.id for item in found]
        return [node.last.id] if node.last is not None else []

    async def subscribe(
        self,
        name: str,
        asker: Asker,
        jid: str,
        options: Mapping[str, list[str]] | None = None,
    ) -> Outcome:
        """§6.1: subscribe `jid` (the asker's bare or full JID; InvalidJid otherwise,
        §6.1.3.1), with subscription `options` (§6.3.7, checked: InvalidOptions).
        Subscribing again returns the subscription there is. The outcome's event is the
        last item when the node sends it on subscription (§6.1.7). At most
        `policy.max_subscriptions` per node (§6.1.3.9)."""
        if jid != asker.jid and not jid.startswith(asker.jid + "/"):
            raise errors.InvalidJid()
        wanted_options = subscription_options(options or {})
        await self.load()
        async with self.lock:
            node = self.node(name)
            existing = node.subscriptions.get(jid)
            state = subscription_state(
                node.access_model,
                node.roster_groups,
                asker,
                self.affiliation(node, asker.jid),
                existing.state if existing is not None else node.subscription_of(asker.jid),
            )
            limit = self.policy.max_subscriptions
            if existing is None and limit is not None and len(node.subscriptions) >= limit:
                raise errors.TooManySubscriptions(f"at most {limit} subscriptions per node")
            if existing is None or existing.state != state or options is not None:
                subid = existing.subid if existing is not None else uuid.uuid4().hex
                kept = existing.options if existing is not None and options is None else {}
                existing = PubSubSubscription(
                    name, jid, state, subid, dict(wanted_options if options is not None else kept)
                )
                await self.store.set_subscription(
                    self.local, self.domain, name, jid, state, subid, existing.options
                )
                node.subscriptions[jid] = existing
        event = None
        if existing.state == "subscribed" and node.sends_last_on("sub"):
            assert node.last is not None
            event = item_event(node, node.last, node.payload_of_last())
        return Outcome(node, event, subscription=existing)

    async def unsubscribe(
        self, name: str, asker: Asker, jid: str, subid: str | None = None
    ) -> Node:
        """§6.2: end `jid`'s subscription (NotSubscribed, §6.2.3.2; InvalidSubId,
        §6.2.3.5)."""
        if jid != asker.jid and not jid.startswith(asker.jid + "/"):
            raise errors.InvalidJid()
        await self.load()
        async with self.lock:
            node = self.node(name)
            existing = node.subscriptions.get(jid)
            if existing is None:
                raise errors.NotSubscribed()
            if subid and subid != existing.subid:
                raise errors.InvalidSubId()
            await self.store.set_subscription(self.local, self.domain, name, jid, None)
            del node.subscriptions[jid]
        return node

    def _own_subscription(
        self, node: Node, asker: Asker, jid: str | None, subid: str | None
    ) -> PubSubSubscription:
        """The subscription of `jid` an options request (§6.3) is about: JidRequired
        (§6.3.4.3), Forbidden for another entity's (§6.3.4.2), NotSubscribed (§6.3.4.4),
        InvalidSubId (§6.3.4.6)."""
        if not jid:
            raise errors.JidRequired()
        if jid != asker.jid and not jid.startswith(asker.jid + "/"):
            raise errors.Forbidden("not your subscription")
        existing = node.subscriptions.get(jid)
        if existing is None:
            raise errors.NotSubscribed(error_type="modify")
        if subid and subid != existing.subid:
            raise errors.InvalidSubId()
        return existing

    async def get_options(
        self, name: str, asker: Asker, jid: str | None, subid: str | None = None
    ) -> PubSubSubscription:
        """§6.3.2: the subscription whose options are asked for."""
        await self.load()
        return self._own_subscription(self.node(name), asker, jid, subid)

    async def set_options(
        self,
        name: str,
        asker: Asker,
        jid: str | None,
        subid: str | None,
        values: Mapping[str, list[str]],
    ) -> PubSubSubscription:
        """§6.3.5: replace a subscription's options (InvalidOptions, §6.3.6)."""
        options = subscription_options(values)
        await self.load()
        async with self.lock:
            node = self.node(name)
            existing = self._own_subscription(node, asker, jid, subid)
            existing.options = options
            await self.store.set_subscription(
                self.local, self.domain, name, existing.jid, existing.state, existing.subid, options
            )
        return existing

    # ---- owners managing subscriptions (XEP-0060 §8.6 - §8.8) -------------------------------
    def node_subscriptions(self, name: str, asker: Asker) -> list[PubSubSubscription]:
        """§8.8.1: every subscription of a node (owners only)."""
        node = self.node(name)
        self._check_owner(node, asker)
        return [sub for _jid, sub in sorted(node.subscriptions.items())]

    async def set_subscriptions(
        self, name: str, asker: Asker, changes: Iterable[tuple[str, str]]
    ) -> list[PubSubSubscription]:
        """§8.8.2: set (JID, state) pairs, state 'subscribed', 'pending' or 'none' (which
        ends one). Returns the subscriptions as they now are ('none' for an ended one), for
        the notifications of §8.8.4."""
        wanted = list(changes)
        for jid, state in wanted:
            if state not in SETTABLE_SUBSCRIPTIONS:
                raise errors.BadRequest(f"cannot set subscription {state!r} for {jid}")
        await self.load()
        changed: list[PubSubSubscription] = []
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            limit = self.policy.max_subscriptions
            for jid, state in wanted:
                existing = node.subscriptions.get(jid)
                if state == "none":
                    if existing is not None:
                        await self.store.set_subscription(self.local, self.domain, name, jid, None)
                        del node.subscriptions[jid]
                    changed.append(PubSubSubscription(name, jid, "none"))
                    continue
                if existing is None and limit is not None and len(node.subscriptions) >= limit:
                    raise errors.TooManySubscriptions(f"at most {limit} subscriptions per node")
                subid = existing.subid if existing is not None else uuid.uuid4().hex
                options = existing.options if existing is not None else {}
                sub = PubSubSubscription(name, jid, state, subid, options)
                await self.store.set_subscription(
                    self.local, self.domain, name, jid, state, subid, options
                )
                node.subscriptions[jid] = sub
                changed.append(sub)
        return changed

    async def authorize(
        self, name: str, asker: Asker, jid: str, allow: bool, subid: str | None = None
    ) -> PubSubSubscription:
        """§8.6.2: an owner's answer to a pending subscription: 'subscribed' when allowed,
        else the subscription ends ('none'). Only a pending one (NotSubscribed otherwise,
        InvalidSubId for another SubID)."""
        await self.load()
        async with self.lock:
            node = self.node(name)
            self._check_owner(node, asker)
            existing = node.subscriptions.get(jid)
            if existing is None or existing.state != "pending":
                raise errors.NotSubscribed("no pending subscription")
            if subid and subid != existing.subid:
                raise errors.InvalidSubId()
            if allow:
                existing.state = "subscribed"
                await self.store.set_subscription(
                    self.local, self.domain, name, jid, "subscribed", existing.subid,
                    existing.options,
                )  # fmt: skip
                return existing
            await self.store.set_subscription(self.local, self.domain, name, jid, None)
            del node.subscriptions[jid]
            return PubSubSubscription(name, jid, "none", existing.subid)

    async def forget_entity(self, bare: str) -> int:
        """A deleted account (`bare`): drop its subscriptions (bare and full JIDs) and its
        affiliations with every node, in memory and in the store (where the account's
        deletion has usually removed them already). A node it was the only owner of stays,
        ownerless. Returns how many entries went."""
        if not self._loaded:
            return 0  # loaded later from the store, which no longer has them
        removed = 0
        async with self.lock:
            for name, node in list(self.nodes.items()):
                for sub in self.subscriptions_of(bare, name):
                    await self.store.set_subscription(self.local, self.domain, name, sub.jid, None)
                    node.subscriptions.pop(sub.jid, None)
                    removed += 1
                if node.affiliations.pop(bare, None) is not None:
                    await self.store.set_affiliation(self.local, self.domain, name, bare, None)
                    removed += 1
        return removed

    def subscriptions_of(self, bare: str, name: str | None = None) -> list[PubSubSubscription]:
        """§5.6: the subscriptions of `bare`'s JIDs (of one node when given)."""
        found = []
        for node_name, node in sorted(self.nodes.items()):
            if name and node_name != name:
                continue
            for jid, subscription in sorted(node.subscriptions.items()):
                if jid == bare or jid.startswith(bare + "/"):
                    found.append(subscription)
        return found

    def affiliations_of(self, bare: str, name: str | None = None) -> list[tuple[str, str]]:
        """§5.7: (NodeID, affiliation) of `bare` (of one node when given)."""
        found = []
        for node_name, node in sorted(self.nodes.items()):
            if name and node_name != name:
                continue
            affiliation = self.affiliation(node, bare)
            if affiliation:
                found.append((node_name, affiliation))
        return found
