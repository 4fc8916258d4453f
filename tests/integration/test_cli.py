"""The `dovecote` command line, run as a user runs it (a subprocess per command).

No XMPP server is started: user commands work on the storage, and a `ControlServer`
stands in for a running server where the tests check that the CLI notifies it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dovecote
from dovecote.control import (
    MAX_SOCKET_PATH,
    ControlError,
    ControlServer,
    control_socket_path,
    notify_server,
)
from dovecote.core.modules import module_names
from dovecote.storage import open_storage, verify_password

PYTHON_M = [sys.executable, "-m", "dovecote"]
CONSOLE_SCRIPT = Path(sys.executable).with_name("dovecote")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DOVECOTE_CONFIG", None)
    return env


@dataclass
class Setup:
    tmp: Path
    config: Path
    data_dir: Path

    def run(
        self,
        *args: str,
        stdin: str = "",
        config: bool = True,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [*(command or PYTHON_M), *args]
        if config:
            argv += ["--config", str(self.config)]
        return subprocess.run(
            argv,
            input=stdin,  # a pipe, never a terminal
            capture_output=True,
            text=True,
            timeout=110,
            env=env or _env(),
            cwd=cwd or self.tmp,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def users(self, domain: str = "example.org") -> list[str]:
        return self.ok("user", "list", domain).splitlines()

    def password_ok(self, local: str, password: str, domain: str = "example.org") -> bool:
        async def check() -> bool:
            url = f"sqlite+aiosqlite:///{self.data_dir / 'dovecote.sqlite3'}"
            storage = await open_storage(url)
            try:
                records = [
                    await storage.accounts.get_credentials(local, domain, name)
                    for name in ("SHA-1", "SHA-256")
                ]
            finally:
                await storage.close()
            return all(r is not None and verify_password(password, r) for r in records)

        return asyncio.run(check())


def write_config(path: Path, data_dir: Path, extra: str = "") -> None:
    path.write_text(
        f'[server]\ndomains = ["example.org", "other.example"]\ndata_dir = "{data_dir}"\n' + extra
    )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    config = tmp_path / "dovecote.toml"
    data_dir = tmp_path / "data"
    write_config(config, data_dir)
    return Setup(tmp_path, config, data_dir)


def assert_error(result: subprocess.CompletedProcess[str], message: str, code: int = 1) -> None:
    """Exactly one line `dovecote: error: ...` containing `message`, and the exit code."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dovecote: error: "), lines[0]
    assert message in lines[0], lines[0]


# --- user add / list / passwd / del -----------------------------------------------------


def test_add_list_passwd_del(setup: Setup) -> None:
    assert setup.ok("user", "add", "Alice@Example.org", "--password", "alice pw") == (
        "created alice@example.org\n"
    )
    # No --password and stdin not a terminal: one line from stdin.
    assert "created bob@example.org" in setup.ok("user", "add", "bob@example.org", stdin="b0b\n")
    setup.ok("user", "add", "carol@other.example", "-p", "c")
    assert setup.users() == ["alice@example.org", "bob@example.org"]
    assert setup.users("Other.Example") == ["carol@other.example"]
    assert setup.password_ok("alice", "alice pw")
    assert setup.password_ok("bob", "b0b")

    setup.ok("user", "passwd", "ALICE@example.org", "--password", "new one")
    assert setup.password_ok("alice", "new one")
    assert not setup.password_ok("alice", "alice pw")
    setup.ok("user", "passwd", "bob@example.org", stdin="  spaces kept \r\n")
    assert setup.password_ok("bob", "  spaces kept ")

    assert setup.ok("user", "del", "alice@example.org") == "deleted alice@example.org\n"
    assert setup.users() == ["bob@example.org"]
    assert setup.users("other.example") == ["carol@other.example"]


def test_console_script(setup: Setup) -> None:
    assert CONSOLE_SCRIPT.exists(), "the package is not installed (pip install -e .)"
    script = [str(CONSOLE_SCRIPT)]
    result = setup.run("user", "add", "dora@example.org", "-p", "pw", command=script)
    assert result.returncode == 0, result.stderr
    result = setup.run("user", "list", "example.org", command=script)
    assert result.stdout == "dora@example.org\n"
    assert_error(
        setup.run("user", "add", "dora@example.org", "-p", "pw", command=script),
        "user 'dora@example.org' already exists",
    )


def test_help_and_version(setup: Setup) -> None:
    result = setup.run("--help", config=False)
    assert result.returncode == 0
    for command in ("serve", "user", "check-config"):
        assert command in result.stdout
    result = setup.run("user", "--help", config=False)
    for command in ("add", "del", "passwd", "list", "import"):
        assert command in result.stdout
    assert setup.run("--version", config=False).returncode == 0


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["user", "add", "a@unknown.org", "-p", "x"], "", "unknown domain 'unknown.org' "
         "(served: example.org, other.example)"),
        (["user", "add", "x y@example.org", "-p", "x"], "", "invalid JID 'x y@example.org'"),
        (["user", "add", "example.org", "-p", "x"], "", "invalid JID 'example.org'"),
        (["user", "add", "a@example.org/res", "-p", "x"], "", "invalid JID 'a@example.org/res'"),
        (["user", "add", "a@example.org"], "\n", "empty password"),
        (["user", "add", "a@example.org"], "", "empty password"),
        (["user", "add", "a@example.org", "-p", ""], "", "empty password"),
        (["user", "add", "a@example.org", "-p", "a\u0007b"], "", "password not allowed"),
        (["user", "del", "nobody@example.org"], "", "no such user 'nobody@example.org'"),
        (["user", "del", "a@unknown.org"], "", "unknown domain 'unknown.org'"),
        (["user", "passwd", "nobody@example.org", "-p", "x"], "", "no such user"),
        (["user", "list", "unknown.org"], "", "unknown domain 'unknown.org'"),
        (["user", "list", "bad domain"], "", "invalid domain 'bad domain'"),
        (["user", "import", "missing.csv"], "", "cannot read 'missing.csv'"),
    ],
)  # fmt: skip
def test_user_errors(setup: Setup, args: list[str], stdin: str, message: str) -> None:
    assert_error(setup.run(*args, stdin=stdin), message)


def test_existing_user(setup: Setup) -> None:
    setup.ok("user", "add", "alice@example.org", "-p", "first")
    assert_error(
        setup.run("user", "add", "ALICE@example.org", "-p", "second"),
        "user 'alice@example.org' already exists",
    )
    assert setup.password_ok("alice", "first")


def test_usage_errors_keep_exit_2(setup: Setup) -> None:
    assert setup.run("user", "add").returncode == 2
    assert setup.run("frobnicate", config=False).returncode == 2
    result = setup.run("user", "add", "a@example.org", "--bogus")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_unreadable_import_file(setup: Setup) -> None:
    directory = setup.tmp / "adir.csv"
    directory.mkdir()
    assert_error(setup.run("user", "import", str(directory)), "cannot read")
    latin1 = setup.tmp / "latin1.csv"
    latin1.write_bytes("zoë@example.org,pw\n".encode("latin-1"))
    assert_error(setup.run("user", "import", str(latin1)), "not UTF-8")


# --- configuration ----------------------------------------------------------------------


def test_check_config_ok(setup: Setup) -> None:
    out = setup.ok("check-config")
    assert out.splitlines() == [
        f"config OK: {setup.config}",
        "domains: example.org, other.example",
        f"modules: {' '.join(module_names([], []))}",
    ]


def test_check_config_defaults_and_env(setup: Setup) -> None:
    empty = setup.tmp / "empty"
    empty.mkdir()
    result = setup.run("check-config", config=False, cwd=empty)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["config OK: built-in defaults", "domains: localhost"]
    env = _env() | {"DOVECOTE_CONFIG": str(setup.config)}
    result = setup.run("check-config", config=False, cwd=empty, env=env)
    assert result.stdout.splitlines()[0] == f"config OK: {setup.config}"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\ndomainz = ["example.org"]\n', "unknown configuration key 'server.domainz'"),
        ('[listen]\nc2s = "nowhere"\n', "'listen.c2s'"),
        ("[auth]\nscram_iterations = 100\n", "'auth.scram_iterations'"),
        ('[server]\ndomains = ["bad domain"]\n', "'server.domains"),
        ("[server\n", "not valid TOML"),
        ('[modules]\ndisabled = ["mma"]\n', "'modules.disabled': unknown module 'mma'"),
    ],
)
def test_invalid_config(setup: Setup, toml: str, message: str) -> None:
    setup.config.write_text(toml)
    for args in (["check-config"], ["user", "list", "example.org"], ["serve"]):
        assert_error(setup.run(*args), message)


def test_disabled_dependency(setup: Setup) -> None:
    """A module whose dependency is disabled: check-config and serve name both."""
    write_config(setup.config, setup.data_dir, '[modules]\ndisabled = ["caps"]\n')
    for args in (["check-config"], ["serve"]):
        assert_error(setup.run(*args), "module 'pep' needs 'caps', which is disabled")
    write_config(setup.config, setup.data_dir, '[modules]\ndisabled = ["caps", "pep"]\n')
    modules = setup.ok("check-config").splitlines()[2].split()
    assert "caps" not in modules and "pep" not in modules and "roster" in modules


def test_unreachable_storage(setup: Setup) -> None:
    write_config(
        setup.config, setup.data_dir, '[storage]\nurl = "postgresql://u:pw@127.0.0.1:1/x"\n'
    )
    assert_error(
        setup.run("user", "list", "example.org"),
        "cannot open storage postgresql+asyncpg://u:***@127.0.0.1:1/x",
    )


def test_missing_config_file(setup: Setup) -> None:
    result = setup.run("check-config", "--config", str(setup.tmp / "nope.toml"), config=False)
    assert_error(result, "not found")


def test_config_iterations_used(setup: Setup) -> None:
    write_config(setup.config, setup.data_dir, "[auth]\nscram_iterations = 5000\n")
    setup.ok("user", "add", "alice@example.org", "-p", "pw")

    async def iterations() -> int | None:
        storage = await open_storage(f"sqlite+aiosqlite:///{setup.data_dir}/dovecote.sqlite3")
        try:
            record = await storage.accounts.get_credentials("alice", "example.org", "SHA-256")
        finally:
            await storage.close()
        return None if record is None else record.iterations

    assert asyncio.run(iterations()) == 5000


# --- user import ------------------------------------------------------------------------


def test_import(setup: Setup) -> None:
    csv = setup.tmp / "users.csv"
    csv.write_text(
        "# some users\n"
        "\n"
        "Anna@Example.org,p1\n"
        "   # indented comment\n"
        "ben@example.org,with,commas, and spaces \n"
        "chloé@other.example,ünïcode\r\n"
        "   \n"
    )
    out = setup.ok("user", "import", str(csv))
    assert out.startswith("imported 3 users in ")
    assert setup.users() == ["anna@example.org", "ben@example.org"]
    assert setup.users("other.example") == ["chloé@other.example"]
    assert setup.password_ok("ben", "with,commas, and spaces ")
    assert setup.password_ok("chloé", "ünïcode", "other.example")


def test_import_empty_file(setup: Setup) -> None:
    csv = setup.tmp / "empty.csv"
    csv.write_text("# nothing\n\n")
    assert "no users" in setup.ok("user", "import", str(csv))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("x y@example.org,pw", "invalid JID 'x y@example.org'"),
        ("dan@unknown.org,pw", "unknown domain 'unknown.org' (served: example.org, other.example)"),
        ("Ann@example.org,again", "duplicate user 'ann@example.org' (first on line 3)"),
        ("existing@example.org,pw", "user 'existing@example.org' already exists"),
        ("no-comma@example.org", "expected 'user@domain,password'"),
        ("empty@example.org,", "empty password"),
        ("example.org,pw", "invalid JID 'example.org'"),
    ],
)
def test_import_bad_line_imports_nothing(setup: Setup, bad_line: str, message: str) -> None:
    setup.ok("user", "add", "existing@example.org", "-p", "pw")
    lines = ["# header", "", "ann@example.org,a", "bob@example.org,b", "", "# more"]
    lines += ["carl@example.org,c", bad_line, "dora@example.org,d"]
    csv = setup.tmp / "users.csv"
    csv.write_text("\n".join(lines) + "\n")
    result = setup.run("user", "import", str(csv))
    assert_error(result, f"{csv}:8: {message}")
    assert "nothing imported" in result.stderr
    assert setup.users() == ["existing@example.org"]


def test_import_reports_first_bad_line_and_count(setup: Setup) -> None:
    csv = setup.tmp / "users.csv"
    csv.write_text("ok@example.org,pw\nbad one@example.org,x\nx@nowhere.org,y\n")
    result = setup.run("user", "import", str(csv))
    assert_error(result, f"{csv}:2: invalid JID 'bad one@example.org'")
    assert "and 1 more bad line" in result.stderr
    assert setup.users() == []


def test_import_10000_users(setup: Setup) -> None:
    csv = setup.tmp / "many.csv"
    count = 10_000
    with csv.open("w") as fh:
        fh.write("# generated\n")
        for i in range(count):
            fh.write(f"user{i:05d}@example.org,password {i}\n")
    started = time.perf_counter()
    out = setup.ok("user", "import", str(csv))
    elapsed = time.perf_counter() - started
    print(f"\nimported {count} users in {elapsed:.1f} s (wall clock, whole command)")
    assert out.startswith(f"imported {count} users")
    users = setup.users()
    assert len(users) == count
    assert users[0] == "user00000@example.org" and users[-1] == "user09999@example.org"
    assert setup.password_ok("user04321", "password 4321")
    # Importing the same file again refuses every line and changes nothing.
    result = setup.run("user", "import", str(csv))
    assert_error(result, f"{csv}:2: user 'user00000@example.org' already exists")
    assert len(setup.users()) == count


# --- the control channel: CLI -> running server -----------------------------------------


async def _run_cli(setup: Setup, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *PYTHON_M,
        *args,
        "--config",
        str(setup.config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    _, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_cli_notifies_running_server(setup: Setup) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    async with ControlServer(setup.data_dir, on_event) as control:
        assert control.path == setup.data_dir / "control.sock"
        assert control.path.stat().st_mode & 0o777 == 0o600
        assert (await _run_cli(setup, "user", "add", "eve@example.org", "-p", "a"))[0] == 0
        assert events == []  # a new account changes nothing for a running server
        code, err = await _run_cli(setup, "user", "passwd", "Eve@example.org", "-p", "b")
        assert code == 0, err
        code, err = await _run_cli(setup, "user", "del", "eve@example.org")
        assert code == 0, err
        code, _ = await _run_cli(setup, "user", "del", "eve@example.org")
        assert code == 1
    assert events == [
        {"event": "password-changed", "jid": "eve@example.org"},
        {"event": "account-deleted", "jid": "eve@example.org"},
    ]
    assert not control.path.exists()


async def test_notify_without_server(tmp_path: Path) -> None:
    assert not await notify_server(tmp_path, {"event": "account-deleted", "jid": "a@b"})
    # A stale socket file left by a server that died.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    assert not await notify_server(tmp_path, {"event": "account-deleted", "jid": "a@b"})

    async def on_event(event: dict[str, Any]) -> None:
        pass

    async with ControlServer(tmp_path, on_event):  # removes the stale file
        assert await notify_server(tmp_path, {"event": "account-deleted", "jid": "a@b"})


async def test_second_server_refused(tmp_path: Path) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        pass

    async with ControlServer(tmp_path, on_event):
        with pytest.raises(ControlError, match="another server"):
            await ControlServer(tmp_path, on_event).start()
        assert await notify_server(tmp_path, {"event": "x"})


async def test_control_protocol_answers(tmp_path: Path) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "boom":
            raise RuntimeError("handler failed")

    async with ControlServer(tmp_path, on_event) as control:
        reader, writer = await asyncio.open_unix_connection(str(control.path))
        answers = []
        for line in (b'{"event": "a"}\n', b"not json\n", b"[1]\n", b'{"event": "boom"}\n'):
            writer.write(line)
            answers.append(json.loads(await reader.readline()))
        writer.close()
        await writer.wait_closed()
    assert answers[0] == {"ok": True}
    assert [a["ok"] for a in answers[1:]] == [False, False, False]
    assert answers[3]["error"] == "handler failed"


async def test_long_data_dir_falls_back_to_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = control_socket_path(deep)
    assert len(os.fsencode(deep / "control.sock")) > MAX_SOCKET_PATH
    assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
    assert path.parent.name == f"dovecote-{os.getuid()}"
    assert control_socket_path(deep) == path  # CLI and server agree
    assert control_socket_path(tmp_path / "other" / ("e" * 120)) != path
    received: list[dict[str, Any]] = []

    async def on_event(event: dict[str, Any]) -> None:
        received.append(event)

    async with ControlServer(deep, on_event) as control:
        assert control.path == path
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert await notify_server(deep, {"event": "password-changed", "jid": "a@b"})
    assert received == [{"event": "password-changed", "jid": "a@b"}]


def _session_members(session: int) -> list[int]:
    """Processes whose session id is `session` (Linux /proc), zombies left out."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(entry.name))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_import_workers_die_with_a_killed_parent(setup: Setup) -> None:
    """kill -9 of `dovecote user import` mid-run leaves no key-derivation worker behind."""
    write_config(setup.config, setup.data_dir, "[auth]\nscram_iterations = 200000\n")
    csv = setup.tmp / "big.csv"
    csv.write_text("".join(f"user{i}@example.org,password {i}\n" for i in range(400)))
    proc = subprocess.Popen(
        [*PYTHON_M, "user", "import", str(csv), "--config", str(setup.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # The code under test, wherever the test runs from.
        env={**_env(), "PYTHONPATH": str(Path(dovecote.__file__).parents[1])},
        cwd=setup.tmp,
        start_new_session=True,  # its own session: every process it starts is findable
    )
    try:
        deadline = time.monotonic() + 60
        while len(_session_members(proc.pid)) < 2:  # the CLI and at least one worker
            assert proc.poll() is None, "the import ended before its workers were seen"
            assert time.monotonic() < deadline, "no worker process started"
            time.sleep(0.1)
        time.sleep(0.5)  # the workers are deriving keys
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 15
        while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"worker processes outlived the killed import: {left}"
    finally:
        for pid in _session_members(proc.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
