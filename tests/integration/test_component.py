"""XEP-0114 external components over real sockets: the accept handshake, stanzas both ways
between a component and local users (raw XML and slixmpp's ComponentXMPP), the 'from'
rule, and what senders get while the component is away."""

from __future__ import annotations

import asyncio
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import slixmpp

from dovecote.config import ConfigError, config_from_dict
from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    STANZA_ERRORS,
    STREAMS,
    RawClient,
    add_user,
    collect,
    connect,
    disconnect,
    error_condition,
    q,
    raw_login,
    start_server,
)

COMPONENT_NS = "jabber:component:accept"
GATEWAY = "gateway.example.org"
SECRET = "s3cr3t-shared"
OTHER_COMPONENT = "bots.example.org"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
MESSAGE = q(CLIENT, "message")
IQ = q(CLIENT, "iq")


def cq(tag: str) -> str:
    return q(COMPONENT_NS, tag)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(
        tmp_path / "data",
        listen={"component": "127.0.0.1:0"},
        components={GATEWAY: SECRET, OTHER_COMPONENT: "other-secret"},
    )
    await add_user(srv, "alice")
    try:
        yield srv
    finally:
        await srv.stop()


class RawComponent:
    """A component speaking raw XML."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw

    @classmethod
    async def open(
        cls, server: Server, domain: str = GATEWAY, namespace: str = COMPONENT_NS
    ) -> RawComponent:
        raw = await RawClient.open(server.ports["component"])
        raw.send(f"<stream:stream xmlns='{namespace}' xmlns:stream='{STREAMS}' to='{domain}'>")
        return cls(raw)

    async def header(self) -> dict[str, str]:
        """Wait for the server's stream header."""
        while self.raw.header is None:
            await self.raw._pump(5)
        return self.raw.header

    async def handshake(self, secret: str = SECRET) -> ET.Element:
        header = await self.header()
        digest = hashlib.sha1((header["id"] + secret).encode()).hexdigest()
        self.raw.send(f"<handshake>{digest}</handshake>")
        return await self.raw.next()

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    async def next(self, timeout: float = 5) -> ET.Element:
        return await self.raw.next(timeout)

    async def close(self) -> None:
        await self.raw.close()


@pytest.fixture
async def gateway(server: Server) -> AsyncIterator[RawComponent]:
    component = await RawComponent.open(server)
    el = await component.handshake()
    assert el.tag == cq("handshake") and list(el) == [] and not el.text, ET.tostring(el)
    yield component
    await component.close()


def component_error(el: ET.Element) -> tuple[str | None, str | None]:
    """(type, condition) of a stanza error received on the component stream."""
    error = el.find(cq("error"))
    assert error is not None, ET.tostring(el)
    conditions = [
        c.tag.split("}")[1]
        for c in error
        if c.tag.startswith(f"{{{STANZA_ERRORS}}}") and not c.tag.endswith("}text")
    ]
    return error.get("type"), conditions[0]


async def wait_disconnected(server: Server, domain: str = GATEWAY) -> None:
    component = server.components[domain]
    for _ in range(200):
        if not component.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{domain} still connected")


# ---- the handshake (XEP-0114 §3) ---------------------------------------------------------
async def test_handshake_accepted(server: Server) -> None:
    component = await RawComponent.open(server)
    header = await component.header()
    assert header["from"] == GATEWAY
    assert len(header["id"]) >= 16
    el = await component.handshake()
    assert el.tag == cq("handshake") and list(el) == [] and not el.text
    assert server.components[GATEWAY].connected
    await component.close()
    await wait_disconnected(server)


async def test_wrong_handshake_is_not_authorized(server: Server) -> None:
    component = await RawComponent.open(server)
    await component.header()
    component.send(f"<handshake>{hashlib.sha1(b'guess').hexdigest()}</handshake>")
    assert await component.raw.stream_error() == "not-authorized"
    assert not server.components[GATEWAY].connected


async def test_handshake_with_another_components_secret(server: Server) -> None:
    component = await RawComponent.open(server)
    el = await component.handshake("other-secret")
    assert el.tag == q(STREAMS, "error")
    assert el.find(q("urn:ietf:params:xml:ns:xmpp-streams", "not-authorized")) is not None
    await component.raw.closed()
    assert not server.components[GATEWAY].connected


async def test_unknown_domain_is_host_unknown(server: Server) -> None:
    component = await RawComponent.open(server, "nothing.example.org")
    assert await component.raw.stream_error() == "host-unknown"
    assert component.raw.header is not None  # XEP-0114 §3: a header, then the error


async def test_server_domain_is_not_a_component(server: Server) -> None:
    component = await RawComponent.open(server, DOMAIN)
    assert await component.raw.stream_error() == "host-unknown"


async def test_client_namespace_is_invalid_namespace(server: Server) -> None:
    component = await RawComponent.open(server, namespace=CLIENT)
    assert await component.raw.stream_error() == "invalid-namespace"


async def test_stanza_before_handshake_is_not_authorized(server: Server) -> None:
    component = await RawComponent.open(server)
    await component.header()
    component.send(f"<message from='a@{GATEWAY}' to='alice@{DOMAIN}'><body>x</body></message>")
    assert await component.raw.stream_error() == "not-authorized"


async def test_second_connection_is_a_conflict(server: Server, gateway: RawComponent) -> None:
    second = await RawComponent.open(server)
    assert await second.raw.stream_error() == "conflict"
    # The first connection is untouched and still routes.
    raw, jid = await raw_login(server, "alice")
    try:
        raw.send(f"<message to='x@{GATEWAY}' id='m1'><body>still here</body></message>")
        el = await gateway.next()
        assert el.tag == cq("message") and el.get("from") == jid
    finally:
        await raw.close()


# ---- stanzas both ways --------------------------------------------------------------------
async def test_client_message_reaches_the_component(server: Server, gateway: RawComponent) -> None:
    raw, jid = await raw_login(server, "alice")
    try:
        raw.send(
            f"<message to='x@{GATEWAY}' type='chat' id='m1'><body>hello</body>"
            f"<thread>t1</thread><custom xmlns='urn:example:x'><y/></custom></message>"
        )
        el = await gateway.next()
        assert el.tag == cq("message")
        assert (el.get("from"), el.get("to"), el.get("type"), el.get("id")) == (
            jid,
            f"x@{GATEWAY}",
            "chat",
            "m1",
        )
        # Children keep their namespaces: the component's for body and thread.
        assert el.findtext(cq("body")) == "hello"
        assert el.findtext(cq("thread")) == "t1"
        assert el.find(q("urn:example:x", "custom")) is not None
        # To the component's own domain too.
        raw.send(f"<iq to='{GATEWAY}' type='get' id='i1'><query xmlns='{DISCO_INFO}'/></iq>")
        el = await gateway.next()
        assert el.tag == cq("iq") and el.get("from") == jid and el.get("to") == GATEWAY
        assert el.find(q(DISCO_INFO, "query")) is not None
        # ... and the component's answer goes back to the client.
        gateway.send(
            f"<iq from='{GATEWAY}' to='{jid}' type='result' id='i1'>"
            f"<query xmlns='{DISCO_INFO}'><identity category='gateway' type='irc'/>"
            f"</query></iq>"
        )
        answer = await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == "i1")
        assert answer.get("type") == "result" and answer.get("from") == GATEWAY
        identity = answer.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
        assert identity is not None and identity.get("type") == "irc"
    finally:
        await raw.close()


async def test_component_message_reaches_a_local_user(
    server: Server, gateway: RawComponent
) -> None:
    client = await connect(server, f"alice@{DOMAIN}")
    try:
        gateway.send(
            f"<message from='bot@{GATEWAY}/r' to='alice@{DOMAIN}' type='chat'>"
            f"<body>from the gateway</body></message>"
        )
        msg = await asyncio.wait_for(client.messages.get(), 5)
        assert str(msg["from"]) == f"bot@{GATEWAY}/r"
        assert msg["body"] == "from the gateway"
        assert msg["type"] == "chat"
    finally:
        await disconnect(client)


async def test_component_asks_the_server(server: Server, gateway: RawComponent) -> None:
    gateway.send(
        f"<iq from='{GATEWAY}' to='{DOMAIN}' type='get' id='d1'><query xmlns='{DISCO_INFO}'/></iq>"
    )
    el = await gateway.next()
    assert el.tag == cq("iq") and el.get("type") == "result", ET.tostring(el)
    assert (el.get("from"), el.get("to"), el.get("id")) == (DOMAIN, GATEWAY, "d1")
    identity = el.find(f"{q(DISCO_INFO, 'query')}/{q(DISCO_INFO, 'identity')}")
    assert identity is not None and identity.get("category") == "server"
    # An error comes back too: a message to a user who does not exist.
    gateway.send(
        f"<message from='bot@{GATEWAY}' to='nobody@{DOMAIN}' id='n1'><body>x</body></message>"
    )
    el = await gateway.next()
    assert el.tag == cq("message") and el.get("type") == "error" and el.get("id") == "n1"
    assert el.get("to") == f"bot@{GATEWAY}"
    assert component_error(el) == ("cancel", "service-unavailable")


async def test_iq_without_id_is_bad_request(server: Server, gateway: RawComponent) -> None:
    gateway.send(
        f"<iq from='{GATEWAY}' to='{DOMAIN}' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    el = await gateway.next()
    assert el.tag == cq("iq") and el.get("type") == "error"
    assert component_error(el) == ("modify", "bad-request")


async def test_server_lists_components_in_disco_items(
    server: Server, gateway: RawComponent
) -> None:
    raw, _jid = await raw_login(server, "alice")
    try:
        raw.send(f"<iq to='{DOMAIN}' type='get' id='d1'><query xmlns='{DISCO_ITEMS}'/></iq>")
        el = await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == "d1")
        jids = {item.get("jid") for item in el.iter(q(DISCO_ITEMS, "item"))}
        assert GATEWAY in jids
    finally:
        await raw.close()


# ---- the 'from' rule and addressing (XEP-0114 §3) -------------------------------------------
@pytest.mark.parametrize(
    ("stanza", "condition"),
    [
        (
            f"<message from='mallory@{DOMAIN}' to='alice@{DOMAIN}'><body>x</body></message>",
            "invalid-from",
        ),
        (
            f"<message from='x@{OTHER_COMPONENT}' to='alice@{DOMAIN}'><body>x</body></message>",
            "invalid-from",
        ),
        (
            f"<message from='x@sub.{GATEWAY}' to='alice@{DOMAIN}'><body>x</body></message>",
            "invalid-from",
        ),
        (f"<presence from='{DOMAIN}' to='alice@{DOMAIN}'/>", "invalid-from"),
        (f"<message to='alice@{DOMAIN}'><body>x</body></message>", "improper-addressing"),
        (f"<message from='x@{GATEWAY}'><body>x</body></message>", "improper-addressing"),
        (f"<message from='a@b@{GATEWAY}' to='alice@{DOMAIN}'/>", "improper-addressing"),
        ("<foo xmlns='urn:example:x'/>", "unsupported-stanza-type"),
    ],
    ids=[
        "local-user",
        "other-component",
        "subdomain",
        "server",
        "no-from",
        "no-to",
        "malformed-from",
        "not-a-stanza",
    ],
)
async def test_bad_addressing_closes_the_stream(
    server: Server, gateway: RawComponent, stanza: str, condition: str
) -> None:
    raw, _jid = await raw_login(server, "alice")
    try:
        gateway.send(stanza)
        assert await gateway.raw.stream_error() == condition
        await wait_disconnected(server)
        # Nothing reached alice.
        assert [e for e in await collect(raw) if e.tag == MESSAGE] == []
    finally:
        await raw.close()


# ---- the component away --------------------------------------------------------------------
async def test_disconnected_component_gets_service_unavailable(server: Server) -> None:
    component = await RawComponent.open(server)
    assert (await component.handshake()).tag == cq("handshake")
    raw, jid = await raw_login(server, "alice")
    try:
        await component.close()
        await wait_disconnected(server)
        raw.send(f"<message to='x@{GATEWAY}' type='chat' id='m1'><body>anyone?</body></message>")
        el = await raw.wait_for(lambda e: e.tag == MESSAGE and e.get("id") == "m1")
        assert el.get("type") == "error" and el.get("from") == f"x@{GATEWAY}"
        assert error_condition(el) == ("cancel", "service-unavailable")
        raw.send(f"<iq to='{GATEWAY}' type='get' id='i1'><query xmlns='{DISCO_INFO}'/></iq>")
        el = await raw.wait_for(lambda e: e.tag == IQ and e.get("id") == "i1")
        assert el.get("type") == "error" and el.get("to") == jid
        assert error_condition(el) == ("cancel", "service-unavailable")
        # It may come back, and then it gets its stanzas again.
        again = await RawComponent.open(server)
        assert (await again.handshake()).tag == cq("handshake")
        raw.send(f"<message to='x@{GATEWAY}' id='m2'><body>back?</body></message>")
        el = await again.next()
        assert el.tag == cq("message") and el.get("id") == "m2"
        await again.close()
    finally:
        await raw.close()


async def test_server_shutdown_closes_components(tmp_path: Path) -> None:
    srv = await start_server(
        tmp_path / "data", listen={"component": "127.0.0.1:0"}, components={GATEWAY: SECRET}
    )
    component = await RawComponent.open(srv)
    assert (await component.handshake()).tag == cq("handshake")
    await srv.stop()
    assert await component.raw.stream_error() == "system-shutdown"


# ---- slixmpp's component --------------------------------------------------------------------
class EchoComponent(slixmpp.ComponentXMPP):
    """Answers every chat message with the same body, from the addressed JID."""

    def __init__(self, server: Server) -> None:
        super().__init__(GATEWAY, SECRET, "127.0.0.1", server.ports["component"])
        self.ready = asyncio.Event()
        self.add_event_handler("session_start", lambda _e: self.ready.set())
        self.add_event_handler("message", self.echo)

    def echo(self, msg: slixmpp.Message) -> None:
        if msg["type"] in ("chat", "normal"):
            self.send_message(
                mto=msg["from"], mfrom=msg["to"], mbody=f"echo: {msg['body']}", mtype="chat"
            )


async def test_slixmpp_component_echoes_a_client(server: Server) -> None:
    echo = EchoComponent(server)
    echo.connect()
    await asyncio.wait_for(echo.ready.wait(), 10)
    client = await connect(server, f"alice@{DOMAIN}")
    try:
        client.send_message(mto=f"echo@{GATEWAY}", mbody="ping", mtype="chat")
        msg = await asyncio.wait_for(client.messages.get(), 5)
        assert str(msg["from"]) == f"echo@{GATEWAY}"
        assert msg["body"] == "echo: ping"
    finally:
        await disconnect(client)
        echo.disconnect()
        await wait_disconnected(server)


# ---- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("components", "message"),
    [
        ({DOMAIN: "x"}, f"'{DOMAIN}' is already served by this server"),
        ({"bad..domain": "x"}, "'components.bad..domain'"),
        ({GATEWAY: ""}, f"'components.{GATEWAY}'"),
    ],
    ids=["server-domain", "bad-domain", "empty-secret"],
)
def test_component_configuration_errors(components: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": {"domains": [DOMAIN]}, "components": components})
    assert message in str(info.value)


def test_component_domains_are_prepared() -> None:
    config = config_from_dict(
        {"components": {"Gateway.Example.ORG": SECRET}, "listen": {"component": "127.0.0.1:5347"}}
    )
    assert {d: c.secret for d, c in config.components.items()} == {GATEWAY: SECRET}
    assert config.listen.component == "127.0.0.1:5347"
