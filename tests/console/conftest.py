"""The console tests start real clusters with tests/cluster/cluster_support.py and drive
Debian's Chromium with Playwright."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from cluster_support import ProcessCluster, cluster_maker, echo_wasm

#: Debian's Chromium (``apt-get install chromium``); ``playwright install`` cannot
#: download browsers here.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
#: Where screenshots go: the nox report directory, as the JUnit reports.
SCREENSHOTS = Path(os.environ.get("NOX_REPORT_DIR", ROOT / ".nox" / "reports")) / "console"


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package (pip install playwright)"
    if shutil.which(CHROMIUM) is None:
        return f"Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs {missing}, but it is missing")
        pytest.skip(f"needs {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ProcessCluster]]:
    with cluster_maker(tmp_path) as make:
        yield make


@pytest.fixture(scope="session")
def echo() -> bytes:
    return echo_wasm()
