"""JIDs: RFC 7622 address format and PRECIS preparation."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dovecote.jid import (
    JID,
    InvalidJID,
    prepare_domain,
    prepare_local,
    prepare_resource,
)


def parts(text: str) -> tuple[str | None, str, str | None]:
    jid = JID.parse(text)
    return jid.local, jid.domain, jid.resource


# ---- RFC 7622 §3.5 examples and preparation rules -----------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # RFC 7622 §3.5, valid examples
        ("juliet@example.com", ("juliet", "example.com", None)),
        ("juliet@example.com/foo", ("juliet", "example.com", "foo")),
        ("juliet@example.com/foo bar", ("juliet", "example.com", "foo bar")),
        ("juliet@example.com/foo@bar", ("juliet", "example.com", "foo@bar")),
        ("foo\\20bar@example.com", ("foo\\20bar", "example.com", None)),
        ("fussball@example.com", ("fussball", "example.com", None)),
        ("fußball@example.com", ("fußball", "example.com", None)),
        ("π@example.com", ("π", "example.com", None)),
        ("\u03a3@example.com/foo", ("\u03c3", "example.com", "foo")),  # capital sigma
        ("\u03c3@example.com/foo", ("\u03c3", "example.com", "foo")),  # small sigma
        ("\u03c2@example.com/foo", ("\u03c2", "example.com", "foo")),  # final sigma
        ("king@example.com/♚", ("king", "example.com", "♚")),
        ("example.com", (None, "example.com", None)),
        ("example.com/foobar", (None, "example.com", "foobar")),
        ("a.example.com/b@example.net", (None, "a.example.com", "b@example.net")),
    ],
)
def test_rfc7622_valid_examples(text: str, expected: tuple[str | None, str, str | None]) -> None:
    assert parts(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # RFC 7622 §3.5, invalid examples
        '"juliet"@example.com',
        "foo bar@example.com",
        "@example.com/",
        "henry\u2163@example.com",  # ROMAN NUMERAL FOUR: compatibility character
        "♚@example.com",
        "juliet@",
        "/foobar",
    ],
)
def test_rfc7622_invalid_examples(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_localpart_is_case_folded() -> None:
    assert JID.parse("Juliet@example.com").local == "juliet"
    assert JID.parse("JULIET@example.com") == JID.parse("juliet@example.com")


def test_localpart_is_nfc_normalized() -> None:
    assert JID.parse("e\u0301@example.com") == JID.parse("\u00e9@example.com")


def test_domain_is_lowercased() -> None:
    assert JID.parse("juliet@Example.COM").domain == "example.com"


def test_idna_u_labels() -> None:
    assert JID.parse("juliet@Bücher.EXAMPLE").domain == "bücher.example"
    # An A-label is converted to its U-label (RFC 7622 §3.2.2).
    assert JID.parse("juliet@xn--bcher-kva.example").domain == "bücher.example"
    assert JID.parse("juliet@xn--bcher-kva.example") == JID.parse("juliet@bücher.example")


def test_resource_case_is_kept() -> None:
    jid = JID.parse("Juliet@Example.COM/Balcony")
    assert str(jid) == "juliet@example.com/Balcony"
    assert JID.parse("a@b/Res") != JID.parse("a@b/res")


def test_resource_is_nfc_normalized() -> None:
    assert JID.parse("a@b/e\u0301") == JID.parse("a@b/\u00e9")


def test_resource_may_contain_slash_and_at() -> None:
    assert parts("juliet@example.com/a/b@c") == ("juliet", "example.com", "a/b@c")


def test_trailing_dot_removed_from_domain() -> None:
    assert JID.parse("juliet@example.com.") == JID.parse("juliet@example.com")
    assert JID.parse("example.com./r").domain == "example.com"


def test_ipv4_literal() -> None:
    assert parts("user@192.168.0.1/r") == ("user", "192.168.0.1", "r")


def test_ipv6_literal() -> None:
    jid = JID.parse("user@[2001:DB8::1]/r")
    assert jid.domain == "[2001:db8::1]"
    assert JID.parse("user@[2001:0db8:0:0:0:0:0:1]") == jid.bare


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@",
        "@example.com",
        "juliet@",
        "juliet@/r",
        "juliet@example.com/",
        "/",
        "/r",
        ".",
        "juliet@.",
        "a@b@c",
        "@@example.com",
        "juliet@@example.com",
        "a@example..com",
        "a@.example.com",
        "juliet@example.com..",
        "a@[1.2.3.4]",
        "a@[::1",
        "a@[]",
        "a@[not-v6]",
    ],
)
def test_invalid_structure(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


@pytest.mark.parametrize("char", ['"', "&", "'", "/", ":", "<", ">", "@", " "])
def test_forbidden_localpart_characters(char: str) -> None:
    with pytest.raises(InvalidJID):
        prepare_local(f"ju{char}liet")
    if char not in "/@":  # these split the string differently in JID.parse
        with pytest.raises(InvalidJID):
            JID.parse(f"ju{char}liet@example.com")


@pytest.mark.parametrize("text", ["a\x00b@c", "a\tb@c", "a\u200bb@c", "\u2163@example.com"])
def test_disallowed_code_points_in_localpart(text: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(text)


@pytest.mark.parametrize("resource", ["\x07", "a\x00b"])
def test_disallowed_code_points_in_resource(resource: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(f"a@example.com/{resource}")


def test_localpart_length_limit() -> None:
    assert JID.parse("x" * 1023 + "@example.com").local == "x" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("x" * 1024 + "@example.com")
    # Bytes, not characters: 512 two-byte characters are 1024 bytes.
    with pytest.raises(InvalidJID):
        JID.parse("é" * 512 + "@example.com")


def test_resource_length_limit() -> None:
    assert JID.parse("a@example.com/" + "r" * 1023).resource == "r" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("a@example.com/" + "r" * 1024)
    with pytest.raises(InvalidJID):
        JID.parse("a@example.com/" + "é" * 512)


def test_domain_length_limit() -> None:
    with pytest.raises(InvalidJID):
        JID.parse("a@" + "a." * 600 + "example")
    with pytest.raises(InvalidJID):
        JID.parse("a@" + "ü" * 600 + ".example")


@pytest.mark.parametrize(
    "domain",
    [
        "ex ample.com",
        "ex_ample.com",
        "-example.com",
        "example-.com",
        "x" * 64 + ".com",
        "xn--zz.com",
        "exa\u200dmple.com",
        "exa\x00mple.com",
    ],
)
def test_bad_domains(domain: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(f"a@{domain}")


def test_prepare_parts_separately() -> None:
    jid = JID.prepare("Juliet", "Example.COM", "Balcony")
    assert jid == JID.parse("juliet@example.com/Balcony")
    assert JID.prepare(None, "example.com") == JID.parse("example.com")
    with pytest.raises(InvalidJID):
        JID.prepare("", "example.com")
    with pytest.raises(InvalidJID):
        JID.prepare("a", "example.com", "")
    assert prepare_domain("Example.COM.") == "example.com"
    assert prepare_resource("Balcony") == "Balcony"


def test_invalid_jid_is_a_value_error() -> None:
    assert issubclass(InvalidJID, ValueError)


# ---- value type ---------------------------------------------------------------------
def test_bare_and_full() -> None:
    full = JID.parse("juliet@example.com/balcony")
    assert full.is_full and not full.is_bare and not full.is_host
    assert full.bare == JID.parse("juliet@example.com")
    assert full.bare.is_bare and full.bare.resource is None
    assert str(full.bare) == "juliet@example.com"
    assert full.bare is full.bare  # cached
    bare = JID.parse("juliet@example.com")
    assert bare.bare is bare
    host = JID.parse("example.com")
    assert host.is_host and host.is_bare
    assert not JID.parse("example.com/r").is_host


def test_with_resource() -> None:
    bare = JID.parse("juliet@example.com")
    full = bare.with_resource("orchard")
    assert str(full) == "juliet@example.com/orchard"
    assert full.with_resource(None) == bare


def test_str_and_repr() -> None:
    jid = JID.parse("Juliet@Example.com/Balcony")
    assert str(jid) == "juliet@example.com/Balcony"
    assert repr(jid) == "JID('juliet@example.com/Balcony')"


def test_equality_and_hash() -> None:
    a = JID.parse("Juliet@EXAMPLE.com/r")
    b = JID.parse("juliet@example.com/r")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, JID.parse("juliet@example.com")}) == 2
    assert a != "juliet@example.com/r"
    assert a != JID.parse("juliet@example.com/R")
    assert {a: 1}[b] == 1


def test_immutable() -> None:
    jid = JID.parse("juliet@example.com/r")
    with pytest.raises(AttributeError):
        jid.local = "romeo"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        jid.resource = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        jid.anything = 1  # type: ignore[attr-defined]
    assert str(jid) == "juliet@example.com/r"


def test_pickle_and_copy() -> None:
    for text in ("juliet@example.com/balcony", "juliet@example.com", "example.com"):
        jid = JID.parse(text)
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            clone = pickle.loads(pickle.dumps(jid, protocol))
            assert clone == jid and hash(clone) == hash(jid)
            assert str(clone) == text
        assert copy.copy(jid) == jid
        assert copy.deepcopy(jid) == jid
    full = JID.parse("juliet@example.com/balcony")
    assert pickle.loads(pickle.dumps(full)).bare == full.bare


def test_parse_is_cached_but_safe() -> None:
    # The same string gives equal results every time, also after an error for it.
    assert JID.parse("a@b.example") is JID.parse("a@b.example")
    for _ in range(2):
        with pytest.raises(InvalidJID):
            JID.parse("@b.example")


# ---- properties ---------------------------------------------------------------------
LOCAL_ALPHABET = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+!$%*=?^{|}~\\")
    + list("äöüßéèçñøåπσςΣжЖ中文あ")
)
DOMAIN_ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789-.äöüéñ"))
RESOURCE_ALPHABET = st.one_of(
    st.sampled_from(list("abcXYZ019 .-_@/:'\"&<>!#()[]{}")),
    st.characters(
        min_codepoint=0xA0,
        max_codepoint=0x2FFF,
        blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Cn"),
    ),
)
LOCALS = st.none() | st.text(LOCAL_ALPHABET, min_size=1, max_size=12)
LABELS = st.text(DOMAIN_ALPHABET, min_size=1, max_size=10)
DOMAINS = st.one_of(
    st.text(DOMAIN_ALPHABET, min_size=1, max_size=20),
    st.builds(
        lambda labels, dots: ".".join(labels) + dots,
        st.lists(LABELS, min_size=1, max_size=4),
        st.sampled_from(["", "", ".", ".."]),
    ),
)
RESOURCES = st.none() | st.text(RESOURCE_ALPHABET, min_size=1, max_size=12)


def _compose(local: str | None, domain: str, resource: str | None) -> str:
    text = domain
    if local is not None:
        text = f"{local}@{text}"
    if resource is not None:
        text = f"{text}/{resource}"
    return text


def _parse_or_reject(text: str) -> JID:
    try:
        return JID.parse(text)
    except InvalidJID:
        assume(False)
        raise


@settings(max_examples=500, deadline=None)
@given(LOCALS, DOMAINS, RESOURCES)
def test_round_trip_through_string(local: str | None, domain: str, resource: str | None) -> None:
    jid = _parse_or_reject(_compose(local, domain, resource))
    again = JID.parse(str(jid))
    assert again == jid
    assert (again.local, again.domain, again.resource) == (jid.local, jid.domain, jid.resource)


@settings(max_examples=500, deadline=None)
@given(LOCALS, DOMAINS, RESOURCES)
def test_preparation_is_idempotent(local: str | None, domain: str, resource: str | None) -> None:
    jid = _parse_or_reject(_compose(local, domain, resource))
    if jid.local is not None:
        assert prepare_local(jid.local) == jid.local
    assert prepare_domain(jid.domain) == jid.domain
    if jid.resource is not None:
        assert prepare_resource(jid.resource) == jid.resource
    assert JID.prepare(jid.local, jid.domain, jid.resource) == jid


@settings(max_examples=300, deadline=None)
@given(LOCALS, DOMAINS, RESOURCES)
def test_bare_drops_only_the_resource(local: str | None, domain: str, resource: str | None) -> None:
    jid = _parse_or_reject(_compose(local, domain, resource))
    assert jid.bare.local == jid.local
    assert jid.bare.domain == jid.domain
    assert jid.bare.resource is None
    assert pickle.loads(pickle.dumps(jid)) == jid
