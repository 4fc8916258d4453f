"""The server side of the SOCKS5 handshake (RFC 1928) as XEP-0065 uses it, without I/O.

XEP-0065 §9.2 ("SOCKS5 Parameter Mapping") narrows RFC 1928 down to: no authentication
(method 0), CMD 1 (CONNECT), ATYP 3 (DOMAINNAME) whose DST.ADDR is the hex SHA-1 of
SID + Requester JID + Target JID, DST.PORT 0. Anything else is refused with the RFC 1928
reply for it (where the peer speaks SOCKS5 at all) and the connection is closed.
"""

from __future__ import annotations

import hashlib
import string

SOCKS_VERSION = 5
METHOD_NO_AUTH = 0
#: RFC 1928 §3: "X'FF' NO ACCEPTABLE METHODS".
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 1
ATYP_IPV4 = 1
ATYP_DOMAINNAME = 3

# RFC 1928 §6 reply codes.
REP_SUCCEEDED = 0
REP_GENERAL_FAILURE = 1
REP_NOT_ALLOWED = 2
REP_HOST_UNREACHABLE = 4
REP_COMMAND_NOT_SUPPORTED = 7
REP_ADDRESS_TYPE_NOT_SUPPORTED = 8

#: Longest handshake message: the request with a 255-byte domain name (4 + 1 + 255 + 2).
MAX_MESSAGE = 262

_HEX = frozenset(string.hexdigits)


def stream_hash(sid: str, requester: str, target: str) -> str:
    """XEP-0065 §5.3.2 / §9.2: DST.ADDR, SHA1(SID + Requester JID + Target JID) in hex."""
    return hashlib.sha1((sid + requester + target).encode(), usedforsecurity=False).hexdigest()


def connect_reply(dst_addr: str) -> bytes:
    """XEP-0065 §5.3.2 ("StreamHost Acknowledges Connection"): success, ATYP 3, the hash
    the client sent, port 0."""
    name = dst_addr.encode()
    return bytes((SOCKS_VERSION, REP_SUCCEEDED, 0, ATYP_DOMAINNAME, len(name))) + name + b"\0\0"


def failure_reply(code: int) -> bytes:
    """RFC 1928 §6: a reply with REP `code` (BND.ADDR 0.0.0.0, BND.PORT 0)."""
    return bytes((SOCKS_VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


class HandshakeError(Exception):
    """The peer broke the handshake: send `reply` (if any), then close the connection."""

    def __init__(self, reason: str, reply: bytes | None = None) -> None:
        super().__init__(reason)
        self.reply = reply


class Socks5Handshake:
    """Feed it what a SOCKS5 client sends; it answers the greeting and returns the
    request's DST.ADDR (the stream hash, lower-case hex) once the CONNECT request is whole.
    Bytes after the request belong to no one: XEP-0065 §9.1 says to ignore what is sent
    before the bytestream is activated, and the caller does."""

    __slots__ = ("_buffer", "state")

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: "greeting", "request", then "done".
        self.state = "greeting"

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """(bytes to send now, the stream hash when the request is complete).

        Raises HandshakeError for anything XEP-0065 does not allow."""
        if self.state == "done":
            return b"", None
        self._buffer += data
        out = b""
        if self.state == "greeting":
            buffer = self._buffer
            if not buffer:
                return b"", None
            if buffer[0] != SOCKS_VERSION:
                # Not SOCKS5: no reply it would understand (RFC 1928 §3).
                raise HandshakeError(f"not SOCKS5 (version byte {buffer[0]})")
            if len(buffer) < 2 or len(buffer) < 2 + buffer[1]:
                return b"", None
            methods = buffer[2 : 2 + buffer[1]]
            del buffer[: 2 + buffer[1]]
            if METHOD_NO_AUTH not in methods:
                # XEP-0065 §5.3.2: method 0 only; RFC 1928 §3: X'FF', then close.
                raise HandshakeError(
                    "no acceptable authentication method",
                    bytes((SOCKS_VERSION, METHOD_NONE_ACCEPTABLE)),
                )
            out = bytes((SOCKS_VERSION, METHOD_NO_AUTH))
            self.state = "request"
            if not buffer:
                return out, None
        try:
            dst_addr = self._request()
        except HandshakeError as exc:
            # The greeting arrived with the request: its answer goes first.
            if out and exc.reply is not None:
                exc.reply = out + exc.reply
            raise
        return out, dst_addr

    def _request(self) -> str | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        version, command, _reserved, address_type = buffer[:4]
        if version != SOCKS_VERSION:
            raise HandshakeError(
                f"request of version {version}", failure_reply(REP_GENERAL_FAILURE)
            )
        if command != CMD_CONNECT:
            raise HandshakeError(
                f"command {command} (only CONNECT)", failure_reply(REP_COMMAND_NOT_SUPPORTED)
            )
        if address_type != ATYP_DOMAINNAME:
            raise HandshakeError(
                f"address type {address_type} (only DOMAINNAME)",
                failure_reply(REP_ADDRESS_TYPE_NOT_SUPPORTED),
            )
        if len(buffer) < 5:
            return None
        length = buffer[4]
        if len(buffer) < 5 + length + 2:
            return None
        name = bytes(buffer[5 : 5 + length])
        # The port (2 bytes) is 0 by XEP-0065 §9.2; §9.1 lets the proxy ignore it.
        del buffer[: 5 + length + 2]
        self.state = "done"
        text = name.decode("ascii", "replace")
        if length != 40 or not _HEX.issuperset(text):
            raise HandshakeError(
                "DST.ADDR is no SHA-1 hash in hex", failure_reply(REP_HOST_UNREACHABLE)
            )
        self._buffer = bytearray()  # what follows is ignored (XEP-0065 §9.1)
        return text.lower()
