#!/usr/bin/env python3
"""Web benchmark: chat over TCP vs WebSocket, and HTTP file upload; Dovecote and
Prosody side by side.

For each server (started fresh in its own temp dir, pinned to one core with
``taskset -c 1``; this load generator on core 0) the tool runs, on the same server
process:

1. **Chat at saturation per transport.** ``--pairs`` pairs of clients per transport
   exchange one-to-one chat messages (``type='chat'`` to the partner's bare JID, after
   an initial ``<presence/>``), each sender keeping ``--window`` messages in flight
   (sent, not yet received by its partner). Transports (``--transports``):

   * ``tcp``: RFC 6120 over TCP without TLS, SASL SCRAM-SHA-1 (both servers are told
     not to require TLS, so that the framing is compared without encryption);
   * ``tls``: the usual client path, STARTTLS then SASL PLAIN;
   * ``ws``: RFC 7395 over ``ws://`` with aiohttp's client, subprotocol ``xmpp``, one
     element per frame, SASL PLAIN (Dovecote ``[http] consider_websocket_secure``,
     Prosody ``consider_websocket_secure``: TLS would end at a proxy).

   Every client of every transport logs in first; then each transport floods on its
   own (warm-up, measured window, drain) while the others sit idle. Reported:
   delivered messages/s and the server's CPU (utime+stime, /proc/<pid>/stat) per
   delivered message, in µs.

   The clients are cheap on purpose: after login a TCP client only counts
   ``</message>`` in the bytes it reads (an asyncio Protocol), a WebSocket client
   counts frames that start with ``<message``.

2. **HTTP upload (XEP-0363).** ``--upload-users`` accounts each ask for
   ``--files-per-user`` slots over one XMPP connection each (§4; 20 x 5 = 100 by
   default, under Dovecote's ``max_slots_per_user`` of 10), then every file
   (``--file-size``, 1 MiB) is PUT at once over aiohttp (§7), then GET back and
   compared. Reported: MB/s (1 MB = 10^6 bytes) from the first request to the last
   response, and server CPU ms per MB, for PUT and GET; ``--upload-rounds`` rounds,
   the median shown.

Everything is bounded in time and goes to 127.0.0.1 only (the HTTP client resolves
the bench's own host names, and nothing else, to 127.0.0.1). It prints a
side-by-side table (``--json FILE`` keeps every number).

Shares the servers' set-up (accounts, certificate, temp dir, stop on exit) with
bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from scramp import ScramClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    DOMAIN,
    HOST,
    NS_BIND,
    NS_SASL,
    NS_STREAMS,
    NS_TLS,
    STREAM_HEADER,
    DovecoteServer,
    Element,
    ProsodyServer,
    Server,
    ServerError,
    StreamClosed,
    XmlStreamReader,
    ensure_prosody_installed,
    find_dovecote_binary,
    free_port,
    kill_live_processes,
    lua_string,
    machine_busy_pct,
    machine_cpu_times,
    password,
    process_cpu_seconds,
    process_rss_kib,
    raise_open_files_limit,
    self_cpu_seconds,
    username,
    wait_for_quiet_machine,
)

log = logging.getLogger("web")

UPLOAD_DOMAIN = f"upload.{DOMAIN}"
NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
WS_PATH = "/xmpp-websocket"
END_TAG = b"</message>"
TAIL = len(END_TAG) - 1
TRANSPORTS = ("tcp", "tls", "ws")
SERVER_CORE = 1
CLIENT_CORE = 0
MB = 1_000_000


# ----------------------------------------------------------------------- servers


def pinned(command: list[str], core: int | None) -> list[str]:
    """``command`` under ``taskset -c core`` (taskset execs it: same pid)."""
    if core is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(core), *command]


def wait_listening(server: Server, port: int, timeout: float = 30.0) -> None:
    """Server.start waits for the c2s port; the HTTP listener may come a little later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        if not server.alive():
            break
        time.sleep(0.1)
    raise ServerError(f"{server.name} does not listen on HTTP {HOST}:{port}:\n{server.tail_logs()}")


class WebProsody(ProsodyServer):
    """Prosody with mod_websocket on the virtual host and mod_http_file_share on
    ``upload.<domain>``, HTTP on 127.0.0.1:<http_port>.

    TLS is offered but not required on c2s (``c2s_require_encryption = false``) for
    the ``tcp`` transport; ``consider_websocket_secure = true`` so that ws:// may use
    PLAIN. The upload size limit is raised over ``--file-size`` and the daily quota
    lifted (its default is 10 x the size limit per user and day).
    """

    def __init__(
        self, workdir: Path, binary: str, core: int | None, file_size: int, tuned: bool
    ) -> None:
        super().__init__(workdir, binary, tuned=tuned)
        self.core = core
        self.http_port = free_port()
        self.file_size = file_size

    def prepare(self, user_count: int) -> None:
        super().prepare(user_count)
        text = self.config_path.read_text()
        replacements = {
            "http_ports = {}": f"http_ports = {{ {self.http_port} }}\n"
            f'http_interfaces = {{ "{HOST}" }}',
            "c2s_require_encryption = true": "c2s_require_encryption = false\n"
            "consider_websocket_secure = true",
            "modules_enabled = {\n": 'modules_enabled = {\n\t"websocket";\n',
        }
        for old, new in replacements.items():
            if old not in text:
                raise ServerError(f"unexpected Prosody config from loadgen.py (no {old!r})")
            text = text.replace(old, new, 1)
        limit = max(10 * 1024 * 1024, 2 * self.file_size)
        text += f"""
Component "{UPLOAD_DOMAIN}" "http_file_share"
\thttp_file_share_size_limit = {limit}
\thttp_file_share_daily_quota = {1024 * limit}
\tname = {lua_string("bench uploads")}
"""
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        return pinned(super().command(), self.core)

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        wait_listening(self, self.http_port, timeout)


class WebDovecote(DovecoteServer):
    """Dovecote with ``[listen] http`` on 127.0.0.1:<http_port>, ``[upload] domain =
    "upload.<domain>"``, ``[http] consider_websocket_secure = true`` and ``[tls]
    required = false`` (the ``tcp`` transport); the per-connection read rate
    (``[limits] c2s_rate``) off like Prosody without mod_limits. ``binary`` may be a
    wrapper running ``python -m dovecote`` from a source tree (``--dovecote-src``).
    """

    def __init__(self, workdir: Path, binary: str, core: int | None, file_size: int) -> None:
        super().__init__(workdir, binary)
        self.core = core
        self.http_port = free_port()
        self.file_size = file_size

    def prepare(self, user_count: int) -> None:
        super().prepare(user_count)
        text = self.config_path.read_text()
        replacements = {
            'http = ""': f'http = "{HOST}:{self.http_port}"',
            "\n[tls]\n": "\n[tls]\nrequired = false\n",
        }
        for old, new in replacements.items():
            if old not in text:
                raise ServerError(f"unexpected Dovecote config from loadgen.py (no {old!r})")
            text = text.replace(old, new, 1)
        if "\n[limits]\n" in text:
            text = text.replace("\n[limits]\n", "\n[limits]\nc2s_rate = 0\n", 1)
        else:
            text += "\n[limits]\nc2s_rate = 0\n"
        text += f"""
[http]
consider_websocket_secure = true

[upload]
domain = "{UPLOAD_DOMAIN}"
max_file_size = {max(10 * 1024 * 1024, 2 * self.file_size)}
"""
        self.config_path.write_text(text)
        checked = subprocess.run(
            [self.binary, "check-config", "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if checked.returncode != 0:
            raise ServerError(
                "this Dovecote does not take the web configuration: "
                + (checked.stderr or checked.stdout).strip()[-800:]
            )

    def command(self) -> list[str]:
        return pinned(super().command(), self.core)

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        wait_listening(self, self.http_port, timeout)


def dovecote_from_source(workdir: Path, src: Path) -> str:
    """A wrapper script running ``python -m dovecote`` from a source tree."""
    wrapper = workdir / "dovecote-src.sh"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={src.resolve()} exec {sys.executable} -m dovecote "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


class BenchResolver(AbstractResolver):
    """Resolves the bench's host names (``bench.local`` and its subdomains) to
    127.0.0.1 and refuses any other name: the HTTP client reaches nothing else."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in (HOST, DOMAIN) and not host.endswith("." + DOMAIN):
            raise OSError(f"{host}: not a host of this benchmark (loopback only)")
        return [
            ResolveResult(
                hostname=host,
                host=HOST,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


# ----------------------------------------------------------------------- clients


class Counting(asyncio.Protocol):
    """After login (TCP): count ``</message>`` in the bytes read, nothing else."""

    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.tail = b""
        self.closed = False

    def data_received(self, data: bytes) -> None:
        count = data.count(END_TAG)
        if self.tail:
            count += (self.tail + data[:TAIL]).count(END_TAG)
        self.tail = data[-TAIL:] if len(data) >= TAIL else (self.tail + data)[-TAIL:]
        if count:
            self.client.delivered(count)

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


class ChatClient:
    """What the flood needs of a client, whatever its transport."""

    transport_name = "?"

    def __init__(self, index: int, window: int) -> None:
        self.index = index
        self.window = window
        self.partner: ChatClient | None = None
        self.sent = 0
        self.received = 0
        #: Set when this client may send again (its partner received something).
        self.wake = asyncio.Event()
        self.closed = False

    def delivered(self, count: int) -> None:
        """``count`` messages from the partner arrived: it may have room again."""
        self.received += count
        sender = self.partner
        if sender is not None and not sender.wake.is_set():
            if sender.sent - self.received < sender.window:
                sender.wake.set()

    def in_flight(self) -> int:
        assert self.partner is not None
        return self.sent - self.partner.received

    def chat(self, seq: int, filler: str) -> str:
        assert self.partner is not None
        return (
            f"<message to='{username(self.partner.index)}@{DOMAIN}' type='chat' "
            f"id='m{seq}'><body>bench {seq} {filler}</body></message>"
        )

    async def login(self) -> None:
        raise NotImplementedError

    def count(self) -> None:
        """From now on only count the messages received."""
        raise NotImplementedError

    async def send(self, data: str) -> None:
        raise NotImplementedError

    def backlog(self) -> int:
        return 0

    async def close(self) -> None:
        raise NotImplementedError


class TcpClient(ChatClient):
    """RFC 6120 on raw asyncio streams: with ``tls``, STARTTLS then PLAIN; without,
    SCRAM-SHA-1 in the clear. Then bind and initial presence; ``count`` hands the
    connection to a Counting protocol (no more XML parsing)."""

    def __init__(
        self, index: int, window: int, port: int, tls: ssl.SSLContext | None, resource: str
    ) -> None:
        super().__init__(index, window)
        self.transport_name = "tls" if tls is not None else "tcp"
        self.port = port
        self.tls = tls
        self.resource = resource
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.xml = XmlStreamReader()
        self.counter: Counting | None = None

    async def login(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        features = await self._open_stream()
        if self.tls is not None:
            if features.find("starttls", NS_TLS) is None:
                raise RuntimeError("server offers no STARTTLS")
            self._write(f"<starttls xmlns='{NS_TLS}'/>")
            if (await self.next()).tag != "proceed":
                raise RuntimeError("STARTTLS refused")
            await self.writer.start_tls(self.tls, server_hostname=DOMAIN)
            features = await self._open_stream()
        mechanisms = features.find("mechanisms", NS_SASL)
        offered = [m.text for m in mechanisms.children] if mechanisms is not None else []
        if self.tls is not None:
            await self._plain(offered)
        else:
            await self._scram(offered)
        features = await self._open_stream()
        if features.find("bind", NS_BIND) is None:
            raise RuntimeError("server offers no resource binding")
        self._write(
            f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'>"
            f"<resource>{self.resource}</resource></bind></iq>"
        )
        answer = await self.next()
        if answer.tag != "iq" or answer.attrs.get("type") != "result":
            raise RuntimeError(f"bind failed: {answer!r}")
        self._write("<presence/>")

    async def _plain(self, offered: list[str]) -> None:
        if "PLAIN" not in offered:
            raise RuntimeError(f"server offers no PLAIN (offers {offered})")
        token = base64.b64encode(
            f"\0{username(self.index)}\0{password(self.index)}".encode()
        ).decode()
        self._write(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        outcome = await self.next()
        if outcome.tag != "success":
            raise RuntimeError(f"SASL PLAIN failed: {outcome!r}")

    async def _scram(self, offered: list[str]) -> None:
        if "SCRAM-SHA-1" not in offered:
            raise RuntimeError(f"server offers no SCRAM-SHA-1 in the clear (offers {offered})")
        scram = ScramClient(["SCRAM-SHA-1"], username(self.index), password(self.index))
        first = base64.b64encode(scram.get_client_first().encode()).decode()
        self._write(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>{first}</auth>")
        challenge = await self.next()
        if challenge.tag != "challenge":
            raise RuntimeError(f"SASL: expected a challenge, got {challenge!r}")
        server_first = base64.b64decode(challenge.text).decode()
        # PBKDF2 in a thread (hashlib releases the GIL): other logins go on.
        await asyncio.get_running_loop().run_in_executor(None, scram.set_server_first, server_first)
        final = base64.b64encode(scram.get_client_final().encode()).decode()
        self._write(f"<response xmlns='{NS_SASL}'>{final}</response>")
        outcome = await self.next()
        if outcome.tag != "success":
            raise RuntimeError(f"SASL SCRAM-SHA-1 failed: {outcome!r}")

    async def _open_stream(self) -> Element:
        self.xml = XmlStreamReader()
        self._write(STREAM_HEADER.decode())
        if (await self.next()).tag != "stream":
            raise RuntimeError("expected a stream header")
        features = await self.next()
        if features.tag != "features":
            raise RuntimeError(f"expected stream features, got {features!r}")
        return features

    async def next(self) -> Element:
        assert self.reader is not None
        while not self.xml.elements:
            if self.xml.closed:
                raise StreamClosed("server closed the stream")
            data = await self.reader.read(65536)
            if not data:
                raise StreamClosed("connection closed by server")
            self.xml.feed(data)
        element = self.xml.elements.popleft()
        if element.tag == "error" and element.ns == NS_STREAMS:
            reason = element.children[0].tag if element.children else "?"
            raise StreamClosed(f"stream error: {reason}")
        return element

    def _write(self, text: str) -> None:
        assert self.writer is not None
        self.writer.write(text.encode())

    def count(self) -> None:
        assert self.writer is not None
        transport = self.writer.transport
        self.counter = Counting(self)
        transport.set_protocol(self.counter)
        with contextlib.suppress(Exception):
            transport.resume_reading()

    async def send(self, data: str) -> None:
        assert self.writer is not None
        self.writer.transport.write(data.encode())

    def backlog(self) -> int:
        assert self.writer is not None
        return self.writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        writer, self.writer = self.writer, None
        self.closed = True
        if writer is None:
            return
        with contextlib.suppress(Exception):
            if not writer.transport.is_closing():
                writer.transport.write(b"</stream:stream>")
            writer.transport.close()


class WsClient(ChatClient):
    """RFC 7395 with aiohttp's client: ``<open/>``, SASL PLAIN, ``<open/>`` again
    (§3.7), bind, presence; then a task counts frames that start with ``<message``."""

    transport_name = "ws"

    def __init__(
        self, index: int, window: int, session: aiohttp.ClientSession, url: str, resource: str
    ) -> None:
        super().__init__(index, window)
        self.session = session
        self.url = url
        self.resource = resource
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.xml = XmlStreamReader()
        self.reader_task: asyncio.Task[None] | None = None

    async def login(self) -> None:
        self.ws = await self.session.ws_connect(
            self.url, protocols=("xmpp",), autoping=True, compress=0, max_msg_size=0
        )
        if self.ws.protocol != "xmpp":
            raise RuntimeError(f"no xmpp subprotocol agreed (got {self.ws.protocol!r})")
        # Every frame is one element (§3.3.3): read them as children of one wrapper.
        self.xml = XmlStreamReader()
        self.xml.feed(b"<frames xmlns='jabber:client'>")
        self.xml.elements.clear()
        features = await self._open()
        mechanisms = features.find("mechanisms", NS_SASL)
        offered = [m.text for m in mechanisms.children] if mechanisms is not None else []
        if "PLAIN" not in offered:
            raise RuntimeError(f"server offers no PLAIN over ws:// (offers {offered})")
        token = base64.b64encode(
            f"\0{username(self.index)}\0{password(self.index)}".encode()
        ).decode()
        await self.ws.send_str(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        outcome = await self._next()
        if outcome.tag != "success":
            raise RuntimeError(f"SASL PLAIN failed: {outcome!r}")
        features = await self._open()
        if features.find("bind", NS_BIND) is None:
            raise RuntimeError("server offers no resource binding")
        await self.ws.send_str(
            f"<iq type='set' id='bind' xmlns='jabber:client'><bind xmlns='{NS_BIND}'>"
            f"<resource>{self.resource}</resource></bind></iq>"
        )
        answer = await self._next()
        if answer.tag != "iq" or answer.attrs.get("type") != "result":
            raise RuntimeError(f"bind failed: {answer!r}")
        await self.ws.send_str("<presence xmlns='jabber:client'/>")

    async def _open(self) -> Element:
        assert self.ws is not None
        await self.ws.send_str(f"<open xmlns='{NS_FRAMING}' to='{DOMAIN}' version='1.0'/>")
        opened = await self._next()
        if opened.tag != "open" or opened.ns != NS_FRAMING:
            raise RuntimeError(f"expected <open/>, got {opened!r}")
        features = await self._next()
        if features.tag != "features":
            raise RuntimeError(f"expected stream features, got {features!r}")
        return features

    async def _next(self) -> Element:
        assert self.ws is not None
        while not self.xml.elements:
            message = await self.ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                self.xml.feed(message.data.encode())
            elif message.type is aiohttp.WSMsgType.BINARY:
                self.xml.feed(message.data)
            else:
                raise StreamClosed(f"WebSocket closed: {message.type.name} {message.data!r}")
        element = self.xml.elements.popleft()
        if element.tag == "error" and element.ns == NS_STREAMS:
            reason = element.children[0].tag if element.children else "?"
            raise StreamClosed(f"stream error: {reason}")
        if element.tag == "close" and element.ns == NS_FRAMING:
            raise StreamClosed("server sent <close/>")
        return element

    def chat(self, seq: int, filler: str) -> str:
        """RFC 7395 §3.3.3: every stanza declares its namespace."""
        assert self.partner is not None
        return (
            f"<message xmlns='jabber:client' to='{username(self.partner.index)}@{DOMAIN}' "
            f"type='chat' id='m{seq}'><body>bench {seq} {filler}</body></message>"
        )

    def count(self) -> None:
        self.reader_task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        ws = self.ws
        assert ws is not None
        text = aiohttp.WSMsgType.TEXT
        try:
            while True:
                message = await ws.receive()
                if message.type is text:
                    if message.data.startswith("<message"):
                        self.delivered(1)
                elif message.type is not aiohttp.WSMsgType.BINARY:
                    break
        finally:
            self.closed = True

    async def send(self, data: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(data)

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        self.closed = True
        if ws is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.send_str(f"<close xmlns='{NS_FRAMING}'/>"), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader_task


# -------------------------------------------------------------------- phases


@dataclass
class Options:
    pairs: int
    window: int
    warmup: float
    duration: float
    body_bytes: int
    transports: list[str]
    login_concurrency: int
    step_timeout: float
    upload_users: int
    files_per_user: int
    file_size: int
    upload_rounds: int
    py_spy: str | None = None


async def gather_bounded(
    items: Sequence[ChatClient],
    action: Callable[[ChatClient], Awaitable[Any]],
    concurrency: int,
    timeout: float,
) -> list[str]:
    """Run ``action`` on every item, ``concurrency`` at a time; the failures."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(item: ChatClient) -> None:
        async with gate:
            try:
                await asyncio.wait_for(action(item), timeout)
            except (
                TimeoutError,
                OSError,
                RuntimeError,
                StreamClosed,
                ssl.SSLError,
                aiohttp.ClientError,
            ) as exc:
                failures.append(f"{item.transport_name} u{item.index}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(item) for item in items))
    return failures


async def wait_server_idle(pid: int, limit: float, threshold: float = 0.05) -> float:
    """Wait until the server uses under ``threshold`` of a core over 0.5 s (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = process_cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if process_cpu_seconds(pid) - before < threshold * 0.5:
            break
    return round(time.monotonic() - started, 2)


class Profiler:
    """py-spy on the server over one measured window (``--py-spy``; raw stacks)."""

    def __init__(self, py_spy: str | None, server: Server, label: str, seconds: float) -> None:
        self.command = None
        if py_spy and server.name == "dovecote":
            self.output = f"/tmp/py-spy-web-{label}.txt"
            self.command = [
                py_spy, "record", "--nonblocking", "--format", "raw", "--rate", "200",
                "--duration", str(max(1, int(seconds))), "--pid", str(server.pid),
                "--output", self.output,
            ]  # fmt: skip
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.command is not None:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )

    async def stop(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 30)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        else:
            log.info("py-spy stacks: %s", self.output)


async def flood(server: Server, clients: list[ChatClient], options: Options) -> dict[str, Any]:
    """Chat at saturation on one transport: warm-up, measured window, drain."""
    running = True
    filler = "x" * max(0, options.body_bytes - 12)

    async def feed(client: ChatClient) -> None:
        seq = 0
        window = client.window
        while running:
            while client.in_flight() >= window:
                client.wake.clear()
                await client.wake.wait()
                if not running:
                    return
            await client.send(client.chat(seq, filler))
            client.sent += 1
            seq += 1
            if client.backlog() > 256 * 1024:
                await asyncio.sleep(0.001)
            elif seq % 8 == 0:
                await asyncio.sleep(0)

    for client in clients:
        client.sent = client.received = 0
    tasks = [asyncio.create_task(feed(client)) for client in clients]

    def snapshot() -> dict[str, float]:
        return {
            "t": time.monotonic(),
            "delivered": sum(c.received for c in clients),
            "server_cpu": process_cpu_seconds(server.pid),
            "client_cpu": self_cpu_seconds(),
        }

    label = f"{server.name}-{clients[0].transport_name}"
    profiler = Profiler(options.py_spy, server, label, options.duration)
    try:
        await asyncio.sleep(options.warmup)
        await profiler.start()
        machine_before = machine_cpu_times()
        rss_before = process_rss_kib(server.pid)
        before = snapshot()
        await asyncio.sleep(options.duration)
        after = snapshot()
        machine = machine_busy_pct(machine_before, machine_cpu_times())
        rss_after = process_rss_kib(server.pid)
        await profiler.stop()
    finally:
        running = False
        for client in clients:
            client.wake.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    expected = sum(c.sent for c in clients)
    deadline = time.monotonic() + 15
    while sum(c.received for c in clients) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    wall = after["t"] - before["t"]
    delivered = after["delivered"] - before["delivered"]
    server_cpu = after["server_cpu"] - before["server_cpu"]
    client_cpu = after["client_cpu"] - before["client_cpu"]
    return {
        "window_s": round(wall, 2),
        "delivered": delivered,
        "delivered_per_s": round(delivered / wall) if wall > 0 else None,
        "server_cpu_us_per_msg": round(server_cpu * 1e6 / delivered, 1) if delivered else None,
        "server_cpu_pct": round(100 * server_cpu / wall, 1) if wall > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / wall, 1) if wall > 0 else None,
        "machine_busy_pct": machine,
        "server_rss_kib": rss_after,
        "server_rss_growth_kib": rss_after - rss_before,
        "lost_after_drain": expected - sum(c.received for c in clients),
        "disconnected": sum(1 for c in clients if c.closed),
    }


async def chat_phase(
    server: Server,
    http_port: int,
    session: aiohttp.ClientSession,
    tls: ssl.SSLContext,
    options: Options,
) -> dict[str, Any]:
    """Log in every client of every transport, then flood one transport at a time."""
    groups: dict[str, list[ChatClient]] = {}
    base = 0
    for name in options.transports:
        group: list[ChatClient] = []
        for i in range(2 * options.pairs):
            index = base + i
            if name == "ws":
                url = f"http://{DOMAIN}:{http_port}{WS_PATH}"
                group.append(WsClient(index, options.window, session, url, "chat"))
            else:
                context = tls if name == "tls" else None
                group.append(TcpClient(index, options.window, server.port, context, "chat"))
        for a, b in zip(group[0::2], group[1::2], strict=True):
            a.partner, b.partner = b, a
        groups[name] = group
        base += 2 * options.pairs
    result: dict[str, Any] = {}
    everyone = [c for group in groups.values() for c in group]
    try:
        for name, group in groups.items():
            started = time.monotonic()
            cpu = process_cpu_seconds(server.pid)
            failures = await gather_bounded(
                group, lambda c: c.login(), options.login_concurrency, options.step_timeout
            )
            if failures:
                raise RuntimeError(f"{len(failures)} {name} logins failed, first: {failures[0]}")
            result[f"{name}_login_s"] = round(time.monotonic() - started, 2)
            result[f"{name}_login_server_cpu_ms"] = round(
                (process_cpu_seconds(server.pid) - cpu) * 1000 / len(group), 2
            )
            for client in group:
                client.count()
            log.info("%s: %d %s clients logged in in %.1fs", server.name, len(group), name,
                     result[f"{name}_login_s"])  # fmt: skip
        await wait_server_idle(server.pid, options.step_timeout)
        result["rss_logged_in_kib"] = process_rss_kib(server.pid)
        for name, group in groups.items():
            await wait_server_idle(server.pid, 10)
            result[name] = await flood(server, group, options)
            log.info("%s %s: %s", server.name, name, _short(result[name]))
    finally:
        await asyncio.gather(*(c.close() for c in everyone), return_exceptions=True)
    return result


def _short(entry: dict[str, Any]) -> str:
    return (
        f"{entry.get('delivered_per_s')} msg/s, {entry.get('server_cpu_us_per_msg')} µs "
        f"server CPU/msg (server {entry.get('server_cpu_pct')}%, client "
        f"{entry.get('client_cpu_pct')}% of a core), lost {entry.get('lost_after_drain')}"
    )


@dataclass
class Slot:
    put_url: str
    put_headers: dict[str, str]
    get_url: str


async def request_slots(
    client: TcpClient, files: int, size: int, round_no: int, refusals: list[str]
) -> list[Slot]:
    """XEP-0363 §4: ``files`` slot requests on one connection (pipelined); the slots
    granted (refusals, §6, are added to ``refusals``)."""
    for f in range(files):
        client._write(
            f"<iq type='get' to='{UPLOAD_DOMAIN}' id='slot{f}'>"
            f"<request xmlns='{NS_UPLOAD}' filename='r{round_no}-u{client.index}-{f}.bin' "
            f"size='{size}' content-type='application/octet-stream'/></iq>"
        )
    slots: dict[str, Slot] = {}
    answered = 0
    while answered < files:
        answer = await client.next()
        ident = answer.attrs.get("id", "")
        if answer.tag != "iq" or not ident.startswith("slot"):
            continue
        answered += 1
        if answer.attrs.get("type") != "result":
            error = answer.find("error")
            reason = (
                " ".join(f"{c.tag} {c.text!r}" if c.text else c.tag for c in error.children)
                if error is not None
                else "?"
            )
            refusals.append(f"u{client.index}: {reason}")
            continue
        slot = answer.find("slot", NS_UPLOAD)
        put = slot.find("put") if slot is not None else None
        get = slot.find("get") if slot is not None else None
        if put is None or get is None:
            raise RuntimeError(f"slot without put/get: {answer!r}")
        headers = {h.attrs["name"]: h.text for h in put.children if h.tag == "header"}
        slots[ident] = Slot(put.attrs["url"], headers, get.attrs["url"])
    return list(slots.values())


async def upload_phase(
    server: Server,
    session: aiohttp.ClientSession,
    tls: ssl.SSLContext,
    options: Options,
) -> dict[str, Any]:
    """Slots over XMPP, then all PUTs at once, then all GETs at once; per round."""
    clients = [TcpClient(i, 1, server.port, tls, "upload") for i in range(options.upload_users)]
    failures = await gather_bounded(
        clients, lambda c: c.login(), options.login_concurrency, options.step_timeout
    )
    if failures:
        raise RuntimeError(f"{len(failures)} upload logins failed, first: {failures[0]}")
    payload = os.urandom(options.file_size)
    rounds: list[dict[str, Any]] = []
    try:
        for round_no in range(options.upload_rounds):
            await wait_server_idle(server.pid, 10)
            started = time.monotonic()
            cpu = process_cpu_seconds(server.pid)
            slot_profiler = Profiler(options.py_spy, server, f"{server.name}-slots{round_no}", 5)
            await slot_profiler.start()
            refusals: list[str] = []
            per_user = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        request_slots(
                            c, options.files_per_user, options.file_size, round_no, refusals
                        )
                        for c in clients
                    )
                ),
                options.step_timeout,
            )
            if refusals:
                log.warning("%s: %d slot requests refused, first: %s", server.name,
                            len(refusals), refusals[0])  # fmt: skip
            slots = [slot for user in per_user for slot in user]
            slot_wall = time.monotonic() - started
            slot_cpu = process_cpu_seconds(server.pid) - cpu
            if slot_profiler.process is not None and slot_profiler.process.returncode is None:
                slot_profiler.process.send_signal(signal.SIGINT)
            await slot_profiler.stop()
            entry: dict[str, Any] = {
                "files": len(slots),
                "slots_refused": len(refusals),
                "first_refusal": refusals[0] if refusals else None,
                "slots_per_s": round(len(slots) / slot_wall) if slot_wall else None,
                "slot_server_cpu_us": round(slot_cpu * 1e6 / len(slots)),
            }
            label = f"{server.name}-upload{round_no}"
            entry["put"], stored = await _transfer(
                server, slots, options, label, _put(session, payload)
            )
            entry["get"], _ = await _transfer(server, stored, options, "", _get(session, payload))
            rounds.append(entry)
            log.info(
                "%s upload round %d: PUT %s MB/s (%s ms CPU/MB), GET %s MB/s (%s ms CPU/MB)",
                server.name, round_no, entry["put"]["mb_per_s"],
                entry["put"]["server_cpu_ms_per_mb"], entry["get"]["mb_per_s"],
                entry["get"]["server_cpu_ms_per_mb"],
            )  # fmt: skip
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    result: dict[str, Any] = {"rounds": rounds}
    for kind in ("put", "get"):
        for key in ("mb_per_s", "server_cpu_ms_per_mb", "server_cpu_pct", "client_cpu_pct"):
            values = [r[kind][key] for r in rounds if r[kind].get(key) is not None]
            result[f"{kind}_{key}"] = round(statistics.median(values), 1) if values else None
        result[f"{kind}_failed"] = sum(r[kind]["failed"] for r in rounds)
    result["slots_refused"] = sum(r["slots_refused"] for r in rounds)
    result["slot_server_cpu_us"] = statistics.median(r["slot_server_cpu_us"] for r in rounds)
    return result


Transfer = Callable[[Slot], Awaitable[None]]


def _put(session: aiohttp.ClientSession, payload: bytes) -> Transfer:
    async def put(slot: Slot) -> None:
        headers = {"Content-Type": "application/octet-stream", **slot.put_headers}
        async with session.put(slot.put_url, data=payload, headers=headers) as response:
            await response.read()
            if response.status not in (200, 201):
                raise RuntimeError(f"PUT answered {response.status}")

    return put


def _get(session: aiohttp.ClientSession, payload: bytes) -> Transfer:
    async def get(slot: Slot) -> None:
        async with session.get(slot.get_url) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET answered {response.status}")
            if body != payload:
                raise RuntimeError(f"GET returned {len(body)} bytes, not what was uploaded")

    return get


async def _transfer(
    server: Server, slots: list[Slot], options: Options, label: str, action: Transfer
) -> tuple[dict[str, Any], list[Slot]]:
    """Every transfer at once; wall time from the first request to the last answer.
    The numbers, and the slots whose transfer went through."""
    errors: list[str] = []
    done: list[Slot] = []

    async def one(slot: Slot) -> None:
        try:
            await action(slot)
            done.append(slot)
        except (aiohttp.ClientError, RuntimeError, OSError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    profiler = Profiler(options.py_spy if label else None, server, label, 2)
    await profiler.start()
    machine = machine_cpu_times()
    cpu = process_cpu_seconds(server.pid)
    client_cpu = self_cpu_seconds()
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(s) for s in slots)), options.step_timeout)
    wall = time.monotonic() - started
    server_cpu = process_cpu_seconds(server.pid) - cpu
    client_cpu = self_cpu_seconds() - client_cpu
    busy = machine_busy_pct(machine, machine_cpu_times())
    if profiler.process is not None and profiler.process.returncode is None:
        profiler.process.send_signal(signal.SIGINT)  # py-spy writes what it has
    await profiler.stop()
    megabytes = len(done) * options.file_size / MB
    if errors:
        log.warning("%s: %d transfers failed, first: %s", server.name, len(errors), errors[0])
    return {
        "transfers": len(done),
        "wall_s": round(wall, 3),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
        "mb_per_s": round(megabytes / wall, 1) if wall > 0 else None,
        "server_cpu_ms_per_mb": round(server_cpu * 1000 / megabytes, 2) if megabytes else None,
        "server_cpu_pct": round(100 * server_cpu / wall, 1) if wall > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / wall, 1) if wall > 0 else None,
        "machine_busy_pct": busy,
    }, done


async def run_all(server: Server, http_port: int, options: Options) -> dict[str, Any]:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # throw-away self-signed certificates
    connector = aiohttp.TCPConnector(limit=0, resolver=BenchResolver(), force_close=False)
    timeout = aiohttp.ClientTimeout(total=options.step_timeout)
    result: dict[str, Any] = {"rss_idle_kib": process_rss_kib(server.pid)}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if options.transports:
            result["chat"] = await chat_phase(server, http_port, session, tls, options)
        if options.upload_rounds > 0:
            await wait_server_idle(server.pid, 30)
            result["upload"] = await upload_phase(server, session, tls, options)
    result["rss_end_kib"] = process_rss_kib(server.pid)
    return result


# ------------------------------------------------------------------------ runs


def make_server(name: str, workdir: Path, args: argparse.Namespace) -> WebDovecote | WebProsody:
    core = None if args.no_pin else SERVER_CORE
    if name in ("prosody", "prosody-tuned"):
        binary = args.prosody_bin or ensure_prosody_installed()
        binary = str(Path(binary).resolve()) if os.sep in binary else binary
        return WebProsody(workdir, binary, core, args.file_size, tuned=name == "prosody-tuned")
    if args.dovecote_src:
        binary = dovecote_from_source(workdir, Path(args.dovecote_src))
    else:
        found = find_dovecote_binary(args.dovecote_bin)
        if found is None:
            raise ServerError("no `dovecote` executable (pip install -e ., or --dovecote-src)")
        binary = str(Path(found).resolve()) if os.sep in found else found
    return WebDovecote(workdir, binary, core, args.file_size)


def run_server(name: str, args: argparse.Namespace, options: Options) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-web-{name}-"))
    users = max(len(options.transports) * 2 * options.pairs, options.upload_users)
    out: dict[str, Any] = {}
    server: WebDovecote | WebProsody | None = None
    try:
        server = make_server(name, workdir, args)
        started = time.monotonic()
        server.prepare(users)
        out["accounts"] = users
        out["accounts_s"] = round(time.monotonic() - started, 2)
        out["server"] = server.version()
        out["background_busy_pct"] = wait_for_quiet_machine(args.wait_quiet)
        server.start()
        if not args.no_pin:
            out["server_affinity"] = sorted(os.sched_getaffinity(server.pid))
        out.update(asyncio.run(asyncio.wait_for(run_all(server, server.http_port, options),
                                                args.timeout)))  # fmt: skip
        if not server.alive():
            out["error"] = "server died:\n" + server.tail_logs(15)
    except (
        ServerError,
        OSError,
        RuntimeError,
        TimeoutError,
        subprocess.SubprocessError,
        aiohttp.ClientError,
    ) as exc:
        log.error("%s: %s", name, exc)
        out["error"] = f"{type(exc).__name__}: {exc}"
        if server is not None:
            out["server_log_tail"] = server.tail_logs(15)
    finally:
        if server is not None:
            server.stop()
        if args.keep_tmp:
            log.info("%s: kept %s", name, workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def table(report: dict[str, Any], servers: list[str], options: Options) -> str:
    """A Markdown table: one row per number, one column per server."""
    rows: list[tuple[str, tuple[str, ...], str]] = []
    for name in options.transports:
        rows += [
            (f"chat {name}: delivered msg/s", ("chat", name, "delivered_per_s"), "{:,.0f}"),
            (f"chat {name}: server CPU µs/msg", ("chat", name, "server_cpu_us_per_msg"),
             "{:.1f}"),
            (f"chat {name}: server / client CPU %",
             ("chat", name, "server_cpu_pct", "client_cpu_pct"), "{:.0f} / {:.0f}"),
            (f"chat {name}: lost", ("chat", name, "lost_after_drain"), "{:d}"),
            (f"login {name}: server CPU ms/login", ("chat", f"{name}_login_server_cpu_ms"),
             "{:.1f}"),
        ]  # fmt: skip
    if options.upload_rounds:
        n = options.upload_users * options.files_per_user
        size = (
            f"{options.file_size / 1024**2:g} MiB"
            if options.file_size % 1024**2 == 0
            else f"{options.file_size / MB:g} MB"
        )
        rows += [
            (f"upload: PUT MB/s ({n} x {size} at once)", ("upload", "put_mb_per_s"),
             "{:.1f}"),
            ("upload: PUT server CPU ms/MB", ("upload", "put_server_cpu_ms_per_mb"), "{:.2f}"),
            ("upload: GET MB/s", ("upload", "get_mb_per_s"), "{:.1f}"),
            ("upload: GET server CPU ms/MB", ("upload", "get_server_cpu_ms_per_mb"), "{:.2f}"),
            ("upload: slot request server CPU µs", ("upload", "slot_server_cpu_us"), "{:.0f}"),
            ("upload: slots refused, all rounds", ("upload", "slots_refused"), "{:d}"),
            ("upload: PUTs failed, all rounds", ("upload", "put_failed"), "{:d}"),
            ("upload: GETs failed, all rounds", ("upload", "get_failed"), "{:d}"),
        ]  # fmt: skip
    rows.append(("server RSS at the end (MB)", ("rss_end_kib",), "{:.0f}"))
    header = "| | " + " | ".join(servers) + " |"
    lines = [header, "| --- |" + " ---: |" * len(servers)]
    for title, path, fmt in rows:
        cells = []
        for name in servers:
            entry: Any = report["results"].get(name, {})
            if fmt.count("{") == 2:  # two numbers from the same dict
                *where, first, second = path
                for key in where:
                    entry = entry.get(key, {}) if isinstance(entry, dict) else {}
                values = [entry.get(first), entry.get(second)] if isinstance(entry, dict) else []
                ok = len(values) == 2 and None not in values
                cells.append(fmt.format(*values) if ok else "")
                continue
            for key in path:
                entry = entry.get(key) if isinstance(entry, dict) else None
            if entry is None:
                cells.append("error" if "error" in report["results"].get(name, {}) else "")
            elif path == ("rss_end_kib",):
                cells.append(fmt.format(entry / 1024))
            else:
                cells.append(fmt.format(entry))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat over TCP vs WebSocket, and XEP-0363 upload throughput; "
        "Dovecote and Prosody side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--servers",
        default="dovecote,prosody",
        help="dovecote, prosody, prosody-tuned (Prosody with loadgen.py's --prosody-tuned "
        "profile: blocklist cache, generational GC, Nagle off)",
    )
    parser.add_argument(
        "--transports", default="tcp,tls,ws", help="chat transports (tcp, tls, ws; '' for none)"
    )
    parser.add_argument("--pairs", type=int, default=200, help="client pairs per transport")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per sender")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--body-bytes", type=int, default=64, help="size of a message body")
    parser.add_argument("--upload-users", type=int, default=20)
    parser.add_argument("--files-per-user", type=int, default=5)
    parser.add_argument("--file-size", type=int, default=1024 * 1024, help="bytes per file")
    parser.add_argument(
        "--upload-rounds", type=int, default=3, help="upload rounds (median shown); 0: none"
    )
    parser.add_argument("--login-concurrency", type=int, default=50)
    parser.add_argument("--step-timeout", type=float, default=120.0, help="limit of a step, s")
    parser.add_argument("--timeout", type=float, default=240.0, help="limit per server, s")
    parser.add_argument("--prosody-bin", help="prosody executable; from PATH when not given")
    parser.add_argument("--dovecote-bin", help="dovecote executable (default .venv or PATH)")
    parser.add_argument("--dovecote-src", help="run Dovecote from this src/ directory")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and loadgen")
    parser.add_argument(
        "--wait-quiet", type=float, default=20.0, help="wait up to this long for <15%% busy"
    )
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument(
        "--py-spy",
        metavar="PY_SPY",
        help="profile Dovecote's measured windows with this py-spy executable "
        "(raw stacks in /tmp/py-spy-web-*.txt)",
    )
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in args.server_list:
        if name not in ("dovecote", "prosody", "prosody-tuned"):
            parser.error(f"unknown server {name!r}")
    args.transport_list = [t.strip() for t in args.transports.split(",") if t.strip()]
    for name in args.transport_list:
        if name not in TRANSPORTS:
            parser.error(f"unknown transport {name!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if not args.no_pin and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CORE})
    nofile = raise_open_files_limit()
    options = Options(
        pairs=args.pairs,
        window=args.window,
        warmup=args.warmup,
        duration=args.duration,
        body_bytes=args.body_bytes,
        transports=args.transport_list,
        login_concurrency=args.login_concurrency,
        step_timeout=args.step_timeout,
        upload_users=args.upload_users,
        files_per_user=args.files_per_user,
        file_size=args.file_size,
        upload_rounds=args.upload_rounds,
        py_spy=args.py_spy,
    )
    watchdog_after = len(args.server_list) * (args.timeout + 120)

    def watchdog() -> None:
        log.error("watchdog: run exceeded %.0fs, killing servers and exiting", watchdog_after)
        kill_live_processes()
        os._exit(3)

    timer = threading.Timer(watchdog_after, watchdog)
    timer.daemon = True
    timer.start()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "open_files_limit": nofile, "pinned": not args.no_pin},
        "options": vars(options),
        "results": {},
    }
    try:
        for name in args.server_list:
            report["results"][name] = run_server(name, args, options)
    finally:
        kill_live_processes()
        timer.cancel()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name, result in report["results"].items():
        print(f"{name}: {result.get('server', '?')}")
    print(table(report, args.server_list, options))
    failed = False
    for name, result in report["results"].items():
        if "error" in result:
            failed = True
            print(f"{name}: {result['error'].splitlines()[0]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
