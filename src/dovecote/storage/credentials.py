"""SCRAM credentials: what is stored instead of a password.

RFC 5802 §3 (SCRAM) and RFC 7677 (SCRAM-SHA-256): the server keeps, per hash function,
the salt, the iteration count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
ServerKey = HMAC(SaltedPassword, "Server Key"), where SaltedPassword = Hi(SASLprep(password),
salt, i) (PBKDF2, RFC 2898). The plain password is never stored. The same record verifies a
SASL PLAIN password (RFC 4616) by recomputing StoredKey.

Key derivation is CPU-bound (PBKDF2): callers on the event loop run `derive_credentials` in
an executor; the CLI's bulk import spreads it over processes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import scramp
from scramp.utils import saslprep

#: The SCRAM hash functions a password is stored for, by their IANA SASL names' suffix.
HASHES = ("SHA-1", "SHA-256")

#: RFC 7677 §4: "the iteration count ... SHOULD be at least 4096".
MIN_ITERATIONS = 4096

_MECHANISMS = {name: f"SCRAM-{name}" for name in HASHES}
_HASHLIB_NAMES = {"SHA-1": "sha1", "SHA-256": "sha256"}


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """One hash function's SCRAM record for an account (RFC 5802 §3)."""

    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @property
    def mechanism(self) -> str:
        """The SASL mechanism this record serves, e.g. ``SCRAM-SHA-256``."""
        return _MECHANISMS[self.hash_name]

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """The tuple scramp's ``ScramServer`` auth_fn returns: (salt, stored, server, i)."""
        return self.salt, self.stored_key, self.server_key, self.iterations


def prepare_password(password: str) -> str:
    """SASLprep (RFC 4013) a password; raises ValueError if it is not allowed or empty.

    Uses scramp's own SASLprep so stored keys match what a SCRAM exchange computes.
    """
    try:
        prepared: str = saslprep(password)
    except scramp.ScramException as exc:
        raise ValueError(f"password not allowed: {exc.args[0]}") from None
    if not prepared:
        raise ValueError("empty password")
    return prepared


def derive_credentials(
    password: str, iterations: int = MIN_ITERATIONS
) -> dict[str, ScramCredentials]:
    """Derive a fresh SCRAM record (random salt) for every hash in `HASHES`.

    Raises ValueError for an iteration count below 4096 (RFC 7677 §4) or a password that
    SASLprep rejects or maps to nothing.
    """
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS}, got {iterations}")
    prepare_password(password)  # a clear ValueError before scramp's own check
    result: dict[str, ScramCredentials] = {}
    for hash_name in HASHES:
        mechanism = scramp.ScramMechanism(_MECHANISMS[hash_name])
        try:
            salt, stored_key, server_key, count = mechanism.make_auth_info(
                password, iteration_count=iterations
            )
        except scramp.ScramException as exc:
            raise ValueError(str(exc.args[0])) from None
        result[hash_name] = ScramCredentials(hash_name, salt, count, stored_key, server_key)
    return result


def verify_password(password: str, creds: ScramCredentials) -> bool:
    """True if `password` is the one `creds` was derived from (for SASL PLAIN, RFC 4616).

    Recomputes SaltedPassword with the stored salt and iteration count and compares
    StoredKey in constant time (RFC 5802 §3). A password SASLprep rejects never matches.
    """
    try:
        prepared = prepare_password(password)
    except ValueError:
        return False
    digest = _HASHLIB_NAMES.get(creds.hash_name)
    if digest is None:
        return False
    salted = hashlib.pbkdf2_hmac(digest, prepared.encode(), creds.salt, creds.iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    stored_key = hashlib.new(digest, client_key).digest()
    return hmac.compare_digest(stored_key, creds.stored_key)
