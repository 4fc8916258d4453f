"""The XML stream parser and the Element serializer (RFC 6120 §4, §11; XML 1.0)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dovecote.xml import ns
from dovecote.xml.element import XML_LANG, E, Element, escape_attr, escape_text, serialize
from dovecote.xml.parser import (
    MAX_DEPTH,
    ElementReceived,
    ParserEvent,
    StreamClosed,
    StreamOpened,
    StreamParser,
    XMLStreamError,
)

HEADER = (
    b"<?xml version='1.0'?>"
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.org' version='1.0' xml:lang='en'>"
)
BARE_HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
CLOSE = b"</stream:stream>"
STREAM_PREFIXES = {ns.STREAMS: "stream"}

SAMPLE_STREAM = (
    HEADER + b"\n" + b"<message to='romeo@example.net' type='chat' xml:lang='fr' id='m&amp;1'>"
    b"<body>Bonjour &lt;Rom\xc3\xa9o&gt; &amp; &apos;Juliette&apos; &quot;\xe2\x99\xa5&quot;</body>"
    b"<html xmlns='http://jabber.org/protocol/xhtml-im'>"
    b"<body xmlns='http://www.w3.org/1999/xhtml'>a<b>bold</b> and <i>it</i>!</body></html>"
    b"</message>"
    b" \n\t "
    b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
    b"\n"
    b"<presence><show>away</show><status xml:lang='de'>\xf0\x9f\x90\xa6 weg</status>"
    b"<priority>5</priority></presence>"
    b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>" + CLOSE
)


def parse_all(data: bytes, **kwargs: int) -> list[ParserEvent]:
    return StreamParser(**kwargs).feed(data)


def stanzas(events: list[ParserEvent]) -> list[Element]:
    return [e.element for e in events if isinstance(e, ElementReceived)]


def parse_stanza(xml: bytes) -> Element:
    found = stanzas(parse_all(BARE_HEADER + xml))
    assert len(found) == 1
    return found[0]


def feed_chunks(data: bytes, cuts: list[int]) -> list[ParserEvent]:
    parser = StreamParser()
    events: list[ParserEvent] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    return events


def condition_of(data: bytes | list[bytes], **kwargs: int) -> str:
    parser = StreamParser(**kwargs)
    chunks = [data] if isinstance(data, bytes) else data
    with pytest.raises(XMLStreamError) as info:
        for chunk in chunks:
            parser.feed(chunk)
    return info.value.condition


# ---- stream header ------------------------------------------------------------------
def test_stream_header_attributes_namespaces_and_prefix() -> None:
    events = parse_all(HEADER)
    assert len(events) == 1
    assert isinstance(events[0], StreamOpened)
    header = events[0].header
    assert header.tag == "stream"
    assert header.ns == ns.STREAMS
    assert header.prefix == "stream"
    assert header.attrs == {"to": "example.org", "version": "1.0", XML_LANG: "en"}
    assert header.namespaces == {"": ns.CLIENT, "stream": ns.STREAMS}
    assert header.default_ns == ns.CLIENT


def test_stream_header_of_server_stream() -> None:
    data = (
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:db='jabber:server:dialback' from='a.example' to='b.example' version='1.0'>"
    )
    (event,) = parse_all(data)
    assert isinstance(event, StreamOpened)
    assert event.header.default_ns == ns.SERVER
    assert event.header.namespaces["db"] == "jabber:server:dialback"
    assert event.header.attrs["from"] == "a.example"


def test_stream_header_split_across_chunks() -> None:
    parser = StreamParser()
    assert parser.feed(HEADER[:30]) == []
    events = parser.feed(HEADER[30:])
    assert len(events) == 1 and isinstance(events[0], StreamOpened)


def test_header_without_prefix() -> None:
    (event,) = parse_all(b"<stream xmlns='http://etherx.jabber.org/streams'>")
    assert isinstance(event, StreamOpened)
    assert event.header.prefix is None
    assert event.header.ns == ns.STREAMS
    assert event.header.default_ns == ns.STREAMS


# ---- stanzas ------------------------------------------------------------------------
def test_sample_stream_parses_into_expected_events() -> None:
    events = parse_all(SAMPLE_STREAM)
    assert isinstance(events[0], StreamOpened)
    assert isinstance(events[-1], StreamClosed)
    message, iq, presence, features = stanzas(events)
    assert len(events) == 6

    assert (message.tag, message.ns) == ("message", ns.CLIENT)
    assert message.attrs == {
        "to": "romeo@example.net",
        "type": "chat",
        XML_LANG: "fr",
        "id": "m&1",
    }
    assert message.find_text("body") == "Bonjour <Roméo> & 'Juliette' \"♥\""
    html = message.find("html", "http://jabber.org/protocol/xhtml-im")
    assert html is not None
    xbody = html.find("body", "http://www.w3.org/1999/xhtml")
    assert xbody is not None
    assert [c if isinstance(c, str) else c.tag for c in xbody.children] == [
        "a",
        "b",
        " and ",
        "i",
        "!",
    ]
    ping = iq.find("ping")
    assert ping is not None and ping.ns == ns.PING and ping.children == []
    status = presence.find("status")
    assert status is not None
    assert status.attrs == {XML_LANG: "de"}
    assert status.text == "🐦 weg"
    assert presence.find_text("priority") == "5"
    assert (features.tag, features.ns) == ("features", ns.STREAMS)
    bind = features.find("bind")
    assert bind is not None and bind.ns == ns.BIND


def test_mixed_content_order_is_kept() -> None:
    el = parse_stanza(b"<message><body>one<b>two</b>three<i/>four</body></message>")
    body = el.find("body")
    assert body is not None
    assert body.children == [
        "one",
        Element("b", ns.CLIENT, children=["two"]),
        "three",
        Element("i", ns.CLIENT),
        "four",
    ]
    assert body.text == "onethreefour"


def test_namespaced_children_and_attributes() -> None:
    el = parse_stanza(
        b"<iq type='set' id='1'><query xmlns='jabber:iq:roster' xmlns:x='urn:x'"
        b" x:flag='yes'><item jid='a@b'/><x:extra/></query></iq>"
    )
    query = el.find("query")
    assert query is not None
    assert query.ns == "jabber:iq:roster"
    assert query.attrs == {"{urn:x}flag": "yes"}
    item = query.find("item")
    assert item is not None and item.ns == "jabber:iq:roster"
    extra = query.find("extra")
    assert extra is not None and extra.ns == "urn:x"
    assert query.find("extra", "jabber:iq:roster") is None


def test_empty_namespace_child() -> None:
    el = parse_stanza(b"<message><x xmlns=''/></message>")
    child = el.find("x")
    assert child is not None and child.ns == ""


def test_xml_lang_attribute() -> None:
    el = parse_stanza(b"<message xml:lang='en-GB'><body xml:lang='cy'>Helo</body></message>")
    assert el.get(XML_LANG) == "en-GB"
    body = el.find("body")
    assert body is not None and body.get(XML_LANG) == "cy"


def test_character_references_and_predefined_entities() -> None:
    el = parse_stanza(b"<m a='&#x41;&#66;'>&amp;&lt;&gt;&apos;&quot;&#x1F426;</m>")
    assert el.attrs == {"a": "AB"}
    assert el.text == "&<>'\"🐦"


def test_whitespace_keepalives_between_stanzas_are_ignored() -> None:
    parser = StreamParser()
    assert len(parser.feed(BARE_HEADER)) == 1
    assert parser.feed(b" ") == []
    assert parser.feed(b"\n\r\n\t ") == []
    events = parser.feed(b"  <presence/>  \n <message/>\n")
    assert [e.element.tag for e in events if isinstance(e, ElementReceived)] == [
        "presence",
        "message",
    ]
    assert len(events) == 2


def test_stream_close_event() -> None:
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<message/>")
    events = parser.feed(CLOSE)
    assert len(events) == 1 and isinstance(events[0], StreamClosed)
    # Nothing after the close is parsed (and nothing raises).
    assert parser.feed(b"<message/>") == []


def test_in_stanza_flag() -> None:
    parser = StreamParser()
    parser.feed(BARE_HEADER)
    assert not parser.in_stanza
    parser.feed(b"<message><body>")
    assert parser.in_stanza
    parser.feed(b"</body></message>")
    assert not parser.in_stanza


def test_element_size_is_its_byte_length() -> None:
    """ElementReceived.size: 'bytes of XML this element took on the wire'."""
    for stanza in (
        b"<message/>",
        b"<message><body>hi</body></message>",
        b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<message><body>\u00e9\u00e9</body></message>".encode(),
    ):
        events = parse_all(BARE_HEADER + b"  " + stanza + b"\n")
        (received,) = [e for e in events if isinstance(e, ElementReceived)]
        assert received.size == len(stanza), stanza


def test_reset_starts_a_new_stream() -> None:
    parser = StreamParser()
    parser.feed(BARE_HEADER + b"<message><body>unfinished")
    parser.reset()
    assert not parser.in_stanza
    events = parser.feed(HEADER + b"<iq type='get' id='x'/>")
    assert isinstance(events[0], StreamOpened)
    assert events[0].header.attrs["to"] == "example.org"
    assert [e.element.tag for e in events if isinstance(e, ElementReceived)] == ["iq"]


def test_reset_after_close_accepts_a_new_stream() -> None:
    parser = StreamParser()
    parser.feed(BARE_HEADER + CLOSE)
    parser.reset()
    events = parser.feed(BARE_HEADER + b"<presence/>")
    assert isinstance(events[0], StreamOpened)
    assert isinstance(events[1], ElementReceived)


# ---- chunk boundaries ---------------------------------------------------------------
def test_feed_byte_by_byte_gives_the_same_elements() -> None:
    whole = parse_all(SAMPLE_STREAM)
    trickled = feed_chunks(SAMPLE_STREAM, list(range(len(SAMPLE_STREAM))))
    assert stanzas(trickled) == stanzas(whole)
    assert [type(e) for e in trickled] == [type(e) for e in whole]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_STREAM)), max_size=40))
def test_random_chunk_boundaries_give_the_same_elements(cuts: list[int]) -> None:
    whole = parse_all(SAMPLE_STREAM)
    split = feed_chunks(SAMPLE_STREAM, cuts)
    assert [type(e) for e in split] == [type(e) for e in whole]
    assert stanzas(split) == stanzas(whole)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_STREAM)), max_size=40))
def test_random_chunk_boundaries_give_the_same_serialization(cuts: list[int]) -> None:
    # Weaker than Element equality (adjacent text pieces are merged by serializing),
    # so the structure stays checked on its own.
    whole = parse_all(SAMPLE_STREAM)
    split = feed_chunks(SAMPLE_STREAM, cuts)
    assert [serialize(e, ns.CLIENT, STREAM_PREFIXES) for e in stanzas(split)] == [
        serialize(e, ns.CLIENT, STREAM_PREFIXES) for e in stanzas(whole)
    ]


# ---- errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        BARE_HEADER + b"<message><body>a</bdy></message>",
        BARE_HEADER + b"<message to='a></message>",
        BARE_HEADER + b"<message to=a/>",
        BARE_HEADER + b"<message a='1' a='2'/>",
        BARE_HEADER + b"<message><</message>",
        BARE_HEADER + b"<message>\xff\xfe</message>",
        BARE_HEADER + b"<message>\x00</message>",
        BARE_HEADER + b"<undeclared:message/>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'></stream:other>",
        b"not xml at all",
    ],
)
def test_malformed_xml_is_not_well_formed(data: bytes) -> None:
    assert condition_of(data) == "not-well-formed"


def test_undefined_entity_is_not_well_formed() -> None:
    assert condition_of(BARE_HEADER + b"<message>&foo;</message>") == "not-well-formed"
    assert condition_of(BARE_HEADER + b"<message a='&nbsp;'/>") == "not-well-formed"


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE stream>" + BARE_HEADER,
        b"<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM 'http://x/y.dtd'>" + BARE_HEADER,
        b"<!DOCTYPE stream [<!ENTITY boom 'boom'>]>" + BARE_HEADER,
        b"<!DOCTYPE s [<!ENTITY a 'a'><!ENTITY b '&a;&a;&a;&a;'>]>" + BARE_HEADER,
        b"<?xml-stylesheet href='x'?>" + BARE_HEADER,
        BARE_HEADER + b"<?php echo 1; ?>",
        BARE_HEADER + b"<message><?pi inside?></message>",
        b"<!-- hello -->" + BARE_HEADER,
        BARE_HEADER + b"<!-- between stanzas -->",
        BARE_HEADER + b"<message><!-- inside --></message>",
    ],
)
def test_restricted_xml(data: bytes) -> None:
    assert condition_of(data) == "restricted-xml"


def test_restricted_xml_split_across_chunks() -> None:
    data = BARE_HEADER + b"<message><!-- a comment --></message>"
    assert condition_of([data[i : i + 1] for i in range(len(data))]) == "restricted-xml"


@pytest.mark.parametrize("encoding", ["ISO-8859-1", "iso-8859-1", "UTF-16", "US-ASCII"])
def test_non_utf8_encoding_declaration_is_unsupported(encoding: str) -> None:
    data = f"<?xml version='1.0' encoding='{encoding}'?>".encode() + BARE_HEADER
    assert condition_of(data) == "unsupported-encoding"


@pytest.mark.parametrize("encoding", ["UTF-8", "utf-8"])
def test_utf8_encoding_declaration_is_fine(encoding: str) -> None:
    data = f"<?xml version='1.0' encoding='{encoding}'?>".encode() + BARE_HEADER
    (event,) = parse_all(data)
    assert isinstance(event, StreamOpened)


def test_oversized_stanza_in_one_chunk_is_policy_violation() -> None:
    data = BARE_HEADER + b"<message><body>" + b"x" * 20000 + b"</body></message>"
    assert condition_of(data, max_stanza_size=10000) == "policy-violation"


def test_stanza_under_the_limit_is_accepted() -> None:
    stanza = b"<message><body>" + b"x" * 9000 + b"</body></message>"
    events = parse_all(BARE_HEADER + stanza, max_stanza_size=10000)
    assert stanzas(events)[0].find_text("body") == "x" * 9000


def test_oversized_stanza_trickled_without_closing_is_policy_violation() -> None:
    parser = StreamParser(max_stanza_size=10000)
    parser.feed(BARE_HEADER)
    parser.feed(b"<message><body>")
    with pytest.raises(XMLStreamError) as info:
        for _ in range(2000):  # 20000 bytes, never closed
            parser.feed(b"x" * 10)
    assert info.value.condition == "policy-violation"


def test_oversized_stanza_in_one_unclosed_chunk_is_policy_violation() -> None:
    data = BARE_HEADER + b"<message><body>" + b"x" * 20000
    assert condition_of(data, max_stanza_size=10000) == "policy-violation"


def test_oversized_unfinished_start_tag_trickled_is_policy_violation() -> None:
    """An attribute value that never ends must not be buffered without limit."""
    parser = StreamParser(max_stanza_size=10000)
    parser.feed(BARE_HEADER)
    parser.feed(b"<message to='")
    with pytest.raises(XMLStreamError) as info:
        for _ in range(5000):  # 50000 bytes of one start tag
            parser.feed(b"x" * 10)
    assert info.value.condition == "policy-violation"


def test_oversized_unfinished_start_tag_in_one_chunk_is_policy_violation() -> None:
    data = BARE_HEADER + b"<message to='" + b"x" * 50000
    assert condition_of(data, max_stanza_size=10000) == "policy-violation"


def test_oversized_start_tag_is_policy_violation() -> None:
    data = BARE_HEADER + b"<message to='" + b"x" * 20000 + b"'/>"
    assert condition_of(data, max_stanza_size=10000) == "policy-violation"


def test_many_small_stanzas_do_not_add_up() -> None:
    parser = StreamParser(max_stanza_size=10000)
    parser.feed(BARE_HEADER)
    total = 0
    for _ in range(500):
        total += len(stanzas(parser.feed(b"<message><body>" + b"y" * 50 + b"</body></message>")))
    assert total == 500


def test_nesting_deeper_than_max_depth_is_policy_violation() -> None:
    depth = MAX_DEPTH + 5
    data = BARE_HEADER + b"<a>" * depth + b"</a>" * depth
    assert condition_of(data) == "policy-violation"


def test_nesting_deeper_than_max_depth_trickled_is_policy_violation() -> None:
    # Never closed: the limit holds before any end tag arrives.
    parser = StreamParser()
    parser.feed(BARE_HEADER)
    with pytest.raises(XMLStreamError) as info:
        for _ in range(MAX_DEPTH + 5):
            parser.feed(b"<a>")
    assert info.value.condition == "policy-violation"


def test_nesting_within_max_depth_is_fine() -> None:
    depth = MAX_DEPTH - 2  # plus the stream element: MAX_DEPTH - 1 levels
    data = BARE_HEADER + b"<a>" * depth + b"</a>" * depth
    (el,) = stanzas(parse_all(data))
    levels = 1
    while el.children:
        child = el.children[0]
        assert isinstance(child, Element)
        el = child
        levels += 1
    assert levels == depth


def test_error_carries_condition_and_text() -> None:
    with pytest.raises(XMLStreamError) as info:
        StreamParser().feed(b"<!DOCTYPE x>")
    assert info.value.condition == "restricted-xml"
    assert info.value.text
    assert "restricted-xml" in str(info.value)


# ---- serializer ---------------------------------------------------------------------
def test_escape_text() -> None:
    assert escape_text("a & b < c > d ' \"") == "a &amp; b &lt; c &gt; d ' \""


def test_escape_attr() -> None:
    assert escape_attr("&<>'\"") == "&amp;&lt;&gt;&apos;&quot;"


def test_serialize_escapes_text_and_attributes() -> None:
    el = Element("body", ns.CLIENT, {"a": "x'y\"z&<>"}, text="1 & 2 < 3 > 0 'q' \"d\"")
    out = serialize(el, ns.CLIENT)
    assert out == (
        "<body a='x&apos;y&quot;z&amp;&lt;&gt;'>1 &amp; 2 &lt; 3 &gt; 0 'q' \"d\"</body>"
    )


def test_serialize_attribute_whitespace_survives() -> None:
    el = Element("m", ns.CLIENT, {"a": "one\ttwo\nthree\rfour"})
    parsed = parse_stanza(serialize(el, ns.CLIENT).encode())
    assert parsed.attrs == {"a": "one\ttwo\nthree\rfour"}


def test_serialize_carriage_return_in_text_survives() -> None:
    """A CR in text must be written as a character reference, or the receiving parser
    turns it into LF (XML 1.0 §2.11)."""
    el = Element("m", ns.CLIENT, children=["line1\r\nline2\r"])
    parsed = parse_stanza(serialize(el, ns.CLIENT).encode())
    assert parsed.text == "line1\r\nline2\r"


def test_default_namespace_equal_to_stream_is_omitted() -> None:
    el = E("message", ns.CLIENT, {"to": "a@b"}, E("body", ns.CLIENT, None, "hi"))
    assert serialize(el, ns.CLIENT) == "<message to='a@b'><body>hi</body></message>"


def test_default_namespace_different_from_stream_is_declared() -> None:
    el = E("message", ns.CLIENT)
    assert serialize(el, ns.SERVER) == "<message xmlns='jabber:client'/>"
    assert serialize(el) == "<message xmlns='jabber:client'/>"


def test_child_namespace_declared_only_when_it_changes() -> None:
    el = E(
        "iq",
        ns.CLIENT,
        {"type": "result"},
        E("query", "jabber:iq:roster", None, E("item", "jabber:iq:roster", {"jid": "a@b"})),
        E("x", ns.CLIENT),
    )
    assert serialize(el, ns.CLIENT) == (
        "<iq type='result'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query><x/></iq>"
    )


def test_child_back_in_outer_namespace_is_redeclared() -> None:
    el = E("a", "urn:a", None, E("b", "urn:b", None, E("c", "urn:a")))
    assert serialize(el, "urn:a") == "<a><b xmlns='urn:b'><c xmlns='urn:a'/></b></a>"


def test_empty_namespace_child_is_undeclared() -> None:
    el = E("message", ns.CLIENT, None, Element("x", ""))
    out = serialize(el, ns.CLIENT)
    assert out == "<message><x xmlns=''/></message>"
    assert parse_stanza(out.encode()) == el


def test_stream_prefix_for_streams_namespace() -> None:
    features = E(
        "features",
        ns.STREAMS,
        None,
        E("bind", ns.BIND),
        E("mechanisms", ns.SASL, None, E("mechanism", ns.SASL, None, "SCRAM-SHA-1")),
    )
    out = serialize(features, ns.CLIENT, STREAM_PREFIXES)
    assert out == (
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1"
        "</mechanism></mechanisms></stream:features>"
    )
    assert parse_stanza(out.encode()) == features


def test_stream_error_serialization() -> None:
    error = E("error", ns.STREAMS, None, E("not-well-formed", ns.STREAM_ERRORS))
    out = serialize(error, ns.CLIENT, STREAM_PREFIXES)
    assert out == (
        "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        "</stream:error>"
    )


def test_child_of_prefixed_element_in_stream_default_namespace() -> None:
    el = E("features", ns.STREAMS, None, E("x", ns.CLIENT))
    out = serialize(el, ns.CLIENT, STREAM_PREFIXES)
    assert out == "<stream:features><x/></stream:features>"
    assert parse_stanza(out.encode()) == el


def test_xml_lang_output() -> None:
    el = Element("message", ns.CLIENT, {XML_LANG: "fr"}, text="salut")
    out = serialize(el, ns.CLIENT)
    assert out == "<message xml:lang='fr'>salut</message>"
    assert parse_stanza(out.encode()) == el


def test_namespaced_attribute_round_trip() -> None:
    el = Element("m", ns.CLIENT, {"{urn:p}flag": "1", "{urn:q}flag": "2", "plain": "3"})
    assert parse_stanza(serialize(el, ns.CLIENT).encode()) == el


def test_str_serializes() -> None:
    el = E("presence", ns.CLIENT, {"type": "unavailable"})
    assert str(el) == "<presence xmlns='jabber:client' type='unavailable'/>"


def test_builder_drops_none_and_stringifies_attributes() -> None:
    el = E("presence", ns.CLIENT, {"to": None, "priority": 5})
    assert el.attrs == {"priority": "5"}


# ---- round trip (hypothesis) --------------------------------------------------------
XML_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(
            blacklist_categories=("Cs", "Cc"),
            blacklist_characters="\ufffe\uffff",
        ),
        st.sampled_from("&<>'\"\n\t ;#"),
    ),
    max_size=20,
)
NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda n: not n.lower().startswith("xml")
)
NAMESPACES = st.sampled_from(
    [ns.CLIENT, "urn:x", "urn:y:z", "http://jabber.org/protocol/muc#user", "", ns.STREAMS]
)
ATTR_NAMES = st.one_of(
    NAMES,
    st.just(XML_LANG),
    st.builds(lambda uri, name: f"{{{uri}}}{name}", st.sampled_from(["urn:p", "urn:q"]), NAMES),
)


def _normalize(children: list[Element | str]) -> list[Element | str]:
    """What a parser gives back: adjacent text merged, no empty text."""
    out: list[Element | str] = []
    for child in children:
        if isinstance(child, str):
            if not child:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += child
                continue
        out.append(child)
    return out


def _element(children: st.SearchStrategy[list[Element | str]]) -> st.SearchStrategy[Element]:
    return st.builds(
        lambda tag, uri, attrs, kids: Element(tag, uri, attrs, _normalize(kids)),
        NAMES,
        NAMESPACES,
        st.dictionaries(ATTR_NAMES, XML_TEXT, max_size=4),
        children,
    )


ELEMENTS = st.recursive(
    _element(st.lists(XML_TEXT, max_size=2)),
    lambda inner: _element(st.lists(st.one_of(XML_TEXT, inner), max_size=5)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(ELEMENTS)
def test_round_trip_parse_serialize_parse(element: Element) -> None:
    text = serialize(element, ns.CLIENT, STREAM_PREFIXES)
    parsed = parse_stanza(text.encode())
    assert parsed == element
    # And once more: serializing the parsed element gives the same bytes.
    assert serialize(parsed, ns.CLIENT, STREAM_PREFIXES) == text


@settings(max_examples=100, deadline=None)
@given(ELEMENTS, ELEMENTS)
def test_round_trip_two_stanzas_in_one_stream(first: Element, second: Element) -> None:
    data = (
        BARE_HEADER
        + serialize(first, ns.CLIENT, STREAM_PREFIXES).encode()
        + b"\n"
        + serialize(second, ns.CLIENT, STREAM_PREFIXES).encode()
        + CLOSE
    )
    events = parse_all(data)
    assert stanzas(events) == [first, second]
    assert isinstance(events[-1], StreamClosed)


# ---- Element helpers ----------------------------------------------------------------
def _sample() -> Element:
    return E(
        "message",
        ns.CLIENT,
        {"to": "a@b", "type": "chat"},
        "lead ",
        E("body", ns.CLIENT, None, "hello"),
        E("body", ns.CLIENT, {XML_LANG: "fr"}, "salut"),
        E("x", "urn:x", None, E("item", "urn:x", {"n": "1"}), E("item", "urn:x", {"n": "2"})),
        E("x", "urn:other"),
        " tail",
    )


def test_find() -> None:
    el = _sample()
    body = el.find("body")
    assert body is not None and body.text == "hello"
    other = el.find("x", "urn:other")
    assert other is not None and other.ns == "urn:other"
    assert el.find("x", "urn:x") is el.children[3]
    assert el.find("missing") is None
    assert el.find("body", "urn:x") is None
    # Only direct children.
    assert el.find("item") is None


def test_find_all() -> None:
    el = _sample()
    assert [b.text for b in el.find_all("body")] == ["hello", "salut"]
    assert len(el.find_all("x")) == 2
    assert len(el.find_all("x", "urn:x")) == 1
    assert len(el.find_all(ns="urn:other")) == 1
    assert len(el.find_all()) == 4
    assert el.find_all("nothing") == []


def test_find_text() -> None:
    el = _sample()
    assert el.find_text("body") == "hello"
    assert el.find_text("x", "urn:other") == ""
    assert el.find_text("missing") is None


def test_text_is_own_character_data_only() -> None:
    el = _sample()
    assert el.text == "lead  tail"
    assert Element("empty").text == ""


def test_get_attribute() -> None:
    el = _sample()
    assert el.get("to") == "a@b"
    assert el.get("from") is None
    assert el.get("from", "x") == "x"


def test_elements_iterates_child_elements() -> None:
    assert [c.tag for c in _sample().elements] == ["body", "body", "x", "x"]


def test_add_append_remove() -> None:
    el = Element("iq", ns.CLIENT)
    query = el.add("query", "urn:q", {"a": "1"}, text="t")
    assert query.ns == "urn:q" and query.text == "t"
    inherited = el.add("child")
    assert inherited.ns == ns.CLIENT
    el.append("text")
    assert el.children == [query, inherited, "text"]
    el.remove(query)
    assert el.children == [inherited, "text"]


def test_copy_is_independent() -> None:
    original = _sample()
    snapshot = serialize(original)
    clone = original.copy()
    assert clone == original
    clone.attrs["to"] = "c@d"
    body = clone.find("body")
    assert body is not None
    body.children.append("!")
    body.attrs["id"] = "1"
    x = clone.find("x", "urn:x")
    assert x is not None
    x.children.clear()
    clone.children.append(Element("extra"))
    assert serialize(original) == snapshot
    assert clone != original


def test_shallow_copy_shares_children_but_not_attrs() -> None:
    original = _sample()
    shallow = original.shallow_copy()
    assert shallow == original
    shallow.attrs["to"] = "c@d"
    assert original.get("to") == "a@b"
    # The child list is new, the children themselves are shared.
    shallow.children.append(Element("extra"))
    assert original.find("extra") is None
    assert shallow.find("body") is original.find("body")


def test_equality() -> None:
    assert Element("a", "urn:a", {"x": "1"}, ["t"]) == Element("a", "urn:a", {"x": "1"}, ["t"])
    assert Element("a", "urn:a") != Element("a", "urn:b")
    assert Element("a", "urn:a") != Element("b", "urn:a")
    assert Element("a", "urn:a", {"x": "1"}) != Element("a", "urn:a", {"x": "2"})
    assert Element("a", "urn:a", children=["t"]) != Element("a", "urn:a", children=["u"])
    assert Element("a") != "a"
    with pytest.raises(TypeError):
        hash(Element("a"))
