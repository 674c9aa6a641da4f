"""The cache through the admin API in the real proxyd (docs/cache.md, "Admin API"): purges by
URL, prefix and tag, a soft purge and the revalidation after it, the caches' figures in the
status document and the metrics, and with `workers = 2` a purge that reaches both workers'
memory tiers and the disk tier they share. The origin is tests/integration/cache_origin.py
(its X-Count says how often it was asked)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, Proxyd, free_port, wait_until
from .test_cache import origin, origin_count, q

pytestmark = pytest.mark.integration

__all__ = ["origin"]  # the fixture, used by name


def config(port: int, admin: int, origin: Backend, cache: str = "") -> str:
    return f"""\
[pool origin]
servers = {origin.address}

[cache main]
memory_size = 16MiB
{cache}

[cache spare]
memory_size = 1MiB

[route cached]
pool = origin
cache = main

[route direct]
pool = origin

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path /__ -> route direct
    path /   -> route cached

[admin]
listen = tcp:{admin}:interface=127.0.0.1
"""


class Cached:
    """A proxyd with a cache in front of the origin, and its admin listener."""

    def __init__(self, proxyd: Proxyd, port: int, admin: int) -> None:
        self.proxyd = proxyd
        self.port = port
        self.admin = admin

    def url(self, target: str) -> str:
        """The effective URI the cache keeps for `target` (what a purge by URL names)."""
        return f"http://127.0.0.1:{self.port}{target}"

    def get(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """`target` on a new connection (with workers, either may serve it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", target)
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def count(self, target: str) -> int:
        """How often the origin was asked for `target`."""
        return origin_count(self.proxyd, target)

    def api(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}{path}",
            data=data,
            method="GET" if body is None and "purge" not in path else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def purge(self, **fields: Any) -> Any:
        status, answer = self.api("/api/v1/caches/main/purge", fields)
        assert status == 200, answer
        return answer["purged"]

    def cache(self, name: str = "main") -> dict[str, Any]:
        _, answer = self.api("/api/v1/caches")
        [found] = [cache for cache in answer["caches"] if cache["name"] == name]
        return found

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            return r.read().decode()


@pytest.fixture
def cached(proxyd: Callable[..., Proxyd], origin: Backend) -> Callable[..., Cached]:
    def start(cache: str = "", workers: int = 1) -> Cached:
        port, admin = free_port(), free_port()
        text = config(port, admin, origin, cache)
        if workers > 1:
            text = f"[proxyd]\nworkers = {workers}\naccess_log = off\n\n{text}"
        relay = proxyd(text)
        for index in range(workers if workers > 1 else 0):
            relay.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
        relay.port = port  # type: ignore[attr-defined]  # for test_cache's origin_count
        return Cached(relay, port, admin)

    return start


FRESH = "Cache-Control: max-age=600"


def stored(proxy: Cached, target: str) -> None:
    """Fetch `target` twice: the second is a hit."""
    proxy.get(target)
    _, headers, _ = proxy.get(target)
    assert headers["cache-status"].startswith("proxyd; hit"), headers


def hit(proxy: Cached, target: str) -> bool:
    return proxy.get(target)[1]["cache-status"].startswith("proxyd; hit")


def test_a_purge_by_url_removes_that_response_alone(cached: Callable[..., Cached]) -> None:
    proxy = cached()
    gone, kept = "/a?" + q(FRESH), "/b?" + q(FRESH)
    stored(proxy, gone)
    stored(proxy, kept)
    # The host as the client wrote it, in any case: the API writes it as the cache keeps it.
    assert proxy.purge(url=proxy.url(gone).replace("http://", "HTTP://")) == 1
    assert not hit(proxy, gone) and proxy.count(gone) == 2
    assert hit(proxy, kept) and proxy.count(kept) == 1
    assert proxy.purge(url=proxy.url(gone) + "&other=1") == 0
    shown = proxy.cache()
    assert shown["counters"]["purged"] == 1
    assert shown["entries"] == 2 and shown["bytes"] > 0
    assert shown["hit_ratio"] == pytest.approx(3 / 6)  # 3 hits, 3 misses
    metrics = proxy.metrics()
    assert 'proxyd_cache_purged_total{cache="main"} 1.0' in metrics
    assert 'proxyd_cache_hits_total{cache="main"} 3.0' in metrics
    assert 'proxyd_cache_entries{cache="main"} 2.0' in metrics


def test_a_purge_by_prefix_removes_every_response_under_it(
    cached: Callable[..., Cached],
) -> None:
    proxy = cached()
    under = ["/p/1?" + q(FRESH), "/p/2/deeper?" + q(FRESH)]
    beside = "/pq?" + q(FRESH)
    for target in [*under, beside]:
        stored(proxy, target)
    assert proxy.purge(prefix=proxy.url("/p/")) == 2
    for target in under:
        assert not hit(proxy, target) and proxy.count(target) == 2
    assert hit(proxy, beside)


def test_a_purge_by_tag_removes_the_responses_that_carry_it(
    cached: Callable[..., Cached],
) -> None:
    proxy = cached()
    both, only_b, none = (
        "/t1?" + q(FRESH, "Surrogate-Key: a b"),
        "/t2?" + q(FRESH, "Surrogate-Key: b"),
        "/t3?" + q(FRESH),
    )
    for target in (both, only_b, none):
        stored(proxy, target)
    assert proxy.purge(tag="a") == 1
    assert not hit(proxy, both) and hit(proxy, only_b)
    # The same through the query, without a body.
    status, answer = proxy.api("/api/v1/caches/main/purge?tag=b")
    assert (status, answer) == (200, {"cache": "main", "purged": 2})  # t1 stored again, t2
    assert not hit(proxy, only_b) and hit(proxy, none)


def test_a_soft_purge_marks_stale_and_the_next_request_revalidates(
    cached: Callable[..., Cached],
) -> None:
    proxy = cached()
    target = "/s?" + q(FRESH, etag="v1")
    _, _, body = proxy.get(target)
    assert proxy.purge(url=proxy.url(target), soft=True) == 1
    assert proxy.cache()["entries"] == 1, "still stored, stale"
    status, headers, again = proxy.get(target)
    assert status == 200 and again == body, "served from the store after a 304"
    assert "fwd=stale; fwd-status=304" in headers["cache-status"]
    assert proxy.count(target) == 2
    assert hit(proxy, target) and proxy.count(target) == 2, "fresh again"
    assert proxy.cache()["counters"]["revalidated"] == 1


def test_unknown_caches_and_bad_purges_are_refused(cached: Callable[..., Cached]) -> None:
    proxy = cached()
    status, answer = proxy.api("/api/v1/caches/nope/purge", {"tag": "a"})
    assert (status, answer) == (404, {"error": "no cache nope"})
    status, answer = proxy.api("/api/v1/caches/main/purge", {"tag": "a", "url": "http://x/"})
    assert status == 400 and "exactly one of" in answer["error"]
    # A [cache] no route uses is opened to be purged.
    status, answer = proxy.api("/api/v1/caches/spare/purge", {"prefix": "http://"})
    assert (status, answer) == (200, {"cache": "spare", "purged": 0})
    assert [cache["name"] for cache in proxy.api("/api/v1/caches")[1]["caches"]] == [
        "main",
        "spare",
    ]


def spread(
    proxy: Cached, target: str, enough: Callable[[list[dict[str, str]]], bool]
) -> list[dict[str, str]]:
    """Ask for `target` on new connections (the kernel spreads them over the workers) until
    `enough` of the answers' fields so far; those fields."""
    seen: list[dict[str, str]] = []

    def asked() -> bool:
        seen.append(proxy.get(target)[1])
        return enough(seen)

    wait_until(asked, 20, f"answers for {target} from both workers", interval=0)
    return seen


def test_with_workers_a_purge_reaches_every_workers_memory_tier(
    cached: Callable[..., Cached],
) -> None:
    proxy = cached(workers=2)
    target = "/w?" + q(FRESH)
    # Each worker has its own memory tier: each asks the origin once, then hits.
    spread(proxy, target, lambda seen: proxy.count(target) == 2)
    assert proxy.cache()["entries"] == 2, "one copy in each worker"
    assert proxy.purge(url=proxy.url(target)) == 2
    after = spread(proxy, target, lambda seen: proxy.count(target) == 4)
    assert all(int(headers["x-count"]) >= 3 for headers in after), "no copy outlived it"
    shown = proxy.cache()
    assert shown["counters"]["purged"] == 2 and shown["counters"]["misses"] == 4


def test_with_workers_a_disk_tier_is_purged_and_counted_once(
    cached: Callable[..., Cached], tmp_path: Path
) -> None:
    proxy = cached(f"path = {tmp_path / 'cache'}", workers=2)
    target = "/d?" + q(FRESH)
    # The first fetch is stored on the disk both workers share; each then serves it (and
    # copies it into its memory tier).
    spread(proxy, target, lambda seen: len(seen) >= 20)
    assert proxy.count(target) == 1
    shown = proxy.cache()
    assert shown["entries"] == 1 and shown["disk"]["entries"] == 1, "the disk counted once"
    assert shown["memory"]["entries"] >= 1
    assert proxy.purge(url=proxy.url(target)) == 1
    answers = spread(proxy, target, lambda seen: len(seen) >= 20)
    assert all(int(headers["x-count"]) >= 2 for headers in answers), "no copy outlived it"
    assert proxy.count(target) == 2
    assert 'proxyd_cache_entries{cache="main"} 1.0' in proxy.metrics()
    assert proxy.cache()["counters"]["purged"] == 1
