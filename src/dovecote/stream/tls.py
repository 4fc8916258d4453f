"""TLS: server contexts, the self-signed certificate made on first start, and the data
for SASL channel binding (RFC 5929 tls-server-end-point, tls-unique)."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class CertificateError(Exception):
    """The configured certificate or key cannot be used (message names the file)."""


@dataclass(frozen=True, slots=True)
class ServerTLS:
    context: ssl.SSLContext
    cert_path: Path
    #: RFC 5929 §4.1: hash of the server certificate for tls-server-end-point.
    end_point_hash: bytes
    #: The same certificate for HTTPS (`[listen] https`): ALPN http/1.1, not xmpp-client.
    http_context: ssl.SSLContext | None = None
    #: Server-to-server streams (incoming): ALPN xmpp-server (XEP-0368).
    s2s_context: ssl.SSLContext | None = None
    key_path: Path | None = None


def ensure_self_signed(data_dir: Path, domains: list[str]) -> tuple[Path, Path]:
    """Create (once) a self-signed certificate for all served domains under data_dir."""
    cert_dir = data_dir / "certs"
    cert_path = cert_dir / "self-signed.crt"
    key_path = cert_dir / "self-signed.key"
    names_path = cert_dir / "self-signed.names"
    wanted = "\n".join(sorted(domains))
    if cert_path.exists() and key_path.exists() and names_path.exists():
        if names_path.read_text() == wanted:
            return cert_path, key_path
    cert_dir.mkdir(parents=True, exist_ok=True)
    # Imported here: `cryptography` is only needed to make the certificate (8 MB).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = []
    for domain in domains:
        alt_names.append(x509.DNSName(domain))
        alt_names.append(x509.DNSName(f"*.{domain}"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    names_path.write_text(wanted)
    log.info("generated a self-signed certificate for %s in %s", ", ".join(domains), cert_path)
    return cert_path, key_path


def end_point_hash(cert_pem: bytes) -> bytes:
    """RFC 5929 §4.1: hash the DER certificate with its signature hash, MD5/SHA-1 -> SHA-256.

    The first certificate of a PEM chain is the server's; asn1crypto (scramp's own
    dependency) reads its signature algorithm."""
    from asn1crypto import pem
    from asn1crypto import x509 as asn1_x509

    ders = [
        der for kind, _headers, der in pem.unarmor(cert_pem, multiple=True) if kind == "CERTIFICATE"
    ]
    if not ders:
        raise ValueError("no certificate in the PEM data")
    name = asn1_x509.Certificate.load(ders[0]).hash_algo
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, ders[0]).digest()


def make_server_tls(cert_path: Path, key_path: Path) -> ServerTLS:
    for path in (cert_path, key_path):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    context = _context(cert_path, key_path, "xmpp-client")  # XEP-0368
    http_context = _context(cert_path, key_path, "http/1.1")
    try:
        digest = end_point_hash(cert_path.read_bytes())
    except ValueError as exc:
        raise CertificateError(f"cannot parse certificate {cert_path}: {exc}") from None
    s2s_context = _context(cert_path, key_path, "xmpp-server")
    return ServerTLS(context, cert_path, digest, http_context, s2s_context, key_path)


def _context(cert_path: Path, key_path: Path, alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols([alpn])
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError) as exc:
        raise CertificateError(
            f"cannot use certificate {cert_path} with key {key_path}: {exc}"
        ) from None
    return context
