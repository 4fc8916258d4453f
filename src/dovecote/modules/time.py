"""XEP-0202: Entity Time of the server."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from dovecote.core.modules import ModuleInfo
from dovecote.xml import ns
from dovecote.xml.element import Element

if TYPE_CHECKING:
    from dovecote.core.router import StanzaEvent
    from dovecote.server import Server

MODULE = ModuleInfo(
    name="time",
    summary="Entity Time (XEP-0202) of the server",
    features=[ns.TIME],
)


def format_tzo(offset: datetime.timedelta | None) -> str:
    """XEP-0082 time zone offset, e.g. '+02:00', 'Z' never (XEP-0202 §3 uses +00:00)."""
    minutes = int((offset or datetime.timedelta()).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def setup(server: Server) -> None:
    @server.events.on(f"iq/host/get/{ns.TIME}:time")
    def entity_time(event: StanzaEvent) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        local = now.astimezone()
        time_el = Element("time", ns.TIME)
        time_el.add("tzo", text=format_tzo(local.utcoffset()))
        # XEP-0202 §3: UTC in XEP-0082 DateTime format.
        time_el.add(
            "utc", text=now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        )
        event.reply(time_el)
        return True
