"""Set-up for the real-browser tests: scripts/browser-setup.sh runs once per session
(Debian's chromium when missing and root, `npm ci` of Converse.js and playwright-core).
Under CI (CI=true) a failed set-up fails the tests; elsewhere it skips them with the
reason. DOVECOTE_BROWSER_TESTS=0 skips them outright (not under CI)."""

from __future__ import annotations

import os

import pytest

from tests.browser.support import SCREENSHOTS, SetupFailed, run_setup


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium() -> str:
    if not _under_ci() and os.environ.get("DOVECOTE_BROWSER_TESTS") == "0":
        pytest.skip("browser tests disabled by DOVECOTE_BROWSER_TESTS=0")
    try:
        return run_setup()
    except SetupFailed as exc:
        if _under_ci():
            pytest.fail(f"browser test set-up failed under CI: {exc}", pytrace=False)
        pytest.skip(f"browser test tools unavailable (outside CI): {exc}")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
