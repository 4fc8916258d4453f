"""XEP-0313 user archives with real clients over real sockets: archiving both ways with
XEP-0359 stanza ids, RSM paging both directions, the query form's filters, XEP-0441
preferences, XEP-0334 hints, metadata, access control, persistence and retention; and the
SQL archive store itself on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from dovecote.modules import mam
from dovecote.server import Server
from dovecote.storage import SQLStorage
from dovecote.storage.archive import ArchivedMessage, ArchiveFilter, ArchiveIdNotFound
from dovecote.storage.base import StorageError
from tests.helpers import (
    CLIENT,
    DOMAIN,
    ROSTER,
    Resource,
    add_user,
    connect,
    disconnect,
    error_condition,
    login_resource,
    q,
    start_server,
)
from tests.unit.test_storage import CREDS, Backend, _postgres_backend

MODULES = {"enabled": ["mam"]}
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
SID = "urn:xmpp:sid:0"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
XDATA = "jabber:x:data"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(tmp_path / "data", modules=MODULES)
    try:
        for local in ("alice", "bob", "carol"):
            await add_user(srv, local)
        yield srv
    finally:
        await srv.stop()


# ---- helpers ---------------------------------------------------------------------------------
def form(**fields: str | list[str]) -> str:
    """A submitted MAM query form; keyword names use '_' for '-' (after_id=...)."""
    parts = [f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"]
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        inner = "".join(f"<value>{escape(v)}</value>" for v in values)
        parts.append(f"<field var='{name.replace('_', '-')}'>{inner}</field>")
    return f"<x xmlns='{XDATA}' type='submit'>{''.join(parts)}</x>"


def rsm(
    max: int | None = None,
    after: str | None = None,
    before: str | None = None,
    index: int | None = None,
) -> str:
    inner = ""
    if max is not None:
        inner += f"<max>{max}</max>"
    if after is not None:
        inner += f"<after>{after}</after>"
    if before is not None:
        inner += f"<before>{before}</before>" if before else "<before/>"
    if index is not None:
        inner += f"<index>{index}</index>"
    return f"<set xmlns='{RSM}'>{inner}</set>"


def is_result(el: ET.Element, queryid: str) -> bool:
    result = el.find(q(MAM, "result"))
    return (
        el.tag == q(CLIENT, "message") and result is not None and result.get("queryid") == queryid
    )


@dataclass
class Page:
    messages: list[ET.Element]  # the <message/>s carrying the results, as received
    fin: ET.Element

    @property
    def results(self) -> list[ET.Element]:
        return [m.find(q(MAM, "result")) for m in self.messages]  # type: ignore[misc]

    @property
    def ids(self) -> list[str]:
        return [r.get("id", "") for r in self.results]

    @property
    def forwarded(self) -> list[ET.Element]:
        found = []
        for result in self.results:
            message = result.find(f"{q(FORWARD, 'forwarded')}/{q(CLIENT, 'message')}")
            assert message is not None, ET.tostring(result)
            found.append(message)
        return found

    @property
    def bodies(self) -> list[str | None]:
        return [m.findtext(q(CLIENT, "body")) for m in self.forwarded]

    @property
    def stamps(self) -> list[str]:
        return [
            r.find(f"{q(FORWARD, 'forwarded')}/{q(DELAY, 'delay')}").get("stamp", "")  # type: ignore[union-attr]
            for r in self.results
        ]

    @property
    def complete(self) -> str | None:
        return self.fin.get("complete")

    @property
    def rsm(self) -> ET.Element:
        found = self.fin.find(q(RSM, "set"))
        assert found is not None
        return found

    @property
    def count(self) -> int:
        return int(self.rsm.findtext(q(RSM, "count")) or -1)

    @property
    def first(self) -> tuple[str | None, str | None]:
        """(<first/> text, its index)."""
        first = self.rsm.find(q(RSM, "first"))
        return (None, None) if first is None else (first.text, first.get("index"))

    @property
    def last(self) -> str | None:
        return self.rsm.findtext(q(RSM, "last"))


async def query(
    res: Resource, inner: str = "", *, queryid: str = "q1", to: str | None = None, extra: str = ""
) -> Page:
    """A MAM query: the result messages it brought and the <fin/>."""
    iq = await res.request(
        f"<query xmlns='{MAM}' queryid='{queryid}'>{inner}{extra}</query>", "set", to
    )
    assert iq.get("type") == "result", ET.tostring(iq)
    fin = iq.find(q(MAM, "fin"))
    assert fin is not None, ET.tostring(iq)
    messages = [el for el in res.backlog if is_result(el, queryid)]
    res.backlog = [el for el in res.backlog if not is_result(el, queryid)]
    for message in messages:
        assert message.get("to") == res.jid
        assert message.get("from") == (to or res.bare)
    return Page(messages, fin)


async def query_error(
    res: Resource, inner: str = "", to: str | None = None
) -> tuple[str | None, str | None]:
    iq = await res.request(f"<query xmlns='{MAM}'>{inner}</query>", "set", to)
    assert iq.get("type") == "error", ET.tostring(iq)
    assert not [el for el in res.backlog if el.find(q(MAM, "result")) is not None]
    return error_condition(iq)


def stanza_ids(message: ET.Element) -> list[tuple[str | None, str | None]]:
    return [(s.get("by"), s.get("id")) for s in message.findall(q(SID, "stanza-id"))]


def archive_id(message: ET.Element, by: str) -> str:
    """The id of the one stanza-id by `by`."""
    ids = [i for b, i in stanza_ids(message) if b == by]
    assert len(ids) == 1 and ids[0], ET.tostring(message)
    return ids[0]


async def chat(
    sender: Resource, receiver: Resource, body: str, extra: str = "", type: str = "chat"
) -> ET.Element:
    """Send a message and wait until the receiver has it (so it is archived by then)."""
    sender.send(f"<message to='{receiver.bare}' type='{type}'><body>{body}</body>{extra}</message>")
    message = await receiver.message()
    assert message.findtext(q(CLIENT, "body")) == body, ET.tostring(message)
    return message


# ---- discovery -------------------------------------------------------------------------------
async def test_features_are_advertised(server: Server) -> None:
    alice = await login_resource(server, "alice")
    account = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=ALICE)
    features = {f.get("var") for f in account.iter(q(DISCO_INFO, "feature"))}
    assert {MAM, f"{MAM}#extended", f"{MAM}#groupchat-field"} <= features
    # §7: groupchat messages are in the rooms' archives, never in a user's.
    assert f"{MAM}#groupchat-available" not in features
    host = await alice.request(f"<query xmlns='{DISCO_INFO}'/>", to=DOMAIN)
    assert SID in {f.get("var") for f in host.iter(q(DISCO_INFO, "feature"))}
    await alice.close()


async def test_without_the_module_there_is_no_archive(tmp_path: Path) -> None:
    srv = await start_server(tmp_path / "data", modules={"disabled": ["mam"]})
    try:
        await add_user(srv, "alice")
        alice = await login_resource(srv, "alice")
        assert await query_error(alice) == ("cancel", "service-unavailable")
        await alice.close()
    finally:
        await srv.stop()


async def test_query_form(server: Server) -> None:
    alice = await login_resource(server, "alice")
    iq = await alice.request(f"<query xmlns='{MAM}'/>")
    assert iq.get("type") == "result"
    x = iq.find(f"{q(MAM, 'query')}/{q(XDATA, 'x')}")
    assert x is not None and x.get("type") == "form"
    fields = {f.get("var"): f for f in x.findall(q(XDATA, "field"))}
    assert fields["FORM_TYPE"].get("type") == "hidden"
    assert fields["FORM_TYPE"].findtext(q(XDATA, "value")) == MAM
    assert {var: f.get("type") for var, f in fields.items() if var != "FORM_TYPE"} == {
        "with": "jid-single",
        "start": "text-single",
        "end": "text-single",
        "before-id": "text-single",
        "after-id": "text-single",
        "ids": "list-multi",
        "include-groupchat": "boolean",
    }
    validate = fields["ids"].find(q("http://jabber.org/protocol/xdata-validate", "validate"))
    assert validate is not None
    assert validate.find(q("http://jabber.org/protocol/xdata-validate", "open")) is not None
    assert all(f.find(q(XDATA, "required")) is None for f in fields.values())
    await alice.close()


# ---- archiving -------------------------------------------------------------------------------
async def test_both_directions_are_archived_with_the_stanza_id(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    alice.send(f"<message to='{BOB}' type='chat' id='m1'><body>Hail to thee</body></message>")
    received = await bob.message()
    bob_id = archive_id(received, BOB)
    assert stanza_ids(received) == [(BOB, bob_id)]
    bob.send(f"<message to='{alice.jid}' type='chat' id='m2'><body>And to thee</body></message>")
    reply = await alice.message()
    alice_id = archive_id(reply, ALICE)

    page = await query(bob)
    assert len(page.ids) == 2 and page.ids[0] == bob_id
    assert page.bodies == ["Hail to thee", "And to thee"]
    incoming, outgoing = page.forwarded
    assert (incoming.get("from"), incoming.get("to"), incoming.get("id")) == (alice.jid, BOB, "m1")
    assert (outgoing.get("from"), outgoing.get("to"), outgoing.get("id")) == (
        bob.jid,
        alice.jid,
        "m2",
    )
    assert page.complete == "true"
    assert page.count == 2 and page.first == (bob_id, "0") and page.last == page.ids[1]
    for stamp in page.stamps:
        assert abs(datetime.now(UTC) - mam.parse_datetime(stamp)) < timedelta(seconds=30)

    page = await query(alice)
    assert page.bodies == ["Hail to thee", "And to thee"]
    assert page.ids[1] == alice_id
    # §3.5: what the contact gets of an outgoing message carries no id of the sender's.
    assert stanza_ids(received) == [(BOB, bob_id)] and stanza_ids(reply) == [(ALICE, alice_id)]
    assert await server.storage.archive.count("alice", DOMAIN) == 2
    assert await server.storage.archive.count("bob", DOMAIN) == 2
    await alice.close()
    await bob.close()


async def test_forged_stanza_id_is_replaced(server: Server) -> None:
    """XEP-0359 §3: a stanza-id 'by' the recipient that the sender put in is removed; one
    by somebody else stays."""
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    forged = (
        f"<stanza-id xmlns='{SID}' by='Bob@Example.org' id='forged'/>"
        f"<stanza-id xmlns='{SID}' by='room@muc.{DOMAIN}' id='kept'/>"
    )
    received = await chat(alice, bob, "hi", forged)
    ids = stanza_ids(received)
    assert ("Bob@Example.org", "forged") not in ids
    assert (f"room@muc.{DOMAIN}", "kept") in ids
    own = archive_id(received, BOB)
    assert own != "forged" and len(ids) == 2
    assert (await query(bob)).ids == [own]
    # Even when nothing is archived the forgery goes (§3 rule 2).
    received = await chat(alice, bob, "no", forged + "<no-store xmlns='urn:xmpp:hints'/>")
    assert stanza_ids(received) == [(f"room@muc.{DOMAIN}", "kept")]
    await alice.close()
    await bob.close()


async def test_offline_messages_are_archived_and_carry_the_id(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    alice.send(f"<message to='{BOB}' type='chat'><body>one</body></message>")
    alice.send(f"<message to='{BOB}'><body>two</body></message>")
    await alice.request("<ping xmlns='urn:xmpp:ping'/>")  # both handled by now
    bob = await login_resource(server, "bob", "b", presence=True)
    first, second = await bob.message(), await bob.message()
    page = await query(bob)
    assert page.ids == [archive_id(first, BOB), archive_id(second, BOB)]
    assert page.bodies == ["one", "two"]
    await alice.close()
    await bob.close()


async def test_messages_to_oneself_are_archived_once(server: Server) -> None:
    a = await login_resource(server, "alice", "a", presence=True)
    b = await login_resource(server, "alice", "b", presence=True)
    a.send(f"<message to='{ALICE}/b' type='chat'><body>note to self</body></message>")
    received = await b.message()
    a.send(
        f"<message to='{ALICE}/gone' type='chat'><body>to a resource that is not there</body>"
        "</message>"
    )
    await a.request("<ping xmlns='urn:xmpp:ping'/>")
    page = await query(a, form(**{"with": ALICE}))
    assert page.bodies == ["note to self", "to a resource that is not there"]
    assert page.ids[0] == archive_id(received, ALICE)
    assert (await query(a)).count == 2
    await a.close()
    await b.close()


async def test_what_is_archived(server: Server) -> None:
    """XEP-0313 §6.1.1 and XEP-0334: content is archived, chat states, hinted, error,
    headline and groupchat messages are not."""
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    hints = "urn:xmpp:hints"
    states = "http://jabber.org/protocol/chatstates"
    cases = [
        # (stanza attributes, payload, archived)
        ("type='chat'", f"<composing xmlns='{states}'/>", False),
        ("type='chat'", f"<body>secret</body><no-store xmlns='{hints}'/>", False),
        ("type='chat'", f"<body>secret</body><no-permanent-store xmlns='{hints}'/>", False),
        ("type='chat'", f"<active xmlns='{states}'/><store xmlns='{hints}'/>", True),
        ("type='headline'", "<body>news</body>", False),
        ("", "<body>normal</body>", True),
        ("type='normal'", f"<gone xmlns='{states}'/><thread>t1</thread>", False),
        ("type='chat'", "<received xmlns='urn:xmpp:receipts' id='m1'/>", True),
        ("type='chat'", "<body>retracted soon</body><store xmlns='urn:xmpp:hints'/>", True),
    ]
    expected_ids = []
    for attrs, payload, archived in cases:
        alice.send(f"<message to='{bob.jid}' {attrs}>{payload}</message>")
        received = await bob.message()
        if archived:
            expected_ids.append(archive_id(received, BOB))
        else:
            assert stanza_ids(received) == [], ET.tostring(received)
    # An error message and a groupchat message (bounced by the server) are not archived.
    alice.send(
        f"<message to='{bob.jid}' type='error'><body>oops</body>"
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        "</error></message>"
    )
    error = await bob.message()
    assert error.get("type") == "error" and stanza_ids(error) == []
    alice.send(f"<message to='{BOB}' type='groupchat'><body>room talk</body></message>")
    bounce = await alice.message()
    assert error_condition(bounce) == ("cancel", "service-unavailable")

    page = await query(bob)
    assert page.ids == expected_ids
    assert page.bodies == [None, "normal", None, "retracted soon"]
    assert (await query(alice)).count == len(expected_ids)
    await alice.close()
    await bob.close()


# ---- paging ----------------------------------------------------------------------------------
async def test_paging_forwards_and_backwards(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    for n in range(300):
        alice.send(f"<message to='{BOB}' type='chat' id='m{n}'><body>m{n}</body></message>")
    ids = []
    for n in range(300):
        message = await bob.message()
        assert message.findtext(q(CLIENT, "body")) == f"m{n}"
        ids.append(archive_id(message, BOB))
    assert len(set(ids)) == 300

    # Forwards (XEP-0059 §2.2), complete='true' exactly on the last page.
    after = None
    for start in (0, 100, 200):
        page = await query(bob, rsm(max=100, after=after))
        assert page.ids == ids[start : start + 100]
        assert page.bodies == [f"m{n}" for n in range(start, start + 100)]
        assert page.first == (ids[start], str(start)) and page.last == ids[start + 99]
        assert page.count == 300
        assert page.complete == ("true" if start == 200 else "false")
        after = page.last
    page = await query(bob, rsm(max=100, after=ids[-1]))
    assert page.ids == [] and page.complete == "true" and page.count == 300
    assert page.first == (None, None) and page.last is None

    # Backwards from the end (§2.5, XEP-0313 §4.3.3): results still oldest first.
    before = ""
    for start in (200, 100, 0):
        page = await query(bob, rsm(max=100, before=before))
        assert page.ids == ids[start : start + 100]
        assert page.first == (ids[start], str(start)) and page.last == ids[start + 99]
        assert page.complete == ("true" if start == 0 else "false")
        before = page.first[0]
    page = await query(bob, rsm(max=100, before=ids[0]))
    assert page.ids == [] and page.complete == "true"

    # No <set/>: the server's default page; a large <max/>: the server's cap.
    page = await query(bob)
    assert page.ids == ids[:50] and page.complete == "false"
    page = await query(bob, rsm(max=1000))
    assert page.ids == ids[:250] and page.complete == "false"
    # <max>0</max>: the count alone (§2.7).
    page = await query(bob, rsm(max=0))
    assert page.ids == [] and page.count == 300 and page.complete == "false"
    # A page out of order by index (§2.6).
    page = await query(bob, rsm(max=10, index=120))
    assert page.ids == ids[120:130] and page.first == (ids[120], "120")
    page = await query(bob, rsm(max=10, index=300))
    assert page.ids == [] and page.complete == "true"
    # Flipped (XEP-0313 §4.3.4): the same page, sent newest first.
    page = await query(bob, rsm(max=5, after=ids[9]), extra="<flip-page/>")
    assert page.ids == ids[10:15][::-1]
    assert page.first == (ids[10], "10") and page.last == ids[14]
    # Paging inside a filtered range: before-id/after-id bound the set.
    page = await query(bob, form(after_id=ids[99], before_id=ids[150]) + rsm(max=20, before=""))
    assert page.ids == ids[130:150] and page.count == 50 and page.first == (ids[130], "30")

    # The sender's archive: the same 300 in order.
    page = await query(alice, rsm(max=250))
    assert page.bodies == [f"m{n}" for n in range(250)] and page.complete == "false"
    page = await query(alice, rsm(max=250, after=page.last))
    assert page.bodies == [f"m{n}" for n in range(250, 300)] and page.complete == "true"
    await alice.close()
    await bob.close()


async def test_unknown_ids_are_item_not_found(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    known = archive_id(await chat(alice, bob, "hi"), BOB)
    not_found = ("cancel", "item-not-found")
    assert await query_error(bob, rsm(after="nope")) == not_found
    assert await query_error(bob, rsm(before="nope")) == not_found
    assert await query_error(bob, form(after_id="nope")) == not_found
    assert await query_error(bob, form(before_id="nope")) == not_found
    assert await query_error(bob, form(ids=[known, "nope"])) == not_found
    # Another archive's id is not in this one.
    alice_id = (await query(alice)).ids[0]
    assert await query_error(bob, rsm(after=alice_id)) == not_found
    await alice.close()
    await bob.close()


# ---- filters ---------------------------------------------------------------------------------
async def test_filters(server: Server) -> None:
    a1 = await login_resource(server, "alice", "a1", presence=True)
    a2 = await login_resource(server, "alice", "a2", presence=True)
    carol = await login_resource(server, "carol", "c", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    senders = [a1, carol, a2, a1, carol]
    ids = []
    for n, sender in enumerate(senders):
        ids.append(archive_id(await chat(sender, bob, f"m{n}"), BOB))
        await asyncio.sleep(0.01)  # distinct millisecond stamps
    stamps = (await query(bob)).stamps

    async def matching(inner: str) -> list[int]:
        return [ids.index(i) for i in (await query(bob, inner)).ids]

    # with (XEP-0313 §4.1.1): a bare JID matches every resource, a full JID only itself.
    assert await matching(form(**{"with": ALICE})) == [0, 2, 3]
    assert await matching(form(**{"with": f"{ALICE}/a1"})) == [0, 3]
    assert await matching(form(**{"with": CAROL})) == [1, 4]
    assert await matching(form(**{"with": BOB})) == []
    assert await matching(form(**{"with": DOMAIN})) == []
    # start and end (§4.1.2) are inclusive, in any time zone.
    assert await matching(form(start=stamps[2])) == [2, 3, 4]
    assert await matching(form(end=stamps[1])) == [0, 1]
    assert await matching(form(start=stamps[1], end=stamps[3])) == [1, 2, 3]
    shifted = mam.parse_datetime(stamps[2]).astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    assert await matching(form(start=shifted.isoformat(timespec="milliseconds"))) == [2, 3, 4]
    assert await matching(form(start="2000-01-01T00:00:00Z", end="2000-12-31T00:00:00Z")) == []
    # before-id, after-id and ids (§4.1.3, #extended).
    assert await matching(form(after_id=ids[0], before_id=ids[4])) == [1, 2, 3]
    assert await matching(form(after_id=ids[2])) == [3, 4]
    assert await matching(form(before_id=ids[2])) == [0, 1]
    assert await matching(form(ids=[ids[3], ids[0]])) == [0, 3]
    assert await matching(form(ids=[ids[3]])) == [3]
    # Combined.
    assert await matching(form(after_id=ids[0], **{"with": ALICE})) == [2, 3]
    assert await matching(form(start=stamps[1], **{"with": CAROL})) == [1, 4]
    page = await query(bob, form(**{"with": ALICE}) + rsm(max=2))
    assert page.count == 3 and page.complete == "false" and page.first == (ids[0], "0")
    page = await query(bob, form(**{"with": ALICE}) + rsm(max=2, after=page.last))
    assert page.ids == [ids[3]] and page.first == (ids[3], "2") and page.complete == "true"
    for res in (a1, a2, carol, bob):
        await res.close()


async def test_include_groupchat_is_understood(server: Server) -> None:
    """§4.1.7 / §7: the field is accepted both ways; user archives hold no groupchat
    messages (the rooms' archives do), so the results are the same."""
    alice = await login_resource(server, "alice")
    bob = await login_resource(server, "bob", presence=True)
    alice.send(f"<message to='{BOB}' type='chat' id='g1'><body>hi</body></message>")
    await bob.message()
    await server.storage.archive.flush()
    both = [await query(bob, form(**{"include-groupchat": v})) for v in ("true", "false")]
    assert [len(page.messages) for page in both] == [1, 1]
    await alice.close()
    await bob.close()


@pytest.mark.parametrize(
    ("inner", "expected"),
    [
        (form(start="yesterday"), ("modify", "bad-request")),
        (form(start="2010-06-07T00:00:00"), ("modify", "bad-request")),  # no time zone
        (form(end="2010-13-07T00:00:00Z"), ("modify", "bad-request")),
        (form(**{"with": "@example.org"}), ("modify", "bad-request")),
        (form(**{"with": [ALICE, CAROL]}), ("modify", "bad-request")),
        (form(**{"{urn:example}free-text": "x"}), ("cancel", "feature-not-implemented")),
        (form(**{"include-groupchat": "sometimes"}), ("modify", "bad-request")),
        (
            f"<x xmlns='{XDATA}' type='submit'><field var='FORM_TYPE'><value>urn:example</value>"
            "</field></x>",
            ("modify", "bad-request"),
        ),
        (
            f"<x xmlns='{XDATA}' type='submit'><field><value>x</value></field></x>",
            ("modify", "bad-request"),
        ),
        (rsm(max=-1), ("modify", "bad-request")),
        (f"<set xmlns='{RSM}'><max>ten</max></set>", ("modify", "bad-request")),
        (f"<set xmlns='{RSM}'><after/></set>", ("modify", "bad-request")),
    ],
)
async def test_bad_queries(server: Server, inner: str, expected: tuple[str, str]) -> None:
    alice = await login_resource(server, "alice")
    assert await query_error(alice, inner) == expected
    await alice.close()


# ---- access ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("iq_type", "payload"),
    [
        ("set", f"<query xmlns='{MAM}'/>"),
        ("get", f"<query xmlns='{MAM}'/>"),
        ("get", f"<metadata xmlns='{MAM}'/>"),
        ("get", f"<prefs xmlns='{MAM}'/>"),
        ("set", f"<prefs xmlns='{MAM}' default='never'/>"),
    ],
)
async def test_another_users_archive_is_forbidden(
    server: Server, iq_type: str, payload: str
) -> None:
    """XEP-0313 §8.1: only the owner; a stranger gets the answer of an account that does
    not exist (RFC 6121 §8.5.1), so the archive cannot be used to probe for accounts."""
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    await chat(alice, bob, "private")
    for target, condition in (
        (BOB, ("cancel", "service-unavailable")),
        (f"nobody@{DOMAIN}", ("cancel", "service-unavailable")),
    ):
        iq = await alice.request(payload, iq_type, to=target)
        assert iq.get("type") == "error" and iq.get("from") == target
        assert error_condition(iq) == condition
    await alice.assert_none(lambda el: el.find(q(MAM, "result")) is not None)
    prefs = await bob.request(f"<prefs xmlns='{MAM}'/>")
    assert prefs.find(q(MAM, "prefs")).get("default") == "always"  # type: ignore[union-attr]
    await alice.close()
    await bob.close()


async def test_query_addressed_to_own_bare_jid(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    own = archive_id(await chat(alice, bob, "hi"), BOB)
    page = await query(bob, to=BOB)
    assert page.ids == [own]
    await alice.close()
    await bob.close()


# ---- preferences (XEP-0441) ------------------------------------------------------------------
def prefs_xml(default: str, always: Sequence[str] = (), never: Sequence[str] = ()) -> str:
    def jids(items: Sequence[str]) -> str:
        return "".join(f"<jid>{j}</jid>" for j in items)

    return (
        f"<prefs xmlns='{MAM}' default='{default}'><always>{jids(always)}</always>"
        f"<never>{jids(never)}</never></prefs>"
    )


def parse_prefs(iq: ET.Element) -> tuple[str | None, list[str], list[str]]:
    assert iq.get("type") == "result", ET.tostring(iq)
    prefs = iq.find(q(MAM, "prefs"))
    assert prefs is not None
    always, never = prefs.find(q(MAM, "always")), prefs.find(q(MAM, "never"))
    assert always is not None and never is not None  # XEP-0441 §2.1: always present
    return (
        prefs.get("default"),
        [j.text or "" for j in always.findall(q(MAM, "jid"))],
        [j.text or "" for j in never.findall(q(MAM, "jid"))],
    )


async def test_preferences(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    carol = await login_resource(server, "carol", "c", presence=True)
    carol2 = await login_resource(server, "carol", "c2", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    assert parse_prefs(await bob.request(f"<prefs xmlns='{MAM}'/>")) == ("always", [], [])
    archived: list[str] = []

    async def check(sender: Resource, expect: bool) -> None:
        received = await chat(sender, bob, f"from {sender.jid}")
        if expect:
            archived.append(archive_id(received, BOB))
        else:
            assert stanza_ids(received) == []

    # default never, but always alice.
    result = await bob.request(prefs_xml("never", always=[ALICE]), "set")
    assert parse_prefs(result) == ("never", [ALICE], [])
    assert parse_prefs(await bob.request(f"<prefs xmlns='{MAM}'/>")) == ("never", [ALICE], [])
    await check(alice, True)
    await check(carol, False)
    # Outgoing follows the same lists (XEP-0441 §2.3.2: the 'to').
    bob.send(f"<message to='{CAROL}' type='chat'><body>out</body></message>")
    bob.send(f"<message to='{ALICE}' type='chat'><body>out</body></message>")
    await carol.message()
    await alice.message()

    # A full JID in a list matches that resource only (§2.3.1); never wins over always.
    result = await bob.request(
        prefs_xml("always", always=[CAROL], never=[f"{CAROL}/c", "ALICE@example.org"]), "set"
    )
    assert parse_prefs(result) == ("always", [CAROL], [f"{CAROL}/c", ALICE])
    await check(carol, False)
    await check(carol2, True)
    await check(alice, False)

    # 'roster': only contacts in the roster (§2.1.1, by bare JID).
    result = await bob.request(f"<query xmlns='{ROSTER}'><item jid='{ALICE}'/></query>", "set")
    assert result.get("type") == "result"
    assert parse_prefs(await bob.request(prefs_xml("roster"), "set")) == ("roster", [], [])
    await check(alice, True)
    await check(carol, False)

    page = await query(bob, form(**{"with": ALICE}))
    assert page.bodies == [f"from {alice.jid}", "out", f"from {alice.jid}"]
    assert [i for i in (await query(bob)).ids if i not in page.ids] == [archived[1]]
    assert set(archived) <= set((await query(bob)).ids)

    # A set without 'default' keeps it; bad values are refused and change nothing.
    result = await bob.request(
        f"<prefs xmlns='{MAM}'><always><jid>{CAROL}</jid></always></prefs>", "set"
    )
    assert parse_prefs(result) == ("roster", [CAROL], [])
    iq = await bob.request(f"<prefs xmlns='{MAM}' default='sometimes'/>", "set")
    assert error_condition(iq) == ("modify", "bad-request")
    iq = await bob.request(prefs_xml("never", always=["@@"]), "set")
    assert error_condition(iq) == ("modify", "jid-malformed")
    assert parse_prefs(await bob.request(f"<prefs xmlns='{MAM}'/>")) == ("roster", [CAROL], [])
    for res in (alice, carol, carol2, bob):
        await res.close()


async def test_configured_default(tmp_path: Path) -> None:
    srv = await start_server(tmp_path / "data", modules=MODULES, mam={"default": "roster"})
    try:
        await add_user(srv, "alice")
        await add_user(srv, "bob")
        alice = await login_resource(srv, "alice", "a", presence=True)
        bob = await login_resource(srv, "bob", "b", presence=True)
        assert parse_prefs(await bob.request(f"<prefs xmlns='{MAM}'/>")) == ("roster", [], [])
        assert stanza_ids(await chat(alice, bob, "stranger")) == []
        assert (await query(bob)).ids == []
        await alice.close()
        await bob.close()
    finally:
        await srv.stop()


# ---- metadata --------------------------------------------------------------------------------
async def test_metadata(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    iq = await bob.request(f"<metadata xmlns='{MAM}'/>")
    metadata = iq.find(q(MAM, "metadata"))
    assert iq.get("type") == "result" and metadata is not None and len(metadata) == 0
    ids = [archive_id(await chat(alice, bob, f"m{n}"), BOB) for n in range(3)]
    stamps = (await query(bob)).stamps
    iq = await bob.request(f"<metadata xmlns='{MAM}'/>")
    metadata = iq.find(q(MAM, "metadata"))
    assert metadata is not None
    start, end = metadata.find(q(MAM, "start")), metadata.find(q(MAM, "end"))
    assert start is not None and end is not None
    assert (start.get("id"), start.get("timestamp")) == (ids[0], stamps[0])
    assert (end.get("id"), end.get("timestamp")) == (ids[2], stamps[2])
    await alice.close()
    await bob.close()


# ---- persistence, accounts, retention --------------------------------------------------------
async def test_archive_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = await start_server(data, modules=MODULES)
    try:
        await add_user(srv, "alice")
        await add_user(srv, "bob")
        alice = await login_resource(srv, "alice", "a", presence=True)
        bob = await login_resource(srv, "bob", "b", presence=True)
        ids = [archive_id(await chat(alice, bob, f"m{n}"), BOB) for n in range(3)]
        assert (
            parse_prefs(await bob.request(prefs_xml("roster", never=[CAROL]), "set"))[0] == "roster"
        )
        await alice.close()
        await bob.close()
    finally:
        await srv.stop()
    srv = await start_server(data, modules=MODULES)
    try:
        bob = await login_resource(srv, "bob", "b")
        page = await query(bob)
        assert page.ids == ids and page.bodies == ["m0", "m1", "m2"]
        assert parse_prefs(await bob.request(f"<prefs xmlns='{MAM}'/>")) == ("roster", [], [CAROL])
        await bob.close()
    finally:
        await srv.stop()


async def test_deleting_the_account_deletes_its_archive(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    bob = await login_resource(server, "bob", "b", presence=True)
    await chat(alice, bob, "hi")
    await bob.close()
    assert await server.storage.archive.count("bob", DOMAIN) == 1
    assert await server.storage.accounts.delete("bob", DOMAIN)
    assert await server.storage.archive.count("bob", DOMAIN) == 0
    assert await server.storage.archive.count("alice", DOMAIN) == 1
    await alice.close()


def old_message(days: float, body: str) -> ArchivedMessage:
    stamp = datetime.now(UTC) - timedelta(days=days)
    stanza = (
        f"<message xmlns='jabber:client' from='{ALICE}/a' to='{BOB}' type='chat'>"
        f"<body>{body}</body></message>"
    )
    return ArchivedMessage(f"old-{body}", stamp, ALICE, "a", stanza)


async def test_retention_removes_old_messages(tmp_path: Path) -> None:
    srv = await start_server(tmp_path / "data", modules=MODULES, mam={"retention_days": 7})
    try:
        await add_user(srv, "alice")
        await add_user(srv, "bob")
        for days, body in ((30, "a"), (8, "b"), (6, "c")):
            await srv.storage.archive.append("bob", DOMAIN, old_message(days, body))
        await mam.purge_expired(srv)  # (the purge at start found the archive empty)
        bob = await login_resource(srv, "bob", "b")
        page = await query(bob)
        assert page.ids == ["old-c"] and page.bodies == ["c"]
        stamp = mam.parse_datetime(page.stamps[0])
        assert timedelta(days=5.9) < datetime.now(UTC) - stamp < timedelta(days=6.1)
        await bob.close()
    finally:
        await srv.stop()


async def test_retention_runs_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = await start_server(data, modules=MODULES)
    try:
        await add_user(srv, "bob")
        for days, body in ((3, "a"), (0, "b")):
            await srv.storage.archive.append("bob", DOMAIN, old_message(days, body))
        assert await mam.purge_expired(srv) == 0  # retention_days = 0: kept forever
    finally:
        await srv.stop()
    srv = await start_server(data, modules=MODULES, mam={"retention_days": 1})
    try:
        for _ in range(100):
            if await srv.storage.archive.count("bob", DOMAIN) == 1:
                break
            await asyncio.sleep(0.02)
        bounds = await srv.storage.archive.bounds("bob", DOMAIN)
        assert bounds is not None and bounds[0].id == bounds[1].id == "old-b"
    finally:
        await srv.stop()


# ---- a real client library -------------------------------------------------------------------
async def test_slixmpp_retrieves_the_archive(server: Server) -> None:
    alice = await login_resource(server, "alice", "a", presence=True)
    sender = await login_resource(server, "carol", "c", presence=True)
    client = await connect(server, ALICE)
    client.register_plugin("xep_0059")
    client.register_plugin("xep_0313")
    for n in range(7):
        await chat(sender, alice, f"m{n}")
    plugin = client.plugin["xep_0313"]
    bodies = [
        m["mam_result"]["forwarded"]["stanza"]["body"]
        async for m in plugin.iterate(jid=ALICE, with_jid=CAROL, rsm={"max": 3})
    ]
    assert bodies == [f"m{n}" for n in range(7)]
    metadata = await plugin.get_archive_metadata()
    assert metadata["mam_metadata"]["start"]["id"]
    await disconnect(client)
    await alice.close()
    await sender.close()


# ---- the SQL store on each backend -----------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStorage]:
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path}/dovecote.sqlite3")
        storage = await backend.open()
        try:
            yield storage
        finally:
            await storage.close()
        return
    async for backend in _postgres_backend():
        storage = await backend.open()
        try:
            yield storage
        finally:
            await storage.close()


def message(
    n: int, stamp: datetime, peer: str = ALICE, resource: str | None = "a"
) -> ArchivedMessage:
    return ArchivedMessage(
        f"id{n}",
        stamp,
        peer,
        resource,
        f"<message xmlns='jabber:client'><body>{n}</body></message>",
    )


async def test_store_orders_by_arrival_and_filters(store: SQLStorage) -> None:
    await store.accounts.create("bob", DOMAIN, CREDS)
    archive = store.archive
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    # Concurrent appends go in one transaction, in call order; equal stamps keep that order.
    stamps = [base, base, base + timedelta(seconds=1), base + timedelta(seconds=2)]
    peers = [(ALICE, "a"), (CAROL, None), (ALICE, "b"), (ALICE, "a")]
    await asyncio.gather(
        *(archive.append("bob", DOMAIN, message(n, stamps[n], *peers[n])) for n in range(4))
    )
    assert await archive.count("bob", DOMAIN) == 4

    async def ids(flt: ArchiveFilter = ArchiveFilter(), limit: int = 10, **kw: object) -> list[str]:
        page = await archive.query("bob", DOMAIN, flt, limit, **kw)  # type: ignore[arg-type]
        return [m.id for m in page.messages]

    assert await ids() == ["id0", "id1", "id2", "id3"]
    assert await ids(ArchiveFilter(with_bare=ALICE)) == ["id0", "id2", "id3"]
    assert await ids(ArchiveFilter(with_bare=ALICE, with_resource="a")) == ["id0", "id3"]
    assert await ids(ArchiveFilter(with_bare=CAROL)) == ["id1"]
    plus_two = timezone(timedelta(hours=2))
    assert await ids(ArchiveFilter(start=(base + timedelta(seconds=1)).astimezone(plus_two))) == [
        "id2",
        "id3",
    ]
    assert await ids(ArchiveFilter(end=base.astimezone(plus_two))) == ["id0", "id1"]
    assert await ids(ArchiveFilter(ids=["id3", "id1"])) == ["id1", "id3"]
    assert await ids(limit=2, before="") == ["id2", "id3"]
    assert await ids(limit=2, before="id2") == ["id0", "id1"]
    assert await ids(limit=1, after="id0", before="id3") == ["id2"]
    page = await archive.query("bob", DOMAIN, ArchiveFilter(), 2, after="id0")
    assert (page.count, page.first_index, page.complete) == (4, 1, False)
    with pytest.raises(ArchiveIdNotFound):
        await ids(after="id9")
    first = (await archive.query("bob", DOMAIN, ArchiveFilter(), 1)).messages[0]
    assert first.timestamp == base and first.with_bare == ALICE and first.with_resource == "a"
    assert first.stanza == "<message xmlns='jabber:client'><body>0</body></message>"
    bounds = await archive.bounds("bob", DOMAIN)
    assert bounds is not None
    assert (bounds[0].id, bounds[0].timestamp, bounds[1].id) == ("id0", base, "id3")
    assert await archive.bounds("alice", DOMAIN) is None
    assert await archive.delete_older_than(base + timedelta(seconds=1)) == 2
    assert await ids() == ["id2", "id3"]


async def test_store_batch_survives_a_bad_row(store: SQLStorage) -> None:
    await store.accounts.create("bob", DOMAIN, CREDS)
    now = datetime.now(UTC)
    results = await asyncio.gather(
        *(store.archive.append("bob", DOMAIN, message(n, now)) for n in range(50)),
        store.archive.append("nobody", DOMAIN, message(99, now)),
        *(store.archive.append("bob", DOMAIN, message(n, now)) for n in range(50, 100)),
        return_exceptions=True,
    )
    assert [type(r) for r in results].count(StorageError) == 1 and isinstance(
        results[50], StorageError
    )
    page = await store.archive.query("bob", DOMAIN, ArchiveFilter(), 200)
    assert [m.id for m in page.messages] == [f"id{n}" for n in range(100)]
