"""Certificates of peer servers (XEP-0178, RFC 6120 §13.7.1.2, RFC 6125).

Two parts:

- **Name matching** (RFC 6125 §6): the identities a certificate presents (`identities`)
  and whether one of them is valid for a domain (`Identities.matches`): DNS-ID (SAN
  dNSName, a wildcard only as the whole left-most label, §6.4.3), SRV-ID
  (`_xmpp-server.example.org`, RFC 4985 otherName, §6.5.1 with RFC 6120 §13.7.1.2.1),
  XmppAddr (id-on-xmppAddr otherName, OID 1.3.6.1.5.5.7.8.5, a UTF8String; RFC 6120
  §13.7.1.4: a bare domain) and the subject CN only when the certificate has no
  subjectAltName identifiers of those kinds (§6.4.4).
- **Chain validation without refusing the handshake.** Prosody and ejabberd accept any
  certificate during the TLS handshake and decide afterwards (an untrusted peer may still
  use dialback). Python's `ssl` has no verify callback: with `CERT_OPTIONAL` OpenSSL
  aborts the handshake on an untrusted client certificate. `accept_any_certificate`
  installs, through ctypes, an OpenSSL verify callback that keeps the handshake going;
  OpenSSL still validates the chain (with the intermediates the peer sent, against the
  context's trust store: `[s2s] ca_file`/`ca_path` or the system's) and records the result,
  which `verify_result` reads after the handshake (`SSL_get_verify_result`, the pattern the
  OpenSSL manual describes). The C structures of CPython's `_ssl` objects are checked
  before use (the SSL_CTX of the SSL must be the context's); where they cannot be
  (another Python), `available()` is false: incoming streams then request no certificate
  and use dialback only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: id-on-xmppAddr (RFC 6120 §13.7.1.4).
XMPP_ADDR_OID = "1.3.6.1.5.5.7.8.5"
#: id-on-dnsSRV (RFC 4985).
SRV_NAME_OID = "1.3.6.1.5.5.7.8.7"
SERVICE = "_xmpp-server"


def _lower(domain: str) -> str:
    """A DNS name to compare: A-labels, lower case, no trailing dot (RFC 6125 §6.4.1)."""
    domain = domain.strip().rstrip(".")
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain.lower()


@dataclass(frozen=True, slots=True)
class Identities:
    """What a certificate says about its subject (RFC 6125 §1.8 "presented identifiers")."""

    dns: tuple[str, ...] = ()
    srv: tuple[str, ...] = ()
    xmpp: tuple[str, ...] = ()
    cn: tuple[str, ...] = ()
    #: Any SAN entry of a kind RFC 6125 names (then the CN is not looked at, §6.4.4).
    has_san_ids: bool = field(default=False)

    def matches(self, domain: str) -> bool:
        """Is the certificate valid for the XMPP domain `domain` (RFC 6120 §13.7.1.2)?"""
        reference = _lower(domain)
        if not reference:
            return False
        if any(_lower(x) == reference for x in self.xmpp):
            return True
        if any(_dns_id_matches(name, reference) for name in self.dns):
            return True
        if any(_srv_id_matches(name, reference) for name in self.srv):
            return True
        if not self.has_san_ids:
            return any(_dns_id_matches(name, reference) for name in self.cn)
        return False


def _dns_id_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.4.1 and §6.4.3: labels compared case-insensitively; '*' only as the
    complete left-most label, matching exactly one label (`*.a.b` matches `x.a.b`, not
    `a.b` nor `y.x.a.b`); never a wildcard over an IDN A-label or a public suffix alone."""
    name = _lower(presented)
    if not name:
        return False
    if "*" not in name:
        return name == reference
    labels = name.split(".")
    if labels[0] != "*" or any("*" in label for label in labels[1:]):
        return False  # partial wildcards (f*o.example) are not accepted (§6.4.3 "MAY")
    if len(labels) < 3:
        return False  # "*.com": too wide
    ref_labels = reference.split(".")
    if len(ref_labels) != len(labels):
        return False
    if ref_labels[0].startswith("xn--"):
        return False  # §6.4.3: no wildcard over an internationalized label
    return ref_labels[1:] == labels[1:]


def _srv_id_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.5.1: `_service.name`: the service must be _xmpp-server, the name
    matches the domain exactly (RFC 4985 allows no wildcards)."""
    service, _dot, name = presented.partition(".")
    return service.lower() == SERVICE and _lower(name) == reference


def identities(der: bytes) -> Identities:
    """The presented identifiers of a DER certificate (`cryptography` parses it); an
    unparsable certificate presents none."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return Identities()
    dns: list[str] = []
    srv: list[str] = []
    xmpp: list[str] = []
    has_san_ids = False
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    if san is not None:
        for name in san:
            if isinstance(name, x509.DNSName):
                dns.append(name.value)
                has_san_ids = True
            elif isinstance(name, x509.OtherName):
                oid = name.type_id.dotted_string
                text = _der_string(name.value)
                if text is None:
                    continue
                if oid == XMPP_ADDR_OID:
                    xmpp.append(text)
                    has_san_ids = True
                elif oid == SRV_NAME_OID:
                    srv.append(text)
                    has_san_ids = True
            elif isinstance(name, x509.UniformResourceIdentifier):
                has_san_ids = True
    cn: list[str] = []
    try:
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            if isinstance(attribute.value, str):
                cn.append(attribute.value)
    except ValueError:
        pass
    return Identities(tuple(dns), tuple(srv), tuple(xmpp), tuple(cn), has_san_ids)


def _der_string(value: bytes) -> str | None:
    """The text of a DER UTF8String / IA5String (the otherName value), else None."""
    from asn1crypto import core

    try:
        parsed = core.load(value)
    except (ValueError, TypeError):
        return None
    if isinstance(parsed, (core.UTF8String, core.IA5String)):
        return str(parsed.native)
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---- OpenSSL: keep the handshake going, read the verification result afterwards ---------
X509_V_OK = 0
_SSL_VERIFY_PEER = 0x01
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept(_preverify_ok: int, _store_ctx: int | None) -> int:
    return 1


#: Kept alive for as long as OpenSSL may call it (the whole process).
_ACCEPT_CB = _VERIFY_CB(_accept)


class _OpenSSL:
    """The few libssl functions used here, from the library CPython's `_ssl` links."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        self.set_verify = lib.SSL_CTX_set_verify
        self.set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
        self.set_verify.restype = None
        self.get_verify_result = lib.SSL_get_verify_result
        self.get_verify_result.argtypes = [ctypes.c_void_p]
        self.get_verify_result.restype = ctypes.c_long
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.verify_string = lib.X509_verify_cert_error_string
        self.verify_string.argtypes = [ctypes.c_long]
        self.verify_string.restype = ctypes.c_char_p


_openssl: _OpenSSL | None = None
_openssl_failed = False
_HEAD = object.__basicsize__  # PyObject_HEAD


def _lib() -> _OpenSSL | None:
    global _openssl, _openssl_failed
    if _openssl is None and not _openssl_failed:
        try:
            _openssl = _OpenSSL()
        except (OSError, AttributeError) as exc:
            log.warning("cannot reach OpenSSL through ctypes (%s): no certificate checks", exc)
            _openssl_failed = True
    return _openssl


def _ctx_pointer(context: ssl.SSLContext) -> int:
    # CPython's PySSLContext: PyObject_HEAD, then `SSL_CTX *ctx`.
    return int(ctypes.c_void_p.from_address(id(context) + _HEAD).value or 0)


def _ssl_pointer(ssl_object: Any) -> int:
    # CPython's PySSLSocket: PyObject_HEAD, `PyObject *Socket`, then `SSL *ssl`.
    inner = getattr(ssl_object, "_sslobj", ssl_object)
    return int(
        ctypes.c_void_p.from_address(id(inner) + _HEAD + ctypes.sizeof(ctypes.c_void_p)).value or 0
    )


def available() -> bool:
    """Can certificates be requested and checked after the handshake here? (A
    self-test: a throw-away connection's SSL must belong to its context.)"""
    global _available
    if _available is None:
        _available = _self_test()
    return _available


_available: bool | None = None


def _self_test() -> bool:
    lib = _lib()
    if lib is None:
        return False
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        obj = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="x.test")
        ok = lib.get_ssl_ctx(_ssl_pointer(obj)) == _ctx_pointer(context)
    except Exception as exc:  # any surprise means: do not poke memory
        log.warning("certificate checks unavailable: %s", exc)
        return False
    if not ok:
        log.warning("certificate checks unavailable: unexpected layout of CPython's _ssl")
    return ok


def accept_any_certificate(context: ssl.SSLContext) -> bool:
    """Request the peer's certificate (a server context: CertificateRequest) but never
    abort the handshake over it; `verify_result` tells afterwards. Call last (setting
    `verify_mode` again drops the callback). False when unavailable (nothing changed)."""
    if not available():
        return False
    lib = _lib()
    assert lib is not None
    if context.check_hostname:
        context.check_hostname = False
    context.verify_mode = ssl.CERT_OPTIONAL
    lib.set_verify(_ctx_pointer(context), _SSL_VERIFY_PEER, _ACCEPT_CB)
    return True


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The outcome for one TLS connection: the leaf (DER), whether its chain validated
    against the trust store, and why not."""

    der: bytes | None
    trusted: bool
    error: str = ""

    def valid_for(self, domain: str) -> bool:
        """Trusted and naming `domain` (XEP-0178 §3 step 5, RFC 6125)."""
        return self.trusted and self.der is not None and identities(self.der).matches(domain)


def peer_certificate(ssl_object: Any, verified_by_openssl: bool = False) -> PeerCertificate:
    """What the peer presented on `ssl_object` (ssl.SSLObject / SSLSocket) after the
    handshake. `verified_by_openssl`: the context had CERT_REQUIRED without our callback
    (the handshake itself failed on an untrusted chain)."""
    if ssl_object is None:
        return PeerCertificate(None, False, "no TLS")
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError:
        der = None
    if not der:
        return PeerCertificate(None, False, "no certificate")
    if verified_by_openssl:
        return PeerCertificate(der, True)
    lib = _lib()
    if lib is None or not available():
        return PeerCertificate(der, False, "certificate checks unavailable")
    code = int(lib.get_verify_result(_ssl_pointer(ssl_object)))
    if code == X509_V_OK:
        return PeerCertificate(der, True)
    reason = lib.verify_string(code)
    return PeerCertificate(der, False, reason.decode() if reason else f"error {code}")
