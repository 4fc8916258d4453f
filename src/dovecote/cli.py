"""The `dovecote` command line: run the server, manage users, check the configuration.

Every user error is one line, ``dovecote: error: ...``, on stderr with exit status 1
(usage errors keep click's status 2). User commands work on the storage directly and then
tell a running server through the control socket (`dovecote.control`), so that deleting
an account or changing a password takes effect at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from dovecote.config import Config, ConfigError, load_config
from dovecote.jid import JID, InvalidJID, prepare_domain
from dovecote.storage.base import AccountExists, StorageError
from dovecote.storage.credentials import ScramCredentials, derive_credentials, prepare_password

if TYPE_CHECKING:
    from dovecote.storage.sql import SQLStorage

T = TypeVar("T")

#: Below this many users an import derives keys in this process (no pool start-up).
_POOL_THRESHOLD = 200
_CHUNKSIZE = 64


class CLIError(click.ClickException):
    """A user error: printed as one line, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"dovecote: error: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    raise CLIError(message)


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))


def _modules(config: Config) -> list[str]:
    """The modules the server would load, dependencies resolved (core/modules.py)."""
    from dovecote.core.modules import ModuleError, module_names

    try:
        return module_names(config.modules.enabled, config.modules.disabled)
    except ModuleError as exc:
        fail(str(exc))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run storage work; storage failures become one-line errors."""
    try:
        return asyncio.run(coro)
    except StorageError as exc:
        fail(str(exc))


@dataclass(frozen=True, slots=True)
class _User:
    """A prepared account address (bare JID with a localpart)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def _user_jid(config: Config, text: str) -> _User:
    """Parse USER@DOMAIN (RFC 7622 preparation) for a domain this server hosts."""
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        fail(f"invalid JID {text!r}: {exc}")
    if jid.local is None:
        fail(f"invalid JID {text!r}: a user JID needs a localpart (user@domain)")
    if jid.resource is not None:
        fail(f"invalid JID {text!r}: a user JID has no resource")
    _check_domain(config, jid.domain)
    return _User(jid.local, jid.domain)


def _check_domain(config: Config, domain: str) -> None:
    if domain not in config.server.domains:
        served = ", ".join(config.server.domains)
        fail(f"unknown domain {domain!r} (served: {served})")


def _read_password(given: str | None) -> str:
    """--password, else a hidden prompt twice on a terminal, else one line of stdin."""
    if given is not None:
        password = given
    elif sys.stdin is not None and sys.stdin.isatty():
        password = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, default="",
            show_default=False,
        )  # fmt: skip
    else:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
    try:
        prepare_password(password)
    except ValueError as exc:
        fail(str(exc))
    return password


#: Seconds a CLI command waits for the database when a running server is writing.
CLI_BUSY_TIMEOUT = 10.0


async def _open(config: Config) -> SQLStorage:
    # Imported here: `check-config` and `--help` need not load SQLAlchemy.
    from dovecote.storage.sql import open_storage

    # A command someone waits for may wait longer for a busy server than a stanza does.
    return await open_storage(
        config.storage_url, busy_timeout=max(config.storage.busy_timeout, CLI_BUSY_TIMEOUT)
    )


async def _exists(config: Config, account: _User) -> bool:
    storage = await _open(config)
    try:
        return await storage.accounts.exists(account.local, account.domain)
    finally:
        await storage.close()


async def _notify(config: Config, event: str, jid: _User) -> None:
    from dovecote.control import notify_server

    await notify_server(config.data_path, {"event": event, "jid": str(jid)})


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $DOVECOTE_CONFIG, ./dovecote.toml, "
    "/etc/dovecote/dovecote.toml, else built-in defaults).",
)
password_option = click.option(
    "--password",
    "-p",
    metavar="PW",
    help="The password (default: prompt on a terminal, else read one line from stdin).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dovecote")
def main() -> None:
    """Dovecote, an XMPP server."""


@main.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run the server until SIGINT or SIGTERM."""
    config = _config(config_path)
    _modules(config)  # before anything starts: a missing dependency is a config error
    from dovecote import server

    try:
        server.run(config)
    except server.StartupError as exc:
        fail(str(exc))


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and show what it serves."""
    config = _config(config_path)
    modules = _modules(config)
    click.echo(f"config OK: {config.source or 'built-in defaults'}")
    click.echo(f"domains: {', '.join(config.server.domains)}")
    click.echo(f"modules: {' '.join(modules)}")


@main.command("s2s")
@click.option("--json", "as_json", is_flag=True, help="Print the links as JSON.")
@config_option
def s2s_links(as_json: bool, config_path: str | None) -> None:
    """List the open server-to-server links of the running server."""
    config = _config(config_path)
    from dovecote.control import request_server

    reply = _run(request_server(config.data_path, {"event": "s2s-links"}))
    if reply is None or not reply.get("ok"):
        fail("no running server answered on the control socket")
    links = reply.get("links") or []
    if as_json:
        click.echo(json.dumps(links, indent=2))
        return
    if not links:
        click.echo("no server-to-server links")
        return
    rows = [
        (
            link.get("direction", "?"),
            ",".join(link.get("local") or []) or "-",
            ",".join(link.get("remote") or []) or "-",
            link.get("auth", "?"),
            link.get("tls") or "-",
            link.get("certificate") or "-",
            "bidi" if link.get("bidi") else "",
            f"{link.get('idle', 0):.0f}s",
        )
        for link in links
    ]
    header = ("DIR", "LOCAL", "REMOTE", "AUTH", "TLS", "CERT", "", "IDLE")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@main.group()
def user() -> None:
    """Manage user accounts."""


@user.command("add")
@click.argument("jid", metavar="USER@DOMAIN")
@password_option
@config_option
def user_add(jid: str, password: str | None, config_path: str | None) -> None:
    """Create an account."""
    config = _config(config_path)
    account = _user_jid(config, jid)
    # Before asking for a password: is the name taken?
    if _run(_exists(config, account)):
        fail(f"user '{account}' already exists")
    secret = _read_password(password)
    credentials = derive_credentials(secret, config.auth.scram_iterations)

    async def add() -> None:
        storage = await _open(config)
        try:
            await storage.accounts.create(account.local, account.domain, credentials)
        except AccountExists:
            fail(f"user '{account}' already exists")
        finally:
            await storage.close()

    _run(add())
    click.echo(f"created {account}")


@user.command("del")
@click.argument("jid", metavar="USER@DOMAIN")
@config_option
def user_del(jid: str, config_path: str | None) -> None:
    """Delete an account and all its data."""
    config = _config(config_path)
    account = _user_jid(config, jid)

    async def remove() -> None:
        storage = await _open(config)
        try:
            deleted = await storage.accounts.delete(account.local, account.domain)
        finally:
            await storage.close()
        if not deleted:
            fail(f"no such user '{account}'")
        await _notify(config, "account-deleted", account)

    _run(remove())
    click.echo(f"deleted {account}")


@user.command("passwd")
@click.argument("jid", metavar="USER@DOMAIN")
@password_option
@config_option
def user_passwd(jid: str, password: str | None, config_path: str | None) -> None:
    """Change an account's password."""
    config = _config(config_path)
    account = _user_jid(config, jid)
    # Ask for the password only for an account that exists.
    if not _run(_exists(config, account)):
        fail(f"no such user '{account}'")
    credentials = derive_credentials(_read_password(password), config.auth.scram_iterations)

    async def change() -> None:
        storage = await _open(config)
        try:
            changed = await storage.accounts.set_credentials(
                account.local, account.domain, credentials
            )
        finally:
            await storage.close()
        if not changed:
            fail(f"no such user '{account}'")
        await _notify(config, "password-changed", account)

    _run(change())
    click.echo(f"password changed for {account}")


@user.command("list")
@click.argument("domain")
@config_option
def user_list(domain: str, config_path: str | None) -> None:
    """List a domain's accounts (bare JIDs, sorted)."""
    config = _config(config_path)
    try:
        prepared = prepare_domain(domain)
    except InvalidJID as exc:
        fail(f"invalid domain {domain!r}: {exc}")
    _check_domain(config, prepared)

    async def listing() -> list[str]:
        storage = await _open(config)
        try:
            return await storage.accounts.list_accounts(prepared)
        finally:
            await storage.close()

    locals_ = _run(listing())
    if locals_:
        click.echo("\n".join(f"{local}@{prepared}" for local in locals_))


@dataclass(slots=True)
class _ImportLine:
    lineno: int
    user: _User
    password: str


def _parse_import(
    path: str, text: str, config: Config
) -> tuple[list[_ImportLine], list[tuple[int, str]]]:
    """Lines of ``user@domain,password``; returns the users and (line, error) found."""
    users: list[_ImportLine] = []
    errors: list[tuple[int, str]] = []
    first_seen: dict[_User, int] = {}
    # Only "\n" ends a line: a password may hold any other character after the comma.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue

        def error(message: str, lineno: int = lineno) -> None:
            errors.append((lineno, f"{path}:{lineno}: {message}"))

        address, comma, password = line.partition(",")
        address = address.strip()
        if not comma:
            error(f"expected 'user@domain,password', got {stripped[:40]!r}")
            continue
        try:
            jid = JID.parse(address)
        except InvalidJID as exc:
            error(f"invalid JID {address!r}: {exc}")
            continue
        if jid.local is None or jid.resource is not None:
            error(f"invalid JID {address!r}: expected user@domain")
            continue
        if jid.domain not in config.server.domains:
            served = ", ".join(config.server.domains)
            error(f"unknown domain {jid.domain!r} (served: {served})")
            continue
        user = _User(jid.local, jid.domain)
        if user in first_seen:
            error(f"duplicate user '{user}' (first on line {first_seen[user]})")
            continue
        try:
            prepare_password(password)
        except ValueError as exc:
            error(str(exc))
            continue
        first_seen[user] = lineno
        users.append(_ImportLine(lineno, user, password))
    return users, errors


def _fail_with(errors: Sequence[tuple[int, str]]) -> NoReturn:
    """One line: the first bad line's error, and how many more there are."""
    first = min(errors)[1]
    more = len(errors) - 1
    suffix = f" (and {more} more bad line{'s' if more != 1 else ''}; nothing imported)"
    fail(first + (suffix if more else " (nothing imported)"))


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal, else one plain line."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("deriving keys"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task("derive", total=total)
            yield lambda n: progress.advance(task, n)
    else:
        click.echo(f"deriving keys for {total} users", err=True)
        yield lambda n: None


def _derive_all(passwords: list[str], iterations: int) -> list[dict[str, ScramCredentials]]:
    """PBKDF2 for every password, spread over the cores (a process pool, chunked)."""
    derive = functools.partial(derive_credentials, iterations=iterations)
    results: list[dict[str, ScramCredentials]] = []
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    workers = workers or os.cpu_count() or 1
    with _progress(len(passwords)) as advance:
        if len(passwords) < _POOL_THRESHOLD or workers == 1:
            for password in passwords:
                results.append(derive(password))
                advance(1)
        else:
            # Workers are forked children that watch this process (see _worker_init).
            context = multiprocessing.get_context("fork") if sys.platform == "linux" else None
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_worker_init,
                initargs=(os.getpid() if context is not None else None,),
            )
            try:
                for creds in pool.map(derive, passwords, chunksize=_CHUNKSIZE):
                    results.append(creds)
                    advance(1)
            finally:
                # On an interrupt, drop the queued work instead of finishing it.
                pool.shutdown(wait=True, cancel_futures=True)
    return results


#: prctl(2) option: the signal a process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
#: Seconds between a worker's checks that its parent is still there.
_PARENT_CHECK_INTERVAL = 0.5


def _worker_init(parent: int | None) -> None:
    """Set up a key-derivation worker: it must not outlive the importing process.

    Ctrl-C reaches the whole process group: only the parent handles it. A parent killed
    with SIGKILL runs no clean-up, and idle workers would wait on the task queue forever
    (they hold its pipe open themselves), so each worker asks Linux for SIGKILL when its
    parent dies (PR_SET_PDEATHSIG) and, anywhere, polls `os.getppid()` in a thread.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is None:
        parent = os.getppid()
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread still works
    if os.getppid() != parent:  # the parent died before the watch was set up
        os._exit(1)

    def watch_parent() -> None:
        while True:
            time.sleep(_PARENT_CHECK_INTERVAL)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


@user.command("import")
@click.argument("file", metavar="FILE.csv")
@config_option
def user_import(file: str, config_path: str | None) -> None:
    """Create accounts from lines of ``user@domain,password``, all or none.

    Blank lines and lines whose first non-blank character is '#' are skipped; the
    password is everything after the first comma.
    """
    config = _config(config_path)
    try:
        with open(file, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        fail(f"cannot read {file!r}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"cannot read {file!r}: not UTF-8 text")
    users, errors = _parse_import(file, text, config)
    if errors:
        _fail_with(errors)
    if not users:
        click.echo(f"no users in {file}")
        return
    started = time.perf_counter()

    async def check_existing() -> None:
        storage = await _open(config)
        try:
            by_domain: dict[str, list[_ImportLine]] = {}
            for item in users:
                by_domain.setdefault(item.user.domain, []).append(item)
            for domain, items in by_domain.items():
                found = await storage.accounts.existing(domain, [u.user.local for u in items])
                errors.extend(
                    (u.lineno, f"{file}:{u.lineno}: user '{u.user}' already exists")
                    for u in items
                    if u.user.local in found
                )
        finally:
            await storage.close()

    # Before the slow part: fail fast on accounts that exist already.
    _run(check_existing())
    if errors:
        _fail_with(errors)
    derived = _derive_all([u.password for u in users], config.auth.scram_iterations)

    async def store() -> None:
        storage = await _open(config)
        try:
            await storage.accounts.create_many(
                [(u.user.local, u.user.domain, c) for u, c in zip(users, derived, strict=True)]
            )
        except AccountExists as exc:
            # Created by someone else while the keys were being derived.
            line = next((u.lineno for u in users if str(u.user) == exc.jid), "?")
            fail(f"{file}:{line}: user '{exc.jid}' already exists (nothing imported)")
        finally:
            await storage.close()

    _run(store())
    elapsed = time.perf_counter() - started
    click.echo(f"imported {len(users)} users in {elapsed:.1f} s")
