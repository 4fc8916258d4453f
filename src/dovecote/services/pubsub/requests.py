"""Reading XEP-0060 requests: the action of a <pubsub/> element and its parts, shared by
the front ends (PEP, a pubsub domain) that turn stanzas into engine calls."""

from __future__ import annotations

from dovecote.services.pubsub import errors
from dovecote.services.pubsub.node import MAX_NAME_BYTES, check_name
from dovecote.services.pubsub.ns import PUBSUB
from dovecote.xml.element import Element

#: The elements that are a request's action (XEP-0060 §6, §7, §8).
ACTIONS = frozenset(
    """publish retract create subscribe unsubscribe items subscriptions affiliations default
    configure delete purge""".split()
)


def action_of(pubsub: Element) -> Element:
    """The request's action; <publish-options/>, <options/> and (in the pubsub namespace)
    <configure/> only accompany one (XEP-0060 §7.1.5, §6.3.7, §8.1.3)."""
    children = list(pubsub.elements)
    for child in children:
        if child.tag in ACTIONS and not (child.tag == "configure" and pubsub.ns == PUBSUB):
            return child
    if children:
        return children[0]
    raise errors.BadRequest("no pubsub action")


def node_name(action: Element) -> str:
    """The action's NodeID (required, bounded)."""
    return check_name(action.get("node"))


def publish_item(action: Element) -> tuple[str | None, Element | None]:
    """The ItemID (None: the service makes one up, §7.1.4) and payload of a <publish/>:
    exactly one item (§7.1.3.7, §7.1.3.5), at most one payload."""
    items = action.find_all("item", PUBSUB)
    if len(items) > 1:
        raise errors.InvalidPayload("one item per publish")
    if not items:
        raise errors.ItemRequired()
    payloads = list(items[0].elements)
    if len(payloads) > 1:
        raise errors.InvalidPayload("one payload per item")
    item_id = items[0].get("id") or None
    if item_id is not None and len(item_id.encode()) > MAX_NAME_BYTES:
        raise errors.NameTooLong(f"ItemIDs are limited to {MAX_NAME_BYTES} bytes")
    return item_id, payloads[0] if payloads else None


def retract_item(action: Element) -> str:
    """The ItemID of a <retract/> (§7.2.3.4: required)."""
    item = action.find("item", PUBSUB)
    item_id = item.get("id") if item is not None else None
    if not item_id:
        raise errors.ItemRequired()
    return item_id


def notify_flag(action: Element) -> bool | None:
    """A <retract notify='...'/> (§7.2.2.1); None when the node's setting decides."""
    value = action.get("notify")
    if value is None:
        return None
    return value in ("1", "true")


def items_request(action: Element) -> tuple[int | None, list[str]]:
    """max_items (§6.5.7) and the ItemIDs asked for (§6.5.8) of an <items/>."""
    max_text = action.get("max_items")
    max_items = None
    if max_text is not None:
        if not max_text.isdigit() or int(max_text) < 1:
            raise errors.BadRequest("max_items must be a positive integer")
        max_items = int(max_text)
    wanted = [el.get("id") or "" for el in action.find_all("item", PUBSUB)]
    if any(not item_id for item_id in wanted):
        raise errors.ItemRequired()
    return max_items, wanted
