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
                "--local-ttl=60",  # TTL 0 answers confuse Erlang's resolver cache
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


# ---- Prosody -----------------------------------------------------------------------------
def _wait_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), 0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class ProsodyHost:
    """A VirtualHost; `certificate`/`key` unset: no TLS for it (RFC 6120 §5: a peer that
    offers no STARTTLS)."""

    domain: str
    certificate: Path | None = None
    key: Path | None = None
    #: False: mod_tls off for this host (no STARTTLS offered).
    tls: bool = True


@dataclass
class Prosody:
    """Prosody (Debian's 0.12) as a real peer: its own config, data, pid and log under
    `directory`, c2s and s2s (5269) on `address`, names resolved by its libunbound through
    the test's dnsmasq (`unbound = { forward = "127.0.0.1@PORT" }`)."""

    directory: Path
    address: str
    hosts: list[ProsodyHost]
    dns: DnsMasq
    cafile: Path | None = None
    secure_auth: bool = False
    process: subprocess.Popen[bytes] | None = None
    c2s_port: int = 0

    @property
    def config_path(self) -> Path:
        return self.directory / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.directory / "prosody.log"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        (self.directory / "certs").mkdir(exist_ok=True)
        if not self.c2s_port:
            self.c2s_port = free_port(self.address)
        d = self.directory
        lines = [
            "run_as_root = true",
            'prosody_user = "root"',
            'prosody_group = "root"',
            f"pidfile = {_lua(str(d / 'prosody.pid'))}",
            f"data_path = {_lua(str(d / 'data'))}",
            f"certificates = {_lua(str(d / 'certs'))}",
            f"interfaces = {{ {_lua(self.address)} }}",
            f"local_interfaces = {{ {_lua(self.address)} }}",
            f"c2s_ports = {{ {self.c2s_port} }}",
            f"c2s_interfaces = {{ {_lua(self.address)} }}",
            "s2s_ports = { 5269 }",
            f"s2s_interfaces = {{ {_lua(self.address)} }}",
            "c2s_direct_tls_ports = { }",
            "s2s_direct_tls_ports = { }",
            "http_ports = { }",
            "https_ports = { }",
            'authentication = "internal_hashed"',
            'storage = "internal"',
            "c2s_require_encryption = true",
            "s2s_require_encryption = true",
            f"s2s_secure_auth = {'true' if self.secure_auth else 'false'}",
            "s2s_timeout = 20",
            "modules_enabled = {",
            '  "roster", "saslauth", "tls", "dialback", "disco", "ping", "version",',
            "}",
            'modules_disabled = { "posix" }',
            "log = {",
            '  { levels = { min = "debug" }, to = "file",',
            f"    filename = {_lua(str(self.log_path))} }},",
            "}",
            "unbound = {",
            f'  forward = "{self.dns.listen}@{self.dns.port}",',
            "  resolvconf = false, hoststxt = false,",
            "}",
        ]
        for host in self.hosts:
            lines.append(f"VirtualHost {_lua(host.domain)}")
            if not host.tls:
                lines.append('  modules_disabled = { "tls" }')
            if host.certificate is not None and host.key is not None:
                ssl_opts = [
                    f"certificate = {_lua(str(host.certificate))}",
                    f"key = {_lua(str(host.key))}",
                ]
                if self.cafile is not None:
                    ssl_opts.append(f"cafile = {_lua(str(self.cafile))}")
                lines.append(f"  ssl = {{ {', '.join(ssl_opts)} }}")
            else:
                lines.append("  ssl = { }")
        self.config_path.write_text("\n".join(lines) + "\n")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["prosodyctl", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def register(self, local: str, domain: str, password: str) -> None:
        proc = self.ctl("register", local, domain, password)
        if proc.returncode != 0:
            raise RuntimeError(f"prosodyctl register {local}@{domain}: {proc.stderr}{proc.stdout}")

    def start(self) -> Prosody:
        self.write_config()
        log = open(self.directory / "stdout.log", "wb")  # closed with the process
        self.process = subprocess.Popen(
            ["prosody", "--config", str(self.config_path), "-F"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        if not (
            _wait_port(self.address, 5269, self.process, 30)
            and _wait_port(self.address, self.c2s_port, self.process, 30)
        ):
            self.stop()
            output = (self.directory / "stdout.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prosody did not start:\n{output}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def loopback_port_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


# ---- ejabberd ----------------------------------------------------------------------------
@dataclass
class Ejabberd:
    """ejabberd (Debian's 23.01) as a real peer: `ejabberdctl` with its own config dir
    (ejabberd.yml, ejabberdctl.cfg, inetrc), spool, logs and Erlang node name under
    `directory`, owned by the `ejabberd` user (ejabberdctl run as root switches to it).
    c2s and s2s (5269) on `address`; names resolved by Erlang's resolver through the test's
    dnsmasq (inetrc `{nameserver, {127,0,0,1}, PORT}`)."""

    directory: Path
    address: str
    domain: str
    dns: DnsMasq
    certfiles: list[Path]
    cafile: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    c2s_port: int = 0
    node: str = ""

    def _args(self) -> list[str]:
        d = self.directory
        return [
            BINARIES["ejabberd"],
            "--config-dir",
            str(d),
            "--config",
            str(d / "ejabberd.yml"),
            "--ctl-config",
            str(d / "ejabberdctl.cfg"),
            "--logs",
            str(d / "logs"),
            "--spool",
            str(d / "spool"),
            "--node",
            self.node,
        ]

    @property
    def log_path(self) -> Path:
        return self.directory / "logs" / "ejabberd.log"

    def write_config(self) -> None:
        import pwd

        d = self.directory
        for sub in ("logs", "spool", "certs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if not self.c2s_port:
            self.c2s_port = free_port(self.address)
        self.node = self.node or f"dovecote-interop-{os.getpid()}@localhost"
        certs = []
        for path in self.certfiles:
            copy = d / "certs" / path.name
            shutil.copyfile(path, copy)
            certs.append(copy)
        ca_line = ""
        if self.cafile is not None:
            ca_copy = d / "certs" / "ca-file.pem"
            shutil.copyfile(self.cafile, ca_copy)
            ca_line = f'ca_file: "{ca_copy}"\n'
        cert_lines = "".join(f'  - "{path}"\n' for path in certs)
        (d / "ejabberd.yml").write_text(
            f"""hosts:
  - "{self.domain}"
loglevel: info
log_rotate_count: 0
certfiles:
{cert_lines}{ca_line}s2s_use_starttls: required
s2s_dns_timeout: 5
s2s_dns_retries: 1
auth_method: internal
listen:
  -
    port: {self.c2s_port}
    ip: "{self.address}"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: 5269
    ip: "{self.address}"
    module: ejabberd_s2s_in
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_s2s_dialback: {{}}
  mod_version: {{}}
"""
        )
        (d / "ejabberdctl.cfg").write_text(
            f'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\nEJABBERD_PID_PATH={d / "ejabberd.pid"}\n'
        )
        (d / "inetrc").write_text(
            # No resolv.conf/hosts watching: inet_db would replace the name servers
            # with the system's on the first query.
            '{resolv_conf, ""}.\n'
            '{hosts_file, ""}.\n'
            "{lookup, [file, dns]}.\n"
            '{host, {127,0,0,1}, ["localhost"]}.\n'
            f"{{nameserver, {{{self.dns.listen.replace('.', ',')}}}, {self.dns.port}}}.\n"
        )
        user = pwd.getpwnam("ejabberd")
        for path in [d, *d.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        # The parents must be passable for the ejabberd user.
        parent = d.parent
        while parent != parent.parent:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
            parent = parent.parent

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._args(), *args], capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> Ejabberd:
        self.write_config()
        out = open(self.directory / "stdout.log", "wb")  # closed with the process
        self.process = subprocess.Popen(
            [*self._args(), "foreground"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not (
            _wait_port(self.address, 5269, self.process, 120)
            and _wait_port(self.address, self.c2s_port, self.process, 60)
        ):
            self.stop()
            output = (self.directory / "stdout.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"ejabberd did not start:\n{output}\n{self.log()[-3000:]}")
        return self

    def register(self, local: str, password: str) -> None:
        proc = self.ctl("register", local, self.domain, password)
        if proc.returncode != 0:
            raise RuntimeError(f"ejabberdctl register {local}: {proc.stdout}{proc.stderr}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.ctl("stop", timeout=30)
                process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            # Our own process group (start_new_session): su and the Erlang VM under it.
            try:
                os.killpg(process.pid, 15)
                process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, 9)
                process.wait()
        self.process = None
