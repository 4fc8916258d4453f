"""XEP-0355: Namespace Delegation (v0.5, namespace `urn:xmpp:delegation:2`), admin mode:
the namespaces listed in a component's `delegations` (`[components."domain"]`) are handled
by that external component (XEP-0114) for every user of this server.

- Announcement (§4.2): once the component has completed its handshake the server sends it,
  from each served domain, `<message><delegation><delegated namespace=.../></delegation>
  </message>`, then asks its disco#info on node `urn:xmpp:delegation:2::{namespace}` for
  each delegated namespace (§7.2.1); the features it answers are listed in the server's
  own disco#info while it is connected (§7.2: "the server MUST include them").
- Forwarding (§4.3): an IQ get/set whose payload is in a delegated namespace, addressed to
  a served domain or to the sender's own bare JID (or with no 'to'), goes to the component
  wrapped in `<iq from='domain' to='component'><delegation><forwarded>original
  </forwarded></delegation></iq>`; the component answers with the reply wrapped the same
  way; the server sends the inner result or error to the requester with the original id,
  from the address the requester used. IQs the component sends itself (and those it
  sends on a user's behalf with XEP-0356) are not delegated back to it (§4.4).
- Failure: while the component is not connected, `service-unavailable`; with
  `delegation_max_pending` IQs already waiting for it, `resource-constraint`; no answer within
  `delegation_timeout` seconds, `remote-server-timeout`; an answer without a forwarded
  result or error, `internal-server-error`; when the component disconnects, what it had
  not answered gets `service-unavailable`.

Client mode (§5), attribute filters (`<attribute/>`) and the delegation of bare JID disco
(§7.2.2) are not implemented.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from dovecote.core import iq as iq_requests
from dovecote.core.modules import ModuleInfo
from dovecote.stream.component import ExternalComponent
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.forward import FORWARD, forwarded, forwarded_stanza

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

DELEGATION = "urn:xmpp:delegation:2"

MODULE = ModuleInfo(
    name="delegation",
    summary="Namespace delegation to external components (XEP-0355 v0.5, admin mode), as "
    'set by [components."domain"] delegations',
    features=[DELEGATION],
)


def disco_node(namespace: str) -> str:
    """§7.2.1: the node of the component's disco#info for a delegated namespace."""
    return f"{DELEGATION}::{namespace}"


def setup(server: Server) -> None:
    events = server.events
    # namespace -> managing component (filled on first use: components are registered
    # after the modules are set up).
    managers: dict[str, ExternalComponent] = {}
    # component -> forwarding tasks waiting for its answers
    waiting: dict[ExternalComponent, set[asyncio.Task[None]]] = {}

    looked = False

    def manager(namespace: str) -> ExternalComponent | None:
        nonlocal looked
        if not looked:
            looked = True
            for component in server.components.values():
                if isinstance(component, ExternalComponent):
                    for delegated in component.settings.delegations:
                        managers[delegated] = component
        return managers.get(namespace)

    # ---- announcement and disco (§4.2, §7.2) -------------------------------------------------
    @events.on("component/connected")
    async def announce(component: ExternalComponent) -> None:
        namespaces = component.settings.delegations
        stream = component.stream
        if not namespaces or stream is None:
            return
        for host in sorted(server.hosts):
            delegation = Element("delegation", DELEGATION)
            for namespace in namespaces:
                delegation.add("delegated", attrs={"namespace": namespace})
            stream.send(
                Element(
                    "message",
                    ns.CLIENT,
                    {"from": host, "to": component.domain, "id": f"dlg-{secrets.token_hex(6)}"},
                    [delegation],
                )
            )
        features: dict[str, set[str]] = component.state.setdefault("delegated_features", {})
        for namespace in namespaces:
            request = Element(
                "iq",
                ns.CLIENT,
                {"type": "get", "from": server.default_host, "to": component.domain},
                [Element("query", ns.DISCO_INFO, {"node": disco_node(namespace)})],
            )
            try:
                answer = await iq_requests.request(
                    server, request, component.settings.delegation_timeout
                )
            except (iq_requests.IQRequestError, TimeoutError) as exc:
                log.info(
                    "component %s gave no disco#info for delegated %s: %s",
                    component.domain,
                    namespace,
                    exc or "timeout",
                )
                continue
            if component.stream is not stream:
                return  # gone (or reconnected) meanwhile
            query = answer.find("query", ns.DISCO_INFO)
            if query is not None:
                features[namespace] = {
                    f.attrs["var"] for f in query.find_all("feature", ns.DISCO_INFO) if f.get("var")
                }

    @events.on("disco/host-features")
    def host_features(features: set[str]) -> None:
        for component in server.components.values():
            if isinstance(component, ExternalComponent) and component.stream is not None:
                for found in component.state.get("delegated_features", {}).values():
                    features.update(found)

    @events.on("component/disconnected")
    def disconnected(component: ExternalComponent) -> None:
        for task in list(waiting.pop(component, ())):
            task.cancel()

    # ---- forwarding (§4.3) ------------------------------------------------------------------
    def delegated_to(event: StanzaEvent) -> ExternalComponent | None:
        if event.type not in ("get", "set"):
            return None
        payload = event.payload
        if payload is None:
            return None
        component = manager(payload.ns)
        if component is None:
            return None
        # §4.4: what the managing entity sends itself, or on a user's behalf, is handled
        # by the server.
        if event.sender.domain == component.domain:
            return None
        if id(event.stanza) in component.state.get("acting", ()):
            return None
        return component

    @events.on("iq/host", 500)
    def to_server(event: StanzaEvent) -> bool:
        component = delegated_to(event)
        if component is None or event.to.local is not None:
            return False
        return forward(component, event)

    @events.on("iq/bare", 500)
    def to_own_account(event: StanzaEvent) -> bool:
        if event.sender.bare != event.to.bare:
            return False  # §4.3: only the sender's own bare JID
        component = delegated_to(event)
        if component is None:
            return False
        return forward(component, event)

    def forward(component: ExternalComponent, event: StanzaEvent) -> bool:
        if component.stream is None:
            raise StanzaError("service-unavailable", f"{component.domain} is not connected")
        tasks = waiting.setdefault(component, set())
        if len(tasks) >= component.settings.delegation_max_pending:
            # RFC 6120 §8.3.3.18: the sender may retry later.
            raise StanzaError("resource-constraint", f"{component.domain} is busy")
        task = server.spawn(relay(component, event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    async def relay(component: ExternalComponent, event: StanzaEvent) -> None:
        original = event.stanza.shallow_copy()
        original.attrs["from"] = str(event.sender)
        original.attrs["to"] = str(event.to)
        host = event.to.domain if event.to.domain in server.hosts else server.default_host
        request = Element(
            "iq",
            ns.CLIENT,
            {"type": event.type or "get", "from": host, "to": component.domain},
            [Element("delegation", DELEGATION, {}, [forwarded(original)])],
        )
        try:
            answer = await iq_requests.request(
                server, request, component.settings.delegation_timeout
            )
        except asyncio.CancelledError:
            server.router.bounce(
                event, StanzaError("service-unavailable", f"{component.domain} went away")
            )
            raise
        except TimeoutError:
            server.router.bounce(
                event, StanzaError("remote-server-timeout", f"no answer from {component.domain}")
            )
            return
        except iq_requests.IQRequestError as exc:
            answer = exc.stanza
        inner = unwrap(answer)
        if inner is None:
            if answer.attrs.get("type") == "error":
                # The component refused the wrapper itself: pass its error on.
                error = answer.find("error", ns.CLIENT)
                reply = Element(
                    "iq",
                    ns.CLIENT,
                    {"type": "error", "from": str(event.to), "to": str(event.sender)},
                    [error] if error is not None else [],
                )
                if error is None:
                    reply.append(StanzaError("service-unavailable").to_element())
                if "id" in event.stanza.attrs:
                    reply.attrs["id"] = event.stanza.attrs["id"]
                event.send_back(reply)
                return
            server.router.bounce(
                event,
                StanzaError("internal-server-error", f"invalid answer from {component.domain}"),
            )
            return
        # The requester gets the answer from the address it asked, with its own id.
        reply = Element(
            "iq",
            ns.CLIENT,
            {"type": inner.attrs["type"], "from": str(event.to), "to": str(event.sender)},
            list(inner.children),
        )
        if "id" in event.stanza.attrs:
            reply.attrs["id"] = event.stanza.attrs["id"]
        event.send_back(reply)

    def unwrap(answer: Element) -> Element | None:
        """The forwarded result or error in the component's answer (§4.3)."""
        delegation = answer.find("delegation", DELEGATION)
        wrapper = delegation.find("forwarded", FORWARD) if delegation is not None else None
        inner = forwarded_stanza(wrapper) if wrapper is not None else None
        if inner is None or inner.tag != "iq" or inner.ns != ns.CLIENT:
            return None
        if inner.attrs.get("type") not in ("result", "error"):
            return None
        return inner
