"""Federation: `S2SManager` (`server.s2s`) sends stanzas for remote domains over
server-to-server links and keeps the links.

- One `OutgoingLink` per remote domain carries every local sender domain (XEP-0220 §2.6
  "Multiplexing": one `<db:result/>` per domain pair on the same stream). While the link
  is connected and the pair authenticated, stanzas wait in the link's queue, at most
  `[s2s] max_queue` per remote domain (one more: resource-constraint). When the link
  fails they go back to their senders with remote-server-not-found (no address, refused
  connection, no TLS, a refusal) or remote-server-timeout (no answer within
  `connect_timeout`), each error carrying the original stanza's children (RFC 6120 §8.3).
- Where to connect: `[s2s.routes]` first, else DNS (core/dns.py: SRV with XEP-0368
  direct TLS, then the domain itself on 5269).
- Dialback verification (XEP-0220 §2.1.2): an incoming stream asks `verify_key`; the
  question goes to the Authoritative Server over our outgoing link to that domain
  (opened if needed, no authentication needed for <db:verify/>).
- XEP-0288: an incoming bidirectional stream whose pair is authenticated carries our
  stanzas back to that peer.
- Block and allow lists apply both ways.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dovecote.config import DIRECT_TLS_ROUTE, parse_listen
from dovecote.core.dns import Resolver, Target
from dovecote.core.events import describe
from dovecote.stream import certs
from dovecote.stream.errors import StanzaError, error_reply
from dovecote.stream.s2s_negotiation import S2SConfig, dialback_key
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server
    from dovecote.stream.s2s import IncomingS2SStream, OutgoingS2SStream

log = logging.getLogger(__name__)

SECRET_FILE = "s2s-secret"


def load_secret(configured: str | None, data_dir: Path) -> str:
    """The dialback secret: configured, or random once and kept in data_dir (so keys
    handed out before a restart still verify, and cluster nodes can share the file)."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
        if len(secret) >= 16:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def bounce_stanza(server: Server, stanza: Element, condition: str, text: str = "") -> None:
    """Return `stanza` to its sender with a stanza error (never an error for an error or
    an IQ result, RFC 6120 §8.3.1); the error carries the original children (§8.3)."""
    kind = stanza.attrs.get("type")
    if kind == "error" or (stanza.tag == "iq" and kind == "result"):
        return
    if not stanza.attrs.get("from"):
        return
    server.router.route_soon(error_reply(stanza, StanzaError(condition, text)))


class OutgoingLink:
    """Our stanzas to one remote domain, over one stream (see the module docstring)."""

    def __init__(self, manager: S2SManager, remote: str) -> None:
        self.manager = manager
        self.server = manager.server
        self.remote = remote
        self.stream: OutgoingS2SStream | None = None
        #: Sender domain -> stanzas waiting for its pair to be authenticated.
        self.queues: dict[str, deque[Element]] = {}
        self.queued = 0
        #: Sender domain -> the timer that bounces its queue with remote-server-timeout.
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        #: (local, stream id) -> the future of a verification (XEP-0220 §2.1.2).
        self.verifications: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._verify_requests: list[tuple[str, str, str]] = []
        #: The keys of those verifications (asked again on the next target).
        self._keys: dict[tuple[str, str], str] = {}
        self._connecting: asyncio.Task[None] | None = None
        self.closed = False
        #: Targets not tried yet (RFC 6120 §3.2.1: the next one when a connection fails
        #: before the stream is ready: refused, TLS failed or not offered, a stream
        #: error), and the time by which one must work.
        self._candidates: deque[tuple[Target, str, int]] = deque()
        self._deadline = 0.0
        self._reasons: list[str] = []

    def __repr__(self) -> str:
        return f"<OutgoingLink {self.remote} queued={self.queued}>"

    # ---- sending ----------------------------------------------------------------------
    def send(self, stanza: Element, local: str) -> None:
        stream = self.stream
        if stream is not None and stream.has_pair(local):
            stream.send(stanza)
            return
        if self.queued >= self.manager.config.max_queue:
            bounce_stanza(
                self.server,
                stanza,
                "resource-constraint",
                f"too many stanzas wait for {self.remote}",
            )
            return
        queue = self.queues.get(local)
        if queue is None:
            queue = self.queues[local] = deque()
            loop = asyncio.get_running_loop()
            timeout = self.manager.config.connect_timeout
            self._deadlines[local] = loop.call_later(timeout, self._timed_out, local)
        queue.append(stanza)
        self.queued += 1
        if stream is not None:
            stream.request_pair(local)
        else:
            self._connect(local)

    def verify(self, local: str, stream_id: str, key: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        existing = self.verifications.get((local, stream_id))
        if existing is not None:
            return existing
        self.verifications[(local, stream_id)] = future
        self._keys[(local, stream_id)] = key
        if self.stream is not None:
            self.stream.verify_key(local, stream_id, key)
        else:
            self._verify_requests.append((local, stream_id, key))
            self._connect(local)
        return future

    # ---- connecting (RFC 6120 §3.2) ---------------------------------------------------------
    def _connect(self, local: str) -> None:
        if self._connecting is None and self.stream is None and not self.closed:
            self._connecting = self.server.spawn(self._open(local))

    async def _open(self, local: str) -> None:
        manager = self.manager
        config = manager.config
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + config.connect_timeout
        self._reasons = []
        self._candidates.clear()
        try:
            targets = await asyncio.wait_for(manager.targets(self.remote), config.connect_timeout)
            for target in targets:
                addresses = await manager.resolver.addresses(target.host, target.port)
                if not addresses:
                    self._reasons.append(f"{target.host}: no address")
                self._candidates.extend((target, host, port) for host, port in addresses)
            if not targets:
                self._reasons.append("the domain offers no XMPP service")
        except TimeoutError:
            self._connecting = None
            self._reasons.append("DNS timed out")
            self._give_up(timed_out=True)
            return
        await self._try_candidates(local)

    async def _try_candidates(self, local: str) -> None:
        """Connect to the next candidate that answers; give up when none is left."""
        loop = asyncio.get_running_loop()
        timed_out = False
        try:
            while self._candidates:
                target, host, port = self._candidates.popleft()
                left = self._deadline - loop.time()
                if left <= 0:
                    timed_out = True
                    break
                if self._verify_requests or self.queues:
                    local = next(iter(self.queues), None) or self._verify_requests[0][0]
                try:
                    await asyncio.wait_for(self._connect_to(target, host, port, local), left)
                    return
                except TimeoutError:
                    timed_out = True
                    self._reasons.append(f"{host}:{port}: timed out")
                    break
                except (OSError, ssl.SSLError) as exc:
                    self._reasons.append(f"{host}:{port}: {exc.strerror or exc}")
        finally:
            self._connecting = None
        self._give_up(timed_out)

    def _give_up(self, timed_out: bool) -> None:
        condition = "remote-server-timeout" if timed_out else "remote-server-not-found"
        text = "; ".join(self._reasons) or "no route"
        log.info("cannot connect to %s: %s", self.remote, text)
        self.fail(condition, f"cannot reach {self.remote}")

    async def _connect_to(self, target: Target, host: str, port: int, local: str) -> None:
        from dovecote.transport.s2s_tcp import S2SOutgoingProtocol

        loop = asyncio.get_running_loop()
        context = self.manager.client_context if target.direct_tls else None
        _transport, protocol = await loop.create_connection(
            lambda: S2SOutgoingProtocol(self.server, self, local, target.direct_tls),
            host,
            port,
            ssl=context,
            server_hostname=self.remote if context is not None else None,
        )
        stream = protocol.stream
        if stream is None:  # refused at once (over a limit)
            raise ConnectionError("connection closed")
        self.stream = stream
        for local_domain in self.queues:
            stream.request_pair(local_domain)
        requests, self._verify_requests = self._verify_requests, []
        for lo, stream_id, key in requests:
            stream.verify_key(lo, stream_id, key)

    # ---- what the stream reports -----------------------------------------------------------
    def stream_ready(self, stream: OutgoingS2SStream) -> None:
        pass

    def pair_ready(self, stream: OutgoingS2SStream, local: str) -> None:
        deadline = self._deadlines.pop(local, None)
        if deadline is not None:
            deadline.cancel()
        queue = self.queues.pop(local, None)
        if not queue:
            return
        self.queued -= len(queue)
        for stanza in queue:
            stream.send(stanza)

    def pair_rejected(
        self, stream: OutgoingS2SStream, local: str, condition: str, text: str
    ) -> None:
        self._bounce_queue(local, condition, text or f"{self.remote} refused {local}")

    def key_verified(self, local: str, stream_id: str, result: str) -> None:
        future = self.verifications.pop((local, stream_id), None)
        self._keys.pop((local, stream_id), None)
        if future is not None and not future.done():
            future.set_result(result)

    def stream_ended(self, stream: OutgoingS2SStream) -> None:
        if self.stream is not stream:
            return
        self.stream = None
        if (
            not stream.machine.ready
            and not stream.timed_out
            and self._candidates
            and (self.queues or self.verifications)
            and not self.closed
        ):
            # RFC 6120 §3.2.1: this target failed before the stream was usable (TLS
            # failed or not offered, a stream error): the next one.
            condition, text = stream.failure or ("remote-server-not-found", "stream ended")
            self._reasons.append(f"{stream.transport.peer_address}: {text or condition}")
            self._verify_requests = [
                (lo, sid, self._keys[(lo, sid)])
                for (lo, sid), future in self.verifications.items()
                if not future.done() and (lo, sid) in self._keys
            ]
            self._connecting = self.server.spawn(self._try_candidates(stream.machine.local))
            return
        condition, text = stream.failure or ("remote-server-not-found", "")
        if not stream.machine.pairs and stream.failure is None:
            # Closed before anything was authenticated (a timeout or a dropped stream).
            condition = "remote-server-timeout" if stream.timed_out else condition
        self.fail(condition, text or f"the stream to {self.remote} ended")

    def _timed_out(self, local: str) -> None:
        self._deadlines.pop(local, None)
        self._bounce_queue(local, "remote-server-timeout", f"{self.remote} did not answer in time")
        stream = self.stream
        if stream is not None and not stream.machine.pairs and not self.queues:
            stream.close()

    def _bounce_queue(self, local: str, condition: str, text: str) -> None:
        deadline = self._deadlines.pop(local, None)
        if deadline is not None:
            deadline.cancel()
        queue = self.queues.pop(local, None) or ()
        self.queued -= len(queue)
        for stanza in queue:
            bounce_stanza(self.server, stanza, condition, text)

    def fail(self, condition: str, text: str) -> None:
        """The link is gone: bounce what waits, fail the verifications, forget the link."""
        for local in list(self.queues):
            self._bounce_queue(local, condition, text)
        verify_result = (
            "remote-server-timeout"
            if condition == "remote-server-timeout"
            else "remote-connection-failed"
        )
        for future in self.verifications.values():
            if not future.done():
                future.set_result(verify_result)
        self.verifications.clear()
        self._verify_requests.clear()
        self._keys.clear()
        if self.stream is None:
            self.manager.link_gone(self)

    def close(self) -> None:
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        stream = self.stream
        if stream is not None:
            stream.close()
        self.fail("remote-server-not-found", "the server is shutting down")

    def describe(self) -> dict[str, Any] | None:
        if self.stream is not None:
            return self.stream.describe()
        return {
            "direction": "out",
            "local": [],
            "remote": [self.remote],
            "auth": "connecting",
            "tls": None,
            "certificate": "-",
            "bidi": False,
            "idle": 0.0,
            "peer": "",
        }


class S2SManager:
    """`server.s2s`: see the module docstring."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config.s2s
        self.routes: dict[str, str] = dict(self.config.routes)
        self.resolver = Resolver(self.config.nameservers)
        self.secret = load_secret(self.config.dialback_secret, server.config.data_path)
        self.links: dict[str, OutgoingLink] = {}
        #: Authenticated incoming streams by (local, remote) pair (XEP-0288: a bidi one
        #: carries our stanzas back).
        self.incoming: dict[tuple[str, str], IncomingS2SStream] = {}
        self.blocked = frozenset(self.config.blocked_domains)
        self.allowed = frozenset(self.config.allowed_domains)
        self.negotiation_config = S2SConfig(
            is_local=self.is_local,
            default_host=server.default_host,
            secret=self.secret,
            tls_required=self.config.require_tls and server.tls is not None,
            dialback=self.config.dialback,
            bidi=self.config.bidi,
            domain_allowed=self.domain_allowed,
            require_valid_certs=self.config.require_valid_certs,
        )
        #: Certificates are checked after the handshake (stream/certs.py); false: only
        #: OpenSSL's own checks (require_valid_certs then fails the handshake itself).
        self.check_certificates = certs.available()
        self.client_context = self._client_context()
        self.server_context = self._server_context()
        self.own_identities = self._own_identities()

    def _trust(self, context: ssl.SSLContext) -> None:
        config = self.config
        if config.ca_file or config.ca_path:
            context.load_verify_locations(cafile=config.ca_file, capath=config.ca_path)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)

    def _client_context(self) -> ssl.SSLContext:
        """TLS for our outgoing links: our certificate is presented (SASL EXTERNAL on the
        peer's side, XEP-0178 §4); the peer's is checked after the handshake (chain
        against `ca_file`/`ca_path`/the system's, then RFC 6125 names for the domain,
        stream/certs.py), never by OpenSSL's plain host name check. An untrusted
        certificate does not stop the handshake unless `require_valid_certs` is on:
        dialback authenticates then."""
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        self._trust(context)
        tls = self.server.tls
        if tls is not None and tls.key_path is not None:
            context.load_cert_chain(tls.cert_path, tls.key_path)
        context.set_alpn_protocols(["xmpp-server"])
        if not certs.accept_any_certificate(context):
            context.verify_mode = ssl.CERT_REQUIRED if config.require_valid_certs else ssl.CERT_NONE
        return context

    def _server_context(self) -> ssl.SSLContext | None:
        """TLS for incoming streams (STARTTLS and `[listen] s2s_tls`): our certificate,
        ALPN xmpp-server (XEP-0368), and the peer's certificate requested (for SASL
        EXTERNAL, XEP-0178 §3) without refusing an untrusted one in the handshake."""
        tls = self.server.tls
        if tls is None or tls.key_path is None:
            return tls.s2s_context if tls is not None else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION
        context.set_alpn_protocols(["xmpp-server"])
        context.load_cert_chain(tls.cert_path, tls.key_path)
        if self.check_certificates:
            self._trust(context)
            certs.accept_any_certificate(context)
        elif self.config.require_valid_certs:
            # Without the verdict after the handshake: OpenSSL refuses untrusted client
            # certificates in the handshake itself (and peers without one).
            self._trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _own_identities(self) -> certs.Identities:
        tls = self.server.tls
        if tls is None:
            return certs.Identities()
        der = ssl.PEM_cert_to_DER_cert(tls.cert_path.read_text())
        return certs.identities(der)

    def can_use_external(self, local: str) -> bool:
        """Our certificate names `local` (RFC 6125): worth trying SASL EXTERNAL."""
        return self.own_identities.matches(local)

    def certificate_problem(
        self, ssl_object: Any, domain: str, outgoing: bool = False
    ) -> str | None:
        """Why the peer's certificate on `ssl_object` does not authenticate `domain`
        (completing "Your server's certificate ..."), None when it does."""
        if not self.check_certificates:
            # No verdict after the handshake: only a handshake made with CERT_REQUIRED
            # (require_valid_certs) has verified the chain.
            context = self.client_context if outgoing else self.server_context
            if context is None or context.verify_mode != ssl.CERT_REQUIRED:
                return "could not be validated"
            peer = certs.peer_certificate(ssl_object, verified_by_openssl=True)
        else:
            peer = certs.peer_certificate(ssl_object)
        if peer.der is None:
            return "was not presented"
        if not peer.trusted:
            if "self-signed" in peer.error or "self signed" in peer.error:
                return "is self-signed"
            if "expired" in peer.error:
                return "has expired"
            return f"is not trusted ({peer.error})"
        if not certs.identities(peer.der).matches(domain):
            return f"is not valid for {domain}"
        return None

    # ---- policy ---------------------------------------------------------------------------
    def is_local(self, domain: str) -> bool:
        return domain in self.server.hosts or domain in self.server.components

    def domain_allowed(self, domain: str) -> bool:
        if domain in self.blocked:
            return False
        return not self.allowed or domain in self.allowed

    async def targets(self, domain: str) -> list[Target]:
        route = self.routes.get(domain)
        if route is not None:
            # "host:port": STARTTLS; "tls://host:port": direct TLS (XEP-0368).
            direct_tls = route.startswith(DIRECT_TLS_ROUTE)
            host, port = parse_listen(route.removeprefix(DIRECT_TLS_ROUTE))
            return [Target(host, port, direct_tls)]
        return await self.resolver.targets(domain)

    # ---- routing (from core/router.py) -------------------------------------------------------
    async def route(self, event: StanzaEvent) -> None:
        """A stanza for a domain that is not ours."""
        remote = event.to.domain
        local = event.sender.domain
        if not self.is_local(local):
            # We relay nothing between two remote domains.
            raise StanzaError("not-allowed", "this server does not relay between remote domains")
        if not self.domain_allowed(remote):
            raise StanzaError("not-allowed", f"federation with {remote} is not allowed")
        stanza = event.stanza
        if not stanza.attrs.get("from"):
            stanza = stanza.shallow_copy()
            stanza.attrs["from"] = str(event.sender)
        stream = self.incoming.get((local, remote))
        if stream is not None and stream.machine.bidi and stream.state != "closed":
            # XEP-0288: a bidirectional stream from the peer with this pair authenticated.
            stream.send(stanza)
            return
        link = self.links.get(remote)
        if link is None:
            limit = self.config.max_outgoing
            if limit and len(self.links) >= limit:
                raise StanzaError("resource-constraint", "too many server-to-server links")
            link = self.links[remote] = OutgoingLink(self, remote)
        log.debug("s2s %s -> %s: %s", local, remote, describe(stanza))
        link.send(stanza, local)

    def link_gone(self, link: OutgoingLink) -> None:
        if self.links.get(link.remote) is link:
            del self.links[link.remote]

    # ---- dialback verification (XEP-0220 §2.1.2) ---------------------------------------------
    async def verify_key(self, target: str, sender: str, stream_id: str, key: str) -> str:
        """Ask the Authoritative Server for `sender` about `key`: "valid", "invalid" or
        the dialback error condition (XEP-0220 §2.4)."""
        link = self.links.get(sender)
        if link is None:
            link = self.links[sender] = OutgoingLink(self, sender)
        try:
            return await asyncio.wait_for(
                asyncio.shield(link.verify(target, stream_id, key)), self.config.connect_timeout
            )
        except TimeoutError:
            return "remote-server-timeout"

    def expected_key(self, receiving: str, originating: str, stream_id: str) -> str:
        return dialback_key(self.secret, receiving, originating, stream_id)

    # ---- incoming streams -------------------------------------------------------------------
    def incoming_authenticated(self, stream: IncomingS2SStream, local: str, remote: str) -> None:
        self.incoming[(local, remote)] = stream

    def incoming_ended(self, stream: IncomingS2SStream) -> None:
        for key in [key for key, value in self.incoming.items() if value is stream]:
            del self.incoming[key]

    def incoming_count(self) -> int:
        from dovecote.stream.s2s import IncomingS2SStream

        return sum(1 for s in self.server.streams if isinstance(s, IncomingS2SStream))

    # ---- operators ------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """The open links, for `dovecote s2s` (through the control socket)."""
        from dovecote.stream.s2s import IncomingS2SStream

        rows: list[dict[str, Any]] = []
        for link in self.links.values():
            row = link.describe()
            if row is not None:
                rows.append(row)
        for stream in self.server.streams:
            if isinstance(stream, IncomingS2SStream) and stream.state != "closed":
                rows.append(stream.describe())
        return rows

    def stop(self) -> None:
        for link in list(self.links.values()):
            link.close()
        self.links.clear()
