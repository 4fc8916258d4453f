"""XEP-0049: Private XML Storage (jabber:iq:private) — XML a user keeps on the server for
their own clients (bookmarks, client preferences, ...), one entry per namespace.

Each namespace is stored under its own key as a serialized `<query/>` holding the
element(s) of that namespace (XEP-0049 §2.3: a set MAY carry several elements of one
namespace).

Per user at most `[private] max_namespaces` namespaces and `max_bytes` bytes in all; a set
beyond either gets resource-constraint (RFC 6120 §8.3.3.18: XEP-0049 §3 keeps not-acceptable
for reserved namespaces, and the client can store again after clearing something).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.stream.errors import StanzaError
from dovecote.xml import ns
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

PRIVATE = "jabber:iq:private"
MODULE = ModuleInfo(
    name="private",
    summary="Private XML storage (XEP-0049)",
    features=[PRIVATE],
    config="private",
)
#: XEP-0049 §2.3: namespaces that cannot hold private data (answered with not-acceptable).
RESERVED = frozenset((ns.CLIENT, ns.SERVER, ns.COMPONENT, PRIVATE, ""))


def storage_key(namespace: str) -> str:
    return f"private:{namespace}"


def check_namespace(element: Element) -> None:
    if element.ns in RESERVED:
        raise StanzaError("not-acceptable", f"the namespace {element.ns!r} is reserved")


def setup(server: Server) -> None:
    events = server.events
    kv = server.storage.kv
    max_namespaces = server.config.private.max_namespaces
    max_bytes = server.config.private.max_bytes
    #: One set at a time per user, so that the quota check and the writes go together.
    locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
        weakref.WeakValueDictionary()
    )

    def lock(local: str, domain: str) -> asyncio.Lock:
        found = locks.get((local, domain))
        if found is None:
            found = locks[(local, domain)] = asyncio.Lock()
        return found

    def owner_query(event: StanzaEvent) -> tuple[str, str, list[Element]]:
        """The account (local, domain) and the query's children; XEP-0049 §2.3: only
        one's own data (forbidden otherwise), at least one child (not-acceptable)."""
        account = event.to.bare
        if event.sender.bare != account:
            raise StanzaError("forbidden", "private storage is only for its owner")
        query = event.payload
        assert query is not None
        children = list(query.elements)
        if not children:
            raise StanzaError("not-acceptable", "name the namespace to store or retrieve")
        for child in children:
            check_namespace(child)
        return account.local or "", account.domain, children

    @events.on(f"iq/bare/get/{PRIVATE}:query")
    async def get_private(event: StanzaEvent) -> bool:
        local, domain, children = owner_query(event)
        if len(children) > 1:
            # XEP-0049 §2.3: a client MUST NOT query for more than one namespace at once.
            raise StanzaError("bad-request", "retrieve one namespace at a time")
        wanted = children[0]
        stored = await kv.get(local, domain, storage_key(wanted.ns))
        # An unreadable stored value is logged and answered as nothing stored.
        what = f"private XML {wanted.ns} of {local}@{domain}"
        query = parse_stored(stored, what) if stored is not None else None
        if query is not None:
            event.reply(query)
        else:
            event.reply(Element("query", PRIVATE, children=[Element(wanted.tag, wanted.ns)]))
        return True

    @events.on(f"iq/bare/set/{PRIVATE}:query")
    async def set_private(event: StanzaEvent) -> bool:
        local, domain, children = owner_query(event)
        by_namespace: dict[str, list[Element]] = defaultdict(list)
        for child in children:
            by_namespace[child.ns].append(child)
        values: dict[str, str | None] = {}
        for namespace, elements in by_namespace.items():
            if all(not e.children and not e.attrs for e in elements):
                value = None  # storing an empty element clears the namespace
            else:
                value = serialize(Element("query", PRIVATE, children=list(elements)))
            values[storage_key(namespace)] = value
        async with lock(local, domain):
            stored = await kv.sizes(local, domain, storage_key(""))
            before = len(stored), sum(stored.values())
            for key, value in values.items():
                stored.pop(key, None)
                if value is not None:
                    stored[key] = len(value.encode())
            # What only shrinks passes (limits lowered since it was stored).
            if len(stored) > max(max_namespaces, before[0]):
                raise StanzaError(
                    "resource-constraint", f"at most {max_namespaces} namespaces are stored"
                )
            if sum(stored.values()) > max(max_bytes, before[1]):
                raise StanzaError(
                    "resource-constraint", f"at most {max_bytes} bytes of private XML are stored"
                )
            for key, value in values.items():
                await kv.set(local, domain, key, value)
        event.reply()
        return True
