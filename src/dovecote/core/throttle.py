"""Growing delays after repeated authentication failures: per client address
(`AuthThrottle`) and per account across all addresses (`AccountThrottle`). RFC 6120 §6.4.5
leaves the policy to the server; this slows password guessing."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


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


#: Accounts whose failures (or good addresses) are remembered at most (LRU beyond).
MAX_TRACKED_ACCOUNTS = 100_000
#: Addresses an account's successful logins are remembered from (LRU beyond).
KNOWN_ADDRESSES_PER_ACCOUNT = 8


def address_key(address: str) -> str:
    """What identifies a client's network: the IPv4 address, or the IPv6 /64 (one host's
    privacy addresses change within it, RFC 8981; an attacker rotates through it for
    free). Login budgets and connection limits (`transport/tcp.py`) count by it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(slots=True)
class Admission:
    """What the account throttle decided for one authentication attempt."""

    #: Seconds to hold the answer back (whether the password was right or not).
    wait: float
    #: False: the account's queue is full; answer not-authorized whatever the outcome.
    admitted: bool = True
    #: The attempt was counted as a failure in advance (parallel attempts see it).
    counted: bool = False


@dataclass(slots=True)
class _AccountFailures:
    count: int = 0
    last: float = 0.0
    #: Monotonic time before which no further answer for this account is given.
    not_before: float = 0.0


class AccountThrottle:
    """A failure budget per account, across all addresses (brute force from many
    addresses or many parallel connections; RFC 6120 §6.4.5 and §13.5 leave the policy to
    the server; the model is Prosody's mod_limit_auth).

    After `free_failures` failures the answers for the account, right or wrong password
    alike (otherwise the delay tells the answer), are given no sooner than a growing step
    after the previous answer: attempts are serialized on a per-account "not before" time,
    so parallel connections do not multiply the rate. An attempt that would have to wait
    longer than `max_delay` is answered not-authorized after `max_delay` without its result
    counting. Addresses the account has logged in from before are never delayed, so a
    stranger cannot lock the owner out. All state is in memory and bounded.
    """

    def __init__(
        self,
        free_failures: int = 5,
        max_delay: float = 10.0,
        forget_after: float = 900.0,
        *,
        max_accounts: int = MAX_TRACKED_ACCOUNTS,
        known_per_account: int = KNOWN_ADDRESSES_PER_ACCOUNT,
    ) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_accounts = max_accounts
        self.known_per_account = known_per_account
        self._failures: OrderedDict[str, _AccountFailures] = OrderedDict()
        self._known: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def is_known(self, account: str, address: str) -> bool:
        known = self._known.get(account)
        return known is not None and address_key(address) in known

    def step(self, failures: int) -> float:
        """The spacing of answers once `failures` failures are on record."""
        excess = failures - self.free_failures
        if excess < 0:
            return 0.0
        return min(self.max_delay, 0.25 * 2**excess)

    def admit(self, account: str, address: str) -> Admission:
        """Decide before answering an attempt for `account` from `address`."""
        if self.is_known(account, address):
            return Admission(0.0)
        now = time.monotonic()
        state = self._failures.get(account)
        if state is None or now - state.last > self.forget_after:
            state = _AccountFailures(last=now)
            self._failures[account] = state
            self._bound(self._failures)
        self._failures.move_to_end(account)
        step = self.step(state.count)
        if step == 0.0:
            state.count += 1
            state.last = now
            return Admission(0.0, counted=True)
        answer_at = max(now, state.not_before) + step
        if answer_at - now > self.max_delay:
            return Admission(self.max_delay, admitted=False)
        state.not_before = answer_at
        state.count += 1
        state.last = now
        return Admission(answer_at - now, counted=True)

    def failed(self, account: str, admission: Admission) -> None:
        if not admission.admitted or admission.counted:
            return  # refused ones do not count; admitted ones were counted in advance
        state = self._failures.setdefault(account, _AccountFailures())
        state.count += 1
        state.last = time.monotonic()
        self._bound(self._failures)

    def succeeded(self, account: str, address: str, admission: Admission) -> None:
        if admission.counted:
            # Through the budget with the right password: start again.
            self._failures.pop(account, None)
        # A success from a known address leaves the budget as it is: a stranger's
        # guesses stay slow while the owner logs in.
        known = self._known.setdefault(account, OrderedDict())
        self._known.move_to_end(account)
        known[address_key(address)] = None
        known.move_to_end(address_key(address))
        while len(known) > self.known_per_account:
            known.popitem(last=False)
        self._bound(self._known)

    def _bound(self, table: OrderedDict[str, Any]) -> None:
        while len(table) > self.max_accounts:
            table.popitem(last=False)
