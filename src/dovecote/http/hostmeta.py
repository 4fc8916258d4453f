"""XEP-0156 §3: connection discovery over HTTP — `/.well-known/host-meta` (XRD, RFC 6415)
and `/.well-known/host-meta.json` (JRD, RFC 6415 Appendix A), listing the connection
methods registered with `HttpService.add_alt_connection` (WebSocket, BOSH).
Links are built on `[http] public_url`, or on the request's scheme and host as
the client sees them (behind trusted proxies: X-Forwarded-Proto / -Host)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from dovecote.http.app import service_of
from dovecote.xml.element import escape_attr

if TYPE_CHECKING:
    from dovecote.http.app import HttpService

XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


def links(request: web.Request) -> list[tuple[str, str]]:
    """(rel, href) of every registered connection method, for this request."""
    service = service_of(request)
    base = service.config.public_url
    if not base:
        client = service.client_of(request)
        base = f"{client.scheme}://{client.host or request.host}"
    result = []
    for alt in service.alt_connections:
        href = base + alt.path
        if alt.websocket:
            # http://host/path -> ws://host/path, https -> wss (RFC 6455 §3).
            href = "ws" + href[4:]
        result.append((alt.rel, href))
    return result


async def host_meta(request: web.Request) -> web.Response:
    """XEP-0156 §3.2: the XRD document."""
    lines = ["<?xml version='1.0' encoding='utf-8'?>", f"<XRD xmlns='{XRD_NS}'>"]
    for rel, href in links(request):
        lines.append(f"  <Link rel='{escape_attr(rel)}' href='{escape_attr(href)}'/>")
    lines.append("</XRD>")
    return web.Response(
        text="\n".join(lines) + "\n", content_type="application/xrd+xml", charset="utf-8"
    )


async def host_meta_json(request: web.Request) -> web.Response:
    """XEP-0156 §3.2: the same as JRD."""
    document = {"links": [{"rel": rel, "href": href} for rel, href in links(request)]}
    return web.Response(text=json.dumps(document, indent=2), content_type="application/json")


def setup(service: HttpService) -> None:
    router = service.app.router
    router.add_get("/.well-known/host-meta", host_meta)
    router.add_get("/.well-known/host-meta.json", host_meta_json)
