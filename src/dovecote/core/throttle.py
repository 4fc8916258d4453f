"""A growing delay after repeated authentication failures from one address
(RFC 6120 §6.4.5 leaves the policy to the server; this slows password guessing)."""

from __future__ import annotations

import time


class AuthThrottle:
    def __init__(
        self, free_failures: int = 3, max_delay: float = 10.0, forget_after: float = 600.0
    ) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, address: str) -> float:
        """Record a failure; returns how long to wait before answering it."""
        now = time.monotonic()
        count, last = self._failures.get(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        if len(self._failures) > 100_000:
            self._expire(now)
        excess = count - self.free_failures
        if excess <= 0:
            return 0.0
        return min(self.max_delay, 0.25 * 2 ** (excess - 1))

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _expire(self, now: float) -> None:
        self._failures = {
            a: (c, t) for a, (c, t) in self._failures.items() if now - t <= self.forget_after
        }
