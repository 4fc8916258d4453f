#!/usr/bin/env python3
"""Message archive benchmark: fill one XEP-0313 archive through the storage API and time
the queries a client makes (pages forwards and backwards, filters, counts, metadata).

    python bench/mam_bench.py [--messages 10000] [--url postgresql+asyncpg://...]

Without --url it uses a fresh SQLite file in a temporary directory. Besides the measured
user, a few other accounts get messages too, so that the indexes have to pick one archive
out of several. Prints one JSON document on stdout: milliseconds per operation (median of
--repeat runs) and appends per second. A benchmark, never a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dovecote.storage import derive_credentials, open_storage
from dovecote.storage.archive import ArchivedMessage, ArchiveFilter, new_archive_id

DOMAIN = "bench.local"
USER = "juliet"
OTHERS = ["romeo", "nurse", "tybalt"]
CONTACTS = [f"{name}@{DOMAIN}" for name in ("romeo", "mercutio", "benvolio", "friar")]


def stanza(n: int, contact: str) -> str:
    return (
        f"<message xmlns='jabber:client' from='{contact}/phone' to='{USER}@{DOMAIN}' "
        f"type='chat' id='m{n}'><body>Message number {n}: what light through yonder "
        "window breaks? It is the east, and Juliet is the sun.</body>"
        f"<active xmlns='http://jabber.org/protocol/chatstates'/></message>"
    )


def item(n: int, start: datetime) -> ArchivedMessage:
    contact = CONTACTS[n % len(CONTACTS)]
    return ArchivedMessage(
        new_archive_id(), start + timedelta(seconds=n), contact, "phone", stanza(n, contact)
    )


async def timed(repeat: int, operation: Callable[[], Awaitable[Any]]) -> float:
    """Median milliseconds of `repeat` runs (after one warm-up)."""
    await operation()
    runs = []
    for _ in range(repeat):
        began = time.perf_counter()
        await operation()
        runs.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(runs), 3)


async def run(url: str, messages: int, repeat: int) -> dict[str, Any]:
    storage = await open_storage(url)
    archive = storage.archive
    results: dict[str, Any] = {"backend": storage.dialect, "messages": messages}
    try:
        creds = derive_credentials("bench")
        for local in [USER, *OTHERS]:
            await storage.accounts.create(local, DOMAIN, creds)
        start = datetime.now(UTC) - timedelta(seconds=messages + 10)

        # Appends one at a time (an idle server: one transaction each) ...
        sequential = min(messages, 1000)
        began = time.perf_counter()
        for n in range(sequential):
            await archive.append(USER, DOMAIN, item(n, start))
        elapsed = time.perf_counter() - began
        results["append_sequential_per_s"] = round(sequential / elapsed)
        # ... and concurrently (a busy one: group commit writes many per transaction).
        began = time.perf_counter()
        batch = 200
        for first in range(sequential, messages, batch):
            last = min(first + batch, messages)
            await asyncio.gather(
                *(archive.append(USER, DOMAIN, item(n, start)) for n in range(first, last))
            )
        elapsed = time.perf_counter() - began
        results["append_concurrent_per_s"] = round((messages - sequential) / max(elapsed, 1e-9))
        for local in OTHERS:
            await asyncio.gather(
                *(archive.append(local, DOMAIN, item(n, start)) for n in range(messages // 4))
            )

        everything = ArchiveFilter()
        page = await archive.query(USER, DOMAIN, everything, 250)
        ids = [m.id for m in page.messages]
        middle = (await archive.query(USER, DOMAIN, everything, 1, index=messages // 2)).messages
        middle_id = middle[0].id
        last_id = (await archive.query(USER, DOMAIN, everything, 1, before="")).messages[0].id

        def query(flt: ArchiveFilter = everything, limit: int = 50, **kw: Any) -> Any:
            return lambda: archive.query(USER, DOMAIN, flt, limit, **kw)

        async def page_through() -> int:
            after, pages = None, 0
            while True:
                result = await archive.query(USER, DOMAIN, everything, 250, after=after)
                pages += 1
                if result.complete or not result.messages:
                    return pages
                after = result.messages[-1].id

        timings = {
            "first_page_50": query(),
            "last_page_50": query(before=""),
            "page_after_middle_50": query(after=middle_id),
            "page_before_middle_50": query(before=middle_id),
            "page_by_index_middle_50": query(index=messages // 2),
            "with_bare_50": query(ArchiveFilter(with_bare=CONTACTS[1])),
            "with_full_50": query(ArchiveFilter(with_bare=CONTACTS[1], with_resource="phone")),
            "with_last_page_50": query(ArchiveFilter(with_bare=CONTACTS[1]), before=""),
            "start_recent_50": query(
                ArchiveFilter(start=start + timedelta(seconds=messages - 100))
            ),
            "start_oldest_50": query(ArchiveFilter(start=start)),
            "start_end_middle_50": query(
                ArchiveFilter(
                    start=start + timedelta(seconds=messages // 2),
                    end=start + timedelta(seconds=messages // 2 + 500),
                )
            ),
            "after_id_before_id_50": query(ArchiveFilter(after_id=ids[10], before_id=last_id)),
            "ids_10": query(ArchiveFilter(ids=ids[:10])),
            "count_only": query(limit=0),
            "max_page_250": query(limit=250),
            "metadata_bounds": lambda: archive.bounds(USER, DOMAIN),
        }
        results["ms"] = {name: await timed(repeat, op) for name, op in timings.items()}
        began = time.perf_counter()
        pages = await page_through()
        results["ms"]["page_through_all_250"] = round((time.perf_counter() - began) * 1000, 3)
        results["pages_through_all"] = pages
        began = time.perf_counter()
        removed = await archive.delete_older_than(start + timedelta(seconds=messages // 10))
        results["ms"]["retention_delete"] = round((time.perf_counter() - began) * 1000, 3)
        results["retention_removed"] = removed
    finally:
        await storage.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--url", help="async SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{tmp}/bench.sqlite3"
        results = asyncio.run(run(url, args.messages, args.repeat))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
