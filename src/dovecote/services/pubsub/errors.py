"""The error conditions of XEP-0060 as typed exceptions.

Each carries the RFC 6120 §8.3.3 defined condition and, where XEP-0060 names one, the
application-specific child of the ``http://jabber.org/protocol/pubsub#errors`` namespace
(XEP-0060 §14, schema in §17.3). The engine raises them; a front end turns them into stanza
errors with `to_stanza_error`.
"""

from __future__ import annotations

from dovecote.stream.errors import StanzaError
from dovecote.xml.element import Element

PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"


class PubSubError(Exception):
    """A request the service refuses: `condition` (RFC 6120), `pubsub_condition` (XEP-0060
    §14, or None) and, for <unsupported/>, the `feature` that is missing."""

    condition = "bad-request"
    pubsub_condition: str | None = None
    #: The error type XEP-0060's example shows, where it differs from RFC 6120's default.
    error_type: str | None = None

    def __init__(
        self, text: str = "", *, feature: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(text or self.pubsub_condition or self.condition)
        self.text = text
        self.feature = feature
        if error_type is not None:
            self.error_type = error_type

    def app_condition(self) -> Element | None:
        """The <pubsub_condition xmlns='...#errors'/> child, if any."""
        if self.pubsub_condition is None:
            return None
        attrs = {"feature": self.feature} if self.feature else {}
        return Element(self.pubsub_condition, PUBSUB_ERRORS, attrs)


def to_stanza_error(error: PubSubError) -> StanzaError:
    """The stanza error (RFC 6120 §8.3) answering a request the engine refused."""
    return StanzaError(
        error.condition, error.text, error.error_type, app_condition=error.app_condition()
    )


# ---- nodes and items --------------------------------------------------------------------
class NodeNotFound(PubSubError):
    """XEP-0060 §6.1.3.12, §6.5.9.11, §7.1.3.3, §8.2.3.5, §8.4.3.3: no such node."""

    condition = "item-not-found"


class ItemNotFound(PubSubError):
    """XEP-0060 §6.5.8 (a requested item that does not exist), §7.2.3.3 (retract)."""

    condition = "item-not-found"


class NodeExists(PubSubError):
    """XEP-0060 §8.1.3: a node with that NodeID exists already."""

    condition = "conflict"


class NodeIdRequired(PubSubError):
    """XEP-0060 §7.1.3 and others: the request names no node."""

    pubsub_condition = "nodeid-required"


class InstantNodesUnsupported(PubSubError):
    """XEP-0060 §8.1.2.3: a create without a NodeID, where instant nodes are not offered."""

    condition = "not-acceptable"
    pubsub_condition = "nodeid-required"


class NameTooLong(PubSubError):
    """A NodeID or ItemID longer than the storage keeps (XEP-0060 §12.13 sets no bound)."""

    condition = "not-acceptable"


class ItemRequired(PubSubError):
    """XEP-0060 §7.1.3.7 (publish), §7.2.3.4 (retract), §6.5.7: an item is needed."""

    pubsub_condition = "item-required"


class InvalidPayload(PubSubError):
    """XEP-0060 §7.1.3.5 (more than one payload or item)."""

    pubsub_condition = "invalid-payload"


class PayloadRequired(PubSubError):
    """XEP-0060 §7.1.3.6: the node delivers payloads but the item has none."""

    pubsub_condition = "payload-required"


class PreconditionNotMet(PubSubError):
    """XEP-0060 §7.1.5: publish-options the node does not match (or cannot take)."""

    condition = "conflict"
    pubsub_condition = "precondition-not-met"


class InvalidConfiguration(PubSubError):
    """XEP-0060 §8.1.3 / §8.2.5: a configuration form with unknown fields or values."""

    condition = "not-acceptable"


class MaxNodesExceeded(PubSubError):
    """Too many nodes for one service: XEP-0060 names no error, so, like too many
    subscriptions (§6.1.3.9, local policy), policy-violation with <max-nodes-exceeded/>."""

    condition = "policy-violation"
    pubsub_condition = "max-nodes-exceeded"


# ---- who may do what ----------------------------------------------------------------------
class Forbidden(PubSubError):
    """XEP-0060 §7.1.3.1 (not a publisher), §8 (not an owner), §6.1.3.8 / §6.5.9.12
    (an outcast)."""

    condition = "forbidden"


class PresenceSubscriptionRequired(PubSubError):
    """XEP-0060 §6.1.3.2, §6.5.9.8: the 'presence' access model."""

    condition = "not-authorized"
    pubsub_condition = "presence-subscription-required"


class NotInRosterGroup(PubSubError):
    """XEP-0060 §6.1.3.3, §6.5.9.9: the 'roster' access model."""

    condition = "not-authorized"
    pubsub_condition = "not-in-roster-group"


class ClosedNode(PubSubError):
    """XEP-0060 §6.1.3.4, §6.5.9.10: the 'whitelist' access model."""

    condition = "not-allowed"
    pubsub_condition = "closed-node"


class PendingSubscription(PubSubError):
    """XEP-0060 §6.1.3.7: a subscription waits for the owner's approval."""

    condition = "not-authorized"
    pubsub_condition = "pending-subscription"


class NotSubscribedToRetrieve(PubSubError):
    """XEP-0060 §6.5.9.3: the 'authorize' access model gives items to subscribers only."""

    condition = "not-authorized"
    pubsub_condition = "not-subscribed"


class NotSubscribed(PubSubError):
    """XEP-0060 §6.2.3.2: unsubscribing something that is not subscribed (type cancel;
    §6.3.4.4, options of no subscription: type modify)."""

    condition = "unexpected-request"
    error_type = "cancel"
    pubsub_condition = "not-subscribed"


class InvalidSubId(PubSubError):
    """XEP-0060 §6.2.3.5: a SubID that is not the subscription's."""

    condition = "not-acceptable"
    pubsub_condition = "invalid-subid"


class InvalidJid(PubSubError):
    """XEP-0060 §6.1.3.1, §6.2.3.3: the subscriber JID is not the requester's own."""

    pubsub_condition = "invalid-jid"


class Unsupported(PubSubError):
    """XEP-0060 §14: a feature (named by `feature`) this service does not offer."""

    condition = "feature-not-implemented"
    pubsub_condition = "unsupported"


class NotAcceptable(PubSubError):
    """A request the service cannot take as it stands (affiliations PEP cannot set,
    XEP-0060 §8.9.2.4)."""

    condition = "not-acceptable"


class BadRequest(PubSubError):
    """A malformed request: a broken data form, a bad max_items (RFC 6120 §8.3.3.1)."""


class TooManySubscriptions(PubSubError):
    """XEP-0060 §6.1.3.9: the node has as many subscriptions as the service allows."""

    condition = "policy-violation"
    pubsub_condition = "too-many-subscriptions"
    error_type = "wait"


class PayloadTooBig(PubSubError):
    """XEP-0060 §7.1.3.4: the payload exceeds the service's limit."""

    condition = "not-acceptable"
    pubsub_condition = "payload-too-big"


class InvalidOptions(PubSubError):
    """XEP-0060 §6.3.5: a subscription options form with unknown fields or values."""

    pubsub_condition = "invalid-options"


class JidRequired(PubSubError):
    """XEP-0060 §6.3.4.3: an options request naming no subscriber JID."""

    pubsub_condition = "jid-required"
