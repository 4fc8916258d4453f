"""External components, XEP-0114 (jabber:component:accept), the accept side: a trusted
program (a gateway, a bot framework, a service) connects, proves a shared secret and then
sends and receives stanzas for its own domain (XEP-0479 "Server Extensibility").

`ComponentStream` takes parsed input from a transport and answers through it, like the
c2s stream; it owns no socket and no timer. A stream goes through: stream header ->
<handshake/> -> authenticated (stanzas flow) -> closed.

Inside Dovecote the stream's default namespace is spelled `jabber:client`: top-level
elements arriving in `jabber:component:accept` are re-qualified (`normalise`), and the
transport writes elements of `jabber:client` unqualified, under the header's default
`jabber:component:accept`. Routing and modules never see the component namespace.

Each configured domain is an `ExternalComponent` in `server.components` for the server's
whole life, connected or not: stanzas to it while no component is connected get
<service-unavailable/> (RFC 6120 §8.3.3.19) from the server, the way Prosody and ejabberd
answer, instead of falling through to federation (remote-server-not-found) as an unknown
domain would.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any

from dovecote.jid import JID, InvalidJID, prepare_domain
from dovecote.stream.base import StreamBase
from dovecote.stream.c2s import STANZA_KINDS
from dovecote.stream.errors import StanzaError, StreamError, error_reply, excerpt, iq_problem
from dovecote.xml import ns
from dovecote.xml.element import Element
from dovecote.xml.parser import ElementReceived, ParserEvent, StreamClosed, StreamOpened

if TYPE_CHECKING:
    from dovecote.config import ComponentSection
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.transport.base import StreamTransport

log = logging.getLogger(__name__)


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: lowercase hex SHA-1 of the stream id followed by the shared secret."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


def normalise(element: Element) -> Element:
    """Re-qualify everything the component wrote in `jabber:component:accept` (the stanza
    and the children inheriting the default namespace) as `jabber:client`, in place."""
    stack = [element]
    while stack:
        el = stack.pop()
        if el.ns == ns.COMPONENT:
            el.ns = ns.CLIENT
        stack.extend(el.elements)
    return element


class ExternalComponent:
    """A configured component domain, as registered in `server.components`."""

    def __init__(self, server: Server, domain: str, settings: ComponentSection | str) -> None:
        from dovecote.config import ComponentSection

        if isinstance(settings, str):
            settings = ComponentSection(secret=settings)
        self.server = server
        self.domain = domain
        #: Its `[components]` table: the secret, XEP-0356 privileges, XEP-0355 delegations.
        self.settings = settings
        self.secret = settings.secret
        #: The authenticated connection, None while the component is away.
        self.stream: ComponentStream | None = None
        #: What modules keep about the component while it is connected (the features of
        #: its delegated namespaces, ...): emptied when it disconnects.
        self.state: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        return self.stream is not None

    def __repr__(self) -> str:
        state = "connected" if self.stream is not None else "disconnected"
        return f"<ExternalComponent {self.domain} {state}>"

    async def receive(self, event: StanzaEvent) -> None:
        """A stanza routed to the component's domain or a JID at it."""
        stream = self.stream
        if stream is None:
            self.server.router.bounce(
                event, StanzaError("service-unavailable", f"{self.domain} is not connected")
            )
            return
        stanza = event.stanza
        if "from" not in stanza.attrs:
            # XEP-0114 §3: stanzas on a component stream carry 'from' and 'to' both ways.
            stanza = stanza.shallow_copy()
            stanza.attrs["from"] = str(event.sender)
        stream.send(stanza)


def register_components(server: Server) -> None:
    """Register every configured `[components]` domain (before the listener opens)."""
    for domain, settings in server.config.components.items():
        if domain in server.components:
            raise ValueError(f"component domain {domain} is already taken by a service")
        server.components[domain] = ExternalComponent(server, domain, settings)
    if server.config.components and not server.config.listen.component:
        log.warning("components are configured but listen.component is empty: none can connect")


class ComponentStream(StreamBase):
    """One component connection: the header, the handshake, then stanzas."""

    max_queued = 256

    def __init__(self, server: Server, transport: StreamTransport) -> None:
        self.server = server
        self.transport = transport
        self.state = "wait-header"  # -> wait-handshake -> authenticated -> closed
        self.stream_id = ""
        self.component: ExternalComponent | None = None
        self._header_sent = False
        self._init_input()

    @property
    def domain(self) -> str | None:
        return self.component.domain if self.component is not None else None

    @property
    def authenticated(self) -> bool:
        return self.state == "authenticated"

    def __repr__(self) -> str:
        return f"<ComponentStream {self.domain} {self.state} from {self.transport.peer_address}>"

    async def _handle(self, event: ParserEvent) -> None:
        if isinstance(event, ElementReceived):
            element = normalise(event.element)
            if self.state == "authenticated":
                await self._stanza(element)
            elif self.state == "wait-handshake":
                self._handshake(element)
            else:
                raise StreamError("bad-format", "unexpected element")
        elif isinstance(event, StreamOpened):
            self._stream_opened(event)
        elif isinstance(event, StreamClosed):
            self.close()

    # ---- stream header (XEP-0114 §3, RFC 6120 §4.7) ------------------------------------
    def _stream_opened(self, event: StreamOpened) -> None:
        header = event.header
        if self.state != "wait-header":
            raise StreamError("bad-format", "unexpected stream header")
        if header.ns != ns.STREAMS or header.tag != "stream":
            raise StreamError(
                "invalid-namespace",
                "the stream element must be {http://etherx.jabber.org/streams}stream",
            )
        if header.prefix != "stream":
            raise StreamError(
                "bad-namespace-prefix", "the stream namespace prefix must be 'stream'"
            )
        if header.default_ns != ns.COMPONENT:
            # XEP-0114 §3: an unsupported namespace is <invalid-namespace/>.
            raise StreamError(
                "invalid-namespace", "the content namespace must be jabber:component:accept"
            )
        to = header.attrs.get("to")
        if not to:
            raise StreamError("improper-addressing", "'to' must name the component's domain")
        try:
            domain = prepare_domain(to)
        except InvalidJID:
            raise StreamError("host-unknown", f"{excerpt(to)} is not a valid domain") from None
        # XEP-0114 §3: 'to' is the component's name; one not served is <host-unknown/>,
        # one already connected is <conflict/>.
        component = self.server.components.get(domain)
        if not isinstance(component, ExternalComponent):
            raise StreamError("host-unknown", f"no component {excerpt(domain)} is configured")
        self.component = component
        self.stream_id = secrets.token_hex(16)
        self._send_header()
        if component.connected:
            raise StreamError("conflict", f"{domain} is already connected")
        self.state = "wait-handshake"

    def _send_header(self) -> None:
        attrs = {"id": self.stream_id or secrets.token_hex(16)}
        if self.component is not None:
            attrs = {"from": self.component.domain, **attrs}
        self.transport.send_header(attrs)
        self._header_sent = True

    # ---- handshake (XEP-0114 §3) ------------------------------------------------------
    def _handshake(self, element: Element) -> None:
        if element.tag != "handshake" or element.ns != ns.CLIENT:
            # RFC 6120 §4.9.3.12: nothing but authentication before authentication.
            raise StreamError("not-authorized", "send <handshake/> first")
        component = self.component
        assert component is not None
        expected = handshake_digest(self.stream_id, component.secret)
        offered = element.text.strip().lower()
        if not hmac.compare_digest(offered.encode(), expected.encode()):
            log.info(
                "wrong handshake for component %s from %s",
                component.domain,
                self.transport.peer_address,
            )
            raise StreamError("not-authorized", "wrong handshake")
        if component.connected:
            # Two connections raced through the header; the first one keeps the domain.
            raise StreamError("conflict", f"{component.domain} is already connected")
        component.stream = self
        self.state = "authenticated"
        self.transport.stream_bound()
        # "the server MUST return an empty <handshake/> element" (written unqualified:
        # jabber:component:accept by the header's default namespace).
        self.transport.send_element(Element("handshake", ns.CLIENT))
        log.info("component %s connected from %s", component.domain, self.transport.peer_address)
        # Modules announce what the component may do (XEP-0356 §3.2, XEP-0355 §4.2), after
        # the empty <handshake/>, once the stream is authenticated.
        self.server.spawn(self.server.events.fire_all("component/connected", component))

    # ---- stanzas (XEP-0114 §3, RFC 6120 §8) ----------------------------------------------
    async def _stanza(self, stanza: Element) -> None:
        if stanza.ns != ns.CLIENT or stanza.tag not in STANZA_KINDS:
            raise StreamError("unsupported-stanza-type", f"unexpected element {stanza.tag}")
        assert self.component is not None
        # XEP-0114 §3: "All stanzas sent to the server MUST possess a 'from' attribute and
        # a 'to' attribute"; RFC 6120 §4.9.3.14 names what lacks them.
        sender_text = stanza.attrs.get("from")
        if not sender_text or not stanza.attrs.get("to"):
            raise StreamError("improper-addressing", "stanzas need 'from' and 'to'")
        try:
            sender = JID.parse(sender_text)
        except InvalidJID:
            problem = f"invalid 'from' {excerpt(sender_text)}"
            raise StreamError("improper-addressing", problem) from None
        if sender.domain != self.component.domain:
            # XEP-0114 §3: the domain of 'from' MUST be the component's (RFC 6120 §4.9.3.9).
            raise StreamError(
                "invalid-from", f"{excerpt(sender_text)} is not at {self.component.domain}"
            )
        stanza.attrs["from"] = str(sender)
        if stanza.tag == "iq":
            problem = iq_problem(stanza)
            if problem is not None:
                if stanza.attrs.get("type") not in ("result", "error"):
                    self.send(error_reply(stanza, StanzaError("bad-request", problem)))
                return
        # What the component does with privileges (XEP-0356: rosters, messages and IQs on a
        # user's behalf) is taken by the modules that grant them before routing.
        try:
            if await self.server.events.fire("component/stanza", (self.component, stanza)):
                return
        except StanzaError as exc:
            if stanza.attrs.get("type") != "error" and not (
                stanza.tag == "iq" and stanza.attrs.get("type") == "result"
            ):
                self.send(error_reply(stanza, exc))
            return
        except Exception:
            log.exception("component/stanza failed for %s", stanza.tag)
            if stanza.attrs.get("type") not in ("error", "result"):
                self.send(error_reply(stanza, StanzaError("internal-server-error")))
            return
        await self.server.router.route(stanza)

    # ---- output -------------------------------------------------------------------------
    def send(self, stanza: Element) -> None:
        if self.state == "closed":
            return
        self.transport.send_element(stanza)

    def connection_lost(self) -> None:
        """The transport is gone (closed by either side)."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._queue.clear()
        component = self.component
        if component is not None and component.stream is self:
            component.stream = None
            component.state.clear()
            log.info("component %s disconnected", component.domain)
            self.server.spawn(self.server.events.fire_all("component/disconnected", component))
