"""Rate limits shared by proxyd nodes through a real redis-server (tests/integration/
redis_peer.py): three proxyd processes hold one limit together, a Redis that stops and comes
back, a Redis that answers slowly, TLS and a password that never reaches the log."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from .harness import Backend, ProcessList, free_port, wait_until
from .redis_peer import PASSWORD, REDIS, RedisServer
from .test_workers import ask

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS is None, reason="redis-server is missing (make test installs it)"),
]

OK = b"HTTP/1.1 200 OK"
LIMITED = b"HTTP/1.1 429 Too Many Requests"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable"


@pytest.fixture
def redis(processes: ProcessList, tmp_path: Path) -> RedisServer:
    directory = tmp_path / "redis"
    directory.mkdir()
    return RedisServer(processes, directory).start()


def node_config(backend: Backend, port: int, limit: str) -> str:
    return (
        f"[pool web]\nservers = 127.0.0.1:{backend.port}\n\n"
        f"[ratelimit shared]\n{limit}\n\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nratelimits = shared\n"
        "routes =\n    path / -> pool web\n"
    )


def flood(ports: list[int], seconds: float, per_port: int = 2) -> tuple[dict[bytes, int], float]:
    """Keep-alive clients (`per_port` on each port) asking as fast as they are answered
    for `seconds`; the statuses they got, and how long it took."""
    counts: dict[bytes, int] = {}
    lock = threading.Lock()
    clients = [
        socket.create_connection(("127.0.0.1", p), timeout=10)
        for p in ports
        for _ in range(per_port)
    ]
    start = time.monotonic()
    deadline = start + seconds

    def run(client: socket.socket) -> None:
        mine: dict[bytes, int] = {}
        for _ in range(200_000):
            if time.monotonic() >= deadline:
                break
            status = ask(client)
            mine[status] = mine.get(status, 0) + 1
        with lock:
            for status, n in mine.items():
                counts[status] = counts.get(status, 0) + n

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)
    finally:
        for client in clients:
            client.close()
    return counts, time.monotonic() - start


def one(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        return ask(client)


@pytest.mark.parametrize("allowance", [0, 5])
def test_three_nodes_hold_one_limit_together(
    http_backend: Backend, proxyd, redis: RedisServer, allowance: int
) -> None:
    rate, burst = 200, 20
    limit = f"rate = {rate}/s\nburst = {burst}\nkey = route\nstore = {redis.url()}\n"
    if allowance:
        limit += f"local_allowance = {allowance}\n"
    ports = [free_port() for _ in range(3)]
    nodes = [proxyd(node_config(http_backend, port, limit)) for port in ports]
    counts, elapsed = flood(ports, 3.0)
    allowed = counts.get(OK, 0)
    expected = burst + rate * elapsed
    assert set(counts) <= {OK, LIMITED}, counts
    assert counts.get(LIMITED, 0) > allowed, "the nodes were asked for more than the limit"
    assert abs(allowed - expected) <= 0.05 * expected, (counts, elapsed)
    for node in nodes:
        assert PASSWORD not in node.log()
    keys = redis.cli("--scan", "--pattern", "proxyd:rl:*")
    assert keys == 'proxyd:rl:shared:"*/"'  # the route's name


def test_a_redis_that_stops_is_followed_by_on_store_error_then_used_again(
    http_backend: Backend, proxyd, redis: RedisServer
) -> None:
    port = free_port()
    limit = (
        f"rate = 5/m\nburst = 2\nstore = {redis.url()}\n"
        "on_store_error = deny\nstore_timeout = 200ms\n"
    )
    node = proxyd(node_config(http_backend, port, limit))
    assert [one(port) for _ in range(3)] == [OK, OK, LIMITED]

    redis.stop()
    start = node.log_offset()
    began = time.monotonic()
    assert one(port) == UNAVAILABLE
    assert time.monotonic() - began < 2
    assert [one(port) for _ in range(5)] == [UNAVAILABLE] * 5  # at once: Redis not asked
    node.wait_for_log(
        r"ratelimit shared: Redis at redis://127\.0\.0\.1:\d+/0 .* on_store_error = deny",
        start=start,
    )
    assert len(re.findall(r"ratelimit shared: Redis at", node.log()[start:])) == 1

    redis.start()  # a fresh Redis on the same port: the count starts again
    wait_until(lambda: one(port) == OK, 30, "proxyd to use Redis again")
    node.wait_for_log(r"ratelimit shared: Redis at .* answers again after", start=start)
    assert PASSWORD not in node.log()


def test_a_slow_redis_costs_each_request_the_timeout_at_most_once(
    http_backend: Backend, proxyd, redis: RedisServer
) -> None:
    port = free_port()
    limit = f"rate = 100/s\nstore = {redis.url()}\nstore_timeout = 100ms\n"
    node = proxyd(node_config(http_backend, port, limit))
    assert one(port) == OK
    start = node.log_offset()
    sleeper = redis.cli("DEBUG", "SLEEP", "1.5", background=True)
    try:
        time.sleep(0.2)  # let DEBUG SLEEP begin
        timings = []
        for _ in range(5):
            began = time.monotonic()
            assert one(port) == OK  # on_store_error = allow
            timings.append(time.monotonic() - began)
        assert timings[0] < 1.0 and max(timings[1:]) < 0.5, timings
    finally:
        sleeper.wait(30)
    node.wait_for_log(r"did not answer within 0\.1s", start=start)
    wait_until(
        lambda: re.search(r"answers again after", node.log()[start:]) or (one(port) and None),
        30,
        "proxyd to use Redis again",
    )


def test_a_redis_over_tls_with_a_password(
    http_backend: Backend, proxyd, processes: ProcessList, tmp_path: Path
) -> None:
    from tests.certs import TestCA

    ca = TestCA("redis CA")
    issued = ca.issue(["localhost", "127.0.0.1"])
    cert = issued.write(tmp_path / "redis.pem", with_key=False)
    key = issued.write_key(tmp_path / "redis.key")
    directory = tmp_path / "redis"
    directory.mkdir()
    redis = RedisServer(processes, directory, tls=(cert, key)).start()
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    port = free_port()
    limit = (
        f"rate = 2/m\nburst = 1\nstore = {redis.url()}\nstore_ca = {ca_file}\n"
        "on_store_error = deny\n"
    )
    node = proxyd(node_config(http_backend, port, limit))
    assert [one(port) for _ in range(2)] == [OK, LIMITED]
    assert PASSWORD not in node.log()
