"""A test certificate authority (made with `cryptography` in the test, never shipped):
leaf certificates for the federation tests with DNS-ID, wildcard, SRV-ID and XmppAddr
identities (RFC 6125, RFC 6120 §13.7.1.4)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Leaf:
    cert: Path
    key: Path
    der: bytes


class TestCA:
    """A self-signed CA under `directory` (ca.pem) that issues leaf certificates."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Dovecote Test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        filename: str,
        *,
        dns: tuple[str, ...] = (),
        xmpp: tuple[str, ...] = (),
        srv: tuple[str, ...] = (),
        cn: str | None = None,
        expired: bool = False,
    ) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            if cn
            else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dovecote tests")]
        )
        now = datetime.datetime.now(datetime.UTC)
        start = now - datetime.timedelta(days=10 if expired else 1)
        end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.OtherName(XMPP_ADDR, core.UTF8String(x).dump()) for x in xmpp]
        names += [x509.OtherName(SRV_NAME, core.IA5String(s).dump()) for s in srv]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{filename}.crt"
        key_path = self.directory / f"{filename}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return Leaf(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))
