"""Test helpers: an in-process Dovecote on ephemeral ports, real clients over real sockets."""

from __future__ import annotations

import asyncio
import base64
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import scramp
import slixmpp

from dovecote.config import config_from_dict
from dovecote.server import Server
from dovecote.storage.credentials import derive_credentials

STREAMS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
DOMAIN = "example.org"
PASSWORD = "secret-pässword"


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Any:
    data: dict[str, Any] = {
        "server": {"domains": [DOMAIN, "other.example"], "data_dir": str(data_dir)},
        "listen": {"c2s": "127.0.0.1:0", "c2s_tls": "127.0.0.1:0", "s2s": "", "http": ""},
        "logging": {"level": "debug"},
        # Generous for loaded CI machines; the tests of a busy database set their own.
        "storage": {"busy_timeout": 10},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


async def start_server(data_dir: Path, **sections: dict[str, Any]) -> Server:
    server = Server(make_config(data_dir, **sections))
    await server.start()
    return server


async def add_user(
    server: Server, local: str, password: str = PASSWORD, domain: str = DOMAIN
) -> str:
    creds = await asyncio.get_running_loop().run_in_executor(None, derive_credentials, password)
    await server.storage.accounts.create(local, domain, creds)
    return f"{local}@{domain}"


def client_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---- slixmpp -----------------------------------------------------------------------------
class Client(slixmpp.ClientXMPP):
    """A slixmpp client that records what it receives."""

    def __init__(self, jid: str, password: str, **kwargs: Any) -> None:
        super().__init__(jid, password, **kwargs)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: asyncio.Queue[Any] = asyncio.Queue()
        self.stream_errors: list[str] = []
        self.disconnected_event = asyncio.Event()
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))
        self.add_event_handler("disconnected", lambda _e: self.disconnected_event.set())
        self.ssl_context = client_ssl_context()
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0092")


async def connect(
    server: Server,
    jid: str,
    password: str = PASSWORD,
    *,
    presence: bool = True,
    direct_tls: bool = False,
    timeout: float = 15,
    **kwargs: Any,
) -> Client:
    """Log a slixmpp client in (STARTTLS by default) and wait for the session."""
    client = Client(jid, password, **kwargs)
    started = asyncio.Event()
    failed: list[str] = []
    client.add_event_handler("session_start", lambda _e: started.set())
    client.add_event_handler("failed_all_auth", lambda _e: (failed.append("auth"), started.set()))
    if direct_tls:
        client.enable_direct_tls = True
        client.enable_starttls = False
        port = server.ports["c2s_tls"]
    else:
        client.enable_direct_tls = False
        port = server.ports["c2s"]
    client.connect("127.0.0.1", port)
    await asyncio.wait_for(started.wait(), timeout)
    if failed:
        client.disconnect()
        raise PermissionError(f"authentication failed for {jid}")
    if presence:
        client.send_presence()
        await asyncio.sleep(0.05)
    return client


async def disconnect(*clients: Client) -> None:
    for client in clients:
        client.disconnect()
    for client in clients:
        try:
            await asyncio.wait_for(client.disconnected_event.wait(), 5)
        except TimeoutError:
            pass


# ---- raw XML over a socket ----------------------------------------------------------------
def q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


class RawClient:
    """XML over a plain socket, for checks a client library would hide."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.header: dict[str, str] | None = None
        self.closed_by_server = False
        self.eof = False
        self._new_parser()

    @classmethod
    async def open(cls, port: int, *, tls: bool = False, source: str | None = None) -> RawClient:
        """Connect to 127.0.0.1:`port`; `source`: the client's address (any of 127/8 is
        loopback on Linux, so tests can come from many addresses)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=client_ssl_context() if tls else None,
            server_hostname=DOMAIN if tls else None,
            local_addr=(source, 0) if source else None,
        )
        return cls(reader, writer)

    def _new_parser(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._elements: list[ET.Element] = []

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    def open_stream(self, to: str = DOMAIN, extra: str = "") -> None:
        self._new_parser()
        self.header = None
        self.send(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='{STREAMS}' to='{to}' version='1.0' {extra}>"
        )

    async def _pump(self, timeout: float) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.eof = True
            return False
        self._parser.feed(data)
        for event, el in self._parser.read_events():
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.header = dict(el.attrib)
            else:
                self._depth -= 1
                if self._depth == 1:
                    self._elements.append(el)
                elif self._depth == 0:
                    self.closed_by_server = True  # </stream:stream> received
        return True

    async def next(self, timeout: float = 5) -> ET.Element:
        """The next top-level element from the server."""
        while not self._elements:
            if not await self._pump(timeout):
                raise EOFError("connection closed")
        return self._elements.pop(0)

    async def expect(self, tag: str, timeout: float = 5) -> ET.Element:
        el = await self.next(timeout)
        assert el.tag == tag, f"expected {tag}, got {el.tag}: {ET.tostring(el)!r}"
        return el

    async def wait_for(
        self, predicate: Callable[[ET.Element], bool], timeout: float = 5
    ) -> ET.Element:
        while True:
            el = await self.next(timeout)
            if predicate(el):
                return el

    async def stream_error(self, timeout: float = 5) -> str:
        """Read until a stream error; return its condition and check the stream is closed."""
        el = await self.wait_for(lambda e: e.tag == q(STREAMS, "error"), timeout)
        conditions = [
            c.tag.split("}")[1]
            for c in el
            if c.tag.startswith(f"{{{STREAM_ERRORS}}}") and not c.tag.endswith("}text")
        ]
        await self.closed(timeout)
        return conditions[0]

    async def closed(self, timeout: float = 5) -> None:
        """Wait until the server has closed the connection."""
        while not self.eof:
            try:
                await self._pump(timeout)
            except (ConnectionResetError, ET.ParseError):
                self.eof = True

    async def starttls(self) -> None:
        self.send(f"<starttls xmlns='{TLS_NS}'/>")
        await self.expect(q(TLS_NS, "proceed"))
        await self.writer.start_tls(client_ssl_context(), server_hostname=DOMAIN)
        self.open_stream()
        await self.expect(q(STREAMS, "features"))

    async def features(self) -> ET.Element:
        return await self.expect(q(STREAMS, "features"))

    async def auth_plain(self, local: str, password: str = PASSWORD) -> ET.Element:
        token = base64.b64encode(f"\0{local}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        return await self.next()

    async def auth_scram(
        self,
        local: str,
        password: str = PASSWORD,
        mechanism: str = "SCRAM-SHA-1",
        channel_binding: tuple[str, bytes] | None = None,
    ) -> ET.Element:
        """Run a SCRAM exchange with scramp as the client; returns success or failure."""
        client = scramp.ScramClient([mechanism], local, password, channel_binding=channel_binding)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{first}</auth>")
        el = await self.next()
        if el.tag != q(SASL, "challenge"):
            return el
        client.set_server_first(base64.b64decode(el.text or "").decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        self.send(f"<response xmlns='{SASL}'>{final}</response>")
        el = await self.next()
        if el.tag == q(SASL, "success"):
            client.set_server_final(base64.b64decode(el.text or "").decode())
        return el

    def tls_end_point_hash(self) -> bytes:
        """RFC 5929 tls-server-end-point of the server's certificate, computed by scramp
        (an implementation independent of the server's)."""
        from scramp.core import CBindData

        ssl_object = self.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return bytes(CBindData.from_der(der))

    async def authenticate(
        self, local: str, password: str = PASSWORD, *, direct_tls: bool = False
    ) -> ET.Element:
        """STARTTLS (unless direct TLS), SCRAM-SHA-1 that must succeed, stream restart;
        returns the stream features offered after authentication (bind, sm, ...)."""
        self.open_stream()
        await self.features()
        if not direct_tls:
            await self.starttls()
        el = await self.auth_scram(local, password)
        assert el.tag == q(SASL, "success"), ET.tostring(el)
        self.open_stream()
        return await self.features()

    async def login(
        self,
        local: str,
        password: str = PASSWORD,
        resource: str | None = "raw",
        direct_tls: bool = False,
    ) -> str:
        """STARTTLS (unless direct TLS), SCRAM-SHA-1, bind; returns the bound JID."""
        await self.authenticate(local, password, direct_tls=direct_tls)
        res = f"<resource>{resource}</resource>" if resource else ""
        self.send(f"<iq type='set' id='bind1'><bind xmlns='{BIND}'>{res}</bind></iq>")
        el = await self.expect(q(CLIENT, "iq"))
        assert el.get("type") == "result", ET.tostring(el)
        return el.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}").text  # type: ignore[union-attr]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


# ---- XMPP over WebSocket (RFC 7395), raw frames -------------------------------------------
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class WSClient:
    """XMPP over WebSocket with raw frames (slixmpp has no WebSocket): one element per
    message each way. `send` is synchronous like RawClient's, so that RawClient's SASL
    helpers work unchanged."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws
        self.close_code: int | None = None
        self.closed_by_server = False  # <close/> received
        self._sends: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        protocols: tuple[str, ...] = ("xmpp",),
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> WSClient:
        """Connect to `url` (ws:// or wss://, any certificate); `source`: the client's
        loopback address."""
        connector = aiohttp.TCPConnector(
            ssl=client_ssl_context(), local_addr=(source, 0) if source else None
        )
        session = aiohttp.ClientSession(connector=connector)
        try:
            ws = await session.ws_connect(
                url, protocols=protocols, headers=headers, autoclose=False, max_msg_size=0
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    def send(self, data: str | bytes) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        self._sends.append(asyncio.ensure_future(self.ws.send_str(text)))

    async def flush(self) -> None:
        sends, self._sends = self._sends, []
        for send in sends:
            await send

    async def next(self, timeout: float = 5) -> ET.Element:
        """The next element from the server (one per message); EOFError once closed."""
        await self.flush()
        msg = await self.ws.receive(timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            self.close_code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else None
            if self.close_code is None:
                self.close_code = self.ws.close_code
            raise EOFError(f"WebSocket closed ({self.close_code})")
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise EOFError(f"unexpected WebSocket message {msg.type}")
        el = ET.fromstring(msg.data)
        if el.tag == q(FRAMING, "close"):
            self.closed_by_server = True
        return el

    async def expect(self, tag: str, timeout: float = 5) -> ET.Element:
        el = await self.next(timeout)
        assert el.tag == tag, f"expected {tag}, got {el.tag}: {ET.tostring(el)!r}"
        return el

    async def wait_for(
        self, predicate: Callable[[ET.Element], bool], timeout: float = 5
    ) -> ET.Element:
        while True:
            el = await self.next(timeout)
            if predicate(el):
                return el

    def open_stream(self, to: str = DOMAIN) -> None:
        self.send(f"<open xmlns='{FRAMING}' to='{to}' version='1.0'/>")

    async def features(self) -> ET.Element:
        """Our <open/> is answered by the server's, then the features."""
        await self.expect(q(FRAMING, "open"))
        return await self.expect(q(STREAMS, "features"))

    auth_plain = RawClient.auth_plain
    auth_scram = RawClient.auth_scram

    async def login(
        self,
        local: str,
        password: str = PASSWORD,
        resource: str = "ws",
        mechanism: str = "SCRAM-SHA-1",
    ) -> str:
        """SASL (SCRAM or PLAIN), restart, bind; returns the bound JID."""
        self.open_stream()
        await self.features()
        if mechanism == "PLAIN":
            el = await self.auth_plain(local, password)
        else:
            el = await self.auth_scram(local, password, mechanism)
        assert el.tag == q(SASL, "success"), ET.tostring(el)
        self.open_stream()
        await self.features()
        self.send(
            f"<iq type='set' id='bind1' xmlns='{CLIENT}'><bind xmlns='{BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        el = await self.expect(q(CLIENT, "iq"))
        assert el.get("type") == "result", ET.tostring(el)
        return el.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}").text  # type: ignore[union-attr]

    async def stream_error(self, timeout: float = 5) -> str:
        """Read until a stream error; return its condition after the <close/> and the
        WebSocket's closing (`close_code`)."""
        el = await self.wait_for(lambda e: e.tag == q(STREAMS, "error"), timeout)
        conditions = [
            c.tag.split("}")[1]
            for c in el
            if c.tag.startswith(f"{{{STREAM_ERRORS}}}") and not c.tag.endswith("}text")
        ]
        await self.closed(timeout)
        return conditions[0]

    async def closed(self, timeout: float = 5) -> None:
        """Read until the WebSocket closes (`close_code` is then set)."""
        while True:
            try:
                await self.next(timeout)
            except EOFError:
                return

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def error_condition(el: ET.Element) -> tuple[str | None, str | None]:
    """(type, condition) of a stanza error."""
    error = el.find(q(CLIENT, "error"))
    if error is None:
        return None, None
    for child in error:
        if child.tag.startswith(f"{{{STANZA_ERRORS}}}") and not child.tag.endswith("}text"):
            return error.get("type"), child.tag.split("}")[1]
    return error.get("type"), None


# ---- raw sessions on any served domain, presence, quiet checks ----------------------------
async def raw_login(
    server: Server,
    local: str,
    resource: str = "raw",
    *,
    domain: str = DOMAIN,
    password: str = PASSWORD,
) -> tuple[RawClient, str]:
    """A RawClient logged in as local@domain (STARTTLS, SCRAM-SHA-1, bind) on any of the
    server's domains; returns it with the bound full JID."""
    raw = await RawClient.open(server.ports["c2s"])
    raw.open_stream(to=domain)
    await raw.features()
    raw.send(f"<starttls xmlns='{TLS_NS}'/>")
    await raw.expect(q(TLS_NS, "proceed"))
    await raw.writer.start_tls(client_ssl_context(), server_hostname=domain)
    raw.open_stream(to=domain)
    await raw.features()
    el = await raw.auth_scram(local, password)
    assert el.tag == q(SASL, "success"), ET.tostring(el)
    raw.open_stream(to=domain)
    await raw.features()
    raw.send(
        f"<iq type='set' id='bind1'><bind xmlns='{BIND}'>"
        f"<resource>{resource}</resource></bind></iq>"
    )
    el = await raw.expect(q(CLIENT, "iq"))
    assert el.get("type") == "result", ET.tostring(el)
    jid = el.find(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}").text  # type: ignore[union-attr]
    assert jid is not None
    return raw, jid


async def send_presence(raw: RawClient, jid: str, priority: int | None = None) -> ET.Element:
    """Send available presence (with `priority` when given) and wait for the server's
    broadcast of it back to this resource, so that it is known to be available."""
    body = f"<priority>{priority}</priority>" if priority is not None else ""
    raw.send(f"<presence>{body}</presence>")
    return await raw.wait_for(
        lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == jid and e.get("type") is None
    )


async def collect(raw: RawClient, within: float = 0.3) -> list[ET.Element]:
    """Every top-level element the server sends within `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    received: list[ET.Element] = []
    while (remaining := deadline - loop.time()) > 0:
        try:
            received.append(await raw.next(remaining))
        except TimeoutError:
            break
    return received


# ---- RFC 6121: a logged-in resource that keeps what it skipped ------------------------------
ROSTER = "jabber:iq:roster"
QUIET = 0.3  # how long a "nothing arrives" check waits


def is_roster_push(el: ET.Element) -> bool:
    return (
        el.tag == q(CLIENT, "iq")
        and el.get("type") == "set"
        and el.find(q(ROSTER, "query")) is not None
    )


def is_presence(el: ET.Element, **attrs: str | None) -> bool:
    """A presence whose attributes equal `attrs` (None: the attribute is absent);
    `from_` stands for 'from'."""
    return el.tag == q(CLIENT, "presence") and all(
        el.get(k.rstrip("_")) == v for k, v in attrs.items()
    )


def roster_item_attrs(item: ET.Element) -> dict[str, str]:
    """An item's attributes, plus 'groups' as a '|'-joined sorted list when it has any."""
    attrs = dict(item.attrib)
    groups = sorted(g.text or "" for g in item.findall(q(ROSTER, "group")))
    if groups:
        attrs["groups"] = "|".join(groups)
    return attrs


class Resource:
    """A RawClient bound as `jid`. `take` waits for a matching element and keeps the ones
    it passes over, so checks in any order see everything the server sent."""

    def __init__(self, raw: RawClient, jid: str) -> None:
        self.raw = raw
        self.jid = jid
        self.backlog: list[ET.Element] = []
        self._ids = 0

    @property
    def bare(self) -> str:
        return self.jid.split("/", 1)[0]

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    def next_id(self) -> str:
        self._ids += 1
        return f"t{self._ids}"

    async def take(self, predicate: Callable[[ET.Element], bool], timeout: float = 5) -> ET.Element:
        for index, el in enumerate(self.backlog):
            if predicate(el):
                return self.backlog.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                el = await self.raw.next(remaining)
            except TimeoutError:
                seen = [ET.tostring(e).decode() for e in self.backlog]
                raise AssertionError(f"{self.jid}: nothing matching; unmatched: {seen}") from None
            if predicate(el):
                return el
            self.backlog.append(el)

    async def drain(self, timeout: float = QUIET) -> list[ET.Element]:
        """The backlog and everything arriving within `timeout`; empties the backlog."""
        got = self.backlog + await collect(self.raw, timeout)
        self.backlog = []
        return got

    async def assert_none(
        self, predicate: Callable[[ET.Element], bool] = lambda _e: True, timeout: float = QUIET
    ) -> None:
        """Nothing matching is pending or arrives within `timeout` (others are kept)."""
        self.backlog += await collect(self.raw, timeout)
        bad = [ET.tostring(e).decode() for e in self.backlog if predicate(e)]
        assert bad == [], f"{self.jid} got {bad}"

    async def iq(self, iq_id: str, timeout: float = 5) -> ET.Element:
        return await self.take(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == iq_id, timeout)

    async def request(
        self, xml_inside: str, iq_type: str = "get", to: str | None = None, timeout: float = 5
    ) -> ET.Element:
        iq_id = self.next_id()
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{xml_inside}</iq>")
        return await self.iq(iq_id, timeout)

    async def roster_get(self, ver: str | None = None, to: str | None = None) -> ET.Element:
        ver_attr = "" if ver is None else f" ver='{ver}'"
        return await self.request(f"<query xmlns='{ROSTER}'{ver_attr}/>", "get", to)

    async def roster_set(self, item_xml: str, to: str | None = None) -> ET.Element:
        return await self.request(f"<query xmlns='{ROSTER}'>{item_xml}</query>", "set", to)

    async def push(self, jid: str | None = None, timeout: float = 5) -> ET.Element:
        """The next roster push (about `jid` when given), acknowledged as RFC 6121 §2.1.6
        asks; returns the <iq/>."""

        def wanted(el: ET.Element) -> bool:
            if not is_roster_push(el):
                return False
            item = el.find(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
            return jid is None or (item is not None and item.get("jid") == jid)

        el = await self.take(wanted, timeout)
        self.send(f"<iq type='result' id='{el.get('id')}'/>")
        return el

    async def push_item(self, jid: str | None = None, timeout: float = 5) -> dict[str, str]:
        """The attributes of the one item of the next roster push."""
        el = await self.push(jid, timeout)
        items = el.findall(f"{q(ROSTER, 'query')}/{q(ROSTER, 'item')}")
        assert len(items) == 1, ET.tostring(el)
        return roster_item_attrs(items[0])

    async def presence(self, timeout: float = 5, **attrs: str | None) -> ET.Element:
        return await self.take(lambda e: is_presence(e, **attrs), timeout)

    async def message(self, timeout: float = 5) -> ET.Element:
        return await self.take(lambda e: e.tag == q(CLIENT, "message"), timeout)

    async def available(self, priority: int | None = None, extra: str = "") -> ET.Element:
        """Send available presence and wait for its echo to this resource."""
        body = (f"<priority>{priority}</priority>" if priority is not None else "") + extra
        self.send(f"<presence>{body}</presence>")
        return await self.presence(from_=self.jid, type=None)

    async def close(self) -> None:
        await self.raw.close()


async def login_resource(
    server: Server,
    local: str,
    resource: str = "r",
    *,
    roster: bool = False,
    presence: bool = False,
    priority: int | None = None,
    domain: str = DOMAIN,
) -> Resource:
    """Log in; then, when asked, request the roster and send available presence."""
    raw, jid = await raw_login(server, local, resource, domain=domain)
    res = Resource(raw, jid)
    if roster:
        result = await res.roster_get()
        assert result.get("type") == "result", ET.tostring(result)
    if presence or priority is not None:
        await res.available(priority)
    return res


async def authenticated_features(server: Server, local: str) -> tuple[RawClient, ET.Element]:
    """STARTTLS and SCRAM; returns the client and the stream features offered after auth."""
    raw = await RawClient.open(server.ports["c2s"])
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    el = await raw.auth_scram(local)
    assert el.tag == q(SASL, "success"), ET.tostring(el)
    raw.open_stream()
    return raw, await raw.features()
