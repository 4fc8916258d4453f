"""XEP-0297: Stanza Forwarding — wrap a stanza in `<forwarded xmlns='urn:xmpp:forward:0'>`.

Used by Message Carbons (XEP-0280) and Message Archive Management (XEP-0313). The
forwarded stanza keeps its own namespace (`jabber:client`, XEP-0297 §3.2 rule 3); the
serializer writes the `xmlns` declaration because it differs from the wrapper's.
"""

from __future__ import annotations

import datetime

from dovecote.xml import ns
from dovecote.xml.element import Element

FORWARD = "urn:xmpp:forward:0"


def datetime_stamp(moment: datetime.datetime) -> str:
    """XEP-0082 DateTime in UTC with milliseconds, the form XEP-0203 `stamp` wants."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    moment = moment.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def forwarded(
    stanza: Element,
    stamp: datetime.datetime | str | None = None,
    delay_from: str | None = None,
) -> Element:
    """`<forwarded xmlns='urn:xmpp:forward:0'>[<delay/>]stanza</forwarded>` (XEP-0297 §3.1).

    `stamp` (a datetime or an XEP-0082 string) adds the XEP-0203 `<delay/>` telling when
    the forwarding entity received the stanza (§3.2 rule 2); `delay_from` is its 'from'.
    The stanza is included as it is, not copied: pass a copy when the original may still
    change (e.g. `stanza.shallow_copy()` when children may be appended later).
    """
    children: list[Element | str] = []
    if stamp is not None:
        text = stamp if isinstance(stamp, str) else datetime_stamp(stamp)
        attrs = {"stamp": text}
        if delay_from:
            attrs["from"] = delay_from
        children.append(Element("delay", ns.DELAY, attrs))
    if not stanza.ns:
        # §3.2 rule 3: without a namespace it would inherit urn:xmpp:forward:0.
        stanza = stanza.shallow_copy()
        stanza.ns = ns.CLIENT
    children.append(stanza)
    return Element("forwarded", FORWARD, {}, children)


def forwarded_stanza(wrapper: Element) -> Element | None:
    """The stanza inside a `<forwarded/>` element (the first child that is not the delay)."""
    for child in wrapper.elements:
        if not (child.tag == "delay" and child.ns == ns.DELAY):
            return child
    return None


def forwarded_delay(wrapper: Element) -> Element | None:
    """The XEP-0203 `<delay/>` of a `<forwarded/>` element, if any."""
    return wrapper.find("delay", ns.DELAY)
