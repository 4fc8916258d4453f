"""The composition root: builds and wires everything, owns the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from dovecote import __version__
from dovecote.config import Config, parse_listen
from dovecote.core import delivery
from dovecote.core.blocking import BlockingService
from dovecote.core.events import EventBus
from dovecote.core.modules import ModuleError, load_modules, module_names
from dovecote.core.rosters import RosterService
from dovecote.core.router import Router
from dovecote.core.sessions import SessionManager
from dovecote.core.throttle import AccountThrottle, AuthThrottle
from dovecote.jid import JID, InvalidJID
from dovecote.stream.tls import CertificateError, ServerTLS, ensure_self_signed, make_server_tls
from dovecote.xml.element import Element

log = logging.getLogger("dovecote")


class StartupError(Exception):
    """The server cannot start (port in use, unreadable certificate, ...)."""


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts: set[str] = set(config.server.domains)
        self.default_host: str = config.server.domains[0]
        self.events = EventBus()
        self.sessions = SessionManager()
        self.router = Router(self)
        #: Core services modules share (rosters and subscriptions, blocklists); they
        #: exist whichever modules are loaded.
        self.rosters = RosterService(self)
        self.blocking = BlockingService(self)
        #: Service domains (MUC, pubsub, ...) -> component with `async receive(event)`.
        self.components: dict[str, Any] = {}
        #: disco#info features of the server and of each account (filled by modules).
        self.features: set[str] = set()
        self.account_features: set[str] = set()
        #: IQs to an account that strangers may send, as "{type}/{ns}:{tag}" (filled by
        #: modules: PUBLIC_ACCOUNT_IQS); the router answers the others service-unavailable.
        self.public_account_iqs: set[str] = set()
        #: disco#info identities of each account (category, type, name).
        self.account_identities: list[tuple[str, str, str | None]] = [
            ("account", "registered", None)
        ]
        #: Extra stream features offered after authentication (SM, CSI, ...).
        self.stream_features: list[Element] = []
        #: Extra stream features offered before authentication (registration, ...).
        self.pre_auth_features: list[Element] = []
        #: Callables (session, stanza) -> bool that may hold back outgoing stanzas (CSI).
        self.send_filters: list[Any] = []
        #: Coroutine functions that wait until queued writes are durable (the archive's
        #: group commit); awaited before a client is told its stanzas are handled.
        self.durability_barriers: list[Any] = []
        self.auth_throttle = AuthThrottle(
            config.limits.auth_failures_before_delay, config.limits.max_auth_delay
        )
        self.account_throttle = AccountThrottle(
            config.auth.account_failures_before_delay,
            config.auth.max_account_delay,
            config.auth.account_failure_window,
        )
        #: Every client stream, bound or not (for shutdown).
        self.streams: set[Any] = set()
        #: Open client connections by address key (`limits.max_connections_per_ip`).
        self.connections_per_address: dict[str, int] = {}
        #: Connections refused per address key since one of its connections last closed
        #: (bounded by the keys with connections open).
        self.refused_per_address: dict[str, int] = {}
        #: XEP-0198 resumable sessions by id, and the last h of recently ended ones.
        self.sm_sessions: dict[str, Any] = {}
        self.sm_expired: dict[str, int] = {}
        self.storage: Any = None
        self.tls: ServerTLS | None = None
        #: Federation (core/s2s.py `S2SManager`); None when `[s2s] enabled` is false.
        self.s2s: Any = None
        self.modules: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        self.started_at = time.time()
        self.version = __version__
        self._listeners: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Background writes that acks wait for (`spawn_durable`).
        self._durable_tasks: set[asyncio.Task[Any]] = set()
        self._control: Any = None
        #: The HTTP application (WebSocket, host-meta, ...) when `[listen] http`/`https`.
        self.http: Any = None
        #: Route sets modules add to the HTTP application (HTTP upload, ...): each is
        #: called with the `HttpService` when it is built, after the modules' setup.
        self.http_routes: list[Callable[[Any], None]] = []

    # ---- background work ------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine in the background; errors are logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def spawn_durable(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Background work that must be complete before a client is told its stanzas
        were handled (XEP-0198 acks wait for it, see `wait_durable`)."""
        task = self.spawn(coro)
        self._durable_tasks.add(task)
        task.add_done_callback(self._durable_tasks.discard)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        from dovecote.storage.sql import open_storage

        config = self.config
        try:
            # First: a configuration that cannot work creates no files.
            names = module_names(config.modules.enabled, config.modules.disabled)
        except ModuleError as exc:
            raise StartupError(str(exc)) from None
        data_dir = config.data_path
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot create data_dir {str(data_dir)!r}: {exc.strerror}"
            ) from None
        self.tls = self._make_tls(data_dir)
        try:
            self.storage = await open_storage(
                config.storage_url, busy_timeout=config.storage.busy_timeout
            )
        except Exception as exc:
            raise StartupError(f"cannot open storage: {exc}") from None
        if config.s2s.enabled:
            from dovecote.core.s2s import S2SManager

            try:
                self.s2s = S2SManager(self)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(f"cannot set up federation (s2s): {exc}") from None
        delivery.setup(self)
        try:
            self.modules = load_modules(self, names)
        except ModuleError as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._listen("c2s", config.listen.c2s, direct_tls=False)
            await self._listen("c2s_tls", config.listen.c2s_tls, direct_tls=True)
            await self._listen_components()
            await self._listen_s2s()
            await self._listen_http()
            await self._start_components()
        except StartupError:
            await self.stop()
            raise
        await self._start_control(data_dir)
        self.started_at = time.time()
        log.info("Dovecote %s serving %s", self.version, ", ".join(sorted(self.hosts)))

    def _make_tls(self, data_dir: Path) -> ServerTLS:
        tls = self.config.tls
        try:
            if tls.cert and tls.key:
                return make_server_tls(Path(tls.cert).expanduser(), Path(tls.key).expanduser())
            domains = sorted(self.hosts)
            cert, key = ensure_self_signed(data_dir, domains)
            return make_server_tls(cert, key)
        except CertificateError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(
                f"cannot create a certificate in {data_dir}: {exc.strerror}"
            ) from None

    async def _listen(
        self,
        name: str,
        address: str,
        direct_tls: bool,
        protocol: Callable[[], asyncio.Protocol] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on `address` for client streams, or for what `protocol` makes (with
        `tls_context` rather than the XMPP one when given)."""
        if not address:
            return
        from dovecote.transport.tcp import C2STCPProtocol

        host, port = parse_listen(address)
        loop = asyncio.get_running_loop()
        ssl_context = None
        if direct_tls and self.tls:
            ssl_context = tls_context or self.tls.context
        try:
            listener = await loop.create_server(
                protocol or (lambda: C2STCPProtocol(self, self.tls, direct_tls)),
                host or None,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=self.config.limits.negotiation_timeout
                if ssl_context
                else None,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {address} ({name}): {reason}") from None
        self._listeners.append(listener)
        sockets = listener.sockets or []
        if sockets:
            self.ports[name] = sockets[0].getsockname()[1]
        log.info("listening for %s on %s:%s", name, host, self.ports.get(name))

    async def _listen_components(self) -> None:
        """XEP-0114: register the `[components]` domains, then accept their connections."""
        from dovecote.stream.component import register_components
        from dovecote.transport.component_tcp import ComponentTCPProtocol

        try:
            register_components(self)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        address = self.config.listen.component
        await self._listen("component", address, False, lambda: ComponentTCPProtocol(self))

    async def _listen_s2s(self) -> None:
        """RFC 6120 server-to-server streams on `[listen] s2s` (STARTTLS) and `s2s_tls`
        (XEP-0368 direct TLS, ALPN xmpp-server)."""
        if self.s2s is None:
            return
        from dovecote.transport.s2s_tcp import S2SIncomingProtocol

        listen = self.config.listen
        await self._listen("s2s", listen.s2s, False, lambda: S2SIncomingProtocol(self, False))
        s2s_context = self.s2s.server_context
        await self._listen(
            "s2s_tls", listen.s2s_tls, True, lambda: S2SIncomingProtocol(self, True), s2s_context
        )

    async def _listen_http(self) -> None:
        """The HTTP application on `[listen] http` and `https` (http/app.py)."""
        listen = self.config.listen
        if not (listen.http or listen.https):
            return
        from dovecote.http import HttpService

        self.http = HttpService(self)
        factory = await self.http.start()
        await self._listen("http", listen.http, False, factory)
        https_context = self.tls.http_context if self.tls else None
        await self._listen("https", listen.https, True, factory, https_context)

    async def _start_components(self) -> None:
        """Services on their own domains that listen themselves (the XEP-0065 proxy's
        SOCKS5 port) start here; one that cannot is a StartupError."""
        for component in list(self.components.values()):
            start = getattr(component, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception as exc:
                raise StartupError(str(exc)) from None

    async def _start_control(self, data_dir: Path) -> None:
        from dovecote.control import ControlServer

        self._control = ControlServer(data_dir, self._control_event)
        try:
            await self._control.start()
        except OSError as exc:
            log.warning(
                "control socket unavailable (%s); user commands will not reach this running server",
                exc,
            )
            self._control = None

    async def _control_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A `dovecote user ...` command changed an account, or `dovecote s2s` asks for
        the server-to-server links (see control.py)."""
        kind = event.get("event")
        if kind == "s2s-links":
            return {"links": self.s2s.describe() if self.s2s is not None else []}
        try:
            jid = JID.parse(str(event.get("jid", "")))
        except InvalidJID:
            return None
        if kind == "account-deleted":
            self.kick(jid, "not-authorized", "account deleted")
            await self.events.fire_all("account/deleted", jid.bare)
        elif kind == "password-changed":
            # RFC 6120 §4.9.3.16: the credentials changed; clients must reconnect.
            self.kick(jid, "reset", "password changed")
        return None

    async def wait_durable(self) -> None:
        """Everything handled so far is in storage (XEP-0198 acks wait for this)."""
        if self._durable_tasks:
            await asyncio.wait(list(self._durable_tasks))
        for barrier in self.durability_barriers:
            await barrier()

    def kick(self, jid: JID, condition: str, text: str) -> int:
        sessions = self.sessions.resources(jid.bare)
        for session in sessions:
            session.close(condition, text)
        return len(sessions)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        if self._control is not None:
            await self._control.close()
        # Services on their own domains say goodbye first (XEP-0045 §11.2, status 332:
        # every occupant is told the room goes away with the service).
        for component in list(self.components.values()):
            shutdown = getattr(component, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception:
                    log.exception("shutting down %r failed", component)
        if self.s2s is not None:
            self.s2s.stop()
        for stream in list(self.streams):
            stream.close("system-shutdown", "the server is shutting down")
        for session in list(self.sm_sessions.values()):
            session.close()  # hibernating: unacked messages go to offline storage
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 2)
        self._listeners.clear()
        if self.http is not None:
            # After the streams: WebSocket handlers end with their streams.
            await self.http.stop()
            self.http = None
        # Background work (unavailable broadcasts, offline storage of unacknowledged
        # messages, ...) may start more of it: wait until none is left, within bounds.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.wait_durable(), 10)
        if self.storage is not None:
            await self.storage.close()
            self.storage = None
        log.info("stopped")


def run(config: Config) -> None:
    """`dovecote serve`: run until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=config.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        uvloop = None
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None)
    with runner:
        runner.run(_serve(config))


def raise_open_file_limit() -> None:
    """Every connection is a file descriptor: use all the operating system allows this
    process, not the shell's default soft limit (often 1024)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit from %s: %s", soft, exc)
            return
    log.info("open file limit: %s", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


async def _serve(config: Config) -> None:
    raise_open_file_limit()
    server = Server(config)
    await server.start()
    # Everything loaded at start-up lives as long as the process: keep it out of the
    # cyclic garbage collector's full passes, which otherwise stall the loop on a big heap.
    # Fewer, cheaper collections too: most garbage here is acyclic and freed at once by
    # reference counting (measured: p99 delivery latency 13 ms -> 2 ms at 1000 msg/s).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
