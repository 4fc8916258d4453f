"""How long a failed login takes for a real account and for one that does not exist.

Starts Dovecote in-process (throttles out of the way), logs in with a wrong password over
STARTTLS again and again, alternating a real and an unknown user, and prints the median
time from sending the last SASL message to the <failure/>, per mechanism, in ms. Equal
medians mean the answer time does not tell whether an account exists.

    PYTHONPATH=src:. python bench/auth_timing.py [--attempts 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import scramp
from tests.helpers import SASL, RawClient, add_user, q, start_server

from dovecote.config import ConfigError

PER_CONNECTION = 4  # the stream is closed after 5 failed attempts


async def failed_plain(raw: RawClient, local: str) -> float:
    token = base64.b64encode(f"\0{local}\0wrong password".encode()).decode()
    started = time.perf_counter()
    raw.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
    el = await raw.next()
    elapsed = time.perf_counter() - started
    assert el.tag == q(SASL, "failure")
    return elapsed


async def failed_scram(raw: RawClient, local: str) -> float:
    client = scramp.ScramClient(["SCRAM-SHA-256"], local, "wrong password")
    first = base64.b64encode(client.get_client_first().encode()).decode()
    started = time.perf_counter()
    raw.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
    challenge = await raw.next()
    client.set_server_first(base64.b64decode(challenge.text or "").decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    raw.send(f"<response xmlns='{SASL}'>{final}</response>")
    el = await raw.next()
    elapsed = time.perf_counter() - started
    assert el.tag == q(SASL, "failure")
    return elapsed


async def measure(attempts: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        throttles_off = {
            "auth": {"account_failures_before_delay": 10**9},
            "limits": {"auth_failures_before_delay": 10**9},
            "logging": {"level": "error"},
        }
        try:
            server = await start_server(Path(tmp), **throttles_off)
        except ConfigError:  # a version without the per-account budget
            del throttles_off["auth"]
            server = await start_server(Path(tmp), **throttles_off)
        try:
            await add_user(server, "alice")
            results: dict[str, dict[str, float]] = {}
            for name, attempt in (("PLAIN", failed_plain), ("SCRAM-SHA-256", failed_scram)):
                times: dict[str, list[float]] = {"real": [], "unknown": []}
                raw: RawClient | None = None
                for n in range(2 * attempts):
                    if n % PER_CONNECTION == 0:
                        if raw is not None:
                            await raw.close()
                        raw = await RawClient.open(server.ports["c2s"])
                        raw.open_stream()
                        await raw.features()
                        await raw.starttls()
                    assert raw is not None
                    kind = "real" if n % 2 == 0 else "unknown"
                    local = "alice" if kind == "real" else f"nobody{n}"
                    times[kind].append(await attempt(raw, local))
                if raw is not None:
                    await raw.close()
                results[name] = {
                    f"{kind}_median_ms": round(statistics.median(values) * 1000, 3)
                    for kind, values in times.items()
                }
            return results
        finally:
            await server.stop()


def main() -> None:
    logging.getLogger("dovecote.auth").setLevel(logging.ERROR)  # one line per attempt
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=200, help="per kind of user")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.attempts)), indent=2))


if __name__ == "__main__":
    main()
