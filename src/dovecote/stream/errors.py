"""Stream errors (RFC 6120 §4.9) and stanza errors (RFC 6120 §8.3)."""

from __future__ import annotations

from dovecote.xml import ns
from dovecote.xml.element import Element

#: How many characters of a peer's bad input an error text quotes back (a 'to' of 200 KiB
#: is not sent back whole).
MAX_ECHO = 64
#: The longest error text sent (RFC 6120 §4.9.2, §8.3.2: descriptive text, for humans);
#: longer ones are cut, whatever they quote.
MAX_ERROR_TEXT = 512


def excerpt(value: str, limit: int = MAX_ECHO) -> str:
    """`value` quoted for an error text, cut to `limit` characters with the length said."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "..."


STREAM_CONDITIONS = frozenset(
    """bad-format bad-namespace-prefix conflict connection-timeout host-gone host-unknown
    improper-addressing internal-server-error invalid-from invalid-namespace invalid-xml
    not-authorized not-well-formed policy-violation remote-connection-failed reset
    resource-constraint restricted-xml see-other-host system-shutdown undefined-condition
    unsupported-encoding unsupported-feature unsupported-stanza-type unsupported-version""".split()
)

#: RFC 6120 §8.3.3: each defined condition with its usual error type.
STANZA_CONDITIONS: dict[str, str] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


class StreamError(Exception):
    """Raise to end a stream with `<stream:error/>` (RFC 6120 §4.9)."""

    def __init__(self, condition: str, text: str = "") -> None:
        assert condition in STREAM_CONDITIONS, condition
        text = _bounded(text)
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text

    def to_element(self) -> Element:
        return stream_error_element(self.condition, self.text)


def stream_error_element(condition: str, text: str = "") -> Element:
    error = Element("error", ns.STREAMS)
    error.add(condition, ns.STREAM_ERRORS)
    if text:
        error.add("text", ns.STREAM_ERRORS, {f"{{{ns.XML}}}lang": "en"}, text=text)
    return error


class StanzaError(Exception):
    """Raise from a handler to answer the stanza with an error (RFC 6120 §8.3)."""

    def __init__(
        self,
        condition: str,
        text: str = "",
        type: str | None = None,
        app_condition: Element | None = None,
    ) -> None:
        assert condition in STANZA_CONDITIONS, condition
        text = _bounded(text)
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.type = type or STANZA_CONDITIONS[condition]
        self.app_condition = app_condition

    def to_element(self, by: str | None = None) -> Element:
        error = Element("error", ns.CLIENT, {"type": self.type})
        if by:
            error.attrs["by"] = by
        error.add(self.condition, ns.STANZA_ERRORS)
        if self.text:
            error.add("text", ns.STANZA_ERRORS, {f"{{{ns.XML}}}lang": "en"}, text=self.text)
        if self.app_condition is not None:
            error.append(self.app_condition)
        return error


def error_reply(stanza: Element, error: StanzaError, by: str | None = None) -> Element:
    """The error answer to `stanza` (RFC 6120 §8.3.1): same kind and id, addresses swapped,
    type 'error'. The payload of a message is kept so the sender can tell which one failed."""
    attrs = {"type": "error"}
    if "id" in stanza.attrs:
        attrs["id"] = stanza.attrs["id"]
    if "from" in stanza.attrs:
        attrs["to"] = stanza.attrs["from"]
    if "to" in stanza.attrs:
        attrs["from"] = stanza.attrs["to"]
    reply = Element(stanza.tag, ns.CLIENT, attrs)
    if stanza.tag != "iq":
        reply.children.extend(
            c for c in stanza.children if isinstance(c, Element) and c.tag != "error"
        )
    reply.append(error.to_element(by))
    return reply


IQ_TYPES = frozenset(("get", "set", "result", "error"))


def iq_problem(iq: Element) -> str | None:
    """RFC 6120 §8.2.3: id required; get/set carry exactly one payload element."""
    iq_type = iq.attrs.get("type")
    if iq_type not in IQ_TYPES:
        return "the type of an IQ must be get, set, result or error"
    if not iq.attrs.get("id"):
        return "an IQ needs an id"
    if iq_type in ("get", "set"):
        children = sum(1 for _ in iq.elements)
        if children != 1:
            return "an IQ get or set must contain exactly one child element"
    return None
