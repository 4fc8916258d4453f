#!/usr/bin/env python3
"""Connection churn benchmark: what a server keeps after many connections come and go.

    python bench/churn.py [--cycles 18000] [--concurrency 50] [--dovecote-bin PATH]

Starts `dovecote serve` (SQLite, a temporary data directory, free ports on 127.0.0.1),
then opens and closes --cycles client connections (--concurrency at a time), each sending
a stream header and waiting for the stream features before closing, as a port scanner or
a flaky client would. Prints one JSON document: the server's RSS (from /proc) before,
after the cycles, and after a few idle seconds, and the CPU time it spent per cycle.
A benchmark, never a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOMAIN = "bench.local"
HEADER = (
    f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>"
).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_cycle(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEADER)
    data = b""
    while b"</stream:features>" not in data:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data += chunk
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def churn(port: int, cycles: int, concurrency: int) -> None:
    queue = iter(range(cycles))

    async def worker() -> None:
        for _ in queue:
            await one_cycle(port)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=18000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle at the end")
    parser.add_argument(
        "--dovecote-bin",
        default=str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "dovecote"),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dovecote-churn-") as tmp:
        port = free_port()
        config = Path(tmp) / "dovecote.toml"
        base = (
            f'[server]\ndomains = ["{DOMAIN}"]\ndata_dir = "{tmp}/data"\n'
            f'[listen]\nc2s = "127.0.0.1:{port}"\nc2s_tls = ""\ns2s = ""\nhttp = ""\n'
            '[logging]\nlevel = "warning"\n'
        )
        # Every connection comes from 127.0.0.1: lift the per-address cap where it exists.
        config.write_text(base + "[limits]\nmax_connections_per_ip = 0\n")
        checked = subprocess.run(
            [args.dovecote_bin, "check-config", "--config", str(config)],
            capture_output=True,
            timeout=60,
        )
        if checked.returncode != 0:
            config.write_text(base)  # an older version: no cap to lift
        server = subprocess.Popen(
            [args.dovecote_bin, "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(1)
            before, cpu_before = rss_kib(server.pid), cpu_seconds(server.pid)
            began = time.monotonic()
            asyncio.run(churn(port, args.cycles, args.concurrency))
            elapsed = time.monotonic() - began
            after = rss_kib(server.pid)
            cpu = cpu_seconds(server.pid) - cpu_before
            time.sleep(args.idle)
            idle = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(15)
    print(
        json.dumps(
            {
                "cycles": args.cycles,
                "seconds": round(elapsed, 1),
                "cycles_per_s": round(args.cycles / elapsed),
                "server_cpu_us_per_cycle": round(cpu / args.cycles * 1e6),
                "rss_kib": {"before": before, "after_cycles": after, "after_idle": idle},
                "rss_growth_kib": idle - before,
            },
            indent=2,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
