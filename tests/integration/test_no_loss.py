"""A message the server accepted is delivered, stored or bounced, never silently lost:
offline backlogs under flow control (XEP-0160), stream management queues (XEP-0198)
that are capped, re-routed and stored durably while a session hibernates."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dovecote.jid import JID
from dovecote.server import Server
from dovecote.storage.base import StorageBusy
from dovecote.transport.tcp import XMLStreamProtocol
from tests.helpers import (
    CLIENT,
    DOMAIN,
    RawClient,
    add_user,
    collect,
    error_condition,
    q,
    start_server,
)
from tests.integration.test_serve import Served, cli, free_port, write_config

SM = "urn:xmpp:sm:3"
BODY = q(CLIENT, "body")


def chat(to: str, ident: str, body: str | None = None) -> str:
    return f"<message to='{to}' type='chat' id='{ident}'><body>{body or ident}</body></message>"


async def login_sm(server_port: int, local: str, resource: str) -> tuple[RawClient, str]:
    raw = await RawClient.open(server_port)
    await raw.login(local, resource=resource)
    raw.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await raw.expect(q(SM, "enabled"))
    return raw, enabled.get("id") or ""


async def message_ids(raw: RawClient, count: int, timeout: float = 10) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        el = await raw.next(timeout)
        if el.tag == q(CLIENT, "message") and el.find(BODY) is not None:
            got.append(el.get("id") or "")
    return got


async def wait_offline(server: Server, local: str, count: int) -> None:
    for _ in range(200):
        if await server.storage.offline.count(local, DOMAIN) == count:
            return
        await asyncio.sleep(0.05)
    assert await server.storage.offline.count(local, DOMAIN) == count


async def open_slow_reader(port: int) -> RawClient:
    """A client with a small receive buffer that reads only when told to."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawClient(reader, writer)


# ---- XEP-0160: the backlog is sent as the client reads it --------------------------------
async def test_offline_backlog_reaches_a_slow_reader_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the whole backlog was written at once; the write buffer of a slow
    reader overflowed, the connection was dropped and every row deleted anyway."""
    monkeypatch.setattr(XMLStreamProtocol, "max_write_buffer", 256 * 1024)
    server = await start_server(tmp_path, limits={"c2s_rate": 0})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        count, size = 80, 60 * 1024
        for i in range(count):
            alice.send(chat("bob@example.org", f"m{i}", f"{i:04d}" + "x" * size))
        await wait_offline(server, "bob", count)
        bob = await open_slow_reader(server.ports["c2s"])
        await bob.login("bob")
        bob.send("<presence/>")
        await asyncio.sleep(1.0)  # reading nothing while the server has ~5 MB to send
        ids = await message_ids(bob, count, timeout=20)
        assert ids == [f"m{i}" for i in range(count)]
        await wait_offline(server, "bob", 0)
    finally:
        await server.stop()


async def test_mam_page_reaches_a_slow_reader_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a MAM page was written at once; a page of large messages to a client
    that reads slowly overflowed its write buffer and the connection was dropped. The
    results now go at the pace the client reads, then the <fin/>."""
    monkeypatch.setattr(XMLStreamProtocol, "max_write_buffer", 256 * 1024)
    server = await start_server(tmp_path, limits={"c2s_rate": 0}, mam={"max_page_size": 100})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        count, size = 80, 60 * 1024
        for i in range(count):
            alice.send(chat("bob@example.org", f"m{i}", f"{i:04d}" + "x" * size))
        await wait_offline(server, "bob", count)
        await server.storage.archive.flush()
        assert await server.storage.archive.count("alice", DOMAIN) == count
        reader = await open_slow_reader(server.ports["c2s"])
        await reader.login("alice", resource="slow")
        reader.send(
            "<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='page'>"
            "<set xmlns='http://jabber.org/protocol/rsm'><max>100</max></set></query></iq>"
        )
        await asyncio.sleep(1.0)  # reading nothing while the server has ~5 MB to send
        results: list[str] = []
        while True:
            el = await reader.next(timeout=20)
            if el.tag == f"{{{CLIENT}}}iq":
                assert el.get("type") == "result" and el.get("id") == "q1"
                fin = el.find("{urn:xmpp:mam:2}fin")
                assert fin is not None and fin.get("complete") == "true"
                break
            result = el.find("{urn:xmpp:mam:2}result")
            assert result is not None and result.get("queryid") == "page"
            body = result.find(f".//{{{CLIENT}}}body")
            assert body is not None and body.text is not None
            results.append(body.text[:4])
        assert results == [f"{i:04d}" for i in range(count)]
    finally:
        await server.stop()


async def test_offline_rows_not_sent_stay_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that drops its connection in the middle of the backlog gets the rest at
    its next login: only what was written to the connection is removed."""
    monkeypatch.setattr(XMLStreamProtocol, "max_write_buffer", 256 * 1024)
    server = await start_server(tmp_path, limits={"c2s_rate": 0})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        count, size = 150, 60 * 1024
        for i in range(count):
            alice.send(chat("bob@example.org", f"m{i}", "y" * size))
        await wait_offline(server, "bob", count)
        bob = await open_slow_reader(server.ports["c2s"])
        await bob.login("bob")
        bob.send("<presence/>")
        first = await message_ids(bob, 3)
        bob.writer.transport.abort()
        await asyncio.sleep(0.3)
        left = await server.storage.offline.count("bob", DOMAIN)
        assert left > 0, "rows that never reached the client were deleted"
        again = await RawClient.open(server.ports["c2s"])
        await again.login("bob", resource="again")
        again.send("<presence/>")
        rest = await message_ids(again, left, timeout=20)
        # What was written to the first connection is gone, what was not comes now.
        assert first == ["m0", "m1", "m2"]
        assert rest == [f"m{i}" for i in range(count - left, count)]
        await wait_offline(server, "bob", 0)
    finally:
        await server.stop()


async def test_offline_backlog_with_sm_is_removed_once_acknowledged(tmp_path: Path) -> None:
    server = await start_server(tmp_path, stream_management={"ack_delay": 30, "max_queue": 10})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        for i in range(12):
            alice.send(chat("bob@example.org", f"m{i}"))
        await wait_offline(server, "bob", 12)
        bob, _ = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        # Flow control: no more than half the queue goes out unacknowledged.
        stalled = [el for el in await collect(bob, 0.5) if el.tag != q(SM, "r")]
        first = [el.get("id") for el in stalled if el.tag == q(CLIENT, "message")]
        assert 0 < len(stalled) <= 5
        assert await server.storage.offline.count("bob", DOMAIN) == 12
        sent = len(stalled)
        bob.send(f"<a xmlns='{SM}' h='{sent}'/>")
        rest: list[str] = []
        while len(first) + len(rest) < 12:
            el = await bob.next()
            if el.tag == q(SM, "r"):
                bob.send(f"<a xmlns='{SM}' h='{sent}'/>")
            elif el.tag == q(CLIENT, "message"):
                rest.append(el.get("id") or "")
                sent += 1
            else:
                sent += 1
        assert first + rest == [f"m{i}" for i in range(12)]
        bob.send(f"<a xmlns='{SM}' h='{sent}'/>")
        await wait_offline(server, "bob", 0)
    finally:
        await server.stop()


# ---- XEP-0198: the queue is capped, and what it held is re-routed -----------------------
async def test_unacked_queue_is_capped_and_nothing_is_lost(tmp_path: Path) -> None:
    """Regression: the unacknowledged queue grew without limit."""
    server = await start_server(
        tmp_path, stream_management={"ack_delay": 30, "max_queue": 10, "resume_timeout": 30}
    )
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, sm_id = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        session = server.sessions.get(JID.parse("bob@example.org/b"))
        assert session is not None
        session_ref = weakref.ref(session)
        sm_ref = weakref.ref(session.sm)  # type: ignore[attr-defined]
        del session
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        for i in range(15):
            alice.send(chat("bob@example.org/b", f"m{i}"))
        assert await bob.stream_error() == "resource-constraint"
        # Nothing lost: the next login gets every message, each once.
        await wait_offline(server, "bob", 15)
        again = await RawClient.open(server.ports["c2s"])
        await again.login("bob", resource="again")
        again.send("<presence/>")
        assert await message_ids(again, 15) == [f"m{i}" for i in range(15)]
        # The session cannot be resumed and its memory is released.
        assert sm_id not in server.sm_sessions
        gc.collect()
        assert session_ref() is None and sm_ref() is None
    finally:
        await server.stop()


async def test_flooding_a_hibernating_session_ends_it_and_stores_everything(
    tmp_path: Path,
) -> None:
    server = await start_server(
        tmp_path, stream_management={"ack_delay": 30, "max_queue": 10, "resume_timeout": 60}
    )
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, sm_id = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        await asyncio.sleep(0.1)
        bob.writer.transport.abort()
        await asyncio.sleep(0.2)
        assert sm_id in server.sm_sessions  # hibernating
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        for i in range(25):
            alice.send(chat("bob@example.org", f"m{i}"))
        await wait_offline(server, "bob", 25)
        assert sm_id not in server.sm_sessions
        again = await RawClient.open(server.ports["c2s"])
        await again.login("bob", resource="again")
        again.send("<presence/>")
        assert await message_ids(again, 25) == [f"m{i}" for i in range(25)]
        await wait_offline(server, "bob", 0)
    finally:
        await server.stop()


async def test_rerouting_to_a_full_offline_store_bounces_the_rest(tmp_path: Path) -> None:
    """Regression: the first resource-constraint aborted the re-routing loop; the other
    messages vanished and their senders were never told."""
    server = await start_server(
        tmp_path,
        stream_management={"ack_delay": 30, "resume_timeout": 0.3},
        offline={"max_messages": 2},
    )
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, _ = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        alice.send("<presence/>")
        for i in range(5):
            alice.send(chat("bob@example.org/b", f"m{i}"))
        assert await message_ids(bob, 5) == [f"m{i}" for i in range(5)]
        bob.writer.transport.abort()
        bounced: list[str] = []
        while len(bounced) < 3:
            el = await alice.next(10)
            if el.tag == q(CLIENT, "message") and el.get("type") == "error":
                assert error_condition(el) == ("wait", "resource-constraint")
                bounced.append(el.get("id") or "")
        assert bounced == ["m2", "m3", "m4"]
        assert await server.storage.offline.count("bob", DOMAIN) == 2
    finally:
        await server.stop()


# ---- XEP-0198: what the server acknowledged survives a crash ----------------------------
async def test_messages_acked_for_a_hibernating_session_survive_kill_9(tmp_path: Path) -> None:
    """Regression: messages acknowledged to their sender while the recipient hibernated
    lived only in memory (0 of 50 delivered after a kill -9)."""
    c2s, c2s_tls = free_port(), free_port()
    config = write_config(
        tmp_path, c2s, c2s_tls, "[stream_management]\nresume_timeout = 300\nack_delay = 30\n"
    )
    for name in ("alice", "bob"):
        result = cli(config, "user", "add", f"{name}@{DOMAIN}", "--password", "secret-pässword")
        assert result.returncode == 0, result.stderr
    served = Served(config, c2s)
    served.start()
    try:
        bob, _ = await login_sm(c2s, "bob", "b")
        bob.send("<presence/>")
        await asyncio.sleep(0.2)
        bob.writer.transport.abort()
        await asyncio.sleep(0.3)
        alice, _ = await login_sm(c2s, "alice", "a")
        count = 50
        for i in range(count):
            alice.send(chat("bob@example.org", f"m{i}"))
        alice.send(f"<r xmlns='{SM}'/>")
        ack = await alice.wait_for(lambda e: e.tag == q(SM, "a"), timeout=10)
        assert int(ack.get("h") or 0) == count
        assert served.proc is not None
        served.proc.send_signal(signal.SIGKILL)
        served.proc.wait(10)
        served.start()
        again = await RawClient.open(c2s)
        await again.login("bob", resource="new")
        again.send("<presence/>")
        assert await message_ids(again, count) == [f"m{i}" for i in range(count)]
    finally:
        served.stop()


async def test_resumed_session_gets_held_messages_once(tmp_path: Path) -> None:
    """Messages stored while hibernating are not delivered again once the resumed
    session acknowledged them."""
    server = await start_server(tmp_path, stream_management={"ack_delay": 30, "resume_timeout": 30})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, sm_id = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        await asyncio.sleep(0.1)
        bob.writer.transport.abort()
        await asyncio.sleep(0.2)
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        for i in range(3):
            alice.send(chat("bob@example.org", f"h{i}"))
        await wait_offline(server, "bob", 3)
        resumed = await RawClient.open(server.ports["c2s"])
        await resumed.authenticate("bob")
        resumed.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
        await resumed.expect(q(SM, "resumed"))
        got = await message_ids(resumed, 3)
        assert got == ["h0", "h1", "h2"]
        resumed.send(f"<a xmlns='{SM}' h='4'/>")  # presence echo + 3 messages
        await wait_offline(server, "bob", 0)
        # Another resource logging in now gets nothing again.
        other = await RawClient.open(server.ports["c2s"])
        await other.login("bob", resource="other")
        other.send("<presence/>")
        extra = []
        try:
            while True:
                el = await other.next(0.5)
                if el.tag == q(CLIENT, "message"):
                    extra.append(ET.tostring(el))
        except TimeoutError:
            pass
        assert extra == []
    finally:
        await server.stop()


# ---- memory: a closed connection is freed at once --------------------------------------
async def test_closed_connections_are_freed_by_reference_counting(tmp_path: Path) -> None:
    """Regression: closed streams were kept by reference cycles until a full collection
    of the (frozen, rarely run) cycle collector: 8,600 dead streams after 18,000 cycles."""
    server = await start_server(tmp_path, stream_management={"resume_timeout": 0.1})
    try:
        await _connect_and_close_many(server)
    finally:
        await server.stop()


async def _connect_and_close_many(server: Server) -> None:
    await add_user(server, "alice")
    await add_user(server, "bob")
    refs: list[weakref.ref[object]] = []
    gc.collect()
    gc.disable()
    try:
        for step in range(4):
            raw = await RawClient.open(server.ports["c2s"])
            if step == 0:
                raw.open_stream()  # negotiation only
                await raw.features()
            else:
                await raw.login("alice", resource=f"r{step}")
                if step == 2:
                    raw.send(f"<enable xmlns='{SM}' resume='true'/>")
                    await raw.expect(q(SM, "enabled"))
                raw.send("<presence/>")
                if step == 3:
                    raw.send(chat("bob@example.org", "offline"))
                await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence"))
            (stream,) = [s for s in server.streams if s.transport.peer_address]
            refs += [weakref.ref(stream), weakref.ref(stream.transport)]
            refs.append(weakref.ref(stream.transport.parser))
            del stream
            if step == 3:
                raw.send("</stream:stream>")
                await raw.closed()
            else:
                raw.writer.transport.abort()  # with SM: hibernates, then ends
            for _ in range(100):
                if not server.streams:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the session's background work ends
        alive = [ref() for ref in refs if ref() is not None]
        assert alive == []
    finally:
        gc.enable()


async def test_a_held_copy_that_cannot_be_stored_is_not_counted_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: when storing the copy of a message for a hibernating session failed,
    the session still counted on it: at expiry the message was neither stored nor
    bounced. Now the session re-routes it like any unacknowledged message."""
    server = await start_server(tmp_path, stream_management={"ack_delay": 30, "resume_timeout": 1})
    try:
        await add_user(server, "alice")
        await add_user(server, "bob")
        bob, sm_id = await login_sm(server.ports["c2s"], "bob", "b")
        bob.send("<presence/>")
        await asyncio.sleep(0.1)
        bob.writer.transport.abort()
        for _ in range(100):
            if server.sessions.get(JID.parse("bob@example.org/b")).state == "hibernating":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        store = server.storage.offline.store
        failures: list[str] = []

        async def failing_once(*args: object, **kwargs: object) -> int | None:
            if not failures:
                failures.append("once")
                raise StorageBusy("database is locked")
            return await store(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(server.storage.offline, "store", failing_once)
        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice")
        alice.send(chat("bob@example.org", "held"))
        await wait_offline(server, "bob", 1)  # stored when the session expired
        assert failures == ["once"] and sm_id not in server.sm_sessions
        again = await RawClient.open(server.ports["c2s"])
        await again.login("bob", resource="again")
        again.send("<presence/>")
        assert await message_ids(again, 1) == ["held"]
    finally:
        await server.stop()
