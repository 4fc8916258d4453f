"""XEP-0045 Multi-User Chat: the conference service at `[muc] domain`.

The service (`services/muc/service.py`) registers itself as the component of its domain:
the router hands it every stanza to the domain or to a room on it, and the server's
disco#items lists it. Rooms speak XEP-0045 1.35 with occupant ids (XEP-0421), stable
stanza ids (XEP-0359), self-ping (XEP-0410), moderation (XEP-0425 with XEP-0424) and, with
a room archive, XEP-0313 on the room JID.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from dovecote.core.modules import ModuleInfo
from dovecote.services.muc.service import MucService
from dovecote.storage.base import StorageError

if TYPE_CHECKING:
    from dovecote.jid import JID
    from dovecote.server import Server

log = logging.getLogger(__name__)

MODULE = ModuleInfo(
    name="muc",
    summary="Multi-user chat (XEP-0045) at [muc] domain: rooms, affiliations, history, "
    "occupant ids (XEP-0421), self-ping (XEP-0410), moderation (XEP-0425)",
    config="muc",
)


def setup(server: Server) -> None:
    if server.config.muc.domain is None:
        return
    service = MucService(server, server.config.muc)
    server.components[service.domain] = service

    if server.config.muc.archive_retention_days > 0:
        schedule_purges(server, service)

    @server.events.on("session/ended")
    def session_ended(session: Any) -> None:
        service.session_ended(session.jid)

    @server.events.on("account/deleted")
    async def account_deleted(account: JID) -> None:
        await service.forget_affiliate(account)


#: Seconds between two purges of expired room messages.
PURGE_INTERVAL = 3600.0


def schedule_purges(server: Server, service: MucService) -> None:
    """`[muc] archive_retention_days`: purge at start and then every hour (a timer, so
    that stopping the server has nothing to wait for)."""
    loop = asyncio.get_running_loop()

    def tick() -> None:
        if server.storage is not None:
            server.spawn(run())

    async def run() -> None:
        try:
            await service.purge_expired()
        except StorageError as exc:
            log.error("room archive retention failed: %s", exc)
        finally:
            if server.storage is not None:
                loop.call_later(PURGE_INTERVAL, tick)

    loop.call_soon(tick)
