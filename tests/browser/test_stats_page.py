"""The stats page in a real headless Chromium, served by the real `twistd proxyd` in front of
three HTTP backends: it loads without console errors, shows a stopped backend DOWN within
`fall` check intervals and one poll, and its Drain button drains a server.

PROXYD_SCREENSHOT=1 also writes the screenshot to docs/stats-page.png (`make stats-screenshot`);
otherwise it goes to the test's temporary directory, so that `make test` leaves the checkout as
it found it.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Backend, Proxyd, free_port, wait_until

from .conftest import ROOT, WINDOW

pytestmark = pytest.mark.browser

CHECK_INTERVAL = 1.0
FALL = 2
POLL = 2.0  # POLL_MS in stats.js
# Checks are check_interval ±10% apart; the rest is a status request and the page's update.
DOWN_WITHIN = CHECK_INTERVAL * 1.1 * FALL + POLL + 1.5
TOKEN = "stats-page-token-0123456789"
READ_TOKEN = "stats-page-read-only-0123456789"
SCREENSHOT = ROOT / "docs" / "stats-page.png"
NO_VALUE = "\u2013"  # the page's en dash where there is nothing to show yet


def api(port: int, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """An admin API request: (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def servers_by_name(port: int, pool: str, token: str | None = None) -> dict[str, Any]:
    status, document = api(port, "/api/v1/status", token=token)
    assert status == 200, document
    (found,) = [p for p in document["pools"] if p["name"] == pool]
    return {server["name"]: server for server in found["servers"]}


def config(admin_port: int, http_port: int, backends: list[Backend], admin_extra: str = "") -> str:
    servers = "".join(f"    {backend.address}\n" for backend in backends)
    return (
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n{admin_extra}\n"
        f"[pool web]\nbalance = round_robin\nservers =\n{servers}"
        f"check = http GET /healthz expect 200\ncheck_interval = {CHECK_INTERVAL:g}s\n"
        f"rise = 1\nfall = {FALL}\n\n"
        f"[http public]\nlisten = tcp:{http_port}:interface=127.0.0.1\n"
        f"routes =\n    path / -> pool web\n"
    )


@contextmanager
def steady_load(port: int, per_second: float = 20.0) -> Iterator[None]:
    """GET / through the HTTP listener at a steady pace in a thread, so that the page has
    rates to show; answers and failures (a stopped backend) do not matter here."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    answer.read()
            except OSError:
                pass
            stop.wait(1 / per_second)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def console_errors(browser: Any, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The console's errors since the last call (get_log empties the log), except those whose
    message holds one of `allowed`."""
    return [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]


def row(browser: Any, pool: str, server: str) -> Any:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(
        By.CSS_SELECTOR, f'tr.server[data-pool="{pool}"][data-server="{server}"]'
    )
    return rows[0] if rows else None


def row_state(browser: Any, pool: str, server: str) -> str | None:
    found = row(browser, pool, server)
    return None if found is None else found.get_attribute("data-state")


def cell(browser: Any, pool: str, server: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    found = row(browser, pool, server)
    assert found is not None, f"no row for {server} in pool {pool}"
    return str(found.find_element(By.CSS_SELECTOR, f'[data-column="{column}"]').text)


def wait(browser: Any, timeout: float, what: str, condition: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(
        condition, f"timed out after {timeout}s waiting for {what}"
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def web(
    http_backend: Callable[[str], Backend], proxyd: Callable[[str], Proxyd]
) -> tuple[Proxyd, int, int, list[Backend]]:
    """proxyd with an admin listener (no token: loopback), a pool of three backends checked
    every second, and an HTTP listener in front of it: (proxyd, admin port, HTTP port,
    backends)."""
    backends = [http_backend(name) for name in ("b1", "b2", "b3")]
    admin_port, http_port = free_port(), free_port()
    instance = proxyd(config(admin_port, http_port, backends))
    names = [backend.address for backend in backends]
    wait_until(
        lambda: all(s["state"] == "up" for s in servers_by_name(admin_port, "web").values()),
        10,
        f"{names} up in the admin API",
    )
    return instance, admin_port, http_port, backends


def test_stats_page_shows_a_stopped_backend_down_and_drains_a_server(
    browser: Any, web: tuple[Proxyd, int, int, list[Backend]], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    instance, admin_port, http_port, (stopped, drained, serving) = web
    with steady_load(http_port):
        browser.get(f"http://127.0.0.1:{admin_port}/")
        assert browser.title == "proxyd stats"
        for backend in (stopped, drained, serving):
            wait(
                browser,
                POLL + 3,
                f"{backend.address} UP on the page",
                lambda b, name=backend.address: row_state(b, "web", name) == "up",
            )
        assert cell(browser, "web", stopped.address, "state") == "UP"
        # A rate needs two polls: the listener's req/s once the page has seen the load twice.
        wait(
            browser,
            2 * POLL + 3,
            "the HTTP listener's requests per second",
            lambda b: (
                b.find_element(By.CSS_SELECTOR, '#listeners td[data-column="rate"]').text
                not in ("", NO_VALUE, "0")
            ),
        )
        assert not browser.find_element(By.ID, "banner").is_displayed()
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        assert console_errors(browser) == []

        stopped.kill()
        began = time.monotonic()
        wait(
            browser,
            DOWN_WITHIN,
            f"{stopped.address} DOWN on the page",
            lambda b: row_state(b, "web", stopped.address) == "down",
        )
        took = time.monotonic() - began
        assert took <= DOWN_WITHIN
        print(
            f"DOWN on the page {took:.2f} s after its backend stopped (bound {DOWN_WITHIN:.1f} s)"
        )
        assert cell(browser, "web", stopped.address, "state") == "DOWN"
        assert cell(browser, "web", stopped.address, "reason") != ""
        assert servers_by_name(admin_port, "web")[stopped.address]["state"] == "down"

        buttons = row(browser, "web", drained.address).find_elements(
            By.CSS_SELECTOR, "button[data-admin]"
        )
        assert [button.text for button in buttons] == ["Drain", "Maint", "Ready"]
        assert [button.is_enabled() for button in buttons] == [True, True, False]
        buttons[0].click()
        wait(
            browser,
            POLL + 3,
            f"{drained.address} DRAIN on the page",
            lambda b: row_state(b, "web", drained.address) == "drain",
        )
        assert cell(browser, "web", drained.address, "state").startswith("DRAIN")
        server = servers_by_name(admin_port, "web")[drained.address]
        assert (server["state"], server["admin"]) == ("drain", "drain")
        assert row_state(browser, "web", serving.address) == "up"
        # All the load now goes to the one server left (each request on a new connection, so
        # none to the drained one), and the page shows it once a whole interval is after the
        # drain.
        wait(
            browser,
            3 * POLL + 3,
            f"requests per second on {serving.address} only",
            lambda b: (
                cell(b, "web", drained.address, "requests") == "0"
                and cell(b, "web", serving.address, "requests") not in (NO_VALUE, "0")
            ),
        )
        ready = row(browser, "web", drained.address).find_element(
            By.CSS_SELECTOR, 'button[data-admin="ready"]'
        )
        assert ready.is_enabled()
        assert console_errors(browser) == []

        screenshot = browser.get_screenshot_as_png()
    assert png_size(screenshot) == WINDOW
    (tmp_path / "stats-page.png").write_bytes(screenshot)
    if os.environ.get("PROXYD_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(screenshot)

    # proxyd gone: the banner says so and the page keeps its last data.
    instance.stopped_by_test = True
    instance.process.kill()
    banner = wait(
        browser,
        POLL + 7,
        "the error banner",
        lambda b: (found := b.find_element(By.ID, "banner")).is_displayed() and found,
    )
    assert "cannot be reached" in banner.text
    assert row_state(browser, "web", serving.address) == "up"


def test_stats_page_asks_for_the_token_and_keeps_it_for_the_tab(
    browser: Any,
    http_backend: Callable[[str], Backend],
    proxyd: Callable[[str], Proxyd],
) -> None:
    from selenium.webdriver.common.by import By

    backend = http_backend("b1")
    admin_port, http_port = free_port(), free_port()
    proxyd(config(admin_port, http_port, [backend], admin_extra=f"token = {TOKEN}\n"))
    browser.get(f"http://127.0.0.1:{admin_port}/")

    form = wait(
        browser,
        5,
        "the token form",
        lambda b: (found := b.find_element(By.ID, "token-form")).is_displayed() and found,
    )
    assert "needs a token" in browser.find_element(By.ID, "banner").text
    assert row(browser, "web", backend.address) is None
    field = form.find_element(By.ID, "token")
    field.send_keys("not-the-token-at-all-0000")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(
        browser,
        5,
        "the token to be refused",
        lambda b: "refused this token" in b.find_element(By.ID, "banner").text,
    )

    field.send_keys(TOKEN)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(
        browser,
        5,
        f"{backend.address} on the page",
        lambda b: row_state(b, "web", backend.address) == "up",
    )
    assert not browser.find_element(By.ID, "banner").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('proxyd.admin.token')") == TOKEN
    # A reload of the tab keeps the token: no form, no 401.
    browser.get_log("browser")
    browser.refresh()
    wait(
        browser,
        5,
        f"{backend.address} on the page after a reload",
        lambda b: row_state(b, "web", backend.address) == "up",
    )
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    assert console_errors(browser) == []


def test_stats_page_has_no_buttons_for_a_read_only_token(
    browser: Any,
    http_backend: Callable[[str], Backend],
    proxyd: Callable[[str], Proxyd],
) -> None:
    from selenium.webdriver.common.by import By

    backend = http_backend("b1")
    admin_port, http_port = free_port(), free_port()
    tokens = f"token = {TOKEN}\nread_token = {READ_TOKEN}\n"
    proxyd(config(admin_port, http_port, [backend], admin_extra=tokens))
    browser.get(f"http://127.0.0.1:{admin_port}/")
    browser.execute_script(f"sessionStorage.setItem('proxyd.admin.token', '{READ_TOKEN}')")
    browser.refresh()
    wait(
        browser,
        5,
        f"{backend.address} on the page",
        lambda b: row_state(b, "web", backend.address) == "up",
    )
    assert row(browser, "web", backend.address).find_elements(By.CSS_SELECTOR, "button") == []
    assert console_errors(browser, allowed=("401",)) == []


def test_stats_page_shows_the_waiting_in_a_pools_and_a_routes_queue(
    browser: Any, http_backend: Callable[[str], Backend], proxyd: Callable[[str], Proxyd]
) -> None:
    from selenium.webdriver.common.by import By

    backend = http_backend("slow")
    admin_port, http_port = free_port(), free_port()
    proxyd(
        f"[pool web]\nservers = {backend.address} max_connections=1\nmax_queued = 5\n"
        "queue_timeout = 30s\n"
        "keepalive = 0\n\n"
        "[route reports]\npool = web\nstrip_prefix = on\nmax_in_flight = 1\nmax_queued = 5\n"
        "queue_timeout = 30s\n\n"
        f"[http front]\nlisten = tcp:{http_port}:interface=127.0.0.1\n"
        "routes =\n    path /reports/ -> route reports\n    path / -> pool web\n\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
    )

    statuses: list[int] = []

    def fetch(path: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=30) as answer:
            answer.read()
            statuses.append(answer.status)

    # Two requests on the route (one at the server, one in the route's queue), then one on the
    # pool's own route: the server is full, so it waits in the pool's queue.
    threads = [
        threading.Thread(target=fetch, args=(path,))
        for path in ("/reports/slow/4", "/reports/slow/4", "/slow/4")
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    try:
        browser.get(f"http://127.0.0.1:{admin_port}/")
        wait(
            browser,
            POLL + 3,
            "the pool's waiting in its caption",
            lambda b: "1 queued" in b.find_element(By.CSS_SELECTOR, ".pool-summary").text,
        )
        other = browser.find_element(By.CSS_SELECTOR, '#listeners td[data-column="other"]').text
        assert "route reports: 1 in flight, 1 queued" in other
        assert console_errors(browser) == []
    finally:
        for thread in threads:
            thread.join(30)
    assert statuses == [200, 200, 200], "every request waited its turn and was served"


def test_stats_page_shows_a_caches_hit_ratio(
    browser: Any, http_backend: Callable[[str], Backend], proxyd: Callable[[str], Proxyd]
) -> None:
    from selenium.webdriver.common.by import By

    backend = http_backend("cached")
    admin_port, http_port = free_port(), free_port()
    proxyd(
        f"[pool web]\nservers = {backend.address}\n\n"
        "[cache pages]\nmemory_size = 8MiB\n\n"
        f"[http front]\nlisten = tcp:{http_port}:interface=127.0.0.1\ncache = pages\n"
        "routes =\n    path / -> pool web\n\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
    )
    # One miss, then three hits: the backend's /headers sets the Cache-Control it is given.
    for _ in range(4):
        url = f"http://127.0.0.1:{http_port}/headers?Cache-Control=max-age%3D600"
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
    browser.get(f"http://127.0.0.1:{admin_port}/")
    wait(
        browser,
        POLL + 3,
        "the cache's row with its hit ratio",
        lambda b: (
            b.find_element(By.CSS_SELECTOR, '#caches td[data-column="ratio"]').text == "75.0 %"
        ),
    )
    row = browser.find_element(By.CSS_SELECTOR, "#caches tbody tr")
    assert row.find_element(By.CSS_SELECTOR, "th").text == "pages"
    assert row.find_element(By.CSS_SELECTOR, 'td[data-column="entries"]').text == "1"
    assert console_errors(browser) == []
