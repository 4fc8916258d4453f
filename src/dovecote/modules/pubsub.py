"""XEP-0060: a publish-subscribe service on a domain of its own (`[pubsub] domain`, e.g.
pubsub.example.org), the second front end of the engine in `services/pubsub` (PEP,
`modules/pep.py`, is the first). Its nodes are stored as the service ("", domain).

The service is a component of the server (`server.components[domain]`): the router hands
it every stanza to its domain. What is implemented (leaf nodes only, no collections):

- disco (§5): the service (identity pubsub/service, the features below), its nodes (§5.2,
  those the asker may see), a node's info with its pubsub#meta-data (§5.3, §5.4) and its
  items (§5.5);
- node life cycle (§8): create with and without a configuration form, instant nodes with a
  made-up NodeID (§8.1.2), configure (§8.2: get, submit, cancel), the default settings
  (§8.3), delete with an optional redirect (§8.4), purge (§8.5); who may create nodes is
  `[pubsub] creators`;
- publish with and without ItemIDs, publish-options as preconditions (§7.1.5), retract
  with notify (§7.2), items (§6.5: all, max_items, by id); publishing to a node that does
  not exist creates it (auto-create, §7.1.4) with the publish-options as its settings,
  the publisher its owner, for those `[pubsub] creators` lets create nodes (others:
  item-not-found);
- subscribe and unsubscribe, bare or full JIDs (§6.1, §6.2), subscription options (§6.3:
  pubsub#deliver and pubsub#show-values), subscribe with options (§6.3.7), the default
  options (§6.4), one's own subscriptions and affiliations (§5.6, §5.7);
- owners: subscriptions (§8.8: list and modify, approving or denying pending ones, the
  subscriber told, §8.8.4), affiliations (§8.9: owner, publisher, publish-only, member,
  outcast, none), the 'authorize' access model with the §8.6 authorization form sent to
  each owner and answered by submitting it;
- access models (§4.5) open, presence, roster, whitelist, authorize. 'presence' and
  'roster' are judged against the rosters of the node's owners (local accounts): any
  owner whose roster gives the asker a presence subscription ('from' or 'both'), or puts
  it in an allowed group, lets it in;
- notifications (§7.1.2.1) from the service's domain to each subscribed JID (a bare-JID
  subscription to the bare JID, a full one to the full JID), one serialization for all
  (`route_fanout`), of the node's pubsub#notification_type, with delete (and redirect),
  purge, configuration and retraction notifications; pubsub#presence_based_delivery
  (only to subscribers of this server with an available resource whose <show/> is in
  their pubsub#show-values); the last published item on subscription (§6.1.7);
- limits (`[pubsub]`): nodes per service and per owner, items per node, subscriptions per
  node, payload bytes, each refused with the error XEP-0060 names.

Not implemented, answered feature-not-implemented with <unsupported feature=.../>:
collection nodes (XEP-0248), retrieving pending subscription approvals by ad-hoc command
(§8.7, get-pending), leased subscriptions and digests. An entity whose affiliation an owner
changes is not notified (§8.9.4 makes that a MAY).

A deleted account's subscriptions and affiliations go (storage: `AccountStore.delete`; the
loaded service: "account/deleted"); a node whose only owner it was stays, ownerless, and
the server's admins (`[server] admins`), owners of every node for the §8 use cases, can
still configure, purge or delete it.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.jid import JID, InvalidJID
from dovecote.services.pubsub import errors, frontend, requests
from dovecote.services.pubsub.access import Asker
from dovecote.services.pubsub.engine import (
    SETTABLE_AFFILIATIONS,
    PubSubService,
    last_item_message,
    notification_message,
)
from dovecote.services.pubsub.errors import PubSubError, Unsupported, to_stanza_error
from dovecote.services.pubsub.node import (
    Node,
    NodePolicy,
    delivers,
    publish_options,
    submitted_config,
    submitted_subscription_options,
)
from dovecote.services.pubsub.ns import PUBSUB, PUBSUB_OWNER, SUBSCRIBE_AUTHORIZATION
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.forms import Field, Form, FormError, find_form, parse_form, single_value

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

#: XEP-0060 §10 features this service implements, and no others.
_FEATURE_NAMES = (
    "access-authorize",
    "access-open",
    "access-open",
    "access-presence",
    "access-roster",
    "access-whitelist",
    "auto-create",
    "config-node",
    "create-and-configure",
    "create-nodes",
    "delete-items",
    "delete-nodes",
    "instant-nodes",
    "item-ids",
    "last-published",
    "manage-subscriptions",
    "member-affiliation",
    "meta-data",
    "modify-affiliations",
    "outcast-affiliation",
    "persistent-items",
    "presence-notifications",
    "publish",
    "publish-only-affiliation",
    "publish-options",
    "publisher-affiliation",
    "purge-nodes",
    "retract-items",
    "retrieve-affiliations",
    "retrieve-default",
    "retrieve-default-sub",
    "retrieve-items",
    "retrieve-subscriptions",
    "subscribe",
    "subscription-notifications",
    "subscription-options",
)
FEATURES = [ns.DISCO_INFO, ns.DISCO_ITEMS, PUBSUB, *(f"{PUBSUB}#{n}" for n in _FEATURE_NAMES)]

MODULE = ModuleInfo(
    name="pubsub",
    summary="Publish-subscribe service (XEP-0060) on its own domain, `[pubsub] domain`",
    config="pubsub",
)

#: XEP-0060 §16.4.4 defaults for this service's nodes (over the engine's): every item kept
#: up to the service's cap, the last one sent on subscription.
DEFAULTS: dict[str, str | list[str]] = {
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "on_sub",
}
SHOW_ONLINE = "online"


def setup(server: Server) -> None:
    section = server.config.pubsub
    if section.domain is None:
        return  # no service domain configured: nothing to serve
    component = PubSubComponent(server, section.domain)
    server.components[section.domain] = component

    @server.events.on("account/deleted")
    async def account_deleted(account: JID) -> None:
        # The account's subscriptions and affiliations left storage with it
        # (`AccountStore.delete`): the loaded service forgets them too.
        await component.service.forget_entity(str(account.bare))


def policy_of(server: Server) -> NodePolicy:
    section = server.config.pubsub
    return NodePolicy(
        defaults={**DEFAULTS, "pubsub#access_model": section.default_access_model},
        item_cap=section.max_items_per_node,
        max_nodes=section.max_nodes,
        max_nodes_per_owner=section.max_nodes_per_user,
        max_subscriptions=section.max_subscriptions_per_node,
        publish_models=("open", "publishers", "subscribers"),
        service_options=True,
        instant_nodes=True,
    )


def show_of(session: Any) -> str:
    """A session's presence state for pubsub#show-values (RFC 6121 §4.7.2.1)."""
    presence = session.presence
    show = presence.find_text("show", ns.CLIENT) if presence is not None else None
    return show if show in ("away", "chat", "dnd", "xa") else SHOW_ONLINE


class PubSubComponent:
    """The pubsub service at `domain`: reads stanzas, asks the engine, sends answers and
    notifications."""

    name = "Publish-Subscribe"

    def __init__(self, server: Server, domain: str) -> None:
        self.server = server
        self.domain = domain
        self.config = server.config.pubsub
        self.policy = policy_of(server)
        self.service = PubSubService(server.storage.pubsub, "", domain, self.policy)

    # ---- the router's entry ------------------------------------------------------------------
    async def receive(self, event: StanzaEvent) -> None:
        """Every stanza to the domain (or a JID at it): IQ requests are answered, the
        owners' authorization forms (§8.6.2) read, anything else dropped (errors bounce)."""
        kind = event.stanza.tag
        try:
            if kind == "iq":
                await self._iq(event)
            elif kind == "message" and event.type != "error":
                await self._message(event)
        except PubSubError as exc:
            raise to_stanza_error(exc) from None

    async def _iq(self, event: StanzaEvent) -> None:
        if event.type not in ("get", "set"):
            return  # results and errors to the service: nothing waits for them
        payload = event.payload
        if payload is None or event.to.local is not None or event.to.resource is not None:
            raise StanzaError("service-unavailable")
        key = (event.type, payload.ns, payload.tag)
        if key == ("get", ns.DISCO_INFO, "query"):
            await self.disco_info(event, payload)
        elif key == ("get", ns.DISCO_ITEMS, "query"):
            await self.disco_items(event, payload)
        elif payload.tag == "pubsub" and payload.ns in (PUBSUB, PUBSUB_OWNER):
            await self.service.load()
            action = requests.action_of(payload)
            handler = self._handlers.get((event.type, payload.ns, action.tag))
            if handler is None:
                raise self._unsupported(payload.ns, action)
            await handler(self, event, payload, action)
        else:
            raise StanzaError("service-unavailable")

    @staticmethod
    def _unsupported(namespace: str, action: Element) -> Exception:
        if action.tag in ("collection",) or action.get("type") == "collection":
            return Unsupported(feature="collections")
        if namespace == PUBSUB and action.tag in requests.ACTIONS | {"options"}:
            return StanzaError("bad-request", f"{action.tag} is not a request of that type")
        return StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")

    # ---- who asks -----------------------------------------------------------------------
    async def asker(self, node: Node | None, requester: JID) -> Asker:
        """Who asks, for the access models (§4.5): the bare JID, with its presence
        subscription and groups in the rosters of `node`'s owners that are local accounts
        (an asker is let in when any owner's roster lets it in)."""
        bare = str(requester.bare)
        if node is None or node.access_model not in ("presence", "roster"):
            return Asker(bare)
        subscribed = False
        groups: set[str] = set()
        for owner in self.service.owners(node):
            try:
                owner_jid = JID.parse(owner)
            except InvalidJID:
                continue
            if owner_jid.domain not in self.server.hosts or owner_jid.local is None:
                continue
            item = (await self.server.rosters.get(owner_jid)).items.get(bare)
            if item is None:
                continue
            subscribed = subscribed or item.subscription in ("from", "both")
            groups.update(item.groups)
        return Asker(bare, presence_subscription=subscribed, roster_groups=tuple(groups))

    def owner_asker(self, event: StanzaEvent) -> Asker:
        """Who asks for an owner's use case (§8): server admins (`[server] admins`) act as
        owners of every node of the service, so that a node whose owners are gone (their
        accounts deleted) can still be configured or deleted; everyone else is what their
        affiliation says."""
        bare = str(event.sender.bare)
        return Asker(bare, is_owner=bare in self.server.config.server.admins)

    def may_create(self, requester: JID) -> bool:
        """`[pubsub] creators`: whether `requester` may create nodes (§8.1.1)."""
        creators = self.config.creators
        if creators == "all":
            return True
        if creators == "local":
            return requester.domain in self.server.hosts
        if creators == "admins":
            return str(requester.bare) in self.server.config.server.admins
        return False

    def check_creator(self, requester: JID) -> None:
        """`[pubsub] creators` (§8.1.1: forbidden for those who may not create nodes)."""
        if not self.may_create(requester):
            raise errors.Forbidden("you may not create nodes here")

    # ---- disco (§5) -------------------------------------------------------------------------
    async def disco_info(self, event: StanzaEvent, query: Element) -> None:
        name = query.get("node")
        if not name:
            result = Element("query", ns.DISCO_INFO)
            result.add(
                "identity", attrs={"category": "pubsub", "type": "service", "name": self.name}
            )
            for feature in sorted(FEATURES):
                result.add("feature", attrs={"var": feature})
            event.reply(result)
            return
        await self.service.load()
        node = self.service.node(name)
        self.service.check_access(node, await self.asker(node, event.sender))
        event.reply(frontend.node_info(node, self.service.owners(node)))

    async def disco_items(self, event: StanzaEvent, query: Element) -> None:
        name = query.get("node")
        await self.service.load()
        result = Element("query", ns.DISCO_ITEMS, {"node": name} if name else {})
        if name:
            # §5.5: the items of a node, by ItemID.
            node = self.service.node(name)
            for item_id in await self.service.item_ids(name, await self.asker(node, event.sender)):
                result.add("item", attrs={"jid": self.domain, "name": item_id})
        else:
            # §5.2: the nodes the asker may see.
            for node in list(self.service.nodes.values()):
                if not node.allows(await self.asker(node, event.sender)):
                    continue
                attrs = {"jid": self.domain, "node": node.name}
                title = node.config.get("pubsub#title")
                if title:
                    attrs["name"] = str(title)
                result.add("item", attrs=attrs)
        event.reply(result)

    # ---- node life cycle (§8) --------------------------------------------------------------
    async def create(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        if action.get("type") == "collection":
            raise Unsupported(feature="collections")
        self.check_creator(event.sender)
        configure = pubsub.find("configure", PUBSUB)
        values = submitted_config(configure)
        if values and values.get("pubsub#node_type", ["leaf"]) != ["leaf"]:
            raise Unsupported(feature="collections")
        if values:
            values = {k: v for k, v in values.items() if k != "pubsub#node_type"}
        requested = action.get("node")
        node = await self.service.create_node(requested, Asker(str(event.sender.bare)), values)
        # §8.1.2: an instant node's NodeID in the answer (a named one: an empty result).
        event.reply(*([] if requested else [frontend.create_result(node.name)]))

    async def configure_get(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        node = self.service.node(requests.node_name(action))
        self.service.check_owner(node, self.owner_asker(event))
        event.reply(frontend.configure_result(self.policy, node))

    async def default_config(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        if action.get("type") == "collection":
            raise Unsupported(feature="collections")
        event.reply(frontend.default_config_result(self.policy))

    async def configure_set(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        if find_form(action) is None:
            raise errors.BadRequest("no configuration form")
        values = submitted_config(action)
        if values is not None:
            values = {k: v for k, v in values.items() if k != "pubsub#node_type" or v != ["leaf"]}
        outcome = await self.service.configure_node(name, self.owner_asker(event), values)
        event.reply()
        if outcome.event is not None and values is not None:
            await self.notify(outcome.node, outcome.event)

    async def delete(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        redirect_el = action.find("redirect", PUBSUB_OWNER)
        redirect = redirect_el.get("uri") if redirect_el is not None else None
        if redirect_el is not None and not redirect:
            raise errors.BadRequest("a redirect needs a uri")
        outcome = await self.service.delete_node(name, self.owner_asker(event), redirect)
        event.reply()
        if outcome.event is not None:
            await self.notify(outcome.node, outcome.event)

    async def purge(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        node = self.service.node(name)
        if not node.flag("pubsub#persist_items"):
            raise Unsupported(feature="persistent-items")  # §8.5.3.2
        outcome = await self.service.purge_node(name, self.owner_asker(event))
        event.reply()
        if outcome.event is not None:
            await self.notify(outcome.node, outcome.event)

    # ---- publish, retract, items (§7, §6.5) ---------------------------------------------
    async def publish(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        item_id, payload = requests.publish_item(action)
        if payload is not None:
            size = len(serialize(payload).encode())
            if size > self.config.max_payload_bytes:
                raise errors.PayloadTooBig(
                    f"payloads are limited to {self.config.max_payload_bytes} bytes"
                )
        options = publish_options(pubsub.find("publish-options", PUBSUB))
        outcome = await self.service.publish(
            name,
            Asker(str(event.sender.bare)),
            item_id,
            payload,
            publisher=str(event.sender),
            options=options,
            # §7.1.4 "Automatic Node Creation": a missing node is created, with the
            # publish-options applied (§7.1.5), for those who may create nodes; others
            # get item-not-found (§7.1.3.3).
            auto_create=self.may_create(event.sender),
        )
        assert outcome.item is not None
        event.reply(frontend.publish_result(name, outcome.item.id))
        if outcome.event is not None:
            await self.notify(outcome.node, outcome.event)

    async def retract(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        item_id = requests.retract_item(action)
        outcome = await self.service.retract(
            name, Asker(str(event.sender.bare)), item_id, requests.notify_flag(action)
        )
        event.reply()
        if outcome.event is not None:
            await self.notify(outcome.node, outcome.event)

    async def items(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        node = self.service.node(name)
        max_items, wanted = requests.items_request(action)
        who = await self.asker(node, event.sender)
        found = await self.service.get_items(name, who, max_items=max_items, item_ids=wanted)
        event.reply(frontend.items_result(node, found))

    # ---- subscriptions (§6) ---------------------------------------------------------------
    async def subscribe(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        jid = frontend.subscriber_jid(event.sender, action)
        node = self.service.node(name)
        options = submitted_subscription_options(pubsub.find("options", PUBSUB))
        outcome = await self.service.subscribe(name, await self.asker(node, jid), str(jid), options)
        subscription = outcome.subscription
        assert subscription is not None
        event.reply(frontend.subscribe_result(subscription))
        if subscription.state == "pending":
            await self.ask_owners(outcome.node, subscription.jid, subscription.subid)
        elif outcome.event is not None and delivers(subscription.options):
            # §6.1.7: the last published item on subscription.
            message = last_item_message(self.domain, outcome.node)
            message.attrs["to"] = subscription.jid
            await self.server.router.route(message)

    async def unsubscribe(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        jid = frontend.subscriber_jid(event.sender, action)
        await self.service.unsubscribe(name, Asker(str(jid.bare)), str(jid), action.get("subid"))
        event.reply()

    def _options_jid(self, event: StanzaEvent, action: Element) -> str | None:
        text = action.get("jid")
        if not text:
            return None
        return str(frontend.parse_jid(text, "subscriber"))

    async def options_get(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        subscription = await self.service.get_options(
            name, Asker(str(event.sender.bare)), self._options_jid(event, action),
            action.get("subid"),
        )  # fmt: skip
        event.reply(frontend.options_result(subscription))

    async def options_set(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        values = submitted_subscription_options(action)
        if values is None:
            raise errors.InvalidOptions("no subscription options form")
        await self.service.set_options(
            name, Asker(str(event.sender.bare)), self._options_jid(event, action),
            action.get("subid"), values,
        )  # fmt: skip
        event.reply()

    async def default_options(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = action.get("node")
        if name:
            self.service.node(name)
        event.reply(frontend.default_options_result(name))

    async def own_subscriptions(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        event.reply(frontend.own_subscriptions(self.service, event.sender.bare, action.get("node")))

    async def own_affiliations(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        event.reply(frontend.own_affiliations(self.service, event.sender.bare, action.get("node")))

    # ---- owners: subscriptions and affiliations (§8.6 .. §8.9) -------------------------------
    async def subscriptions_get(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        found = self.service.node_subscriptions(name, self.owner_asker(event))
        event.reply(frontend.node_subscriptions(name, found))

    async def subscriptions_set(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        changes = frontend.subscription_changes(action)
        changed = await self.service.set_subscriptions(name, self.owner_asker(event), changes)
        event.reply()
        for subscription in changed:  # §8.8.4: each subscriber told its new state
            await self.tell_subscriber(subscription)

    async def affiliations_get(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        pairs = self.service.node_affiliations(name, self.owner_asker(event))
        event.reply(frontend.node_affiliations(name, pairs))

    async def affiliations_set(self, event: StanzaEvent, pubsub: Element, action: Element) -> None:
        name = requests.node_name(action)
        changes = frontend.affiliation_changes(action, SETTABLE_AFFILIATIONS)
        await self.service.set_affiliations(name, self.owner_asker(event), changes)
        event.reply()

    # ---- authorization of subscriptions (§8.6) ---------------------------------------------
    async def ask_owners(self, node: Node, subscriber: str, subid: str) -> None:
        """§8.6.1: each owner gets the subscription authorization form."""
        form = Form.with_type(
            SUBSCRIBE_AUTHORIZATION,
            [
                Field("pubsub#subid", "hidden", [subid]),
                Field("pubsub#node", "text-single", [node.name], label="Node ID"),
                Field(
                    "pubsub#subscriber_jid", "jid-single", [subscriber], label="Subscriber Address"
                ),
                Field(
                    "pubsub#allow",
                    "boolean",
                    ["false"],
                    label="Allow this JID to subscribe to this pubsub node?",
                ),
            ],
        )
        form.title = "PubSub subscriber request"
        form.instructions = [
            "To approve this entity's subscription request, click the OK button. To deny "
            "the request, click the cancel button."
        ]
        owners = self.service.owners(node)
        message = Element(
            "message", ns.CLIENT, {"from": self.domain, "id": uuid.uuid4().hex},
            [form.to_element()],
        )  # fmt: skip
        await self.server.router.route_fanout(message, owners)

    async def _message(self, event: StanzaEvent) -> None:
        """§8.6.2: an owner's submitted authorization form (others are ignored)."""
        x = find_form(event.stanza)
        if x is None:
            return
        try:
            form = parse_form(x)
            if form.form_type != SUBSCRIBE_AUTHORIZATION:
                return
            if form.type == "cancel":
                return  # §8.6.2: the decision is put off
            values = form.values()
            name = single_value(values, "pubsub#node")
            subscriber = single_value(values, "pubsub#subscriber_jid")
            allow_text = single_value(values, "pubsub#allow") or "false"
            subid = single_value(values, "pubsub#subid")
        except FormError as exc:
            raise StanzaError("bad-request", str(exc)) from None
        if form.type != "submit" or not name or not subscriber:
            raise StanzaError("bad-request", "an authorization needs the node and subscriber")
        if allow_text not in ("0", "1", "false", "true"):
            raise StanzaError("bad-request", "pubsub#allow must be a boolean")
        jid = str(frontend.parse_jid(subscriber, "subscriber"))
        await self.service.load()
        subscription = await self.service.authorize(
            name, self.owner_asker(event), jid, allow_text in ("1", "true"), subid
        )
        await self.tell_subscriber(subscription)

    async def tell_subscriber(self, subscription: Any) -> None:
        """§8.6.2 / §8.8.4: the subscriber is told the state of its subscription."""
        message = Element(
            "message", ns.CLIENT,
            {"from": self.domain, "to": subscription.jid, "id": uuid.uuid4().hex},
            [frontend.subscription_event(subscription)],
        )  # fmt: skip
        await self.server.router.route(message)

    # ---- notifications (§7.1.2.1, §4.3) -------------------------------------------------------
    async def recipients(self, node: Node) -> list[str]:
        """The subscribed JIDs to notify: delivery on (pubsub#deliver), still allowed by
        the access model, and, with pubsub#presence_based_delivery, available here in a
        state their pubsub#show-values accept."""
        presence_based = node.flag("pubsub#presence_based_delivery")
        targets = []
        for jid_text, subscription in list(node.subscriptions.items()):
            if subscription.state != "subscribed" or not delivers(subscription.options):
                continue
            try:
                jid = JID.parse(jid_text)
            except InvalidJID:
                continue
            if not node.allows(await self.asker(node, jid)):
                continue
            if presence_based and not self._available_for(jid, subscription.options):
                continue
            targets.append(jid_text)
        return targets

    def _available_for(self, jid: JID, options: dict[str, list[str]]) -> bool:
        sessions = self.server.sessions
        if jid.domain not in self.server.hosts or jid.local is None:
            return False  # remote presence is unknown here
        if jid.resource is None:
            found = sessions.available(jid.bare, None)
        else:
            one = sessions.get(jid)
            found = [one] if one is not None and one.available else []
        return any(delivers(options, show_of(session)) for session in found)

    async def notify(self, node: Node, child: Element) -> None:
        """Send a notification payload the engine produced to the node's subscribers."""
        if not node.flag("pubsub#deliver_notifications"):
            return  # §16.4.4: nobody is notified
        targets = await self.recipients(node)
        if not targets:
            return
        message = notification_message(self.domain, node, child)
        await self.server.router.route_fanout(message, targets)

    _handlers: dict[tuple[str, str, str], Any] = {}


PubSubComponent._handlers = {
    ("set", PUBSUB, "create"): PubSubComponent.create,
    ("set", PUBSUB, "publish"): PubSubComponent.publish,
    ("set", PUBSUB, "retract"): PubSubComponent.retract,
    ("set", PUBSUB, "subscribe"): PubSubComponent.subscribe,
    ("set", PUBSUB, "unsubscribe"): PubSubComponent.unsubscribe,
    ("set", PUBSUB, "options"): PubSubComponent.options_set,
    ("get", PUBSUB, "items"): PubSubComponent.items,
    ("get", PUBSUB, "options"): PubSubComponent.options_get,
    ("get", PUBSUB, "default"): PubSubComponent.default_options,
    ("get", PUBSUB, "subscriptions"): PubSubComponent.own_subscriptions,
    ("get", PUBSUB, "affiliations"): PubSubComponent.own_affiliations,
    ("get", PUBSUB_OWNER, "configure"): PubSubComponent.configure_get,
    ("get", PUBSUB_OWNER, "default"): PubSubComponent.default_config,
    ("get", PUBSUB_OWNER, "subscriptions"): PubSubComponent.subscriptions_get,
    ("get", PUBSUB_OWNER, "affiliations"): PubSubComponent.affiliations_get,
    ("set", PUBSUB_OWNER, "configure"): PubSubComponent.configure_set,
    ("set", PUBSUB_OWNER, "delete"): PubSubComponent.delete,
    ("set", PUBSUB_OWNER, "purge"): PubSubComponent.purge,
    ("set", PUBSUB_OWNER, "subscriptions"): PubSubComponent.subscriptions_set,
    ("set", PUBSUB_OWNER, "affiliations"): PubSubComponent.affiliations_set,
}
