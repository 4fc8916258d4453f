"""A real web client in a real browser: Converse.js in headless Chromium logs in to Dovecote
over WebSocket (RFC 7395) or BOSH (XEP-0124/XEP-0206) from a page served on another origin,
and chats with a slixmpp client over TCP. Each test leaves a screenshot of the chat (listed
at the end of the run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dovecote.jid import JID
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.browser.support import Browser, PageServer, keep_screenshot
from tests.helpers import DOMAIN, PASSWORD, Client, add_user, connect, disconnect, start_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

JULIET = f"juliet@{DOMAIN}"  # in the browser
ROMEO = f"romeo@{DOMAIN}"  # slixmpp
TEXTAREA = f'converse-chat[jid="{ROMEO}"] textarea.chat-textarea'
BUBBLES = f'converse-chat[jid="{ROMEO}"] .chat-msg__text'
ATTACHED = 8  # Strophe.Status.ATTACHED: a session resumed, not logged in anew


async def befriend(server: Server) -> None:
    """juliet and romeo in each other's roster with subscription both (set in storage before
    anyone logs in), so Converse lists romeo and shows his presence."""
    await server.storage.roster.put("juliet", DOMAIN, RosterItem(ROMEO, "Romeo", "both"))
    await server.storage.roster.put("romeo", DOMAIN, RosterItem(JULIET, "Juliet", "both"))


async def next_body(client: Client, timeout: float = 20) -> Any:
    """The next message with a body (Converse also sends chat states without one, XEP-0085)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await client.messages.get()
            if msg["body"]:
                return msg


def js(value: Any) -> str:
    return json.dumps(value)


@dataclass
class Scene:
    server: Server
    page: PageServer
    romeo: Client | None

    def url(self, listener: str, path: str) -> str:
        scheme = "https" if listener == "https" else "http"
        return f"{scheme}://127.0.0.1:{self.server.ports[listener]}{path}"


@contextlib.asynccontextmanager
async def scene(
    tmp_path: Path, *, romeo: bool = True, **sections: dict[str, Any]
) -> AsyncIterator[Scene]:
    """The page server, Dovecote (`sections` as in start_server; in [http] cors_origins the
    string "page" stands for the page's origin), juliet and romeo as friends, and romeo
    logged in with slixmpp over TCP."""
    page = await PageServer().start()
    http = sections.setdefault("http", {})
    origins = http.get("cors_origins", ["page"])
    http["cors_origins"] = [page.origin if o == "page" else o for o in origins]
    server = await start_server(tmp_path / "data", **sections)
    client: Client | None = None
    try:
        await add_user(server, "juliet")
        await add_user(server, "romeo")
        await befriend(server)
        if romeo:
            client = await connect(server, ROMEO)
        yield Scene(server, page, client)
    finally:
        if client is not None:
            await disconnect(client)
        await server.stop()
        await page.stop()


def auto_login(**config: Any) -> dict[str, Any]:
    return {"auto_login": True, "jid": JULIET, "password": PASSWORD, **config}


CONNECTED = "window.dovecoteTest && dovecoteTest.api.connection.connected()"


async def chat_in_browser(browser: Browser, romeo: Client, label: str, tmp_path: Path) -> Path:
    """The browser is logged in as juliet: open a chat with romeo, type a message, check
    romeo gets it, have romeo answer, check it shows in the chat, take a screenshot."""
    # The roster arrived and romeo's presence made him online in it.
    await browser.wait(
        f"dovecoteTest.api.contacts.get({js(ROMEO)})"
        f".then(c => c && c.presence && c.presence.get('presence') === 'online')"
    )
    await browser.eval(f"dovecoteTest.api.chats.open({js(ROMEO)}, {{}}, true).then(() => true)")
    await browser.wait(f"!!document.querySelector({js(TEXTAREA)})")

    text = f"Wherefore art thou, Romeo? ({label}, typed in Chromium)"
    await browser.fill(TEXTAREA, text)
    await browser.press(TEXTAREA, "Enter")
    msg = await next_body(romeo)
    assert msg["type"] == "chat"
    assert msg["body"] == text
    assert msg["from"].bare == JULIET
    assert msg["to"].bare == ROMEO

    reply = f"By a name I know not how to tell thee who I am ({label}, from slixmpp)"
    romeo.send_message(mto=msg["from"], mbody=reply, mtype="chat")
    await browser.wait(
        f"[...document.querySelectorAll({js(BUBBLES)})]"
        f".some(el => el.textContent.includes({js(reply)}))"
    )
    shown = await browser.texts(BUBBLES)
    assert [t for t in shown if text in t], shown
    assert [t for t in shown if reply in t], shown
    # Let the message finish rendering (avatars, time stamps) before the picture.
    await asyncio.sleep(0.5)
    shot = await browser.screenshot(tmp_path / f"converse-{label}.png")
    kept = keep_screenshot(shot)
    print(f"screenshot: {shot} (copy: {kept})")
    return shot


async def test_converse_websocket_chat_with_slixmpp(chromium: str, tmp_path: Path) -> None:
    # ws:// on loopback counts as encrypted, as behind a TLS-terminating proxy; the page's
    # origin is the only one allowed (CORS and the WebSocket handshake's Origin).
    async with scene(
        tmp_path, listen={"http": "127.0.0.1:0"}, http={"consider_websocket_secure": True}
    ) as sc:
        assert sc.romeo is not None
        ws_url = "ws" + sc.url("http", "/xmpp-websocket")[4:]
        sc.page.config = auto_login(websocket_url=ws_url, discover_connection_methods=False)
        async with Browser(chromium) as browser:
            assert await browser.goto(sc.page.url) == 200
            await browser.wait(CONNECTED)
            assert await browser.eval("dovecoteTest.api.connection.isType('websocket')") is True
            assert browser.websockets == [ws_url]
            bound = await browser.eval("dovecoteTest.api.connection.get().jid")
            assert bound.startswith(JULIET + "/")
            await chat_in_browser(browser, sc.romeo, "websocket", tmp_path)


async def test_converse_discovers_websocket_via_host_meta(chromium: str, tmp_path: Path) -> None:
    """XEP-0156 as a browser does it: Converse fetches https://example.org/.well-known/host-meta
    (cross-origin, so Dovecote's CORS headers must allow the page), takes the wss:// link from
    it and logs in there with what the person typed into Converse's login form. Chromium
    resolves example.org to Dovecote's https listener and accepts its self-signed
    certificate; nothing else tells Converse where the server is."""
    async with scene(tmp_path, listen={"http": "", "https": "127.0.0.1:0"}) as sc:
        assert sc.romeo is not None
        # No URL and no account in the configuration: the person types them in the form.
        sc.page.config = {"discover_connection_methods": True, "auto_login": False}
        https = {DOMAIN: f"127.0.0.1:{sc.server.ports['https']}"}
        async with Browser(chromium, ["--ignore-certificate-errors"], https) as browser:
            assert await browser.goto(sc.page.url) == 200
            form = "converse-login-form form"
            await browser.wait(f"!!document.querySelector({js(form + ' input[name=password]')})")
            await browser.fill(f"{form} input[name=jid]", JULIET)
            await browser.fill(f"{form} input[name=password]", PASSWORD)
            await browser.press(f"{form} input[name=password]", "Enter")
            await browser.wait(CONNECTED)
            wss = f"wss://{DOMAIN}/xmpp-websocket"
            assert await browser.eval("dovecoteTest.api.settings.get('websocket_url')") == wss
            assert await browser.eval("dovecoteTest.api.connection.isType('websocket')") is True
            assert browser.websockets == [wss]
            await chat_in_browser(browser, sc.romeo, "host-meta-wss", tmp_path)


async def test_converse_from_an_origin_not_allowed(chromium: str, tmp_path: Path) -> None:
    """A page from an origin missing from [http] cors_origins: host-meta answers without
    Access-Control-Allow-Origin, so the browser hides it from the page (no discovery), and
    the WebSocket handshake with that Origin is refused: Converse never logs in."""
    async with scene(
        tmp_path,
        romeo=False,
        listen={"http": "127.0.0.1:0"},
        http={"consider_websocket_secure": True, "cors_origins": ["https://chat.example"]},
    ) as sc:
        ws_url = "ws" + sc.url("http", "/xmpp-websocket")[4:]
        sc.page.config = auto_login(websocket_url=ws_url, discover_connection_methods=False)
        async with Browser(chromium) as browser:
            assert await browser.goto(sc.page.url) == 200
            # The page itself reads host-meta: the browser blocks the response.
            host_meta = sc.url("http", "/.well-known/host-meta")
            outcome = await browser.eval(
                f"fetch({js(host_meta)}, {{mode: 'cors'}})"
                ".then(r => 'read ' + r.status, e => 'blocked: ' + e.name)"
            )
            assert outcome == "blocked: TypeError"
            # Converse's connection attempt ends without a session.
            await browser.wait(
                "window.dovecoteTest && dovecoteTest.events.includes('disconnected')"
            )
            assert set(await browser.eval("dovecoteTest.events")) == {"disconnected"}
            assert await browser.eval("dovecoteTest.api.connection.connected()") is not True
            # What the person sees on the login form.
            feedback = "dovecoteTest.converse.state.connfeedback.get('message')"
            message = "The WebSocket connection could not be established or was disconnected."
            assert await browser.eval(feedback) == message
            await browser.wait(f"document.body.innerText.includes({js(message)})")
            assert browser.websockets == [ws_url]
            assert not sc.server.sessions.is_online(JID.parse(JULIET))
            shot = await browser.screenshot(tmp_path / "converse-origin-refused.png")
            print(f"screenshot: {shot} (copy: {keep_screenshot(shot)})")


BOSH_SCENE: dict[str, Any] = {
    "listen": {"http": "127.0.0.1:0"},
    "bosh": {"consider_secure": True},
}


async def test_converse_bosh_chat_with_slixmpp(chromium: str, tmp_path: Path) -> None:
    """The same chat over BOSH (XEP-0124/XEP-0206): Converse with only a bosh_service_url,
    cross-origin (CORS preflight and headers on /http-bind), then a page reload: Converse
    keeps its BOSH session (sid and next rid in session storage) and resumes it, so romeo's
    next message reaches the same session."""
    async with scene(tmp_path, **BOSH_SCENE) as sc:
        romeo = sc.romeo
        assert romeo is not None
        bosh_url = sc.url("http", "/http-bind")
        sc.page.config = auto_login(bosh_service_url=bosh_url, discover_connection_methods=False)
        async with Browser(chromium) as browser:
            assert await browser.goto(sc.page.url) == 200
            await browser.wait(CONNECTED)
            assert await browser.eval("dovecoteTest.api.connection.isType('bosh')") is True
            assert browser.websockets == []
            sid = await browser.eval("dovecoteTest.api.connection.get()._proto.sid")
            assert sid
            first = await chat_in_browser(browser, romeo, "bosh", tmp_path)
            juliet_full = await browser.eval("dovecoteTest.api.connection.get().jid")

            # Reload at once: the page is gone (its held request with it, its connection
            # closed by the browser) and comes back attached to the same BOSH session, with
            # the next rid; no new login. (The abandoned request no longer counts as held,
            # so the resumed session's first request is not taken for polling too often.)
            assert await browser.goto(sc.page.url) == 200
            await browser.wait(CONNECTED)
            assert await browser.eval("dovecoteTest.api.connection.get().status") == ATTACHED
            assert await browser.eval("dovecoteTest.api.connection.get()._proto.sid") == sid
            assert await browser.eval("dovecoteTest.api.connection.get().jid") == juliet_full
            resumed = "Resumed after a reload (BOSH, from slixmpp)"
            romeo.send_message(mto=juliet_full, mbody=resumed, mtype="chat")
            await browser.eval(
                f"dovecoteTest.api.chats.open({js(ROMEO)}, {{}}, true).then(() => 1)"
            )
            await browser.wait(
                f"[...document.querySelectorAll({js(BUBBLES)})]"
                f".some(el => el.textContent.includes({js(resumed)}))"
            )
            await browser.fill(TEXTAREA, "Still here after the reload (BOSH)")
            await browser.press(TEXTAREA, "Enter")
            msg = await next_body(romeo)
            assert msg["body"] == "Still here after the reload (BOSH)"
            assert msg["from"] == juliet_full
            await asyncio.sleep(0.5)
            shot = await browser.screenshot(first.with_name("converse-bosh-reloaded.png"))
            print(f"screenshot: {shot} (copy: {keep_screenshot(shot)})")
