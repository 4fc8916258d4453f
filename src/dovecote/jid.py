"""Jabber IDs (RFC 7622): an immutable, hashable value type with PRECIS preparation.

localpart: UsernameCaseMapped profile (RFC 7622 §3.3) plus the extra exclusions of §3.3.1;
domainpart: IDNA2008 U-labels, lower case, trailing dot removed (§3.2);
resourcepart: OpaqueString profile, case kept (§3.4).
Parsing is cached: the same strings come back again and again on a busy server.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import idna
import precis_i18n

_LOCAL_PROFILE = precis_i18n.get_profile("UsernameCaseMapped")
_RESOURCE_PROFILE = precis_i18n.get_profile("OpaqueString")
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@ ")
_MAX_PART_BYTES = 1023


class InvalidJID(ValueError):
    """The string is not a valid JID (answered with the jid-malformed error)."""


class JID:
    __slots__ = ("_bare", "_str", "domain", "local", "resource")

    local: str | None
    domain: str
    resource: str | None

    def __init__(self, local: str | None, domain: str, resource: str | None = None) -> None:
        """Build from already prepared parts; use `JID.parse` for untrusted input."""
        object.__setattr__(self, "local", local or None)
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "resource", resource or None)
        text = domain
        if local:
            text = f"{local}@{text}"
        if resource:
            text = f"{text}/{resource}"
        object.__setattr__(self, "_str", text)
        object.__setattr__(self, "_bare", None)

    @staticmethod
    def parse(text: str) -> JID:
        """Parse and prepare a JID string (RFC 7622 §3.1); raises InvalidJID."""
        return _parse_cached(text)

    @staticmethod
    def prepare(local: str | None, domain: str, resource: str | None = None) -> JID:
        """Prepare each part separately (for bind requests, CLI arguments, ...)."""
        return JID(
            prepare_local(local) if local is not None else None,
            prepare_domain(domain),
            prepare_resource(resource) if resource is not None else None,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("JID is immutable")

    @property
    def bare(self) -> JID:
        if self.resource is None:
            return self
        bare = self._bare
        if bare is None:
            bare = JID(self.local, self.domain)
            object.__setattr__(self, "_bare", bare)
        return bare

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def is_full(self) -> bool:
        return self.resource is not None

    @property
    def is_host(self) -> bool:
        """A domain-only JID (a server or a service)."""
        return self.local is None and self.resource is None

    def with_resource(self, resource: str | None) -> JID:
        return JID(self.local, self.domain, resource)

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"JID({self._str!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JID) and other._str == self._str

    def __hash__(self) -> int:
        return hash(self._str)

    def __reduce__(self) -> tuple[object, ...]:
        return (JID, (self.local, self.domain, self.resource))


def prepare_local(local: str) -> str:
    if not local:
        raise InvalidJID("empty localpart")
    try:
        prepared = _LOCAL_PROFILE.enforce(local)
    except UnicodeError as exc:
        raise InvalidJID(f"invalid localpart {local!r}: {exc}") from None
    if _LOCAL_FORBIDDEN.intersection(prepared):
        raise InvalidJID(f"invalid character in localpart {local!r}")
    if len(prepared.encode()) > _MAX_PART_BYTES:
        raise InvalidJID("localpart too long")
    return prepared


def prepare_domain(domain: str) -> str:
    if domain.endswith("."):
        domain = domain[:-1]  # RFC 7622 §3.2: one trailing dot is removed
    if not domain:
        raise InvalidJID("empty domainpart")
    if not (domain.startswith("[") and domain.endswith("]")) and (
        domain.startswith(".") or domain.endswith(".") or ".." in domain
    ):
        raise InvalidJID(f"empty label in domainpart {domain!r}")
    if domain.startswith("[") and domain.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(domain[1:-1]).compressed}]"
        except ValueError:
            raise InvalidJID(f"invalid IPv6 literal {domain!r}") from None
    if domain.isascii():
        lowered = domain.lower()
        try:
            ipaddress.IPv4Address(lowered)
            return lowered
        except ValueError:
            pass
        labels = lowered.split(".")
        if all(_is_ldh_label(label) for label in labels) and not any(
            label.startswith("xn--") for label in labels
        ):
            if len(lowered) > 253:
                raise InvalidJID("domainpart too long")
            return lowered
    try:
        prepared = idna.decode(idna.encode(domain, uts46=True))
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidJID(f"invalid domainpart {domain!r}: {exc}") from None
    if len(prepared.encode()) > _MAX_PART_BYTES:
        raise InvalidJID("domainpart too long")
    return prepared


def _is_ldh_label(label: str) -> bool:
    # Letters, digits, hyphen; 1..63 characters; no leading/trailing hyphen (RFC 5890).
    if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
        return False
    return all(c.isalnum() or c == "-" for c in label)


def prepare_resource(resource: str) -> str:
    if not resource:
        raise InvalidJID("empty resourcepart")
    try:
        prepared = _RESOURCE_PROFILE.enforce(resource)
    except UnicodeError as exc:
        raise InvalidJID(f"invalid resourcepart {resource!r}: {exc}") from None
    if len(prepared.encode()) > _MAX_PART_BYTES:
        raise InvalidJID("resourcepart too long")
    return prepared


@lru_cache(maxsize=65536)
def _parse_cached(text: str) -> JID:
    # RFC 7622 §3.1: the resource starts at the first '/', the localpart ends at the
    # first '@' before it.
    slash = text.find("/")
    if slash >= 0:
        rest, resource = text[:slash], text[slash + 1 :]
        if not resource:
            raise InvalidJID("empty resourcepart")
    else:
        rest, resource = text, None
    at = rest.find("@")
    if at >= 0:
        local, domain = rest[:at], rest[at + 1 :]
        if not local:
            raise InvalidJID("empty localpart")
    else:
        local, domain = None, rest
    return JID.prepare(local, domain, resource)
