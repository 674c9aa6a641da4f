"""Stick tables in Redis across real proxyd nodes (docs/health.md, "Stick tables across
nodes"): clients that reach three nodes in turn stay on one server (the agreement printed),
a server killed moves its clients to the same new server on every node, and a Redis that
stops leaves the nodes serving (each sticking alone) until it returns."""

from __future__ import annotations

import http.client
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT
from .harness import Backend, ProcessList, Proxyd, free_port, wait_until
from .redis_peer import PASSWORD, REDIS, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS is None, reason="redis-server is missing (make test installs it)"),
]

SESSIONS = 30
ROUNDS = 10
"""30 sessions x 10 requests = 300, each sent to the next node in turn."""


@pytest.fixture
def redis(processes: ProcessList, tmp_path: Path) -> RedisServer:
    directory = tmp_path / "redis"
    directory.mkdir()
    return RedisServer(processes, directory).start()


@pytest.fixture
def backends(processes: ProcessList) -> list[Backend]:
    found = []
    for name in ("b1", "b2", "b3"):
        port = free_port()
        argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
        process = processes.start(f"http-backend-{name}", [*argv, "--name", name])
        process.wait_listening([port], 15)
        found.append(Backend(process, port))
    return found


def node_config(port: int, backends: list[Backend], redis: RedisServer) -> str:
    servers = "\n".join(f"    {b.address}" for b in backends)
    return f"""\
[pool web]
servers =
{servers}
check = http GET /healthz expect 200
check_interval = 200ms
rise = 1
fall = 1
stick_on = header X-Session
stick_store = {redis.url()}
stick_expire = 10m
stick_timeout = 200ms

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path / -> pool web
"""


def ask(port: int, session: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"X-Session": session})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return response.getheader("X-Backend") or ""
    finally:
        conn.close()


def spread(ports: list[int], sessions: list[str]) -> dict[str, Counter[str]]:
    """Each session's requests, sent to the nodes in turn: by the backend that answered."""
    seen: dict[str, Counter[str]] = {session: Counter() for session in sessions}
    turn = 0
    for _ in range(ROUNDS):
        for session in sessions:
            seen[session][ask(ports[turn % len(ports)], session)] += 1
            turn += 1
    return seen


@pytest.fixture
def nodes(
    proxyd: Callable[..., Proxyd], backends: list[Backend], redis: RedisServer
) -> tuple[list[int], list[Proxyd]]:
    ports = [free_port() for _ in range(3)]
    started = [proxyd(node_config(port, backends, redis)) for port in ports]
    for port in ports:
        wait_until(lambda port=port: _ok(port), 15, "the node to serve")
    return ports, started


def _ok(port: int) -> bool:
    try:
        return bool(ask(port, "warm-up"))
    except (AssertionError, OSError):
        return False


def agreement(seen: dict[str, Counter[str]]) -> float:
    kept = sum(counts.most_common(1)[0][1] for counts in seen.values())
    return kept / sum(sum(counts.values()) for counts in seen.values())


def test_clients_reaching_three_nodes_stay_on_one_server_and_move_together(
    nodes: tuple[list[int], list[Proxyd]], backends: list[Backend]
) -> None:
    ports, started = nodes
    sessions = [f"user-{n}" for n in range(SESSIONS)]
    seen = spread(ports, sessions)
    share = agreement(seen)
    used = Counter(counts.most_common(1)[0][0] for counts in seen.values())
    print(
        f"\nsticky agreement over 3 nodes: {share:.1%} of {SESSIONS * ROUNDS} requests "
        f"on their session's server; sessions per server: {dict(used)}"
    )
    assert share == 1.0
    assert len(used) == 3  # the pool's picks spread the sessions

    victim = next(b for b in backends if b.process.name.endswith("b1"))
    moved = [s for s, counts in seen.items() if counts.most_common(1)[0][0] == "b1"]
    victim.kill()
    for node in started:
        node.wait_for_log(r"in pool web is DOWN", timeout=15)
    after = spread(ports, moved)
    assert agreement(after) == 1.0, after
    assert all("b1" not in counts for counts in after.values())
    for node in started:
        assert PASSWORD not in node.log()


def test_redis_down_nodes_keep_serving_and_stick_alone_then_share_again(
    nodes: tuple[list[int], list[Proxyd]], redis: RedisServer
) -> None:
    ports, started = nodes
    start = [node.log_offset() for node in started]
    redis.stop()
    for port in ports:  # each node keeps its clients on one server, alone
        answers = {ask(port, "lonely") for _ in range(5)}
        assert len(answers) == 1
    for node, offset in zip(started, start, strict=True):
        node.wait_for_log(r"pool web: stick table at .* unreachable", start=offset)
    redis.start()
    wait_until(
        lambda: all(
            "answers again" in node.log()[offset:] or (ask(port, "probe") and False)
            for node, offset, port in zip(started, start, ports, strict=True)
        ),
        30,
        "the nodes to use Redis again",
    )
    seen = spread(ports, ["after-1", "after-2", "after-3"])
    assert agreement(seen) == 1.0, seen
    for node, offset in zip(started, start, strict=True):
        assert node.log()[offset:].count("stick table at") == 2  # down once, back once
