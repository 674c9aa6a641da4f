"""CORS in a real headless Chromium: a page on one origin (a proxyd listener answering it with
`respond`) calls proxyd on another origin (another port) with fetch(), in front of the demo
HTTP backend. Allowed calls, credentialed (the page's cookie goes along, the answer and an
exposed header are readable) and not; refused ones (origin, method, header, credentials the
policy does not allow) fail with a TypeError, as browsers fail them; a preflight is answered
once within its max age, never by the backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.harness import Backend, Proxyd, free_port, wait_until

pytestmark = pytest.mark.browser

PAGE = "<!doctype html><title>app</title><p>the app</p>"

FETCH = """
const [url, init, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(url, init).then(
  async (response) => done({
    ok: true,
    status: response.status,
    body: await response.text(),
    backend: response.headers.get("X-Backend"),
  }),
  (error) => done({ok: false, error: error.name}),
);
"""


def config(backend: Backend, app: int, api: int) -> str:
    origin = f"http://127.0.0.1:{app}"
    return f"""
[pool web]
servers = {backend.address}

[cors app]
origins = {origin}
methods = GET POST PUT
headers = Content-Type
expose_headers = X-Backend
credentials = on
max_age = 10m

[cors public]
origins = {origin}

[cors elsewhere]
origins = https://elsewhere.example

[route shared]
pool = web
strip_prefix = on
cors = app

[route public]
pool = web
strip_prefix = on
cors = public

[route other]
pool = web
strip_prefix = on
cors = elsewhere

[route page]
respond = 200 "{PAGE}"
content_type = text/html; charset=utf-8

; header_timeout: the browser's idle preconnected sockets do not hold proxyd's stop.
[http app]
listen = tcp:{app}:interface=127.0.0.1
header_timeout = 1s
routes =
    path / -> route page

[http api]
listen = tcp:{api}:interface=127.0.0.1
header_timeout = 1s
routes =
    path /shared/ -> route shared
    path /public/ -> route public
    path /other/  -> route other
"""


class Site:
    """The page's origin and the API's, and a browser on the page."""

    def __init__(self, browser: Any, proxy: Proxyd, app: int, api: int) -> None:
        self.browser, self.proxy, self.app, self.api = browser, proxy, app, api

    def fetch(self, path: str, **init: Any) -> dict[str, Any]:
        """fetch() from the page to the API: its status, body and X-Backend as the script
        reads them, or the error's name."""
        result: dict[str, Any] = self.browser.execute_async_script(
            FETCH, f"http://127.0.0.1:{self.api}{path}", init
        )
        return result

    def records(self, method: str, uri: str) -> list[dict[str, Any]]:
        return [r for r in self.proxy.access_records() if (r["method"], r["uri"]) == (method, uri)]


@pytest.fixture
def site(
    browser: Any, http_backend: Callable[[str], Backend], proxyd: Callable[..., Proxyd]
) -> Site:
    backend = http_backend("web-1")
    app, api = free_port(), free_port()
    proxy = proxyd(config(backend, app, api))
    browser.set_script_timeout(20)
    browser.get(f"http://127.0.0.1:{app}/")
    browser.execute_script('document.cookie = "session=s3cret; path=/"')
    return Site(browser, proxy, app, api)


def test_a_credentialed_call_sends_the_cookie_and_reads_the_answer(site: Site) -> None:
    result = site.fetch(
        "/shared/echo",
        method="PUT",
        credentials="include",
        headers={"Content-Type": "application/json"},
        body='{"a": 1}',
    )
    assert result["ok"] and result["status"] == 200, result
    echoed = json.loads(result["body"])
    seen = {name.lower(): value for name, value in echoed["headers"]}
    assert echoed["method"] == "PUT" and seen["cookie"] == "session=s3cret"
    assert result["backend"] == "web-1"  # exposed by expose_headers
    # The preflight was answered by proxyd, never by the backend.
    [preflight] = wait_until(lambda: site.records("OPTIONS", "/shared/echo"), 10, "the preflight")
    assert preflight["status"] == 204 and preflight["upstream"] is None


def test_a_call_without_credentials_sends_no_cookie(site: Site) -> None:
    result = site.fetch("/public/echo", credentials="omit")
    assert result["ok"] and result["status"] == 200, result
    seen = {name.lower() for name, _ in json.loads(result["body"])["headers"]}
    assert "cookie" not in seen
    assert result["backend"] is None  # not exposed: the script cannot read it


def test_a_preflight_is_kept_for_its_max_age(site: Site) -> None:
    for _ in range(3):
        result = site.fetch(
            "/shared/upload",
            method="PUT",
            credentials="include",
            headers={"Content-Type": "application/json"},
            body="{}",
        )
        assert result["ok"] and result["status"] == 200, result
    wait_until(lambda: len(site.records("PUT", "/shared/upload")) == 3, 10, "three PUTs")
    assert len(site.records("OPTIONS", "/shared/upload")) == 1


@pytest.mark.parametrize(
    ("path", "init"),
    [
        ("/other/echo", {}),  # an origin the route's policy does not list
        ("/shared/echo", {"method": "DELETE"}),  # a method it does not allow
        ("/shared/echo", {"headers": {"X-Custom": "1"}}),  # a request header it does not allow
        ("/public/echo", {"credentials": "include"}),  # credentials it does not allow
    ],
)
def test_refused_calls_fail_in_the_browser(site: Site, path: str, init: dict[str, Any]) -> None:
    result = site.fetch(path, **init)
    assert result == {"ok": False, "error": "TypeError"}
