"""Serialization is namespace-well-formed and faithful for everything the parser accepts
(XML 1.0, Namespaces in XML 1.0 §3 reserved prefixes and names).

The trees and raw documents are checked with the project's parser and with a second one:
the standard library's SAX parser with the namespaces feature on, building its own trees,
and ElementTree's pull parser, which slixmpp (a real client) reads its streams with.
"""

from __future__ import annotations

import logging
import xml.sax
import xml.sax.handler
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, Element, escape_attr, escape_text, serialize
from dovecote.xml.parser import (
    ElementReceived,
    StreamParser,
    XMLStreamError,
    parse_element,
    parse_stored,
)
from tests.unit.test_xml import _normalize

XMLNS = "http://www.w3.org/2000/xmlns/"
STREAM_PREFIXES = {ns.STREAMS: "stream"}
HEADER = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
CLOSE = "</stream:stream>"
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the parsers ----------------------------------------------------------------------
def parse_stream(body: str) -> list[Element]:
    """The project parser, on a c2s stream: its top-level elements."""
    events = StreamParser().feed((HEADER + body + CLOSE).encode())
    return [e.element for e in events if isinstance(e, ElementReceived)]


class _TreeBuilder(xml.sax.handler.ContentHandler):
    """SAX events (namespaces on) -> Elements, the children of the document element."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[Element] = []
        self.top: list[Element] = []

    def startElementNS(self, name, qname, attrs):  # type: ignore[no-untyped-def]
        uri, local = name
        converted = {
            (f"{{{a_uri}}}{a_local}" if a_uri else a_local): value
            for (a_uri, a_local), value in attrs.items()
        }
        el = Element(local, uri or "", converted)
        if len(self.stack) == 1:
            self.top.append(el)
        elif self.stack:
            self.stack[-1].children.append(el)
        self.stack.append(el)

    def endElementNS(self, name, qname):  # type: ignore[no-untyped-def]
        self.stack.pop()

    def characters(self, content: str) -> None:
        if len(self.stack) < 2:
            return
        children = self.stack[-1].children
        if children and isinstance(children[-1], str):
            children[-1] += content
        else:
            children.append(content)


def sax_parse_stream(body: str) -> list[Element]:
    """The standard library's SAX parser, namespaces on; raises SAXParseException."""
    handler = _TreeBuilder()
    parser = xml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_namespaces, True)
    parser.setContentHandler(handler)
    parser.feed((HEADER + body + CLOSE).encode())
    parser.close()
    return handler.top


def etree_parse_stream(body: str) -> list[Element]:
    """ElementTree's pull parser, the way slixmpp reads a stream."""
    parser = ElementTree.XMLPullParser(("start", "end"))
    parser.feed(HEADER + body + CLOSE)
    parser.close()
    top: list[Element] = []
    depth = 0
    for kind, el in parser.read_events():
        depth += 1 if kind == "start" else -1
        if kind == "end" and depth == 1:
            top.append(_from_etree(el))
    return top


def _from_etree(el: ElementTree.Element) -> Element:
    uri, _, local = el.tag[1:].rpartition("}") if el.tag[0] == "{" else ("", "", el.tag)
    out = Element(local, uri, dict(el.attrib))
    if el.text:
        out.children.append(el.text)
    for child in el:
        out.children.append(_from_etree(child))
        if child.tail:
            out.children.append(child.tail)
    return out


def assert_round_trip(element: Element) -> None:
    """`element` serialized for a c2s stream and for storage reads back equal, with every
    parser, and serializing it again gives the same text."""
    wire = serialize(element, ns.CLIENT, STREAM_PREFIXES)
    assert parse_stream(wire) == [element], wire
    assert sax_parse_stream(wire) == [element], wire
    assert etree_parse_stream(wire) == [element], wire
    assert serialize(parse_stream(wire)[0], ns.CLIENT, STREAM_PREFIXES) == wire
    stored = serialize(element)
    assert parse_element(stored) == element, stored


# ---- the attack and the reserved names, one by one -------------------------------------
def test_xml_namespace_child_of_a_message_is_written_with_the_xml_prefix() -> None:
    [message] = parse_stream(
        "<message to='victim@example.org' type='chat'><body>x</body><xml:foo/></message>"
    )
    assert message.find("foo", ns.XML) is not None
    wire = serialize(message, ns.CLIENT, STREAM_PREFIXES)
    assert wire == "<message to='victim@example.org' type='chat'><body>x</body><xml:foo/></message>"
    assert_round_trip(message)


@pytest.mark.parametrize(
    "raw",
    [
        "<message><xml:foo/></message>",
        "<message><xml:lang xml:lang='en'>t<b/></xml:lang></message>",
        # A redundant (legal) declaration of the xml prefix on the way in.
        "<message xmlns:xml='http://www.w3.org/XML/1998/namespace'><xml:foo xml:a='1'/></message>",
        # Children of an xml: element stay in the stream's default namespace.
        "<message><xml:foo><body>x</body><bar xmlns='urn:x'><baz/></bar></xml:foo></message>",
        "<message><stream:foo><body/></stream:foo></message>",
        "<message xmlns:s='http://etherx.jabber.org/streams'><s:error><x/></s:error></message>",
        "<message><x xmlns='urn:x'><message xmlns='jabber:client'><body>in</body></message></x>"
        "</message>",
        "<message><x xmlns='urn:x'><p xmlns='jabber:server'/></x></message>",
        "<message><x xmlns=''><y/></x></message>",
        "<message><p:x xmlns:p='urn:p' p:a='1' a='2'/></message>",
        "<message><p:x xmlns:p='urn:p' xmlns:q='urn:q' p:a='1' q:a='2'/></message>",
        "<message><x xmlns:p='urn:p' p:xmlns='1'/></message>",
        "<message><x xmlns:stream='urn:not-streams'><stream:y/></x></message>",
        "<message><x xmlns:a0='urn:a'><a0:y xmlns:p='urn:p' p:z='1'/></x></message>",
        "<message><xmlns/><x xmlfoo='1'/></message>",
        "<message><![CDATA[<xml:foo/> ]]&gt;]]></message>",
    ],
)
def test_reserved_and_tricky_namespaces_round_trip(raw: str) -> None:
    [element] = parse_stream(raw)
    assert [element] == sax_parse_stream(raw)
    assert_round_trip(element)


@pytest.mark.parametrize(
    "raw",
    [
        # Namespaces in XML §3: xml is bound to its namespace only, nothing else to it,
        # and the xmlns prefix and namespace are never declared.
        "<message xmlns:xml='urn:other'/>",
        "<message><x:foo xmlns:x='http://www.w3.org/XML/1998/namespace'/></message>",
        "<message><foo xmlns='http://www.w3.org/XML/1998/namespace'/></message>",
        "<message><foo xmlns='http://www.w3.org/2000/xmlns/'/></message>",
        "<message><x:foo xmlns:x='http://www.w3.org/2000/xmlns/'/></message>",
        "<message xmlns:xmlns='http://www.w3.org/2000/xmlns/'/>",
        "<message><xmlns:foo/></message>",
        # XML 1.0 namespaces: a prefix cannot be undeclared.
        "<message><foo xmlns:a=''/></message>",
        # The same expanded attribute name twice, through two prefixes.
        "<message><foo xmlns:a='u' xmlns:b='u' a:x='1' b:x='2'/></message>",
        "<message><foo a:b='1'/></message>",
    ],
)
def test_namespace_errors_are_not_well_formed(raw: str) -> None:
    with pytest.raises(XMLStreamError) as info:
        parse_stream(raw)
    assert info.value.condition == "not-well-formed"
    with pytest.raises(xml.sax.SAXParseException):
        sax_parse_stream(raw)
    with pytest.raises(ElementTree.ParseError):
        etree_parse_stream(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "<message><x xmlns:p='u}x' p:a='1'/></message>",
        "<message><x xmlns='u}x'/></message>",
        "<message><x xmlns='{u}'/></message>",
        "<message><x xmlns='urn:a b'/></message>",
        "<message><x xmlns='urn:a&#9;'/></message>",
        "<message><x xmlns='urn:&lt;a&gt;'/></message>",
        "<message><x xmlns='urn:a|b'/></message>",
    ],
)
def test_namespace_names_that_are_no_uri_are_not_well_formed(raw: str) -> None:
    # Namespaces in XML §2.2, RFC 3986 §2. Forwarded, "u}x" makes ElementTree (slixmpp)
    # drop the connection: the victim's client, not the sender's.
    with pytest.raises(XMLStreamError) as info:
        parse_stream(raw)
    assert info.value.condition == "not-well-formed"


def test_a_closing_brace_in_a_namespace_name_breaks_elementtree_clients() -> None:
    with pytest.raises(ElementTree.ParseError):
        etree_parse_stream("<message><x xmlns='u}x'/></message>")


def test_names_in_the_xmlns_namespace_cannot_be_serialized() -> None:
    # The parser never produces them; a tree built in code must fail loudly, not write
    # XML that no client can read.
    with pytest.raises(ValueError):
        serialize(Element("x", XMLNS))
    with pytest.raises(ValueError):
        serialize(Element("x", "", {f"{{{XMLNS}}}p": "urn:p"}))
    with pytest.raises(ValueError):
        serialize(Element("x", "", {"xmlns": "urn:p"}))
    with pytest.raises(ValueError):
        serialize(Element("x", "", {"p:a": "1"}))


def test_attribute_namespace_with_braces_is_split_at_the_last_brace() -> None:
    # The parser refuses such namespace names now; rows stored earlier may hold them.
    element = Element("x", "urn:x", {"{u}x}a": "1", "{u{x}}b": "2"})
    assert serialize(element, "urn:x") == ("<x xmlns:a0='u}x' a0:a='1' xmlns:a1='u{x}' a1:b='2'/>")
    assert sax_parse_stream(serialize(element)) == [element]


# ---- property: generated trees ---------------------------------------------------------
#: XML 1.0 §2.2 Char, every class of it (the markup characters and ]]> too).
XML_CHARS = st.one_of(
    st.sampled_from("\t\n\r &<>'\"];"),
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFD),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
)
XML_TEXT = st.text(alphabet=XML_CHARS, max_size=12)
#: NCNames, non-ASCII and the reserved-looking ones included.
NAMES = st.one_of(
    st.from_regex(r"[a-zA-Z_\u00e9\u540d][a-zA-Z0-9_.\u00b7\u00e9\u540d-]{0,6}", fullmatch=True),
    st.sampled_from(["xml", "xmlns", "lang", "xmlfoo", "XMLNS", "a0", "stream"]),
)
URIS = st.sampled_from(
    [
        ns.CLIENT,
        ns.SERVER,
        ns.STREAMS,
        ns.COMPONENT,
        ns.XML,
        "",
        "urn:x",
        "urn:y",
        "a'b&c;=d%20",
        "http://www.w3.org/XML/1998/namespace/",
    ]
)
ATTR_NAMES = st.one_of(
    NAMES.filter(lambda n: n != "xmlns"),
    st.just(XML_LANG),
    st.builds(lambda name: f"{{{ns.XML}}}{name}", NAMES),
    st.builds(lambda uri, name: f"{{{uri}}}{name}", URIS.filter(bool), NAMES),
)


def _element(children: st.SearchStrategy[list[Element | str]]) -> st.SearchStrategy[Element]:
    return st.builds(
        lambda tag, uri, attrs, kids: Element(tag, uri, attrs, _normalize(kids)),
        NAMES,
        URIS,
        st.dictionaries(ATTR_NAMES, XML_TEXT, max_size=4),
        children,
    )


TREES = st.recursive(
    _element(st.lists(XML_TEXT, max_size=2)),
    lambda inner: _element(st.lists(st.one_of(XML_TEXT, inner), max_size=4)),
    max_leaves=12,
)


def _unprefixed_attrs_are_unique(element: Element) -> bool:
    # {""}name and name would be the same attribute; the generator never makes "{}x".
    return all(not key.startswith("{}") for key in element.attrs) and all(
        _unprefixed_attrs_are_unique(child) for child in element.elements
    )


@EXAMPLES
@given(TREES)
def test_generated_trees_round_trip_through_every_parser(element: Element) -> None:
    assert _unprefixed_attrs_are_unique(element)
    assert_round_trip(element)


# ---- property: generated raw XML -------------------------------------------------------


def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Mostly one of `good`, sometimes one of `bad` (a Namespaces in XML rule broken)."""
    return st.sampled_from(good * 6 + bad)


PREFIXES = _mostly(["p", "q", "stream", "a0", "XmL"], ["xml", "xmlns"])
RAW_URIS = _mostly(
    [ns.CLIENT, ns.SERVER, ns.STREAMS, "urn:x", "urn:y", "a'&b"],
    [ns.XML, XMLNS, "u}x", "{u", "a b"],
)


@st.composite
def raw_xml(draw: st.DrawFn, depth: int = 0, scope: frozenset[str] = frozenset()) -> str:
    """A raw element with random namespace declarations, prefixes, attributes (namespaced
    ones included), character and entity references and CDATA; mostly well-formed, and
    sometimes breaking a Namespaces in XML rule on purpose. `scope`: prefixes declared."""
    decls: list[str] = []
    if draw(st.booleans()):
        decls.append(f" xmlns='{escape_attr(draw(st.one_of(RAW_URIS, st.just(''))))}'")
    declared = draw(st.lists(PREFIXES, max_size=2, unique=True))
    for prefix in declared:
        decls.append(f" xmlns:{prefix}='{escape_attr(draw(RAW_URIS))}'")
    scope = scope | set(declared) | {"xml"}
    usable = st.sampled_from(sorted(scope))
    # Sometimes a prefix that may be unbound.
    bound = draw(_mostly(["bound"], ["any"])) == "bound"
    prefix = draw(st.one_of(st.none(), usable)) if bound else "p"
    name = draw(NAMES)
    qname = f"{prefix}:{name}" if prefix else name
    attrs = []
    for attr_prefix, attr_name in draw(
        st.lists(st.tuples(st.one_of(st.none(), usable), NAMES), max_size=3, unique=True)
    ):
        if attr_prefix is None and attr_name == "xmlns":
            continue
        attr_qname = f"{attr_prefix}:{attr_name}" if attr_prefix else attr_name
        attrs.append(f" {attr_qname}='{escape_attr(draw(XML_TEXT))}'")
    children = []
    if depth < 3:
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["text", "element", "element", "ref", "cdata"]))
            if kind == "text":
                children.append(escape_text(draw(XML_TEXT)))
            elif kind == "element":
                children.append(draw(raw_xml(depth + 1, scope)))
            elif kind == "ref":
                children.append(draw(st.sampled_from(["&amp;", "&lt;", "&#x1F426;", "&#13;"])))
            else:
                children.append(f"<![CDATA[{draw(XML_TEXT).replace(']]>', '')}]]>")
    start = f"<{qname}{''.join(decls)}{''.join(attrs)}"
    if not children:
        return start + "/>"
    return f"{start}>{''.join(children)}</{qname}>"


@EXAMPLES
@given(raw_xml())
def test_generated_raw_xml_accepted_by_the_parser_round_trips(raw: str) -> None:
    try:
        strict = sax_parse_stream(raw)
    except xml.sax.SAXParseException:
        strict = None
    try:
        parsed = parse_stream(raw)
    except XMLStreamError as exc:
        # What the project parser refuses, a strict namespace-aware parser refuses too
        # (or it is a namespace name that is no URI, which ElementTree or SAX refuse).
        assert strict is None or exc.text == "a namespace name must be a URI", (raw, exc)
        return
    assert parsed == strict, raw
    [element] = parsed
    assert_round_trip(element)


# ---- text between stanzas (RFC 6120 §11.7) --------------------------------------------
def test_whitespace_between_stanzas_is_fine() -> None:
    assert [e.tag for e in parse_stream(" \t\r\n<message/>\n \n<presence/> ")] == [
        "message",
        "presence",
    ]


@pytest.mark.parametrize("junk", ["x", " hello ", "&amp;", "&#65;", "<![CDATA[x]]>", "\u00a0"])
def test_text_between_stanzas_is_bad_format(junk: str) -> None:
    parser = StreamParser()
    parser.feed(HEADER.encode() + b"<message/>")
    with pytest.raises(XMLStreamError) as info:
        parser.feed(f"  {junk}<presence/>".encode())
    assert info.value.condition == "bad-format"


def test_text_between_stanzas_trickled_byte_by_byte_is_bad_format() -> None:
    parser = StreamParser()
    parser.feed(HEADER.encode())
    with pytest.raises(XMLStreamError) as info:
        for byte in b"  \n  junk":
            parser.feed(bytes([byte]))
        parser.feed(b"<message/>")
    assert info.value.condition == "bad-format"


# ---- reading stored rows ---------------------------------------------------------------
POISONED_ROW = (
    "<message xmlns='jabber:client' to='victim@example.org' type='chat'><body>x</body>"
    "<foo xmlns='http://www.w3.org/XML/1998/namespace'/></message>"
)


def test_parse_stored_skips_an_unreadable_row_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="dovecote.xml.parser"):
        assert parse_stored(POISONED_ROW, "offline message 7 of victim@example.org") is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "offline message 7 of victim@example.org" in record.getMessage()
    parsed = parse_stored("<message xmlns='jabber:client'><body>ok</body></message>", "row")
    assert parsed is not None and parsed.find_text("body") == "ok"
