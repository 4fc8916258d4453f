#!/usr/bin/env python3
"""Dovecote load generator: many XMPP clients against Dovecote and/or Prosody.

The tool starts the server(s) itself in a temporary directory on free loopback
ports, creates the accounts, logs N clients in (STARTTLS on the c2s port, SASL
SCRAM-SHA-1, resource binding, initial presence), keeps them all connected and
then sends chat messages between random pairs of them in two bounded phases:

* ``paced``: an open-loop stream at ``--rate`` messages/s (latency at a load the
  server can carry);
* ``flood``: a closed loop with at most ``--window`` messages in flight (the most
  the server delivers per second).

It prints one JSON document on stdout: one object per target and, when both
targets ran, the ratio dovecote/prosody of the headline numbers. Progress goes to
stderr. See bench/README.md for what each number means.

This is a benchmark, never a test: nothing here asserts, and every step has a
hard time limit so a run always stops by itself. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from scramp import ScramClient, ScramMechanism

log = logging.getLogger("loadgen")

DOMAIN = "bench.local"
HOST = "127.0.0.1"
SCRAM_ITERATIONS = 10000  # Prosody's default_iteration_count
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"

STREAM_HEADER = (
    "<?xml version='1.0'?>"
    f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}'"
    f" to='{DOMAIN}' version='1.0'>"
).encode()


# --------------------------------------------------------------------------- XML


class Element:
    """A parsed element: just enough of a tree for stream negotiation."""

    __slots__ = ("attrs", "children", "ns", "tag", "text")

    def __init__(self, ns: str, tag: str, attrs: dict[str, str]) -> None:
        self.ns = ns
        self.tag = tag
        self.attrs = attrs
        self.children: list[Element] = []
        self.text = ""

    def find(self, tag: str, ns: str | None = None) -> Element | None:
        for child in self.children:
            if child.tag == tag and (ns is None or child.ns == ns):
                return child
        return None

    def __repr__(self) -> str:
        return f"<{self.tag} xmlns={self.ns!r} {self.attrs} children={len(self.children)}>"


class StreamClosed(Exception):
    """The server ended the stream (</stream:stream>, stream error or EOF)."""


class XmlStreamReader:
    """Incremental reader of one XML stream (RFC 6120 §4): expat underneath.

    ``feed`` appends to ``elements`` the stream header (as an Element whose tag is
    ``stream``) and then every complete top-level stanza. A stream restart
    (after STARTTLS and after SASL) takes a fresh reader.
    """

    def __init__(self) -> None:
        self.elements: deque[Element] = deque()
        self.closed = False
        self._stack: list[Element] = []
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self._parser = parser

    def feed(self, data: bytes) -> None:
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            raise StreamClosed(f"malformed XML from server: {exc}") from exc

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        ns, _, tag = name.rpartition(" ")
        element = Element(ns, tag, attrs)
        stack = self._stack
        if not stack:
            # The stream header: reported at once, never closed until the end.
            self.elements.append(element)
        elif len(stack) >= 2:
            stack[-1].children.append(element)
        stack.append(element)

    def _end(self, name: str) -> None:
        element = self._stack.pop()
        depth = len(self._stack)
        if depth == 1:
            self.elements.append(element)
        elif depth == 0:
            self.closed = True

    def _text(self, data: str) -> None:
        if len(self._stack) >= 2:
            self._stack[-1].text += data


# ------------------------------------------------------------------ measurements


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def latency_summary_ms(latencies_ns: list[int]) -> dict[str, float | None]:
    values = sorted(latencies_ns)

    def ms(fraction: float) -> float | None:
        value = percentile(values, fraction)
        return None if value is None else round(value / 1e6, 3)

    return {"p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "max": ms(1.0)}


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name may contain spaces; fields resume after the last ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def process_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [float(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Share of all cores busy between two machine_cpu_times() samples (100 = all)."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else None


def wait_for_quiet_machine(max_wait: float, threshold: float = 15.0) -> float | None:
    """Sample 1 s windows until the machine is under ``threshold`` % busy.

    Returns the last sample. Gives up after ``max_wait`` seconds (the run then
    goes on, and the sample says how loaded the machine was).
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_cpu_times()
        time.sleep(1.0)
        busy = machine_busy_pct(before, machine_cpu_times())
        if busy is None or busy < threshold or time.monotonic() >= deadline:
            return busy
        log.info("machine %.0f%% busy with other work: waiting for it to calm down", busy)


class CpuMeter:
    """CPU used by the server, by this client and by the whole machine over a window.

    ``other_busy_pct`` is the share of all cores that neither of us used: other
    processes on the machine (and kernel work not charged to a process). When it
    is more than a few percent, the numbers of that window are not clean.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.server_start = process_cpu_seconds(server_pid)
        self.client_start = self_cpu_seconds()
        self.machine_start = machine_cpu_times()
        self.wall_start = time.monotonic()

    def stop(self) -> dict[str, float | None]:
        server = process_cpu_seconds(self.server_pid) - self.server_start
        client = self_cpu_seconds() - self.client_start
        machine_end = machine_cpu_times()
        wall = time.monotonic() - self.wall_start
        machine = machine_busy_pct(self.machine_start, machine_end)
        ours = 100 * (server + client) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
        return {
            "server_cpu_s": round(server, 3),
            "client_cpu_s": round(client, 3),
            "window_s": round(wall, 3),
            "machine_busy_pct": machine,
            "other_busy_pct": None if machine is None else round(max(0.0, machine - ours), 1),
        }


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def username(index: int) -> str:
    return f"u{index}"


def password(index: int) -> str:
    return f"pw-{index}-bench"


# ----------------------------------------------------------------------- servers


class ServerError(RuntimeError):
    pass


class Server:
    """A server under test: started in its own temporary directory, stopped by us."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self.setup_info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def version(self) -> str:
        return "unknown"

    def prepare(self, user_count: int) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        with open(self.workdir / f"{self.name}.stdout", "wb") as output:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not it
            )
        _LIVE_PROCESSES.add(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.tail_logs()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise ServerError(f"{self.name} did not listen on {HOST}:{self.port}:\n{self.tail_logs()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM within %.0fs: killing it", self.name, timeout)
            proc.kill()
            proc.wait(5)
        _LIVE_PROCESSES.discard(proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail_logs(self, lines: int = 30) -> str:
        text = []
        for path in (self.log_path, self.workdir / f"{self.name}.stdout"):
            if path.exists():
                content = path.read_text(errors="replace").splitlines()[-lines:]
                text.append(f"--- {path.name}\n" + "\n".join(content))
        return "\n".join(text)


_LIVE_PROCESSES: set[subprocess.Popen[bytes]] = set()


def kill_live_processes() -> None:
    for proc in list(_LIVE_PROCESSES):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()


def make_self_signed_cert(directory: Path, domain: str) -> tuple[Path, Path]:
    """A throw-away RSA certificate for ``domain`` (the clients never verify it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 3600, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 30 * 86400, dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{domain}.crt", directory / f"{domain}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def ensure_prosody_installed() -> str:
    found = shutil.which("prosody")
    if found:
        return found
    log.info("prosody is not installed: installing it with apt-get (needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "prosody"], check=True, env=env, timeout=600)
    found = shutil.which("prosody")
    if not found:
        raise ServerError("apt-get installed prosody but no `prosody` is on PATH")
    return found


# Prosody's own default modules_enabled (Debian's prosody.cfg.lua), less what a
# loopback c2s benchmark must not have: s2s (dialback), HTTP, invites, admin
# interfaces and "limits" (its 10 kB/s c2s rate limit would throttle the flood).
PROSODY_MODULES = [
    "disco", "roster", "saslauth", "tls", "blocklist", "bookmarks", "carbons", "pep",
    "private", "smacks", "vcard4", "vcard_legacy", "csi_simple", "ping", "time",
    "uptime", "version", "posix",
]  # fmt: skip


def lua_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string literal is a valid Lua string literal


class ProsodyServer(Server):
    name = "prosody"

    def __init__(
        self, workdir: Path, binary: str, tuned: bool = False, archive: bool = False
    ) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.tuned = tuned
        self.archive = archive
        self.config_path = workdir / "prosody.cfg.lua"
        self.data_path = workdir / "data"

    def version(self) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["prosodyctl", "--config", str(self.config_path), "about"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                if line.startswith("Prosody "):
                    return line.strip()
        return "prosody (unknown version)"

    def prepare(self, user_count: int) -> None:
        self.data_path.mkdir(mode=0o750)
        cert, key = make_self_signed_cert(self.workdir, DOMAIN)
        names = [*PROSODY_MODULES, "mam"] if self.archive else PROSODY_MODULES
        modules = "\n".join(f"\t{lua_string(m)};" for m in names)
        ssl_files = f"{{ certificate = {lua_string(cert)}, key = {lua_string(key)} }}"
        self.config_path.write_text(
            f"""-- generated by bench/loadgen.py
run_as_root = true -- the bench machine runs as root; Prosody 0.12 refuses root otherwise
pidfile = {lua_string(self.workdir / "prosody.pid")}
data_path = {lua_string(self.data_path)}
plugin_paths = {{}}
interfaces = {{ "{HOST}" }}
local_interfaces = {{ "{HOST}" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
s2s_direct_tls_ports = {{}}
component_ports = {{}}
http_ports = {{}}
https_ports = {{}}
c2s_require_encryption = true
allow_registration = false
authentication = "internal_hashed"
storage = "internal"
log = {{ {{ levels = {{ min = "warn" }}, to = "file", filename = {lua_string(self.log_path)} }} }}
certificates = {lua_string(self.workdir)}
ssl = {ssl_files}
modules_enabled = {{
{modules}
}}
modules_disabled = {{ "s2s" }}
{self.tuning(user_count)}
VirtualHost "{DOMAIN}"
\tssl = {ssl_files}
"""
        )
        started = time.monotonic()
        self._write_accounts(user_count)
        self.setup_info = {
            "users_created": user_count,
            "users_seconds": round(time.monotonic() - started, 3),
            "users_method": "internal_hashed account files written directly (SCRAM-SHA-1, "
            f"{SCRAM_ITERATIONS} iterations, per-user salt)",
        }

    def tuning(self, user_count: int) -> str:
        """Global options of the ``--prosody-tuned`` profile (none for stock Prosody).

        Stock Prosody 0.12 trades CPU and latency for memory in three ways that
        dominate this benchmark: mod_blocklist caches only 64 blocklists (with
        hundreds of users online nearly every message reads the missing blocklist
        and privacy files from disk), the Lua GC runs incremental with threshold
        105 (a collection cycle whenever the heap grows 5 %), and Nagle stays on
        (deliveries wait for delayed ACKs, up to ~40 ms on loopback).
        """
        if not self.tuned:
            return ""
        return (
            f"blocklist_cache_size = {max(64, user_count)}\n"
            'gc = { mode = "generational" }\n'
            "network_settings = { nagle = false }\n"
        )

    def _write_accounts(self, user_count: int) -> None:
        """Write Prosody's internal_hashed account files (util.datamanager format).

        Each file is ``<data_path>/<host %-encoded>/accounts/<user>.dat`` holding a
        Lua table with the SCRAM-SHA-1 salt, iteration count and hex keys, exactly
        what mod_auth_internal_hashed's create_user stores. Far faster than one
        ``prosodyctl register`` process per user; PBKDF2 runs in threads
        (hashlib releases the GIL).
        """
        host_dir = self.data_path / DOMAIN.replace(".", "%2e") / "accounts"
        host_dir.mkdir(parents=True)
        mechanism = ScramMechanism("SCRAM-SHA-1")

        def write_one(index: int) -> None:
            salt = str(uuid.uuid4())
            _, stored_key, server_key, iterations = mechanism.make_auth_info(
                password(index), iteration_count=SCRAM_ITERATIONS, salt=salt.encode()
            )
            (host_dir / f"{username(index)}.dat").write_text(
                "return {\n"
                f'\t["iteration_count"] = {iterations};\n'
                f'\t["salt"] = "{salt}";\n'
                f'\t["server_key"] = "{server_key.hex()}";\n'
                f'\t["stored_key"] = "{stored_key.hex()}";\n'
                "};\n"
            )

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(write_one, range(user_count)))

    def command(self) -> list[str]:
        return [self.binary, "-F", "--config", str(self.config_path)]  # -F: foreground


def find_dovecote_binary(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    venv_binary = REPO_ROOT / ".venv" / "bin" / "dovecote"
    if venv_binary.exists():
        return str(venv_binary)
    return shutil.which("dovecote")


class DovecoteServer(Server):
    name = "dovecote"

    def __init__(self, workdir: Path, binary: str, archive: bool = False) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.archive = archive
        self.tls_port = free_port()
        self.config_path = workdir / "dovecote.toml"
        self.data_path = workdir / "data"

    def version(self) -> str:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            return f"Dovecote {version('dovecote')}"
        return "Dovecote (unknown version)"

    def check_cli(self) -> None:
        """Fail early, with a clear message, while `dovecote serve` does not exist yet."""
        for sub in (["serve"], ["user", "import"]):
            try:
                done = subprocess.run(
                    [self.binary, *sub, "--help"], capture_output=True, text=True, timeout=60
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ServerError(f"cannot run {self.binary}: {exc}") from exc
            if done.returncode != 0:
                raise ServerError(
                    f"`dovecote {' '.join(sub)}` is not available yet "
                    f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}"
                )

    def prepare(self, user_count: int) -> None:
        self.check_cli()
        self.data_path.mkdir(mode=0o750)
        cert, key = make_self_signed_cert(self.workdir, DOMAIN)
        # Same certificate type, SCRAM iteration count and log level as the Prosody
        # target, so that both do the same work per login; message archiving
        # (XEP-0313) on or off on both, like Prosody's mod_mam.
        modules = "" if self.archive else '\n[modules]\ndisabled = ["mam"]\n'
        # Every client comes from 127.0.0.1: lift the per-address connection cap of
        # versions that have one (Prosody has none by default).
        limits = "\n[limits]\nmax_connections_per_ip = 0\n"
        probe = self.workdir / "probe.toml"
        probe.write_text(f'[server]\ndata_dir = "{self.data_path}"\n{limits}')
        checked = subprocess.run(
            [self.binary, "check-config", "--config", str(probe)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if checked.returncode != 0:
            limits = ""  # an older version: no cap to lift
        self.config_path.write_text(
            f"""# generated by bench/loadgen.py
[server]
domains = ["{DOMAIN}"]
data_dir = "{self.data_path}"

[listen]
c2s = "{HOST}:{self.port}"
c2s_tls = "{HOST}:{self.tls_port}"
s2s = ""
http = ""

[tls]
cert = "{cert}"
key = "{key}"

[auth]
scram_iterations = {SCRAM_ITERATIONS}

[logging]
level = "warning"
{limits}{modules}"""
        )
        csv_path = self.workdir / "users.csv"
        csv_path.write_text(
            "".join(f"{username(i)}@{DOMAIN},{password(i)}\n" for i in range(user_count))
        )
        started = time.monotonic()
        done = subprocess.run(
            [self.binary, "user", "import", str(csv_path), "--config", str(self.config_path)],
            cwd=self.workdir, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            raise ServerError(
                f"`dovecote user import` failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        self.setup_info = {
            "users_created": user_count,
            "users_seconds": round(time.monotonic() - started, 3),
            "users_method": "dovecote user import (CSV)",
        }

    def command(self) -> list[str]:
        return [self.binary, "serve", "--config", str(self.config_path)]


# ----------------------------------------------------------------------- clients


@dataclass
class PhaseState:
    """Bookkeeping of one message phase, shared by every client's reader."""

    name: str
    count: int
    delivered_flags: bytearray
    on_delivery: Callable[[], None] | None = None
    delivered: int = 0
    duplicates: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    last_delivery_ns: int = 0
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    sending_done: bool = False

    def record(self, seq: int, sent_ns: int, now_ns: int) -> None:
        if seq >= self.count:
            return
        if self.delivered_flags[seq]:
            self.duplicates += 1
            return
        self.delivered_flags[seq] = 1
        self.delivered += 1
        self.latencies_ns.append(now_ns - sent_ns)
        self.last_delivery_ns = now_ns
        if self.on_delivery is not None:
            self.on_delivery()
        if self.sending_done and self.delivered >= self.sent:
            self.all_delivered.set()


class Bench:
    """What the clients share: TLS context and the phase currently measured."""

    def __init__(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the servers use throw-away self-signed certs
        self.tls_context = context
        self.phases: dict[str, PhaseState] = {}
        self.disconnects = 0
        self.scram_iterations: int | None = None


class Client:
    """One XMPP client on raw asyncio streams (RFC 6120 negotiation, by hand)."""

    def __init__(self, bench: Bench, index: int, port: int) -> None:
        self.bench = bench
        self.index = index
        self.port = port
        self.jid = f"{username(index)}@{DOMAIN}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.xml = XmlStreamReader()
        self.pump_task: asyncio.Task[None] | None = None
        self.connected = False
        self.login_ns = 0

    # -- negotiation

    async def login(self) -> None:
        """Connect → STARTTLS → SCRAM-SHA-1 → bind → initial presence."""
        started = time.perf_counter_ns()
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        features = await self._open_stream()
        if features.find("starttls", NS_TLS) is None:
            raise RuntimeError("server offers no STARTTLS")
        self._send(f"<starttls xmlns='{NS_TLS}'/>".encode())
        answer = await self._next()
        if answer.tag != "proceed":
            raise RuntimeError(f"STARTTLS refused: {answer!r}")
        await self.writer.start_tls(self.bench.tls_context, server_hostname=DOMAIN)

        features = await self._open_stream()
        mechanisms = features.find("mechanisms", NS_SASL)
        offered = [m.text for m in mechanisms.children] if mechanisms is not None else []
        if "SCRAM-SHA-1" not in offered:
            raise RuntimeError(f"server offers no SCRAM-SHA-1 (offers {offered})")
        await self._authenticate()

        features = await self._open_stream()
        if features.find("bind", NS_BIND) is None:
            raise RuntimeError("server offers no resource binding")
        self._send(
            f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'>"
            "<resource>bench</resource></bind></iq>".encode()
        )
        answer = await self._next()
        if answer.tag != "iq" or answer.attrs.get("type") != "result":
            raise RuntimeError(f"bind failed: {answer!r}")
        session = features.find("session", NS_SESSION)
        if session is not None and session.find("optional") is None:
            # RFC 3921 session establishment, for servers that still require it.
            self._send(f"<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>".encode())
            answer = await self._next()
            if answer.attrs.get("type") != "result":
                raise RuntimeError(f"session failed: {answer!r}")
        self.login_ns = time.perf_counter_ns() - started
        self.connected = True
        self._send(b"<presence/>")
        self.pump_task = asyncio.create_task(self._pump())

    async def _authenticate(self) -> None:
        scram = ScramClient(["SCRAM-SHA-1"], username(self.index), password(self.index))
        first = base64.b64encode(scram.get_client_first().encode()).decode()
        self._send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>{first}</auth>".encode())
        challenge = await self._next()
        if challenge.tag != "challenge":
            raise RuntimeError(f"SASL: expected a challenge, got {challenge!r}")
        server_first = base64.b64decode(challenge.text).decode()
        # PBKDF2 runs in a thread (hashlib releases the GIL) so other clients go on.
        await asyncio.get_running_loop().run_in_executor(None, scram.set_server_first, server_first)
        if self.bench.scram_iterations is None:
            for part in server_first.split(","):
                if part.startswith("i="):
                    self.bench.scram_iterations = int(part[2:])
        final = base64.b64encode(scram.get_client_final().encode()).decode()
        self._send(f"<response xmlns='{NS_SASL}'>{final}</response>".encode())
        outcome = await self._next()
        if outcome.tag != "success":
            raise RuntimeError(f"SASL failed: {outcome!r}")
        if outcome.text:
            scram.set_server_final(base64.b64decode(outcome.text).decode())

    async def _open_stream(self) -> Element:
        """(Re)start the stream (RFC 6120 §4.3) and return the stream features."""
        self.xml = XmlStreamReader()
        self._send(STREAM_HEADER)
        header = await self._next()
        if header.tag != "stream":
            raise RuntimeError(f"expected a stream header, got {header!r}")
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
        if element.tag == "error" and element.ns == NS_STREAMS:
            reason = element.children[0].tag if element.children else "?"
            raise StreamClosed(f"stream error: {reason}")
        return element

    def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    # -- after login

    async def _pump(self) -> None:
        """Read stanzas until the stream ends; account for benchmark messages."""
        assert self.reader is not None
        phases = self.bench.phases
        xml = self.xml
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                xml.feed(data)
                now = time.perf_counter_ns()
                elements = xml.elements
                while elements:
                    element = elements.popleft()
                    if element.tag != "message":
                        continue
                    body = element.find("body")
                    if body is None or not body.text.startswith("bench "):
                        continue
                    _, phase_name, seq, sent_ns = body.text.split()
                    phase = phases.get(phase_name)
                    if phase is not None:
                        phase.record(int(seq), int(sent_ns), now)
                if xml.closed:
                    break
        except (OSError, StreamClosed, ssl.SSLError):
            pass
        finally:
            if self.connected:
                self.connected = False
                self.bench.disconnects += 1

    def send_message(self, to_index: int, phase: str, seq: int) -> None:
        assert self.writer is not None
        self.writer.write(
            f"<message to='{username(to_index)}@{DOMAIN}' type='chat' id='{phase}{seq}'>"
            f"<body>bench {phase} {seq} {time.perf_counter_ns()}</body></message>".encode()
        )

    def write_buffer_size(self) -> int:
        assert self.writer is not None
        return self.writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        writer = self.writer
        self.connected = False
        if writer is None:
            return
        with contextlib.suppress(Exception):
            if not writer.is_closing():
                writer.write(b"</stream:stream>")
            writer.close()
        if self.pump_task is not None:
            self.pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump_task


# -------------------------------------------------------------------- scenario


@dataclass
class Options:
    clients: int
    messages: int
    rate: float
    flood_messages: int
    window: int
    duration: float
    drain_timeout: float
    login_concurrency: int
    login_timeout: float
    settle: float
    seed: int


async def login_all(
    bench: Bench, server: Server, options: Options
) -> tuple[list[Client], dict[str, Any]]:
    clients = [Client(bench, i, server.port) for i in range(options.clients)]
    gate = asyncio.Semaphore(options.login_concurrency)
    failures: list[str] = []
    bound_at: list[float] = []

    async def one(client: Client) -> None:
        async with gate:
            try:
                await asyncio.wait_for(client.login(), options.login_timeout)
                bound_at.append(time.perf_counter())
            except (TimeoutError, OSError, RuntimeError, StreamClosed, ssl.SSLError) as exc:
                failures.append(f"{client.jid}: {type(exc).__name__}: {exc}")
                await client.close()

    meter = CpuMeter(server.pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(c) for c in clients))
    elapsed = (max(bound_at) if bound_at else time.perf_counter()) - started
    cpu = meter.stop()
    server_cpu, client_cpu = cpu["server_cpu_s"] or 0.0, cpu["client_cpu_s"] or 0.0
    ok = len(bound_at)
    for failure in failures[:5]:
        log.warning("login failed: %s", failure)
    logged_in = [c for c in clients if c.connected]
    login_ns = [c.login_ns for c in logged_in]
    return logged_in, {
        "ok": ok,
        "failed": len(failures),
        "seconds": round(elapsed, 3),
        "per_s": round(ok / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": latency_summary_ms(login_ns),
        "server_cpu_us_per_login": round(server_cpu * 1e6 / ok) if ok else None,
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if elapsed > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1) if elapsed > 0 else None,
        "machine_busy_pct": cpu["machine_busy_pct"],
        "other_busy_pct": cpu["other_busy_pct"],
        "concurrency": options.login_concurrency,
        "scram_iterations": bench.scram_iterations,
        "first_errors": failures[:5],
    }


async def message_phase(
    bench: Bench,
    server: Server,
    clients: list[Client],
    options: Options,
    name: str,
    count: int,
    rate: float,
    window: int,
) -> dict[str, Any]:
    """Send ``count`` chat messages between random pairs; measure their delivery.

    ``rate`` > 0 paces the sends (open loop); ``window`` > 0 keeps at most that many
    undelivered messages in flight (closed loop). Both are bounded by
    ``options.duration`` for sending and ``options.drain_timeout`` for delivery.
    """
    rng = random.Random(options.seed + len(bench.phases))
    window_gate = asyncio.Semaphore(window) if window > 0 else None
    phase = PhaseState(
        name=name,
        count=count,
        delivered_flags=bytearray(count),
        on_delivery=window_gate.release if window_gate is not None else None,
    )
    bench.phases[name] = phase
    peers = len(clients)
    loop = asyncio.get_running_loop()

    meter = CpuMeter(server.pid)
    started_ns = time.perf_counter_ns()
    started = loop.time()
    send_deadline = started + options.duration
    for seq in range(count):
        now = loop.time()
        if now > send_deadline:
            log.warning("%s: --duration %.0fs reached after %d sends", name, options.duration, seq)
            break
        if rate > 0:
            due = started + seq / rate
            if due > now:
                await asyncio.sleep(due - now)
        if window_gate is not None:
            try:
                await asyncio.wait_for(window_gate.acquire(), max(0.0, send_deadline - now))
            except TimeoutError:
                log.warning("%s: window stayed full until the --duration deadline", name)
                break
        sender = rng.randrange(peers)
        receiver = rng.randrange(peers - 1)
        if receiver >= sender:
            receiver += 1
        client = clients[sender]
        if not client.connected:
            if window_gate is not None:
                window_gate.release()
            continue
        client.send_message(clients[receiver].index, name, seq)
        phase.sent += 1
        if client.write_buffer_size() > 256 * 1024:
            await client.writer.drain()  # type: ignore[union-attr]
        elif seq % 64 == 63:
            await asyncio.sleep(0)  # let the readers run
    sent_seconds = loop.time() - started
    phase.sending_done = True
    if phase.delivered >= phase.sent:
        phase.all_delivered.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(phase.all_delivered.wait(), options.drain_timeout)
    cpu = meter.stop()
    server_cpu, client_cpu = cpu["server_cpu_s"] or 0.0, cpu["client_cpu_s"] or 0.0
    elapsed = ((phase.last_delivery_ns or time.perf_counter_ns()) - started_ns) / 1e9
    delivered = phase.delivered
    return {
        "mode": f"paced at {rate:g}/s" if rate > 0 else f"closed loop, window {window}",
        "sent": phase.sent,
        "delivered": delivered,
        "lost": phase.sent - delivered,
        "duplicates": phase.duplicates,
        "send_seconds": round(sent_seconds, 3),
        "seconds": round(elapsed, 3),
        "delivered_per_s": round(delivered / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": latency_summary_ms(phase.latencies_ns),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_msg": round(server_cpu * 1e6 / delivered, 1) if delivered else None,
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if elapsed > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1) if elapsed > 0 else None,
        "machine_busy_pct": cpu["machine_busy_pct"],
        "other_busy_pct": cpu["other_busy_pct"],
    }


async def run_scenario(server: Server, options: Options) -> dict[str, Any]:
    bench = Bench()
    await asyncio.sleep(options.settle)
    rss_idle = process_rss_kib(server.pid)
    log.info("%s: logging in %d clients", server.name, options.clients)
    clients, logins = await login_all(bench, server, options)
    log.info(
        "%s: %d/%d logged in, %.1f logins/s, %s µs server CPU/login; others %s%% of the machine",
        server.name, logins["ok"], options.clients, logins["per_s"] or 0,
        logins["server_cpu_us_per_login"], logins["other_busy_pct"],
    )  # fmt: skip
    result: dict[str, Any] = {"logins": logins}
    try:
        await asyncio.sleep(options.settle)
        rss_connected = process_rss_kib(server.pid)
        connected = len(clients)
        result["memory"] = {
            "rss_idle_kib": rss_idle,
            "rss_connected_kib": rss_connected,
            "connections": connected,
            "rss_per_connection_kib": (
                round((rss_connected - rss_idle) / connected, 2) if connected else None
            ),
        }
        if connected < 2:
            result["error"] = "fewer than two clients logged in: no message phase"
            return result
        if options.messages > 0:
            log.info("%s: paced phase, %d messages at %g/s", server.name, options.messages,
                     options.rate)  # fmt: skip
            result["paced"] = await message_phase(
                bench, server, clients, options, "paced", options.messages, options.rate, 0
            )
            log.info("%s: paced: %s", server.name, _short(result["paced"]))
            await asyncio.sleep(options.settle)
        if options.flood_messages > 0:
            log.info("%s: flood phase, %d messages, window %d", server.name,
                     options.flood_messages, options.window)  # fmt: skip
            result["flood"] = await message_phase(
                bench, server, clients, options, "flood", options.flood_messages, 0,
                options.window,
            )  # fmt: skip
            log.info("%s: flood: %s", server.name, _short(result["flood"]))
        result["disconnects_during_run"] = bench.disconnects
        result["server_alive_at_end"] = server.alive()
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return result


def _short(phase: dict[str, Any]) -> str:
    lat = phase["latency_ms"]
    return (
        f"{phase['delivered']}/{phase['sent']} delivered, {phase['delivered_per_s']}/s, "
        f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, {phase['server_cpu_us_per_msg']} µs CPU/msg; "
        f"CPU server {phase['server_cpu_pct']}%, client {phase['client_cpu_pct']}%, "
        f"others {phase['other_busy_pct']}% of the machine"
    )


def run_target(target: str, options: Options, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{target}-"))
    server: Server | None = None
    # Other work on the machine skews every number: wait (bounded) for quiet.
    background = wait_for_quiet_machine(args.wait_quiet)
    if background is not None and background > 15:
        log.warning("%s: the machine is %.0f%% busy with other work: noisy numbers", target,
                    background)  # fmt: skip
    result: dict[str, Any] = {
        "target": target,
        "archiving": args.mam,
        "background_busy_pct": background,
    }
    try:
        if target == "prosody":
            binary = args.prosody_bin or ensure_prosody_installed()
            server = ProsodyServer(workdir, binary, tuned=args.prosody_tuned, archive=args.mam)
            result["profile"] = "tuned" if args.prosody_tuned else "stock"
        else:
            binary = find_dovecote_binary(args.dovecote_bin)
            if binary is None:
                raise ServerError("no `dovecote` executable (pip install -e . in the venv)")
            server = DovecoteServer(workdir, binary, archive=args.mam)
        log.info("%s: preparing %s with %d users", target, workdir, options.clients)
        server.prepare(options.clients)
        result["server"] = server.version()
        result["setup"] = server.setup_info
        server.start()
        log.info("%s: pid %d listening on %s:%d", target, server.pid, HOST, server.port)
        result.update(asyncio.run(asyncio.wait_for(run_scenario(server, options), args.timeout)))
        others = [
            section["other_busy_pct"]
            for section in (result.get(key) for key in ("logins", "paced", "flood"))
            if isinstance(section, dict) and section.get("other_busy_pct") is not None
        ]
        # Over ~10 % of the machine used by others: rerun when the machine is quiet.
        result["max_other_busy_pct"] = max(others, default=None)
        if not server.alive():
            result["error"] = "server died during the run:\n" + server.tail_logs()
    except (ServerError, OSError, subprocess.SubprocessError, TimeoutError) as exc:
        log.error("%s: %s", target, exc)
        result["error"] = f"{type(exc).__name__}: {exc}"
        if server is not None and server.proc is not None:
            result["server_log_tail"] = server.tail_logs(15)
    finally:
        if server is not None:
            server.stop()
        if args.keep_tmp:
            log.info("%s: kept %s", target, workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# Headline numbers compared as dovecote / prosody (lower is better for all but
# the rates).
HEADLINE = {
    "logins_per_s": ("logins", "per_s"),
    "server_cpu_us_per_login": ("logins", "server_cpu_us_per_login"),
    "rss_per_connection_kib": ("memory", "rss_per_connection_kib"),
    "paced_delivered_per_s": ("paced", "delivered_per_s"),
    "paced_latency_p50_ms": ("paced", "latency_ms", "p50"),
    "paced_latency_p99_ms": ("paced", "latency_ms", "p99"),
    "paced_server_cpu_us_per_msg": ("paced", "server_cpu_us_per_msg"),
    "flood_delivered_per_s": ("flood", "delivered_per_s"),
    "flood_latency_p50_ms": ("flood", "latency_ms", "p50"),
    "flood_latency_p99_ms": ("flood", "latency_ms", "p99"),
    "flood_server_cpu_us_per_msg": ("flood", "server_cpu_us_per_msg"),
}


def headline(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, int | float) else None


def ratios(dovecote: dict[str, Any], prosody: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, path in HEADLINE.items():
        ours, theirs = headline(dovecote, path), headline(prosody, path)
        out[name] = round(ours / theirs, 3) if ours is not None and theirs else None
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="XMPP c2s load generator: Dovecote and/or Prosody on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--target", choices=["dovecote", "prosody", "both"], default="both")
    parser.add_argument("--clients", type=int, default=500, help="clients kept connected")
    parser.add_argument(
        "--messages", type=int, default=10000, help="messages in the paced phase (0: skip it)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase, messages/s")
    parser.add_argument(
        "--flood-messages", type=int, default=20000,
        help="messages in the closed-loop phase (0: skip it)",
    )  # fmt: skip
    parser.add_argument("--window", type=int, default=200, help="flood phase: max in flight")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="max seconds of sending per phase"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=15.0,
        help="max seconds to wait for deliveries after the last send",
    )  # fmt: skip
    parser.add_argument(
        "--login-concurrency", type=int, default=50, help="logins in progress at once"
    )
    parser.add_argument("--login-timeout", type=float, default=60.0, help="per login, s")
    parser.add_argument("--settle", type=float, default=1.0, help="pause between steps, s")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pairs")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="hard limit per target run (s)"
    )
    parser.add_argument("--prosody-bin", help="prosody executable; from PATH when not given")
    parser.add_argument(
        "--mam", action="store_true",
        help="archive every message (XEP-0313) on both servers; default: archiving off on both",
    )  # fmt: skip
    parser.add_argument(
        "--prosody-tuned", action="store_true",
        help="Prosody with blocklist_cache_size >= clients, generational GC and Nagle off",
    )  # fmt: skip
    parser.add_argument(
        "--dovecote-bin", help="dovecote executable; .venv/bin/dovecote or PATH when not given"
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=120.0,
        help="before each target, wait up to this many s for the machine to be <15%% busy",
    )  # fmt: skip
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp directories")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    nofile = raise_open_files_limit()
    if nofile < args.clients * 2 + 64:
        log.warning("open-files limit %d is low for %d clients", nofile, args.clients)
    options = Options(
        clients=args.clients,
        messages=args.messages,
        rate=args.rate,
        flood_messages=args.flood_messages,
        window=args.window,
        duration=args.duration,
        drain_timeout=args.drain_timeout,
        login_concurrency=args.login_concurrency,
        login_timeout=args.login_timeout,
        settle=args.settle,
        seed=args.seed,
    )
    targets = ["prosody", "dovecote"] if args.target == "both" else [args.target]

    # Last resort if the event loop wedges: kill the servers and leave.
    watchdog_after = len(targets) * (args.timeout + 120)

    def watchdog() -> None:
        log.error("watchdog: run exceeded %.0fs, killing servers and exiting", watchdog_after)
        kill_live_processes()
        os._exit(3)

    timer = threading.Timer(watchdog_after, watchdog)
    timer.daemon = True
    timer.start()

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "open_files_limit": nofile},
        "options": vars(options),
        "results": {},
    }
    try:
        for target in targets:
            report["results"][target] = run_target(target, options, args)
    finally:
        kill_live_processes()
        timer.cancel()
    results = report["results"]
    if "dovecote" in results and "prosody" in results:
        report["ratio_dovecote_over_prosody"] = ratios(results["dovecote"], results["prosody"])
    json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
