"""What the interop tests (Dovecote with Prosody, with ejabberd) share: a Dovecote peer
resolving through the test's dnsmasq, a slixmpp client on the foreign server, and the
exchange both ways (RFC 6121 subscription and presence, messages)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dovecote.server import Server
from tests.ca import Leaf
from tests.federation import DnsMasq
from tests.helpers import CLIENT, Client, Resource, add_user, login_resource, q, start_server

PASSWORD = "interop-secret"


async def start_dovecote(
    data_dir: Path,
    domain: str,
    listen: str,
    dns: DnsMasq,
    leaf: Leaf | None,
    ca_file: Path,
    **s2s: Any,
) -> Server:
    """Dovecote for `domain`, s2s on `listen`, no routes: DNS only. `leaf`: its
    certificate (None: the self-signed one made on first start)."""
    sections: dict[str, Any] = {}
    if leaf is not None:
        sections["tls"] = {"cert": str(leaf.cert), "key": str(leaf.key)}
    return await start_server(
        data_dir,
        server={"domains": [domain], "data_dir": str(data_dir)},
        listen={"s2s": listen},
        s2s={"nameservers": [dns.address], "ca_file": str(ca_file), "connect_timeout": 15, **s2s},
        **sections,
    )


async def local_user(server: Server, local: str, domain: str) -> Resource:
    await add_user(server, local, domain=domain)
    return await login_resource(server, local, domain=domain, roster=True, presence=True)


async def foreign_client(jid: str, host: str, port: int) -> Client:
    """slixmpp on the foreign server (STARTTLS; auto-authorize and auto-subscribe on)."""
    client = Client(jid, PASSWORD)
    started = asyncio.Event()
    failed: list[str] = []
    client.add_event_handler("session_start", lambda _e: started.set())
    client.add_event_handler("failed_all_auth", lambda _e: (failed.append("auth"), started.set()))
    client.enable_direct_tls = False
    client.connect(host, port)
    await asyncio.wait_for(started.wait(), 20)
    if failed:
        raise PermissionError(f"{jid}: authentication failed")
    client.send_presence()
    return client


async def next_matching(
    queue: asyncio.Queue[Any], predicate: Callable[[Any], bool], timeout: float = 15
) -> Any:
    async def loop() -> Any:
        while True:
            item = await queue.get()
            if predicate(item):
                return item

    return await asyncio.wait_for(loop(), timeout)


def _presence_from(bare: str, kind: str | None) -> Callable[[ET.Element], bool]:
    def check(el: ET.Element) -> bool:
        return (
            el.tag == q(CLIENT, "presence")
            and (el.get("from") or "").split("/")[0] == bare
            and el.get("type") == kind
        )

    return check


def is_message(el: ET.Element) -> bool:
    return el.tag == q(CLIENT, "message")


async def exchange(dave: Resource, other: Client) -> None:
    """dave (Dovecote) and `other` (slixmpp on the foreign server): subscription both ways,
    available presence both ways, a message each way."""
    other_bare = other.boundjid.bare
    dave.send(f"<presence to='{other_bare}' type='subscribe'/>")
    # slixmpp approves and subscribes back (auto_authorize, auto_subscribe): dave's
    # roster says "to", then the request comes.
    item = await dave.push_item(other_bare, timeout=20)
    while item.get("subscription") not in ("to", "both"):
        item = await dave.push_item(other_bare, timeout=20)
    await dave.take(_presence_from(other_bare, "subscribe"), timeout=20)
    dave.send(f"<presence to='{other_bare}' type='subscribed'/>")
    got = await dave.take(_presence_from(other_bare, None), timeout=20)
    assert got.get("from") == str(other.boundjid)
    await next_matching(
        other.presences,
        lambda p: str(p["from"]) == dave.jid and p["type"] in ("available", ""),
    )
    dave.send(
        f"<message to='{other.boundjid}' type='chat' id='i1'><body>from Dovecote</body></message>"
    )
    msg = await next_matching(other.messages, lambda m: m["body"] == "from Dovecote")
    assert str(msg["from"]) == dave.jid
    other.send_message(mto=dave.jid, mbody="to Dovecote", mtype="chat")
    got = await dave.take(is_message, timeout=15)
    assert got.get("from") == str(other.boundjid)
    assert got.findtext(q(CLIENT, "body")) == "to Dovecote"


def links(server: Server, direction: str) -> list[dict[str, Any]]:
    assert server.s2s is not None
    return [row for row in server.s2s.describe() if row["direction"] == direction]
