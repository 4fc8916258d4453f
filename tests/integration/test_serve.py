"""`dovecote serve` as an operator runs it: a subprocess, the CLI beside it, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CLIENT, DOMAIN, PASSWORD, SASL, RawClient, q


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path: Path, c2s: int, c2s_tls: int, extra: str = "") -> Path:
    path = tmp_path / "dovecote.toml"
    path.write_text(
        f"""
[server]
domains = ["{DOMAIN}"]
data_dir = "{tmp_path / "data"}"
[listen]
c2s = "127.0.0.1:{c2s}"
c2s_tls = "127.0.0.1:{c2s_tls}"
s2s = ""
http = ""
{extra}
"""
    )
    return path


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dovecote", *args, "--config", str(config)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Served:
    def __init__(self, config: Path, c2s: int) -> None:
        self.config = config
        self.c2s = c2s
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dovecote", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.c2s), 0.2),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("server did not start listening")

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    c2s, c2s_tls = free_port(), free_port()
    server = Served(write_config(tmp_path, c2s, c2s_tls), c2s)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


async def login(port: int, local: str, password: str = PASSWORD) -> RawClient:
    raw = await RawClient.open(port)
    await raw.login(local, password)
    return raw


async def login_fails(port: int, local: str, password: str = PASSWORD) -> bool:
    raw = await RawClient.open(port)
    raw.open_stream()
    await raw.features()
    await raw.starttls()
    el = await raw.auth_scram(local, password)
    await raw.close()
    return el.tag == q(SASL, "failure") and el.find(q(SASL, "not-authorized")) is not None


async def test_accounts_survive_a_restart(served: Served) -> None:
    assert (
        cli(served.config, "user", "add", "alice@example.org", "--password", PASSWORD).returncode
        == 0
    )
    served.start()
    raw = await login(served.c2s, "alice")
    await raw.close()
    served.stop()
    served.start()
    raw = await login(served.c2s, "alice")
    raw.send(f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert (await raw.expect(q(CLIENT, "iq"))).get("type") == "result"
    await raw.close()
    assert await login_fails(served.c2s, "alice", "wrong")
    served.stop()


async def test_user_commands_reach_the_running_server(served: Served) -> None:
    served.start()
    # A new account can log in at once.
    added = await asyncio.to_thread(
        cli, served.config, "user", "add", "bob@example.org", stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    bob = await login(served.c2s, "bob")
    # A password change ends the sessions with <reset/> and the old password stops working.
    changed = await asyncio.to_thread(
        cli, served.config, "user", "passwd", "bob@example.org", "--password", "new-password"
    )
    assert changed.returncode == 0, changed.stderr
    assert await bob.stream_error() == "reset"
    assert await login_fails(served.c2s, "bob", PASSWORD)
    bob = await login(served.c2s, "bob", "new-password")
    # Deleting the account ends its sessions and it can no longer log in.
    deleted = await asyncio.to_thread(cli, served.config, "user", "del", "bob@example.org")
    assert deleted.returncode == 0, deleted.stderr
    assert await bob.stream_error() == "not-authorized"
    assert await login_fails(served.c2s, "bob", "new-password")
    listed = await asyncio.to_thread(cli, served.config, "user", "list", DOMAIN)
    assert "bob" not in listed.stdout.split()
    served.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, port, free_port())
        result = subprocess.run(
            [sys.executable, "-m", "dovecote", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines == [
        f"dovecote: error: cannot listen on 127.0.0.1:{port} (c2s): address already in use"
    ]


def test_unreadable_certificate_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    config = write_config(
        tmp_path, free_port(), free_port(), f'[tls]\ncert = "{missing}"\nkey = "{missing}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "dovecote", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"dovecote: error: cannot read {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_key_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), free_port(), "[registration]\nopen = 'maybe'\n")
    result = subprocess.run(
        [sys.executable, "-m", "dovecote", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "'registration.open'" in result.stderr and "'maybe'" in result.stderr


def test_serve_without_config_uses_localhost(tmp_path: Path) -> None:
    """No config file at all: domain localhost, data under XDG_DATA_HOME, a self-signed cert."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "DOVECOTE_CONFIG": ""}
    result = subprocess.run(
        [sys.executable, "-m", "dovecote", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "localhost" in result.stdout
