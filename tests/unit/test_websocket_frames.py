"""RFC 7395 §3.3.3 message checks: the per-connection `FrameParser` against a parser of
its own per message (`parse_frame_once`, the reference): same events, same errors."""

from __future__ import annotations

import random

import pytest

from dovecote.transport.websocket import FrameParser, parse_frame_once, text_frame_header
from dovecote.xml.element import serialize
from dovecote.xml.parser import ElementReceived, StreamClosed, StreamOpened, XMLStreamError

MAX = 4096

GOOD = [
    b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>",
    b"<message to='a@b'><body>hi &amp; &#x3c; there</body></message>",
    b"<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
    b"  <presence/>\r\n",
    b"<presence/>\r",
    b"",
    b" \t\r\n ",
    b"<message><body><![CDATA[<not/> a tag]]></body></message>",
    b"<a xmlns='urn:x'><b x='1&gt;2'>t\xc3\xa9xt</b></a>",
    b"<message><body>]]</body></message>",
    b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='example.com'/>",
    b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
    b"<frame/>",
    b"<message><body>" + b"x" * 4000 + b"</body></message>",
]

BAD = [
    # a frame ending inside a tag or an attribute value (expat buffers the token)
    b"<a/><b x='y>",
    b"<a/><b x='y",
    b"<a/><b x=\"y'>",
    b"<a/><b",
    b"<a/><",
    b"<a/></",
    b"<a",
    b"<a x='1'",
    b"<presence",
    b"<presence/",
    # ending mid-element, mid-text, mid-reference
    b"<a>",
    b"<a><b/>",
    b"<a>text",
    b"<frame>",
    b"<a/>&am",
    b"<a/>&#x3",
    b"<a>&amp",
    b"<a/>\xc3",
    # comments, PIs, CDATA, DTD
    b"<a/><!-- x -->",
    b"<!-- -->",
    b"<a><!-- x --></a>",
    b"<a/><!--",
    b"<a/><!-- x",
    b"<a/><!-- x -",
    b"<a/><!-- x --",
    b"<a/><!-",
    b"<a/><!",
    b"<a/><?pi x?>",
    b"<a><?pi?></a>",
    b"<a/><?x",
    b"<a/><?x ",
    b"<a/><?",
    b"<a/><![CDATA[",
    b"<a/><![CDATA[x",
    b"<a><![CDATA[x",
    b"<a/><![CDATA",
    b"<![CDATA[x]]>",
    b"<!DOCTYPE a><a/>",
    b"<?xml version='1.0'?><a/>",
    # two elements, element and text, text only
    b"<a/><b/>",
    b"<presence/> <presence/>",
    b"<a/>text",
    b"text<a/>",
    b"text",
    b"&#32;",
    b"&#x41;",
    b"]]>",
    b"<a/>]]",
    # the wrapper: closed, or closed and more
    b"</frame>",
    b"</frame><a/>",
    b"<a/></frame>",
    b"</a>",
    # sizes
    b"<message><body>" + b"x" * 5000 + b"</body></message>",
    b"<a><![CDATA[" + b"x" * 5000,
    b"<a/><![CDATA[" + b"x" * 5000,
    b"<a/><?pi " + b"x" * 5000,
    b"<a x='" + b"x" * 5000,
    b"<a>" + b"x" * 5000,
    b"<a/>" + b" " * 5000 + b"<b",
    # bad names, namespaces, encoding
    b"<a xmlns='a b'/>",
    b"<p:a/>",
    b"<a/>\x00",
    b"<a>\xff</a>",
    b"<" + b"<a>" * 120,
    b"<a>" * 120 + b"</a>" * 120,
]


def outcome_once(data: bytes) -> object:
    try:
        return describe(parse_frame_once(data, MAX))
    except XMLStreamError as exc:
        return ("error", exc.condition)


def outcome(parser: FrameParser, data: bytes) -> object:
    try:
        return describe(parser.parse(data))
    except XMLStreamError as exc:
        return ("error", exc.condition)


def describe(event: object) -> object:
    if event is None:
        return None
    if isinstance(event, StreamOpened):
        header = event.header
        return ("open", header.tag, header.ns, header.attrs)
    if isinstance(event, StreamClosed):
        return ("close",)
    assert isinstance(event, ElementReceived)
    return ("element", serialize(event.element), event.size)


def test_good_frames_on_one_parser() -> None:
    parser = FrameParser(MAX)
    for _ in range(3):
        for data in GOOD:
            expected = outcome_once(data)
            assert expected is None or expected[0] != "error", data
            assert outcome(parser, data) == expected, data
    parser.close()


@pytest.mark.parametrize("data", BAD, ids=[repr(d[:40]) for d in BAD])
@pytest.mark.parametrize("before", [0, 1, 5])
def test_bad_frames_same_errors(data: bytes, before: int) -> None:
    """After some good messages (or none), a bad one gets the reference's error."""
    expected = outcome_once(data)
    assert isinstance(expected, tuple) and expected[0] == "error", (data, expected)
    parser = FrameParser(MAX)
    for good in GOOD[:before]:
        parser.parse(good)
    assert outcome(parser, data) == expected
    parser.close()


def test_expected_conditions() -> None:
    """The spec's conditions for the classic cases (RFC 7395 §3.3.3, RFC 6120 §4.9.3)."""
    cases = {
        b"<a/><b x='y>": "not-well-formed",
        b"<a>": "not-well-formed",
        b"<a><![CDATA[x": "not-well-formed",
        b"<a/><b/>": "bad-format",
        b"<a/>text": "bad-format",
        b"<a/><!-- x -->": "restricted-xml",
        b"<a/><?pi x?>": "restricted-xml",
        b"<message><body>" + b"x" * 5000 + b"</body></message>": "policy-violation",
    }
    for data, condition in cases.items():
        parser = FrameParser(MAX)
        parser.parse(GOOD[1])
        with pytest.raises(XMLStreamError) as info:
            parser.parse(data)
        assert info.value.condition == condition, data
        parser.close()


def test_split_frames_never_pass() -> None:
    """Every prefix of a good message that is not whole is refused, as by the reference."""
    data = b"<message to='a@b' id='x&gt;'><body a='&lt;'>hi<![CDATA[ > ]]></body></message>"
    for cut in range(1, len(data)):
        part = data[:cut]
        parser = FrameParser(MAX)
        parser.parse(GOOD[2])
        got = outcome(parser, part)
        assert got == outcome_once(part), part
        if part.strip():
            assert got[0] == "error", part  # type: ignore[index]
        parser.close()


def same_answer(parser: FrameParser, data: bytes) -> object:
    """The reference's answer, which the parser gives too; except that a message closing
    the reference's wrapper (`</frame>`) is always refused: the reference, its document
    over, let some through (`<presence/></frame>"</frame>`: expat, fed more to come, had
    not looked at the bytes after the end)."""
    expected = outcome_once(data)
    got = outcome(parser, data)
    if got != expected:
        assert b"</frame>" in data, (data, got, expected)
        assert isinstance(got, tuple) and got[0] == "error", data
    return got


def test_wrapper_end_refused() -> None:
    parser = FrameParser(MAX)
    data = b'<presence/></frame>"</frame>'
    assert outcome_once(data)[0] == "element"  # type: ignore[index]
    assert outcome(parser, data) == ("error", "not-well-formed")


def test_random_frames_match_reference() -> None:
    """Random mixes of XML pieces: the same answer as the reference, frame by frame."""
    pieces = [
        b"<a>", b"</a>", b"<b x='1'/>", b"<b x='", b"'", b"\"", b">", b"/>", b"<", b"</",
        b"text", b" ", b"\r", b"&amp;", b"&", b"<!--", b"-->", b"--", b"<![CDATA[", b"]]>",
        b"<?p", b"?>", b"<presence/>", b"<message><body>x</body></message>", b"\xc3\xa9",
        b"\xc3", b"</frame>", b"<frame>",
    ]  # fmt: skip
    rng = random.Random(7395)
    for _ in range(20000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        parser = FrameParser(MAX)
        parser.parse(GOOD[1])
        same_answer(parser, data)
        parser.close()
    # and long runs on one parser while the frames pass
    parser = FrameParser(MAX)
    for _ in range(20000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        got = same_answer(parser, data)
        if isinstance(got, tuple) and got[0] == "error":
            parser.close()
            parser = FrameParser(MAX)
    parser.close()


def test_text_frame_header() -> None:
    """RFC 6455 §5.2: FIN + text opcode, no mask, 7/16/64-bit payload length."""
    assert text_frame_header(0) == b"\x81\x00"
    assert text_frame_header(125) == b"\x81\x7d"
    assert text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert text_frame_header(65535) == b"\x81\x7e\xff\xff"
    assert text_frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")
