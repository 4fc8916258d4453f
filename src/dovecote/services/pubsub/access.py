"""Access models (XEP-0060 §4.5) as pure functions over who is asking.

The caller fills an `Asker` with what it knows about the requesting entity in relation to
the service's owner (is it the owner, does it have a presence subscription to the owner,
its groups in the owner's roster); the node gives its access model, its allowed roster
groups, the asker's affiliation (§4.1) and explicit subscription state (§4.2). Nothing here
reads storage or a roster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dovecote.services.pubsub import errors

#: XEP-0060 §4.5: every access model the engine knows.
ACCESS_MODELS = ("authorize", "open", "presence", "roster", "whitelist")
#: Affiliations (XEP-0060 §4.1) that see a node whatever its access model.
_INSIDERS = frozenset(("owner", "publisher", "member"))
#: Affiliations that may neither subscribe nor retrieve items (§4.1 table): an outcast,
#: and a publish-only entity (it publishes, never receives).
_KEPT_OUT = frozenset(("outcast", "publish-only"))


@dataclass(slots=True)
class Asker:
    """Who asks, as the caller knows them: `jid` (a bare JID), whether that is an owner of
    the service (an account's PEP service: the account, XEP-0163 §1), whether it receives
    the owner's presence (subscription 'from' or 'both' in the owner's roster, RFC 6121
    §3) and its groups in the owner's roster."""

    jid: str
    is_owner: bool = False
    presence_subscription: bool = False
    roster_groups: Iterable[str] = ()


def allows(
    access_model: str,
    allowed_groups: Iterable[str],
    asker: Asker,
    affiliation: str | None = None,
    subscription: str | None = None,
) -> bool:
    """May `asker` retrieve a node's items and receive its notifications (XEP-0060 §4.5)?
    `subscription`: the asker's explicit subscription state ('subscribed', 'pending' or
    None), which matters to 'authorize'. (On the fan-out path: builds nothing.)"""
    if asker.is_owner:
        return True
    if affiliation is not None:
        if affiliation in _INSIDERS:
            return True
        if affiliation in _KEPT_OUT:
            return False
    if access_model == "presence":
        return asker.presence_subscription
    if access_model == "open":
        return True
    if access_model == "roster":
        return not set(asker.roster_groups).isdisjoint(allowed_groups)
    if access_model == "authorize":
        return subscription == "subscribed"
    return False  # whitelist (and anything unknown: closed)


def denial(
    access_model: str,
    allowed_groups: Iterable[str],
    asker: Asker,
    affiliation: str | None = None,
    subscription: str | None = None,
) -> errors.PubSubError | None:
    """The error refusing `asker` a node's items and notifications (XEP-0060 §6.5.9,
    §6.1.3), or None when `allows` lets it in."""
    if allows(access_model, allowed_groups, asker, affiliation, subscription):
        return None
    if affiliation == "outcast":
        return errors.Forbidden("blocked from the node")  # §6.1.3.8, §6.5.9.12
    if affiliation == "publish-only":
        return errors.Forbidden("a publish-only affiliate receives nothing")  # §4.1
    if access_model == "presence":
        return errors.PresenceSubscriptionRequired()
    if access_model == "roster":
        return errors.NotInRosterGroup()
    if access_model == "authorize":
        return errors.NotSubscribedToRetrieve()
    return errors.ClosedNode()


def subscription_state(
    access_model: str,
    allowed_groups: Iterable[str],
    asker: Asker,
    affiliation: str | None = None,
    subscription: str | None = None,
) -> str:
    """The state a subscription request gets (XEP-0060 §6.1): 'subscribed', or 'pending'
    on an 'authorize' node until the owner approves (§6.1.4); raises the §6.1.3 error
    otherwise (a request while one is pending: §6.1.3.7)."""
    if access_model == "authorize" and not asker.is_owner and affiliation not in _INSIDERS:
        if affiliation in _KEPT_OUT:
            raise errors.Forbidden("blocked from the node")
        if subscription == "pending":
            raise errors.PendingSubscription()
        return subscription or "pending"
    refused = denial(access_model, allowed_groups, asker, affiliation, subscription)
    if refused is not None:
        raise refused
    return "subscribed"
