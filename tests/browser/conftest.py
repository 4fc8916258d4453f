"""Set-up for the real-browser tests: scripts/browser-setup.sh (Debian's chromium when
missing and root, `npm ci` of Converse.js and playwright-core) runs once, after collection
when a browser test is selected, so its first-time installs do not count against a test's
timeout. Under CI (CI=true) a failed set-up fails the tests; elsewhere it skips them with
the reason. DOVECOTE_BROWSER_TESTS=0 skips them outright (not under CI)."""

from __future__ import annotations

import os

import pytest

from tests.browser.support import SCREENSHOTS, SetupFailed, run_setup

_setup: dict[str, str] = {}


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only for selected browser tests
def pytest_collection_modifyitems(config, items) -> None:  # type: ignore[no-untyped-def]
    if config.option.collectonly or not any(item.get_closest_marker("browser") for item in items):
        return
    if not _under_ci() and os.environ.get("DOVECOTE_BROWSER_TESTS") == "0":
        _setup["skip"] = "browser tests disabled by DOVECOTE_BROWSER_TESTS=0"
        return
    try:
        _setup["chromium"] = run_setup()
    except SetupFailed as exc:
        _setup["error"] = str(exc)


@pytest.fixture(scope="session")
def chromium() -> str:
    if "skip" in _setup:
        pytest.skip(_setup["skip"])
    if "chromium" not in _setup and "error" not in _setup:
        try:  # collected without the hook above (e.g. by a plugin): set up now
            _setup["chromium"] = run_setup()
        except SetupFailed as exc:
            _setup["error"] = str(exc)
    if "error" in _setup:
        if _under_ci():
            pytest.fail(f"browser test set-up failed under CI: {_setup['error']}", pytrace=False)
        pytest.skip(f"browser test tools unavailable (outside CI): {_setup['error']}")
    return _setup["chromium"]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))
