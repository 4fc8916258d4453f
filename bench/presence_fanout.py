#!/usr/bin/env python3
"""Presence broadcast micro-benchmark: the server-side cost of one user's presence
update reaching N contacts (RFC 6121 §4.2.2), each online with R resources.

    PYTHONPATH=src python bench/presence_fanout.py [--contacts 1000] [--resources 2]
        [--rounds 50]

Runs a Dovecote server in-process (SQLite in a temporary directory, the default
modules, blocking included), puts N contacts with a mutual subscription in the user's
roster, and binds in-memory sessions for the user and the contacts: they serialize what
they are sent exactly as a client connection does (the TCP transport's serializer) but
write nowhere, so the number is the routing + serialization work, no socket. Prints one
JSON document: microseconds per broadcast and per recipient, and the bytes written.
A benchmark, never a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dovecote.config import config_from_dict
from dovecote.jid import JID
from dovecote.server import Server
from dovecote.storage.base import RosterItem
from dovecote.storage.credentials import derive_credentials
from dovecote.transport.tcp import PREFIXES
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize

DOMAIN = "bench.local"


class Transport:
    """Serializes like the TCP transport; counts instead of writing."""

    def __init__(self) -> None:
        self.written = 0

    def serialize(self, element: Element) -> bytes:
        return serialize(element, ns.CLIENT, PREFIXES).encode()


class MemorySession:
    """A bound, available session as routing sees it (core/sessions.py Session)."""

    def __init__(self, jid: JID) -> None:
        self.jid = jid
        self.priority = 0
        self.available = True
        self.presence: Element | None = None
        self.data: dict[str, Any] = {}
        self.transport = Transport()
        self.received = 0

    def serialize(self, stanza: Element) -> bytes:
        return self.transport.serialize(stanza)

    def send(self, stanza: Element, data: bytes | None = None) -> None:
        if data is None:
            data = self.transport.serialize(stanza)
        self.transport.written += len(data)
        self.received += 1

    def close(self, condition: str | None = None, text: str = "") -> None:
        pass


async def run(contacts: int, resources: int, rounds: int, data_dir: Path) -> dict[str, Any]:
    config = config_from_dict(
        {
            "server": {"domains": [DOMAIN], "data_dir": str(data_dir)},
            "listen": {"c2s": "127.0.0.1:0", "c2s_tls": "", "s2s": "", "http": ""},
            "logging": {"level": "warning"},
        }
    )
    server = Server(config)
    await server.start()
    try:
        user = JID("user", DOMAIN)
        await server.storage.accounts.create("user", DOMAIN, derive_credentials("bench"))
        roster = server.storage.roster
        names = [f"c{i}" for i in range(contacts)]
        for name in names:
            await roster.put("user", DOMAIN, RosterItem(f"{name}@{DOMAIN}", subscription="both"))
        user_session = MemorySession(user.with_resource("bench"))
        server.sessions.bind(user_session, user_session.jid)
        sessions = []
        for name in names:
            for r in range(resources):
                session = MemorySession(JID(name, DOMAIN, f"r{r}"))
                server.sessions.bind(session, session.jid)
                sessions.append(session)
        for session in [user_session, *sessions]:
            # What a real bind does: per-user caches (blocklists, ...) loaded.
            await server.events.fire_all("session/bound", session)
        stanza = Element("presence", ns.CLIENT, {"from": str(user_session.jid)})
        stanza.add("show", text="away")
        stanza.add("status", text="Out for lunch, back at two")
        stanza.add("c", "http://jabber.org/protocol/caps").attrs.update(
            {
                "hash": "sha-1",
                "node": "https://example.org/client",
                "ver": "q07IKJEyjvHSyhy//CH0CxmKi8w=",
            }
        )

        async def broadcast() -> None:
            await server.events.fire_all("presence/outgoing", (user_session, stanza))

        for _ in range(3):  # warm-up: rosters and blocklists cached
            await broadcast()
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            await broadcast()
            timings.append(time.perf_counter() - start)
        received = sum(s.received for s in sessions)
        written = sum(s.transport.written for s in sessions)
        median = statistics.median(timings)
        return {
            "contacts": contacts,
            "resources_per_contact": resources,
            "rounds": rounds,
            "median_ms_per_broadcast": round(median * 1000, 3),
            "min_ms_per_broadcast": round(min(timings) * 1000, 3),
            "us_per_recipient_session": round(median * 1e6 / (contacts * resources), 2),
            "stanzas_received": received,
            "bytes_per_stanza": round(written / received, 1) if received else 0,
        }
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--resources", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.contacts, args.resources, args.rounds, Path(tmp)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
