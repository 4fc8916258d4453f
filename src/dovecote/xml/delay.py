"""XEP-0203 delayed delivery stamps (XEP-0082 DateTime, UTC)."""

from __future__ import annotations

import datetime

from dovecote.xml import ns
from dovecote.xml.element import Element


def delay_stamp(now: datetime.datetime | None = None) -> str:
    """XEP-0082 DateTime in UTC with milliseconds, as XEP-0203 §4 wants it."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def with_delay(stanza: Element, domain: str, reason: str | None = None) -> Element:
    """A copy of `stanza` stamped with when it reached `domain` (XEP-0203 §3); one that
    carries a stamp already keeps it."""
    copy = stanza.copy()
    if copy.find("delay", ns.DELAY) is None:
        copy.append(
            Element("delay", ns.DELAY, {"from": domain, "stamp": delay_stamp()}, text=reason)
        )
    return copy
