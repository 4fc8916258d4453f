"""A local control channel, so `dovecote user ...` affects a running server at once.

The server listens on a unix socket, ``<data_dir>/control.sock`` (mode 0600: only the
account the server runs as, and root, may connect). The protocol is JSON lines: each line
is one event object, answered with ``{"ok": true}`` (or ``{"ok": false, "error": ...}``).

Events sent by the CLI:

- ``{"event": "account-deleted", "jid": "user@domain"}``
- ``{"event": "password-changed", "jid": "user@domain"}``
- ``{"event": "s2s-links"}``, answered ``{"ok": true, "links": [...]}`` (`dovecote s2s`)

A unix socket path is limited to about 107 bytes (``sun_path``). When
``<data_dir>/control.sock`` is longer, the socket lives instead in a private directory
``/tmp/dovecote-<uid>/<hash of data_dir>.sock``, where the hash is the first 16 hex
digits of SHA-256 over the resolved data_dir path; server and CLI derive the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
#: sizeof(sockaddr_un.sun_path) is 108 on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Longest accepted line; events are tiny.
MAX_LINE = 64 * 1024
#: Seconds the CLI waits for the server's answer.
NOTIFY_TIMEOUT = 5.0

#: Handles one event; a dict it returns is merged into the answer (`request_server`).
EventHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class ControlError(OSError):
    """The control socket cannot be set up (an OSError: a server may carry on without)."""


def control_socket_path(data_dir: Path) -> Path:
    """Where the control socket of the server using `data_dir` lives (see module doc)."""
    data_dir = Path(data_dir).expanduser().absolute()
    path = data_dir / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16]
    return _fallback_dir() / f"{digest}.sock"


def _fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"dovecote-{os.getuid()}"


def _ensure_private_dir(directory: Path) -> None:
    """Create `directory` 0700, or check an existing one is ours and private."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        raise ControlError(f"cannot create {str(directory)!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ControlError(f"{str(directory)!r} is not a directory owned by this user")
    if info.st_mode & 0o077:
        directory.chmod(0o700)


def _is_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fsencode(path))
        except OSError:
            return False
        return True


def _prepare_socket_path(path: Path) -> None:
    """Make the socket's directory; remove a stale socket, refuse a live one."""
    if path.parent == _fallback_dir():
        _ensure_private_dir(path.parent)
    else:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ControlError(f"cannot create {str(path.parent)!r}: {exc.strerror}") from None
    if path.exists() or path.is_symlink():
        if _is_listening(path):
            raise ControlError(f"another server is listening on {str(path)!r}")
        path.unlink()


class ControlServer:
    """Listens on the control socket and hands each event to `on_event`.

    Usage::

        control = ControlServer(config.data_path, on_event)
        await control.start()
        ...
        await control.close()

    `start` removes a stale socket file left by a server that died, and raises
    ControlError if another server is listening there already.
    """

    def __init__(self, data_dir: Path, on_event: EventHandler) -> None:
        self.data_dir = Path(data_dir)
        self.path = control_socket_path(self.data_dir)
        self._on_event = on_event
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        _prepare_socket_path(self.path)
        # bind() creates the socket file with the umask's permissions: narrow the umask
        # for that moment so no other user can connect before the chmod below.
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_client, path=str(self.path), limit=MAX_LINE
            )
        except OSError as exc:
            raise ControlError(f"cannot listen on {str(self.path)!r}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)
        log.debug("control socket listening on %s", self.path)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                reply = await self._handle_line(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a broken or oversized line: drop the client
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "invalid JSON"}
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            return {"ok": False, "error": "expected an object with an 'event'"}
        try:
            result = await self._on_event(message)
        except Exception as exc:
            log.exception("control event %r failed", message)
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        return {"ok": True, **(result or {})}


async def notify_server(data_dir: Path, event: dict[str, Any]) -> bool:
    """Send `event` to the server using `data_dir`; True once it answered ``ok``.

    False, silently, when no server is listening (or it does not answer within
    `NOTIFY_TIMEOUT` seconds).
    """
    reply = await request_server(data_dir, event)
    return reply is not None and reply.get("ok") is True


async def request_server(data_dir: Path, event: dict[str, Any]) -> dict[str, Any] | None:
    """Send `event` to the server using `data_dir` and return its answer; None when no
    server is listening or it does not answer within `NOTIFY_TIMEOUT` seconds."""
    path = control_socket_path(Path(data_dir))
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(NOTIFY_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(json.dumps(event).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        reply = json.loads(line)
        return reply if isinstance(reply, dict) else None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
