"""Fixtures for the browser tests: headless Debian Chromium driven by Selenium through the
Debian chromedriver, and the real `twistd proxyd` with small HTTP backends, all on 127.0.0.1.

`make test` installs chromium and chromium-driver (scripts/apt-need); elsewhere the tests are
skipped, saying so, when either is missing.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import conftest as integration
from tests.integration.harness import Backend, ProcessList, free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1200, 700)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium whose console messages `get_log('browser')` returns, with a
    1200x700 viewport (the size of docs/stats-page.png)."""
    chromium = _chromium()
    if chromium is None or not CHROMEDRIVER.is_file():
        pytest.skip(
            "chromium or chromedriver is not installed "
            "(scripts/apt-need chromium:chromium chromedriver:chromium-driver, as make test does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given means Selenium Manager neither looks for nor downloads a driver.
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        # --window-size is the window's outer size; the page and the screenshot get exactly
        # WINDOW, in the light colour scheme whatever the machine prefers.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
        )
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "light"}]},
        )
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


processes = integration.processes
proxyd = integration.proxyd
"""The integration tests' fixtures: the processes a test starts, and the real proxyd."""


@pytest.fixture
def http_backend(processes: ProcessList) -> Callable[[str], Backend]:
    """`http_backend(name)`: examples/http_backend.py on 127.0.0.1 (GET /healthz answers ok)."""

    def start(name: str) -> Backend:
        port = free_port()
        argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
        process = processes.start(f"http-backend-{name}", [*argv, "--name", name])
        process.wait_listening([port], 15)
        return Backend(process, port)

    return start
