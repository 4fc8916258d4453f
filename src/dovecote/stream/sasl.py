"""SASL for client streams (RFC 6120 §6): SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS
variants with channel binding (RFC 5802, RFC 7677, RFC 5929), and PLAIN (RFC 4616) over
TLS only. SCRAM is done by `scramp`; this module picks the mechanism, asks for the stored
keys and turns the outcome into RFC 6120 §6.5 conditions.

Sans-IO: every step is synchronous. Where the exchange needs something from outside it
returns a request instead of an answer: `NeedCredentials` (an account's stored keys,
answered by `SaslNegotiation.credentials`) and `NeedPasswordCheck` (PLAIN's PBKDF2, CPU
work the caller runs off the event loop, answered by `SaslNegotiation.password_checked`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import scramp

from dovecote.jid import InvalidJID, prepare_local
from dovecote.storage.credentials import ScramCredentials

#: Hash name of the stored credentials each SCRAM family uses.
SCRAM_HASHES = {"SCRAM-SHA-256": "SHA-256", "SCRAM-SHA-1": "SHA-1"}
#: Preference order, strongest first (what the features list shows).
MECHANISM_ORDER = (
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
)

#: Where failed logins are logged, one line each at WARNING, for fail2ban (README).
auth_log = logging.getLogger("dovecote.auth")
#: The longest user name written to the log (characters).
LOGGED_NAME_LENGTH = 64

# A per-process secret so that unknown users get a stable but meaningless salt: the
# exchange then fails only at the proof, like a wrong password (no account probing).
_DECOY_SECRET = os.urandom(32)
SALT_LENGTH = len(scramp.ScramMechanism("SCRAM-SHA-1").make_auth_info("x")[0])


def log_failure(user: str, domain: str, address: str, mechanism: str) -> None:
    """One line per failed login, in a stable format for fail2ban:
    ``authentication failed for USER@DOMAIN from IP (MECHANISM)``.

    The user name comes from the client: whitespace, control characters and anything
    beyond `LOGGED_NAME_LENGTH` are escaped or cut so it cannot forge another address.
    """
    name = "".join(
        c if c.isprintable() and not c.isspace() and c not in "()" else f"\\x{ord(c):02x}"
        for c in user[:LOGGED_NAME_LENGTH]
    )
    auth_log.warning(
        "authentication failed for %s@%s from %s (%s)", name or "\\x00", domain, address, mechanism
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    local: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    condition: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """A request: the stored credentials of `local` (on the exchange's domain) for
    `hash_name`; answered by `SaslNegotiation.credentials` (None: no such account)."""

    local: str
    hash_name: str


@dataclass(frozen=True, slots=True)
class NeedPasswordCheck:
    """A request: does `password` match `credentials` (`verify_password`: PBKDF2, CPU
    work to run off the event loop)? Answered by `SaslNegotiation.password_checked`."""

    password: str = field(repr=False)
    credentials: ScramCredentials = field(repr=False)


#: What one step of the exchange gives: an answer for the client, or a request.
SaslStep = Challenge | Success | Failure | NeedCredentials | NeedPasswordCheck


def offered_mechanisms(
    secure: bool, channel_bindings: dict[str, bytes], allow_plain: bool
) -> list[str]:
    """RFC 6120 §6.4.1: what to list in <mechanisms/> on this connection."""
    offered = []
    for mechanism in MECHANISM_ORDER:
        if mechanism.endswith("-PLUS"):
            if secure and channel_bindings:
                offered.append(mechanism)
        elif mechanism == "PLAIN":
            if secure and allow_plain:
                offered.append(mechanism)
        else:
            offered.append(mechanism)
    return offered


def _parse_client_first(message: str) -> tuple[str, str | None, str | None]:
    """Return (username, authzid, channel binding name) from a SCRAM client-first-message
    (RFC 5802 §7) without validating the rest, which scramp does."""
    try:
        flag, authz, bare = message.split(",", 2)
    except ValueError:
        raise ValueError("malformed client-first-message") from None
    cb_name = None
    if flag.startswith("p="):
        cb_name = flag[2:]
    elif flag not in ("n", "y"):
        raise ValueError("bad gs2 flag")
    authzid = None
    if authz:
        if not authz.startswith("a="):
            raise ValueError("bad authzid")
        authzid = _unescape(authz[2:])
    first = bare.split(",", 1)[0]
    if not first.startswith("n="):
        raise ValueError("missing username")
    return _unescape(first[2:]), authzid, cb_name


def _unescape(value: str) -> str:
    return value.replace("=2C", ",").replace("=3D", "=")


class SaslNegotiation:
    """One authentication exchange on one stream (sans-IO, see the module docstring).

    `start` and `respond` take the client's messages; a `NeedCredentials` or
    `NeedPasswordCheck` they return is answered with `credentials` or `password_checked`,
    which go on with the exchange. Nothing else may be fed while a request is unanswered.
    """

    def __init__(
        self,
        domain: str,
        *,
        secure: bool,
        channel_bindings: dict[str, bytes],
        allow_plain: bool = True,
        iterations: int = 4096,
    ) -> None:
        self.domain = domain
        self.secure = secure
        self.channel_bindings = channel_bindings
        self.allow_plain = allow_plain
        self.iterations = iterations
        self.mechanisms = offered_mechanisms(secure, channel_bindings, allow_plain)
        self.mechanism: str | None = None
        self._scram: scramp.core.ScramServer | None = None
        self._local: str | None = None
        self._state = "start"
        #: The request waiting for its answer: its kind and what goes on with the answer.
        self._pending: tuple[str, Callable[[Any], SaslStep]] | None = None
        #: The account name the client tried (prepared when valid, as sent otherwise),
        #: known once the first message is in: what failures are counted and logged by.
        self.attempted_user: str | None = None

    @property
    def waiting(self) -> bool:
        """A request (`NeedCredentials`, `NeedPasswordCheck`) is unanswered."""
        return self._pending is not None

    def start(self, mechanism: str, initial: bytes | None) -> SaslStep:
        """`<auth mechanism=...>`; `initial` is None when the client sent no initial
        response (RFC 6120 §6.4.2), b'' for the '=' empty response."""
        self._check_not_waiting()
        if mechanism not in self.mechanisms:
            if not self.secure and (mechanism == "PLAIN" or mechanism.endswith("-PLUS")):
                return Failure("encryption-required", f"{mechanism} is offered only over TLS")
            return Failure("invalid-mechanism", f"{mechanism} is not offered")
        self.mechanism = mechanism
        if initial is None:
            self._state = "wait-initial"
            return Challenge(b"")
        return self._first(initial)

    def respond(self, data: bytes) -> SaslStep:
        """`<response>` from the client."""
        self._check_not_waiting()
        if self._state == "wait-initial":
            return self._first(data)
        if self._state == "wait-final" and self._scram is not None:
            return self._scram_final(data)
        return Failure("malformed-request", "unexpected response")

    def credentials(self, creds: ScramCredentials | None) -> SaslStep:
        """The answer to `NeedCredentials`: the account's stored keys, None if unknown."""
        return self._answer("credentials", creds)

    def password_checked(self, ok: bool) -> SaslStep:
        """The answer to `NeedPasswordCheck`: whether the password matched."""
        return self._answer("password", ok)

    def _answer(self, kind: str, value: object) -> SaslStep:
        pending = self._pending
        if pending is None or pending[0] != kind:
            raise RuntimeError(f"no {kind} were asked for")
        self._pending = None
        return pending[1](value)

    def _check_not_waiting(self) -> None:
        if self._pending is not None:
            raise RuntimeError("a SASL request is unanswered")

    def _first(self, data: bytes) -> SaslStep:
        if self.mechanism == "PLAIN":
            return self._plain(data)
        return self._scram_first(data)

    # ---- PLAIN -------------------------------------------------------------------
    def _plain(self, data: bytes) -> SaslStep:
        try:
            authzid, authcid, password = data.decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            return Failure("malformed-request", "PLAIN message is malformed")
        try:
            local = prepare_local(authcid)
        except InvalidJID:
            self.attempted_user = authcid
            return Failure("not-authorized")
        self.attempted_user = local
        if authzid and not self._authzid_ok(authzid, local):
            return Failure("invalid-authzid")

        # One lookup, real account or not (every account has SHA-256 keys): an unknown
        # user costs the same query and the same PBKDF2, against a decoy record, as a
        # wrong password does (no account probing by timing).
        def credentials_answered(creds: ScramCredentials | None) -> SaslStep:
            checked = creds if creds is not None else self.decoy_credentials(authcid)

            def password_answered(ok: bool) -> SaslStep:
                self._state = "done"
                if not ok or creds is None:
                    return Failure("not-authorized")
                return Success(local)

            self._pending = ("password", password_answered)
            return NeedPasswordCheck(password, checked)

        self._pending = ("credentials", credentials_answered)
        return NeedCredentials(local, "SHA-256")

    # ---- SCRAM -------------------------------------------------------------------
    def _scram_first(self, data: bytes) -> SaslStep:
        assert self.mechanism is not None
        try:
            message = data.decode("utf-8")
            username, authzid, cb_name = _parse_client_first(message)
        except (UnicodeDecodeError, ValueError):
            return Failure("malformed-request", "bad client-first-message")
        try:
            local = prepare_local(username)
        except InvalidJID:
            local = None
        self.attempted_user = local if local is not None else username
        if authzid:
            # scramp refuses any GS2 authzid, and the header is covered by the client's
            # proof, so it cannot be stripped here: only PLAIN takes an authzid.
            if local is not None and not self._authzid_ok(authzid, local):
                return Failure("invalid-authzid")
            return Failure("invalid-authzid", "omit the authzid with SCRAM")
        family = self.mechanism.removesuffix("-PLUS")

        def credentials_answered(creds: ScramCredentials | None) -> SaslStep:
            return self._scram_server_first(message, username, local, cb_name, creds)

        if local is None:
            # Not a valid name, so no account: straight to the decoy exchange.
            return credentials_answered(None)
        self._pending = ("credentials", credentials_answered)
        return NeedCredentials(local, SCRAM_HASHES[family])

    def _scram_server_first(
        self,
        message: str,
        username: str,
        local: str | None,
        cb_name: str | None,
        creds: ScramCredentials | None,
    ) -> SaslStep:
        assert self.mechanism is not None
        family = self.mechanism.removesuffix("-PLUS")
        auth_info = (
            (creds.salt, creds.stored_key, creds.server_key, creds.iterations)
            if creds is not None
            else self._decoy(username, family)
        )
        binding = self._binding_for(cb_name)
        if self.mechanism.endswith("-PLUS") and binding is None:
            return Failure("not-authorized", f"channel binding {cb_name!r} is not supported")
        try:
            server = scramp.ScramMechanism(self.mechanism).make_server(
                lambda _username: auth_info, channel_binding=binding
            )
            server.set_client_first(message)
            server_first = server.get_server_first()
        except scramp.ScramException as exc:
            return Failure("not-authorized", str(exc.args[0]) if exc.args else "")
        self._scram = server
        # A decoy exchange (no such account) keeps no local: it cannot succeed.
        self._local = local if creds is not None else None
        self._state = "wait-final"
        return Challenge(server_first.encode())

    def _scram_final(self, data: bytes) -> SaslStep:
        assert self._scram is not None
        try:
            self._scram.set_client_final(data.decode("utf-8"))
            server_final = self._scram.get_server_final()
        except (scramp.ScramException, UnicodeDecodeError):
            self._state = "done"
            return Failure("not-authorized")
        self._state = "done"
        if self._local is None:  # decoy exchange: cannot succeed
            return Failure("not-authorized")
        return Success(self._local, server_final.encode())

    def _binding_for(self, cb_name: str | None) -> tuple[str, bytes] | None:
        if cb_name is not None:
            data = self.channel_bindings.get(cb_name)
            return (cb_name, data) if data else None
        # Not asked for: still tell scramp that we support binding, so a client saying
        # 'y' (it believes we do not) is caught as a downgrade (RFC 5802 §6).
        for name, data in self.channel_bindings.items():
            return (name, data)
        return None

    def _decoy(self, username: str, family: str) -> tuple[bytes, bytes, bytes, int]:
        # The salt looks like a stored one (same length, stable per user name).
        salt = hmac.new(_DECOY_SECRET, f"{family}\0{username}".encode(), hashlib.sha256).digest()
        return salt[:SALT_LENGTH], os.urandom(32), os.urandom(32), self.iterations

    def decoy_credentials(self, username: str) -> ScramCredentials:
        """A SHA-256 record for a user that does not exist: stable salt, current iteration
        count, keys nothing can match (PLAIN checks a password against it)."""
        salt, stored_key, server_key, iterations = self._decoy(username, "SCRAM-SHA-256")
        return ScramCredentials("SHA-256", salt, iterations, stored_key, server_key)

    def _authzid_ok(self, authzid: str, local: str) -> bool:
        try:
            from dovecote.jid import JID

            return JID.parse(authzid) == JID(local, self.domain)
        except InvalidJID:
            return False
