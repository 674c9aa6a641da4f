"""Servers' admin states shared by proxyd nodes through a real redis-server ([admin] cluster,
docs/operations.md "Admin state across nodes"): a drain on one node seen on the others, and
taken by a node that starts later."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, ProcessList, Proxyd, free_port, wait_until
from .redis_peer import PASSWORD, REDIS, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS is None, reason="redis-server is missing (make test installs it)"),
]


@pytest.fixture
def redis(processes: ProcessList, tmp_path: Path) -> RedisServer:
    directory = tmp_path / "redis"
    directory.mkdir()
    return RedisServer(processes, directory).start()


def config(port: int, admin: int, backend: Backend, redis: RedisServer) -> str:
    return f"""\
[pool web]
servers = {backend.address}

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path / -> pool web

[admin]
listen = tcp:{admin}:interface=127.0.0.1
cluster = {redis.url()}
cluster_name = edge
"""


def api(admin: int, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def admin_state(admin: int, server: str) -> str:
    status = api(admin, "/api/v1/status")
    pool = next(p for p in status["pools"] if p["name"] == "web")
    return str(next(s["admin"] for s in pool["servers"] if s["name"] == server))


def test_a_drain_on_one_node_reaches_the_others_and_a_node_started_later(
    proxyd: Callable[..., Proxyd], http_backend: Backend, redis: RedisServer
) -> None:
    nodes = []
    for _ in range(2):
        port, admin = free_port(), free_port()
        nodes.append((proxyd(config(port, admin, http_backend, redis)), admin))
    server = http_backend.address
    (a, a_admin), (b, b_admin) = nodes
    began = time.monotonic()
    api(a_admin, f"/api/v1/pools/web/servers/{server}", {"admin": "drain"})
    wait_until(lambda: admin_state(b_admin, server) == "drain", 10, "b to drain it too")
    print(f"\nadmin state propagation: {(time.monotonic() - began) * 1000:.1f} ms")
    b.wait_for_log(r"set to DRAIN by another node \(admin cluster\)")
    c_admin = free_port()
    c = proxyd(config(free_port(), c_admin, http_backend, redis))
    wait_until(lambda: admin_state(c_admin, server) == "drain", 10, "c to take the state")
    api(b_admin, f"/api/v1/pools/web/servers/{server}", {"admin": "ready"})
    wait_until(
        lambda: admin_state(a_admin, server) == admin_state(c_admin, server) == "ready",
        10,
        "a and c to make it ready again",
    )
    for node in (a, b, c):
        assert PASSWORD not in node.log()
