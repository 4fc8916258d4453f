"""XEP-0012 Last Activity of accounts: logout time and status, for those who may see the
user's presence only."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

from dovecote.storage.base import RosterItem
from tests.helpers import CLIENT, DOMAIN, RawClient, add_user, error_condition, q, start_server

LAST = "jabber:iq:last"


async def ask(raw: RawClient, to: str, ident: str) -> ET.Element:
    raw.send(f"<iq type='get' id='{ident}' to='{to}'><query xmlns='{LAST}'/></iq>")
    return await raw.wait_for(lambda e: e.tag == q(CLIENT, "iq") and e.get("id") == ident)


async def test_last_activity_of_accounts(tmp_path: Path) -> None:
    server = await start_server(tmp_path)
    try:
        for name in ("alice", "bob", "carol", "dave"):
            await add_user(server, name)
        # bob may see alice's presence; carol may not.
        await server.storage.roster.put(
            "alice", DOMAIN, RosterItem("bob@example.org", subscription="from")
        )
        bob = await RawClient.open(server.ports["c2s"])
        await bob.login("bob")
        carol = await RawClient.open(server.ports["c2s"])
        await carol.login("carol")

        alice = await RawClient.open(server.ports["c2s"])
        await alice.login("alice", resource="desk")
        alice.send("<presence/>")
        # Online: 0 seconds (§3).
        online = await ask(bob, "alice@example.org", "l1")
        assert online.get("type") == "result"
        assert online.find(q(LAST, "query")).get("seconds") == "0"  # type: ignore[union-attr]
        # A stranger gets what a missing account or resource answers (not forbidden, which
        # would tell the account exists and is online), and the query is not delivered.
        unavailable = ("cancel", "service-unavailable")
        assert error_condition(await ask(carol, "alice@example.org", "l2")) == unavailable
        assert error_condition(await ask(carol, "alice@example.org/desk", "l3")) == unavailable
        assert error_condition(await ask(carol, "nobody@example.org", "l2b")) == unavailable
        assert error_condition(await ask(carol, "nobody@example.org/desk", "l3b")) == unavailable
        # A contact's query to the resource reaches the client.
        bob.send(f"<iq type='get' id='l4' to='alice@example.org/desk'><query xmlns='{LAST}'/></iq>")
        delivered = await alice.wait_for(lambda e: e.get("id") == "l4")
        assert delivered.get("from") == "bob@example.org/raw"

        alice.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        await asyncio.sleep(0.1)
        await alice.close()
        await asyncio.sleep(1.2)
        gone = await ask(bob, "alice@example.org", "l5")
        query = gone.find(q(LAST, "query"))
        assert gone.get("type") == "result" and query is not None
        assert int(query.get("seconds") or "-1") >= 1
        assert query.text == "Heading Home"
        # The user asks about herself too; nobody knows about an account never used.
        assert error_condition(await ask(bob, "dave@example.org", "l6")) == unavailable
        await server.storage.roster.put(
            "dave", DOMAIN, RosterItem("bob@example.org", subscription="both")
        )
        assert error_condition(await ask(bob, "dave@example.org", "l7")) == (
            "cancel",
            "item-not-found",
        )
        await bob.close()
        await carol.close()
    finally:
        await server.stop()
    # Kept across a restart.
    server = await start_server(tmp_path)
    try:
        bob = await RawClient.open(server.ports["c2s"])
        await bob.login("bob")
        again = await ask(bob, "alice@example.org", "l8")
        assert again.find(q(LAST, "query")).text == "Heading Home"  # type: ignore[union-attr]
        await bob.close()
    finally:
        await server.stop()
