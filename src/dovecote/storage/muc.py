"""Storage interface for multi-user chat rooms (XEP-0045): persistent rooms, their
configuration and subject, and their affiliations.

A room is named by its service's domain and its localpart (room@conference.example.org is
("conference.example.org", "room")). Only persistent rooms (muc#roomconfig_persistentroom,
XEP-0045 §10.1.3) are stored: a temporary room lives in memory and vanishes when its last
occupant leaves. The configuration is kept as JSON (the room's own model reads it back), so
the store does not need to know the options a service supports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StoredAffiliation:
    """One affiliation (XEP-0045 §5.2): a bare JID (or a domain), owner, admin, member
    or outcast, with the reason given and the member's registered nickname (§7.10)."""

    jid: str
    affiliation: str
    reason: str = ""
    nick: str = ""


@dataclass(slots=True)
class StoredRoom:
    """A persistent room: its localpart, configuration, subject and the secret its
    occupant ids are derived from (XEP-0421 §3: stable across restarts)."""

    local: str
    config: dict[str, Any]
    subject: str = ""
    subject_by: str = ""
    secret: str = ""
    affiliations: list[StoredAffiliation] = field(default_factory=list)


class MucStore(ABC):
    """The persistent rooms of every MUC service."""

    @abstractmethod
    async def load_room(self, domain: str, local: str) -> StoredRoom | None:
        """The stored room with its affiliations, or None."""

    @abstractmethod
    async def save_room(self, domain: str, room: StoredRoom) -> None:
        """Create or replace a room's configuration, subject and secret (not its
        affiliations, see `set_affiliation` / `replace_affiliations`)."""

    @abstractmethod
    async def replace_affiliations(
        self, domain: str, local: str, affiliations: list[StoredAffiliation]
    ) -> None:
        """Store exactly these affiliations for the (stored) room."""

    @abstractmethod
    async def set_affiliation(self, domain: str, local: str, item: StoredAffiliation) -> None:
        """Set one affiliation of a stored room; 'none' removes it."""

    @abstractmethod
    async def delete_room(self, domain: str, local: str) -> None:
        """Remove a room and its affiliations (destroyed, or no longer persistent)."""

    @abstractmethod
    async def list_rooms(self, domain: str) -> list[StoredRoom]:
        """The stored rooms of a service (without their affiliations)."""

    @abstractmethod
    async def rooms_owned(self, domain: str, jid: str) -> int:
        """How many stored rooms of the service `jid` is an owner of."""
