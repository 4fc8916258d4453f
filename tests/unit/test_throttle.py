"""The per-account failure budget (core/throttle.py AccountThrottle), without sockets."""

from __future__ import annotations

import pytest

from dovecote.core import throttle as throttle_module
from dovecote.core.throttle import AccountThrottle, Admission, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(throttle_module.time, "monotonic", fake)
    return fake


def fail(throttle: AccountThrottle, account: str, address: str) -> Admission:
    admission = throttle.admit(account, address)
    throttle.failed(account, admission)
    return admission


def test_free_failures_then_a_growing_serialized_delay(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=3, max_delay=10.0)
    for n in range(3):
        assert fail(throttle, "alice", f"192.0.2.{n}").wait == 0.0
    # Attempts at the same instant are spaced, not answered together.
    waits = [throttle.admit("alice", f"198.51.100.{n}").wait for n in range(4)]
    assert waits == [0.25, 0.25 + 0.5, 0.25 + 0.5 + 1.0, 0.25 + 0.5 + 1.0 + 2.0]
    clock.now += 100
    assert throttle.admit("alice", "203.0.113.1").wait == 4.0  # 2 ** 4 / 4: growing on


def test_a_full_queue_is_refused_and_not_counted(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=1, max_delay=1.0)
    fail(throttle, "alice", "192.0.2.1")
    first = throttle.admit("alice", "192.0.2.2")  # 0.25
    second = throttle.admit("alice", "192.0.2.3")  # 0.25 + 0.5
    refused = throttle.admit("alice", "192.0.2.4")  # would be 0.75 + 1.0
    assert (first.wait, second.wait) == (0.25, 0.75) and first.admitted and second.admitted
    assert refused == Admission(1.0, admitted=False)
    throttle.failed("alice", refused)
    assert throttle._failures["alice"].count == 3


def test_known_addresses_are_never_delayed(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=1, max_delay=10.0)
    throttle.succeeded("alice", "192.0.2.1", throttle.admit("alice", "192.0.2.1"))
    for n in range(20):
        fail(throttle, "alice", f"198.51.100.{n}")
    assert throttle.admit("alice", "192.0.2.1") == Admission(0.0)
    # A success from the known address does not give strangers a fresh budget.
    throttle.succeeded("alice", "192.0.2.1", Admission(0.0))
    assert throttle.admit("alice", "198.51.100.99").wait > 0
    # Another account's known address is not this one's.
    assert throttle.admit("bob", "192.0.2.1") == Admission(0.0, counted=True)


def test_success_through_the_budget_starts_again(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=1, max_delay=10.0)
    fail(throttle, "alice", "192.0.2.1")
    admission = throttle.admit("alice", "192.0.2.2")
    assert admission.wait > 0
    throttle.succeeded("alice", "192.0.2.2", admission)
    assert throttle.admit("alice", "192.0.2.3").wait == 0.0


def test_failures_are_forgotten_after_the_window(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=1, max_delay=10.0, forget_after=60)
    fail(throttle, "alice", "192.0.2.1")
    fail(throttle, "alice", "192.0.2.1")
    clock.now += 61
    assert throttle.admit("alice", "192.0.2.1").wait == 0.0


def test_memory_is_bounded(clock: Clock) -> None:
    throttle = AccountThrottle(free_failures=1, max_accounts=10, known_per_account=2)
    for n in range(50):
        fail(throttle, f"user{n}", "192.0.2.1")
        throttle.succeeded(f"user{n}", "192.0.2.1", Admission(0.0))
    assert len(throttle._failures) == 10 and len(throttle._known) == 10
    for n in range(5):
        throttle.succeeded("alice", f"192.0.2.{n}", Admission(0.0))
    assert list(throttle._known["alice"]) == ["192.0.2.3", "192.0.2.4"]


def test_address_keys() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    # One host's IPv6 privacy addresses share the /64.
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("unix") == "unix"
