"""XEP-0363 HTTP file upload over real sockets: slot requests from raw XML clients and
slixmpp (its xep_0363 plugin), PUT and GET over real HTTP with aiohttp's client, the
errors of §6, the checks of the PUT (§7), expiry, quotas and a restart."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import pytest

from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    STANZA_ERRORS,
    Resource,
    add_user,
    connect,
    disconnect,
    error_condition,
    login_resource,
    q,
    start_server,
)
from tests.integration.test_component import COMPONENT_NS, GATEWAY, SECRET, RawComponent

UPLOAD = "urn:xmpp:http:upload:0"
PURPOSE = "urn:xmpp:http:upload:purpose:0"
UPLOAD_DOMAIN = "upload.example.org"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
DATA = "jabber:x:data"
MIB = 1024 * 1024


def upload_config(**upload: Any) -> dict[str, Any]:
    return {
        "listen": {"http": "127.0.0.1:0"},
        "upload": {"domain": UPLOAD_DOMAIN, **upload},
    }


async def upload_server(data_dir: Path, *, restart: bool = False, **upload: Any) -> Server:
    """A server with the upload service; alice and bob are created unless `restart`."""
    http = upload.pop("http", {})
    srv = await start_server(data_dir, http=http, **upload_config(**upload))
    if not restart:
        await add_user(srv, "alice")
        await add_user(srv, "bob")
    return srv


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[Server]:
    srv = await upload_server(data_dir, max_file_size=8 * MIB, quota_per_user=64 * MIB)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def alice(server: Server) -> AsyncIterator[Resource]:
    res = await login_resource(server, "alice")
    try:
        yield res
    finally:
        await res.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def request_xml(
    filename: str, size: int | str, content_type: str | None = None, inner: str = ""
) -> str:
    from xml.sax.saxutils import quoteattr

    ctype = f" content-type={quoteattr(content_type)}" if content_type is not None else ""
    return (
        f"<request xmlns='{UPLOAD}' filename={quoteattr(filename)} size='{size}'{ctype}>"
        f"{inner}</request>"
    )


async def request_slot(
    res: Resource, filename: str, size: int | str, content_type: str | None = None, inner: str = ""
) -> ET.Element:
    return await res.request(request_xml(filename, size, content_type, inner), to=UPLOAD_DOMAIN)


async def slot_urls(
    res: Resource, filename: str, size: int, content_type: str | None = None
) -> tuple[str, str]:
    reply = await request_slot(res, filename, size, content_type)
    assert reply.get("type") == "result", ET.tostring(reply)
    assert reply.get("from") == UPLOAD_DOMAIN
    slot = reply.find(q(UPLOAD, "slot"))
    assert slot is not None, ET.tostring(reply)
    put = slot.find(q(UPLOAD, "put"))
    get = slot.find(q(UPLOAD, "get"))
    assert put is not None and get is not None
    return put.get("url") or "", get.get("url") or ""


def app_error(reply: ET.Element, tag: str) -> ET.Element:
    error = reply.find(q(CLIENT, "error"))
    assert error is not None, ET.tostring(reply)
    found = error.find(q(UPLOAD, tag))
    assert found is not None, ET.tostring(reply)
    return found


async def put(
    http: aiohttp.ClientSession,
    url: str,
    data: bytes,
    content_type: str | None = "application/octet-stream",
    **headers: str,
) -> aiohttp.ClientResponse:
    all_headers = dict(headers)
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    async with http.put(url, data=data, headers=all_headers) as response:
        await response.read()
        return response


def upload_files(server: Server) -> list[Path]:
    """The files on disk under the upload storage (tmp/ included)."""
    root = server.config.data_path / "upload"
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---- discovery (§3) ------------------------------------------------------------------------
async def test_server_disco_items_list_the_upload_service(alice: Resource) -> None:
    reply = await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=DOMAIN)
    items = {item.get("jid"): item.get("name") for item in reply.iter(q(DISCO_ITEMS, "item"))}
    assert items.get(UPLOAD_DOMAIN) == "HTTP File Upload"


async def test_disco_info_of_the_service(alice: Resource) -> None:
    reply = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=UPLOAD_DOMAIN)
    assert reply.get("type") == "result", ET.tostring(reply)
    query = reply.find(q(DISCO_INFO, "query"))
    assert query is not None
    identities = [(i.get("category"), i.get("type")) for i in query.iter(q(DISCO_INFO, "identity"))]
    assert identities == [("store", "file")]
    features = {f.get("var") for f in query.iter(q(DISCO_INFO, "feature"))}
    assert UPLOAD in features
    assert f"{PURPOSE}#message" in features and f"{PURPOSE}#ephemeral" in features
    form = query.find(q(DATA, "x"))
    assert form is not None and form.get("type") == "result"
    fields = {
        f.get("var"): [v.text for v in f.iter(q(DATA, "value"))]
        for f in form.iter(q(DATA, "field"))
    }
    assert fields["FORM_TYPE"] == [UPLOAD]
    assert fields["max-file-size"] == [str(8 * MIB)]
    # Nothing else lives on the domain.
    items = await alice.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=UPLOAD_DOMAIN)
    assert items.get("type") == "result" and list(items.find(q(DISCO_ITEMS, "query")) or []) == []
    unknown = await alice.request("<query xmlns='urn:example:nothing'/>", to=UPLOAD_DOMAIN)
    assert error_condition(unknown) == ("cancel", "service-unavailable")


async def test_without_a_domain_there_is_no_service(tmp_path: Path) -> None:
    srv = await start_server(tmp_path, listen={"http": "127.0.0.1:0"})
    try:
        await add_user(srv, "alice")
        assert UPLOAD_DOMAIN not in srv.components
        res = await login_resource(srv, "alice")
        reply = await res.request(f"<query xmlns='{DISCO_ITEMS}'/>", to=DOMAIN)
        assert list(reply.iter(q(DISCO_ITEMS, "item"))) == []
        await res.close()
    finally:
        await srv.stop()


async def test_upload_domain_needs_an_http_listener(tmp_path: Path) -> None:
    from dovecote.server import StartupError

    with pytest.raises(StartupError, match=r"\[listen\] http"):
        await start_server(tmp_path, upload={"domain": UPLOAD_DOMAIN})


# ---- the round trip ------------------------------------------------------------------------
async def test_round_trip_of_5_mb_with_ranges(
    server: Server, alice: Resource, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5 * MIB)
    put_url, get_url = await slot_urls(alice, "très cool.jpg", len(data), "image/jpeg")
    port = server.ports["http"]
    # §4: the name kept, non-ASCII percent-encoded; the GET link is not the signed one.
    assert (
        get_url
        == f"http://127.0.0.1:{port}/upload/{urlsplit(get_url).path.split('/')[2]}/tr%C3%A8s%20cool.jpg"
    )
    assert put_url.startswith(get_url + "?")
    # Nothing is served before the upload.
    async with http.get(get_url) as response:
        assert response.status == 404
    response = await put(http, put_url, data, "image/jpeg")
    assert response.status == 201
    async with http.get(get_url) as response:
        assert response.status == 200
        body = await response.read()
        headers = response.headers
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest() and body == data
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Length"] == str(len(data))
    assert headers["Content-Disposition"].startswith("inline;")
    assert "filename*=UTF-8''tr%C3%A8s%20cool.jpg" in headers["Content-Disposition"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Accept-Ranges"] == "bytes"
    assert "max-age=" in headers["Cache-Control"] and "ETag" in headers
    # Range requests (RFC 9110 §14): 206 with exactly the bytes asked for.
    async with http.get(get_url, headers={"Range": "bytes=1000-1999"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        assert await response.read() == data[1000:2000]
    async with http.get(get_url, headers={"Range": "bytes=-100"}) as response:
        assert response.status == 206
        assert await response.read() == data[-100:]
    async with http.get(get_url, headers={"Range": f"bytes={len(data)}-"}) as response:
        assert response.status == 416
    # HEAD: the headers without the body.
    async with http.head(get_url) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(data))
        assert await response.read() == b""
    # Conditional GET: the ETag validates.
    async with http.get(get_url, headers={"If-None-Match": headers["ETag"]}) as response:
        assert response.status == 304
    # On disk: the file alone (the temporary directory is empty).
    files = upload_files(server)
    assert len(files) == 1 and files[0].read_bytes() == data


async def test_a_large_upload_is_never_held_in_memory(
    server: Server, alice: Resource, http: aiohttp.ClientSession
) -> None:
    """8 MiB (the largest allowed here) streamed from a generator, up and down: the
    process's peak of Python allocations (client and server together) stays at a few
    chunks, not the file."""
    size = 8 * MIB
    chunk = 64 * 1024

    def pieces() -> Iterator[bytes]:
        # The same bytes each time, without keeping them: a counter in every block.
        for i in range(size // chunk):
            yield i.to_bytes(8, "big") * (chunk // 8)

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces():
            yield piece

    expected = hashlib.sha256()
    for piece in pieces():
        expected.update(piece)
    put_url, get_url = await slot_urls(alice, "big.bin", size)
    tracemalloc.start()
    try:
        async with http.put(
            put_url, data=body(), headers={"Content-Length": str(size)}
        ) as response:
            assert response.status == 201
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        async with http.get(get_url) as response:
            async for data in response.content.iter_chunked(chunk):
                got.update(data)
        get_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.digest() == expected.digest()
    # Measured: about 1.5 MiB (PUT) and 0.7 MiB (GET), mostly aiohttp's own buffers.
    assert put_peak < 2 * MIB, f"PUT: a peak of {put_peak} bytes for a {size}-byte file"
    assert get_peak < 2 * MIB, f"GET: a peak of {get_peak} bytes for a {size}-byte file"


async def test_slixmpp_upload_file(
    server: Server, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    client = await connect(server, f"alice@{DOMAIN}")
    client.register_plugin("xep_0363")
    path = data_dir / "report.pdf"
    data = os.urandom(300_000)
    path.write_bytes(data)
    try:
        url = await client.plugin["xep_0363"].upload_file(
            path, content_type="application/pdf", timeout=10
        )
    finally:
        await disconnect(client)
    assert url.startswith(f"http://127.0.0.1:{server.ports['http']}/upload/")
    async with http.get(url) as response:
        assert response.status == 200
        assert await response.read() == data
        assert response.headers["Content-Type"] == "application/pdf"
        disposition = response.headers["Content-Disposition"]
    assert disposition == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"


@pytest.mark.parametrize(
    ("content_type", "inline"),
    [
        ("text/plain", True),
        ("video/mp4", True),
        ("audio/ogg", True),
        ("text/html", False),
        ("image/svg+xml", False),
        (None, False),
    ],
)
async def test_content_disposition_by_type(
    alice: Resource, http: aiohttp.ClientSession, content_type: str | None, inline: bool
) -> None:
    put_url, get_url = await slot_urls(alice, "file.bin", 5, content_type)
    response = await put(http, put_url, b"hello", content_type)
    assert response.status == 201
    async with http.get(get_url) as response:
        expected_type = content_type or "application/octet-stream"
        assert response.headers["Content-Type"] == expected_type
        disposition = response.headers["Content-Disposition"].split(";")[0]
        assert disposition == ("inline" if inline else "attachment")


async def test_put_type_kept_when_the_slot_named_none(
    alice: Resource, http: aiohttp.ClientSession
) -> None:
    put_url, get_url = await slot_urls(alice, "photo", 3)
    assert (await put(http, put_url, b"abc", "image/png")).status == 201
    async with http.get(get_url) as response:
        assert response.headers["Content-Type"] == "image/png"


async def test_empty_file(alice: Resource, http: aiohttp.ClientSession) -> None:
    put_url, get_url = await slot_urls(alice, "empty.txt", 0, "text/plain")
    assert (await put(http, put_url, b"", "text/plain")).status == 201
    async with http.get(get_url) as response:
        assert response.status == 200 and await response.read() == b""


# ---- errors of slot requests (§6) ----------------------------------------------------------
async def test_file_too_large(alice: Resource) -> None:
    reply = await request_slot(alice, "big.mkv", 8 * MIB + 1, "video/x-matroska")
    assert error_condition(reply) == ("modify", "not-acceptable")
    too_large = app_error(reply, "file-too-large")
    assert too_large.findtext(q(UPLOAD, "max-file-size")) == str(8 * MIB)
    text = reply.find(f"{q(CLIENT, 'error')}/{q(STANZA_ERRORS, 'text')}")
    assert text is not None and str(8 * MIB) in (text.text or "")
    # The largest allowed size is fine.
    assert (await request_slot(alice, "big.mkv", 8 * MIB)).get("type") == "result"


@pytest.mark.parametrize(
    ("filename", "size", "content_type"),
    [
        ("", "10", None),
        ("a/b.txt", "10", None),
        ("..", "10", None),
        ("back\\slash.txt", "10", None),
        ("nl\n.txt", "10", None),
        ("x" * 256, "10", None),
        ("ok.txt", "ten", None),
        ("ok.txt", "-1", None),
        ("ok.txt", "", None),
        ("ok.txt", "10", "not a type"),
        ("ok.txt", "10", "text/plain\r\nX-Evil: 1"),
    ],
)
async def test_bad_requests(
    alice: Resource, filename: str, size: str, content_type: str | None
) -> None:
    reply = await request_slot(alice, filename, size, content_type)
    assert error_condition(reply) == ("modify", "bad-request"), ET.tostring(reply)


async def test_request_without_filename(alice: Resource) -> None:
    reply = await alice.request(f"<request xmlns='{UPLOAD}' size='3'/>", to=UPLOAD_DOMAIN)
    assert error_condition(reply) == ("modify", "bad-request")


@pytest.mark.parametrize("allowed", ["local", "all"])
async def test_who_may_upload(data_dir: Path, allowed: str) -> None:
    """`allowed = "local"`: an address of a component (not an account here) is refused;
    "all" lets it have a slot. The service itself (no localpart) never gets one."""
    srv = await start_server(
        data_dir,
        listen={"http": "127.0.0.1:0", "component": "127.0.0.1:0"},
        upload={"domain": UPLOAD_DOMAIN, "allowed": allowed},
        components={GATEWAY: SECRET},
    )
    try:
        component = await RawComponent.open(srv)
        await component.handshake()
        for sender in (f"user@{GATEWAY}", GATEWAY):
            component.send(
                f"<iq xmlns='{COMPONENT_NS}' type='get' id='u1' from='{sender}' "
                f"to='{UPLOAD_DOMAIN}'>{request_xml('a.txt', 3)}</iq>"
            )
            reply = await component.next()
            if allowed == "all" and sender != GATEWAY:
                assert reply.get("type") == "result", ET.tostring(reply)
                assert reply.find(f"{q(UPLOAD, 'slot')}/{q(UPLOAD, 'put')}") is not None
                continue
            error = reply.find(q(COMPONENT_NS, "error"))
            assert error is not None and error.get("type") == "auth", ET.tostring(reply)
            assert error.find(q(STANZA_ERRORS, "forbidden")) is not None
        await component.close()
    finally:
        await srv.stop()


async def test_quota(data_dir: Path, http: aiohttp.ClientSession) -> None:
    srv = await upload_server(data_dir, max_file_size=1000, quota_per_user=2500)
    try:
        alice = await login_resource(srv, "alice")
        put_url, _get = await slot_urls(alice, "one.bin", 1000)
        assert (await put(http, put_url, b"1" * 1000)).status == 201
        await slot_urls(alice, "two.bin", 1000)  # an unused slot counts too
        reply = await request_slot(alice, "three.bin", 1000)
        assert error_condition(reply) == ("wait", "resource-constraint"), ET.tostring(reply)
        # Room frees up when the unused slot lapses (300 s) — before the file expires.
        stamp = app_error(reply, "retry").get("stamp") or ""
        retry = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.UTC)
        assert now + datetime.timedelta(seconds=290) < retry < now + datetime.timedelta(seconds=310)
        # What still fits is given.
        assert (await request_slot(alice, "small.bin", 500)).get("type") == "result"
        # The quota is per account.
        bob = await login_resource(srv, "bob")
        assert (await request_slot(bob, "three.bin", 1000)).get("type") == "result"
        await alice.close()
        await bob.close()
    finally:
        await srv.stop()
    # Across a restart: the stored file and the live slots still count.
    srv = await upload_server(data_dir, restart=True, max_file_size=1000, quota_per_user=2500)
    try:
        alice = await login_resource(srv, "alice")
        reply = await request_slot(alice, "three.bin", 1000)
        assert error_condition(reply) == ("wait", "resource-constraint")
        await alice.close()
    finally:
        await srv.stop()


async def test_quota_retry_is_when_files_expire(
    data_dir: Path, http: aiohttp.ClientSession
) -> None:
    srv = await upload_server(data_dir, max_file_size=1000, quota_per_user=1500, expire_after=86400)
    try:
        alice = await login_resource(srv, "alice")
        put_url, _get = await slot_urls(alice, "one.bin", 1000)
        assert (await put(http, put_url, b"1" * 1000)).status == 201
        reply = await request_slot(alice, "two.bin", 1000)
        assert error_condition(reply) == ("wait", "resource-constraint")
        stamp = app_error(reply, "retry").get("stamp") or ""
        retry = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        in_a_day = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        assert abs((retry - in_a_day).total_seconds()) < 30
        await alice.close()
    finally:
        await srv.stop()


async def test_unused_slots_are_limited(data_dir: Path) -> None:
    srv = await upload_server(data_dir, max_slots_per_user=2)
    try:
        alice = await login_resource(srv, "alice")
        await slot_urls(alice, "a", 1)
        await slot_urls(alice, "b", 1)
        reply = await request_slot(alice, "c", 1)
        assert error_condition(reply) == ("wait", "resource-constraint")
        assert app_error(reply, "retry").get("stamp")
        await alice.close()
    finally:
        await srv.stop()


# ---- checks of the PUT (§7) ----------------------------------------------------------------
def tamper(url: str, **query: str) -> str:
    parts = urlsplit(url)
    values = {k: v[0] for k, v in parse_qs(parts.query).items()}
    values.update(query)
    new_query = "&".join(f"{k}={v}" for k, v in values.items() if v != "")
    return urlunsplit(parts._replace(query=new_query))


async def test_put_checks(server: Server, alice: Resource, http: aiohttp.ClientSession) -> None:
    data = b"x" * 1000
    put_url, get_url = await slot_urls(alice, "a.txt", len(data), "text/plain")
    # Wrong size, wrong type, a bad or missing signature, a changed expiry or file name.
    assert (await put(http, put_url, data + b"!", "text/plain")).status == 400
    assert (await put(http, put_url, data[:-1], "text/plain")).status == 400
    assert (await put(http, put_url, data, "image/png")).status == 415
    assert (await put(http, put_url, data, None)).status == 415
    bad_signature = tamper(put_url, s="A" * 43)
    assert (await put(http, bad_signature, data, "text/plain")).status == 403
    assert (await put(http, tamper(put_url, s=""), data, "text/plain")).status == 403
    assert (await put(http, get_url, data, "text/plain")).status == 403
    later = str(int(parse_qs(urlsplit(put_url).query)["e"][0]) + 3600)
    assert (await put(http, tamper(put_url, e=later), data, "text/plain")).status == 403
    renamed = put_url.replace("/a.txt?", "/b.txt?")
    assert (await put(http, renamed, data, "text/plain")).status == 403
    # A made-up slot id.
    other = put_url.replace(urlsplit(put_url).path.split("/")[2], "B" * 32)
    assert (await put(http, other, data, "text/plain")).status == 403
    # Nothing was stored by the refused attempts; the slot is still good, once.
    assert upload_files(server) == []
    assert (await put(http, put_url, data, "text/plain; charset=utf-8")).status == 201
    assert (await put(http, put_url, data, "text/plain")).status == 409
    async with http.get(get_url) as response:
        assert await response.read() == data


async def test_chunked_put_needs_a_length(alice: Resource, http: aiohttp.ClientSession) -> None:
    put_url, _get = await slot_urls(alice, "a.bin", 6)

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async with http.put(put_url, data=body()) as response:
        assert response.status == 411


async def test_expired_slot_refused(data_dir: Path, http: aiohttp.ClientSession) -> None:
    srv = await upload_server(data_dir, slot_timeout=1)
    try:
        alice = await login_resource(srv, "alice")
        put_url, get_url = await slot_urls(alice, "late.txt", 4, "text/plain")
        await asyncio.sleep(1.2)
        response = await put(http, put_url, b"late", "text/plain")
        assert response.status == 403
        async with http.get(get_url) as response:
            assert response.status == 404
        # The sweep removes the lapsed slot.
        service = srv.components[UPLOAD_DOMAIN]
        assert await service.purge_expired() == 1
        await alice.close()
    finally:
        await srv.stop()


async def test_stalled_upload_times_out_and_leaves_nothing(
    data_dir: Path, http: aiohttp.ClientSession
) -> None:
    srv = await upload_server(data_dir, http={"request_timeout": 0.5})
    try:
        alice = await login_resource(srv, "alice")
        put_url, get_url = await slot_urls(alice, "slow.bin", 100_000)
        stalled = asyncio.Event()

        async def stalling_body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            await stalled.wait()  # never sends the rest
            yield b""

        async with http.put(
            put_url, data=stalling_body(), headers={"Content-Length": "100000"}
        ) as response:
            assert response.status == 408
        stalled.set()
        await asyncio.sleep(0.1)
        assert upload_files(srv) == []
        async with http.get(get_url) as response:
            assert response.status == 404
        # The slot may be used again while its link is valid.
        assert (await put(http, put_url, b"y" * 100_000)).status == 201
        await alice.close()
    finally:
        await srv.stop()


async def test_trickling_upload_times_out(data_dir: Path, http: aiohttp.ClientSession) -> None:
    """Bytes keep coming, too slowly: cut off at request_timeout + size / min_upload_rate."""
    srv = await upload_server(data_dir, http={"request_timeout": 0.5}, min_upload_rate=100_000)
    try:
        alice = await login_resource(srv, "alice")
        put_url, _get = await slot_urls(alice, "slow.bin", 100_000)  # 0.5 + 1 s allowed

        sent_all = False

        async def trickle() -> AsyncIterator[bytes]:
            nonlocal sent_all
            for _ in range(100):
                yield b"x" * 1000
                await asyncio.sleep(0.1)  # 10 kB/s: 10 s for the whole body
            sent_all = True

        try:
            async with http.put(
                put_url, data=trickle(), headers={"Content-Length": "100000"}
            ) as response:
                assert response.status == 408
        except aiohttp.ClientError:
            pass  # the server may close before the client has sent its body
        assert not sent_all, "the server let a too slow upload run to its end"
        await asyncio.sleep(0.1)
        assert upload_files(srv) == []
        await alice.close()
    finally:
        await srv.stop()


async def test_aborted_upload_leaves_nothing(server: Server, alice: Resource) -> None:
    put_url, _get = await slot_urls(alice, "cut.bin", 1_000_000)
    parts = urlsplit(put_url)
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + b"z" * 200_000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    assert [p.name for p in upload_files(server)] == [f"{parts.path.split('/')[2]}.part"]
    writer.close()
    await asyncio.sleep(0.3)
    assert upload_files(server) == []
    record = await server.storage.upload.get(parts.path.split("/")[2])
    assert record is not None and record.state == 0  # pending again


async def test_expect_100_continue(server: Server, alice: Resource) -> None:
    """The client learns that its PUT is refused before sending the body, and is told to
    go on when it is accepted."""
    put_url, _get = await slot_urls(alice, "big.bin", 100_000)
    parts = urlsplit(put_url)

    async def head_of_put(length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(
            f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        status = await asyncio.wait_for(reader.readline(), 5)
        return reader, writer, status

    _reader, writer, status = await head_of_put(99_999)
    assert status.startswith(b"HTTP/1.1 400 ")
    writer.close()
    reader, writer, status = await head_of_put(100_000)
    assert status == b"HTTP/1.1 100 Continue\r\n"
    await reader.readline()  # the blank line after the interim response
    writer.write(b"e" * 100_000)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 201 ")
    writer.close()
    assert upload_files(server)[0].read_bytes() == b"e" * 100_000


# ---- CORS ----------------------------------------------------------------------------------
async def test_cors_preflight_and_headers(alice: Resource, http: aiohttp.ClientSession) -> None:
    put_url, get_url = await slot_urls(alice, "web.png", 3, "image/png")
    origin = "https://web.example"
    async with http.options(
        put_url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in response.headers["Access-Control-Allow-Methods"]
        assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
    response = await put(http, put_url, b"png", "image/png", Origin=origin)
    assert response.status == 201
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(get_url, headers={"Origin": origin}) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"


# ---- expiry and persistence ----------------------------------------------------------------
async def test_files_expire(data_dir: Path, http: aiohttp.ClientSession) -> None:
    srv = await upload_server(data_dir, expire_after=1, max_file_size=1000, quota_per_user=1000)
    try:
        alice = await login_resource(srv, "alice")
        put_url, get_url = await slot_urls(alice, "old.txt", 1000)
        assert (await put(http, put_url, b"o" * 1000)).status == 201
        async with http.get(get_url) as response:
            assert response.status == 200
        await asyncio.sleep(1.1)
        # Past its time it is no longer served, even before the sweep.
        async with http.get(get_url) as response:
            assert response.status == 404
        service = srv.components[UPLOAD_DOMAIN]
        await service.purge_expired()
        assert upload_files(srv) == []
        # Its room in the quota is free again.
        assert (await request_slot(alice, "new.txt", 1000)).get("type") == "result"
        await alice.close()
    finally:
        await srv.stop()


async def test_expiry_runs_by_itself(data_dir: Path, http: aiohttp.ClientSession) -> None:
    srv = await upload_server(data_dir, expire_after=1)
    try:
        alice = await login_resource(srv, "alice")
        put_url, _get = await slot_urls(alice, "old.txt", 3)
        assert (await put(http, put_url, b"old")).status == 201
        assert len(upload_files(srv)) == 1
        # The sweep runs every quarter of expire_after (at least every second).
        for _ in range(40):
            await asyncio.sleep(0.1)
            if not upload_files(srv):
                break
        assert upload_files(srv) == []
        await alice.close()
    finally:
        await srv.stop()


async def test_ephemeral_purpose(alice: Resource, http: aiohttp.ClientSession) -> None:
    """§5.3: an ephemeral file is not served after its expire-before."""
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    stamp = soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    reply = await request_slot(
        alice,
        "story.jpg",
        3,
        "image/jpeg",
        f"<ephemeral xmlns='{PURPOSE}' expire-before='{stamp}'/>",
    )
    slot = reply.find(q(UPLOAD, "slot"))
    assert slot is not None, ET.tostring(reply)
    put_url = slot.find(q(UPLOAD, "put")).get("url")  # type: ignore[union-attr]
    get_url = slot.find(q(UPLOAD, "get")).get("url")  # type: ignore[union-attr]
    assert (await put(http, put_url or "", b"jpg", "image/jpeg")).status == 201
    async with http.get(get_url or "") as response:
        assert response.status == 200
    await asyncio.sleep(
        max(0.0, (soon - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.1
    )
    async with http.get(get_url or "") as response:
        assert response.status == 404
    past = "2001-01-01T00:00:00Z"
    reply = await request_slot(
        alice,
        "story.jpg",
        3,
        "image/jpeg",
        f"<ephemeral xmlns='{PURPOSE}' expire-before='{past}'/>",
    )
    assert error_condition(reply) == ("modify", "bad-request")


async def test_files_survive_a_restart(data_dir: Path, http: aiohttp.ClientSession) -> None:
    srv = await upload_server(data_dir)
    try:
        alice = await login_resource(srv, "alice")
        data = os.urandom(200_000)
        put_url, get_url = await slot_urls(alice, "keep.bin", len(data))
        assert (await put(http, put_url, data)).status == 201
        unused_put, _unused_get = await slot_urls(alice, "later.bin", 4)
        await alice.close()
    finally:
        await srv.stop()
    srv = await upload_server(data_dir, restart=True)
    try:
        # Another ephemeral port: the same path is served.
        new_get = f"http://127.0.0.1:{srv.ports['http']}{urlsplit(get_url).path}"
        async with http.get(new_get) as response:
            assert response.status == 200
            assert await response.read() == data
        # A slot handed out before the restart is still good (same signing key).
        unused = f"http://127.0.0.1:{srv.ports['http']}{urlsplit(unused_put).path}?{urlsplit(unused_put).query}"
        assert (await put(http, unused, b"four")).status == 201
    finally:
        await srv.stop()
    assert (data_dir / "upload.secret").stat().st_mode & 0o777 == 0o600


# ---- other stanzas to the service ----------------------------------------------------------
async def test_ping_and_messages(alice: Resource) -> None:
    reply = await alice.request("<ping xmlns='urn:xmpp:ping'/>", to=UPLOAD_DOMAIN)
    assert reply.get("type") == "result"
    alice.send(f"<message to='{UPLOAD_DOMAIN}' id='m1'><body>hi</body></message>")
    error = await alice.take(lambda e: e.tag == q(CLIENT, "message") and e.get("id") == "m1")
    assert error_condition(error) == ("cancel", "service-unavailable")
    reply = await alice.request(request_xml("a", 1), to=f"someone@{UPLOAD_DOMAIN}")
    assert error_condition(reply) == ("cancel", "service-unavailable")
