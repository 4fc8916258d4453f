"""SASL negotiation (RFC 6120 §6): SCRAM (RFC 5802, RFC 7677) with and without channel
binding (RFC 5929 tls-server-end-point), PLAIN (RFC 4616), driven without a socket."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest
import scramp

from dovecote.storage.credentials import ScramCredentials, derive_credentials, verify_password
from dovecote.stream.sasl import (
    MECHANISM_ORDER,
    Challenge,
    Failure,
    NeedCredentials,
    NeedPasswordCheck,
    SaslNegotiation,
    SaslStep,
    Success,
    offered_mechanisms,
)

DOMAIN = "example.org"
USER = "juliet"
PASSWORD = "r0m3o-pässword"
CREDENTIALS = derive_credentials(PASSWORD)
CB_NAME = "tls-server-end-point"
CB_DATA = hashlib.sha256(b"the server certificate").digest()
BINDINGS = {CB_NAME: CB_DATA}
SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256"]


class Lookup:
    """In-memory credential store; records what was asked."""

    def __init__(self, accounts: dict[str, dict[str, ScramCredentials]]) -> None:
        self.accounts = accounts
        self.calls: list[tuple[str, str]] = []

    def __call__(self, local: str, hash_name: str) -> ScramCredentials | None:
        self.calls.append((local, hash_name))
        return self.accounts.get(local, {}).get(hash_name)


class Driven:
    """A `SaslNegotiation` whose requests are answered at once, as the stream's driver
    does: credentials from `lookup`, passwords checked by `verify`; records the checks."""

    def __init__(self, sasl: SaslNegotiation, lookup: Lookup) -> None:
        self.sasl = sasl
        self.lookup = lookup
        self.verify: Callable[[str, ScramCredentials], bool] = verify_password
        self.checked: list[ScramCredentials] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.sasl, name)

    def start(self, mechanism: str, initial: bytes | None) -> SaslStep:
        return self._answer(self.sasl.start(mechanism, initial))

    def respond(self, data: bytes) -> SaslStep:
        return self._answer(self.sasl.respond(data))

    def _answer(self, step: SaslStep) -> SaslStep:
        while isinstance(step, NeedCredentials | NeedPasswordCheck):
            assert self.sasl.waiting
            if isinstance(step, NeedCredentials):
                step = self.sasl.credentials(self.lookup(step.local, step.hash_name))
            else:
                self.checked.append(step.credentials)
                step = self.sasl.password_checked(self.verify(step.password, step.credentials))
        assert not self.sasl.waiting
        return step


def negotiation(
    *,
    secure: bool = True,
    channel_bindings: dict[str, bytes] | None = None,
    allow_plain: bool = True,
    iterations: int = 4096,
) -> Driven:
    sasl = SaslNegotiation(
        DOMAIN,
        secure=secure,
        channel_bindings=BINDINGS if channel_bindings is None else channel_bindings,
        allow_plain=allow_plain,
        iterations=iterations,
    )
    return Driven(sasl, Lookup({USER: CREDENTIALS}))


def scram_exchange(
    sasl: Driven,
    mechanism: str,
    username: str = USER,
    password: str = PASSWORD,
    channel_binding: tuple[str, bytes] | None = None,
) -> tuple[Challenge | Success | Failure, scramp.ScramClient]:
    """Run a whole SCRAM exchange with scramp's client; return the final step."""
    client = scramp.ScramClient([mechanism], username, password, channel_binding=channel_binding)
    step = sasl.start(mechanism, client.get_client_first().encode())
    if not isinstance(step, Challenge):
        return step, client
    client.set_server_first(step.data.decode())
    return sasl.respond(client.get_client_final().encode()), client


def parse_server_first(data: bytes) -> dict[str, str]:
    return dict(part.split("=", 1) for part in data.decode().split(","))


class AuthzidScramClient:
    """A SCRAM client that can send an authzid (scramp's client cannot), RFC 5802 §7."""

    def __init__(self, hash_name: str, username: str, password: str, authzid: str | None) -> None:
        self.digest = {"SHA-1": "sha1", "SHA-256": "sha256"}[hash_name]
        self.password = password
        self.gs2 = f"n,a={authzid}," if authzid is not None else "n,,"
        self.bare = f"n={username},r=clientnonce0123456789"
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = parse_server_first(server_first)
        salted = hashlib.pbkdf2_hmac(
            self.digest,
            self.password.encode(),
            base64.b64decode(attrs["s"]),
            int(attrs["i"]),
        )
        client_key = hmac.digest(salted, b"Client Key", self.digest)
        stored_key = hashlib.new(self.digest, client_key).digest()
        without_proof = f"c={base64.b64encode(self.gs2.encode()).decode()},r={attrs['r']}"
        auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.digest)
        self.server_signature = hmac.digest(server_key, auth_message, self.digest)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


# ---- mechanisms offered -------------------------------------------------------------
def test_offered_mechanisms_with_tls_and_channel_binding() -> None:
    assert offered_mechanisms(True, BINDINGS, True) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "PLAIN",
    ]
    assert list(MECHANISM_ORDER) == offered_mechanisms(True, BINDINGS, True)


def test_offered_mechanisms_with_tls_without_channel_binding() -> None:
    assert offered_mechanisms(True, {}, True) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


def test_offered_mechanisms_without_plain() -> None:
    assert offered_mechanisms(True, BINDINGS, False) == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
    ]


def test_offered_mechanisms_without_tls() -> None:
    # Neither PLAIN nor -PLUS on a plain-text stream, whatever else is configured.
    assert offered_mechanisms(False, {}, True) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    assert offered_mechanisms(False, BINDINGS, True) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def test_negotiation_lists_its_mechanisms() -> None:
    assert negotiation().mechanisms == list(MECHANISM_ORDER)
    assert negotiation(secure=False, channel_bindings={}).mechanisms == [
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
    ]


# ---- SCRAM --------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_success(mechanism: str) -> None:
    sasl = negotiation()
    step, client = scram_exchange(sasl, mechanism)
    assert isinstance(step, Success), step
    assert step.local == USER
    assert step.data is not None and step.data.startswith(b"v=")
    client.set_server_final(step.data.decode())  # raises if the server signature is wrong
    assert sasl.mechanism == mechanism


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_success_without_tls(mechanism: str) -> None:
    step, client = scram_exchange(negotiation(secure=False, channel_bindings={}), mechanism)
    assert isinstance(step, Success), step
    assert step.data is not None
    client.set_server_final(step.data.decode())


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_uses_the_stored_salt_and_iterations(mechanism: str) -> None:
    client = scramp.ScramClient([mechanism], USER, PASSWORD)
    step = negotiation().start(mechanism, client.get_client_first().encode())
    assert isinstance(step, Challenge)
    attrs = parse_server_first(step.data)
    creds = CREDENTIALS[mechanism.removeprefix("SCRAM-")]
    assert base64.b64decode(attrs["s"]) == creds.salt
    assert int(attrs["i"]) == creds.iterations


def test_scram_username_is_prepared() -> None:
    step, _ = scram_exchange(negotiation(), "SCRAM-SHA-256", username="Juliet")
    assert isinstance(step, Success), step
    assert step.local == USER


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_password(mechanism: str) -> None:
    step, _ = scram_exchange(negotiation(), mechanism, password="not the password")
    assert isinstance(step, Failure)
    assert step.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_unknown_user_fails_only_at_the_final_step(mechanism: str) -> None:
    sasl = negotiation()
    client = scramp.ScramClient([mechanism], "nobody", PASSWORD)
    first = sasl.start(mechanism, client.get_client_first().encode())
    # Like a real account: a server-first-message with a salt and an iteration count.
    assert isinstance(first, Challenge)
    attrs = parse_server_first(first.data)
    assert set(attrs) == {"r", "s", "i"}
    assert int(attrs["i"]) == 4096
    client.set_server_first(first.data.decode())
    final = sasl.respond(client.get_client_final().encode())
    assert isinstance(final, Failure)
    assert final.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_unknown_user_salt_looks_like_a_real_one(mechanism: str) -> None:
    """Same salt length as a real account's, or the length tells accounts apart."""
    client = scramp.ScramClient([mechanism], "nobody", PASSWORD)
    step = negotiation().start(mechanism, client.get_client_first().encode())
    assert isinstance(step, Challenge)
    decoy_salt = base64.b64decode(parse_server_first(step.data)["s"])
    real_salt = CREDENTIALS[mechanism.removeprefix("SCRAM-")].salt
    assert len(decoy_salt) == len(real_salt)


def test_scram_unknown_user_gets_a_stable_salt() -> None:
    """A salt that changed on every attempt would tell unknown accounts apart."""
    salts = []
    for _ in range(2):
        client = scramp.ScramClient(["SCRAM-SHA-256"], "nobody", PASSWORD)
        step = negotiation().start("SCRAM-SHA-256", client.get_client_first().encode())
        assert isinstance(step, Challenge)
        salts.append(parse_server_first(step.data)["s"])
    assert salts[0] == salts[1]


def test_scram_invalid_username_is_treated_like_an_unknown_user() -> None:
    sasl = negotiation()
    client = scramp.ScramClient(["SCRAM-SHA-256"], "ju liet", PASSWORD)
    first = sasl.start("SCRAM-SHA-256", client.get_client_first().encode())
    assert isinstance(first, Challenge)
    client.set_server_first(first.data.decode())
    final = sasl.respond(client.get_client_final().encode())
    assert isinstance(final, Failure) and final.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_without_initial_response(mechanism: str) -> None:
    """RFC 6120 §6.4.2: no initial response -> empty challenge, then client-first."""
    sasl = negotiation()
    step = sasl.start(mechanism, None)
    assert step == Challenge(b"")
    client = scramp.ScramClient([mechanism], USER, PASSWORD)
    step = sasl.respond(client.get_client_first().encode())
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = sasl.respond(client.get_client_final().encode())
    assert isinstance(step, Success), step
    assert step.data is not None
    client.set_server_final(step.data.decode())


@pytest.mark.parametrize(
    "data",
    [b"garbage", b"x,,n=juliet,r=abc", b"n,,r=abc", b"n,b=x,n=juliet,r=abc", b"\xff\xfe"],
)
def test_scram_malformed_client_first(data: bytes) -> None:
    step = negotiation().start("SCRAM-SHA-256", data)
    assert isinstance(step, Failure)
    assert step.condition == "malformed-request"


def test_scram_garbage_client_final() -> None:
    sasl = negotiation()
    client = scramp.ScramClient(["SCRAM-SHA-256"], USER, PASSWORD)
    assert isinstance(sasl.start("SCRAM-SHA-256", client.get_client_first().encode()), Challenge)
    step = sasl.respond(b"c=biws,r=wrong,p=AAAA")
    assert isinstance(step, Failure) and step.condition == "not-authorized"


def test_respond_without_start() -> None:
    step = negotiation().respond(b"anything")
    assert isinstance(step, Failure)


# ---- channel binding ----------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_scram_plus_with_tls_server_end_point(mechanism: str) -> None:
    step, client = scram_exchange(negotiation(), mechanism, channel_binding=(CB_NAME, CB_DATA))
    assert isinstance(step, Success), step
    assert step.local == USER
    assert step.data is not None
    client.set_server_final(step.data.decode())


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"])
def test_scram_plus_with_wrong_binding_value(mechanism: str) -> None:
    step, _ = scram_exchange(
        negotiation(), mechanism, channel_binding=(CB_NAME, b"\x00" * len(CB_DATA))
    )
    assert isinstance(step, Failure)
    assert step.condition == "not-authorized"


def test_scram_plus_with_unsupported_binding_type() -> None:
    step, _ = scram_exchange(
        negotiation(), "SCRAM-SHA-256-PLUS", channel_binding=("tls-unique", b"x" * 12)
    )
    assert isinstance(step, Failure)


def test_scram_plus_without_using_binding_is_refused() -> None:
    # A -PLUS mechanism with gs2 flag 'n' (RFC 5802 §6: the client must bind).
    step = negotiation().start("SCRAM-SHA-256-PLUS", b"n,,n=juliet,r=abcdefabcdef")
    assert isinstance(step, Failure)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_client_y_flag_when_server_offers_binding_is_a_downgrade(mechanism: str) -> None:
    """RFC 5802 §6: 'y' says "I think the server cannot bind"; ours can, so someone
    removed -PLUS from the list."""
    step, _ = scram_exchange(negotiation(), mechanism, channel_binding=(CB_NAME, CB_DATA))
    assert isinstance(step, Failure)
    assert step.condition == "not-authorized"


def test_client_y_flag_when_server_offers_no_binding_is_fine() -> None:
    step, client = scram_exchange(
        negotiation(channel_bindings={}), "SCRAM-SHA-256", channel_binding=(CB_NAME, CB_DATA)
    )
    assert isinstance(step, Success), step
    assert step.data is not None
    client.set_server_final(step.data.decode())


def test_client_n_flag_on_a_binding_capable_stream_is_fine() -> None:
    # 'n': the client does not support channel binding at all; no downgrade.
    step, _ = scram_exchange(negotiation(), "SCRAM-SHA-256")
    assert isinstance(step, Success), step


# ---- mechanisms not offered ---------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
def test_plus_without_tls_is_encryption_required(mechanism: str) -> None:
    """RFC 6120 §6.5.4: the mechanism cannot be used unless the stream is protected."""
    step = negotiation(secure=False, channel_bindings={}).start(mechanism, b"")
    assert isinstance(step, Failure)
    assert step.condition == "encryption-required"


def test_plus_on_tls_without_channel_binding_is_invalid_mechanism() -> None:
    step = negotiation(channel_bindings={}).start("SCRAM-SHA-256-PLUS", b"")
    assert isinstance(step, Failure)
    assert step.condition == "invalid-mechanism"


def test_plain_without_tls_is_encryption_required() -> None:
    sasl = negotiation(secure=False, channel_bindings={})
    step = sasl.start("PLAIN", f"\0{USER}\0{PASSWORD}".encode())
    assert isinstance(step, Failure)
    assert step.condition == "encryption-required"


def test_plain_disabled_is_invalid_mechanism() -> None:
    step = negotiation(allow_plain=False).start("PLAIN", f"\0{USER}\0{PASSWORD}".encode())
    assert isinstance(step, Failure)
    assert step.condition == "invalid-mechanism"


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "X-OAUTH2", "EXTERNAL", "", "scram-sha-1"])
def test_unknown_mechanism(mechanism: str) -> None:
    step = negotiation().start(mechanism, b"")
    assert isinstance(step, Failure)
    assert step.condition == "invalid-mechanism"


# ---- PLAIN --------------------------------------------------------------------------
def test_plain_success() -> None:
    step = negotiation().start("PLAIN", f"\0{USER}\0{PASSWORD}".encode())
    assert step == Success(USER)


def test_plain_username_is_prepared() -> None:
    step = negotiation().start("PLAIN", f"\0JULIET\0{PASSWORD}".encode())
    assert isinstance(step, Success) and step.local == USER


def test_plain_wrong_password() -> None:
    step = negotiation().start("PLAIN", f"\0{USER}\0wrong".encode())
    assert isinstance(step, Failure) and step.condition == "not-authorized"


def test_plain_unknown_user() -> None:
    step = negotiation().start("PLAIN", f"\0nobody\0{PASSWORD}".encode())
    assert isinstance(step, Failure) and step.condition == "not-authorized"


def test_plain_invalid_username() -> None:
    step = negotiation().start("PLAIN", f"\0ju liet\0{PASSWORD}".encode())
    assert isinstance(step, Failure) and step.condition == "not-authorized"


@pytest.mark.parametrize(
    "data",
    [b"", b"juliet", f"{USER}\0{PASSWORD}".encode(), b"a\0b\0c\0d", b"\xff\0juliet\0pw"],
)
def test_plain_malformed(data: bytes) -> None:
    step = negotiation().start("PLAIN", data)
    assert isinstance(step, Failure)
    assert step.condition == "malformed-request"


def test_plain_without_initial_response() -> None:
    sasl = negotiation()
    assert sasl.start("PLAIN", None) == Challenge(b"")
    step = sasl.respond(f"\0{USER}\0{PASSWORD}".encode())
    assert step == Success(USER)


# ---- authzid (RFC 6120 §6.3.8) ------------------------------------------------------
@pytest.mark.parametrize("authzid", [f"{USER}@{DOMAIN}", "Juliet@EXAMPLE.org"])
def test_plain_authzid_equal_to_bare_jid(authzid: str) -> None:
    step = negotiation().start("PLAIN", f"{authzid}\0{USER}\0{PASSWORD}".encode())
    assert step == Success(USER)


@pytest.mark.parametrize(
    "authzid", ["romeo@example.org", f"{USER}@other.example", f"{USER}@{DOMAIN}/res", "@@"]
)
def test_plain_other_authzid_is_invalid(authzid: str) -> None:
    step = negotiation().start("PLAIN", f"{authzid}\0{USER}\0{PASSWORD}".encode())
    assert isinstance(step, Failure)
    assert step.condition == "invalid-authzid"


@pytest.mark.parametrize("hash_name", ["SHA-1", "SHA-256"])
def test_scram_authzid_equal_to_bare_jid_is_refused(hash_name: str) -> None:
    """Known limitation: scramp rejects any GS2 authzid and the header is covered by the
    client proof, so SCRAM with an authzid (even the user's own bare JID, which RFC 6120
    §6.4.6 allows) gets invalid-authzid. PLAIN accepts it. Mainstream clients send none."""
    client = AuthzidScramClient(hash_name, USER, PASSWORD, f"{USER}@{DOMAIN}")
    step = negotiation().start(f"SCRAM-{hash_name}", client.first())
    assert isinstance(step, Failure)
    assert step.condition == "invalid-authzid"


def test_scram_other_authzid_is_invalid() -> None:
    client = AuthzidScramClient("SHA-256", USER, PASSWORD, "romeo@example.org")
    step = negotiation().start("SCRAM-SHA-256", client.first())
    assert isinstance(step, Failure)
    assert step.condition == "invalid-authzid"


@pytest.mark.parametrize("hash_name", ["SHA-1", "SHA-256"])
def test_authzid_client_helper_is_a_correct_scram_client(hash_name: str) -> None:
    # Without an authzid the hand-written client must pass, so a failure above is the
    # server's, not the helper's.
    client = AuthzidScramClient(hash_name, USER, PASSWORD, None)
    sasl = negotiation()
    first = sasl.start(f"SCRAM-{hash_name}", client.first())
    assert isinstance(first, Challenge), first
    final = sasl.respond(client.final(first.data))
    assert isinstance(final, Success), final
    assert final.data == b"v=" + base64.b64encode(client.server_signature)


# ---- no account probing by timing -----------------------------------------------------
def test_plain_unknown_user_runs_pbkdf2_like_a_real_one() -> None:
    """An unknown user costs the same lookup and the same PBKDF2 (against a decoy record
    with the configured iteration count) as a wrong password for a real one."""
    sasl = negotiation(iterations=4096)
    assert sasl.start("PLAIN", f"\0nobody\0{PASSWORD}".encode()) == Failure("not-authorized")
    assert sasl.start("PLAIN", f"\0{USER}\0wrong".encode()) == Failure("not-authorized")
    assert sasl.lookup.calls == [("nobody", "SHA-256"), (USER, "SHA-256")]
    decoy, real = sasl.checked
    assert (decoy.hash_name, decoy.iterations) == ("SHA-256", 4096)
    assert len(decoy.salt) == len(real.salt)
    # The decoy is stable per name (its salt would show in SCRAM too) and never matches.
    assert sasl.decoy_credentials("nobody").salt == decoy.salt
    assert sasl.attempted_user == USER


def test_plain_unknown_user_fails_even_if_the_decoy_matched() -> None:
    """Only a real account's record can let PLAIN through."""
    sasl = negotiation()
    sasl.verify = lambda password, creds: True
    assert sasl.start("PLAIN", f"\0nobody\0{PASSWORD}".encode()) == Failure("not-authorized")


def test_requests_are_answered_in_order() -> None:
    """The sans-IO contract: a request must be answered before more input, and only the
    request asked may be answered."""
    sasl = SaslNegotiation(DOMAIN, secure=True, channel_bindings={})
    with pytest.raises(RuntimeError):
        sasl.credentials(None)
    step = sasl.start("PLAIN", f"\0{USER}\0{PASSWORD}".encode())
    assert step == NeedCredentials(USER, "SHA-256")
    with pytest.raises(RuntimeError):
        sasl.respond(b"more")
    with pytest.raises(RuntimeError):
        sasl.password_checked(True)
    step = sasl.credentials(CREDENTIALS["SHA-256"])
    assert isinstance(step, NeedPasswordCheck)
    assert PASSWORD not in repr(step)  # never in a log line
    assert sasl.password_checked(verify_password(step.password, step.credentials)) == Success(USER)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_asks_for_the_family_hash(mechanism: str) -> None:
    sasl = SaslNegotiation(DOMAIN, secure=True, channel_bindings={})
    client = scramp.ScramClient([mechanism], "Juliet", PASSWORD)
    step = sasl.start(mechanism, client.get_client_first().encode())
    assert step == NeedCredentials(USER, mechanism.removeprefix("SCRAM-"))


def test_attempted_user_is_known_for_every_mechanism() -> None:
    sasl = negotiation()
    sasl.start("PLAIN", b"\0JULIET\0wrong")
    assert sasl.attempted_user == USER
    sasl = negotiation()
    scram_exchange(sasl, "SCRAM-SHA-1", username="nobody", password="x")
    assert sasl.attempted_user == "nobody"
    sasl = negotiation()
    sasl.start("PLAIN", b"\0ju liet\0x")
    assert sasl.attempted_user == "ju liet"  # invalid: as sent (escaped when logged)
