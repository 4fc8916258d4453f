from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from dovecote.server import Server
from tests.helpers import start_server


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[Server]:  # type: ignore[no-untyped-def]
    srv = await start_server(tmp_path / "data")
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture(autouse=True)
def _quiet_slixmpp() -> None:
    logging.getLogger("slixmpp").setLevel(logging.WARNING)


def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    """The tests run on uvloop, the loop `dovecote serve` uses (DOVECOTE_TEST_LOOP=asyncio
    runs them on the standard loop instead)."""
    import asyncio
    import os

    if os.environ.get("DOVECOTE_TEST_LOOP") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
