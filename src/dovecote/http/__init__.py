"""HTTP: one aiohttp application (`app.py`) with a route set per feature: RFC 7395
WebSocket (`websocket.py`), XEP-0156 host-meta (`hostmeta.py`); BOSH and HTTP upload
plug in the same way."""

from dovecote.http.app import ClientInfo, HttpService

__all__ = ["ClientInfo", "HttpService"]
