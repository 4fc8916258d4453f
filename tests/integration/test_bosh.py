"""BOSH (XEP-0124 1.11, XEP-0206 1.4) over real HTTP on loopback: the same stream,
session and features as TCP behind many HTTP requests. slixmpp has no BOSH client, so
the bodies are raw."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import scramp

from dovecote.jid import JID
from dovecote.server import Server
from tests.helpers import (
    BIND,
    CLIENT,
    DOMAIN,
    PASSWORD,
    SASL,
    STREAM_ERRORS,
    STREAMS,
    TLS_NS,
    add_user,
    q,
    raw_login,
    send_presence,
    start_server,
)

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
SM = "urn:xmpp:sm:3"
PING = "urn:xmpp:ping"
BODY = q(HTTPBIND, "body")


async def bosh_server(tmp_path: Path, **sections: dict[str, Any]) -> Server:
    listen = {"http": "127.0.0.1:0", **sections.pop("listen", {})}
    bosh = {"consider_secure": True, **sections.pop("bosh", {})}
    return await start_server(tmp_path, listen=listen, bosh=bosh, **sections)


def bosh_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.ports['http']}/http-bind"


class BoshClient:
    """A BOSH client with raw bodies: `send` posts the next rid and returns the parsed
    response `<body/>`."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http
        self.rid = secrets.randbelow(2**40) + 1000
        self.sid: str | None = None
        self.last_raw = b""
        self._pending: list[asyncio.Task[ET.Element]] = []

    @classmethod
    async def open(cls, server: Server) -> BoshClient:
        return cls(bosh_url(server), aiohttp.ClientSession())

    async def close(self) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.http.close()

    def body(self, payload: str = "", *, rid: int | None = None, **attrs: str) -> str:
        all_attrs = {"rid": str(self.rid if rid is None else rid)}
        if self.sid is not None:
            all_attrs["sid"] = self.sid
        all_attrs.update(attrs)
        text = " ".join(f"{name.replace('__', ':')}='{value}'" for name, value in all_attrs.items())
        return (
            f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' {text}>{payload}</body>"
            if payload
            else f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' {text}/>"
        )

    async def post(self, data: str | bytes, **headers: str) -> aiohttp.ClientResponse:
        response = await self.http.post(
            self.url,
            data=data.encode() if isinstance(data, str) else data,
            headers={"Content-Type": "text/xml; charset=utf-8", **headers},
        )
        self.last_raw = await response.read()
        return response

    async def post_body(self, data: str) -> ET.Element:
        response = await self.post(data)
        assert response.status == 200, (response.status, self.last_raw)
        assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
        el = ET.fromstring(self.last_raw)
        assert el.tag == BODY
        return el

    async def send(self, payload: str = "", **attrs: str) -> ET.Element:
        """Post the next request (the next rid)."""
        self.rid += 1
        return await self.post_body(self.body(payload, **attrs))

    def send_soon(self, payload: str = "", **attrs: str) -> asyncio.Task[ET.Element]:
        """The next request, posted in the background (a request the server holds)."""
        self.rid += 1
        task = asyncio.ensure_future(self.post_body(self.body(payload, **attrs)))
        self._pending.append(task)
        return task

    async def create(self, **attrs: str) -> ET.Element:
        """XEP-0124 §7, XEP-0206 §4: returns the creation response."""
        params = {
            "to": DOMAIN,
            "wait": "60",
            "hold": "1",
            "ver": "1.11",
            "xml__lang": "en",
            "xmpp__version": "1.0",
            **attrs,
        }
        el = await self.post_body(self.body(**params))
        self.sid = el.get("sid")
        return el

    async def features(self, el: ET.Element) -> ET.Element:
        """The stream features, in `el` or in the responses that follow."""
        while (features := el.find(q(STREAMS, "features"))) is None:
            el = await self.send()
        return features

    async def auth_scram(
        self, local: str, password: str = PASSWORD, mechanism: str = "SCRAM-SHA-1"
    ) -> ET.Element:
        client = scramp.ScramClient([mechanism], local, password)
        first = base64.b64encode(client.get_client_first().encode()).decode()
        el = await self.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{first}</auth>")
        challenge = el.find(q(SASL, "challenge"))
        assert challenge is not None, ET.tostring(el)
        client.set_server_first(base64.b64decode(challenge.text or "").decode())
        final = base64.b64encode(client.get_client_final().encode()).decode()
        el = await self.send(f"<response xmlns='{SASL}'>{final}</response>")
        success = el.find(q(SASL, "success"))
        assert success is not None, ET.tostring(el)
        client.set_server_final(base64.b64decode(success.text or "").decode())
        return success

    async def restart(self) -> ET.Element:
        """XEP-0206 §5: the stream features after the restart."""
        el = await self.send(to=DOMAIN, xml__lang="en", xmpp__restart="true")
        return await self.features(el)

    async def bind(self, resource: str) -> str:
        el = await self.send(
            f"<iq xmlns='{CLIENT}' type='set' id='bind1'><bind xmlns='{BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        iq = el.find(q(CLIENT, "iq"))
        assert iq is not None and iq.get("type") == "result", ET.tostring(el)
        return iq.findtext(f"{q(BIND, 'bind')}/{q(BIND, 'jid')}") or ""

    async def login(self, local: str, resource: str = "web", **attrs: str) -> str:
        el = await self.create(**attrs)
        await self.features(el)
        await self.auth_scram(local)
        await self.restart()
        return await self.bind(resource)

    async def wait_for(self, predicate: Any, polls: int = 20) -> ET.Element:
        """Poll until a payload element matching `predicate` arrives."""
        for _ in range(polls):
            el = await self.send()
            for child in el:
                if predicate(child):
                    return child
        raise AssertionError("nothing matching arrived")


def children(el: ET.Element) -> list[str]:
    return [child.tag for child in el]


def mechanisms(features: ET.Element) -> list[str]:
    return [m.text or "" for m in features.iter(q(SASL, "mechanism"))]


def is_message(body: str) -> Any:
    return lambda e: e.tag == q(CLIENT, "message") and e.findtext(q(CLIENT, "body")) == body


async def test_session_creation_response(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        el = await bosh.create(wait="600", hold="5", ver="1.6")
        # XEP-0124 §7: what the client asked for, capped by [bosh].
        assert el.get("sid") and len(el.get("sid") or "") >= 20
        assert el.get("wait") == "60"
        assert el.get("hold") == "1"
        assert el.get("requests") == "2"
        assert el.get("inactivity") == "60"
        assert el.get("polling") == "2"
        assert el.get("maxpause") == "300"
        assert el.get("ver") == "1.6"  # the lower of the two versions
        # XEP-0206 §4: the stream's attributes, and the features at once.
        assert el.get("from") == DOMAIN
        assert el.get("authid")
        assert el.get(q(XBOSH, "version")) == "1.0"
        assert el.get(q(XBOSH, "restartlogic")) == "true"
        features = el.find(q(STREAMS, "features"))
        assert features is not None
        assert features.find(q(TLS_NS, "starttls")) is None
        # No channel binding over BOSH: no -PLUS.
        assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
        # Later responses carry none of the session attributes.
        later = await bosh.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>=</auth>")
        assert later.get("sid") is None and later.get("wait") is None
    finally:
        await bosh.close()
        await server.stop()


async def test_plain_http_is_not_secure_unless_configured(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path, bosh={"consider_secure": False})
    bosh = await BoshClient.open(server)
    try:
        el = await bosh.create()
        features = el.find(q(STREAMS, "features"))
        assert features is not None
        # [tls] required: no SASL without TLS, and no STARTTLS to offer either.
        assert mechanisms(features) == []
    finally:
        await bosh.close()
        await server.stop()


async def test_scram_login_bind_and_chat_with_a_tcp_client(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        jid = await bosh.login("romeo")
        assert jid == f"romeo@{DOMAIN}/web"
        raw, raw_jid = await raw_login(server, "juliet", "tcp")

        # A held request is answered when a message arrives.
        held = bosh.send_soon()
        await asyncio.sleep(0.3)
        assert not held.done()
        raw.send(f"<message to='{jid}' type='chat'><body>hi romeo</body></message>")
        el = await asyncio.wait_for(held, 5)
        message = el.find(q(CLIENT, "message"))
        assert message is not None
        assert message.get("from") == raw_jid
        assert message.findtext(q(CLIENT, "body")) == "hi romeo"

        # The other way (the request is held: nothing comes back).
        bosh.send_soon(
            f"<message xmlns='{CLIENT}' to='{raw_jid}' type='chat'><body>hi juliet</body></message>"
        )
        got = await raw.wait_for(lambda e: e.tag == q(CLIENT, "message"))
        assert got.get("from") == jid and got.findtext(q(CLIENT, "body")) == "hi juliet"
        await raw.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_plain_and_scram_sha_256(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    try:
        await add_user(server, "romeo")
        bosh = await BoshClient.open(server)
        await bosh.features(await bosh.create())
        token = base64.b64encode(f"\0romeo\0{PASSWORD}".encode()).decode()
        el = await bosh.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        assert children(el) == [q(SASL, "success")]
        features = await bosh.restart()
        assert features.find(q(BIND, "bind")) is not None
        assert features.find(q(SM, "sm")) is not None
        assert await bosh.bind("plain") == f"romeo@{DOMAIN}/plain"
        await bosh.close()

        bosh = await BoshClient.open(server)
        await bosh.features(await bosh.create())
        await bosh.auth_scram("romeo", mechanism="SCRAM-SHA-256")
        await bosh.restart()
        assert await bosh.bind("scram") == f"romeo@{DOMAIN}/scram"
        await bosh.close()

        bosh = await BoshClient.open(server)
        await bosh.features(await bosh.create())
        wrong = base64.b64encode(b"\0romeo\0wrong").decode()
        el = await bosh.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{wrong}</auth>")
        failure = el.find(q(SASL, "failure"))
        assert failure is not None and failure.find(q(SASL, "not-authorized")) is not None
        await bosh.close()
    finally:
        await server.stop()


async def test_empty_response_after_wait(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await bosh.login("romeo", wait="1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Answered empty once `wait` is over (never held for good: the wait_for is a
        # liveness bound, not a timing assertion).
        el = await asyncio.wait_for(bosh.send(), 30)
        elapsed = loop.time() - started
        assert list(el) == [] and el.get("type") is None
        assert elapsed >= 0.8
    finally:
        await bosh.close()
        await server.stop()


async def test_retransmission_of_a_lost_response(tmp_path: Path) -> None:
    """XEP-0124 §14.3: a rid sent again gets the same response again."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await bosh.login("romeo")
        bosh.rid += 1
        request = bosh.body(
            f"<iq xmlns='{CLIENT}' type='get' id='ping1'><ping xmlns='{PING}'/></iq>"
        )
        first = await bosh.post_body(request)
        first_raw = bosh.last_raw
        assert first.find(q(CLIENT, "iq")) is not None
        again = await bosh.post_body(request)
        assert bosh.last_raw == first_raw
        assert again.find(q(CLIENT, "iq")) is not None
        # The session goes on; the ping was handled once.
        el = await bosh.send(
            f"<iq xmlns='{CLIENT}' type='get' id='ping2'><ping xmlns='{PING}'/></iq>"
        )
        assert [iq.get("id") for iq in el.iter(q(CLIENT, "iq"))] == ["ping2"]
        # A rid older than the cache: item-not-found, and the session is over.
        old = await bosh.post_body(bosh.body(rid=bosh.rid - 5))
        assert old.get("type") == "terminate" and old.get("condition") == "item-not-found"
        gone = await bosh.send()
        assert gone.get("type") == "terminate" and gone.get("condition") == "item-not-found"
    finally:
        await bosh.close()
        await server.stop()


async def test_requests_are_handled_in_rid_order(tmp_path: Path) -> None:
    """XEP-0124 §14.2: a request ahead of a gap waits for it."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        await bosh.login("romeo")
        raw, raw_jid = await raw_login(server, "juliet", "tcp")

        def message(text: str) -> str:
            return f"<message xmlns='{CLIENT}' to='{raw_jid}'><body>{text}</body></message>"

        later = asyncio.ensure_future(
            bosh.post_body(bosh.body(message("second"), rid=bosh.rid + 2))
        )
        await asyncio.sleep(0.3)
        assert not later.done()
        first = await bosh.post_body(bosh.body(message("first"), rid=bosh.rid + 1))
        bosh.rid += 2
        assert first.get("type") is None
        got = [await raw.wait_for(lambda e: e.tag == q(CLIENT, "message")) for _ in range(2)]
        assert [m.findtext(q(CLIENT, "body")) for m in got] == ["first", "second"]
        # The second is held (hold 1) until the next request comes.
        assert not later.done()
        bosh.send_soon()
        await asyncio.wait_for(later, 5)
        await raw.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_rid_outside_the_window(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await bosh.login("romeo")
        el = await bosh.post_body(bosh.body(rid=bosh.rid + 3))  # the window is 2
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        assert bosh.sid not in server.http.app[_bosh_key()].sessions
    finally:
        await bosh.close()
        await server.stop()


def _bosh_key() -> Any:
    from dovecote.http.bosh import BOSH

    return BOSH


async def test_unknown_sid_and_bad_requests(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        bosh.sid = "no-such-session"
        el = await bosh.send()
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        for bad in (
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'",  # not complete
            b"<body xmlns='urn:other' rid='1'/>",  # not a BOSH body
            b"<!DOCTYPE body><body xmlns='http://jabber.org/protocol/httpbind'/>",
            b"not xml at all",
        ):
            response = await bosh.post(bad)
            assert response.status == 200
            el = ET.fromstring(bosh.last_raw)
            assert el.get("type") == "terminate" and el.get("condition") == "bad-request", bad
        # A creation request without a valid rid.
        bosh.sid = None
        el = await bosh.post_body(
            f"<body xmlns='{HTTPBIND}' to='{DOMAIN}' rid='x' wait='5' ver='1.11'/>"
        )
        assert el.get("condition") == "bad-request"
        # A legacy client (no 'ver') gets HTTP error codes (XEP-0124 §17.1).
        response = await bosh.post(f"<body xmlns='{HTTPBIND}' to='{DOMAIN}' wait='5' hold='1'/>")
        assert response.status == 400
        # A body over [bosh] max_body_size.
        response = await bosh.post(b"<body>" + b" " * 1_100_000 + b"</body>")
        assert response.status == 413
    finally:
        await bosh.close()
        await server.stop()


async def test_bad_xml_in_a_session_ends_it(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await bosh.login("romeo")
        bosh.rid += 1
        response = await bosh.post(bosh.body("<message><body>broken</message>"))
        el = ET.fromstring(bosh.last_raw)
        assert response.status == 200
        assert el.get("type") == "terminate" and el.get("condition") == "bad-request"
        # The session it named is over.
        assert bosh.sid not in server.http.app[_bosh_key()].sessions
        el = await bosh.send()
        assert el.get("condition") == "item-not-found"

        # A stanza over [limits] max_stanza_size: policy-violation.
        bosh.sid = None
        await bosh.login("romeo", resource="big")
        bosh.rid += 1
        big = "x" * 300_000
        response = await bosh.post(bosh.body(f"<message><body>{big}</body></message>"))
        el = ET.fromstring(bosh.last_raw)
        assert el.get("type") == "terminate" and el.get("condition") == "policy-violation"
        assert bosh.sid not in server.http.app[_bosh_key()].sessions
    finally:
        await bosh.close()
        await server.stop()


async def test_terminate(tmp_path: Path) -> None:
    """XEP-0124 §13: the payload goes through, the session ends cleanly (no
    hibernation even with stream management)."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        raw, raw_jid = await raw_login(server, "romeo", "tcp")
        await send_presence(raw, raw_jid)
        jid = await bosh.login("romeo")
        el = await bosh.send(f"<enable xmlns='{SM}' resume='true'/>")
        assert el.find(q(SM, "enabled")) is not None
        await bosh.send(f"<presence xmlns='{CLIENT}'/>")
        await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == jid)
        el = await bosh.send(
            f"<presence xmlns='{CLIENT}' type='unavailable'><status>bye</status></presence>",
            type="terminate",
        )
        assert el.get("type") == "terminate" and el.get("condition") is None
        gone = await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == jid)
        assert gone.get("type") == "unavailable" and gone.findtext(q(CLIENT, "status")) == "bye"
        el = await bosh.send()
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        for _ in range(50):
            if not server.sm_sessions and server.sessions.get(JID.parse(jid)) is None:
                break
            await asyncio.sleep(0.02)
        assert not server.sm_sessions and server.sessions.get(JID.parse(jid)) is None
        await raw.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_inactivity_ends_the_session(tmp_path: Path) -> None:
    server = await bosh_server(
        tmp_path, bosh={"max_inactivity": 1}, stream_management={"enabled": False}
    )
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        raw, raw_jid = await raw_login(server, "romeo", "tcp")
        await send_presence(raw, raw_jid)
        jid = await bosh.login("romeo", wait="1")
        await bosh.send(f"<presence xmlns='{CLIENT}'/>")
        await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == jid)
        # No request for more than `inactivity` seconds: the client is taken for gone.
        gone = await raw.wait_for(
            lambda e: e.tag == q(CLIENT, "presence") and e.get("from") == jid, timeout=6
        )
        assert gone.get("type") == "unavailable"
        el = await bosh.send()
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        await raw.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_inactive_session_hibernates_and_resumes_over_tcp(tmp_path: Path) -> None:
    """With XEP-0198 the session outlives the BOSH session and is resumed over TCP;
    a message sent meanwhile is not lost."""
    from tests.helpers import RawClient

    server = await bosh_server(tmp_path, bosh={"max_inactivity": 1})
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        jid = await bosh.login("romeo", wait="1")
        el = await bosh.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = el.find(q(SM, "enabled"))
        assert enabled is not None
        previd = enabled.get("id") or ""
        for _ in range(200):
            session = server.sm_sessions.get(previd)
            if session is not None and session.state == "hibernating":
                break
            await asyncio.sleep(0.05)
        assert server.sm_sessions[previd].state == "hibernating"
        juliet, _ = await raw_login(server, "juliet", "tcp")
        juliet.send(f"<message to='{jid}' type='chat'><body>while away</body></message>")

        raw = await RawClient.open(server.ports["c2s"])
        await raw.authenticate("romeo")
        raw.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        await raw.expect(q(SM, "resumed"))
        got = await raw.wait_for(lambda e: e.tag == q(CLIENT, "message"))
        assert got.findtext(q(CLIENT, "body")) == "while away"
        await raw.close()
        await juliet.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_pause(tmp_path: Path) -> None:
    """XEP-0124 §10: held requests are answered at once; over maxpause is a
    policy-violation."""
    server = await bosh_server(tmp_path, bosh={"max_inactivity": 1, "max_pause": 30})
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        el = await bosh.create()
        assert el.get("maxpause") == "30"
        await bosh.features(el)
        await bosh.auth_scram("romeo")
        await bosh.restart()
        await bosh.bind("web")
        held = bosh.send_soon()
        await asyncio.sleep(0.2)
        assert not held.done()
        paused = await bosh.send(pause="3")
        assert list(paused) == [] and paused.get("type") is None
        assert list(await asyncio.wait_for(held, 2)) == []
        # Longer than `inactivity` (1 s), within the pause: the session is still there.
        await asyncio.sleep(2)
        el = await bosh.send(f"<iq xmlns='{CLIENT}' type='get' id='p'><ping xmlns='{PING}'/></iq>")
        assert el.find(q(CLIENT, "iq")) is not None
        el = await bosh.send(pause="31")
        assert el.get("type") == "terminate" and el.get("condition") == "policy-violation"
    finally:
        await bosh.close()
        await server.stop()


async def test_polling_too_frequently(tmp_path: Path) -> None:
    """XEP-0124 §11: a polling session (hold 0) polling faster than `polling`."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        el = await bosh.create(hold="0", wait="0")
        assert el.get("hold") == "0" and el.get("requests") == "1"
        await bosh.features(el)
        first = await bosh.send()
        assert first.get("type") is None
        second = await bosh.send()
        assert second.get("type") == "terminate"
        assert second.get("condition") == "policy-violation"
    finally:
        await bosh.close()
        await server.stop()


async def test_acks_and_hold(tmp_path: Path) -> None:
    """XEP-0124 §9: with ack='1' the server acknowledges; a second request answers the
    held one at once (hold 1)."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        creation_rid = bosh.rid
        el = await bosh.create(ack="1")
        assert el.get("ack") == str(creation_rid)
        await bosh.features(el)
        await bosh.auth_scram("romeo", mechanism="SCRAM-SHA-1")
        await bosh.restart()
        await bosh.bind("web")
        held = bosh.send_soon()
        await asyncio.sleep(0.2)
        assert not held.done()
        # A second request: the first is answered at once, with ack = the newest rid.
        second = bosh.send_soon(
            f"<iq xmlns='{CLIENT}' type='get' id='p'><ping xmlns='{PING}'/></iq>"
        )
        first = await asyncio.wait_for(held, 2)
        assert first.get("ack") == str(bosh.rid)
        if first.find(q(CLIENT, "iq")) is None:
            # The pong came after the first was answered: the second carries it.
            answer = await asyncio.wait_for(second, 2)
            assert answer.find(q(CLIENT, "iq")) is not None
            assert answer.get("ack") is None  # it answers the newest rid
        else:
            # The pong was there for the oldest request; the second is held.
            assert not second.done()
    finally:
        await bosh.close()
        await server.stop()


async def test_report_of_a_response_the_client_lacks(tmp_path: Path) -> None:
    """XEP-0124 §9.3: the client's ack says a response never arrived: the next response
    comes at once and reports it, and the request can be sent again."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await bosh.features(await bosh.create(ack="1", wait="5"))
        lost_rid = bosh.rid + 1
        lost = await bosh.send(
            f"<auth xmlns='{SASL}' mechanism='PLAIN'>=</auth>", ack=str(bosh.rid)
        )
        lost_raw = bosh.last_raw
        assert lost.find(q(SASL, "failure")) is not None
        await asyncio.sleep(1.1)
        el = await asyncio.wait_for(bosh.send(ack=str(lost_rid - 1)), 2)
        assert el.get("report") == str(lost_rid)
        assert int(el.get("time") or 0) >= 1000
        await bosh.post_body(bosh.body(rid=lost_rid))
        assert bosh.last_raw == lost_raw
    finally:
        await bosh.close()
        await server.stop()


async def test_key_sequencing(tmp_path: Path) -> None:
    """XEP-0124 §15: each key hashes to the previous one; a wrong key ends the session."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        keys = [secrets.token_hex(20)]
        for _ in range(4):
            keys.append(hashlib.sha1(keys[-1].encode()).hexdigest())
        el = await bosh.create(newkey=keys[-1], wait="1")
        assert el.get("sid")
        el = await bosh.send(key=keys[-2])
        assert el.get("type") is None
        el = await bosh.send(key=keys[-2])  # not the next key
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
    finally:
        await bosh.close()
        await server.stop()


async def test_stream_errors_are_remote_stream_errors(tmp_path: Path) -> None:
    """XEP-0206 §7: a stream error ends the session with remote-stream-error and the
    error inside; an unknown domain at creation is host-unknown."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await bosh.features(await bosh.create())
        el = await bosh.send(f"<message xmlns='{CLIENT}' to='x@{DOMAIN}'><body>hi</body></message>")
        assert el.get("type") == "terminate" and el.get("condition") == "remote-stream-error"
        error = el.find(q(STREAMS, "error"))
        assert error is not None and error.find(q(STREAM_ERRORS, "not-authorized")) is not None
        el = await bosh.send()
        assert el.get("condition") == "item-not-found"

        bosh.sid = None
        el = await bosh.create(to="nowhere.example")
        assert el.get("type") == "terminate" and el.get("condition") == "host-unknown"
        bosh.sid = None
        el = await bosh.post_body(bosh.body(wait="5", hold="1", ver="1.11"))
        assert el.get("type") == "terminate" and el.get("condition") == "improper-addressing"
    finally:
        await bosh.close()
        await server.stop()


async def test_sessions_per_address(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path, limits={"max_connections_per_ip": 1})
    first = await BoshClient.open(server)
    second = await BoshClient.open(server)
    try:
        assert (await first.create()).get("sid")
        el = await second.create()
        assert el.get("type") == "terminate" and el.get("condition") == "policy-violation"
        # Terminated: the address may open another.
        await first.send(type="terminate")
        await asyncio.sleep(0.1)
        assert (await second.create()).get("sid")
    finally:
        await first.close()
        await second.close()
        await server.stop()


async def test_cors_get_and_host_meta(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path, http={"cors_origins": ["https://chat.example.net"]})
    port = server.ports["http"]
    try:
        async with aiohttp.ClientSession() as http:
            origin = {"Origin": "https://chat.example.net"}
            async with http.options(
                bosh_url(server),
                headers={
                    **origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            ) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == origin["Origin"]
                assert "POST" in response.headers["Access-Control-Allow-Methods"]
                assert response.headers["Access-Control-Allow-Headers"] == "content-type"
            async with http.post(
                bosh_url(server),
                data=f"<body xmlns='{HTTPBIND}' rid='5' to='{DOMAIN}' wait='5' ver='1.11'/>",
                headers=origin,
            ) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == origin["Origin"]
            async with http.get(bosh_url(server)) as response:
                assert response.status == 200
                assert "BOSH" in await response.text()
            async with http.get(f"http://127.0.0.1:{port}/.well-known/host-meta.json") as r:
                links = (await r.json())["links"]
            assert {
                "rel": "urn:xmpp:alt-connections:xbosh",
                "href": f"http://127.0.0.1:{port}/http-bind",
            } in links
            async with http.get(f"http://127.0.0.1:{port}/.well-known/host-meta") as r:
                xrd = ET.fromstring(await r.read())
            hrefs = {
                link.get("rel"): link.get("href")
                for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")
            }
            assert hrefs["urn:xmpp:alt-connections:xbosh"] == f"http://127.0.0.1:{port}/http-bind"
    finally:
        await server.stop()


async def test_shutdown_terminates_sessions(tmp_path: Path) -> None:
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await bosh.login("romeo")
        held = bosh.send_soon()
        await asyncio.sleep(0.2)
        await server.stop()
        el = await asyncio.wait_for(held, 5)
        assert el.get("type") == "terminate" and el.get("condition") == "system-shutdown"
    finally:
        await bosh.close()


@pytest.mark.parametrize("enabled", [False])
async def test_bosh_can_be_disabled(tmp_path: Path, enabled: bool) -> None:
    server = await bosh_server(tmp_path, bosh={"enabled": enabled})
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(bosh_url(server), data=b"<body/>") as response:
                assert response.status in (404, 405)
    finally:
        await server.stop()


async def test_a_held_rid_sent_again_takes_its_place(tmp_path: Path) -> None:
    """XEP-0124 §14.3: the first copy gets the recoverable error, the answer goes to the
    second."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        jid = await bosh.login("romeo")
        held = bosh.send_soon()
        await asyncio.sleep(0.2)
        again = asyncio.ensure_future(bosh.post_body(bosh.body()))  # the same rid
        first = await asyncio.wait_for(held, 2)
        assert first.get("type") == "error" and list(first) == []
        await asyncio.sleep(0.2)
        assert not again.done()
        juliet, _ = await raw_login(server, "juliet", "tcp")
        juliet.send(f"<message to='{jid}'><body>to the second copy</body></message>")
        el = await asyncio.wait_for(again, 5)
        assert el.findtext(f"{q(CLIENT, 'message')}/{q(CLIENT, 'body')}") == "to the second copy"
        await juliet.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_a_client_that_never_polls_is_dropped(tmp_path: Path) -> None:
    """What waits for a client is bounded by [bosh] max_buffer: past it the session is
    dropped like a TCP client that does not read."""
    server = await bosh_server(
        tmp_path, bosh={"max_buffer": 65536}, stream_management={"enabled": False}
    )
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        jid = await bosh.login("romeo")
        juliet, _ = await raw_login(server, "juliet", "tcp")
        text = "x" * 1000
        for i in range(100):
            juliet.send(f"<message to='{jid}' type='headline'><body>{i} {text}</body></message>")
        for _ in range(100):
            if server.sessions.get(JID.parse(jid)) is None:
                break
            await asyncio.sleep(0.05)
        assert server.sessions.get(JID.parse(jid)) is None
        el = await bosh.send()
        assert el.get("type") == "terminate" and el.get("condition") == "item-not-found"
        await juliet.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_stream_management_csi_and_carbons(tmp_path: Path) -> None:
    """XEP-0206: the features of TCP work the same: XEP-0198 acks and resumption on a
    new BOSH session, XEP-0352, XEP-0280."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    try:
        await add_user(server, "romeo")
        await add_user(server, "juliet")
        el = await bosh.create()
        await bosh.features(el)
        await bosh.auth_scram("romeo")
        features = await bosh.restart()
        assert features.find(q("urn:xmpp:csi:0", "csi")) is not None
        jid = await bosh.bind("web")
        el = await bosh.send(
            f"<iq xmlns='{CLIENT}' type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>"
        )
        iq = el.find(q(CLIENT, "iq"))
        assert iq is not None and iq.get("type") == "result"
        el = await bosh.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = el.find(q(SM, "enabled"))
        assert enabled is not None
        previd = enabled.get("id") or ""
        el = await bosh.send(
            f"<iq xmlns='{CLIENT}' type='get' id='p1'><ping xmlns='{PING}'/></iq><r xmlns='{SM}'/>"
        )
        acked = el.find(q(SM, "a"))
        assert acked is not None and acked.get("h") == "1"
        bosh.send_soon("<inactive xmlns='urn:xmpp:csi:0'/>")  # nothing to answer: held
        await asyncio.sleep(0.2)

        # Juliet's message goes to the session while its BOSH session is given up.
        juliet, _ = await raw_login(server, "juliet", "tcp")
        juliet.send(f"<message to='{jid}' type='chat'><body>resumed</body></message>")
        await asyncio.sleep(0.2)
        await bosh.close()

        # A new BOSH session resumes it (the old one is dropped).
        second = await BoshClient.open(server)
        await second.features(await second.create())
        await second.auth_scram("romeo")
        await second.restart()
        el = await second.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
        resumed = el.find(q(SM, "resumed"))
        assert resumed is not None and resumed.get("previd") == previd
        message = el.find(q(CLIENT, "message"))
        if message is None:
            message = await second.wait_for(lambda e: e.tag == q(CLIENT, "message"))
        assert message.findtext(q(CLIENT, "body")) == "resumed"
        await juliet.close()
        await second.close()
    finally:
        await bosh.close()
        await server.stop()


async def test_a_reloaded_page_resuming_its_session_is_not_polling_too_often(
    tmp_path: Path,
) -> None:
    """Regression (found by the Converse.js browser test): a page reloaded within
    `polling` seconds of its last request resumed its session with an empty request while
    the old page's request, whose connection the browser had closed, still counted as
    held: the new request looked like polling too often (§12) and the session ended with
    policy-violation. Requests whose HTTP connection is gone no longer count."""
    server = await bosh_server(tmp_path)
    bosh = await BoshClient.open(server)
    old_page = aiohttp.ClientSession()
    try:
        await add_user(server, "romeo")
        el = await bosh.create(wait="2")
        await bosh.features(el)
        await bosh.auth_scram("romeo", mechanism="SCRAM-SHA-1")
        await bosh.restart()
        await bosh.bind("web")
        # The old page's empty request is held ...
        bosh.rid += 1
        held = asyncio.ensure_future(
            old_page.post(
                bosh.url,
                data=bosh.body().encode(),
                headers={"Content-Type": "text/xml; charset=utf-8"},
            )
        )
        await asyncio.sleep(0.3)
        assert not held.done()
        # ... when the page goes away (its connection closes) and the new page resumes.
        held.cancel()
        await old_page.close()
        await asyncio.sleep(0.1)
        resumed = await bosh.send()
        assert resumed.get("type") is None, bosh.last_raw
        answer = await bosh.send(
            f"<iq xmlns='{CLIENT}' type='get' id='p'><ping xmlns='{PING}'/></iq>"
        )
        if answer.find(q(CLIENT, "iq")) is None:
            answer = await bosh.send()
        assert answer.find(q(CLIENT, "iq")) is not None, bosh.last_raw
    finally:
        await old_page.close()
        await bosh.close()
        await server.stop()
