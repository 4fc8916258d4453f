"""TCP transports for server-to-server streams (RFC 6120): the shared `XMLStreamProtocol`
(parser limits, traffic shaping, write flow control, the negotiation timer) with the
jabber:server namespace and the dialback prefix on the header, STARTTLS on either side,
and direct TLS (XEP-0368, ALPN xmpp-server).

`S2SIncomingProtocol` is made by the listener for a peer that connects to us;
`S2SOutgoingProtocol` by the link that connects to a peer (core/s2s.py).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from dovecote.stream.s2s import IncomingS2SStream, OutgoingS2SStream
from dovecote.stream.s2s_negotiation import DIALBACK
from dovecote.transport.tcp import XMLStreamProtocol
from dovecote.xml import ns

if TYPE_CHECKING:
    from dovecote.core.s2s import OutgoingLink
    from dovecote.server import Server

S2S_PREFIXES = {ns.STREAMS: "stream", DIALBACK: "db"}


class S2SProtocol(XMLStreamProtocol):
    content_ns = ns.SERVER
    # XEP-0220 §2.5.1: the dialback namespace declared on the header says we speak it.
    prefixes = S2S_PREFIXES
    max_write_buffer = 32 * 1024 * 1024

    def tls_version(self) -> str | None:
        if self._transport is None:
            return None
        ssl_object = self._transport.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) for the certificate checks (XEP-0178), if any."""
        if self._transport is None:
            return None
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        try:
            return ssl_object.getpeercert(binary_form=True)
        except ValueError:
            return None

    def rate_limit(self) -> tuple[int, int]:
        config = self.server.config
        return config.s2s.rate, max(config.s2s.burst, config.limits.max_stanza_size)

    def negotiation_timeout(self) -> float:
        return self.server.config.s2s.connect_timeout

    async def _start_tls(
        self, context: ssl.SSLContext, server_side: bool, hostname: str | None
    ) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._tls_handshake = True
        try:
            new_transport = await loop.start_tls(
                self._transport,
                self,
                context,
                server_side=server_side,
                server_hostname=hostname,
                ssl_handshake_timeout=self.server.config.s2s.connect_timeout,
            )
        finally:
            self._tls_handshake = False
        if new_transport is None:
            raise ConnectionError("TLS upgrade failed")
        self._transport = new_transport
        self._set_write_limits()
        self.secure = True
        self.can_starttls = False


class S2SIncomingProtocol(S2SProtocol):
    """A peer server connected to us: STARTTLS, or TLS from the first byte (XEP-0368)."""

    def __init__(self, server: Server, direct_tls: bool) -> None:
        self.secure = direct_tls
        self.can_starttls = server.tls is not None and not direct_tls
        super().__init__(server)

    def make_stream(self) -> IncomingS2SStream:
        return IncomingS2SStream(self.server, self)

    def _count_connection(self) -> bool:
        manager = self.server.s2s
        limit = self.server.config.s2s.max_incoming
        if manager is not None and limit and manager.incoming_count() > limit:
            return False
        return True

    async def starttls(self) -> None:
        manager = self.server.s2s
        assert manager is not None and manager.server_context is not None
        await self._start_tls(manager.server_context, True, None)


class S2SOutgoingProtocol(S2SProtocol):
    """Our connection to a peer server, for `link`."""

    def __init__(self, server: Server, link: OutgoingLink, local: str, direct_tls: bool) -> None:
        self.link = link
        self.local = local
        self.secure = direct_tls
        self.can_starttls = not direct_tls
        super().__init__(server)

    def make_stream(self) -> OutgoingS2SStream:
        return OutgoingS2SStream(self.server, self, self.link, self.local)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.stream is not None:
            self.stream.start()

    async def starttls(self) -> None:
        manager = self.server.s2s
        assert manager is not None
        await self._start_tls(manager.client_context, False, self.link.remote)
