"""Nodes (XEP-0060 §4.4): the configuration model with its `pubsub#...` fields and
defaults (§16.4.4), validation of configuration forms (§8.1.3, §8.2), publish-options as
preconditions (§7.1.5) and the in-memory state of one node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from dovecote.services.pubsub import errors
from dovecote.services.pubsub.access import ACCESS_MODELS, Asker, allows, denial
from dovecote.services.pubsub.ns import NODE_CONFIG, PUBLISH_OPTIONS, SUBSCRIBE_OPTIONS
from dovecote.storage.pubsub import NodeConfig, PubSubItem, PubSubSubscription
from dovecote.xml.element import Element
from dovecote.xml.forms import Field, Form, FormError, find_form, parse_form, submitted_values
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.services.pubsub.errors import PubSubError

#: "max" items (XEP-0060 §16.4.4) when the service sets no lower cap.
MAX_ITEMS = 1000
#: The longest NodeID and ItemID kept (the storage's bound, XEP-0060 §12.13 sets none).
MAX_NAME_BYTES = 1023


class Option:
    """One node configuration field (XEP-0060 §16.4.4): its data form type, default and
    allowed values."""

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

    def normalize(
        self, values: list[str], item_cap: int = MAX_ITEMS, choices: tuple[str, ...] = ()
    ) -> str | list[str]:
        """The canonical stored form of submitted values; ValueError when invalid
        (pubsub#max_items beyond `item_cap`, the service's limit, too). `choices`: the
        allowed values when the service narrows the option's own."""
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
        choices = choices or self.choices
        if choices and value not in choices:
            raise ValueError(f"{self.var} must be one of {', '.join(choices)}")
        if self.var == "pubsub#max_items" and value != "max":
            if not value.isdigit() or not 1 <= int(value) <= item_cap:
                raise ValueError(f"pubsub#max_items must be 'max' or 1 to {item_cap}")
            return str(int(value))
        return value


#: The options the engine supports, with XEP-0060 defaults (a service may override them:
#: `NodePolicy.defaults`). One item kept unless asked for more.
OPTIONS = {
    option.var: option
    for option in (
        Option("pubsub#title", "text-single", "", "A friendly name for the node"),
        Option("pubsub#description", "text-single", "", "A description of the node"),
        Option("pubsub#type", "text-single", "", "The type of the payloads"),
        Option(
            "pubsub#access_model",
            "list-single",
            "open",
            "Who may subscribe and retrieve items",
            ACCESS_MODELS,
        ),
        Option(
            "pubsub#roster_groups_allowed",
            "list-multi",
            [],
            "The roster group(s) allowed to subscribe and retrieve items",
        ),
        Option(
            "pubsub#publish_model",
            "list-single",
            "publishers",
            "Who may publish",
            ("open", "publishers", "subscribers"),
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

#: Options only a pubsub service offers (PEP delivers by presence anyway, XEP-0163 §4).
SERVICE_OPTIONS = {
    option.var: option
    for option in (
        Option(
            "pubsub#presence_based_delivery",
            "boolean",
            "false",
            "Deliver notifications only to available subscribers",
        ),
    )
}


class NodePolicy:
    """What one service lets its nodes be: default settings (over `OPTIONS`' own), the
    access models offered (§4.5), the most items a node keeps (pubsub#max_items 'max' and
    the cap of any number) and the most nodes (None: no limit)."""

    __slots__ = (
        "_defaults",
        "access_models",
        "instant_nodes",
        "item_cap",
        "max_nodes",
        "max_nodes_per_owner",
        "max_subscriptions",
        "options",
        "publish_models",
    )

    def __init__(
        self,
        *,
        defaults: Mapping[str, str | list[str]] | None = None,
        access_models: Iterable[str] = ACCESS_MODELS,
        item_cap: int = MAX_ITEMS,
        max_nodes: int | None = None,
        max_nodes_per_owner: int | None = None,
        max_subscriptions: int | None = None,
        publish_models: Iterable[str] = ("publishers",),
        service_options: bool = False,
        instant_nodes: bool = False,
    ) -> None:
        """`max_nodes_per_owner`: nodes one JID may own (an 'owner' affiliation);
        `max_subscriptions`: per node (§6.1.3.9); `service_options`: offer
        `SERVICE_OPTIONS` too; `instant_nodes`: a create without a NodeID gets one made up
        (§8.1.2)."""
        self.access_models = tuple(access_models)
        self.publish_models = tuple(publish_models)
        self.item_cap = item_cap
        self.max_nodes = max_nodes
        self.max_nodes_per_owner = max_nodes_per_owner
        self.max_subscriptions = max_subscriptions
        self.instant_nodes = instant_nodes
        self.options = {**OPTIONS, **(SERVICE_OPTIONS if service_options else {})}
        unknown = [var for var in defaults or {} if var not in self.options]
        if unknown:
            raise ValueError(f"unsupported options {unknown}")
        self._defaults: dict[str, str | list[str]] = {
            var: option.default for var, option in self.options.items()
        }
        self._defaults.update(defaults or {})

    def default_config(self) -> NodeConfig:
        """A new node's settings (XEP-0060 §8.3)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._defaults.items()}

    def _choices(self, option: Option) -> tuple[str, ...]:
        if option.var == "pubsub#access_model":
            return self.access_models
        if option.var == "pubsub#publish_model":
            return self.publish_models
        return option.choices

    def apply(self, config: NodeConfig, values: Mapping[str, list[str]]) -> NodeConfig:
        """`config` with submitted values applied; ValueError for unknown fields or values."""
        changed = dict(config)
        for var, submitted in values.items():
            option = self.options.get(var)
            if option is None:
                raise ValueError(f"unsupported option {var}")
            changed[var] = option.normalize(submitted, self.item_cap, self._choices(option))
        return changed

    def config_form(self, config: NodeConfig, form_type: str = "form") -> Element:
        """The pubsub#node_config form (XEP-0060 §8.2.1, §16.4.4) showing `config`."""
        fields = []
        for var, option in self.options.items():
            value = config.get(var, self._defaults[var])
            values = list(value) if isinstance(value, list) else [value]
            fields.append(
                Field(
                    var,
                    option.type,
                    values,
                    label=option.label,
                    options=[(None, choice) for choice in self._choices(option)],
                )
            )
        return Form.with_type(NODE_CONFIG, fields, type=form_type).to_element()

    def item_limit(self, config: NodeConfig) -> int:
        """Items a node keeps: its pubsub#max_items, at most the service's cap."""
        value = config.get("pubsub#max_items", "max")
        return self.item_cap if value == "max" else min(self.item_cap, int(str(value)))


def check_name(name: str | None, what: str = "NodeID") -> str:
    """A NodeID from a request: required (XEP-0060 §7.1.3 ...) and within the storage's
    bound."""
    if not name:
        raise errors.NodeIdRequired()
    if len(name.encode()) > MAX_NAME_BYTES:
        raise errors.NameTooLong(f"{what}s are limited to {MAX_NAME_BYTES} bytes")
    return name


def submitted_config(parent: Element | None) -> dict[str, list[str]] | None:
    """The values of the node_config form in `parent` (<configure/>, XEP-0060 §8.1.3,
    §8.2.4); None for no form or a cancelled one (§8.2.5)."""
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
        raise errors.BadRequest(str(exc)) from None


def publish_options(element: Element | None) -> dict[str, list[str]] | None:
    """The values of a <publish-options/> (XEP-0060 §7.1.5); None when absent or empty
    (no preconditions)."""
    if element is None:
        return None
    x = find_form(element)
    if x is None:
        return None
    try:
        form = parse_form(x)
        if form.form_type != PUBLISH_OPTIONS:
            raise FormError("the FORM_TYPE must be " + PUBLISH_OPTIONS)
        return submitted_values(x, PUBLISH_OPTIONS)
    except FormError as exc:
        raise errors.BadRequest(str(exc)) from None


#: XEP-0060 §16.4.2 pubsub#show-values: the presence states (RFC 6121 §4.7.2.1 <show/>,
#: 'online' for none) in which a subscriber wants notifications.
SHOW_VALUES = ("away", "chat", "dnd", "online", "xa")
#: The subscription options offered (§6.3, §16.4.2) and their defaults: pubsub#deliver
#: (notifications at all) and pubsub#show-values (for presence-based delivery).
SUBSCRIPTION_DEFAULTS: dict[str, list[str]] = {
    "pubsub#deliver": ["true"],
    "pubsub#show-values": list(SHOW_VALUES),
}


def subscription_options(values: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Submitted subscription options (§6.3.5) checked and normalized, only those that
    differ from the defaults kept; InvalidOptions for unknown fields or values."""
    kept: dict[str, list[str]] = {}
    for var, submitted in values.items():
        if var == "pubsub#deliver":
            if len(submitted) != 1 or submitted[0].strip() not in ("0", "1", "false", "true"):
                raise errors.InvalidOptions("pubsub#deliver must be a boolean")
            value = ["true" if submitted[0].strip() in ("1", "true") else "false"]
        elif var == "pubsub#show-values":
            value = sorted({v.strip() for v in submitted if v.strip()})
            if any(v not in SHOW_VALUES for v in value):
                raise errors.InvalidOptions(f"pubsub#show-values are {', '.join(SHOW_VALUES)}")
        else:
            raise errors.InvalidOptions(f"unsupported subscription option {var}")
        if value != SUBSCRIPTION_DEFAULTS[var]:
            kept[var] = value
    return kept


def submitted_subscription_options(parent: Element | None) -> dict[str, list[str]] | None:
    """The pubsub#subscribe_options form in `parent` (<options/>, §6.3.5, §6.3.7);
    None when there is none."""
    if parent is None:
        return None
    x = find_form(parent)
    if x is None:
        return None
    try:
        return subscription_options(submitted_values(x, SUBSCRIBE_OPTIONS))
    except FormError as exc:
        raise errors.InvalidOptions(str(exc)) from None


def subscription_options_form(options: Mapping[str, list[str]], form_type: str = "form") -> Element:
    """The pubsub#subscribe_options form (§6.3.2, §6.4) showing `options` over the
    defaults."""
    values = {**SUBSCRIPTION_DEFAULTS, **options}
    fields = [
        Field(
            "pubsub#deliver",
            "boolean",
            values["pubsub#deliver"],
            label="Enable delivery?",
        ),
        Field(
            "pubsub#show-values",
            "list-multi",
            values["pubsub#show-values"],
            label="Receive notifications only when your presence is one of these",
            options=[(None, show) for show in SHOW_VALUES],
        ),
    ]
    return Form.with_type(SUBSCRIBE_OPTIONS, fields, type=form_type).to_element()


def delivers(options: Mapping[str, list[str]], show: str | None = None) -> bool:
    """Does a subscription with `options` get notifications (pubsub#deliver), and, when
    `show` is given (presence-based delivery), in that presence state?"""
    if options.get("pubsub#deliver", ["true"]) == ["false"]:
        return False
    if show is None:
        return True
    return show in options.get("pubsub#show-values", SUBSCRIPTION_DEFAULTS["pubsub#show-values"])


def parse_payload(text: str, item_id: str, node: str) -> Element | None:
    """A stored payload; None (logged) when unreadable: the item is served without it."""
    return parse_stored(text, f"payload of pubsub item {item_id!r} of node {node!r}")


class Node:
    """A node as kept in memory: settings, affiliations, explicit subscriptions and the
    last published item (with its parsed payload, parsed once)."""

    __slots__ = ("affiliations", "config", "last", "last_payload", "name", "subscriptions")

    def __init__(self, name: str, config: NodeConfig) -> None:
        self.name = name
        self.config = dict(config)
        #: bare JID -> affiliation (XEP-0060 §4.1); an implicit owner is not listed.
        self.affiliations: dict[str, str] = {}
        #: subscribed JID (bare or full) -> its subscription (§4.2).
        self.subscriptions: dict[str, PubSubSubscription] = {}
        self.last: PubSubItem | None = None
        self.last_payload: Element | None = None

    def flag(self, var: str) -> bool:
        return self.config.get(var) == "true"

    @property
    def access_model(self) -> str:
        return str(self.config["pubsub#access_model"])

    @property
    def roster_groups(self) -> list[str]:
        groups = self.config.get("pubsub#roster_groups_allowed", [])
        return list(groups) if isinstance(groups, list) else [groups]

    def subscribers(self) -> list[str]:
        """JIDs (bare or full) with a 'subscribed' subscription (§4.2)."""
        return [jid for jid, sub in self.subscriptions.items() if sub.state == "subscribed"]

    def subscription_of(self, bare: str) -> str | None:
        """The asker's subscription state: 'subscribed' if any of its JIDs is, else
        'pending' if one waits, else None."""
        found = None
        for jid, sub in self.subscriptions.items():
            if jid == bare or jid.startswith(bare + "/"):
                if sub.state == "subscribed":
                    return "subscribed"
                found = sub.state
        return found

    def allows(self, asker: Asker) -> bool:
        """May `asker` see this node (items, notifications, disco)? (XEP-0060 §4.5)"""
        model = self.config["pubsub#access_model"]
        subscription = None
        if model == "authorize" and not asker.is_owner:
            subscription = self.subscription_of(asker.jid)
        groups = self.roster_groups if model == "roster" else ()
        return allows(str(model), groups, asker, self.affiliations.get(asker.jid), subscription)

    def denial(self, asker: Asker) -> PubSubError | None:
        """The XEP-0060 §6.1.3 / §6.5.9 error refusing `asker`, or None."""
        affiliation = self.affiliations.get(asker.jid)
        subscription = None
        if self.access_model == "authorize" and not asker.is_owner:
            subscription = self.subscription_of(asker.jid)
        return denial(self.access_model, self.roster_groups, asker, affiliation, subscription)

    def payload_of_last(self) -> Element | None:
        if self.last is None or self.last.payload is None:
            return None
        if self.last_payload is None:
            self.last_payload = parse_payload(self.last.payload, self.last.id, self.name)
        return self.last_payload

    def sends_last_on(self, occasion: str) -> bool:
        """XEP-0060 §6.1.7 ('sub') / XEP-0163 §4.3.3 ('presence'): is the last item sent
        then (there is one, notifications are on, pubsub#send_last_published_item)?"""
        if self.last is None or not self.flag("pubsub#deliver_notifications"):
            return False
        when = self.config.get("pubsub#send_last_published_item")
        if occasion == "presence":
            return when == "on_sub_and_presence"
        return when in ("on_sub", "on_sub_and_presence")
