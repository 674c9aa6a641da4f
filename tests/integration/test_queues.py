"""Concurrency limits and queues in the real proxyd, in front of the demo HTTP backend's
/slow/SECONDS answers: a route's max_in_flight serving its requests in turn and refusing past
its queue, and a pool whose one server is full spilling to its backup, then queueing."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .harness import Backend, free_port
from .test_http_relay import http_backend  # noqa: F401

pytestmark = pytest.mark.integration


def fetch(url: str, results: list, index: int) -> None:
    began = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            results[index] = (response.status, response.read(), None, time.monotonic() - began)
    except urllib.error.HTTPError as e:
        results[index] = (e.code, e.read(), e.headers.get("Retry-After"), time.monotonic() - began)


def concurrently(urls: list[str]) -> list:
    results: list = [None] * len(urls)
    threads = [
        threading.Thread(target=fetch, args=(url, results, index)) for index, url in enumerate(urls)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in this order
    for thread in threads:
        thread.join(60)
    return results


def test_a_route_serves_max_in_flight_at_once_queues_the_next_and_refuses_the_rest(
    http_backend,  # noqa: F811
    proxyd,
    tmp_path: Path,
) -> None:
    backend: Backend = http_backend("web-1")
    port = free_port()
    proxyd(
        f"[pool web]\nservers = {backend.address}\n\n"
        "[route reports]\npool = web\nmax_in_flight = 1\nmax_queued = 1\nqueue_timeout = 5s\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        "routes =\n    path / -> route reports\n"
    )
    results = concurrently([f"http://127.0.0.1:{port}/slow/0.6"] * 3)
    statuses = [status for status, _, _, _ in results]
    assert statuses == [200, 200, 503], results
    assert results[2][2] == "5" and results[2][3] < 0.5  # refused at once: the queue was full
    assert results[1][3] >= 1.0  # waited for the first one
    assert b"web-1" in results[1][1]


def test_a_full_primary_spills_to_its_backup_then_requests_queue(
    http_backend,  # noqa: F811
    proxyd,
    tmp_path: Path,
) -> None:
    primary: Backend = http_backend("primary")
    backup: Backend = http_backend("backup")
    port = free_port()
    proxyd(
        f"[pool web]\nservers =\n    {primary.address} max_connections=1\n"
        f"    {backup.address} max_connections=1 backup\n"
        "keepalive = 0\nmax_queued = 1\nqueue_timeout = 5s\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        "routes =\n    path / -> pool web\n"
    )
    results = concurrently([f"http://127.0.0.1:{port}/slow/0.6"] * 4)
    statuses = [status for status, _, _, _ in results]
    assert statuses == [200, 200, 200, 503], results
    bodies = [body for _, body, _, _ in results[:3]]
    assert b"primary" in bodies[0] and b"backup" in bodies[1]
    assert results[2][3] >= 0.9  # the third waited for a server to let go
    assert results[3][2] == "5"
