"""The cache in the real proxyd (docs/cache.md), in front of tests/integration/cache_origin.py,
whose responses say how often the origin was asked (X-Count, /__count)."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Backend, ProcessList, Proxyd, free_port, start_proxyd, wait_until

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


@pytest.fixture
def origin(processes: ProcessList) -> Backend:
    process = processes.start("cache-origin", [sys.executable, HERE / "cache_origin.py"])
    match = process.wait_for_output(r"PORT (\d+)\n", 15)
    return Backend(process, int(match.group(1)))


def config(port: int, origin: Backend, cache: str = "", route: str = "") -> str:
    return f"""\
[pool origin]
servers = {origin.address}

[cache main]
memory_size = 16MiB
use_stale = error timeout http_503
purge_method = on
{cache}

[route cached]
pool = origin
cache = main
{route}

[route direct]
pool = origin

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path /__ -> route direct
    path /   -> route cached
"""


@pytest.fixture
def proxy(processes: ProcessList, tmp_path: Path, origin: Backend) -> Callable[..., Proxyd]:
    def start(cache: str = "", route: str = "") -> Proxyd:
        port = free_port()
        proxyd = start_proxyd(processes, tmp_path, config(port, origin, cache, route))
        proxyd.port = port  # type: ignore[attr-defined]
        return proxyd

    return start


def get(
    proxyd: Proxyd, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxyd.port, timeout=10)  # type: ignore[attr-defined]
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def origin_count(proxyd: Proxyd, target: str) -> int:
    _, _, body = get(proxyd, "/__count?of=" + urllib.parse.quote(target, safe=""))
    return int(body)


def q(*fields: str, **params: str) -> str:
    parts = [("h", field) for field in fields] + list(params.items())
    return urllib.parse.urlencode(parts)


def test_fresh_response_served_from_cache_with_age_and_cache_status(
    proxy: Callable[..., Proxyd],
) -> None:
    proxyd = proxy()
    target = "/fresh?" + q("Cache-Control: max-age=60")
    status, headers, body = get(proxyd, target)
    assert status == 200 and headers["x-count"] == "1"
    assert headers["cache-status"].startswith("proxyd; fwd=uri-miss; fwd-status=200; stored")
    status, headers, again = get(proxyd, target)
    assert status == 200 and again == body and headers["x-count"] == "1"
    assert headers["cache-status"].startswith("proxyd; hit; ttl=")
    assert "age" in headers
    status, headers, _ = get(proxyd, target, method="HEAD")
    assert status == 200 and headers["content-length"] == str(len(body))
    assert origin_count(proxyd, target) == 1


def test_no_store_private_and_set_cookie_are_not_stored(proxy: Callable[..., Proxyd]) -> None:
    proxyd = proxy()
    for field in ("Cache-Control: no-store", "Cache-Control: private", "Set-Cookie: a=b"):
        target = "/ns?" + q("Cache-Control: max-age=60", field)
        get(proxyd, target)
        _, headers, _ = get(proxyd, target)
        assert headers["x-count"] == "2", field
        assert "fwd=" in headers["cache-status"]


def test_stale_response_revalidated_with_etag_and_304_freshens(
    proxy: Callable[..., Proxyd],
) -> None:
    proxyd = proxy()
    target = "/reval?" + q("Cache-Control: max-age=0", etag="v1")
    status, headers, body = get(proxyd, target)
    assert status == 200
    status, headers, again = get(proxyd, target)
    assert status == 200 and again == body, proxyd.log()
    assert "fwd=stale; fwd-status=304" in headers["cache-status"]
    assert origin_count(proxyd, target) == 2  # the 304 was the second request
    status, headers, _ = get(proxyd, target, {"If-None-Match": '"v1"'})
    assert status == 304


def test_range_answered_from_stored_body(proxy: Callable[..., Proxyd]) -> None:
    proxyd = proxy()
    target = "/range?" + q("Cache-Control: max-age=60", size="1000")
    get(proxyd, target)
    status, headers, body = get(proxyd, target, {"Range": "bytes=10-19"})
    assert status == 206 and body == b"x" * 10
    assert headers["content-range"] == "bytes 10-19/1000"
    status, headers, _ = get(proxyd, target, {"Range": "bytes=5000-"})
    assert status == 416 and headers["content-range"] == "bytes */1000"
    assert origin_count(proxyd, target) == 1


def test_concurrent_misses_collapse_into_one_fetch_read_while_it_streams(
    proxy: Callable[..., Proxyd],
) -> None:
    proxyd = proxy()
    target = "/collapse?" + q("Cache-Control: max-age=60", size="200000", slow="1")
    results: list[tuple[int, bytes, str]] = []

    def fetch() -> None:
        status, headers, body = get(proxyd, target)
        results.append((status, body, headers["cache-status"]))

    threads = [threading.Thread(target=fetch) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 5
    assert all(status == 200 and body == b"x" * 200000 for status, body, _ in results)
    assert sum("collapsed" in status for _, _, status in results) >= 3, [s for _, _, s in results]
    assert origin_count(proxyd, target) == 1


def test_unsafe_method_invalidates_the_stored_response(proxy: Callable[..., Proxyd]) -> None:
    proxyd = proxy()
    target = "/inval?" + q("Cache-Control: max-age=60")
    get(proxyd, target)
    _, headers, _ = get(proxyd, target)
    assert headers["cache-status"].startswith("proxyd; hit")
    status, _, _ = get(proxyd, target, method="POST")
    assert status == 200
    _, headers, _ = get(proxyd, target)
    assert "fwd=uri-miss" in headers["cache-status"]


def test_stale_served_when_origin_fails_and_purge_method(
    proxy: Callable[..., Proxyd], origin: Backend
) -> None:
    proxyd = proxy()
    target = "/down?" + q("Cache-Control: max-age=0", etag="e")
    get(proxyd, target)
    origin.kill()
    status, headers, body = get(proxyd, target)
    assert status == 200 and body.startswith(b"/down #1")
    assert "fwd=stale" in headers["cache-status"]
    status, _, body = get(proxyd, target, method="PURGE")
    assert status == 200 and b'"purged": 1' in body
    status, _, _ = get(proxyd, target)
    assert status == 502


def test_vary_keeps_one_variant_per_normalised_field(proxy: Callable[..., Proxyd]) -> None:
    proxyd = proxy()
    target = "/vary?" + q("Cache-Control: max-age=60", "Vary: Accept-Language")
    get(proxyd, target, {"Accept-Language": "en, fr"})
    _, headers, _ = get(proxyd, target, {"Accept-Language": "fr,en"})
    assert headers["cache-status"].startswith("proxyd; hit")
    _, headers, _ = get(proxyd, target, {"Accept-Language": "de"})
    assert "fwd=vary-miss" in headers["cache-status"]
    assert origin_count(proxyd, target) == 2


def test_curl_sees_hit(proxy: Callable[..., Proxyd]) -> None:
    proxyd = proxy()
    url = f"http://127.0.0.1:{proxyd.port}/curl?" + q("Cache-Control: max-age=60")  # type: ignore[attr-defined]
    for _ in range(2):
        out = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", url],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    assert "cache-status: proxyd; hit" in out.lower()
    wait_until(lambda: origin_count(proxyd, "/curl?" + url.split("?", 1)[1]) == 1, 5, "one fetch")
