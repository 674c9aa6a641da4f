"""Purge fan-out across real proxyd nodes through a real redis-server (docs/cache.md,
"Purging across nodes"): a purge on one node seen on the others (its propagation time
printed), a node stopped during a purge that catches up when it starts again, and a Redis
that stops (nodes serve and purge locally) and comes back (the fan-out resumes)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, Proxyd, free_port, wait_until
from .redis_peer import PASSWORD, REDIS, RedisServer
from .test_cache import origin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS is None, reason="redis-server is missing (make test installs it)"),
]

__all__ = ["origin"]  # the fixture, used by name

HOST = "cdn.test"
"""The Host every client sends, whichever node it reaches: one effective URI on all."""
FRESH = "/obj?h=Cache-Control%3A+max-age%3D600&h=Surrogate-Key%3A+group-1"


@pytest.fixture
def redis(processes: Any, tmp_path: Path) -> RedisServer:
    directory = tmp_path / "redis"
    directory.mkdir()
    return RedisServer(processes, directory).start()


class Node:
    def __init__(self, proxyd: Proxyd, port: int, admin: int) -> None:
        self.proxyd, self.port, self.admin = proxyd, port, admin

    def get(self, target: str, method: str = "GET", **headers: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, headers={"Host": HOST, **headers})
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("Cache-Status") or ""
        finally:
            conn.close()

    def hit(self, target: str = FRESH) -> bool:
        return self.get(target)[1].startswith("proxyd; hit")

    def store(self, target: str = FRESH) -> None:
        self.get(target)
        assert self.hit(target)

    def purge(self, **fields: Any) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/api/v1/caches/main/purge",
            data=json.dumps(fields).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(json.load(answer)["purged"])

    def entries(self) -> int:
        url = f"http://127.0.0.1:{self.admin}/api/v1/caches"
        with urllib.request.urlopen(url, timeout=10) as answer:
            caches = json.load(answer)["caches"]
        return int(next(c["entries"] for c in caches if c["name"] == "main"))

    def counters(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin}/api/v1/caches"
        with urllib.request.urlopen(url, timeout=10) as answer:
            caches = json.load(answer)["caches"]
        return next(c["counters"] for c in caches if c["name"] == "main")


def node_config(port: int, admin: int, origin: Backend, redis: RedisServer, cache: str) -> str:
    return f"""\
[pool origin]
servers = {origin.address}

[cache main]
memory_size = 16MiB
purge_method = on
cluster = {redis.url()}
cluster_name = edge
{cache}

[route cached]
pool = origin
cache = main

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path / -> route cached

[admin]
listen = tcp:{admin}:interface=127.0.0.1
"""


@pytest.fixture
def nodes(
    proxyd: Callable[..., Proxyd], origin: Backend, redis: RedisServer, tmp_path: Path
) -> Callable[..., Node]:
    def start(cache: str = "", port: int = 0, admin: int = 0, workers: int = 1) -> Node:
        port, admin = port or free_port(), admin or free_port()
        text = node_config(port, admin, origin, redis, cache)
        if workers > 1:
            text = f"[proxyd]\nworkers = {workers}\naccess_log = off\n\n{text}"
        node = proxyd(text)
        for index in range(workers if workers > 1 else 0):
            node.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
        return Node(node, port, admin)

    return start


def applied(node: Node) -> int:
    return node.counters().get("cluster_applied", 0)


def test_a_purge_on_one_node_reaches_the_others(nodes: Callable[..., Node]) -> None:
    a, b, c = nodes(), nodes(), nodes()
    timings = []
    for kind, fields in (
        ("url", {"url": f"http://{HOST}{FRESH}"}),
        ("tag soft", {"tag": "group-1", "soft": True}),
        ("prefix", {"prefix": f"http://{HOST}/obj"}),
    ):
        for node in (a, b, c):
            node.store()
        before = {id(n): applied(n) for n in (b, c)}
        began = time.monotonic()
        assert a.purge(**fields) == 1
        wait_until(
            lambda before=before: all(applied(n) > before[id(n)] for n in (b, c)), 10, "the purge"
        )
        timings.append(time.monotonic() - began)
        assert not any(node.hit() for node in (a, b, c)), kind
        assert applied(a) == 0  # its own purge is not applied twice
    # The PURGE method's purges go out too.
    for node in (a, b, c):
        node.store()
    assert b.get(FRESH, method="PURGE")[0] == 200
    wait_until(lambda: not a.hit() and not c.hit(), 10, "the PURGE request's purge")
    print(
        f"\npurge propagation (admin API purge answered -> applied on 2 other nodes): "
        f"{', '.join(f'{t * 1000:.1f} ms' for t in timings)}"
    )
    assert max(timings) < 2.0
    for node in (a, b, c):
        assert PASSWORD not in node.proxyd.log()


def test_a_node_that_was_stopped_catches_up_from_the_log(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    disk = f"path = {tmp_path / 'c-cache'}"
    a, c = nodes(), nodes(disk)
    a.store()
    c.store()
    a.purge(url="http://cdn.test/warmup")  # gives c a last id to remember
    wait_until(lambda: (tmp_path / "c-cache" / "cluster-last-id").exists(), 10, "c's last id")
    c.proxyd.terminate()
    assert a.purge(tag="group-1") == 1
    c2 = nodes(disk, port=c.port, admin=c.admin)
    wait_until(lambda: applied(c2) >= 1, 10, "c to catch up")
    c2.proxyd.wait_for_log(r"purges of cluster edge applied after")
    assert not c2.hit()


def test_a_node_away_for_longer_than_the_log_marks_everything_stale(
    nodes: Callable[..., Node], tmp_path: Path, redis: RedisServer
) -> None:
    disk = f"path = {tmp_path / 'c-cache'}\ncluster_log = 10"
    a, c = nodes("cluster_log = 10"), nodes(disk)
    c.store()
    a.purge(url="http://cdn.test/warmup")
    wait_until(lambda: applied(c) >= 1, 10, "c to apply a purge (and keep its id and number)")
    c.proxyd.terminate()
    for n in range(250):  # Redis trims whole blocks of 100 entries (MAXLEN ~)
        a.purge(url=f"http://cdn.test/other-{n}")
    assert int(redis.cli("XLEN", "proxyd:purge:edge")) < 250
    c2 = nodes(disk, port=c.port, admin=c.admin)
    c2.proxyd.wait_for_log(r"was trimmed after .* purges were lost, every response is marked")
    wait_until(lambda: c2.counters().get("cluster_gaps") == 1, 10, "the gap counted")
    status, cache_status = c2.get(FRESH)
    assert status == 200 and "fwd=stale" in cache_status  # revalidated, not served as fresh


def test_redis_down_nodes_purge_locally_and_the_fan_out_resumes(
    nodes: Callable[..., Node], redis: RedisServer
) -> None:
    a, b = nodes(), nodes()
    a.store()
    b.store()
    start = a.proxyd.log_offset()
    redis.stop()
    assert a.purge(url=f"http://{HOST}{FRESH}") == 1  # answered at once, purged here
    assert not a.hit() and b.hit()
    a.proxyd.wait_for_log(r"purge fan-out of cluster edge: Redis at .* unreachable", start=start)
    redis.start()
    wait_until(lambda: applied(b) >= 1, 30, "the purge kept while Redis was down")
    a.proxyd.wait_for_log(r"Redis at .* answers again", start=start)
    b.store()
    a.store()
    assert a.purge(tag="group-1") == 1
    wait_until(lambda: not b.hit(), 10, "the fan-out after Redis came back")
    assert len([1 for line in a.proxyd.log()[start:].splitlines() if "unreachable" in line]) == 1


def test_with_workers_the_master_applies_a_purge_in_every_worker(
    nodes: Callable[..., Node],
) -> None:
    a, b = nodes(), nodes(workers=2)
    # Each worker's memory tier holds its own copy once it served the URL (connections go
    # to either worker): the entries of the node are the sum of its workers'.
    wait_until(lambda: b.get(FRESH) and b.entries() == 2, 20, "both workers to store it")
    a.store()
    assert a.purge(url=f"http://{HOST}{FRESH}") == 1
    wait_until(lambda: b.entries() == 0, 10, "both workers' memory tiers purged")
    assert applied(b) == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{b.admin}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'proxyd_cache_cluster_applied_total{cache="main"} 1.0' in metrics
    # A PURGE request that a worker serves is sent by that worker.
    a.store()
    assert b.get(FRESH)[0] == 200 and b.get(FRESH, method="PURGE")[0] in (200, 404)
    wait_until(lambda: not a.hit(), 10, "the worker's PURGE to reach node a")


def test_over_tls_with_a_password(
    proxyd: Callable[..., Proxyd], origin: Backend, processes: Any, tmp_path: Path
) -> None:
    from tests.certs import TestCA

    ca = TestCA("redis CA")
    issued = ca.issue(["localhost", "127.0.0.1"])
    cert = issued.write(tmp_path / "redis.pem", with_key=False)
    key = issued.write_key(tmp_path / "redis.key")
    directory = tmp_path / "redis-tls"
    directory.mkdir()
    redis = RedisServer(processes, directory, tls=(cert, key)).start()
    assert redis.url().startswith("rediss://")
    extra = f"cluster_ca = {ca.write_ca(tmp_path / 'ca.pem')}"
    a, b = (
        Node(proxyd(node_config(port, admin, origin, redis, extra)), port, admin)
        for port, admin in ((free_port(), free_port()), (free_port(), free_port()))
    )
    b.store()
    assert a.purge(url=f"http://{HOST}{FRESH}") == 0
    wait_until(lambda: applied(b) >= 1, 10, "the purge over TLS")
    assert not b.hit()
    for node in (a, b):
        assert PASSWORD not in node.proxyd.log() and "unreachable" not in node.proxyd.log()
