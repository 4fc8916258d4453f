"""Typed per-module session state (core/slots.py)."""

from __future__ import annotations

import pytest

from dovecote.core.slots import SessionSlot, SlotStore, declared_slots


class FakeSession:
    def __init__(self) -> None:
        self.slots = SlotStore()


def test_slots_are_separate_per_session_and_per_slot() -> None:
    counter = SessionSlot[int]("unit.counter")
    names = SessionSlot[set[str]]("unit.names", set)
    one, two = FakeSession(), FakeSession()
    assert counter.get(one) is None and not counter.has(one)
    counter.set(one, 3)
    assert counter.get(one) == 3 and counter.get(two) is None
    names.setdefault(two).add("a")
    names.setdefault(two).add("b")
    assert names.get(two) == {"a", "b"} and names.get(one) is None
    assert counter.pop(one) == 3 and counter.pop(one) is None
    assert len(two.slots) == 1


def test_a_slot_name_is_declared_once() -> None:
    SessionSlot[int]("unit.unique")
    with pytest.raises(ValueError, match=r"unit\.unique"):
        SessionSlot[int]("unit.unique")
    assert "unit.unique" in declared_slots()


def test_setdefault_needs_a_factory() -> None:
    flag = SessionSlot[bool]("unit.flag")
    with pytest.raises(KeyError):
        flag.setdefault(FakeSession())
