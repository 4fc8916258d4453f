"""XEP-0065 SOCKS5 Bytestreams: the file transfer proxy at `[proxy65] domain`.

Clients that send files peer to peer (XEP-0065 over XEP-0234 Jingle or XEP-0096) find the
proxy in the server's disco#items (XEP-0065 §4), ask it for its network address, connect
both ends to its SOCKS5 listener (`[proxy65] address`) and let the Requester activate the
stream (§6.3.5); the proxy then relays the bytes, paced by `max_bandwidth`. The service is
`services/proxy65/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.services.proxy65.service import Proxy65Service

if TYPE_CHECKING:
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="proxy65",
    summary="SOCKS5 bytestreams proxy (XEP-0065) at [proxy65] domain: discovery, "
    "activation, relaying with a bandwidth cap",
    config="proxy65",
)


def setup(server: Server) -> None:
    if server.config.proxy65.domain is None:
        return  # no proxy domain configured: nothing to serve
    service = Proxy65Service(server, server.config.proxy65)
    # The server starts what a component needs to start (the SOCKS5 listener) after the
    # modules are set up, and calls `shutdown` when it stops.
    server.components[service.domain] = service
