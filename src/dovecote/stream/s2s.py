"""Server-to-server streams: the drivers of the machines in `stream/s2s_negotiation.py`.

`IncomingS2SStream` (a peer connected to us) and `OutgoingS2SStream` (we connected to a
peer, for an `OutgoingLink` of core/s2s.py) feed parsed input to their machine and carry
out its actions: writes, TLS, asking the Authoritative Server (through the manager),
telling the link which domain pairs are authenticated, and routing accepted stanzas
with `server.router.route` (they arrive re-qualified as jabber:client). They own no
socket: the transport (transport/s2s_tcp.py) does; idle links are closed here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dovecote.stream import s2s_negotiation as neg
from dovecote.stream.base import StreamBase
from dovecote.stream.errors import StreamError
from dovecote.xml.element import Element
from dovecote.xml.parser import ElementReceived, ParserEvent, StreamClosed, StreamOpened

if TYPE_CHECKING:
    from dovecote.core.s2s import OutgoingLink
    from dovecote.server import Server

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _KeyAnswer:
    """The Authoritative Server's answer, fed through the input queue (keeps order)."""

    target: str
    sender: str
    result: str


class S2SStream(StreamBase):
    """What both directions share: the action loop, idle timer, output."""

    direction = "?"
    max_queued = 256
    machine: Any

    def __init__(self, server: Server, transport: Any) -> None:
        self.server = server
        self.transport = transport
        self.state = "open"
        self._header_sent = False
        self._init_input()
        self.last_active = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.auth_method = "dialback"
        self._arm_idle()

    # ---- idle links -----------------------------------------------------------------
    def _arm_idle(self, delay: float | None = None) -> None:
        timeout = self.server.config.s2s.idle_timeout
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(delay if delay is not None else timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.state == "closed":
            return
        left = self.last_active + self.server.config.s2s.idle_timeout - time.monotonic()
        if left > 0:
            self._arm_idle(left)
            return
        log.info("closing idle %r", self)
        self.close()

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_active

    # ---- input ------------------------------------------------------------------------
    async def _handle(self, event: ParserEvent | _KeyAnswer) -> None:  # type: ignore[override]
        self.last_active = time.monotonic()
        machine = self.machine
        if isinstance(event, ElementReceived):
            await self._drive(machine.element(event.element))
        elif isinstance(event, StreamOpened):
            await self._drive(machine.stream_opened(event.header))
        elif isinstance(event, StreamClosed):
            await self._drive(machine.stream_closed())
        elif isinstance(event, _KeyAnswer):
            await self._drive(machine.key_verified(event.target, event.sender, event.result))

    async def _drive(self, actions: list[neg.Action]) -> None:
        pending = deque(actions)
        while pending and self.state != "closed":
            more = await self._carry_out(pending.popleft())
            if more:
                pending.extend(more)

    async def _carry_out(self, action: neg.Action) -> list[neg.Action] | None:
        transport = self.transport
        match action:
            case neg.SendHeader(attrs):
                transport.send_header(attrs)
                self._header_sent = True
            case neg.Send(element):
                transport.send_element(element)
            case neg.ResetStream():
                transport.reset_stream()
            case neg.StartTLS():
                # Clear-text input pipelined after <proceed/>/<starttls/> is dropped.
                self._queue.clear()
                try:
                    await transport.starttls()
                except Exception as exc:
                    log.info("TLS with %s failed: %s", transport.peer_address, exc)
                    return self.machine.tls_failed()
                return self._tls_done(self.machine.tls_started())
            case neg.StreamError(condition, text):
                self._stream_error(StreamError(condition, text))
            case neg.Close(graceful):
                if graceful:
                    self.close()
                else:
                    self._ending = True
                    transport.close()
                    self.connection_lost()
            case neg.Stanza(element):
                await self.server.router.route(element)
            case _:
                return self._carry_out_own(action)
        return None

    def _carry_out_own(self, action: neg.Action) -> list[neg.Action] | None:
        raise NotImplementedError

    def _tls_done(self, actions: list[neg.Action]) -> list[neg.Action]:
        """TLS is up (STARTTLS or direct): look at the peer's certificate."""
        return actions

    def _ssl_object(self) -> Any:
        raw = getattr(self.transport, "_transport", None)
        return raw.get_extra_info("ssl_object") if raw is not None else None

    # ---- output -----------------------------------------------------------------------
    def send(self, stanza: Element) -> None:
        if self.state == "closed":
            return
        self.last_active = time.monotonic()
        self.transport.send_element(stanza)

    def _send_header(self) -> None:
        for action in self.machine.error_header():
            self.transport.send_header(action.attrs)
            self._header_sent = True

    def connection_lost(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self._queue.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._ended()

    def _ended(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def _not_checked(_domain: str) -> str:
    return "was not checked"


class IncomingS2SStream(S2SStream):
    """A peer server's stream to us: we are the Receiving (and Authoritative) Server."""

    direction = "in"

    def __init__(self, server: Server, transport: Any) -> None:
        super().__init__(server, transport)
        manager = server.s2s
        assert manager is not None
        self.manager = manager
        self.machine = neg.IncomingNegotiation(
            manager.negotiation_config,
            secure=transport.secure,
            can_starttls=transport.can_starttls,
        )
        # XEP-0178 §3 step 5: the machine asks, per domain, whether the certificate the
        # peer presented (TLS by STARTTLS or from the first byte) is trusted and names it.
        self.machine.certificate_problem = self._certificate_problem

    def _certificate_problem(self, domain: str) -> str | None:
        if not self.transport.secure:
            return "was not presented"
        return self.manager.certificate_problem(self._ssl_object(), domain)

    def _certificate_status(self, remote: str | None) -> str:
        if remote is None or not self.transport.secure:
            return "-"
        return "valid" if self._certificate_problem(remote) is None else "invalid"

    def __repr__(self) -> str:
        pairs = ",".join(f"{r}->{lo}" for lo, r in sorted(self.machine.pairs)) or "-"
        return f"<IncomingS2SStream {pairs} from {self.transport.peer_address}>"

    def _carry_out_own(self, action: neg.Action) -> list[neg.Action] | None:
        match action:
            case neg.VerifyKey(target, sender, stream_id, key):
                self.server.spawn(self._verify(target, sender, stream_id, key))
            case neg.PairAuthenticated(local, remote, method):
                self.auth_method = method
                self.transport.stream_bound()
                log.info(
                    "incoming s2s from %s to %s authenticated (%s) from %s",
                    remote,
                    local,
                    method,
                    self.transport.peer_address,
                )
                self.manager.incoming_authenticated(self, local, remote)
        return None

    async def _verify(self, target: str, sender: str, stream_id: str, key: str) -> None:
        result = await self.manager.verify_key(target, sender, stream_id, key)
        if self.state != "closed":
            self.receive([_KeyAnswer(target, sender, result)])  # type: ignore[list-item]

    def has_pair(self, local: str, remote: str) -> bool:
        return (local, remote) in self.machine.pairs or self.machine.external_domain == remote

    def _ended(self) -> None:
        self.manager.incoming_ended(self)
        # The machine held a bound method of this stream: no cycle is left behind.
        self.machine.certificate_problem = _not_checked

    def describe(self) -> dict[str, Any]:
        machine = self.machine
        pairs = sorted(machine.pairs)
        if machine.external_domain is not None:
            pairs.append((machine.local_domain or "", machine.external_domain))
        return {
            "direction": "in",
            "local": sorted({lo for lo, _r in pairs}),
            "remote": sorted({r for _lo, r in pairs}) or [machine.remote_domain or "?"],
            "auth": self.auth_method if pairs else "none",
            "tls": self.transport.tls_version(),
            "certificate": self._certificate_status(pairs[0][1] if pairs else None),
            "bidi": machine.bidi,
            "idle": round(self.idle_seconds(), 1),
            "peer": self.transport.peer_address,
        }


class OutgoingS2SStream(S2SStream):
    """Our stream to a peer server, carrying `link`: we are the Initiating Server (and the
    Receiving Server asking the Authoritative Server with <db:verify/>)."""

    direction = "out"

    def __init__(self, server: Server, transport: Any, link: OutgoingLink, local: str) -> None:
        super().__init__(server, transport)
        self.link = link
        manager = server.s2s
        assert manager is not None
        self.machine = neg.OutgoingNegotiation(
            manager.negotiation_config,
            local,
            link.remote,
            secure=transport.secure,
            can_starttls=True,
        )
        self.machine.use_external = manager.can_use_external(local)
        #: The peer's certificate for its domain: "valid", "invalid" or "-" (no TLS yet).
        self.certificate = "-"
        #: Why the stream failed: the stanza error for what was queued.
        self.failure: tuple[str, str] | None = None
        #: The peer did not complete negotiation within `connect_timeout`.
        self.timed_out = False

    def __repr__(self) -> str:
        pairs = ",".join(sorted(self.machine.pairs)) or "-"
        return f"<OutgoingS2SStream {pairs}->{self.link.remote} {self.machine.state}>"

    def start(self) -> None:
        """The connection is up: open the stream, then ask for what the link wants."""
        actions = self.machine.start()
        if self.transport.secure:  # direct TLS (XEP-0368)
            actions = self._tls_done(actions)
        self.server.spawn(self._drive(actions))

    def _tls_done(self, actions: list[neg.Action]) -> list[neg.Action]:
        """RFC 6120 §13.7.2.1, XEP-0178: with `require_valid_certs` the peer's
        certificate must be trusted and name the remote domain (RFC 6125), else the
        link fails before anything is sent."""
        manager = self.server.s2s
        assert manager is not None
        problem = manager.certificate_problem(self._ssl_object(), self.link.remote, outgoing=True)
        self.certificate = "valid" if problem is None else "invalid"
        if problem is not None and manager.config.require_valid_certs:
            log.info("certificate of %s %s: refused", self.link.remote, problem)
            return actions + self.machine.certificate_refused(
                f"Your server's certificate {problem}"
            )
        return actions

    def request_pair(self, local: str) -> None:
        self.server.spawn(self._drive(self.machine.request_pair(local)))

    def verify_key(self, local: str, stream_id: str, key: str) -> None:
        self.server.spawn(self._drive(self.machine.verify_key(local, stream_id, key)))

    def has_pair(self, local: str) -> bool:
        return local in self.machine.pairs and self.state != "closed"

    def _carry_out_own(self, action: neg.Action) -> list[neg.Action] | None:
        link = self.link
        match action:
            case neg.PairAuthenticated(local, remote, method):
                self.auth_method = method
                self.transport.stream_bound()
                log.info("outgoing s2s from %s to %s authenticated (%s)", local, remote, method)
                link.pair_ready(self, local)
            case neg.PairRejected(local, remote, condition, text):
                log.info("%s refused dialback from %s: %s", remote, local, text or condition)
                link.pair_rejected(self, local, condition, text)
            case neg.KeyVerified(local, remote, stream_id, result):
                link.key_verified(local, stream_id, result)
            case neg.LinkFailed(condition, text):
                log.info("s2s link to %s failed: %s", link.remote, text or condition)
                self.failure = (condition, text)
            case neg.ReadyForDialback():
                link.stream_ready(self)
        return None

    def fail(self, condition: str, text: str = "") -> None:
        if condition == "connection-timeout":
            self.timed_out = True
            self.failure = ("remote-server-timeout", f"{self.link.remote} did not answer in time")
        super().fail(condition, text)

    def _ended(self) -> None:
        self.link.stream_ended(self)

    def describe(self) -> dict[str, Any]:
        return {
            "direction": "out",
            "local": sorted(self.machine.pairs),
            "remote": [self.link.remote],
            "auth": self.auth_method if self.machine.pairs else "none",
            "tls": self.transport.tls_version(),
            "certificate": self.certificate,
            "bidi": self.machine.bidi,
            "idle": round(self.idle_seconds(), 1),
            "peer": self.transport.peer_address,
        }
