"""Real peers for the federation tests: a DNS server (dnsmasq) serving SRV and A records
for the test domains, and the set-up check that installs dnsmasq/Prosody/ejabberd through
scripts/federation-setup.sh (only when missing; skipped with the reason outside CI when
they cannot be installed, a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "federation-setup.sh"
BINARIES = {
    "dnsmasq": "/usr/sbin/dnsmasq",
    "prosody": "/usr/bin/prosody",
    "ejabberd": "/usr/sbin/ejabberdctl",
}
_checked: dict[str, str | None] = {}


def require(*programs: str) -> None:
    """Make sure the programs are installed (running the set-up script once), else skip
    (outside CI) or fail (CI=true) with the script's reason."""
    for name in programs:
        if name not in _checked:
            if os.access(BINARIES[name], os.X_OK):
                _checked[name] = None
            else:
                proc = subprocess.run(
                    [str(SETUP), name], capture_output=True, text=True, timeout=900
                )
                ok = proc.returncode == 0 and os.access(BINARIES[name], os.X_OK)
                _checked[name] = None if ok else (proc.stderr.strip() or f"{name} missing")
        reason = _checked[name]
        if reason is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"federation set-up: {reason}")
            pytest.skip(f"federation set-up: {reason}")


def free_port(address: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class SRV:
    """`_xmpp-server._tcp.<domain>` (or `_xmpps-server` with `direct_tls`) -> target."""

    domain: str
    target: str
    port: int
    priority: int = 0
    weight: int = 0
    direct_tls: bool = False


@dataclass
class DnsMasq:
    """dnsmasq answering only from its command line (no /etc/hosts, no upstream), on
    127.0.0.1 and a free UDP+TCP port: `address` is what `[s2s] nameservers` takes."""

    directory: Path
    hosts: dict[str, str] = field(default_factory=dict)
    srv: list[SRV] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    listen: str = "127.0.0.1"
    port: int = 0

    @property
    def address(self) -> str:
        return f"{self.listen}:{self.port}"

    def resolv_conf(self) -> Path:
        """A resolv.conf naming this server (for Prosody's libunbound, which takes no
        port there: see `unbound_conf`)."""
        path = self.directory / "resolv.conf"
        path.write_text(f"nameserver {self.listen}\n")
        return path

    def start(self) -> DnsMasq:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = free_port(self.listen, socket.SOCK_DGRAM)
            args = [
                BINARIES["dnsmasq"],
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--local=/#/",  # every other name: NXDOMAIN, not REFUSED
                "--bind-interfaces",
                f"--listen-address={self.listen}",
                "--except-interface=nonexistent",
                f"--port={self.port}",
                f"--pid-file={self.directory / 'dnsmasq.pid'}",
                "--user=root",
                "--log-queries",
                f"--log-facility={self.directory / 'dnsmasq.log'}",
            ]
            for name, address in self.hosts.items():
                args.append(f"--host-record={name},{address}")
            for record in self.srv:
                service = "_xmpps-server" if record.direct_tls else "_xmpp-server"
                args.append(
                    f"--srv-host={service}._tcp.{record.domain},{record.target},"
                    f"{record.port},{record.priority},{record.weight}"
                )
            self.process = subprocess.Popen(args, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"dnsmasq did not start: see {self.directory / 'dnsmasq.log'}")

    def _wait_ready(self) -> bool:
        import dns.message
        import dns.query

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                query = dns.message.make_query("ready.invalid", "A")
                dns.query.udp(query, self.listen, port=self.port, timeout=0.5)
                return True
            except (OSError, dns.exception.Timeout):
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def which(name: str) -> str | None:
    return shutil.which(name)
