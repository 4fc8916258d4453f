"""XEP-0356: Privileged Entity (v0.4, namespace `urn:xmpp:privilege:2`): an external
component (XEP-0114) granted privileges in `[components."domain"]` acts on behalf of this
server's users, the way gateways such as slidge keep a user's roster and own messages in
step with another network.

- Announcement (§3.2, §4.2, §5.2, §6.2): once the component has completed its handshake the
  server sends it, from each served domain, `<message><privilege><perm access=... type=.../>
  </privilege></message>` listing what it was granted (nothing is sent to a component with
  no privilege).
- Roster (§3): an IQ get/set in `jabber:iq:roster` from the component to a user's bare JID
  is answered as the user's own request would be (the same roster code: checks, storage,
  pushes to the user's resources); without the matching permission, `forbidden` (§3.3).
  With "get" or "both" (and `roster_push`, default on) the component gets the user's
  roster pushes too, from the user's bare JID (§3.3, v0.4).
- Message (§4): a `<message>` from the component carrying `<privilege><forwarded>` with a
  message whose 'from' is a user's bare JID (or a served domain) is sent as if the user had
  sent it: the user's archive (XEP-0313) and sent carbons (XEP-0280) see it as they see
  what the user's clients send. Without "outgoing", with a full JID or a JID of another
  server as 'from', `forbidden` (§4.1, RFC 6120 §8.3.3.4). `urn:xmpp:privilege:1` wrappers
  are accepted as well.
- IQ (§5, v0.4): `<iq><privileged_iq><iq from='user@domain' .../></privileged_iq></iq>`
  sends the inner IQ on the user's behalf when the namespace of its payload is granted for
  its type (`iq = { "ns" = "get"|"set"|"both" }`); the answer comes back wrapped in
  `<privilege><forwarded>`; otherwise `forbidden`.
- Presence (§6): with "managed_entity" the users' available and unavailable presence goes
  to the component as directed presence from their full JIDs (and, on connection, the
  presence of every user online); with "roster" also the available/unavailable presence
  users receive from contacts they are subscribed to ('to'/'both').
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from dovecote.core import iq as iq_requests
from dovecote.core.modules import ModuleInfo
from dovecote.core.rosters import ROSTER
from dovecote.core.router import StanzaEvent
from dovecote.jid import JID, InvalidJID
from dovecote.stream.component import ExternalComponent
from dovecote.stream.errors import StanzaError, error_reply
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.forward import FORWARD, forwarded, forwarded_stanza

if TYPE_CHECKING:
    from dovecote.server import Server

log = logging.getLogger(__name__)

PRIVILEGE = "urn:xmpp:privilege:2"
#: XEP-0356 v0.2/0.3: accepted on privileged messages (same shape).
PRIVILEGE_1 = "urn:xmpp:privilege:1"

MODULE = ModuleInfo(
    name="privilege",
    summary="Privileged components (XEP-0356 v0.4): rosters, messages, IQs on behalf of "
    'users and their presence, as granted in [components."domain"]',
)

#: Presence kinds a privileged component receives (§6.1).
PRESENCE_TYPES = (None, "unavailable")
#: Contacts' presences remembered per component to send each change once (§6.4).
MAX_REMEMBERED_PRESENCES = 10000
#: Seconds to wait for the answer to an IQ sent on a user's behalf.
IQ_TIMEOUT = 30.0


def allows(access: str, iq_type: str | None) -> bool:
    """Does access type none/get/set/both allow an IQ of `iq_type` (§3.1, §5.1)?"""
    return access == "both" or (access != "none" and access == iq_type)


def acting_for(component: ExternalComponent) -> set[int]:
    """Identities of IQ elements in flight that the component sends on a user's behalf
    (XEP-0355 §4.3: they are not delegated back to it)."""
    acting: set[int] = component.state.setdefault("acting", set())
    return acting


def setup(server: Server) -> None:
    events = server.events

    def connected_components() -> list[ExternalComponent]:
        return [
            c
            for c in server.components.values()
            if isinstance(c, ExternalComponent) and c.stream is not None
        ]

    def managed(jid: JID) -> bool:
        """A bare JID of an account of this server (a managed entity, §3)."""
        return jid.local is not None and jid.resource is None and jid.domain in server.hosts

    # ---- announcement (§3.2, §4.2, §5.2, §6.2) ------------------------------------------
    def announcement(component: ExternalComponent, host: str) -> Element | None:
        settings = component.settings
        privilege = Element("privilege", PRIVILEGE)
        if settings.roster != "none":
            attrs = {"access": "roster", "type": settings.roster}
            if settings.roster in ("get", "both"):
                attrs["push"] = "true" if settings.roster_push else "false"
            privilege.add("perm", attrs=attrs)
        if settings.message != "none":
            privilege.add("perm", attrs={"access": "message", "type": settings.message})
        granted = {name: access for name, access in settings.iq.items() if access != "none"}
        if granted:
            perm = privilege.add("perm", attrs={"access": "iq"})
            for namespace, access in sorted(granted.items()):
                perm.add("namespace", attrs={"ns": namespace, "type": access})
        if settings.presence != "none":
            privilege.add("perm", attrs={"access": "presence", "type": settings.presence})
        if not list(privilege.elements):
            return None
        return Element(
            "message",
            ns.CLIENT,
            {"from": host, "to": component.domain, "id": f"priv-{secrets.token_hex(6)}"},
            [privilege],
        )

    @events.on("component/connected")
    def announce(component: ExternalComponent) -> None:
        stream = component.stream
        if stream is None:
            return
        for host in sorted(server.hosts):
            message = announcement(component, host)
            if message is None:
                return
            stream.send(message)
        if component.settings.presence != "none":
            # §6.3: the component connected after users sent their presence: it gets the
            # current presence of each available resource.
            for session in list(server.sessions):
                if session.available and session.presence is not None:
                    send_presence(component, session.jid, session.presence)

    # ---- stanzas from the component -------------------------------------------------------
    @events.on("component/stanza")
    async def from_component(args: tuple[ExternalComponent, Element]) -> bool:
        component, stanza = args
        kind, stanza_type = stanza.tag, stanza.attrs.get("type")
        if kind == "message":
            wrapper = stanza.find("privilege", PRIVILEGE)
            if wrapper is None:
                wrapper = stanza.find("privilege", PRIVILEGE_1)
            if wrapper is None or stanza_type == "error":
                return False
            await privileged_message(component, stanza, wrapper)
            return True
        if kind != "iq" or stanza_type not in ("get", "set"):
            return False
        payload = next(stanza.elements)
        if payload.tag == "privileged_iq" and payload.ns == PRIVILEGE:
            request = privileged_iq(component, stanza, payload)
            server.spawn(answer_privileged_iq(component, stanza, request))
            return True
        if payload.tag == "query" and payload.ns == ROSTER:
            try:
                to = JID.parse(stanza.attrs["to"])
            except InvalidJID:
                return False
            if not managed(to):
                return False
            if not allows(component.settings.roster, stanza_type):
                # §3.3: "MUST return a forbidden error if it is not the case".
                raise StanzaError("forbidden", f"no roster {stanza_type} privilege")
            request = Element(
                "iq", ns.CLIENT, {"type": stanza_type, "from": str(to), "to": str(to)}, [payload]
            )
            server.spawn(answer_roster(component, stanza, request))
            return True
        return False

    async def ask(component: ExternalComponent, request: Element) -> Element:
        """Send `request` (from a user's bare JID) and return the answer, result or error."""
        acting = acting_for(component)
        acting.add(id(request))
        try:
            return await iq_requests.request(server, request, IQ_TIMEOUT)
        except iq_requests.IQRequestError as exc:
            return exc.stanza
        except TimeoutError:
            return error_reply(request, StanzaError("remote-server-timeout"))
        finally:
            acting.discard(id(request))

    def send(component: ExternalComponent, stanza: Element) -> None:
        if component.stream is not None:
            component.stream.send(stanza)

    async def answer_roster(
        component: ExternalComponent, original: Element, request: Element
    ) -> None:
        """§3.3: "The server then answers normally, as it would have done to the managed
        entity": the answer to the user's own request, addressed to the component."""
        answer = await ask(component, request)
        reply = Element(
            "iq",
            ns.CLIENT,
            {
                "type": answer.attrs.get("type", "error"),
                "from": original.attrs["to"],
                "to": original.attrs["from"],
            },
            list(answer.children),
        )
        if "id" in original.attrs:
            reply.attrs["id"] = original.attrs["id"]
        send(component, reply)

    # ---- IQ permission (§5, v0.4) -----------------------------------------------------------
    def privileged_iq(component: ExternalComponent, outer: Element, wrapper: Element) -> Element:
        """Check the encapsulated IQ (§5.3) and return the request to send for the user."""
        inner = wrapper.find("iq", ns.CLIENT)
        if inner is None or len(list(wrapper.elements)) != 1:
            raise StanzaError("bad-request", "<privileged_iq/> holds one <iq/>")
        inner_type = inner.attrs.get("type")
        if inner_type != outer.attrs.get("type"):
            raise StanzaError("bad-request", "the encapsulated IQ's type differs")
        payloads = list(inner.elements)
        if len(payloads) != 1:
            raise StanzaError("bad-request", "the encapsulated IQ carries one payload")
        try:
            user = JID.parse(inner.attrs.get("from", ""))
            to = JID.parse(inner.attrs["to"]) if inner.attrs.get("to") else user
        except InvalidJID:
            raise StanzaError("jid-malformed", "invalid address in the encapsulated IQ") from None
        if not managed(user):
            raise StanzaError("forbidden", "'from' must be the bare JID of a user of this server")
        namespace = payloads[0].ns
        if not allows(component.settings.iq.get(namespace, "none"), inner_type):
            raise StanzaError("forbidden", f"no IQ {inner_type} privilege for {namespace}")
        return Element(
            "iq",
            ns.CLIENT,
            {"type": inner_type or "get", "from": str(user), "to": str(to)},
            payloads,
        )

    async def answer_privileged_iq(
        component: ExternalComponent, outer: Element, request: Element
    ) -> None:
        inner_id = next(outer.elements).find("iq", ns.CLIENT).attrs.get("id")  # type: ignore[union-attr]
        answer = await ask(component, request)
        answer = answer.shallow_copy()
        answer.ns = ns.CLIENT
        if inner_id is not None:
            answer.attrs["id"] = inner_id
        else:
            answer.attrs.pop("id", None)
        answer_type = answer.attrs.get("type", "error")
        children: list[Element | str] = [Element("privilege", PRIVILEGE, {}, [forwarded(answer)])]
        if answer_type == "error":
            error = answer.find("error", ns.CLIENT)
            if error is not None:
                children.append(error)
        reply = Element(
            "iq",
            ns.CLIENT,
            {"type": answer_type, "from": outer.attrs["to"], "to": outer.attrs["from"]},
            children,
        )
        if "id" in outer.attrs:
            reply.attrs["id"] = outer.attrs["id"]
        send(component, reply)

    # ---- message permission (§4) --------------------------------------------------------------
    async def privileged_message(
        component: ExternalComponent, outer: Element, wrapper: Element
    ) -> None:
        if component.settings.message != "outgoing":
            raise StanzaError("forbidden", "no message privilege")
        forward = wrapper.find("forwarded", FORWARD)
        inner = forwarded_stanza(forward) if forward is not None else None
        if inner is None or inner.tag != "message" or inner.ns != ns.CLIENT:
            raise StanzaError("bad-request", "<privilege/> must forward a <message/>")
        try:
            sender = JID.parse(inner.attrs.get("from", ""))
            to = JID.parse(inner.attrs.get("to", ""))
        except InvalidJID:
            raise StanzaError("jid-malformed", "invalid address in the forwarded message") from None
        # §4.1: "forwarded <message/> 'from' attribute MUST be a bare JID from the server,
        # no resource is allowed", on behalf of a user or of the server itself.
        if sender.resource is not None or sender.domain not in server.hosts:
            raise StanzaError(
                "forbidden", "'from' must be a bare JID of this server, without resource"
            )
        message = inner.shallow_copy()
        message.attrs["from"] = str(sender)
        message.attrs["to"] = str(to)
        if sender.local is not None:
            # As what the user's clients send: the user's archive and sent carbons.
            event = StanzaEvent(server, message, sender, to, None)
            try:
                if await events.fire("stanza/from-client", event):
                    return
            except StanzaError as exc:
                send(component, error_reply(outer, exc))
                return
        await server.router.route(message)

    # ---- roster pushes (§3.3) -----------------------------------------------------------------
    def roster_pushed(user: JID, item: Element, version: int) -> None:
        if user.domain not in server.hosts:
            return
        for component in connected_components():
            settings = component.settings
            if settings.roster not in ("get", "both") or not settings.roster_push:
                continue
            query = Element("query", ROSTER, {"ver": str(version)}, [item])
            send(
                component,
                Element(
                    "iq",
                    ns.CLIENT,
                    {
                        "type": "set",
                        "id": f"push{secrets.token_hex(6)}",
                        "from": str(user),
                        "to": component.domain,
                    },
                    [query],
                ),
            )

    server.rosters.push_listeners.append(roster_pushed)

    # ---- presence permission (§6) -------------------------------------------------------------
    def send_presence(component: ExternalComponent, sender: JID, presence: Element) -> None:
        copy = presence.shallow_copy()
        copy.attrs["from"] = str(sender)
        copy.attrs["to"] = component.domain
        send(component, copy)

    @events.on("presence/outgoing")
    def user_presence(args: tuple[Any, Element]) -> None:
        """§6.1: a directed presence from the user's full JID, each time it changes."""
        session, stanza = args
        if stanza.attrs.get("type") not in PRESENCE_TYPES:
            return
        for component in connected_components():
            if component.settings.presence != "none":
                send_presence(component, session.jid, stanza)

    async def contact_presence(event: StanzaEvent) -> bool:
        """§6.4: presence a user receives from a contact they are subscribed to."""
        if event.type not in PRESENCE_TYPES:
            return False
        wanting = [c for c in connected_components() if c.settings.presence == "roster"]
        if not wanting or event.to.domain not in server.hosts or event.to.local is None:
            return False
        sender = event.sender
        if sender.bare == event.to.bare or managed(sender.bare):
            # The user's own resources, and local users (sent as managed entities).
            return False
        item = await server.rosters.item(event.to.bare, sender)
        if item is None or item.subscription not in ("to", "both"):
            return False
        key = str(sender)
        unaddressed = event.stanza.shallow_copy()
        unaddressed.attrs.pop("to", None)
        text = serialize(unaddressed)
        for component in wanting:
            seen: dict[str, str] = component.state.setdefault("contact_presences", {})
            if seen.get(key) == text:
                continue  # another user of this server has the same contact
            if len(seen) >= MAX_REMEMBERED_PRESENCES:
                seen.clear()
            seen[key] = text
            send_presence(component, sender, event.stanza)
        return False

    # Below blocking (100): a presence the user blocks is not passed on either.
    events.add("presence/bare", contact_presence, 60)
    events.add("presence/full", contact_presence, 60)
