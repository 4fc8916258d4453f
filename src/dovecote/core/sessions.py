"""Who is online: bare JID -> resources -> session (RFC 6120 §7, RFC 6121 §8)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from dovecote.jid import JID

if TYPE_CHECKING:
    from dovecote.xml.element import Element


class Session(Protocol):
    """What routing needs of a bound client session, whatever its transport."""

    jid: JID
    #: RFC 6121 §4.7.2.3: priority of the last available presence (0 until then).
    priority: int
    #: True once initial presence was sent and until unavailable (RFC 6121 §4.2).
    available: bool
    #: The last available presence broadcast by the session (for probes).
    presence: Element | None

    def send(self, stanza: Element, data: bytes | None = None) -> None: ...

    def close(self, condition: str | None = None, text: str = "") -> None: ...


class SessionManager:
    def __init__(self) -> None:
        self._by_bare: dict[JID, dict[str, Session]] = {}
        self._count = 0

    def bind(self, session: Session, jid: JID) -> Session | None:
        """Register `session` under full `jid`; returns the session it replaces."""
        assert jid.resource is not None
        resources = self._by_bare.setdefault(jid.bare, {})
        previous = resources.get(jid.resource)
        resources[jid.resource] = session
        session.jid = jid
        if previous is None:
            self._count += 1
        return previous

    def unbind(self, session: Session) -> bool:
        jid = session.jid
        resources = self._by_bare.get(jid.bare)
        if not resources or resources.get(jid.resource or "") is not session:
            return False
        del resources[jid.resource or ""]
        self._count -= 1
        if not resources:
            del self._by_bare[jid.bare]
        return True

    def get(self, jid: JID) -> Session | None:
        resources = self._by_bare.get(jid.bare)
        if resources is None or jid.resource is None:
            return None
        return resources.get(jid.resource)

    def resources(self, bare: JID) -> list[Session]:
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def is_online(self, bare: JID) -> bool:
        return bare in self._by_bare

    def available(self, bare: JID, min_priority: int | None = 0) -> list[Session]:
        """Available resources, by default those of non-negative priority (RFC 6121 §8.5.2)."""
        resources = self._by_bare.get(bare)
        if not resources:
            return []
        return [
            s
            for s in resources.values()
            if s.available and (min_priority is None or s.priority >= min_priority)
        ]

    def highest_priority(self, bare: JID) -> list[Session]:
        """The available non-negative resource(s) tied for the highest priority."""
        candidates = self.available(bare)
        if not candidates:
            return []
        top = max(s.priority for s in candidates)
        return [s for s in candidates if s.priority == top]

    def __iter__(self) -> Iterator[Session]:
        for resources in list(self._by_bare.values()):
            yield from list(resources.values())

    def __len__(self) -> int:
        return self._count

    @property
    def user_count(self) -> int:
        return len(self._by_bare)
