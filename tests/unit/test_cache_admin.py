"""The cache through the admin listener: Cache.purge and figures, the purge endpoint and
GET /api/v1/caches, the caches in the status document and as proxyd_cache_* metrics, and a
purge with workers (the master's disk tiers, every worker's memory tiers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from proxyd.admin.api import AdminResource
from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import cache_documents, hit_ratio
from proxyd.app import ProxydService
from proxyd.cache.instance import Cache, Purge
from proxyd.cache.memory import MemoryStore
from proxyd.cache.registry import CacheRegistry
from proxyd.config.cache_model import CacheConfig
from proxyd.config.load import loads
from proxyd.config.model import AdminConfig
from proxyd.workers.commands import PurgeCache

from .test_admin import CONFIG, READ_TOKEN, TOKEN, bearer, body, get, samples
from .test_cache_store_tiers import both, meta, store
from .test_workers import Harness, WorkerSide


def test_a_purge_names_exactly_one_of_url_prefix_or_tag() -> None:
    assert Purge(tag="a", soft=True).describe() == "tag a (soft)"
    assert Purge(url="http://h/").describe() == "url http://h/"
    for wrong in ({}, {"url": "http://h/", "tag": "a"}, {"prefix": ""}):
        with pytest.raises(ValueError, match="exactly one"):
            Purge(**wrong)


def test_a_workers_purge_of_a_cache_with_a_disk_clears_its_memory_and_counts_none(
    tmp_path: Path,
) -> None:
    tiers, memory, disk = both(tmp_path)
    cache = Cache(CacheConfig("main", path=str(tmp_path)), tiers)
    stored = store(tiers, meta(tags=("a",)))
    tiers.open(stored).close()  # type: ignore[union-attr]  # promoted into memory
    assert memory.entries == disk.entries == 1
    assert cache.purge(Purge(tag="a"), 0.0, shared=False) == 0
    assert (memory.entries, disk.entries, cache.counters.purged) == (0, 1, 0)
    assert cache.purge(Purge(tag="a"), 0.0) == 1
    assert (disk.entries, cache.counters.purged) == (0, 1)
    tiers.close()


def test_a_memory_only_cache_counts_its_own_purges_in_a_worker() -> None:
    memory = MemoryStore(1 << 20, 1 << 16)
    cache = Cache(CacheConfig("main"), memory)
    store(memory, meta(url="http://h/a"))
    store(memory, meta(key=b"k2", url="http://h/b"))
    assert cache.purge(Purge(prefix="http://h/"), 5.0, shared=False) == 2
    assert cache.counters.purged == 2 and memory.entries == 0


def test_figures_show_the_tiers_asked_for(tmp_path: Path) -> None:
    tiers, _, _ = both(tmp_path)
    cache = Cache(CacheConfig("main", path=str(tmp_path)), tiers)
    store(tiers, meta())
    cache.counters.hits = 4
    every = cache.figures()
    assert every["hits"] == 4 and every["disk_entries"] == 1 and every["disk_bytes"] > 0
    assert every["memory_entries"] == 0
    assert "disk_entries" not in cache.figures(disk=False)
    assert "memory_entries" not in cache.figures(memory=False)
    tiers.close()


def test_the_registry_opens_a_disk_tier_on_the_reactors_clock(tmp_path: Path) -> None:
    registry = CacheRegistry(MemoryReactorClock())
    opened = registry.cache(CacheConfig("main", path=str(tmp_path / "c")))
    assert registry.find("main") is opened and registry.find("other") is None
    assert registry.figures()["main"]["disk_entries"] == 0
    registry.close()


# The admin API, over a stub proxy.


class Stub:
    def __init__(self, caches: list[dict[str, Any]] | None = None) -> None:
        self.config = loads(CONFIG, "proxyd.ini")
        self.purges: list[tuple[str, Purge]] = []
        self.announced: list[tuple[str, Purge]] = []
        self.caches = caches or []

    def status(self) -> Any:
        return succeed({"caches": self.caches})

    def purge_source(self, name: str, purge: Purge) -> Any:
        if name != "main":
            raise KeyError(f"no cache {name}")
        self.purges.append((name, purge))
        return succeed(3)

    def announce_purge(self, name: str, purge: Purge) -> None:
        self.announced.append((name, purge))


def resource(stub: Stub, token: str | None = None) -> AdminResource:
    return AdminResource(stub, AdminConfig("tcp:0", token, READ_TOKEN if token else None))  # type: ignore[arg-type]


def purge(stub: Stub, path: bytes, content: bytes = b"", token: str | None = None) -> Any:
    request = get(resource(stub, token), path, bearer(token) if token else {}, b"POST", content)
    return request.responseCode or 200, json.loads(body(request))


def test_a_purge_by_url_is_written_as_the_cache_keeps_it_and_logged() -> None:
    stub = Stub()
    with capturedLogs() as events:
        answer = purge(
            stub,
            b"/api/v1/caches/main/purge",
            b'{"url": "HTTP://Example.COM:80/a/B?x=1#frag"}',
        )
    assert answer == (200, {"cache": "main", "purged": 3})
    assert stub.purges == [("main", Purge(url="http://example.com/a/B?x=1"))]
    assert (
        "cache main: purged 3 by url http://example.com/a/B?x=1, asked by admin API,"
        " 127.0.0.9 (no token)" in [formatEvent(e) for e in events]
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"prefix": "https://H.test:443/static/", "soft": true}',
            Purge(prefix="https://h.test/static/", soft=True),
        ),
        (b'{"prefix": "http://Api"}', Purge(prefix="http://api")),
        (b'{"url": "http://h.test:8080"}', Purge(url="http://h.test:8080/")),
        (b'{"tag": "Product-1"}', Purge(tag="Product-1")),
    ],
)
def test_purges_from_a_json_body(content: bytes, expected: Purge) -> None:
    stub = Stub()
    assert purge(stub, b"/api/v1/caches/main/purge", content)[0] == 200
    assert stub.purges == [("main", expected)]
    assert stub.announced == stub.purges  # sent to the cluster, if the cache has one


def test_a_purge_from_the_query_without_a_body() -> None:
    stub = Stub()
    request = get(resource(stub), b"/api/v1/caches/main/purge", method=b"POST")
    assert request.responseCode == 400  # no body, no query: nothing asked

    def with_args(args: dict[bytes, list[bytes]]) -> Any:
        made = resource(stub)
        original = made.render

        def render(request: Any) -> Any:
            request.args = args
            return original(request)

        made.render = render  # type: ignore[method-assign]
        return get(made, b"/api/v1/caches/main/purge", method=b"POST")

    assert with_args({b"tag": [b"a"], b"soft": [b"on"]}).responseCode in (None, 200)
    assert stub.purges == [("main", Purge(tag="a", soft=True))]
    assert with_args({b"tag": [b"a"], b"soft": [b"maybe"]}).responseCode == 400


@pytest.mark.parametrize(
    "content",
    [
        b"[1]",
        b"{}",
        b'{"url": "http://h/", "tag": "a"}',
        b'{"tag": ""}',
        b'{"tag": 7}',
        b'{"tag": "a", "soft": "yes"}',
        b'{"tag": "a", "hard": true}',
        b'{"url": "/relative"}',
        b'{"url": "ftp://h/x"}',
        b'{"prefix": "example.com/"}',
        b'{"url": "http:///nohost"}',
    ],
)
def test_a_bad_purge_is_a_400_saying_what_was_expected(content: bytes) -> None:
    stub = Stub()
    status, answer = purge(stub, b"/api/v1/caches/main/purge", content)
    assert status == 400 and answer["error"].startswith("expected ")
    assert stub.purges == []


def test_an_unknown_cache_is_a_404_and_the_read_token_may_not_purge() -> None:
    stub = Stub()
    assert purge(stub, b"/api/v1/caches/nope/purge", b'{"tag": "a"}') == (
        404,
        {"error": "no cache nope"},
    )
    request = get(
        resource(stub, TOKEN), b"/api/v1/caches/main/purge", bearer(READ_TOKEN), b"POST", b"{}"
    )
    assert request.responseCode == 403
    assert get(resource(stub), b"/api/v1/caches/main/purge").responseCode == 405
    assert stub.purges == []


def test_get_caches_lists_the_status_documents_caches() -> None:
    shown = [{"name": "main", "entries": 2}]
    request = get(resource(Stub(shown)), b"/api/v1/caches")
    assert json.loads(body(request)) == {"caches": shown}


# The real service: the status document, and a purge of what it stores.

CACHED = CONFIG.replace(
    "[http front]", "[cache main]\nmemory_size = 1MiB\n[cache spare]\n[http front]"
).replace("path / -> pool web", "path / -> pool web\ncache = main")


def service() -> ProxydService:
    return ProxydService(MemoryReactorClock(), loads(CACHED, "proxyd.ini"))


def test_a_purge_through_the_service_reaches_its_store_and_its_counters() -> None:
    proxy = service()
    main = proxy.caches.find("main")
    assert main is not None and proxy.caches.find("spare") is None
    store(main.store, meta(url="http://h/a", tags=("x",)))
    answers: list[int] = []
    proxy.purge_source("main", Purge(tag="x")).addCallback(answers.append)
    assert answers == [1] and main.counters.purged == 1 and main.store.entries == 0
    # A section no route uses is opened to be purged.
    proxy.purge_source("spare", Purge(tag="x")).addCallback(answers.append)
    assert answers == [1, 0] and proxy.caches.find("spare") is not None
    with pytest.raises(KeyError):
        proxy.purge_source("nope", Purge(tag="x"))
    documents: list[dict[str, Any]] = []
    proxy.status().addCallback(documents.append)
    [shown, spare] = documents[0]["caches"]
    assert (shown["name"], shown["entries"], shown["counters"]["purged"]) == ("main", 0, 1)
    assert shown["memory"] == {"entries": 0, "bytes": 0} and shown["disk"] is None
    assert spare["name"] == "spare" and shown["hit_ratio"] is None


def test_the_status_shows_the_disk_tier_when_there_is_one_and_every_section() -> None:
    config = loads(CACHED.replace("[cache spare]", "[cache spare]\npath = /tmp/x"), "p.ini")
    figures = {
        "main": {"hits": 6, "stale": 2, "misses": 8, "memory_entries": 3, "memory_bytes": 30},
        "spare": {"memory_entries": 5, "memory_bytes": 50, "disk_entries": 9, "disk_bytes": 90},
        "gone": {"hits": 1},
    }
    gone, main, spare = cache_documents(config, figures)
    assert (main["entries"], main["bytes"], main["disk"]) == (3, 30, None)
    assert main["hit_ratio"] == 0.5
    assert (spare["entries"], spare["bytes"]) == (9, 90)
    assert spare["memory"] == {"entries": 5, "bytes": 50}
    assert gone["name"] == "gone" and gone["memory"] is gone["disk"] is None
    assert hit_ratio({}) is None and hit_ratio({"hits": 1}) == 1.0


def test_the_caches_are_rendered_as_proxyd_cache_metrics() -> None:
    figures = {
        "main": {
            "hits": 6,
            "misses": 2,
            "stale": 1,
            "revalidated": 1,
            "collapsed": 3,
            "bypassed": 4,
            "stored": 2,
            "purged": 5,
            "bytes_served": 1000,
            "memory_entries": 2,
            "memory_bytes": 20,
        }
    }
    config = loads(CACHED, "p.ini")
    document = {
        "workers": 1,
        "listeners": [],
        "pools": [],
        "caches": cache_documents(config, figures),
    }
    found = samples(generate_latest(metrics_registry(document)).decode())
    main = (("cache", "main"),)
    assert found[("proxyd_cache_hits_total", main)] == 6
    assert found[("proxyd_cache_misses_total", main)] == 2
    assert found[("proxyd_cache_stale_total", main)] == 1
    assert found[("proxyd_cache_revalidated_total", main)] == 1
    assert found[("proxyd_cache_collapsed_total", main)] == 3
    assert found[("proxyd_cache_bypassed_total", main)] == 4
    assert found[("proxyd_cache_stored_total", main)] == 2
    assert found[("proxyd_cache_purged_total", main)] == 5
    assert found[("proxyd_cache_served_bytes_total", main)] == 1000
    assert found[("proxyd_cache_entries", main)] == 2
    assert found[("proxyd_cache_bytes", main)] == 20
    assert found[("proxyd_cache_entries", (("cache", "spare"),))] == 0


# Workers.


def test_a_worker_purges_its_memory_tiers_and_an_unknown_cache_purges_nothing() -> None:
    side = WorkerSide()
    calls: list[Any] = []

    def purge_cache(name: str, purge: Purge, shared: bool = True) -> int:
        calls.append((name, purge, shared))
        if name != "main":
            raise KeyError(name)
        return 2

    side.proxy.purge_cache = purge_cache  # type: ignore[attr-defined]
    fields = {"url": None, "prefix": "http://h/", "tag": None, "soft": True}
    assert side.call(PurgeCache, name="main", purge=fields) == [{"purged": 2}]
    assert side.call(PurgeCache, name="other", purge=fields) == [{"purged": 0}]
    assert calls[0] == ("main", Purge(prefix="http://h/", soft=True), False)


WORKERS_CONFIG = """\
[pool web]
servers = 127.0.0.1:9001
[cache main]
path = {path}
[http front]
listen = tcp:0:interface=127.0.0.1
routes =
    path / -> pool web
cache = main
"""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(config=WORKERS_CONFIG.format(path=tmp_path / "cache"))
    yield made
    made.close()


def test_with_workers_the_master_purges_the_disk_and_every_worker_its_memory(
    workers: Harness,
) -> None:
    workers.start()
    workers.reactor.flush()
    main = workers.proxy.caches.find("main")
    assert main is not None, "the master opened the disk tier with the routes"
    store(main.store, meta(url="http://h/a"))
    asked: list[Any] = []
    for n in (0, 1):

        def purge_cache(name: str, purge: Purge, shared: bool = True, n: int = n) -> int:
            asked.append((n, name, purge, shared))
            return n  # a memory-only cache's counts, say

        workers.worker(n).proxy.purge_cache = purge_cache  # type: ignore[attr-defined]
    answers: list[int] = []
    workers.master.purge_cache("main", Purge(prefix="http://h/")).addCallback(answers.append)
    workers.reactor.flush()
    assert answers == [1 + 0 + 1], "the disk's one response, and what each worker counted"
    assert sorted(asked) == [
        (0, "main", Purge(prefix="http://h/"), False),
        (1, "main", Purge(prefix="http://h/"), False),
    ]
    assert main.store.entries == 0 and main.counters.purged == 1
    with pytest.raises(KeyError):
        workers.master.purge_cache("nope", Purge(tag="a"))


def test_with_workers_the_disk_figures_are_the_masters_counted_once(workers: Harness) -> None:
    workers.start()
    workers.reactor.flush()
    main = workers.proxy.caches.find("main")
    assert main is not None
    store(main.store, meta(url="http://h/a"))
    for n in (0, 1):
        workers.worker(n).proxy.counters_value = {
            "caches": {"main": {"hits": 2, "memory_entries": 1, "memory_bytes": 10}}
        }
    answers: list[Any] = []
    workers.master.counters().addCallback(answers.append)
    workers.reactor.flush()
    [figures] = [answer["caches"]["main"] for answer in answers]
    assert figures["hits"] == 4 and figures["memory_entries"] == 2
    assert figures["disk_entries"] == 1, "the master's own, not one per worker"
