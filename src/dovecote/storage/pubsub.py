"""Storage interface for publish-subscribe (XEP-0060): nodes, items, subscriptions and
affiliations of any number of pubsub services.

A service is named by its owner's JID as (local, domain), like every other store:

  * an account's personal eventing service (XEP-0163 PEP) is the account's own
    (local, domain), and its data goes when the account is deleted;
  * a pubsub service on a domain of its own (XEP-0060, e.g. pubsub.example.org) is
    ("", "pubsub.example.org"); a JID with a localpart that is not an account (a MUC room's
    node, ...) works the same way.

Node configuration is kept as a data form's values (``{"pubsub#max_items": "max", ...}``)
so the store does not need to know the options a service supports. Payloads are serialized
XML. Items are ordered by publication: publishing an id again replaces the item and makes it
the newest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

#: A node's configuration: data form field var -> value (list-multi fields: a list).
NodeConfig = dict[str, str | list[str]]


@dataclass(slots=True)
class PubSubNode:
    """A node (XEP-0060 §4.4): its NodeID and configuration."""

    name: str
    config: NodeConfig = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(slots=True)
class PubSubItem:
    """A published item (XEP-0060 §7.1): its ItemID, payload, publisher and time."""

    id: str
    #: The payload element, serialized; None for a notification-only item.
    payload: str | None
    #: The publisher as stamped by the service (XEP-0060 §7.1.2), full or bare JID.
    publisher: str
    #: When it was published (or last republished).
    published_at: datetime


@dataclass(slots=True)
class PubSubSubscription:
    """An explicit subscription (XEP-0060 §6.1) of `jid` (bare or full) to `node`."""

    node: str
    jid: str
    #: "subscribed", "pending" or "unconfigured" (XEP-0060 §4.2).
    state: str
    subid: str = ""
    #: Subscription options (XEP-0060 §6.3, pubsub#subscribe_options): var -> values;
    #: empty: the defaults.
    options: dict[str, list[str]] = field(default_factory=dict)


class PubSubStore(ABC):
    """Nodes, items, subscriptions and affiliations, per service (local, domain)."""

    # ---- nodes ----------------------------------------------------------------------
    @abstractmethod
    async def create_node(self, local: str, domain: str, node: str, config: NodeConfig) -> bool:
        """Create a node; False when it exists already (nothing changes then)."""

    @abstractmethod
    async def get_node(self, local: str, domain: str, node: str) -> PubSubNode | None: ...

    @abstractmethod
    async def list_nodes(self, local: str, domain: str) -> list[PubSubNode]:
        """Every node of the service, sorted by NodeID."""

    @abstractmethod
    async def configure_node(self, local: str, domain: str, node: str, config: NodeConfig) -> bool:
        """Replace a node's configuration; False when there is no such node."""

    @abstractmethod
    async def delete_node(self, local: str, domain: str, node: str) -> bool:
        """Delete a node with its items, subscriptions and affiliations; False if none."""

    @abstractmethod
    async def delete_service(self, local: str, domain: str) -> None:
        """Delete every node of a service (an account's PEP data also goes with the
        account, see `AccountStore.delete`)."""

    # ---- items ----------------------------------------------------------------------
    @abstractmethod
    async def publish(
        self, local: str, domain: str, node: str, item: PubSubItem, max_items: int | None
    ) -> list[str]:
        """Store an item as the node's newest (replacing one with the same id), then keep
        only the newest `max_items` (None: no limit); returns the ids removed to make
        room. Raises StorageError when the node does not exist."""

    @abstractmethod
    async def get_items(
        self,
        local: str,
        domain: str,
        node: str,
        *,
        item_ids: Iterable[str] | None = None,
        max_items: int | None = None,
    ) -> list[PubSubItem]:
        """Items oldest first: those named by `item_ids` (the ones that exist), else all,
        or the newest `max_items` of them (XEP-0060 §6.5.7)."""

    @abstractmethod
    async def last_items(self, local: str, domain: str) -> dict[str, PubSubItem]:
        """Each node's newest item (nodes without items are left out)."""

    @abstractmethod
    async def retract(self, local: str, domain: str, node: str, item_id: str) -> bool:
        """Delete an item; False when there was none."""

    @abstractmethod
    async def purge(self, local: str, domain: str, node: str) -> None:
        """Delete all of a node's items (XEP-0060 §8.5)."""

    # ---- subscriptions and affiliations -------------------------------------------------
    @abstractmethod
    async def get_subscriptions(
        self, local: str, domain: str, node: str | None = None
    ) -> list[PubSubSubscription]:
        """The service's explicit subscriptions (of one node when given)."""

    @abstractmethod
    async def set_subscription(
        self,
        local: str,
        domain: str,
        node: str,
        jid: str,
        state: str | None,
        subid: str = "",
        options: dict[str, list[str]] | None = None,
    ) -> None:
        """Create or change a subscription (with its options, XEP-0060 §6.3); state None
        removes it."""

    @abstractmethod
    async def get_affiliations(
        self, local: str, domain: str, node: str | None = None
    ) -> list[tuple[str, str, str]]:
        """(node, jid, affiliation) of the service (of one node when given); the owner of
        a PEP service is implicit and not listed."""

    @abstractmethod
    async def set_affiliation(
        self, local: str, domain: str, node: str, jid: str, affiliation: str | None
    ) -> None:
        """Set an affiliation (XEP-0060 §4.1); None or "none" removes it."""
