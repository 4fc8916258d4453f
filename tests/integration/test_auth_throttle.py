"""A failure budget per account across client addresses (brute force from many addresses
and parallel connections), the owner's known addresses exempt, and the fail2ban log line.
Clients come from 127.0.0.2, 127.0.0.3, ... (all loopback on Linux)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dovecote.core.throttle import Admission
from dovecote.server import Server
from tests.helpers import PASSWORD, SASL, RawClient, add_user, q, start_server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs 127.0.0.2+ as loopback addresses"
)

FREE_FAILURES = 2
#: The README's fail2ban failregex, with <HOST> as fail2ban expands it.
FAILREGEX = re.compile(r"authentication failed for \S+ from (?P<host>\S+) \(\S+\)$")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = await start_server(
        tmp_path,
        auth={"account_failures_before_delay": FREE_FAILURES, "max_account_delay": 1.0},
        # The per-address throttle out of the way: only the per-account budget shows.
        limits={"auth_failures_before_delay": 100},
    )
    await add_user(srv, "alice")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def admissions(server: Server) -> list[tuple[str, str, Admission]]:
    """Every decision of the account throttle: (user, address, admission)."""
    decided: list[tuple[str, str, Admission]] = []
    throttle = server.account_throttle
    admit = throttle.admit

    def recording(user: str, address: str) -> Admission:
        admission = admit(user, address)
        decided.append((user, address, admission))
        return admission

    throttle.admit = recording  # type: ignore[method-assign]
    return decided


async def plain_from(server: Server, source: str, local: str, password: str) -> ET.Element:
    """One PLAIN attempt over STARTTLS from `source`; the server's answer."""
    raw = await RawClient.open(server.ports["c2s"], source=source)
    try:
        raw.open_stream()
        await raw.features()
        await raw.starttls()
        return await raw.auth_plain(local, password)
    finally:
        await raw.close()


async def scram_from(server: Server, source: str, local: str, password: str) -> ET.Element:
    raw = await RawClient.open(server.ports["c2s"], source=source)
    try:
        raw.open_stream()
        await raw.features()
        await raw.starttls()
        return await raw.auth_scram(local, password, mechanism="SCRAM-SHA-256")
    finally:
        await raw.close()


def not_authorized(el: ET.Element) -> bool:
    return el.tag == q(SASL, "failure") and el.find(q(SASL, "not-authorized")) is not None


async def test_budget_across_addresses_and_the_owner_known_address(
    server: Server, admissions: list[tuple[str, str, Admission]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dovecote.auth")
    # The owner logs in once from 127.0.0.1: a known address from now on.
    assert (await plain_from(server, "127.0.0.1", "alice", PASSWORD)).tag == q(SASL, "success")
    # Each guess from a different address: the per-address throttle never sees a second one.
    for n in range(FREE_FAILURES):
        assert not_authorized(await plain_from(server, f"127.0.0.{2 + n}", "alice", "guess"))
    assert [a.wait for _, _, a in admissions] == [0.0] * (1 + FREE_FAILURES)
    # Budget spent: the next guess, from yet another address, waits its turn.
    started = time.monotonic()
    assert not_authorized(await scram_from(server, "127.0.0.9", "alice", "guess"))
    assert time.monotonic() - started >= 0.25  # a lower bound only: never flaky
    assert admissions[-1][2].wait > 0 and admissions[-1][2].admitted
    # The owner from the known address: no delay, in at once, budget spent or not.
    assert (await scram_from(server, "127.0.0.1", "alice", PASSWORD)).tag == q(SASL, "success")
    assert admissions[-1][1:] == ("127.0.0.1", Admission(0.0))
    # The right password from an unknown address waits like a wrong one (the delay must not
    # tell the answer), then succeeds and makes the address known.
    assert (await plain_from(server, "127.0.0.10", "alice", PASSWORD)).tag == q(SASL, "success")
    assert admissions[-1][2].wait > 0
    assert server.account_throttle.is_known("alice", "127.0.0.10")

    # One fail2ban line per failure, with the address each guess came from.
    lines = [r.getMessage() for r in caplog.records if r.name == "dovecote.auth"]
    assert lines == [
        "authentication failed for alice@example.org from 127.0.0.2 (PLAIN)",
        "authentication failed for alice@example.org from 127.0.0.3 (PLAIN)",
        "authentication failed for alice@example.org from 127.0.0.9 (SCRAM-SHA-256)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "dovecote.auth")
    hosts = [m.group("host") for line in lines if (m := FAILREGEX.search(line))]
    assert hosts == ["127.0.0.2", "127.0.0.3", "127.0.0.9"]


async def test_unknown_accounts_are_throttled_and_logged_alike(
    server: Server, admissions: list[tuple[str, str, Admission]], caplog: pytest.LogCaptureFixture
) -> None:
    """The budget does not depend on the account existing (that would tell who exists)."""
    caplog.set_level(logging.WARNING, logger="dovecote.auth")
    for name in ("alice", "nobody"):
        for n in range(FREE_FAILURES + 1):
            assert not_authorized(await plain_from(server, f"127.0.1.{n + 1}", name, "guess"))
    waits = {
        name: [a.wait > 0 for user, _, a in admissions if user == name]
        for name in ("alice", "nobody")
    }
    assert waits["alice"] == waits["nobody"] == [False] * FREE_FAILURES + [True]
    logged = [r.getMessage() for r in caplog.records if r.name == "dovecote.auth"]
    assert "authentication failed for nobody@example.org from 127.0.1.3 (PLAIN)" in logged


async def test_parallel_connections_do_not_multiply_the_rate(
    server: Server, admissions: list[tuple[str, str, Admission]]
) -> None:
    for n in range(FREE_FAILURES):
        assert not_authorized(await plain_from(server, f"127.0.2.{n + 1}", "alice", "guess"))
    # Eight guesses at once, from one address and from different ones.
    sources = [f"127.0.3.{n % 3 + 1}" for n in range(8)]
    answers = await asyncio.gather(
        *(plain_from(server, source, "alice", f"guess {n}") for n, source in enumerate(sources))
    )
    assert all(not_authorized(answer) for answer in answers)
    parallel = [a for _, _, a in admissions[FREE_FAILURES:]]
    admitted = sorted(a.wait for a in parallel if a.admitted)
    # Serialized: each admitted answer a growing step (0.25 s, 0.5 s, ...) after the one
    # before; beyond max_account_delay of queue the guess is refused without being tried.
    assert len(admitted) >= 1
    assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(admitted))
    assert admitted[-1] <= server.config.auth.max_account_delay
    refused = [a for a in parallel if not a.admitted]
    assert len(refused) >= 8 - 3


async def test_right_password_refused_while_the_queue_is_full(
    server: Server, admissions: list[tuple[str, str, Admission]]
) -> None:
    """A refused attempt is not-authorized even with the right password (its answer would
    otherwise confirm a guess without the wait), and is not counted as a failure."""
    for n in range(FREE_FAILURES):
        assert not_authorized(await plain_from(server, f"127.0.4.{n + 1}", "alice", "guess"))
    owner = await RawClient.open(server.ports["c2s"], source="127.0.5.9")
    owner.open_stream()
    await owner.features()
    await owner.starttls()
    guesses = [
        asyncio.create_task(plain_from(server, f"127.0.5.{n + 1}", "alice", "guess"))
        for n in range(3)
    ]
    for _ in range(1000):  # until all three are decided (they are not answered yet)
        if len(admissions) == FREE_FAILURES + 3:
            break
        await asyncio.sleep(0.01)
    # Answers are queued 0.25 s and 0.5 s + 0.25 s ahead: the next would wait past 1 s.
    assert [a.admitted for _, _, a in admissions[FREE_FAILURES:]] == [True, True, False]
    answer = await owner.auth_plain("alice", PASSWORD)
    assert not_authorized(answer)
    assert admissions[-1][1:] == ("127.0.5.9", Admission(1.0, admitted=False))
    assert all(not_authorized(a) for a in await asyncio.gather(*guesses))
    await owner.close()
    # Refusals do not count: 2 free + 2 admitted failures.
    assert server.account_throttle._failures["alice"].count == FREE_FAILURES + 2
