"""Storage that cannot write (locked by another process, disk full): stanzas that need it
get `resource-constraint` of type wait (RFC 6120 §8.3.3.18: the client may retry), quickly
(`storage.busy_timeout`), not `internal-server-error`; messages between online users,
which touch no storage, still flow; nothing is lost silently."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.server import Server
from tests.helpers import (
    CLIENT,
    DOMAIN,
    add_user,
    error_condition,
    login_resource,
    q,
    start_server,
)

CAROL = f"carol@{DOMAIN}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path / "data", storage={"busy_timeout": 0.2})
    try:
        for name in ("alice", "bob", "carol"):
            await add_user(srv, name)
        yield srv
    finally:
        await srv.stop()


def _lock_database(server: Server) -> sqlite3.Connection:
    """Another process's writer holding SQLite's write lock."""
    blocker = sqlite3.connect(server.config.data_path / "dovecote.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    return blocker


async def test_locked_database_gives_resource_constraint_wait(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await login_resource(server, "alice", presence=True)
    bob = await login_resource(server, "bob", presence=True)
    blocker = _lock_database(server)
    try:
        # To carol, offline: the offline store cannot write.
        alice.send(f"<message to='{CAROL}' id='m1' type='chat'><body>hi</body></message>")
        bounced = await alice.take(lambda e: e.tag == q(CLIENT, "message") and e.get("id") == "m1")
        assert bounced.get("type") == "error", ET.tostring(bounced)
        assert error_condition(bounced) == ("wait", "resource-constraint")
        # A vCard update cannot be stored either: the same retryable error.
        answer = await alice.request("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>", "set")
        assert error_condition(answer) == ("wait", "resource-constraint"), ET.tostring(answer)
        # Between online users no storage is needed: delivered while the lock is held.
        alice.send(f"<message to='{bob.jid}' id='m2' type='chat'><body>still</body></message>")
        got = await bob.message()
        assert got.findtext(q(CLIENT, "body")) == "still"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Lost writes are logged at ERROR, naming what was not stored.
    assert any(
        r.levelname == "ERROR" and f"offline message for {CAROL}" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    # Lock released: the retry is stored.
    alice.send(f"<message to='{CAROL}' id='m3' type='chat'><body>again</body></message>")
    answer = await alice.request("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>", "set")
    assert answer.get("type") == "result", ET.tostring(answer)
    assert await server.storage.offline.count("carol", DOMAIN) == 1
    await alice.close()
    await bob.close()
