"""Support for the real-browser tests: the set-up check, a static server for the Converse.js
test page, and `Browser`, headless Chromium remote-controlled through driver.mjs
(playwright-core in Node.js) with one JSON line per command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from aiohttp import web

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SETUP = ROOT / "scripts" / "browser-setup.sh"
DIST = HERE / "node_modules" / "converse.js" / "dist"
DRIVER = HERE / "driver.mjs"

# Screenshots taken in this session, listed at the end of the run (conftest.py).
SCREENSHOTS: list[Path] = []


class SetupFailed(Exception):
    """The tools could not be installed; the message says why."""


def run_setup() -> str:
    """Run scripts/browser-setup.sh (installs what is missing) and return Chromium's path."""
    if not shutil.which("bash"):
        raise SetupFailed("bash is not available to run scripts/browser-setup.sh")
    try:
        done = subprocess.run(
            ["bash", str(SETUP)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupFailed("scripts/browser-setup.sh did not finish in 15 minutes") from exc
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise SetupFailed(f"scripts/browser-setup.sh failed: {reason[0]}")
    chromium = done.stdout.strip().splitlines()[-1]
    for missing, what in (
        (not Path(chromium).exists(), f"chromium ({chromium})"),
        (not shutil.which("node"), "node"),
        (not DIST.is_dir(), f"converse.js ({DIST})"),
    ):
        if missing:
            raise SetupFailed(f"browser-setup.sh ran, yet {what} is missing")
    return chromium


def artifacts_dir() -> Path:
    """Where screenshots are copied for people to look at: $BROWSER_ARTIFACTS, else
    tests/browser/artifacts/ (ignored by git)."""
    path = Path(os.environ.get("BROWSER_ARTIFACTS") or HERE / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_screenshot(path: Path) -> Path:
    """Copy a screenshot from the test's tmp dir to the artifacts dir; both are listed in the
    run's summary."""
    kept = artifacts_dir() / path.name
    shutil.copyfile(path, kept)
    SCREENSHOTS.append(path)
    SCREENSHOTS.append(kept)
    return kept


# ---- the test page ---------------------------------------------------------------------
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Dovecote browser test</title>
<link rel="stylesheet" href="/dist/converse.min.css">
<script type="module" src="/dist/converse.min.js"></script>
</head>
<body class="converse-fullscreen">
<script type="application/json" id="converse-config">__CONFIG__</script>
<script type="module">
// A plugin whose only job is to hand the test the inner _converse API (plugins are the
// documented way to reach it: Converse's "Writing a Plugin").
converse.plugins.add("dovecote-test", {
  initialize() {
    const _converse = this._converse;
    const state = { api: _converse.api, converse: _converse, events: [] };
    for (const name of ["connected", "reconnected", "disconnected"]) {
      _converse.api.listen.on(name, () => state.events.push(name));
    }
    window.dovecoteTest = state;
  },
});
const config = JSON.parse(document.getElementById("converse-config").textContent);
converse.initialize({ ...config, whitelisted_plugins: ["dovecote-test"] });
</script>
</body>
</html>
"""

BASE_CONFIG: dict[str, Any] = {
    "assets_path": "/dist/",
    "view_mode": "fullscreen",
    "i18n": "en",
    "loglevel": "info",
    "auto_reconnect": False,
    "play_sounds": False,
    "show_desktop_notifications": False,
    "persistent_store": "sessionStorage",
    "theme": "classic",
}


class PageServer:
    """Serves the Converse.js test page and dist/ on its own loopback port: a different
    origin from Dovecote's HTTP listener, so its CORS and WebSocket Origin checks apply."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/"

    async def start(self) -> PageServer:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/dist/", DIST)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _index(self, _request: web.Request) -> web.Response:
        config = json.dumps({**BASE_CONFIG, **self.config}).replace("</", "<\\/")
        return web.Response(text=PAGE.replace("__CONFIG__", config), content_type="text/html")


# ---- the browser -------------------------------------------------------------------------
class BrowserError(Exception):
    pass


class Browser:
    """Headless Chromium behind driver.mjs. `log` keeps the page's console lines, failed
    requests and WebSocket opens/closes, in order."""

    def __init__(
        self, chromium: str, args: list[str] | None = None, hosts: dict[str, str] | None = None
    ) -> None:
        """`hosts`: name -> "127.0.0.1:PORT" the browser resolves it to; every other name
        fails to resolve, so the page reaches nothing beyond loopback (Converse's login page
        links a few images on its project's site)."""
        self.chromium = chromium
        rules = [f"MAP {name} {target}" for name, target in (hosts or {}).items()]
        rules += ["MAP * ~NOTFOUND", "EXCLUDE 127.0.0.1", "EXCLUDE localhost"]
        self.args = [f"--host-resolver-rules={', '.join(rules)}", *(args or [])]
        self.log: list[str] = []
        self.websockets: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self.version = ""

    async def __aenter__(self) -> Browser:
        self._proc = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            cwd=str(HERE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read())
        self.version = await self.call(
            "launch",
            executablePath=self.chromium,
            # No sandbox: CI runs as root, where Chromium refuses its sandbox.
            args=["--no-sandbox", "--disable-dev-shm-usage", *self.args],
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("close"), 15)
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                self.log.append(f"[driver] {line.decode(errors='replace').rstrip()}")
                continue
            if "event" in msg:
                text = f"[{msg.get('type')}] {msg.get('text')}"
                self.log.append(text)
                if msg.get("type") == "websocket" and msg["text"].startswith("open "):
                    self.websockets.append(msg["text"][5:])
                continue
            future = self._waiting.pop(msg.get("id"), None)
            if future is None or future.done():
                continue
            if msg.get("ok"):
                future.set_result(msg.get("result"))
            else:
                future.set_exception(BrowserError(msg.get("error")))
        stderr = b""
        if self._proc.stderr is not None:
            stderr = await self._proc.stderr.read()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(
                    BrowserError(f"driver exited: {stderr.decode(errors='replace')[-2000:]}")
                )
        self._waiting.clear()

    async def call(self, op: str, **args: Any) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        self._proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **args}).encode() + b"\n")
        await self._proc.stdin.drain()
        return await future

    async def goto(self, url: str) -> int | None:
        return await self.call("goto", url=url)

    async def eval(self, expr: str) -> Any:
        return await self.call("eval", expr=expr)

    async def wait(self, expr: str, timeout: float = 20) -> None:
        """Wait until the page expression `expr` is truthy (a Promise: once it resolves to a
        truthy value)."""
        try:
            await self.call("wait", expr=expr, timeout=int(timeout * 1000))
        except BrowserError as exc:
            raise BrowserError(f"{exc}\n--- page log ---\n" + "\n".join(self.log[-60:])) from None

    async def texts(self, selector: str) -> list[str]:
        return await self.call("text", selector=selector)

    async def fill(self, selector: str, value: str) -> None:
        await self.call("fill", selector=selector, value=value)

    async def press(self, selector: str, key: str) -> None:
        await self.call("press", selector=selector, key=key)

    async def screenshot(self, path: Path) -> Path:
        await self.call("screenshot", path=str(path))
        return path
