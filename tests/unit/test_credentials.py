"""SCRAM credential derivation and PLAIN verification (RFC 5802, RFC 7677, RFC 4616)."""

from __future__ import annotations

import pickle
import unicodedata

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from dovecote.storage.credentials import (
    HASHES,
    MIN_ITERATIONS,
    ScramCredentials,
    derive_credentials,
    verify_password,
)


def test_derive_gives_one_record_per_hash() -> None:
    creds = derive_credentials("correct horse")
    assert set(creds) == set(HASHES) == {"SHA-1", "SHA-256"}
    for name, record in creds.items():
        assert record.hash_name == name
        assert record.iterations == 4096
        assert len(record.salt) >= 12
        digest_size = 20 if name == "SHA-1" else 32
        assert len(record.stored_key) == len(record.server_key) == digest_size


def test_salts_are_random() -> None:
    first = derive_credentials("same")
    second = derive_credentials("same")
    for name in HASHES:
        assert first[name].salt != second[name].salt
        assert first[name].stored_key != second[name].stored_key


def test_round_trip_and_wrong_password() -> None:
    creds = derive_credentials("s3cret!", iterations=5000)
    for record in creds.values():
        assert record.iterations == 5000
        assert verify_password("s3cret!", record)
        assert not verify_password("s3cret", record)
        assert not verify_password("S3cret!", record)
        assert not verify_password("", record)


def test_saslprep_applies_on_both_sides() -> None:
    # RFC 4013: U+00A0 NO-BREAK SPACE maps to SPACE; U+00AD SOFT HYPHEN maps to nothing.
    creds = derive_credentials("pass\u00a0word\u00ad")
    assert verify_password("pass word", creds["SHA-256"])


def test_iterations_below_4096_refused() -> None:
    with pytest.raises(ValueError, match="4096"):
        derive_credentials("pw", iterations=MIN_ITERATIONS - 1)
    with pytest.raises(ValueError):
        derive_credentials("pw", iterations=1)


def test_bad_passwords_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        derive_credentials("")
    with pytest.raises(ValueError, match="empty"):
        derive_credentials("\u00ad")  # maps to nothing
    with pytest.raises(ValueError, match="not allowed"):
        derive_credentials("bad\u0007control")  # RFC 4013 §2.3: control characters


def test_verify_never_matches_a_prohibited_password() -> None:
    creds = derive_credentials("ok")
    assert not verify_password("\u0007", creds["SHA-1"])


def test_unknown_hash_does_not_verify() -> None:
    record = derive_credentials("pw")["SHA-1"]
    other = ScramCredentials("MD5", record.salt, 4096, record.stored_key, record.server_key)
    assert not verify_password("pw", other)


def test_records_pickle() -> None:
    # The CLI's bulk import derives keys in worker processes.
    creds = derive_credentials("pw")
    assert pickle.loads(pickle.dumps(creds)) == creds


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("password", ["pencil", "pässwörd ünïcode", "pass\u00a0word"])
def test_scramp_exchange_with_stored_credentials(hash_name: str, password: str) -> None:
    """A real SCRAM exchange against what we store succeeds (RFC 5802 §5)."""
    record = derive_credentials(password)[hash_name]
    assert record.mechanism == f"SCRAM-{hash_name}"
    mechanism = scramp.ScramMechanism(record.mechanism)

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int]:
        assert username == "user"
        return record.auth_info()

    server = mechanism.make_server(auth_fn)
    client = scramp.ScramClient([record.mechanism], "user", password)
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # raises if the server's proof fails


@pytest.mark.parametrize("hash_name", HASHES)
def test_scramp_exchange_with_wrong_password_fails(hash_name: str) -> None:
    record = derive_credentials("right")[hash_name]
    server = scramp.ScramMechanism(record.mechanism).make_server(lambda _: record.auth_info())
    client = scramp.ScramClient([record.mechanism], "user", "wrong")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(client.get_client_final())


def test_credentials_from_scramp_verify() -> None:
    """Keys scramp makes for a known salt are the ones we check PLAIN passwords against."""
    salt = b"0123456789abcdef"
    for hash_name in HASHES:
        mechanism = scramp.ScramMechanism(f"SCRAM-{hash_name}")
        salt_out, stored, server_key, i = mechanism.make_auth_info("pw", 4096, salt)
        record = ScramCredentials(hash_name, salt_out, i, stored, server_key)
        assert verify_password("pw", record)
        assert not verify_password("pW", record)


@settings(max_examples=25, deadline=None)
@given(
    st.text(
        # Code points Unicode 3.2 assigned (SASLprep refuses unassigned ones, RFC 4013 §2.5).
        # Below U+0590: no right-to-left text, whose mixing RFC 4013 §6 restricts.
        alphabet=st.characters(max_codepoint=0x58F, categories=["L", "N", "P", "S", "Zs"]).filter(
            lambda char: unicodedata.ucd_3_2_0.category(char) != "Cn"
        ),
        min_size=1,
    ).filter(lambda text: text.strip())
)
def test_round_trip_property(password: str) -> None:
    creds = derive_credentials(password)
    assert all(verify_password(password, record) for record in creds.values())
