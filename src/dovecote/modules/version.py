"""XEP-0092: Software Version of the server."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="version",
    summary="Software Version (XEP-0092) of the server",
    features=[ns.VERSION],
)


def setup(server: Server) -> None:
    @server.events.on(f"iq/host/get/{ns.VERSION}:query")
    def software_version(event: StanzaEvent) -> bool:
        query = Element("query", ns.VERSION)
        query.add("name", text="Dovecote")
        query.add("version", text=server.version)
        if server.config.server.show_os:  # XEP-0092 §2: 'os' is optional and may be hidden
            query.add("os", text=f"{platform.system()} {platform.release()}".strip())
        event.reply(query)
        return True
