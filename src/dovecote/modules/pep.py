"""XEP-0163: Personal Eventing Protocol — every account is a pubsub service (XEP-0060) whose
owner publishes and whose contacts are notified according to their presence subscription
and the interests their clients announce with entity capabilities (XEP-0115, caps.py).

This module is the PEP front end: it reads the stanzas, fills in who is asking (the
owner's roster), calls the XEP-0060 engine (`services/pubsub`, one `PubSubService` per
account, cached) and turns its results into answers and notifications. What is
implemented (XEP-0163 §5, XEP-0060):

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
  serialization for all of them; explicit subscribers get one more; none at all for a
  node with pubsub#deliver_notifications off (XEP-0060 §16.4.4);
- the last published item (§4.3.3) of each node a resource is interested in, when it
  sends initial presence, when it announces new caps (caps/updated), and when a contact's
  presence first reaches it (a subscription approved during the session);
- nothing between an owner and a contact either of them blocks (XEP-0191 §3.3);
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
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID, InvalidJID
from dovecote.modules import caps
from dovecote.services.pubsub import frontend, requests
from dovecote.services.pubsub.access import Asker
from dovecote.services.pubsub.engine import (
    PubSubService,
    last_item_message,
    notification_message,
)
from dovecote.services.pubsub.errors import Unsupported
from dovecote.services.pubsub.frontend import answers_pubsub_errors
from dovecote.services.pubsub.node import (
    Node,
    NodePolicy,
    publish_options,
    submitted_config,
)
from dovecote.services.pubsub.ns import PUBSUB, PUBSUB_OWNER
from dovecote.storage.base import Roster
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, escape_attr

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.storage.base import RosterItem

log = logging.getLogger(__name__)

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

#: The access models a PEP node may have (XEP-0163 §5 lists presence, open, roster and
#: whitelist; 'authorize' needs owner approval flows PEP does not have).
ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
#: XEP-0163 §5 defaults over XEP-0060's: presence access, last item sent on presence.
DEFAULTS: dict[str, str | list[str]] = {
    "pubsub#access_model": "presence",
    "pubsub#send_last_published_item": "on_sub_and_presence",
}
#: Owners whose service (nodes, settings, last items) stays in memory, least recently
#: used dropped.
CACHE_SIZE = 1000
#: Per session: what it was sent last items for (see `Interest`).
INTEREST = SessionSlot["Interest"]("pep.interest")
#: The affiliations an owner may set on a PEP node (§8.9.2.4: the owner is implicit).
AFFILIATIONS = ("member", "outcast", "none")


def policy(max_nodes: int, item_cap: int) -> NodePolicy:
    """What PEP nodes may be: XEP-0163 §5 defaults, its access models, the `[pep]` limits."""
    return NodePolicy(
        defaults=DEFAULTS, access_models=ACCESS_MODELS, item_cap=item_cap, max_nodes=max_nodes
    )


class Interest:
    """What a session was sent last items for since its initial presence: the nodes it
    said +notify for, and the owners (itself and contacts) checked for them."""

    __slots__ = ("nodes", "owners")

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.owners: set[JID] = set()


def interests(features: Iterable[str]) -> set[str]:
    """XEP-0163 §4.2 / XEP-0060 §9.2: the nodes named by NODE+notify features."""
    return {f[:-7] for f in features if f.endswith("+notify") and len(f) > 7}


def setup(server: Server) -> None:
    events = server.events
    sessions = server.sessions
    store = server.storage.pubsub
    node_policy = policy(server.config.pep.max_nodes_per_user, server.config.pep.max_items_per_node)
    #: The services recently used (strong references, LRU) ...
    services: OrderedDict[JID, PubSubService] = OrderedDict()
    #: ... and every service still in use (an evicted one a request holds): never two
    #: objects for one account.
    live: weakref.WeakValueDictionary[JID, PubSubService] = weakref.WeakValueDictionary()
    locks: weakref.WeakValueDictionary[JID, asyncio.Lock] = weakref.WeakValueDictionary()

    # ---- services in memory ------------------------------------------------------------
    def lock(owner: JID) -> asyncio.Lock:
        found = locks.get(owner)
        if found is None:
            found = locks[owner] = asyncio.Lock()
        return found

    def forget(owner: JID) -> None:
        services.pop(owner, None)
        live.pop(owner, None)

    @events.on("account/deleted")
    def forget_service(owner: JID) -> None:
        # Its nodes are gone from storage: contacts must not get them from the cache.
        forget(owner)

    def remember(service: PubSubService, owner: JID) -> None:
        services[owner] = service
        services.move_to_end(owner)
        while len(services) > CACHE_SIZE:
            services.popitem(last=False)

    async def service_of(owner: JID) -> PubSubService:
        """The owner's service, loaded (XEP-0163 §1: every account is one)."""
        service = services.get(owner) or live.get(owner)
        if service is None:
            service = PubSubService(
                store, owner.local or "", owner.domain, node_policy, owner=str(owner),
                lock=lock(owner),
            )  # fmt: skip
            live[owner] = service
        remember(service, owner)
        await service.load()
        return service

    async def roster_of(owner: JID) -> Roster:
        return await server.rosters.get(owner)

    async def asker(owner: JID, requester: JID) -> Asker:
        """Who asks, for the access models (XEP-0060 §4.5): the owner, or a JID with its
        presence subscription and groups in the owner's roster."""
        who = requester.bare
        if who == owner:
            return Asker(str(who), is_owner=True)
        item = (await roster_of(owner)).items.get(str(who))
        return Asker(
            str(who),
            presence_subscription=_subscribed_from(item),
            roster_groups=item.groups if item else (),
        )

    # ---- the request ---------------------------------------------------------------------
    def owner_of(event: StanzaEvent) -> JID:
        """XEP-0163 §1: one publisher per node, the account owner (forbidden otherwise)."""
        owner = event.to.bare
        if event.sender.bare != owner:
            raise StanzaError("forbidden", "only the account owner may do this")
        return owner

    def owner_asker(owner: JID) -> Asker:
        return Asker(str(owner), is_owner=True)

    @events.on(f"iq/bare/set/{PUBSUB}:pubsub")
    @answers_pubsub_errors
    async def pubsub_set(event: StanzaEvent) -> bool:
        pubsub = event.payload
        assert pubsub is not None
        action = requests.action_of(pubsub)
        handler = {
            "publish": publish,
            "retract": retract,
            "create": create,
            "subscribe": subscribe,
            "unsubscribe": unsubscribe,
        }.get(action.tag)
        if handler is None:
            if action.tag == "options":
                raise Unsupported(feature="subscription-options")
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        await handler(event, pubsub, action)
        return True

    @events.on(f"iq/bare/get/{PUBSUB}:pubsub")
    @answers_pubsub_errors
    async def pubsub_get(event: StanzaEvent) -> bool:
        pubsub = event.payload
        assert pubsub is not None
        action = requests.action_of(pubsub)
        if action.tag == "items":
            await get_items(event, action)
        elif action.tag == "subscriptions":
            await own_subscriptions(event, action)
        elif action.tag == "affiliations":
            await own_affiliations(event, action)
        elif action.tag in ("options", "default"):
            feature = "subscription-options" if action.tag == "options" else "retrieve-default-sub"
            raise Unsupported(feature=feature)
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        return True

    @events.on(f"iq/bare/get/{PUBSUB_OWNER}:pubsub")
    @answers_pubsub_errors
    async def owner_get(event: StanzaEvent) -> bool:
        owner = owner_of(event)
        pubsub = event.payload
        assert pubsub is not None
        action = requests.action_of(pubsub)
        if action.tag == "default":  # XEP-0060 §8.3
            answer = frontend.default_config_result(node_policy)
        elif action.tag == "configure":  # §8.2
            node = (await service_of(owner)).node(requests.node_name(action))
            answer = frontend.configure_result(node_policy, node)
        elif action.tag == "affiliations":  # §8.9.1
            name = requests.node_name(action)
            service = await service_of(owner)
            pairs = service.node_affiliations(name, owner_asker(owner))
            answer = frontend.node_affiliations(name, pairs)
        elif action.tag == "subscriptions":
            raise Unsupported(feature="manage-subscriptions")
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        event.reply(answer)
        return True

    @events.on(f"iq/bare/set/{PUBSUB_OWNER}:pubsub")
    @answers_pubsub_errors
    async def owner_set(event: StanzaEvent) -> bool:
        owner = owner_of(event)
        pubsub = event.payload
        assert pubsub is not None
        action = requests.action_of(pubsub)
        if action.tag == "configure":  # XEP-0060 §8.2
            name = requests.node_name(action)
            values = submitted_config(action)
            service = await service_of(owner)
            outcome = await service.configure_node(name, owner_asker(owner), values)
        elif action.tag == "delete":  # §8.4
            service = await service_of(owner)
            outcome = await service.delete_node(requests.node_name(action), owner_asker(owner))
        elif action.tag == "purge":  # §8.5
            service = await service_of(owner)
            outcome = await service.purge_node(requests.node_name(action), owner_asker(owner))
        elif action.tag == "affiliations":  # §8.9.2
            await set_affiliations(event, owner, action)
            return True
        elif action.tag == "subscriptions":
            raise Unsupported(feature="manage-subscriptions")
        else:
            raise StanzaError("feature-not-implemented", f"unsupported pubsub {action.tag}")
        event.reply()
        if outcome.event is not None:
            await notify(owner, outcome.node, outcome.event)
        return True

    # ---- publish and retract (XEP-0060 §7) ---------------------------------------------------
    async def publish(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        name = requests.node_name(action)
        item_id, payload = requests.publish_item(action)
        options = publish_options(pubsub.find("publish-options", PUBSUB))
        service = await service_of(owner)
        outcome = await service.publish(
            name,
            owner_asker(owner),
            item_id,
            payload,
            publisher=str(event.sender),
            options=options,
        )
        assert outcome.item is not None
        event.reply(frontend.publish_result(name, outcome.item.id))
        if outcome.event is not None:
            await notify(owner, outcome.node, outcome.event)

    async def retract(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        name = requests.node_name(action)
        item_id = requests.retract_item(action)
        service = await service_of(owner)
        outcome = await service.retract(
            name, owner_asker(owner), item_id, requests.notify_flag(action)
        )
        event.reply()
        if outcome.event is not None:
            await notify(owner, outcome.node, outcome.event)

    # ---- create (XEP-0060 §8.1) ----------------------------------------------------------------
    async def create(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = owner_of(event)
        values = submitted_config(pubsub.find("configure", PUBSUB))
        service = await service_of(owner)
        await service.create_node(action.get("node"), owner_asker(owner), values)
        event.reply()

    # ---- retrieve items (XEP-0060 §6.5) ----------------------------------------------------
    async def get_items(event: StanzaEvent, action: Element) -> None:
        owner = event.to.bare
        name = requests.node_name(action)
        service = await service_of(owner)
        who = await asker(owner, event.sender)
        service.check_access(service.node(name), who)
        max_items, wanted = requests.items_request(action)
        found = await service.get_items(name, who, max_items=max_items, item_ids=wanted)
        event.reply(frontend.items_result(service.node(name), found))

    # ---- subscriptions and affiliations (XEP-0060 §5.6, §5.7, §6.1, §6.2, §8.9) ------------
    async def subscribe(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = event.to.bare
        name = requests.node_name(action)
        jid = frontend.subscriber_jid(event.sender, action)
        service = await service_of(owner)
        outcome = await service.subscribe(name, await asker(owner, jid), str(jid))
        subscription = outcome.subscription
        assert subscription is not None
        event.reply(frontend.subscribe_result(subscription))
        if outcome.event is not None:  # §6.1.7: the last published item on subscription.
            message = last_item_message(str(owner), outcome.node)
            message.attrs["to"] = subscription.jid
            await server.router.route(message)

    async def unsubscribe(event: StanzaEvent, pubsub: Element, action: Element) -> None:
        owner = event.to.bare
        name = requests.node_name(action)
        jid = frontend.subscriber_jid(event.sender, action)
        service = await service_of(owner)
        await service.unsubscribe(
            name, Asker(str(jid.bare), is_owner=jid.bare == owner), str(jid), action.get("subid")
        )
        event.reply()

    async def own_subscriptions(event: StanzaEvent, action: Element) -> None:
        service = await service_of(event.to.bare)
        event.reply(frontend.own_subscriptions(service, event.sender.bare, action.get("node")))

    async def own_affiliations(event: StanzaEvent, action: Element) -> None:
        service = await service_of(event.to.bare)
        event.reply(frontend.own_affiliations(service, event.sender.bare, action.get("node")))

    async def set_affiliations(event: StanzaEvent, owner: JID, action: Element) -> None:
        name = requests.node_name(action)
        # §8.9.2.4: PEP has one owner; only member, outcast and none are set.
        changes = frontend.affiliation_changes(action, AFFILIATIONS)
        if any(jid == str(owner) for jid, _affiliation in changes):
            raise StanzaError("not-acceptable", f"cannot set an affiliation for {owner}")
        service = await service_of(owner)
        await service.set_affiliations(name, owner_asker(owner), changes)
        event.reply()

    # ---- notifications (XEP-0163 §4) --------------------------------------------------------
    async def recipients(owner: JID, node: Node) -> tuple[list[Any], list[JID]]:
        """The available sessions to notify (XEP-0163 §4.1): the owner's and those of the
        contacts the access model lets in, each with NODE+notify in its caps (§4.2); and
        the full JIDs of contacts on other servers whose caps say so (over s2s)."""
        feature = f"{node.name}+notify"
        targets = [s for s in sessions.available(owner, None) if feature in caps.features_of(s)]
        remote: list[JID] = []
        roster = await roster_of(owner)
        for contact, item in roster.items.items():
            if not _subscribed_from(item):
                continue
            try:
                contact_jid = JID.parse(contact)
            except InvalidJID:
                continue
            if contact_jid.domain in server.hosts:
                available = sessions.available(contact_jid, None)
                fulls: list[JID] = []
            else:
                available = []
                fulls = [
                    j
                    for j in caps.remote_available(server, contact_jid)
                    if feature in caps.remote_features(server, j)
                ]
            if not (available or fulls) or not node.allows(
                Asker(contact, presence_subscription=True, roster_groups=item.groups)
            ):
                continue
            if await blocked(owner, contact_jid):
                continue
            targets.extend(s for s in available if feature in caps.features_of(s))
            remote.extend(fulls)
        return targets, remote

    async def blocked(owner: JID, contact: JID) -> bool:
        """XEP-0191 §3.3: nothing goes between a user and a JID either of them blocks."""
        return await server.blocking.blocked_either_way(owner, contact)

    async def notify(owner: JID, node: Node, child: Element) -> None:
        """Send a notification payload the engine produced (XEP-0163 §4, XEP-0060 §7.1.2.1)
        to the contacts' interested sessions, then to explicit subscribers."""
        if not node.flag("pubsub#deliver_notifications"):
            return  # XEP-0060 §16.4.4: nobody is notified
        targets, remote = await recipients(owner, node)
        message = notification_message(str(owner), node, child)
        deliver(targets, message)
        for jid in remote:
            copy = message.shallow_copy()
            copy.attrs["to"] = str(jid)
            await server.router.route(copy)
        subscribers = node.subscribers()
        if not subscribers:
            return
        # Explicit subscribers (XEP-0060 §6.1) not reached through presence already.
        reached = {s.jid.bare for s in targets} | {j.bare for j in remote} | {owner}
        roster = await roster_of(owner)
        for jid_text in subscribers:
            try:
                jid = JID.parse(jid_text)
            except InvalidJID:
                continue
            bare = str(jid.bare)
            item = roster.items.get(bare)
            if jid.bare in reached or not node.allows(
                Asker(
                    bare,
                    presence_subscription=_subscribed_from(item),
                    roster_groups=item.groups if item else (),
                )
            ):
                continue
            if await blocked(owner, jid.bare):
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
            kind = getattr(session, "wire", None) or type(session)
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
                if not node.sends_last_on("presence"):
                    continue
                if owner != user:
                    groups: Iterable[str] = ()
                    if node.access_model == "roster":
                        owner_item = (await roster_of(owner)).items.get(str(user))
                        groups = owner_item.groups if owner_item else ()
                    item = roster.items.get(str(owner)) if roster is not None else None
                    who = Asker(
                        str(user), presence_subscription=_subscribed_to(item), roster_groups=groups
                    )
                    if not node.allows(who):
                        continue
                message = last_item_message(str(owner), node)
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
        INTEREST.set(session, interest)
        interest.nodes = interests(caps.features_of(session))
        user = session.jid.bare
        roster = await roster_of(user)
        # Contacts whose presence arrived meanwhile were served already (first_presence_of).
        owners = [o for o in (user, *local_contacts(roster)) if o not in interest.owners]
        interest.owners.update(owners)
        await send_last_items(session, owners, set(interest.nodes), roster)

    @events.on("caps/remote")
    async def remote_contact_caps(args: tuple[JID, JID]) -> None:
        """XEP-0163 §4.3.2: a contact on another server came online (or its caps became
        known) with NODE+notify: send it the owner's last items it may see."""
        owner, jid = args
        if not sessions.is_online(owner) and not await server.storage.accounts.exists(
            owner.local or "", owner.domain
        ):
            return
        wanted = interests(caps.remote_features(server, jid))
        if not wanted:
            return
        roster = await roster_of(owner)
        item = roster.items.get(str(jid.bare))
        if not _subscribed_from(item) or await blocked(owner, jid.bare):
            return
        assert item is not None
        service = await service_of(owner)
        for name in wanted & service.nodes.keys():
            node = service.nodes[name]
            if (
                node.last is None
                or not node.sends_last_on("presence")
                or not node.allows(
                    Asker(str(jid.bare), presence_subscription=True, roster_groups=item.groups)
                )
            ):
                continue
            message = last_item_message(str(owner), node)
            message.attrs["to"] = str(jid)
            await server.router.route(message)

    @events.on("caps/updated")
    async def caps_updated(session: Any) -> None:
        interest = INTEREST.get(session)
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
            interest = INTEREST.get(session)
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
            forget(owner)

    @events.on("presence/outgoing")
    def outgoing(args: tuple[Any, Element]) -> None:
        session, stanza = args
        if stanza.attrs.get("type") == "unavailable":
            INTEREST.pop(session)  # the next available presence is initial

    # ---- disco (XEP-0163 §6, XEP-0060 §5) ----------------------------------------------------
    # XEP-0163 §6.1: the account is a virtual pubsub service, identity pubsub/pep.
    server.account_identities.append(("pubsub", "pep", None))

    @events.on(f"iq/bare/get/{ns.DISCO_INFO}:query", 10)
    @answers_pubsub_errors
    async def disco_info(event: StanzaEvent) -> bool:
        query = event.payload
        assert query is not None
        name = query.get("node")
        owner = event.to.bare
        if not name:
            return False  # the account itself: disco.py, with our identity added below
        service = await service_of(owner)
        node = service.node(name)
        service.check_access(node, await asker(owner, event.sender))
        # XEP-0060 §5.3: a leaf node, with its metadata (§5.4).
        event.reply(frontend.node_info(node, [str(owner)]))
        return True

    @events.on(f"iq/bare/get/{ns.DISCO_ITEMS}:query", 10)
    @answers_pubsub_errors
    async def disco_items(event: StanzaEvent) -> bool:
        query = event.payload
        assert query is not None
        owner = event.to.bare
        service = await service_of(owner)
        name = query.get("node")
        result = Element("query", ns.DISCO_ITEMS, {"node": name} if name else {})
        if name:
            # XEP-0060 §5.5: the items of a node, by id.
            for item_id in await service.item_ids(name, await asker(owner, event.sender)):
                result.add("item", attrs={"jid": str(owner), "name": item_id})
        elif service.nodes:
            # XEP-0163 §6.2: only the nodes the asker may subscribe to or retrieve from.
            for node in service.visible_nodes(await asker(owner, event.sender)):
                result.add("item", attrs={"jid": str(owner), "node": node.name})
        event.reply(result)
        return True


def _subscribed_from(item: RosterItem | None) -> bool:
    """The owner's roster item: the contact receives the owner's presence."""
    return item is not None and item.subscription in ("from", "both")


def _subscribed_to(item: RosterItem | None) -> bool:
    """The user's roster item: the user receives the contact's presence."""
    return item is not None and item.subscription in ("to", "both")
