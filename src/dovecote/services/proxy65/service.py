"""The SOCKS5 bytestreams proxy at `[proxy65] domain` (XEP-0065 §4, §6).

The service is a component of the server (`server.components[domain]`), so the server's
disco#items lists it (XEP-0065 §4: clients find proxies there). It answers

- disco#info (§4): identity proxy/bytestreams, feature http://jabber.org/protocol/bytestreams;
- the network address request (§4, "Requester Requests Network Address from Proxy"): an
  IQ-get with an empty bytestreams <query/>, answered with one <streamhost/> (jid, host,
  port); a JID the proxy does not serve (`[proxy65] allowed = "local"`) gets forbidden;
- activation (§6.3.5): an IQ-set with <query sid=...><activate>target</activate></query>
  from the Requester. The proxy hashes SID + the IQ's 'from' + the target and looks for the
  connections that sent that hash as DST.ADDR: none (which is also what another JID than
  the Requester finds, as its JID is in the hash) is item-not-found, one is not-allowed
  ("only one party is connected"), two are paired and relayed.

The listener (`start`) accepts SOCKS5 connections (`relay.Socks5Connection`); the service
counts them (`max_connections`, `max_connections_per_ip`) and keeps those waiting for
activation by hash (at most two per hash: XEP-0065 §9.1 allows one Target per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from typing import TYPE_CHECKING

from dovecote.config import parse_listen
from dovecote.core.throttle import address_key
from dovecote.jid import JID, InvalidJID
from dovecote.services.proxy65.relay import Relay, Socks5Connection
from dovecote.services.proxy65.socks5 import (
    REP_NOT_ALLOWED,
    connect_reply,
    failure_reply,
    stream_hash,
)
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns as xns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.config import Proxy65Section
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

log = logging.getLogger(__name__)

#: XEP-0065 §11.2 (Registrar: protocol namespace).
BYTESTREAMS = "http://jabber.org/protocol/bytestreams"

FEATURES = (BYTESTREAMS, xns.DISCO_INFO, xns.DISCO_ITEMS, xns.PING)


class StartupFailure(Exception):
    """The listener cannot be opened (the server turns this into a StartupError)."""


class Proxy65Service:
    """`server.components[domain]`: the proxy's stanzas; `start()` opens the listener."""

    def __init__(self, server: Server, policy: Proxy65Section) -> None:
        assert policy.domain is not None
        self.server = server
        self.policy = policy
        self.domain: str = policy.domain
        #: The name in the server's disco#items and the identity (XEP-0065 §4 example).
        self.name = "File transfer proxy"
        self.host = ""
        self.port = 0
        self._listener: asyncio.AbstractServer | None = None
        #: Every open SOCKS5 connection (limits, shutdown).
        self.connections: set[Socks5Connection] = set()
        self.per_address: dict[str, int] = {}
        #: Address keys refused since they were last under the limit (one WARNING each).
        self._refused: set[str] = set()
        #: Connections that sent a stream hash, waiting for the other end or activation.
        self.waiting: dict[str, list[Socks5Connection]] = {}
        self.relays: set[Relay] = set()

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        host, port = parse_listen(self.policy.address)
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                lambda: Socks5Connection(self),
                host or None,
                port,
                reuse_address=True,
                backlog=256,
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupFailure(
                f"cannot listen on {self.policy.address} (proxy65): {reason}"
            ) from None
        sockets = self._listener.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self.host = self._public_host(host)
        self.server.ports["proxy65"] = self.port
        log.info(
            "SOCKS5 bytestreams proxy %s listening on %s:%s (announced as %s:%s)",
            self.domain,
            host,
            self.port,
            self.host,
            self.port,
        )

    def _public_host(self, bound: str) -> str:
        """What <streamhost host=.../> says: `public_host`, else the bound address, else
        (bound to every address) the server's first domain. IPv6 in RFC 5952 form (§4)."""
        host = self.policy.public_host or bound
        if not host or host in ("0.0.0.0", "::"):
            host = self.server.default_host
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(host).compressed
        return host

    def shutdown(self) -> None:
        """The server stops: no new connections, every open one closed."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for relay in list(self.relays):
            relay.close(graceful=False)
        for conn in list(self.connections):
            conn.abort()

    # ---- connections (called by Socks5Connection) --------------------------------------
    def admit(self, conn: Socks5Connection) -> bool:
        """Count a new connection; False (it is closed at once) beyond the limits."""
        policy = self.policy
        key = address_key(conn.peer_address)
        if len(self.connections) >= policy.max_connections:
            self._refuse(key, f"the proxy has {policy.max_connections} connections open")
            return False
        count = self.per_address.get(key, 0)
        if policy.max_connections_per_ip and count >= policy.max_connections_per_ip:
            self._refuse(key, f"{count} connections from {key} are open")
            return False
        self.per_address[key] = count + 1
        conn.counted_as = key
        self.connections.add(conn)
        return True

    def _refuse(self, key: str, why: str) -> None:
        # One WARNING per address while it stays over a limit, not one per connection.
        level = logging.DEBUG if key in self._refused else logging.WARNING
        self._refused.add(key)
        log.log(level, "SOCKS5 connection from %s refused: %s", key, why)

    def connected(self, conn: Socks5Connection, dst_addr: str) -> None:
        """The CONNECT request is complete: wait with the other end of that hash."""
        peers = self.waiting.setdefault(dst_addr, [])
        if len(peers) >= 2:
            # XEP-0065 §9.1: one Target per bytestream.
            log.info(
                "SOCKS5 connection from %s refused: stream %s has both ends connected",
                conn.peer_address,
                dst_addr,
            )
            conn.write(failure_reply(REP_NOT_ALLOWED))
            conn.close()
            return
        peers.append(conn)
        conn.hash = dst_addr
        conn.write(connect_reply(dst_addr))

    def disconnected(self, conn: Socks5Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        key = conn.counted_as
        if key is not None:
            left = self.per_address.get(key, 1) - 1
            if left > 0:
                self.per_address[key] = left
            else:
                self.per_address.pop(key, None)
            self._refused.discard(key)
        if conn.hash is not None and conn.relay is None:
            peers = self.waiting.get(conn.hash)
            if peers is not None and conn in peers:
                peers.remove(conn)
                if not peers:
                    del self.waiting[conn.hash]

    def relay_ended(self, relay: Relay) -> None:
        self.relays.discard(relay)

    # ---- stanzas -----------------------------------------------------------------------
    async def receive(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if stanza.tag != "iq":
            if stanza.tag == "message" and (event.type or "normal") in ("normal", "chat"):
                raise StanzaError("service-unavailable")
            return  # presence, errors, groupchat: nothing to say
        if event.type not in ("get", "set"):
            return
        if event.to.local is not None or event.to.resource is not None:
            raise StanzaError("service-unavailable")  # only the domain itself exists
        payload = event.payload
        if payload is None:
            raise StanzaError("bad-request")
        key = (event.type, payload.ns, payload.tag)
        if key == ("get", xns.DISCO_INFO, "query"):
            if payload.get("node"):
                raise StanzaError("item-not-found")
            query = Element("query", xns.DISCO_INFO)
            query.add(
                "identity", attrs={"category": "proxy", "type": "bytestreams", "name": self.name}
            )
            for feature in sorted(FEATURES):
                query.add("feature", attrs={"var": feature})
            event.reply(query)
        elif key == ("get", xns.DISCO_ITEMS, "query"):
            if payload.get("node"):
                raise StanzaError("item-not-found")
            event.reply(Element("query", xns.DISCO_ITEMS))
        elif key == ("get", xns.PING, "ping"):
            event.reply()
        elif key == ("get", BYTESTREAMS, "query"):
            self._check_allowed(event.sender)
            event.reply(self.streamhost())
        elif key == ("set", BYTESTREAMS, "query"):
            self._check_allowed(event.sender)
            self.activate(event.sender, payload)
            event.reply()
        else:
            raise StanzaError("service-unavailable")

    def _check_allowed(self, sender: JID) -> None:
        """XEP-0065 §4: a Requester without permission to use the proxy gets forbidden."""
        if self.policy.allowed == "local" and sender.domain not in self.server.hosts:
            raise StanzaError("forbidden", "this proxy serves the accounts of its server")

    def streamhost(self) -> Element:
        """XEP-0065 §4: "Proxy Informs Requester of Network Address"."""
        query = Element("query", BYTESTREAMS)
        query.add(
            "streamhost", attrs={"jid": self.domain, "host": self.host, "port": str(self.port)}
        )
        return query

    def activate(self, requester: JID, query: Element) -> None:
        """XEP-0065 §6.3.5: pair the two connections of SHA1(SID + Requester + Target)
        and start relaying; errors as the section lists them."""
        sid = query.get("sid")
        activate = query.find("activate", BYTESTREAMS)
        if not sid or activate is None or not activate.text.strip():
            raise StanzaError("bad-request", "activation needs a sid and an <activate/> JID")
        target_text = activate.text.strip()
        try:
            target = str(JID.parse(target_text))
        except InvalidJID:
            raise StanzaError("jid-malformed", "the <activate/> JID is not valid") from None
        # The Target hashed the JID as it was addressed, which may differ in case from
        # its normalized form: try both.
        peers: list[Socks5Connection] | None = None
        digest = ""
        for candidate in dict.fromkeys((target_text, target)):
            digest = stream_hash(sid, str(requester), candidate)
            peers = self.waiting.get(digest)
            if peers is not None:
                break
        if peers is None:
            raise StanzaError("item-not-found", "no connection for this stream")
        if len(peers) < 2:
            raise StanzaError("not-allowed", "only one party is connected")
        del self.waiting[digest]
        first, second = peers
        relay = Relay(
            self,
            first,
            second,
            rate=self.policy.max_bandwidth,
            max_bytes=self.policy.max_transfer_size,
            idle_timeout=self.policy.idle_timeout,
        )
        self.relays.add(relay)
        log.debug(
            "bytestream %s activated by %s: %s <-> %s",
            digest,
            requester,
            first.peer_address,
            second.peer_address,
        )
