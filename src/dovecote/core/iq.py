"""IQ requests sent by the server itself, and their answers (RFC 6120 §8.2.3).

    result = await iq.request(server, Element("iq", ns.CLIENT, {"type": "get",
                              "from": domain, "to": str(full_jid)}, [query]))

The request gets a fresh id (any given one is replaced) and is routed like any stanza. The
answer comes back addressed to the request's 'from' (the server's domain or an account's
bare JID), which the router fires as `iq/host/result`, `iq/host/error`, `iq/bare/result` or
`iq/bare/error`; it is matched by id *and* by the sender being the entity asked, so another
entity cannot answer in its place (RFC 6120 §8.2.3: a response comes from the entity the
request was sent to). An error answer raises `IQRequestError` (so does the end of the
asked client's session); silence, `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from typing import TYPE_CHECKING, Any

from dovecote.jid import JID, InvalidJID
from dovecote.stream.errors import StanzaError, error_reply
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

#: Handlers run before anything else that might want IQ answers addressed to the server.
PRIORITY = 1000


class IQRequestError(Exception):
    """The entity answered with an IQ error; `condition` is its RFC 6120 §8.3.3 condition."""

    def __init__(self, stanza: Element) -> None:
        self.stanza = stanza
        error = stanza.find("error", ns.CLIENT)
        self.condition = "undefined-condition"
        if error is not None:
            for child in error.elements:
                if child.ns == ns.STANZA_ERRORS and child.tag != "text":
                    self.condition = child.tag
                    break
        super().__init__(self.condition)


class _Pending:
    """The server's requests waiting for an answer: (id, asked JID) -> (request, future)."""

    def __init__(self, server: Server) -> None:
        self.waiting: dict[tuple[str, JID], tuple[Element, asyncio.Future[Element]]] = {}
        for name in ("iq/host/result", "iq/host/error", "iq/bare/result", "iq/bare/error"):
            server.events.add(name, self.answer, PRIORITY)
        server.events.add("session/ended", self.gone)

    def answer(self, event: StanzaEvent) -> bool:
        iq_id = event.stanza.attrs.get("id")
        if iq_id is None:
            return False
        found = self.waiting.pop((iq_id, event.sender), None)
        if found is None:
            return False  # not ours (or too late): others may want it
        future = found[1]
        if not future.done():
            if event.type == "error":
                future.set_exception(IQRequestError(event.stanza))
            else:
                future.set_result(event.stanza)
        return True

    def gone(self, session: Any) -> None:
        """A client session ended: what was asked of it gets the error a request to a
        full JID with no session gets (RFC 6121 §8.5.3.2.3), now rather than at timeout."""
        for key, (request, future) in list(self.waiting.items()):
            if key[1] == session.jid and not future.done():
                del self.waiting[key]
                reply = error_reply(request, StanzaError("service-unavailable"))
                future.set_exception(IQRequestError(reply))


_registries: weakref.WeakKeyDictionary[Server, _Pending] = weakref.WeakKeyDictionary()


def install(server: Server) -> None:
    """Start matching answers for `server` (done by the first `request`; idempotent)."""
    if server not in _registries:
        _registries[server] = _Pending(server)


async def request(server: Server, stanza: Element, timeout: float = 30.0) -> Element:
    """Send an IQ get/set from the server and return the IQ result answering it.

    `stanza` needs 'to' and 'from' (the answer comes back to 'from': one of the server's
    domains, or an account's bare JID when the server asks on its behalf). Raises
    `IQRequestError` for an error answer and `TimeoutError` after `timeout` seconds."""
    install(server)
    pending = _registries[server]
    try:
        asked = JID.parse(stanza.attrs["to"])
    except (KeyError, InvalidJID):
        raise ValueError("an IQ request needs a valid 'to'") from None
    iq_id = f"dc-{secrets.token_hex(8)}"
    stanza.attrs["id"] = iq_id
    key = (iq_id, asked)
    future: asyncio.Future[Element] = asyncio.get_running_loop().create_future()
    pending.waiting[key] = (stanza, future)
    try:
        await server.router.route(stanza)
        return await asyncio.wait_for(future, timeout)
    finally:
        pending.waiting.pop(key, None)
