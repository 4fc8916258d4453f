"""XEP-0054: vcard-temp — each account's vCard, published by its owner, readable by anyone.

The vCard is kept whole as serialized XML in the account's key/value store (XEP-0054 §3.2:
there are no partial updates, every set replaces the stored vCard).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.stream.errors import StanzaError
from dovecote.xml.element import Element, serialize
from dovecote.xml.parser import parse_stored

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

VCARD = "vcard-temp"
MODULE = ModuleInfo(
    name="vcard",
    summary="vcard-temp (XEP-0054): each account's vCard, readable by anyone",
    features=[VCARD],  # XEP-0054 §4
    # XEP-0054 §3.3: anyone may read a vCard.
    public_account_iqs=[f"get/{VCARD}:vCard"],
    config="vcard",
)
#: The largest vCard accepted, in bytes of serialized XML (avatars make vCards big).
STORAGE_KEY = "vcard-temp"


def setup(server: Server) -> None:
    events = server.events
    kv = server.storage.kv

    @events.on(f"iq/bare/get/{VCARD}:vCard")
    async def get_vcard(event: StanzaEvent) -> bool:
        account = event.to.bare
        stored = await kv.get(account.local or "", account.domain, STORAGE_KEY)
        # An unreadable stored vCard is logged and answered as no vCard.
        vcard = parse_stored(stored, f"vCard of {account}") if stored is not None else None
        if vcard is not None:
            event.reply(vcard)
        elif event.sender.bare == account:
            # XEP-0054 §3.1: one's own missing vCard may be answered with an empty one.
            event.reply(Element("vCard", VCARD))
        else:
            # XEP-0054 §3.3: for anyone else, "no vCard" and "no such user" MUST give the
            # same error, service-unavailable (against directory harvesting).
            raise StanzaError("service-unavailable")
        return True

    @events.on(f"iq/bare/set/{VCARD}:vCard")
    async def set_vcard(event: StanzaEvent) -> bool:
        account = event.to.bare
        if event.sender.bare != account:
            # XEP-0054 §3.2: only the owner may change a vCard.
            raise StanzaError("forbidden", "you may only change your own vCard")
        vcard = event.payload
        assert vcard is not None
        text: str | None = serialize(vcard)
        if next(vcard.elements, None) is None and not vcard.text.strip():
            text = None  # an empty vCard: nothing to keep
        elif len(text.encode()) > server.config.vcard.max_size:
            raise StanzaError(
                "not-acceptable", f"the vCard is larger than {server.config.vcard.max_size} bytes"
            )
        await kv.set(account.local or "", account.domain, STORAGE_KEY, text)
        event.reply()
        return True
