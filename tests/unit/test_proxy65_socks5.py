"""The SOCKS5 handshake of the XEP-0065 proxy (RFC 1928 narrowed by XEP-0065 §9.2), without
sockets."""

from __future__ import annotations

import hashlib

import pytest

from dovecote.services.proxy65.socks5 import (
    HandshakeError,
    Socks5Handshake,
    connect_reply,
    failure_reply,
    stream_hash,
)

DIGEST = stream_hash("vxf9n471bn46", "requester@example.com/foo", "target@example.org/bar")


def request(name: bytes, command: int = 1, address_type: int = 3) -> bytes:
    return bytes([5, command, 0, address_type, len(name)]) + name + b"\0\0"


def test_stream_hash_is_sha1_of_sid_requester_target() -> None:
    """XEP-0065 §5.3.2: SHA1(SID + Requester JID + Target JID), hex-encoded."""
    text = "vxf9n471bn46requester@example.com/footarget@example.org/bar"
    assert DIGEST == hashlib.sha1(text.encode()).hexdigest()
    assert len(DIGEST) == 40


def test_greeting_then_connect() -> None:
    machine = Socks5Handshake()
    assert machine.feed(b"\x05\x02\x02\x00") == (b"\x05\x00", None)
    assert machine.state == "request"
    assert machine.feed(request(DIGEST.encode())) == (b"", DIGEST)
    assert machine.state == "done"
    # After the request: nothing more is parsed (bytes before activation are ignored).
    assert machine.feed(b"anything") == (b"", None)


def test_everything_in_one_piece_and_byte_by_byte() -> None:
    whole = b"\x05\x01\x00" + request(DIGEST.upper().encode())
    assert Socks5Handshake().feed(whole) == (b"\x05\x00", DIGEST)
    machine = Socks5Handshake()
    out = b""
    found = None
    for byte in whole:
        reply, dst = machine.feed(bytes([byte]))
        out += reply
        found = found or dst
    assert (out, found) == (b"\x05\x00", DIGEST)


def test_replies() -> None:
    name = DIGEST.encode()
    assert connect_reply(DIGEST) == b"\x05\x00\x00\x03\x28" + name + b"\x00\x00"
    assert failure_reply(2) == b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"


def test_not_socks5_gets_no_reply() -> None:
    with pytest.raises(HandshakeError) as raised:
        Socks5Handshake().feed(b"\x04\x01\x00\x50")
    assert raised.value.reply is None


def test_no_acceptable_method() -> None:
    with pytest.raises(HandshakeError) as raised:
        Socks5Handshake().feed(b"\x05\x02\x01\x02")
    assert raised.value.reply == b"\x05\xff"
    with pytest.raises(HandshakeError) as raised:
        Socks5Handshake().feed(b"\x05\x00")
    assert raised.value.reply == b"\x05\xff"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (request(DIGEST.encode(), command=2), 7),
        (request(DIGEST.encode(), command=3), 7),  # UDP ASSOCIATE (§8) is not offered
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", 8),
        (b"\x05\x01\x00\x04" + bytes(18), 8),
        (request(b"example.org"), 4),
        (request(b"z" * 40), 4),
        (b"\x04\x01\x00\x03", 1),
    ],
)
def test_bad_request(data: bytes, code: int) -> None:
    machine = Socks5Handshake()
    machine.feed(b"\x05\x01\x00")
    with pytest.raises(HandshakeError) as raised:
        machine.feed(data)
    assert raised.value.reply == failure_reply(code)


def test_greeting_answer_precedes_the_failure_in_one_read() -> None:
    with pytest.raises(HandshakeError) as raised:
        Socks5Handshake().feed(b"\x05\x01\x00" + request(DIGEST.encode(), command=2))
    assert raised.value.reply == b"\x05\x00" + failure_reply(7)
