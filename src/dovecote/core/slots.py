"""Per-module session state in typed, declared slots.

A module declares the state it keeps on each session once, at import::

    ENABLED = SessionSlot[bool]("carbons.enabled")

and reads and writes it through the slot (`ENABLED.get(session)`, `ENABLED.set(session,
True)`), never through string keys in a shared dict. The slot is the key: two modules
cannot collide, a typo is a NameError rather than silently missing state, and the value
type is checked by mypy. The state lives on the session object, so it survives XEP-0198
resumption (the same session, a new connection) and goes with the session when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

_declared: dict[str, SessionSlot[Any]] = {}


class HasSlots(Protocol):
    slots: SlotStore


class SlotStore:
    """The slot values of one session."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[SessionSlot[Any], Any] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<SlotStore {sorted(slot.name for slot in self._values)}>"


class SessionSlot(Generic[T]):
    """One module's piece of per-session state, of type T; absent until set."""

    __slots__ = ("factory", "name")

    def __init__(self, name: str, factory: Callable[[], T] | None = None) -> None:
        if name in _declared:
            raise ValueError(f"session slot {name!r} is declared twice")
        _declared[name] = self
        self.name = name
        #: Makes the value `setdefault` creates when the slot is empty.
        self.factory = factory

    def __repr__(self) -> str:
        return f"<SessionSlot {self.name}>"

    def get(self, session: HasSlots, default: T | None = None) -> T | None:
        return session.slots._values.get(self, default)

    def has(self, session: HasSlots) -> bool:
        return self in session.slots._values

    def set(self, session: HasSlots, value: T) -> None:
        session.slots._values[self] = value

    def setdefault(self, session: HasSlots) -> T:
        """The value, created by the slot's factory when absent."""
        values = session.slots._values
        if self in values:
            return values[self]  # type: ignore[no-any-return]
        if self.factory is None:
            raise KeyError(f"session slot {self.name!r} has no factory")
        value = values[self] = self.factory()
        return value

    def pop(self, session: HasSlots, default: T | None = None) -> T | None:
        return session.slots._values.pop(self, default)


def declared_slots() -> dict[str, SessionSlot[Any]]:
    """Every slot declared so far, by name (for introspection and docs)."""
    return dict(_declared)
