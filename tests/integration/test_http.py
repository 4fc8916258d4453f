"""The HTTP application over real HTTP on loopback: XEP-0156 host-meta (XRD and JRD),
CORS, the client address behind trusted reverse proxies, timeouts, HTTPS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dovecote.config import ConfigError, config_from_dict
from dovecote.server import Server
from tests.helpers import WSClient, client_ssl_context, start_server


async def http_server(tmp_path: Path, **sections: dict[str, Any]) -> Server:
    listen = {"http": "127.0.0.1:0", **sections.pop("listen", {})}
    return await start_server(tmp_path, listen=listen, **sections)


async def get(
    url: str, headers: dict[str, str] | None = None, *, method: str = "GET", source: str = ""
) -> tuple[int, Any, str]:
    connector = aiohttp.TCPConnector(
        ssl=client_ssl_context(), local_addr=(source, 0) if source else None
    )
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, headers=headers) as response,
    ):
        return response.status, response.headers, await response.text()


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.ports['http']}"


async def test_host_meta_xrd(tmp_path: Path) -> None:
    server = await http_server(tmp_path)
    try:
        port = server.ports["http"]
        status, headers, text = await get(f"{base(server)}/.well-known/host-meta")
        assert status == 200
        assert headers["Content-Type"] == "application/xrd+xml; charset=utf-8"
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert text == (
            "<?xml version='1.0' encoding='utf-8'?>\n"
            "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
            "  <Link rel='urn:xmpp:alt-connections:websocket' "
            f"href='ws://127.0.0.1:{port}/xmpp-websocket'/>\n"
            "  <Link rel='urn:xmpp:alt-connections:xbosh' "
            f"href='http://127.0.0.1:{port}/http-bind'/>\n"
            "</XRD>\n"
        )
    finally:
        await server.stop()


async def test_host_meta_json(tmp_path: Path) -> None:
    server = await http_server(tmp_path)
    try:
        port = server.ports["http"]
        status, headers, text = await get(
            f"{base(server)}/.well-known/host-meta.json", {"Origin": "https://web.example"}
        )
        assert status == 200
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(text) == {
            "links": [
                {
                    "rel": "urn:xmpp:alt-connections:websocket",
                    "href": f"ws://127.0.0.1:{port}/xmpp-websocket",
                },
                {
                    "rel": "urn:xmpp:alt-connections:xbosh",
                    "href": f"http://127.0.0.1:{port}/http-bind",
                },
            ]
        }
    finally:
        await server.stop()


async def test_host_meta_public_url(tmp_path: Path) -> None:
    server = await http_server(tmp_path, http={"public_url": "https://chat.example.org/xmpp/"})
    try:
        _, _, text = await get(f"{base(server)}/.well-known/host-meta.json")
        assert json.loads(text)["links"] == [
            {
                "rel": "urn:xmpp:alt-connections:websocket",
                "href": "wss://chat.example.org/xmpp/xmpp-websocket",
            },
            {
                "rel": "urn:xmpp:alt-connections:xbosh",
                "href": "https://chat.example.org/xmpp/http-bind",
            },
        ]
        _, _, xrd = await get(f"{base(server)}/.well-known/host-meta")
        assert "href='wss://chat.example.org/xmpp/xmpp-websocket'" in xrd
    finally:
        await server.stop()


async def test_host_meta_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """The scheme and host a proxy received the request with are believed from trusted
    proxies only."""
    server = await http_server(tmp_path, http={"trusted_proxies": ["127.0.0.1"]})
    try:
        proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.org"}
        _, _, text = await get(f"{base(server)}/.well-known/host-meta.json", proxied)
        assert json.loads(text)["links"][0]["href"] == "wss://chat.example.org/xmpp-websocket"
        forwarded = {"Forwarded": 'for=198.51.100.4;proto=https;host="web.example.net"'}
        _, _, text = await get(f"{base(server)}/.well-known/host-meta.json", forwarded)
        assert json.loads(text)["links"][0]["href"] == "wss://web.example.net/xmpp-websocket"
        # From 127.0.0.2, not a trusted proxy: the headers are ignored.
        port = server.ports["http"]
        _, _, text = await get(
            f"{base(server)}/.well-known/host-meta.json", proxied, source="127.0.0.2"
        )
        assert json.loads(text)["links"][0]["href"] == f"ws://127.0.0.1:{port}/xmpp-websocket"
    finally:
        await server.stop()


async def test_https_listener(tmp_path: Path) -> None:
    server = await start_server(tmp_path, listen={"http": "", "https": "127.0.0.1:0"})
    try:
        assert "http" not in server.ports
        port = server.ports["https"]
        status, _, text = await get(f"https://127.0.0.1:{port}/.well-known/host-meta.json")
        assert status == 200
        assert json.loads(text)["links"][0]["href"] == f"wss://127.0.0.1:{port}/xmpp-websocket"
    finally:
        await server.stop()


async def test_cors_origins(tmp_path: Path) -> None:
    server = await http_server(
        tmp_path, http={"cors_origins": ["https://chat.example", "https://web.example"]}
    )
    try:
        url = f"{base(server)}/.well-known/host-meta"
        _, headers, _ = await get(url, {"Origin": "https://web.example"})
        assert headers["Access-Control-Allow-Origin"] == "https://web.example"
        assert "Origin" in headers.getall("Vary")
        _, headers, _ = await get(url, {"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in headers
        # Preflight.
        status, headers, _ = await get(
            url,
            {
                "Origin": "https://chat.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "content-type",
            },
            method="OPTIONS",
        )
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "https://chat.example"
        assert "GET" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"] == "content-type"
    finally:
        await server.stop()


async def _peer_of_new_stream(server: Server, ws: WSClient) -> str:
    ws.open_stream()
    await ws.features()
    (stream,) = list(server.streams)
    return stream.transport.peer_address  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("trusted", "headers", "expected"),
    [
        # From a trusted proxy: the client it names.
        (["127.0.0.1"], {"X-Forwarded-For": "203.0.113.9"}, "203.0.113.9"),
        # A chain: the nearest hop that is not a trusted proxy, read from the right;
        # what the client itself wrote on the left is not believed.
        (
            ["127.0.0.1", "10.0.0.0/8"],
            {"X-Forwarded-For": "192.0.2.66, 203.0.113.9, 10.1.2.3"},
            "203.0.113.9",
        ),
        # RFC 7239 Forwarded, IPv6 with a port.
        (["127.0.0.0/8"], {"Forwarded": 'for="[2001:db8::7]:4711"'}, "2001:db8::7"),
        # Not from a trusted proxy: ignored.
        ([], {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),
        (["10.0.0.0/8"], {"X-Forwarded-For": "203.0.113.9"}, "127.0.0.1"),
    ],
)
async def test_client_address_behind_proxies(
    tmp_path: Path, trusted: list[str], headers: dict[str, str], expected: str
) -> None:
    server = await http_server(
        tmp_path, http={"trusted_proxies": trusted, "consider_websocket_secure": True}
    )
    try:
        ws = await WSClient.open(
            f"ws://127.0.0.1:{server.ports['http']}/xmpp-websocket", headers=headers
        )
        assert await _peer_of_new_stream(server, ws) == expected
        await ws.close()
    finally:
        await server.stop()


async def test_per_address_limits_use_the_forwarded_address(tmp_path: Path) -> None:
    """Behind a trusted proxy, each client counts against its own address."""
    server = await http_server(tmp_path, limits={"max_connections_per_ip": 1})
    try:
        url = f"ws://127.0.0.1:{server.ports['http']}/xmpp-websocket"
        first = await WSClient.open(url, headers={"X-Forwarded-For": "203.0.113.1"})
        first.open_stream()
        await first.features()
        other = await WSClient.open(url, headers={"X-Forwarded-For": "203.0.113.2"})
        other.open_stream()
        await other.features()
        again = await WSClient.open(url, headers={"X-Forwarded-For": "203.0.113.1"})
        assert await again.stream_error() == "policy-violation"
        await again.session.close()
        await first.close()
        await other.close()
    finally:
        await server.stop()


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    """A connection that never completes its request (slowloris) is closed after
    keepalive_timeout."""
    server = await http_server(tmp_path, http={"keepalive_timeout": 0.5})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["http"])
        writer.write(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: exa")
        await writer.drain()
        # Closed by the server (keepalive_timeout 0.5 s, not aiohttp's default 75 s); the
        # wait_for bounds a hang, it is not a timing assertion.
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        await server.stop()


async def test_websocket_endpoint_without_upgrade(tmp_path: Path) -> None:
    server = await http_server(tmp_path)
    try:
        status, headers, text = await get(f"{base(server)}/xmpp-websocket")
        assert status == 426
        assert headers["Upgrade"] == "websocket"
        assert "RFC 7395" in text
        status, _, _ = await get(f"{base(server)}/nothing-here")
        assert status == 404
    finally:
        await server.stop()


async def test_http_disabled(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        assert server.http is None
        assert "http" not in server.ports and "https" not in server.ports
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "http.trusted_proxies.0"),
        ({"trusted_proxies": ["proxy.example"]}, "http.trusted_proxies.0"),
        ({"public_url": "chat.example.org"}, "http.public_url"),
        ({"public_url": "https://chat.example.org/?x=1"}, "http.public_url"),
        ({"cors_origins": ["https://chat.example/path"]}, "http.cors_origins.0"),
        ({"keepalive_timeout": 0}, "http.keepalive_timeout"),
        ({"websocket_ping_interval": -1}, "http.websocket_ping_interval"),
        ({"unknown": 1}, "http.unknown"),
    ],
)
def test_config_errors_name_the_key(http: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict({"http": http})


def test_config_defaults() -> None:
    config = config_from_dict({})
    assert config.listen.http == "0.0.0.0:5280"
    assert config.listen.https == ""
    assert config.http.trusted_proxies == ["127.0.0.1", "::1"]
    assert config.http.cors_origins == ["*"]
    assert config.http.public_url == ""
    assert config.http.consider_websocket_secure is False
