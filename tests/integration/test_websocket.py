"""XMPP over WebSocket (RFC 7395) over real HTTP on loopback: the same stream, session
and features as TCP behind another transport."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dovecote.jid import JID
from dovecote.modules import caps as caps_module
from dovecote.server import Server
from tests.helpers import (
    BIND,
    CLIENT,
    FRAMING,
    SASL,
    STREAMS,
    TLS_NS,
    WSClient,
    add_user,
    connect,
    disconnect,
    q,
    raw_login,
    send_presence,
    start_server,
)
from tests.integration.test_pep import CAPS, CLIENT_NODE, EVENT, TUNE, caps_answer

SM = "urn:xmpp:sm:3"
SECURE = {"consider_websocket_secure": True}


async def ws_server(tmp_path: Path, **sections: dict[str, Any]) -> Server:
    listen = {"http": "127.0.0.1:0", **sections.pop("listen", {})}
    http = {**SECURE, **sections.pop("http", {})}
    return await start_server(tmp_path, listen=listen, http=http, **sections)


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.ports['http']}/xmpp-websocket"


def mechanisms(features: ET.Element) -> list[str]:
    return [m.text or "" for m in features.iter(q(SASL, "mechanism"))]


def feature_tags(features: ET.Element) -> set[str]:
    return {child.tag for child in features}


async def test_scram_login_and_chat_with_a_tcp_client(tmp_path: Path) -> None:
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        ws = await WSClient.open(ws_url(server))
        ws.open_stream()
        opened = await ws.expect(q(FRAMING, "open"))
        assert opened.get("from") == "example.org" and opened.get("version") == "1.0"
        assert opened.get("id")
        features = await ws.expect(q(STREAMS, "features"))
        # RFC 7395 §3.9: no STARTTLS; no channel binding, so no -PLUS.
        assert features.find(q(TLS_NS, "starttls")) is None
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
        el = await ws.auth_scram("romeo")
        assert el.tag == q(SASL, "success")
        ws.open_stream()
        ws_features = await ws.features()

        # The same features after authentication as a TCP client gets.
        raw, _ = await raw_login(server, "romeo", "tcp")
        raw2 = await _tcp_authenticated_features(server)
        assert feature_tags(ws_features) == feature_tags(raw2)
        assert ws_features.find(q(SM, "sm")) is not None
        await raw.close()

        ws.send(
            f"<iq type='set' id='b' xmlns='{CLIENT}'><bind xmlns='{BIND}'>"
            "<resource>web</resource></bind></iq>"
        )
        bound = await ws.expect(q(CLIENT, "iq"))
        assert bound.findtext(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}") == "romeo@example.org/web"
        ws.send("<presence/>")  # jabber:client implied when left out
        await ws.wait_for(lambda e: e.tag == q(CLIENT, "presence"))

        juliet = await connect(server, "juliet@example.org")
        try:
            # TCP -> WebSocket
            juliet.send_message(
                mto="romeo@example.org/web", mbody="wherefore art thou", mtype="chat"
            )
            msg = await ws.wait_for(lambda e: e.tag == q(CLIENT, "message"))
            assert msg.get("from", "").startswith("juliet@example.org/")
            assert msg.get("type") == "chat"
            assert msg.findtext(q(CLIENT, "body")) == "wherefore art thou"
            # WebSocket -> TCP
            ws.send(
                f"<message xmlns='{CLIENT}' to='juliet@example.org' type='chat'>"
                "<body>here</body></message>"
            )
            got = await asyncio.wait_for(juliet.messages.get(), 5)
            assert got["from"] == "romeo@example.org/web"
            assert got["body"] == "here"
        finally:
            await disconnect(juliet)
        await ws.close()
    finally:
        await server.stop()


async def _tcp_authenticated_features(server: Server) -> ET.Element:
    from tests.helpers import RawClient

    raw = await RawClient.open(server.ports["c2s"])
    try:
        return await raw.authenticate("romeo")
    finally:
        await raw.close()


async def test_plain_over_wss(tmp_path: Path) -> None:
    server = await start_server(tmp_path, listen={"http": "", "https": "127.0.0.1:0"}, http={})
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(f"wss://127.0.0.1:{server.ports['https']}/xmpp-websocket")
        jid = await ws.login("romeo", mechanism="PLAIN")
        assert jid == "romeo@example.org/ws"
        session = server.sessions.get(JID.parse(jid))
        assert session is not None and session.secure
        await ws.close()
    finally:
        await server.stop()


async def test_plain_ws_is_not_secure_unless_configured(tmp_path: Path) -> None:
    """`[tls] required` holds for ws:// as for TCP: no mechanism is offered and SASL is
    refused with encryption-required."""
    server = await ws_server(tmp_path, http={"consider_websocket_secure": False})
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(ws_url(server))
        ws.open_stream()
        features = await ws.features()
        assert mechanisms(features) == []
        el = await ws.auth_scram("romeo")
        assert el.tag == q(SASL, "failure")
        assert el.find(q(SASL, "encryption-required")) is not None
        await ws.close()
    finally:
        await server.stop()


async def test_stream_management_resumption_over_websocket(tmp_path: Path) -> None:
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        ws = await WSClient.open(ws_url(server))
        await ws.login("romeo", resource="web")
        ws.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await ws.expect(q(SM, "enabled"))
        previd = enabled.get("id")
        assert enabled.get("resume") == "true" and previd

        juliet = await connect(server, "juliet@example.org")
        try:
            juliet.send_message(mto="romeo@example.org/web", mbody="one", mtype="chat")
            first = await ws.wait_for(lambda e: e.tag == q(CLIENT, "message"))
            assert first.findtext(q(CLIENT, "body")) == "one"
            ws.send(f"<a xmlns='{SM}' h='1'/>")
            await ws.flush()
            # The browser tab goes away: the WebSocket closes without <close/>.
            await ws.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
            await ws.session.close()
            for _ in range(100):
                session = server.sm_sessions.get(previd)
                if session is not None and session.state == "hibernating":
                    break
                await asyncio.sleep(0.02)
            assert server.sm_sessions[previd].state == "hibernating"

            juliet.send_message(mto="romeo@example.org/web", mbody="two", mtype="chat")
            juliet.send_message(mto="romeo@example.org/web", mbody="three", mtype="chat")
            await asyncio.sleep(0.3)

            ws2 = await WSClient.open(ws_url(server))
            ws2.open_stream()
            await ws2.features()
            assert (await ws2.auth_scram("romeo")).tag == q(SASL, "success")
            ws2.open_stream()
            await ws2.features()
            ws2.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
            resumed = await ws2.expect(q(SM, "resumed"))
            assert resumed.get("previd") == previd
            bodies = []
            while len(bodies) < 2:
                el = await ws2.next()
                if el.tag == q(CLIENT, "message"):
                    bodies.append(el.findtext(q(CLIENT, "body")))
            assert bodies == ["two", "three"]
            # The resumed session is live both ways.
            ws2.send(
                f"<message xmlns='{CLIENT}' to='juliet@example.org' type='chat'>"
                "<body>back</body></message>"
            )
            got = await asyncio.wait_for(juliet.messages.get(), 5)
            assert got["body"] == "back" and got["from"] == "romeo@example.org/web"
            await ws2.close()
        finally:
            await disconnect(juliet)
    finally:
        await server.stop()


async def test_websocket_session_resumed_over_tcp(tmp_path: Path) -> None:
    """A session that hibernated on a WebSocket is resumed on a TCP connection (and is
    written in TCP's serialization from then on)."""
    from tests.helpers import RawClient

    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(ws_url(server))
        jid = await ws.login("romeo", resource="web")
        ws.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = (await ws.expect(q(SM, "enabled"))).get("id")
        await ws.flush()
        await ws.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        await ws.session.close()
        for _ in range(100):
            if server.sm_sessions[previd].state == "hibernating":
                break
            await asyncio.sleep(0.02)

        raw = await RawClient.open(server.ports["c2s"])
        await raw.authenticate("romeo")
        raw.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        await raw.expect(q(SM, "resumed"))
        raw.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = await raw.wait_for(lambda e: e.tag == q(CLIENT, "iq"))
        assert pong.get("type") == "result" and pong.get("to") == jid
        await raw.close()
    finally:
        await server.stop()


async def test_close_handshake(tmp_path: Path) -> None:
    """RFC 7395 §3.6: <close/> is answered with <close/>, then the WebSocket closes
    normally (1000) and the session ends (no hibernation)."""
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(ws_url(server))
        jid = await ws.login("romeo", resource="web")
        ws.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = (await ws.expect(q(SM, "enabled"))).get("id")
        ws.send(f"<close xmlns='{FRAMING}'/>")
        await ws.expect(q(FRAMING, "close"))
        await ws.closed()
        assert ws.close_code == aiohttp.WSCloseCode.OK
        await ws.session.close()
        await asyncio.sleep(0.05)
        assert previd not in server.sm_sessions
        assert not [s for s in server.sessions.resources(_bare(jid))]
    finally:
        await server.stop()


def _bare(jid: str) -> Any:
    return JID.parse(jid).bare


@pytest.mark.parametrize(
    ("frame", "condition", "code"),
    [
        ("<message><body>unfinished", "not-well-formed", 1002),
        ("this is not XML", "bad-format", 1002),
        ("<presence/><presence/>", "bad-format", 1002),
        ("<?xml version='1.0'?><presence/>", "not-well-formed", 1002),
        ("<!-- hi --><presence/>", "restricted-xml", 1002),
    ],
)
async def test_bad_frames_get_stream_errors(
    tmp_path: Path, frame: str, condition: str, code: int
) -> None:
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        other, _ = await raw_login(server, "juliet")
        ws = await WSClient.open(ws_url(server))
        await ws.login("romeo")
        ws.send(frame)
        assert await ws.stream_error() == condition
        assert ws.closed_by_server  # <close/> after the error (RFC 7395 §3.5)
        assert ws.close_code == code
        await ws.session.close()
        # Nothing else is affected.
        other.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = await other.wait_for(lambda e: e.tag == q(CLIENT, "iq"))
        assert pong.get("type") == "result"
        await other.close()
    finally:
        await server.stop()


async def test_oversized_stanzas(tmp_path: Path) -> None:
    """A stanza over max_stanza_size is policy-violation (1008); a message far over it
    is refused by the WebSocket layer itself (1009, message too big)."""
    limit = 10_000
    server = await ws_server(tmp_path, limits={"max_stanza_size": limit})
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(ws_url(server))
        await ws.login("romeo")
        body = "x" * (limit + 10)
        ws.send(f"<message to='romeo@example.org'><body>{body}</body></message>")
        assert await ws.stream_error() == "policy-violation"
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
        await ws.session.close()

        ws = await WSClient.open(ws_url(server))
        await ws.login("romeo")
        ws.send(f"<message to='romeo@example.org'><body>{'y' * (3 * limit)}</body></message>")
        await ws.closed()
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await ws.session.close()
    finally:
        await server.stop()


async def test_binary_message_is_bad_format(tmp_path: Path) -> None:
    server = await ws_server(tmp_path)
    try:
        ws = await WSClient.open(ws_url(server))
        ws.open_stream()
        await ws.features()
        await ws.ws.send_bytes(b"<presence/>")
        assert await ws.stream_error() == "bad-format"
        await ws.session.close()
    finally:
        await server.stop()


async def test_first_message_must_open_the_stream(tmp_path: Path) -> None:
    server = await ws_server(tmp_path)
    try:
        ws = await WSClient.open(ws_url(server))
        ws.send(f"<stream:stream xmlns:stream='{STREAMS}' xmlns='jabber:client' to='example.org'/>")
        # The header comes first (RFC 6120 §4.9.1.2), as an <open/>.
        await ws.expect(q(FRAMING, "open"))
        assert await ws.stream_error() == "invalid-namespace"
        await ws.session.close()
    finally:
        await server.stop()


async def test_missing_subprotocol(tmp_path: Path) -> None:
    """RFC 7395 §3.1: without 'xmpp' none is echoed and the server closes (1002)."""
    server = await ws_server(tmp_path)
    try:
        ws = await WSClient.open(ws_url(server), protocols=())
        assert ws.ws.protocol is None
        await ws.closed()
        assert ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR
        await ws.session.close()
        ws = await WSClient.open(ws_url(server), protocols=("chat",))
        assert ws.ws.protocol is None
        await ws.closed()
        await ws.session.close()
        assert not server.streams
    finally:
        await server.stop()


async def test_origin_not_allowed(tmp_path: Path) -> None:
    server = await ws_server(tmp_path, http={"cors_origins": ["https://chat.example"]})
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WSClient.open(ws_url(server), headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        ws = await WSClient.open(ws_url(server), headers={"Origin": "https://chat.example"})
        ws.open_stream()
        await ws.features()
        await ws.close()
    finally:
        await server.stop()


async def test_connections_per_address(tmp_path: Path) -> None:
    """WebSocket connections count against limits.max_connections_per_ip with TCP's."""
    server = await ws_server(tmp_path, limits={"max_connections_per_ip": 1})
    try:
        ws = await WSClient.open(ws_url(server))
        ws.open_stream()
        await ws.features()
        second = await WSClient.open(ws_url(server))
        assert await second.stream_error() == "policy-violation"
        await second.session.close()
        await ws.close()
        await asyncio.sleep(0.05)
        third = await WSClient.open(ws_url(server))
        third.open_stream()
        await third.features()
        await third.close()
    finally:
        await server.stop()


async def test_presence_broadcast_to_websocket_and_tcp_resources(tmp_path: Path) -> None:
    """The fan-out serializes per kind of connection: the WebSocket copy declares
    jabber:client, the TCP one does not need to."""
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        raw, raw_jid = await raw_login(server, "romeo", "tcp")
        await send_presence(raw, raw_jid)
        ws = await WSClient.open(ws_url(server))
        ws_jid = await ws.login("romeo", resource="web")
        ws.send("<presence><status>on the web</status></presence>")
        mine = await ws.wait_for(
            lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == ws_jid
        )
        assert mine.findtext(q(CLIENT, "status")) == "on the web"
        theirs = await raw.wait_for(
            lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == ws_jid
        )
        assert theirs.findtext(q(CLIENT, "status")) == "on the web"
        await raw.close()
        await ws.close()
    finally:
        await server.stop()


async def test_shutdown_closes_websockets(tmp_path: Path) -> None:
    server = await ws_server(tmp_path)
    await add_user(server, "romeo")
    ws = await WSClient.open(ws_url(server))
    await ws.login("romeo")
    await server.stop()
    assert await ws.stream_error() == "system-shutdown"
    assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    await ws.session.close()


async def test_ping_frames_and_dead_clients(tmp_path: Path) -> None:
    """RFC 7395 §3.8: the server pings; a client that does not answer is dropped, and its
    session hibernates for resumption."""
    server = await ws_server(tmp_path, http={"websocket_ping_interval": 0.3})
    try:
        await add_user(server, "romeo")
        connector = aiohttp.TCPConnector()
        async with aiohttp.ClientSession(connector=connector) as http:
            raw_ws = await http.ws_connect(ws_url(server), protocols=("xmpp",), autoping=False)
            ws = WSClient(http, raw_ws)
            await ws.login("romeo")
            ws.send(f"<enable xmlns='{SM}' resume='true'/>")
            previd = (await ws.expect(q(SM, "enabled"))).get("id")
            msg = await raw_ws.receive(5)
            assert msg.type == aiohttp.WSMsgType.PING
            # No pong: the server closes within half the interval after its ping.
            for _ in range(100):
                session = server.sm_sessions.get(previd)
                if session is not None and session.state == "hibernating":
                    break
                await asyncio.sleep(0.05)
            assert server.sm_sessions[previd].state == "hibernating"
    finally:
        await server.stop()


async def test_a_client_that_does_not_read_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What waits to be written is bounded: past max_write_buffer the connection goes
    (tcp.py does the same); the sender and the server go on."""
    from dovecote.transport.websocket import WebSocketTransport

    monkeypatch.setattr(WebSocketTransport, "max_write_buffer", 256 * 1024)
    server = await ws_server(tmp_path, limits={"c2s_rate": 0})
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        ws = await WSClient.open(ws_url(server))
        jid = await ws.login("romeo", resource="web")
        sender, _ = await raw_login(server, "juliet")
        body = "z" * 8000
        for i in range(2500):
            # Headlines: nothing is stored offline once the session is gone.
            sender.send(
                f"<message to='{jid}' type='headline' id='m{i}'><body>{body}</body></message>"
            )
            if i % 50 == 0:
                await sender.writer.drain()
                if server.sessions.get(JID.parse(jid)) is None:
                    break
        for _ in range(200):
            if server.sessions.get(JID.parse(jid)) is None:
                break
            await asyncio.sleep(0.05)
        assert server.sessions.get(JID.parse(jid)) is None
        assert "does not read its data; dropping the connection" in caplog.text
        await add_user(server, "mercutio")
        other, _ = await raw_login(server, "mercutio")
        other.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = await other.wait_for(lambda e: e.tag == q(CLIENT, "iq"), 10)
        assert pong.get("type") == "result"
        await other.close()
        await sender.close()
        await ws.session.close()
    finally:
        await server.stop()


async def test_rate_limit_applies(tmp_path: Path) -> None:
    server = await ws_server(
        tmp_path, limits={"c2s_rate": 100_000, "c2s_burst": 10_000, "max_stanza_size": 10_000}
    )
    try:
        await add_user(server, "romeo")
        ws = await WSClient.open(ws_url(server))
        jid = await ws.login("romeo")
        (transport,) = [s.transport for s in server.streams]
        started = asyncio.get_running_loop().time()
        for i in range(20):
            ws.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/>{' ' * 9000}</iq>")
        for i in range(20):
            await ws.wait_for(lambda e, i=i: e.get("id") == f"p{i}", 10)
        # 20 x ~9 KB at 100 KB/s after a 10 KB burst: over a second and a half.
        assert asyncio.get_running_loop().time() - started > 1.2
        assert transport.throttled > 0
        assert jid
        await ws.close()
    finally:
        await server.stop()


async def test_carbons_and_csi_over_websocket(tmp_path: Path) -> None:
    """XEP-0280 and XEP-0352 work on a WebSocket session as on TCP: a message sent by the
    TCP resource is copied to the WebSocket one; an inactive WebSocket client still gets
    chat messages at once."""
    carbons = "urn:xmpp:carbons:2"
    csi = "urn:xmpp:csi:0"
    server = await ws_server(tmp_path, modules={"enabled": ["carbons", "csi"]})
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        ws = await WSClient.open(ws_url(server))
        await ws.login("romeo", resource="web")
        ws.send(f"<iq type='set' id='c1'><enable xmlns='{carbons}'/></iq>")
        result = await ws.wait_for(lambda e: e.get("id") == "c1")
        assert result.get("type") == "result"
        ws.send("<presence/>")
        await ws.wait_for(lambda e: e.tag == q(CLIENT, "presence"))
        raw, _ = await raw_login(server, "romeo", "tcp")
        raw.send(
            "<message to='juliet@example.org/x' type='chat' id='m1'>"
            "<body>sent from tcp</body></message>"
        )
        copy = await ws.wait_for(lambda e: e.tag == q(CLIENT, "message"))
        sent = copy.find(q(carbons, "sent"))
        assert sent is not None
        forwarded = sent.find("{urn:xmpp:forward:0}forwarded")
        assert forwarded is not None
        inner = forwarded.find(q(CLIENT, "message"))
        assert inner is not None and inner.findtext(q(CLIENT, "body")) == "sent from tcp"

        ws.send(f"<inactive xmlns='{csi}'/>")
        await ws.flush()
        await asyncio.sleep(0.1)
        raw.send("<message to='romeo@example.org/web' type='chat'><body>urgent</body></message>")
        urgent = await ws.wait_for(
            lambda e: e.tag == q(CLIENT, "message") and e.find(q(CLIENT, "body")) is not None
        )
        assert urgent.findtext(q(CLIENT, "body")) == "urgent"
        await raw.close()
        await ws.close()
    finally:
        await server.stop()


async def test_pep_notifications_to_websocket_and_tcp_resources(tmp_path: Path) -> None:
    """Regression: PEP grouped its notification templates by a `transport` attribute
    sessions do not have, so a WebSocket resource could get the TCP bytes (no
    xmlns='jabber:client', not a complete element in a frame of its own)."""
    server = await ws_server(tmp_path)
    try:
        await add_user(server, "romeo")
        raw, raw_jid = await raw_login(server, "romeo", "tcp")
        ws = await WSClient.open(ws_url(server))
        ws_jid = await ws.login("romeo", resource="web")
        query, ver = caps_answer([f"{TUNE}+notify"])
        caps = f"<c xmlns='{CAPS}' hash='sha-1' node='{CLIENT_NODE}' ver='{ver}'/>"
        for client in (raw, ws):
            client.send(f"<presence>{caps}</presence>")
        # The server asks one of them for the caps' features (XEP-0115 §6.3).
        asked = False
        for client in (raw, ws):
            try:
                request = await client.wait_for(
                    lambda e: e.tag == q(CLIENT, "iq") and e.get("type") == "get", timeout=2
                )
            except (TimeoutError, AssertionError):
                continue
            client.send(f"<iq type='result' id='{request.get('id')}' to='example.org'>{query}</iq>")
            asked = True
            break
        assert asked
        for jid in (raw_jid, ws_jid):
            for _ in range(100):
                session = server.sessions.get(JID.parse(jid))
                if session is not None and f"{TUNE}+notify" in caps_module.features_of(session):
                    break
                await asyncio.sleep(0.02)
        raw.send(
            "<iq type='set' id='pub'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{TUNE}'><item><tune xmlns='{TUNE}'><title>Both</title></tune>"
            "</item></publish></pubsub></iq>"
        )
        for client, jid in ((raw, raw_jid), (ws, ws_jid)):
            event = await client.wait_for(
                lambda e: e.tag == q(CLIENT, "message") and e.find(q(EVENT, "event")) is not None
            )
            assert event.get("to") == jid
            assert event.findtext(f".//{q(TUNE, 'title')}") == "Both"
        await raw.close()
        await ws.close()
    finally:
        await server.stop()
