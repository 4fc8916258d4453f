"""A session is not its connection: XEP-0198 resumption attaches a new connection to the
same session object, so whatever lives on the session (presence, priority, module slots,
the stream management queue) is there afterwards, without being copied field by field."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dovecote.core.session import ClientSession
from dovecote.core.slots import SessionSlot
from dovecote.jid import JID
from tests.helpers import CLIENT, RawClient, add_user, q, start_server

SM = "urn:xmpp:sm:3"
#: State a module added after the session code was written: it must survive resumption.
LATER_STATE = SessionSlot[list[str]]("tests.later-state", list)


async def test_resumption_attaches_the_new_connection_to_the_same_session(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path, stream_management={"resume_timeout": 30, "ack_delay": 30})
    try:
        await add_user(server, "alice")
        raw = await RawClient.open(server.ports["c2s"])
        jid = await raw.login("alice", resource="phone")
        raw.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = (await raw.expect(q(SM, "enabled"))).get("id")
        raw.send("<presence><priority>7</priority><status>here</status></presence>")
        await raw.wait_for(lambda e: e.tag == q(CLIENT, "presence"))
        session = server.sessions.get(JID.parse(jid))
        assert isinstance(session, ClientSession)
        LATER_STATE.setdefault(session).append("kept")
        first_stream = session.stream
        assert first_stream is not None and first_stream.session is session

        raw.writer.transport.abort()
        for _ in range(100):
            if session.state == "hibernating":
                break
            await asyncio.sleep(0.02)
        assert session.state == "hibernating" and session.stream is None
        assert server.sessions.get(JID.parse(jid)) is session  # still bound, still available

        again = await RawClient.open(server.ports["c2s"])
        await again.authenticate("alice")
        again.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
        await again.expect(q(SM, "resumed"))
        assert server.sessions.get(JID.parse(jid)) is session
        assert session.state == "bound"
        assert session.stream is not None and session.stream is not first_stream
        assert session.stream.session is session and first_stream.session is None
        assert (session.priority, session.available) == (7, True)
        assert session.presence is not None and session.presence.find_text("status") == "here"
        assert LATER_STATE.get(session) == ["kept"]
        # The resumed connection serves the session: a ping goes through it.
        again.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        pong = await again.wait_for(lambda e: e.tag == q(CLIENT, "iq"))
        assert pong.get("type") == "result"
        await again.close()
    finally:
        await server.stop()


async def test_a_session_ends_with_a_connection_without_stream_management(
    tmp_path: Path,
) -> None:
    server = await start_server(tmp_path)
    try:
        await add_user(server, "alice")
        raw = await RawClient.open(server.ports["c2s"])
        jid = await raw.login("alice", resource="desk")
        session = server.sessions.get(JID.parse(jid))
        assert isinstance(session, ClientSession)
        LATER_STATE.set(session, ["x"])
        await raw.close()
        for _ in range(100):
            if session.closed:
                break
            await asyncio.sleep(0.02)
        assert session.closed and session.stream is None
        assert server.sessions.get(JID.parse(jid)) is None
    finally:
        await server.stop()
