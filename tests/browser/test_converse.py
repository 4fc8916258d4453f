"""A real web client in a real browser: Converse.js in headless Chromium logs in to Dovecote
over WebSocket (RFC 7395) from a page served on another origin, and chats with a slixmpp
client over TCP. Each test leaves a screenshot of the chat (listed at the end of the run)."""

from __future__ import annotations

import asyncio
import json
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


async def chat_in_browser(browser: Browser, romeo: Client, label: str, tmp_path: Path) -> Path:
    """The browser is logged in as juliet: open a chat with romeo, type a message, check
    romeo gets it, have romeo answer, check it shows in the chat, take a screenshot."""
    # The roster arrived and romeo's presence made him online in it.
    await browser.wait(
        f"dovecoteTest.api.contacts.get({js(ROMEO)})"
        f".then(c => c && c.presence && c.presence.get('presence') === 'online')"
    )
    await browser.eval(f"dovecoteTest.api.chats.open({js(ROMEO)}, {{}}, true).then(() => true)")
    await browser.wait(f"document.querySelector({js(TEXTAREA)})")

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
    page = await PageServer().start()
    server = await start_server(
        tmp_path / "data",
        listen={"http": "127.0.0.1:0"},
        # ws:// on loopback counts as encrypted, as behind a TLS-terminating proxy; the page's
        # origin is the only one allowed (CORS and the WebSocket handshake's Origin).
        http={"consider_websocket_secure": True, "cors_origins": [page.origin]},
    )
    romeo: Client | None = None
    try:
        await add_user(server, "juliet")
        await add_user(server, "romeo")
        await befriend(server)
        romeo = await connect(server, ROMEO)
        ws_url = f"ws://127.0.0.1:{server.ports['http']}/xmpp-websocket"
        page.config = {
            "websocket_url": ws_url,
            "discover_connection_methods": False,
            "auto_login": True,
            "jid": JULIET,
            "password": PASSWORD,
        }
        async with Browser(chromium) as browser:
            assert await browser.goto(page.url) == 200
            await browser.wait("window.dovecoteTest && dovecoteTest.api.connection.connected()")
            assert await browser.eval("dovecoteTest.api.connection.isType('websocket')") is True
            assert browser.websockets == [ws_url]
            bound = await browser.eval("dovecoteTest.api.connection.get().jid")
            assert bound.startswith(JULIET + "/")
            await chat_in_browser(browser, romeo, "websocket", tmp_path)
    finally:
        if romeo is not None:
            await disconnect(romeo)
        await server.stop()
        await page.stop()


async def test_converse_discovers_websocket_via_host_meta(chromium: str, tmp_path: Path) -> None:
    """XEP-0156 as a browser does it: Converse fetches https://example.org/.well-known/host-meta
    (cross-origin, so Dovecote's CORS headers must allow the page), takes the wss:// link from
    it and logs in there with what the person typed into Converse's login form. Chromium
    resolves example.org to Dovecote's https listener and accepts its self-signed
    certificate; nothing else tells Converse where the server is."""
    page = await PageServer().start()
    server = await start_server(
        tmp_path / "data",
        listen={"http": "", "https": "127.0.0.1:0"},
        http={"cors_origins": [page.origin]},
    )
    romeo: Client | None = None
    try:
        await add_user(server, "juliet")
        await add_user(server, "romeo")
        await befriend(server)
        romeo = await connect(server, ROMEO)
        # No URL and no account in the configuration: the person types them in the form.
        page.config = {"discover_connection_methods": True, "auto_login": False}
        https = {DOMAIN: f"127.0.0.1:{server.ports['https']}"}
        async with Browser(chromium, ["--ignore-certificate-errors"], https) as browser:
            assert await browser.goto(page.url) == 200
            form = "converse-login-form form"
            await browser.wait(f"document.querySelector({js(form + ' input[name=password]')})")
            await browser.fill(f"{form} input[name=jid]", JULIET)
            await browser.fill(f"{form} input[name=password]", PASSWORD)
            await browser.press(f"{form} input[name=password]", "Enter")
            await browser.wait("window.dovecoteTest && dovecoteTest.api.connection.connected()")
            wss = f"wss://{DOMAIN}/xmpp-websocket"
            assert await browser.eval("dovecoteTest.api.settings.get('websocket_url')") == wss
            assert await browser.eval("dovecoteTest.api.connection.isType('websocket')") is True
            assert browser.websockets == [wss]
            await chat_in_browser(browser, romeo, "host-meta-wss", tmp_path)
    finally:
        if romeo is not None:
            await disconnect(romeo)
        await server.stop()
        await page.stop()


async def test_converse_from_an_origin_not_allowed(chromium: str, tmp_path: Path) -> None:
    """A page from an origin missing from [http] cors_origins: host-meta answers without
    Access-Control-Allow-Origin, so the browser hides it from the page (no discovery), and
    the WebSocket handshake with that Origin is refused: Converse never logs in."""
    page = await PageServer().start()
    server = await start_server(
        tmp_path / "data",
        listen={"http": "127.0.0.1:0"},
        http={"consider_websocket_secure": True, "cors_origins": ["https://chat.example"]},
    )
    try:
        await add_user(server, "juliet")
        ws_url = f"ws://127.0.0.1:{server.ports['http']}/xmpp-websocket"
        page.config = {
            "websocket_url": ws_url,
            "discover_connection_methods": False,
            "auto_login": True,
            "jid": JULIET,
            "password": PASSWORD,
        }
        async with Browser(chromium) as browser:
            assert await browser.goto(page.url) == 200
            # The page itself reads host-meta: the browser blocks the response.
            host_meta = f"http://127.0.0.1:{server.ports['http']}/.well-known/host-meta"
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
            assert not server.sessions.is_online(JID.parse(JULIET))
            shot = await browser.screenshot(tmp_path / "converse-origin-refused.png")
            print(f"screenshot: {shot} (copy: {keep_screenshot(shot)})")
    finally:
        await server.stop()
        await page.stop()


async def test_converse_bosh_chat_with_slixmpp(chromium: str, tmp_path: Path) -> None:
    """The same chat over BOSH (XEP-0124/XEP-0206): Converse with only a bosh_service_url,
    cross-origin (CORS preflight and headers on /http-bind), then a page reload: Converse
    keeps its BOSH session (sid and next rid in session storage) and resumes it, so romeo's
    next message reaches the same session."""
    page = await PageServer().start()
    server = await start_server(
        tmp_path / "data",
        listen={"http": "127.0.0.1:0"},
        http={"cors_origins": [page.origin]},
        bosh={"consider_secure": True},
    )
    romeo: Client | None = None
    try:
        await add_user(server, "juliet")
        await add_user(server, "romeo")
        await befriend(server)
        romeo = await connect(server, ROMEO)
        bosh_url = f"http://127.0.0.1:{server.ports['http']}/http-bind"
        page.config = {
            "bosh_service_url": bosh_url,
            "discover_connection_methods": False,
            "auto_login": True,
            "jid": JULIET,
            "password": PASSWORD,
        }
        async with Browser(chromium) as browser:
            assert await browser.goto(page.url) == 200
            await browser.wait("window.dovecoteTest && dovecoteTest.api.connection.connected()")
            assert await browser.eval("dovecoteTest.api.connection.isType('bosh')") is True
            assert browser.websockets == []
            sid = await browser.eval("dovecoteTest.api.connection.get()._proto.sid")
            assert sid
            first = await chat_in_browser(browser, romeo, "bosh", tmp_path)
            juliet_full = await browser.eval("dovecoteTest.api.connection.get().jid")

            # Reload: the page is gone (its held request with it) and comes back attached to
            # the same BOSH session, with the next rid; no new login. The reload waits out
            # [bosh] polling (2 s by default): the held request of the old page still
            # counts, and a new empty request sooner than that after it is overactivity
            # (XEP-0124 §11), which ends the session with policy-violation (Converse then
            # shows its login form).
            await asyncio.sleep(server.config.bosh.polling + 0.5)
            assert await browser.goto(page.url) == 200
            await browser.wait("window.dovecoteTest && dovecoteTest.api.connection.connected()")
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
    finally:
        if romeo is not None:
            await disconnect(romeo)
        await server.stop()
        await page.stop()
