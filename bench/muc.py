#!/usr/bin/env python3
"""MUC (XEP-0045) groupchat benchmark: Dovecote and Prosody side by side.

For each server and each scenario the tool starts the server pinned to one core
(``taskset -c 1``, the load generator on the other), logs in the occupants
(STARTTLS, SASL PLAIN, resource binding), joins them to their rooms (XEP-0045
§7.2: presence to ``room@service/nick`` with ``<history maxstanzas='0'/>``), waits
until every join is answered with the self-presence (status 110, §7.2.3) and the
server is idle, and then has S senders per room send groupchat messages (§7.4) as
fast as the server delivers them: a window of messages in flight per room, where a
message counts as delivered once the room's occupants together have received as
many ``</message>`` as there are occupants (every occupant, the sender included,
gets each message; §7.4). After a warm-up it measures a fixed window:

* deliveries/s (messages received by occupants) and messages/s (sent into rooms);
* the server's CPU (utime+stime from /proc/<pid>/stat) per delivery, in µs;
* the server's RSS.

The load clients are cheap on purpose: after the join they only count the bytes
``</message>`` in what they read (an asyncio Protocol on the TLS transport, no XML
parsing), so one core of Python keeps up with the server's one core.

Scenarios: ``100`` (one room of 100), ``1000`` (one room of 1 000), ``10x100``
(ten rooms of 100 at once); any ``RxN`` works. A fresh server per scenario.
Everything is bounded in time (see ``--help``), all traffic goes to 127.0.0.1.
It prints a side-by-side table on stdout (``--json FILE`` keeps every number).

Shares the server set-up (accounts, certificate, temp dir, stop on exit) with
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
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    DOMAIN,
    HOST,
    NS_BIND,
    NS_SASL,
    NS_TLS,
    DovecoteServer,
    Element,
    ProsodyServer,
    Server,
    ServerError,
    StreamClosed,
    XmlStreamReader,
    ensure_prosody_installed,
    find_dovecote_binary,
    kill_live_processes,
    lua_string,
    machine_busy_pct,
    machine_cpu_times,
    make_self_signed_cert,
    password,
    process_cpu_seconds,
    process_rss_kib,
    raise_open_files_limit,
    self_cpu_seconds,
    username,
    wait_for_quiet_machine,
)

log = logging.getLogger("muc")

MUC_DOMAIN = f"conference.{DOMAIN}"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_DATA = "jabber:x:data"
STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    f" to='{DOMAIN}' version='1.0'>"
).encode()
END_TAG = b"</message>"
TAIL = len(END_TAG) - 1

SERVER_CORE = 1
CLIENT_CORE = 0


# ----------------------------------------------------------------------- servers


def pinned(command: list[str], core: int | None) -> list[str]:
    """``command`` under ``taskset -c core`` (taskset execs it: same pid)."""
    if core is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(core), *command]


class MucProsody(ProsodyServer):
    """Prosody with its MUC component (mod_muc) on ``conference.<domain>``.

    Stock options but for what would throttle or skew a loopback benchmark:
    mod_limits is not loaded (loadgen's module list), new rooms are not locked
    (``muc_room_locking = false``; the loadgen still submits the instant-room form,
    XEP-0045 §10.1.2, to servers that lock them), and room history is off unless
    ``--history`` (``muc_room_default_history_length``). Prosody 0.12's mod_muc has
    no occupant cap to raise.
    """

    def __init__(
        self, workdir: Path, binary: str, core: int | None, history: int, tuned: bool
    ) -> None:
        super().__init__(workdir, binary, tuned=tuned)
        self.core = core
        self.history = history

    def prepare(self, user_count: int) -> None:
        super().prepare(user_count)
        with open(self.config_path, "a", encoding="utf-8") as config:
            config.write(
                f"""
Component "{MUC_DOMAIN}" "muc"
\tmuc_room_locking = false
\tmuc_room_default_history_length = {self.history}
\tmax_history_messages = {max(self.history, 1)}
\trestrict_room_creation = false
\tmuc_tombstones = false
\tname = {lua_string("bench rooms")}
"""
            )

    def command(self) -> list[str]:
        return pinned(super().command(), self.core)


class MucDovecote(DovecoteServer):
    """Dovecote with ``[muc] domain = "conference.<domain>"``.

    Room archiving (``default_archive``) off and history as ``--history``, like the
    Prosody side (which loads no mod_muc_mam); ``max_occupants`` and
    ``default_max_users`` raised to the largest room; the per-connection read rate
    (``c2s_rate``) off like Prosody's mod_limits. ``binary`` may be the wrapper of
    ``dovecote_from_source`` (``--dovecote-src``).
    """

    def __init__(
        self, workdir: Path, binary: str, core: int | None, history: int, max_occupants: int
    ) -> None:
        super().__init__(workdir, binary)
        self.core = core
        self.history = history
        self.max_occupants = max_occupants

    def prepare(self, user_count: int) -> None:
        super().prepare(user_count)
        text = self.config_path.read_text()
        if "\n[limits]\n" in text:
            text = text.replace("\n[limits]\n", "\n[limits]\nc2s_rate = 0\n", 1)
        occupants = max(self.max_occupants, 1)
        text += f"""
[muc]
domain = "{MUC_DOMAIN}"
max_occupants = {occupants}
default_max_users = {occupants}
max_history = {max(self.history, 0)}
default_history = {self.history}
default_archive = false
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
                "this Dovecote does not take the [muc] configuration (no MUC yet?): "
                + (checked.stderr or checked.stdout).strip()[-800:]
            )

    def command(self) -> list[str]:
        return pinned(super().command(), self.core)


class MucEjabberd(Server):
    """ejabberd (Debian package) with mod_muc on ``conference.<domain>``.

    Started with ``erl ... -s ejabberd`` directly (``ejabberdctl`` would switch to
    the ejabberd user through su, and the pid measured would not be the VM's), on
    its own Mnesia spool and config in the temp dir. Accounts are created in-band
    (XEP-0077, mod_register, open to 127.0.0.1 for this run) by the load clients
    before they log in. No shaper on the c2s listener (like Prosody without
    mod_limits), room history as ``--history``, no room archiving (mod_mam is not
    loaded), ``max_users`` raised to the largest room.
    """

    name = "ejabberd"
    register_in_band = True

    def __init__(self, workdir: Path, core: int | None, history: int, max_occupants: int) -> None:
        super().__init__(workdir)
        self.core = core
        self.history = history
        self.max_occupants = max_occupants
        self.config_path = workdir / "ejabberd.yml"
        self.spool = workdir / "spool"
        self.log_path = workdir / "ejabberd.log"

    def version(self) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Version}", "ejabberd"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            if out:
                return f"ejabberd {out.strip()}"
        return "ejabberd (unknown version)"

    def prepare(self, user_count: int) -> None:
        if shutil.which("erl") is None or not Path("/usr/sbin/ejabberdctl").exists():
            raise ServerError("ejabberd is not installed (apt-get install -y ejabberd)")
        self.spool.mkdir(mode=0o750)
        cert, key = make_self_signed_cert(self.workdir, DOMAIN)
        pem = self.workdir / "bench.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        pem.chmod(0o600)
        occupants = max(self.max_occupants, 2)
        self.config_path.write_text(
            f"""# generated by bench/muc.py
loglevel: warning
hosts: ["{DOMAIN}"]
certfiles: ["{pem}"]
listen:
  - port: {self.port}
    ip: "{HOST}"
    module: ejabberd_c2s
    max_stanza_size: 262144
    backlog: 1024
    shaper: none
    access: c2s
    starttls: true
auth_method: internal
auth_password_format: scram
registration_timeout: infinity
acme:
  auto: false
acl:
  loopback:
    ip: ["127.0.0.0/8"]
access_rules:
  c2s:
    allow: all
  register:
    allow: all
  muc_create:
    allow: all
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_register:
    ip_access: all
    access: register
    welcome_message: {{}}
  mod_roster: {{}}
  mod_muc:
    host: "{MUC_DOMAIN}"
    access: all
    access_create: muc_create
    access_persistent: all
    history_size: {self.history}
    max_users: {occupants}
    max_users_presence: {occupants}
    default_room_options:
      mam: false
      max_users: {occupants}
"""
        )
        self.setup_info = {"users_method": "in-band registration (XEP-0077) by the clients"}

    def command(self) -> list[str]:
        os.environ.update(
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.log_path),
            ERL_LIBS="/usr/lib/x86_64-linux-gnu",
            ERL_CRASH_DUMP=str(self.workdir / "erl_crash.dump"),
        )
        return pinned(
            ["erl", "+K", "true", "+P", "250000", "-noinput", "-mnesia", "dir",
             f'"{self.spool}"', "-s", "ejabberd"],
            self.core,
        )  # fmt: skip


def dovecote_from_source(workdir: Path, src: Path) -> str:
    """A wrapper script running ``python -m dovecote`` from a source tree."""
    wrapper = workdir / "dovecote-src.sh"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={src.resolve()} exec {sys.executable} -m dovecote "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


# ----------------------------------------------------------------------- clients


@dataclass
class Room:
    """One room under load: its occupants, what was sent, what was received."""

    name: str
    occupants: int
    senders: int
    window: int
    sent: int = 0
    delivered: int = 0
    received_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def jid(self) -> str:
        return f"{self.name}@{MUC_DOMAIN}"

    def in_flight(self) -> int:
        """Messages sent that not every occupant has received yet (all told)."""
        return self.sent - self.delivered // self.occupants


class CountingProtocol(asyncio.Protocol):
    """After the join: count ``</message>`` in the bytes read, nothing else."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.tail = b""
        self.closed = False
        #: The first bytes read, kept for one occupant per run (--sample).
        self.sample: bytes | None = None

    def data_received(self, data: bytes) -> None:
        count = data.count(END_TAG)
        if self.tail:
            count += (self.tail + data[:TAIL]).count(END_TAG)
        self.tail = data[-TAIL:] if len(data) >= TAIL else (self.tail + data)[-TAIL:]
        room = self.room
        room.received_bytes += len(data)
        if self.sample is not None and len(self.sample) < 4096:
            self.sample += data[: 4096 - len(self.sample)]
        if count:
            room.delivered += count
            if not room.wake.is_set() and room.in_flight() < room.window:
                room.wake.set()

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


class Occupant:
    """One client: login (STARTTLS, PLAIN, bind), join one room, then count."""

    def __init__(
        self, index: int, port: int, tls: ssl.SSLContext, room: Room, register: bool = False
    ) -> None:
        self.index = index
        self.register = register
        self.port = port
        self.tls = tls
        self.room = room
        self.nick = f"n{index}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.xml = XmlStreamReader()
        self.counter: CountingProtocol | None = None

    async def login(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        features = await self._open_stream()
        if features.find("starttls", NS_TLS) is None:
            raise RuntimeError("server offers no STARTTLS")
        self._send(f"<starttls xmlns='{NS_TLS}'/>".encode())
        if (await self._next()).tag != "proceed":
            raise RuntimeError("STARTTLS refused")
        await self.writer.start_tls(self.tls, server_hostname=DOMAIN)
        features = await self._open_stream()
        if self.register:
            await self._register()
        mechanisms = features.find("mechanisms", NS_SASL)
        offered = [m.text for m in mechanisms.children] if mechanisms is not None else []
        if "PLAIN" not in offered:
            raise RuntimeError(f"server offers no PLAIN (offers {offered})")
        token = base64.b64encode(
            f"\0{username(self.index)}\0{password(self.index)}".encode()
        ).decode()
        self._send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>".encode())
        outcome = await self._next()
        if outcome.tag != "success":
            raise RuntimeError(f"SASL PLAIN failed: {outcome!r}")
        features = await self._open_stream()
        if features.find("bind", NS_BIND) is None:
            raise RuntimeError("server offers no resource binding")
        self._send(
            f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'>"
            "<resource>muc</resource></bind></iq>".encode()
        )
        answer = await self._next()
        if answer.tag != "iq" or answer.attrs.get("type") != "result":
            raise RuntimeError(f"bind failed: {answer!r}")

    async def _register(self) -> None:
        """XEP-0077 §3.1: create the account in-band (servers without an import tool)."""
        self._send(
            "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
            f"<username>{username(self.index)}</username>"
            f"<password>{password(self.index)}</password></query></iq>".encode()
        )
        while True:
            answer = await self._next()
            if answer.tag == "iq" and answer.attrs.get("id") == "reg":
                break
        if answer.attrs.get("type") != "result":
            error = answer.find("error")
            conditions = [c.tag for c in error.children] if error is not None else []
            if "conflict" not in conditions:  # already there: a second scenario
                raise RuntimeError(f"in-band registration failed: {_describe(answer)}")

    async def join(self) -> bool:
        """XEP-0045 §7.2.1: enter the room; True when this join created it (201)."""
        self._send(
            f"<presence to='{self.room.jid}/{self.nick}'><x xmlns='{NS_MUC}'>"
            "<history maxstanzas='0'/></x></presence>".encode()
        )
        own = f"{self.room.jid}/{self.nick}"
        while True:
            element = await self._next()
            if element.tag != "presence" or element.attrs.get("from") != own:
                continue
            if element.attrs.get("type") == "error":
                raise RuntimeError(f"join refused: {_describe(element)}")
            codes = _status_codes(element)
            if "110" in codes:  # §7.2.3: the self-presence ends the join
                return "201" in codes

    async def configure_instant_room(self) -> None:
        """XEP-0045 §10.1.2: accept the default configuration (unlocks the room)."""
        self._send(
            f"<iq type='set' id='instant' to='{self.room.jid}'>"
            f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>"
            "</iq>".encode()
        )
        while True:
            element = await self._next()
            if element.tag == "iq" and element.attrs.get("id") == "instant":
                if element.attrs.get("type") != "result":
                    raise RuntimeError(f"instant room refused: {_describe(element)}")
                return

    def start_counting(self) -> None:
        """Hand the TLS transport to a CountingProtocol; no more XML parsing."""
        assert self.writer is not None
        transport = self.writer.transport
        self.counter = CountingProtocol(self.room)
        transport.set_protocol(self.counter)
        with contextlib.suppress(Exception):
            transport.resume_reading()
        self.transport = transport

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.transport.write(data)

    def write_buffer_size(self) -> int:
        assert self.writer is not None
        return self.writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            if not writer.transport.is_closing():
                writer.transport.write(b"</stream:stream>")
            writer.transport.close()

    # -- plumbing

    async def _open_stream(self) -> Element:
        self.xml = XmlStreamReader()
        self._send(STREAM_HEADER)
        if (await self._next()).tag != "stream":
            raise RuntimeError("expected a stream header")
        features = await self._next()
        if features.tag != "features":
            raise RuntimeError(f"expected stream features, got {features!r}")
        return features

    async def _next(self) -> Element:
        assert self.reader is not None
        while not self.xml.elements:
            if self.xml.closed:
                raise StreamClosed("server closed the stream")
            data = await self.reader.read(65536)
            if not data:
                raise StreamClosed("connection closed by server")
            self.xml.feed(data)
        element = self.xml.elements.popleft()
        if element.tag == "error" and element.ns == "http://etherx.jabber.org/streams":
            reason = element.children[0].tag if element.children else "?"
            raise StreamClosed(f"stream error: {reason}")
        return element

    def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)


def _status_codes(presence: Element) -> set[str]:
    codes: set[str] = set()
    for child in presence.children:
        if child.tag == "x" and child.ns == NS_MUC_USER:
            codes.update(s.attrs.get("code", "") for s in child.children if s.tag == "status")
    return codes


def _describe(element: Element) -> str:
    error = element.find("error")
    if error is None:
        return repr(element)
    return " ".join(c.tag for c in error.children) or repr(error)


# -------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    label: str
    rooms: int
    occupants: int

    @property
    def users(self) -> int:
        return self.rooms * self.occupants


def parse_scenario(text: str) -> Scenario:
    rooms, _, occupants = text.lower().rpartition("x")
    try:
        scenario = Scenario(text, int(rooms) if rooms else 1, int(occupants))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or RxN, got {text!r}") from None
    if scenario.rooms < 1 or scenario.occupants < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 room of 2 occupants")
    return scenario


@dataclass
class Options:
    senders: int
    window: int
    warmup: float
    duration: float
    login_concurrency: int
    join_concurrency: int
    step_timeout: float
    body_bytes: int
    sample_path: str | None = None
    py_spy: str | None = None


async def wait_server_idle(pid: int, limit: float, threshold: float = 0.05) -> float:
    """Wait until the server uses under ``threshold`` of a core over 0.5 s (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = process_cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if process_cpu_seconds(pid) - before < threshold * 0.5:
            break
    return round(time.monotonic() - started, 2)


async def gather_bounded(
    items: Sequence[Occupant],
    action: Callable[[Occupant], Awaitable[Any]],
    concurrency: int,
    timeout: float,
    retried: list[str] | None = None,
) -> list[str]:
    """Run ``action`` on every occupant, ``concurrency`` at a time; the failures.

    With ``retried`` (a list the first failures go to), a failed action is tried once
    more (for logins: a fresh connection)."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(occupant: Occupant) -> None:
        async with gate:
            for attempt in (1, 2):
                try:
                    await asyncio.wait_for(action(occupant), timeout)
                    return
                except (TimeoutError, OSError, RuntimeError, StreamClosed, ssl.SSLError) as exc:
                    failure = f"u{occupant.index}: {type(exc).__name__}: {exc}"
                    if retried is None or attempt == 2:
                        failures.append(failure)
                        return
                    retried.append(failure)
                    await occupant.close()

    await asyncio.gather(*(one(o) for o in items))
    return failures


async def run_scenario(server: Server, scenario: Scenario, options: Options) -> dict[str, Any]:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE  # throw-away self-signed certificates
    rooms = [
        Room(
            f"room{r}",
            scenario.occupants,
            min(options.senders, scenario.occupants),
            min(options.senders, scenario.occupants) * options.window,
        )
        for r in range(scenario.rooms)
    ]
    register = getattr(server, "register_in_band", False)
    occupants = [
        Occupant(r * scenario.occupants + i, server.port, tls, room, register)
        for r, room in enumerate(rooms)
        for i in range(scenario.occupants)
    ]
    result: dict[str, Any] = {"rss_idle_kib": process_rss_kib(server.pid)}
    try:
        started = time.monotonic()
        retried: list[str] = []
        failures = await gather_bounded(
            occupants, Occupant.login, options.login_concurrency, options.step_timeout, retried
        )
        result["login_s"] = round(time.monotonic() - started, 2)
        result["logins_retried"] = len(retried)
        if retried:
            log.warning("%s: %d logins failed once (retried), first: %s", server.name,
                        len(retried), retried[0])  # fmt: skip
        if failures:
            raise RuntimeError(f"{len(failures)} logins failed, first: {failures[0]}")
        log.info(
            "%s %s: %d logged in in %.1fs",
            server.name,
            scenario.label,
            len(occupants),
            result["login_s"],
        )

        started = time.monotonic()
        join_cpu = (process_cpu_seconds(server.pid), self_cpu_seconds())
        first = [occupants[r * scenario.occupants] for r in range(scenario.rooms)]
        for occupant in first:  # the room's creator (owner) first, alone
            created = await asyncio.wait_for(occupant.join(), options.step_timeout)
            if created:
                await asyncio.wait_for(occupant.configure_instant_room(), options.step_timeout)
            occupant.start_counting()
        rest = [o for o in occupants if o.counter is None]

        async def join_and_count(occupant: Occupant) -> None:
            await occupant.join()
            occupant.start_counting()

        failures = await gather_bounded(
            rest, join_and_count, options.join_concurrency, options.step_timeout
        )
        if failures:
            raise RuntimeError(f"{len(failures)} joins failed, first: {failures[0]}")
        result["join_s"] = round(time.monotonic() - started, 2)
        result["join_settle_s"] = await wait_server_idle(server.pid, options.step_timeout)
        result["join_server_cpu_s"] = round(process_cpu_seconds(server.pid) - join_cpu[0], 2)
        result["join_client_cpu_s"] = round(self_cpu_seconds() - join_cpu[1], 2)
        log.info(
            "%s %s: %d joined in %.1fs (+%.1fs until the server was idle)",
            server.name,
            scenario.label,
            len(occupants),
            result["join_s"],
            result["join_settle_s"],
        )
        result["rss_joined_kib"] = process_rss_kib(server.pid)
        result.update(await flood(server, rooms, occupants, options))
        result["rss_end_kib"] = process_rss_kib(server.pid)
    finally:
        await asyncio.gather(*(o.close() for o in occupants))
    return result


async def flood(
    server: Server, rooms: list[Room], occupants: list[Occupant], options: Options
) -> dict[str, Any]:
    """Groupchat at saturation: warm-up, then the measured window, then a drain."""
    running = True
    filler = "x" * max(0, options.body_bytes - 20)

    async def feed(room: Room, senders: list[Occupant]) -> None:
        """Keep ``room.window`` messages in flight, round-robin over the senders."""
        stanza_head = f"<message to='{room.jid}' type='groupchat' id='".encode()
        turn = 0
        while running:
            while room.in_flight() >= room.window:
                room.wake.clear()
                await room.wake.wait()
                if not running:
                    return
            sender = senders[turn % len(senders)]
            turn += 1
            seq = room.sent
            sender.send(
                stanza_head + f"m{seq}'><body>bench {seq} {filler}</body></message>".encode()
            )
            room.sent += 1
            if sender.write_buffer_size() > 256 * 1024:
                await asyncio.sleep(0.001)
            elif turn % 16 == 0:
                await asyncio.sleep(0)

    by_room: dict[str, list[Occupant]] = {}
    for occupant in occupants:
        by_room.setdefault(occupant.room.name, []).append(occupant)
    for room in rooms:
        room.sent = room.delivered = 0
    watched = occupants[-1].counter
    if options.sample_path and watched is not None:
        watched.sample = b""
    tasks = [asyncio.create_task(feed(room, by_room[room.name][: room.senders])) for room in rooms]

    def snapshot() -> dict[str, float]:
        return {
            "t": time.monotonic(),
            "delivered": sum(r.delivered for r in rooms),
            "bytes": sum(r.received_bytes for r in rooms),
            "sent": sum(r.sent for r in rooms),
            "server_cpu": process_cpu_seconds(server.pid),
            "client_cpu": self_cpu_seconds(),
        }

    profiler: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(options.warmup)
        if options.py_spy and server.name == "dovecote":
            # Profile the measured window (collapsed stacks, for flame graphs and sums).
            profiler = await asyncio.create_subprocess_exec(
                options.py_spy, "record", "--nonblocking", "--format", "raw",
                "--rate", "200", "--duration", str(int(options.duration)),
                "--pid", str(server.pid),
                "--output", f"/tmp/py-spy-{server.name}-{len(rooms)}x{rooms[0].occupants}.txt",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        machine_before = machine_cpu_times()
        before = snapshot()
        await asyncio.sleep(options.duration)
        after = snapshot()
        machine = machine_busy_pct(machine_before, machine_cpu_times())
        if profiler is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(profiler.wait(), 30)
    finally:
        if profiler is not None and profiler.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                profiler.kill()
        running = False
        for room in rooms:
            room.wake.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Drain: every message sent reaches every occupant (nothing lost, within bounds).
    expected = sum(r.sent * r.occupants for r in rooms)
    deadline = time.monotonic() + 15
    while sum(r.delivered for r in rooms) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    missing = expected - sum(r.delivered for r in rooms)
    if options.sample_path and watched is not None and watched.sample is not None:
        header = f"\n\n==== {server.name}: what u{occupants[-1].index} read\n".encode()
        await asyncio.to_thread(_append, Path(options.sample_path), header + watched.sample)
    wall = after["t"] - before["t"]
    deliveries = after["delivered"] - before["delivered"]
    messages = after["sent"] - before["sent"]
    server_cpu = after["server_cpu"] - before["server_cpu"]
    client_cpu = after["client_cpu"] - before["client_cpu"]
    disconnected = sum(1 for o in occupants if o.counter is None or o.counter.closed)
    return {
        "window_s": round(wall, 2),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / wall) if wall > 0 else None,
        "messages_per_s": round(messages / wall) if wall > 0 else None,
        "bytes_per_delivery": (
            round((after["bytes"] - before["bytes"]) / deliveries) if deliveries else None
        ),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_delivery": (
            round(server_cpu * 1e6 / deliveries, 1) if deliveries else None
        ),
        "server_cpu_pct": round(100 * server_cpu / wall, 1) if wall > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / wall, 1) if wall > 0 else None,
        "machine_busy_pct": machine,
        "missing_after_drain": missing,
        "disconnected": disconnected,
    }


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


# ------------------------------------------------------------------------ runs


def make_server(name: str, workdir: Path, args: argparse.Namespace, users: int) -> Server:
    core = None if args.no_pin else SERVER_CORE
    if name == "ejabberd":
        return MucEjabberd(workdir, core, args.history, users)
    if name == "prosody":
        binary = args.prosody_bin or ensure_prosody_installed()
        binary = str(Path(binary).resolve()) if os.sep in binary else binary
        return MucProsody(workdir, binary, core, args.history, args.prosody_tuned)
    if args.dovecote_src:
        binary = dovecote_from_source(workdir, Path(args.dovecote_src))
    else:
        found = find_dovecote_binary(args.dovecote_bin)
        if found is None:
            raise ServerError("no `dovecote` executable (pip install -e ., or --dovecote-src)")
        binary = str(Path(found).resolve()) if os.sep in found else found
    return MucDovecote(workdir, binary, core, args.history, users)


def run_server(
    name: str, scenarios: list[Scenario], args: argparse.Namespace, options: Options
) -> dict[str, Any]:
    """Accounts once, then one fresh server process per scenario."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-muc-{name}-"))
    users = max(s.users for s in scenarios)
    out: dict[str, Any] = {"scenarios": {}}
    try:
        server = make_server(name, workdir, args, users)
        started = time.monotonic()
        server.prepare(users)
        out["accounts"] = users
        out["accounts_s"] = round(time.monotonic() - started, 2)
        out["server"] = server.version()
        for scenario in scenarios:
            background = wait_for_quiet_machine(args.wait_quiet)
            entry: dict[str, Any] = {"background_busy_pct": background}
            log.info(
                "%s %s: %d room(s) x %d occupants",
                name,
                scenario.label,
                scenario.rooms,
                scenario.occupants,
            )
            try:
                server.start()
                if args.no_pin is False:
                    entry["server_affinity"] = sorted(os.sched_getaffinity(server.pid))
                entry.update(
                    asyncio.run(
                        asyncio.wait_for(run_scenario(server, scenario, options), args.timeout)
                    )
                )
                if not server.alive():
                    entry["error"] = "server died:\n" + server.tail_logs(15)
                log.info("%s %s: %s", name, scenario.label, _short(entry))
            except (
                ServerError,
                OSError,
                RuntimeError,
                TimeoutError,
                subprocess.SubprocessError,
            ) as exc:
                log.error("%s %s: %s", name, scenario.label, exc)
                entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["server_log_tail"] = server.tail_logs(15)
            finally:
                server.stop()
            out["scenarios"][scenario.label] = entry
    except (ServerError, OSError, subprocess.SubprocessError) as exc:
        log.error("%s: %s", name, exc)
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep_tmp:
            log.info("%s: kept %s", name, workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def _short(entry: dict[str, Any]) -> str:
    return (
        f"{entry.get('deliveries_per_s')} deliveries/s, {entry.get('messages_per_s')} msg/s, "
        f"{entry.get('server_cpu_us_per_delivery')} µs server CPU/delivery "
        f"(server {entry.get('server_cpu_pct')}%, client {entry.get('client_cpu_pct')}% "
        f"of a core), RSS {entry.get('rss_end_kib', 0) / 1024:.0f} MB, "
        f"missing {entry.get('missing_after_drain')}"
    )


ROWS = [
    ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
    ("messages/s", "messages_per_s", "{:,.0f}"),
    ("server CPU µs/delivery", "server_cpu_us_per_delivery", "{:.1f}"),
    ("bytes per delivery", "bytes_per_delivery", "{:.0f}"),
    ("server CPU % of its core", "server_cpu_pct", "{:.0f}"),
    ("client CPU % of its core", "client_cpu_pct", "{:.0f}"),
    ("server RSS joined (MB)", "rss_joined_kib", "{:.1f}", 1 / 1024),
    ("server RSS end (MB)", "rss_end_kib", "{:.1f}", 1 / 1024),
    ("join: wall (s)", "join_s", "{:.1f}"),
    ("join: server CPU (s)", "join_server_cpu_s", "{:.1f}"),
    ("missing after drain", "missing_after_drain", "{:d}"),
    ("machine busy % (both cores)", "machine_busy_pct", "{:.0f}"),
]


def table(report: dict[str, Any], servers: list[str], scenarios: list[Scenario]) -> str:
    """A Markdown table: one row per number, one column per scenario x server."""
    columns = [(s.label, name) for s in scenarios for name in servers]
    header = "| | " + " | ".join(f"{label} {name}" for label, name in columns) + " |"
    lines = [header, "| --- |" + " ---: |" * len(columns)]
    for row in ROWS:
        title, key, fmt = row[0], row[1], row[2]
        scale = row[3] if len(row) > 3 else None
        cells = []
        for label, name in columns:
            entry = report["results"].get(name, {}).get("scenarios", {}).get(label, {})
            value = entry.get(key)
            if value is None:
                cells.append("error" if "error" in entry else "")
                continue
            if scale is not None:
                value = value * scale
            cells.append(fmt.format(value))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="XEP-0045 groupchat benchmark, Dovecote and Prosody side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--servers", default="dovecote,prosody", help="comma-separated: dovecote, prosody, ejabberd"
    )
    parser.add_argument(
        "--scenarios",
        default="100,1000,10x100",
        help="comma-separated: N (one room of N) or RxN (R rooms of N)",
    )
    parser.add_argument("--senders", type=int, default=10, help="senders per room")
    parser.add_argument(
        "--window",
        type=int,
        default=4,
        help="messages in flight per sender (room window = senders x this)",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--body-bytes", type=int, default=64, help="size of a message body")
    parser.add_argument(
        "--history", type=int, default=0, help="room history length on both servers"
    )
    parser.add_argument("--login-concurrency", type=int, default=50)
    parser.add_argument("--join-concurrency", type=int, default=50)
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=120.0,
        help="limit of each login, join and settling step, s",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="limit per scenario, s")
    parser.add_argument("--prosody-bin", help="prosody executable; from PATH when not given")
    parser.add_argument(
        "--prosody-tuned",
        action="store_true",
        help="Prosody with generational GC and Nagle off (see README)",
    )
    parser.add_argument("--dovecote-bin", help="dovecote executable (default .venv or PATH)")
    parser.add_argument("--dovecote-src", help="run Dovecote from this src/ directory")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server to core 1 and the loadgen to core 0",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="before each scenario, wait up to this long for <15%% busy",
    )
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--sample", help="append the first 4 KiB one occupant reads to this file")
    parser.add_argument(
        "--py-spy", metavar="PY_SPY",
        help="profile Dovecote's measured window with this py-spy executable (raw stacks "
        "written next to the temp dir, /tmp/py-spy-dovecote-N.txt)",
    )  # fmt: skip
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in args.server_list:
        if name not in ("dovecote", "prosody", "ejabberd"):
            parser.error(f"unknown server {name!r}")
    try:
        args.scenario_list = [parse_scenario(s.strip()) for s in args.scenarios.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
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
    scenarios: list[Scenario] = args.scenario_list
    options = Options(
        senders=args.senders,
        window=args.window,
        warmup=args.warmup,
        duration=args.duration,
        login_concurrency=args.login_concurrency,
        join_concurrency=args.join_concurrency,
        step_timeout=args.step_timeout,
        body_bytes=args.body_bytes,
        sample_path=args.sample,
        py_spy=args.py_spy,
    )
    watchdog_after = len(args.server_list) * (len(scenarios) * (args.timeout + 60) + 300)

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
            report["results"][name] = run_server(name, scenarios, args, options)
    finally:
        kill_live_processes()
        timer.cancel()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name, result in report["results"].items():
        print(f"{name}: {result.get('server', '?')}")
    print(table(report, args.server_list, scenarios))
    for name, result in report["results"].items():
        errors = [("", result["error"])] if "error" in result else []
        errors += [(f" {label}", e["error"]) for label, e in result.get("scenarios", {}).items()
                   if "error" in e]  # fmt: skip
        for where, error in errors:
            print(f"{name}{where}: {error.splitlines()[0] if error else error}")
    failed = any(
        "error" in r or any("error" in e for e in r.get("scenarios", {}).values())
        for r in report["results"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
