"""What both XEP-0060 front ends (PEP, `modules/pep.py`; the pubsub service,
`modules/pubsub.py`) need between stanzas and the engine: reading the JIDs and lists of a
request, and building the result elements (§5 .. §8) from what the engine returns.

Nothing here knows sessions or the router: functions take elements and engine objects and
return elements (or raise `PubSubError` / `StanzaError`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from dovecote.jid import JID, InvalidJID
from dovecote.services.pubsub import errors
from dovecote.services.pubsub.errors import PubSubError, to_stanza_error
from dovecote.services.pubsub.node import Node, NodePolicy, subscription_options_form
from dovecote.services.pubsub.ns import META_DATA, PUBSUB, PUBSUB_EVENT, PUBSUB_OWNER
from dovecote.storage.pubsub import PubSubItem, PubSubSubscription
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.forms import Field, Form

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.services.pubsub.engine import PubSubService

Handler = Callable[["StanzaEvent"], Awaitable[bool]]


def answers_pubsub_errors(handler: Handler) -> Handler:
    """The engine's XEP-0060 errors as stanza errors (RFC 6120 §8.3) for the router."""

    @functools.wraps(handler)
    async def wrapper(event: StanzaEvent) -> bool:
        try:
            return await handler(event)
        except PubSubError as exc:
            raise to_stanza_error(exc) from None

    return wrapper


def pubsub(*children: Element, owner: bool = False) -> Element:
    """<pubsub xmlns='...pubsub'/> (or '...#owner') around `children`."""
    return Element("pubsub", PUBSUB_OWNER if owner else PUBSUB, {}, list(children))


# ---- reading requests -----------------------------------------------------------------------
def subscriber_jid(sender: JID, action: Element) -> JID:
    """The 'jid' of a <subscribe/> / <unsubscribe/> / <options/>: the requester's own,
    bare or full (§6.1.3.1, §6.2.3.3: bad-request + <invalid-jid/>)."""
    text = action.get("jid")
    try:
        jid = JID.parse(text) if text else None
    except InvalidJID:
        jid = None
    if jid is None or jid.bare != sender.bare:
        raise errors.InvalidJid()
    return jid


def parse_jid(text: str | None, what: str) -> JID:
    """A JID an owner names (affiliations, subscriptions): jid-malformed when it is none."""
    try:
        if not text:
            raise InvalidJID("empty")
        return JID.parse(text)
    except InvalidJID:
        raise StanzaError("jid-malformed", f"invalid {what} jid") from None


def affiliation_changes(action: Element, allowed: Iterable[str]) -> list[tuple[str, str]]:
    """(bare JID, affiliation) pairs of an owner's <affiliations/> (§8.9.2): a JID that is
    none is jid-malformed, an affiliation not in `allowed` not-acceptable (§8.9.2.4)."""
    allowed = tuple(allowed)
    changes = []
    for el in action.find_all("affiliation", PUBSUB_OWNER):
        jid = parse_jid(el.get("jid"), "affiliation").bare
        affiliation = el.get("affiliation") or ""
        if affiliation not in allowed:
            raise StanzaError("not-acceptable", f"cannot set {affiliation!r} for {jid}")
        changes.append((str(jid), affiliation))
    return changes


def subscription_changes(action: Element) -> list[tuple[str, str]]:
    """(JID, state) pairs of an owner's <subscriptions/> (§8.8.2); a JID that is none is
    jid-malformed."""
    changes = []
    for el in action.find_all("subscription", PUBSUB_OWNER):
        jid = parse_jid(el.get("jid"), "subscription")
        changes.append((str(jid), el.get("subscription") or ""))
    return changes


# ---- building results ---------------------------------------------------------------------
def subscription_element(
    subscription: PubSubSubscription, namespace: str = PUBSUB, node: bool = True
) -> Element:
    """<subscription node jid subid subscription/> (§5.6, §6.1.2, §8.8.1)."""
    attrs = {"jid": subscription.jid, "subscription": subscription.state}
    if node:
        attrs = {"node": subscription.node, **attrs}
    if subscription.subid and subscription.state != "none":
        attrs["subid"] = subscription.subid
    return Element("subscription", namespace, attrs)


def subscribe_result(subscription: PubSubSubscription, with_options: bool = False) -> Element:
    """§6.1.2 (with <subscribe-options/> when options may be set, §6.1.5)."""
    result = pubsub(subscription_element(subscription))
    if with_options and subscription.state == "subscribed":
        result.children[0].add("subscribe-options")  # type: ignore[union-attr]
    return result


def publish_result(name: str, item_id: str) -> Element:
    """§7.1.2: the node and the ItemID published."""
    published = Element("publish", PUBSUB, {"node": name})
    published.add("item", attrs={"id": item_id})
    return pubsub(published)


def items_result(node: Node, found: Iterable[tuple[PubSubItem, Element | None]]) -> Element:
    """§6.5.2: <items node=...> with each item (and its publisher when pubsub#itemreply
    says so)."""
    result = Element("items", PUBSUB, {"node": node.name})
    for item, payload in found:
        el = Element("item", PUBSUB, {"id": item.id})
        if node.config.get("pubsub#itemreply") == "publisher":
            el.attrs["publisher"] = item.publisher
        if payload is not None:
            el.append(payload)
        result.append(el)
    return pubsub(result)


def own_subscriptions(service: PubSubService, bare: JID, only: str | None) -> Element:
    """§5.6: the requester's subscriptions (of one node when `only`)."""
    listing = Element("subscriptions", PUBSUB, {"node": only} if only else {})
    for subscription in service.subscriptions_of(str(bare), only):
        listing.append(subscription_element(subscription))
    return pubsub(listing)


def own_affiliations(service: PubSubService, bare: JID, only: str | None) -> Element:
    """§5.7: the requester's affiliations (of one node when `only`)."""
    listing = Element("affiliations", PUBSUB, {"node": only} if only else {})
    for name, affiliation in service.affiliations_of(str(bare), only):
        listing.add("affiliation", attrs={"node": name, "affiliation": affiliation})
    return pubsub(listing)


def node_affiliations(name: str, pairs: Iterable[tuple[str, str]]) -> Element:
    """§8.9.1: an owner's view of a node's affiliations."""
    answer = Element("affiliations", PUBSUB_OWNER, {"node": name})
    for jid, affiliation in pairs:
        answer.add("affiliation", attrs={"jid": jid, "affiliation": affiliation})
    return pubsub(answer, owner=True)


def node_subscriptions(name: str, subscriptions: Iterable[PubSubSubscription]) -> Element:
    """§8.8.1: an owner's view of a node's subscriptions."""
    answer = Element("subscriptions", PUBSUB_OWNER, {"node": name})
    for subscription in subscriptions:
        answer.append(subscription_element(subscription, PUBSUB_OWNER, node=False))
    return pubsub(answer, owner=True)


def configure_result(policy: NodePolicy, node: Node) -> Element:
    """§8.2.1: the node's configuration form."""
    form = policy.config_form(node.config)
    return pubsub(Element("configure", PUBSUB_OWNER, {"node": node.name}, [form]), owner=True)


def default_config_result(policy: NodePolicy) -> Element:
    """§8.3: the default node configuration."""
    form = policy.config_form(policy.default_config())
    return pubsub(Element("default", PUBSUB_OWNER, {}, [form]), owner=True)


def create_result(name: str) -> Element:
    """§8.1.2: the NodeID of an instant node."""
    return pubsub(Element("create", PUBSUB, {"node": name}))


def options_result(subscription: PubSubSubscription) -> Element:
    """§6.3.2: a subscription's options form."""
    options = Element("options", PUBSUB, {"node": subscription.node, "jid": subscription.jid})
    if subscription.subid:
        options.attrs["subid"] = subscription.subid
    options.append(subscription_options_form(subscription.options))
    return pubsub(options)


def default_options_result(name: str | None) -> Element:
    """§6.4: the default subscription options (of a node, or of the service)."""
    default = Element("default", PUBSUB, {"node": name} if name else {})
    default.append(subscription_options_form({}))
    return pubsub(default)


def node_info(node: Node, owners: Iterable[str], features: Iterable[str] = (PUBSUB,)) -> Element:
    """§5.3, §5.4: disco#info of a (leaf) node with its pubsub#meta-data form."""
    result = Element("query", ns.DISCO_INFO, {"node": node.name})
    result.add("identity", attrs={"category": "pubsub", "type": "leaf"})
    for feature in features:
        result.add("feature", attrs={"var": feature})
    meta = [
        Field("pubsub#type", values=[str(node.config.get("pubsub#type", ""))])
        if node.config.get("pubsub#type")
        else None,
        Field("pubsub#access_model", values=[node.access_model]),
        Field("pubsub#owner", "jid-multi", list(owners)),
        Field("pubsub#publish_model", values=[str(node.config.get("pubsub#publish_model"))]),
    ]
    for var in ("pubsub#title", "pubsub#description"):
        if node.config.get(var):
            meta.append(Field(var, values=[str(node.config[var])]))
    fields = [f for f in meta if f is not None]
    result.append(Form.with_type(META_DATA, fields, type="result").to_element())
    return result


def subscription_event(subscription: PubSubSubscription) -> Element:
    """§8.6 (and §8.8.4): the <subscription/> notification telling an entity the state
    its subscription has now."""
    return Element("event", PUBSUB_EVENT, {}, [subscription_element(subscription, PUBSUB_EVENT)])
