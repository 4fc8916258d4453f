"""Federation benchmark: chat messages from users of one Dovecote to users of another,
over a server-to-server link (RFC 6120 s2s, dialback over TLS).

Two `dovecote serve` processes, a.example on 127.0.0.2 and b.example on 127.0.0.3, each
pinned to its own core with taskset, with `[s2s.routes]` pointing at each other. N pairs
of clients (alice_i@a.example → bob_i@b.example) send chat messages at saturation (a window
of messages in flight per sender) for a fixed time; the receivers count `</message>` in
what they read. Printed: messages/s across the link and the CPU each server spent per
message (utime + stime from /proc/<pid>/stat over the measured window).

    python bench/s2s.py [--pairs 50] [--window 8] [--seconds 10] [--dovecote-bin PATH]

Loopback only, bounded in time (about 30 s). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import (
    find_dovecote_binary,
    make_self_signed_cert,
    process_cpu_seconds,
    process_rss_kib,
)

DOMAINS = {"a.example": "127.0.0.2", "b.example": "127.0.0.3"}
PASSWORD = "bench-password"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class Peer:
    """One `dovecote serve` for one domain."""

    def __init__(self, workdir: Path, binary: str, domain: str, core: int) -> None:
        self.workdir = workdir / domain
        self.workdir.mkdir()
        self.binary = binary
        self.domain = domain
        self.address = DOMAINS[domain]
        self.core = core
        self.c2s_port = free_port(self.address)
        self.s2s_port = free_port(self.address)
        self.config = self.workdir / "dovecote.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, peers: list[Peer]) -> None:
        cert, key = make_self_signed_cert(self.workdir, self.domain)
        routes = "\n".join(
            f'"{p.domain}" = "{p.address}:{p.s2s_port}"' for p in peers if p is not self
        )
        self.config.write_text(
            f"""[server]
domains = ["{self.domain}"]
data_dir = "{self.workdir / "data"}"
[listen]
c2s = "{self.address}:{self.c2s_port}"
c2s_tls = ""
s2s = "{self.address}:{self.s2s_port}"
http = ""
[tls]
cert = "{cert}"
key = "{key}"
[auth]
allow_plain = true
[limits]
max_connections_per_ip = 0
c2s_rate = 0
[modules]
disabled = ["mam", "offline"]
[logging]
level = "warning"
[s2s.routes]
{routes}
"""
        )

    def add_users(self, local: str, count: int) -> None:
        csv = self.workdir / "users.csv"
        csv.write_text("".join(f"{local}{i}@{self.domain},{PASSWORD}\n" for i in range(count)))
        subprocess.run(
            [self.binary, "user", "import", str(csv), "--config", str(self.config)],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip

    def start(self) -> None:
        taskset = ["taskset", "-c", str(self.core)] if shutil.which("taskset") else []
        log = open(self.workdir / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [*taskset, self.binary, "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, self.c2s_port), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.domain} did not start: see {self.workdir / 'serve.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Client:
    """A raw c2s client: plain TCP, SASL PLAIN, bind, available; then it only counts."""

    def __init__(self, peer: Peer, jid: str) -> None:
        self.peer = peer
        self.jid = jid
        self.received = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self._buffer = b""

    async def _until(self, marker: bytes) -> None:
        while marker not in self._buffer:
            data = await asyncio.wait_for(self.reader.read(65536), 30)
            if not data:
                raise RuntimeError(f"{self.jid}: connection closed: {self._buffer[-300:]!r}")
            self._buffer += data
        self._buffer = self._buffer.split(marker, 1)[1]

    def _open(self) -> None:
        self.writer.write(
            f"<?xml version='1.0'?><stream:stream to='{self.peer.domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".encode()
        )

    async def login(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.peer.address, self.peer.c2s_port
        )
        self._open()
        await self._until(b"</stream:features>")
        # PLAIN is offered over TLS only.
        self.writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self._until(b"<proceed")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(context, server_hostname=self.peer.domain)
        self._buffer = b""
        self._open()
        await self._until(b"</stream:features>")
        local = self.jid.split("@")[0]
        token = base64.b64encode(f"\0{local}\0{PASSWORD}".encode()).decode()
        self.writer.write(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
            .encode()
        )  # fmt: skip
        await self._until(b"<success")
        self._open()
        await self._until(b"</stream:features>")
        self.writer.write(
            b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"
            b"<presence/>"
        )
        await self._until(b"</iq>")

    async def count(self) -> None:
        tail = b""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            chunk = tail + data
            self.received += chunk.count(b"</message>")
            tail = chunk[-9:]
            if b"</message>" in tail:
                tail = b""


async def run(args: argparse.Namespace, a: Peer, b: Peer) -> dict[str, float]:
    senders = [Client(a, f"alice{i}@a.example") for i in range(args.pairs)]
    receivers = [Client(b, f"bob{i}@b.example") for i in range(args.pairs)]
    await asyncio.gather(*(c.login() for c in senders + receivers))
    counters = [asyncio.ensure_future(c.count()) for c in receivers]
    body = "x" * args.size
    stop = asyncio.Event()

    async def send(i: int) -> None:
        sender, receiver = senders[i], receivers[i]
        sent = 0
        while not stop.is_set():
            while sent - receiver.received < args.window:
                sender.writer.write(
                    f"<message to='{receiver.jid}' type='chat'><body>{body}</body></message>"
                    .encode()
                )  # fmt: skip
                sent += 1
            await sender.writer.drain()
            await asyncio.sleep(0.001)

    tasks = [asyncio.ensure_future(send(i)) for i in range(args.pairs)]
    await asyncio.sleep(args.warmup)  # the link is set up (dialback) and warm
    start_count = sum(r.received for r in receivers)
    cpu_a, cpu_b = process_cpu_seconds(a.proc.pid), process_cpu_seconds(b.proc.pid)  # type: ignore[union-attr]
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    elapsed = time.monotonic() - started
    delivered = sum(r.received for r in receivers) - start_count
    used_a = process_cpu_seconds(a.proc.pid) - cpu_a  # type: ignore[union-attr]
    used_b = process_cpu_seconds(b.proc.pid) - cpu_b  # type: ignore[union-attr]
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in senders + receivers:
        c.writer.close()
    for task in counters:
        task.cancel()
    return {
        "messages_per_s": delivered / elapsed,
        "sender_server_us_per_message": 1e6 * used_a / max(1, delivered),
        "receiver_server_us_per_message": 1e6 * used_b / max(1, delivered),
        "sender_server_cpu_pct": 100 * used_a / elapsed,
        "receiver_server_cpu_pct": 100 * used_b / elapsed,
        "rss_a_mb": process_rss_kib(a.proc.pid) / 1024,  # type: ignore[union-attr]
        "rss_b_mb": process_rss_kib(b.proc.pid) / 1024,  # type: ignore[union-attr]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--size", type=int, default=100, help="body characters")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--dovecote-bin", default=None)
    args = parser.parse_args()
    binary = find_dovecote_binary(args.dovecote_bin)
    if binary is None:
        sys.exit("no dovecote binary: install the project (pip install -e .) or --dovecote-bin")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-s2s-") as tmp:
        a = Peer(Path(tmp), binary, "a.example", 0)
        b = Peer(Path(tmp), binary, "b.example", 1 % cores)
        try:
            for peer in (a, b):
                peer.write_config([a, b])
            a.add_users("alice", args.pairs)
            b.add_users("bob", args.pairs)
            a.start()
            b.start()
            result = asyncio.run(run(args, a, b))
        finally:
            a.stop()
            b.stop()
    print(
        f"s2s chat, {args.pairs} pairs, window {args.window}, {args.size}-char bodies, "
        f"{args.seconds:.0f} s measured"
    )
    for key, value in result.items():
        print(f"  {key:32} {value:10.1f}")


if __name__ == "__main__":
    main()
