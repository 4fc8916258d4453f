"""XEP-0030: Service Discovery for the server and for accounts.

Each module declares its features (`MODULE = ModuleInfo(features=..., account_features=...)`,
core/modules.py); this module lists exactly those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.forms import Field, Form

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="disco",
    summary="Service discovery (XEP-0030) of the server and of accounts, contact addresses "
    "(XEP-0157)",
    features=[ns.DISCO_INFO, ns.DISCO_ITEMS],
    # The router lets strangers' disco of accounts through: PEP nodes answer by their
    # access model (XEP-0163 §6); the account itself answers only the owner and contacts
    # (`account_guard`).
    public_account_iqs=[f"get/{ns.DISCO_INFO}:query", f"get/{ns.DISCO_ITEMS}:query"],
)
SERVER_INFO = "http://jabber.org/network/serverinfo"


def info_query(
    node: str | None, identities: list[tuple[str, str, str | None]], features: set[str]
) -> Element:
    query = Element("query", ns.DISCO_INFO, {"node": node} if node else {})
    for category, kind, name in identities:
        attrs = {"category": category, "type": kind}
        if name:
            attrs["name"] = name
        query.add("identity", attrs=attrs)
    for feature in sorted(features):
        query.add("feature", attrs={"var": feature})
    return query


def setup(server: Server) -> None:
    events = server.events

    @events.on(f"iq/host/get/{ns.DISCO_INFO}:query")
    async def server_info(event: StanzaEvent) -> bool:
        node = event.payload.get("node") if event.payload is not None else None
        if node:
            raise StanzaError("item-not-found")
        # XEP-0030 §3.1; the server is category 'server', type 'im'.
        identities = [("server", "im", "Dovecote")]
        features = server.features
        if events.has("disco/host-features"):
            # Features that come and go (XEP-0355 §7.2: those of delegated namespaces,
            # while their component is connected).
            features = set(features)
            await events.fire_all("disco/host-features", features)
        query = info_query(None, identities, features)
        contacts = server.config.server.contacts
        if contacts:
            # XEP-0157 through XEP-0128: who to contact about this server, by role.
            fields = [
                Field(f"{role}-addresses", values=list(uris))
                for role, uris in sorted(contacts.items())
            ]
            query.append(Form.with_type(SERVER_INFO, fields, type="result").to_element())
        event.reply(query)
        return True

    @events.on(f"iq/host/get/{ns.DISCO_ITEMS}:query")
    def server_items(event: StanzaEvent) -> bool:
        node = event.payload.get("node") if event.payload is not None else None
        if node:
            raise StanzaError("item-not-found")
        query = Element("query", ns.DISCO_ITEMS)
        for domain, component in sorted(server.components.items()):
            name = getattr(component, "name", None)
            query.add("item", attrs={"jid": domain, **({"name": name} if name else {})})
        event.reply(query)
        return True

    @events.on(f"iq/bare/get/{ns.DISCO_INFO}:query", 20)
    @events.on(f"iq/bare/get/{ns.DISCO_ITEMS}:query", 20)
    async def account_guard(event: StanzaEvent) -> bool:
        """Disco of the account itself (no node), before PEP's handlers (priority 10): like
        Prosody, only the owner and contacts with a presence subscription get an answer;
        strangers get what a missing account answers (RFC 6121 §8.5.1), so they cannot
        probe for accounts. PEP nodes (a node given) answer by their access model."""
        if event.payload is not None and event.payload.get("node"):
            return False
        if not await server.router.may_see_account(event.to, event.sender):
            raise StanzaError("service-unavailable")
        return False

    @events.on(f"iq/bare/get/{ns.DISCO_INFO}:query")
    async def account_info(event: StanzaEvent) -> bool:
        # The router has checked that the account exists, account_guard who asks.
        node = event.payload.get("node") if event.payload is not None else None
        if node:
            raise StanzaError("item-not-found")
        # XEP-0030: an account (category 'account', type 'registered') and whatever
        # modules add (PEP: pubsub/pep).
        event.reply(
            info_query(
                None, server.account_identities, server.account_features | set(MODULE.features)
            )
        )
        return True

    @events.on(f"iq/bare/get/{ns.DISCO_ITEMS}:query")
    async def account_items(event: StanzaEvent) -> bool:
        event.reply(Element("query", ns.DISCO_ITEMS))
        return True
