"""Strangers cannot tell an existing account from a missing one by the IQs the server answers
on an account's behalf (RFC 6121 §8.5.1 service-unavailable for both); the owner and
contacts with a presence subscription get real answers (Prosody's rule for account
disco#info)."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from dovecote.server import Server
from dovecote.storage.base import RosterItem
from tests.helpers import CLIENT, DOMAIN, RawClient, add_user, error_condition, q, raw_login

IQ = q(CLIENT, "iq")
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
PUBSUB = "http://jabber.org/protocol/pubsub"

#: IQs a stranger might probe an account with: (type, payload). Not PEP (XEP-0163): its
#: nodes answer by their access model, and item-not-found for a node that does not exist
#: tells the account does (as in Prosody; left as it is).
PROBES = [
    ("get", "<ping xmlns='urn:xmpp:ping'/>"),
    ("get", f"<query xmlns='{DISCO_INFO}'/>"),
    ("get", f"<query xmlns='{DISCO_ITEMS}'/>"),
    ("get", "<query xmlns='jabber:iq:last'/>"),
    ("get", "<vCard xmlns='vcard-temp'/>"),
    ("set", "<vCard xmlns='vcard-temp'><FN>defaced</FN></vCard>"),
    ("get", "<query xmlns='jabber:iq:roster'/>"),
    ("get", "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"),
    ("get", "<blocklist xmlns='urn:xmpp:blocking'/>"),
    ("get", "<prefs xmlns='urn:xmpp:mam:2'/>"),
    ("get", f"<pubsub xmlns='{PUBSUB}#owner'><configure node='x'/></pubsub>"),
    ("get", "<query xmlns='urn:example:unknown'/>"),
]


@dataclass
class Asker:
    raw: RawClient
    jid: str
    count: int = 0

    async def iq(self, to: str, iq_type: str, payload: str) -> ET.Element:
        self.count += 1
        ident = f"p{self.count}"
        self.raw.send(f"<iq type='{iq_type}' id='{ident}' to='{to}'>{payload}</iq>")
        return await self.raw.wait_for(lambda e: e.tag == IQ and e.get("id") == ident)


@pytest.fixture
async def people(server: Server) -> AsyncIterator[dict[str, Asker]]:
    """bob (the account), alice (bob's contact: bob's presence goes to her), carol (a
    stranger)."""
    for name in ("alice", "bob", "carol"):
        await add_user(server, name)
    await server.storage.roster.put(
        "bob", DOMAIN, RosterItem("alice@example.org", subscription="from")
    )
    askers = {}
    for name in ("alice", "bob", "carol"):
        raw, jid = await raw_login(server, name)
        askers[name] = Asker(raw, jid)
    yield askers
    for asker in askers.values():
        await asker.raw.close()


def without_addresses(stanza: ET.Element) -> bytes:
    """The whole stanza but its id, to and from."""
    stripped = copy.deepcopy(stanza)
    for attr in ("id", "to", "from"):
        stripped.attrib.pop(attr, None)
    return ET.tostring(stripped)


@pytest.mark.parametrize(("iq_type", "payload"), PROBES)
async def test_a_stranger_gets_the_same_answer_from_real_and_missing_accounts(
    people: dict[str, Asker], iq_type: str, payload: str
) -> None:
    carol = people["carol"]
    real = await carol.iq("bob@example.org", iq_type, payload)
    missing = await carol.iq("nobody@example.org", iq_type, payload)
    assert error_condition(missing) == ("cancel", "service-unavailable")
    assert without_addresses(real) == without_addresses(missing)
    assert real.get("from") == "bob@example.org"


async def test_account_disco_info_for_owner_and_subscribers_only(
    people: dict[str, Asker],
) -> None:
    query = f"<query xmlns='{DISCO_INFO}'/>"
    for name in ("bob", "alice"):
        answer = await people[name].iq("bob@example.org", "get", query)
        assert answer.get("type") == "result", ET.tostring(answer)
        info = answer.find(q(DISCO_INFO, "query"))
        assert info is not None
        assert info.find(q(DISCO_INFO, "identity")).get("category") == "account"  # type: ignore[union-attr]
    refused = await people["carol"].iq("bob@example.org", "get", query)
    assert error_condition(refused) == ("cancel", "service-unavailable")


async def test_contacts_get_pings_and_real_errors(people: dict[str, Asker]) -> None:
    alice = people["alice"]
    pong = await alice.iq("bob@example.org", "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert pong.get("type") == "result" and list(pong) == []
    # Not the owner: the roster stays private, with the error that says so.
    roster = await alice.iq("bob@example.org", "get", "<query xmlns='jabber:iq:roster'/>")
    assert error_condition(roster) == ("auth", "forbidden")


async def test_published_vcards_stay_public(people: dict[str, Asker]) -> None:
    """XEP-0054: anyone may read a published vCard (what an account publishes to everyone
    is the one thing that shows it exists)."""
    bob, carol = people["bob"], people["carol"]
    stored = await bob.iq(
        "bob@example.org", "set", "<vCard xmlns='vcard-temp'><FN>Bob</FN></vCard>"
    )
    assert stored.get("type") == "result"
    answer = await carol.iq("bob@example.org", "get", "<vCard xmlns='vcard-temp'/>")
    assert answer.get("type") == "result"
    assert answer.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Bob"
