"""The suite runs on the event loop that `dovecote serve` uses."""

import asyncio
import os


async def test_tests_run_on_uvloop() -> None:
    loop_module = type(asyncio.get_running_loop()).__module__
    if os.environ.get("DOVECOTE_TEST_LOOP") == "asyncio":
        assert loop_module.startswith("asyncio")
    else:
        assert loop_module.startswith("uvloop")
