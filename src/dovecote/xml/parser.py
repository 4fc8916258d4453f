"""Incremental XML stream parser on expat (RFC 6120 §4, §11).

Feed it bytes as they arrive; it returns the events completed so far: the stream header,
each top-level element (a stanza, or a negotiation element) as one `Element`, and the end
of the stream. RFC 6120 §11.1 restrictions are enforced: a DTD, entity declaration,
processing instruction or comment is `restricted-xml`; broken XML is `not-well-formed`;
a top-level element over the size limit is `policy-violation`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from xml.parsers import expat

from dovecote.xml.element import Element

log = logging.getLogger(__name__)

_SEP = "\x01"  # expat's namespace separator: cannot occur in names or URIs
MAX_DEPTH = 100
#: ASCII characters that a URI reference cannot contain (RFC 3986 §2, RFC 3987 §2.2).
_NOT_IN_URIS = re.compile(r'[ \t\r\n"<>\\^`{|}]')
#: XML 1.0 §2.3 S: the only whitespace characters of XML.
_XML_WHITESPACE = " \t\r\n"


_HANDLERS = (
    "StartElementHandler",
    "EndElementHandler",
    "CharacterDataHandler",
    "StartNamespaceDeclHandler",
    "XmlDeclHandler",
)


class XMLStreamError(Exception):
    """A stream-level XML error; `condition` is the RFC 6120 §4.9.3 stream error."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


@dataclass(slots=True)
class StreamHeader:
    """The opening `<stream:stream>` tag."""

    tag: str
    ns: str
    prefix: str | None
    attrs: dict[str, str]
    #: Namespace declarations on the header: prefix ('' for the default) -> URI.
    namespaces: dict[str, str] = field(default_factory=dict)

    @property
    def default_ns(self) -> str | None:
        return self.namespaces.get("")


@dataclass(slots=True)
class StreamOpened:
    header: StreamHeader


@dataclass(slots=True)
class ElementReceived:
    element: Element
    #: Bytes of XML this element took on the wire (for accounting and SM).
    size: int


@dataclass(slots=True)
class StreamClosed:
    pass


ParserEvent = StreamOpened | ElementReceived | StreamClosed


def _split(name: str) -> tuple[str, str, str | None]:
    """expat 'uri SEP local SEP prefix' -> (uri, local, prefix)."""
    parts = name.split(_SEP)
    if len(parts) == 1:
        return "", parts[0], None
    if len(parts) == 2:
        return parts[0], parts[1], None
    return parts[0], parts[1], parts[2]


class StreamParser:
    """One XML stream; call `reset()` at each stream restart (after TLS, after SASL)."""

    def __init__(self, max_stanza_size: int = 262144) -> None:
        self.max_stanza_size = max_stanza_size
        self.reset()

    def reset(self) -> None:
        parser = expat.ParserCreate("UTF-8", _SEP)
        parser.namespace_prefixes = True
        parser.buffer_size = 2048  # per connection: 8 KiB by default
        parser.buffer_text = True
        parser.ordered_attributes = False
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        parser.StartNamespaceDeclHandler = self._ns_decl
        parser.XmlDeclHandler = self._xml_decl
        parser.StartDoctypeDeclHandler = self._restricted("a DTD")
        parser.EntityDeclHandler = self._restricted("an entity declaration")
        parser.ProcessingInstructionHandler = self._restricted("a processing instruction")
        parser.CommentHandler = self._restricted("a comment")
        parser.DefaultHandler = None
        parser.SkippedEntityHandler = self._restricted("an entity reference")
        self._parser = parser
        self._stack: list[Element] = []
        self._depth = 0
        self._events: list[ParserEvent] = []
        self._pending_ns: dict[str, str] = {}
        self._stanza_start = 0
        self._mark = 0  # input position of the last parser event
        self._fed = 0
        self._closed = False

    # ---- expat callbacks -----------------------------------------------------------
    def _restricted(self, what: str):  # type: ignore[no-untyped-def]
        def handler(*_args: object) -> None:
            raise XMLStreamError("restricted-xml", f"{what} is not allowed in XMPP")

        return handler

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding is not None and encoding.upper().replace("-", "") != "UTF8":
            raise XMLStreamError("unsupported-encoding", f"encoding {encoding!r} is not UTF-8")

    def _ns_decl(self, prefix: str | None, uri: str | None) -> None:
        if uri and _NOT_IN_URIS.search(uri):
            # Namespaces in XML §2.2: a namespace name is a URI reference, where these
            # cannot occur (RFC 3986 §2). Clients choke on them: ElementTree (so slixmpp)
            # names elements "{uri}local" and refuses braces, xml.sax splits at spaces.
            raise XMLStreamError("not-well-formed", "a namespace name must be a URI")
        if self._depth == 0:
            self._pending_ns[prefix or ""] = uri or ""

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        self._mark = self._parser.CurrentByteIndex
        uri, local, prefix = _split(name)
        depth = self._depth
        self._depth = depth + 1
        if depth == 0:
            header_attrs = {self._attr_name(k): v for k, v in attrs.items()}
            self._events.append(
                StreamOpened(StreamHeader(local, uri, prefix, header_attrs, self._pending_ns))
            )
            self._pending_ns = {}
            return
        if depth >= MAX_DEPTH:
            raise XMLStreamError("policy-violation", "elements nested too deeply")
        el = Element(local, uri, {self._attr_name(k): v for k, v in attrs.items()} if attrs else {})
        if depth == 1:
            self._stanza_start = self._parser.CurrentByteIndex
        else:
            self._stack[-1].children.append(el)
        self._stack.append(el)

    @staticmethod
    def _attr_name(name: str) -> str:
        if _SEP not in name:
            return name
        uri, local, _prefix = _split(name)
        return f"{{{uri}}}{local}"

    def _end(self, name: str) -> None:
        self._mark = self._parser.CurrentByteIndex
        self._depth -= 1
        if self._depth == 0:
            self._closed = True
            self._events.append(StreamClosed())
            return
        el = self._stack.pop()
        if self._depth == 1:
            size = self._parser.CurrentByteIndex - self._stanza_start
            if el.children:
                # The index is at the start of the end tag (after a self-closing tag when
                # there are no children, the usual spelling): count the end tag too.
                _uri, local, prefix = _split(name)
                size += len(local) + 3 + (len(prefix) + 1 if prefix else 0)
            if size > self.max_stanza_size:
                raise XMLStreamError("policy-violation", "stanza too large")
            self._events.append(ElementReceived(el, size))

    def _text(self, data: str) -> None:
        self._mark = self._parser.CurrentByteIndex
        if self._depth >= 2:
            children = self._stack[-1].children
            # Text arriving in several chunks is one text node, however the bytes came.
            if children and isinstance(children[-1], str):
                children[-1] += data
            else:
                children.append(data)
        elif self._depth == 1 and data.strip(_XML_WHITESPACE):
            # RFC 6120 §11.7: only whitespace may separate first-level elements (it is kept
            # as a keepalive, §4.6.1, and ignored). Other text is well-formed XML that no
            # XMPP entity can process: §4.9.3.1 <bad-format/>, as no more specific condition
            # (§4.9.3.13 not-well-formed, §4.9.3.18 restricted-xml) describes it.
            raise XMLStreamError("bad-format", "only whitespace may come between stanzas")

    def close(self) -> None:
        """Release expat (its handlers refer back to this object: a reference cycle)."""
        parser = self._parser
        for handler in _HANDLERS:
            setattr(parser, handler, None)
        self._stack = []
        self._events = []
        self._closed = True

    # ---- feeding -------------------------------------------------------------------
    def feed(self, data: bytes) -> list[ParserEvent]:
        """Parse a chunk; returns the completed events. Raises XMLStreamError."""
        if self._closed:
            return []
        self._fed += len(data)
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            raise XMLStreamError("not-well-formed", expat.errors.messages[exc.code]) from None
        if self._depth >= 2:
            if self._fed - self._stanza_start > self.max_stanza_size:
                raise XMLStreamError("policy-violation", "stanza too large")
        elif self._fed - self._mark > self.max_stanza_size:
            # An unfinished tag (expat buffers it) must not grow without bounds either.
            raise XMLStreamError("policy-violation", "tag too large")
        events, self._events = self._events, []
        return events

    @property
    def in_stanza(self) -> bool:
        return self._depth >= 2


def parse_element(text: str | bytes, max_size: int = 16 * 1024 * 1024) -> Element:
    """Parse one stored XML element (e.g. a vCard or offline message kept as text).

    The same restrictions as on the wire apply; raises XMLStreamError."""
    data = text.encode() if isinstance(text, str) else text
    parser = StreamParser(max_size)
    events = parser.feed(b"<wrapper>" + data + b"</wrapper>")
    elements = [e.element for e in events if isinstance(e, ElementReceived)]
    if len(elements) != 1 or not any(isinstance(e, StreamClosed) for e in events):
        raise XMLStreamError("bad-format", "expected exactly one element")
    return elements[0]


def parse_stored(text: str | bytes, what: str) -> Element | None:
    """Parse XML read back from storage; None (logged as an ERROR naming `what`, e.g.
    "offline message 12 of juliet@example.com") when the row does not parse.

    Readers of stored rows skip such a row and go on with the others: one bad row (written
    by an older version, or damaged) must never block the rows after it."""
    try:
        return parse_element(text)
    except XMLStreamError as exc:
        log.error("skipping unreadable stored %s: %s: %.200r", what, exc, text)
        return None
