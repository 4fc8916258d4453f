"""`/xmpp-websocket`: the RFC 7395 handshake; the connection itself is
`transport/websocket.py` (the same client stream and session as TCP).

RFC 7395 §3.1: the client must ask for the `xmpp` subprotocol. A handshake without it
is completed without echoing a subprotocol (so that the client knows none was agreed)
and the server closes at once with 1002 (protocol error). The Origin of a browser's
handshake must be one of `[http] cors_origins` (403 otherwise), as for any other route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, hdrs, web

from dovecote.http.app import service_of
from dovecote.transport.websocket import WebSocketTransport

if TYPE_CHECKING:
    from dovecote.http.app import HttpService

PATH = "/xmpp-websocket"
SUBPROTOCOL = "xmpp"
#: Seconds the closing handshake may take (our close frame to theirs).
CLOSE_TIMEOUT = 5.0


async def websocket(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    server = service.server
    config = service.config
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and service.allowed_origin(origin) is None:
        raise web.HTTPForbidden(text=f"origin {origin} is not allowed")
    ping = config.websocket_ping_interval
    # Frames a little over the stanza limit reach the parser, which answers with the
    # policy-violation stream error; far larger ones are refused by aiohttp (1009).
    max_stanza = server.config.limits.max_stanza_size
    ws = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        compress=False,
        heartbeat=ping or None,
        max_msg_size=2 * max_stanza + 1024,
        decode_text=False,
        timeout=CLOSE_TIMEOUT,
    )
    if not ws.can_prepare(request).ok:
        return web.Response(
            status=426,
            headers={hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade"},
            text="This is an XMPP over WebSocket endpoint (RFC 7395).\n",
        )
    await ws.prepare(request)
    if ws.ws_protocol != SUBPROTOCOL:
        await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"the xmpp subprotocol is required")
        return ws
    client = service.client_of(request)
    secure = client.secure or config.consider_websocket_secure
    transport = WebSocketTransport(server, ws, request.transport, client.address, secure)
    await transport.run()
    return ws


def setup(service: HttpService) -> None:
    service.app.router.add_get(PATH, websocket)
    service.add_alt_connection("urn:xmpp:alt-connections:websocket", PATH, websocket=True)
