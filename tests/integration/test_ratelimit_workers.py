"""A rate limit with `[proxyd] workers = 2` holds for the machine, not per worker: keep-alive
clients spread over both workers (the kernel's choice, checked through /proc) flood one key
for a few seconds, and the total allowed is the limit's, within 10%."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .harness import Backend, free_port
from .test_workers import ask, owner, start_workers, workers_of

pytestmark = pytest.mark.integration

RATE = 100
BURST = 20
SECONDS = 4.0


def test_two_workers_share_one_limit(http_backend: Backend, proxyd, tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    relay = start_workers(
        proxyd,
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[ratelimit flood]\nrate = {RATE}/s\nburst = {BURST}\n\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nratelimits = flood\n"
        "routes =\n    path / -> pool web\n\n"
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n",
        tmp_path,
    )
    pids = workers_of(relay)
    clients = []
    try:
        # Connections until each worker holds three (the kernel spreads them; 60 at most).
        held: dict[int, list] = {pid: [] for pid in pids}
        while min(len(socks) for socks in held.values()) < 3 and len(clients) < 60:
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            assert ask(client) in (b"HTTP/1.1 200 OK", b"HTTP/1.1 429 Too Many Requests")
            held[owner(client, pids)].append(client)
        assert min(len(socks) for socks in held.values()) >= 3, "both workers serve"
        time.sleep(BURST / RATE)  # the first requests' debt paid: a full burst again
        # Each client floods until the deadline; statuses counted per worker.
        allowed = {pid: 0 for pid in pids}
        refused = {pid: 0 for pid in pids}
        lock = threading.Lock()
        start = time.monotonic()
        deadline = start + SECONDS

        def flood(client: socket.socket, pid: int) -> None:
            mine = [0, 0]
            for _ in range(100_000):
                if time.monotonic() >= deadline:
                    break
                status = ask(client)
                if status == b"HTTP/1.1 200 OK":
                    mine[0] += 1
                else:
                    assert status == b"HTTP/1.1 429 Too Many Requests", status
                    mine[1] += 1
            with lock:
                allowed[pid] += mine[0]
                refused[pid] += mine[1]

        threads = [
            threading.Thread(target=flood, args=(client, pid))
            for pid, socks in held.items()
            for client in socks[:3]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 30)
        elapsed = time.monotonic() - start
    finally:
        for client in clients:
            client.close()
    total = sum(allowed.values())
    most = BURST + RATE * elapsed  # what one process lets through
    assert 0.9 * RATE * elapsed <= total <= 1.1 * most, (allowed, refused, elapsed)
    assert all(allowed.values()), "each worker let some through"
    assert sum(refused.values()) > total, "the clients asked for more than the limit"
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as response:
        metrics = response.read().decode()
    limited = re.search(r'proxyd_ratelimit_requests_total\{[^}]*outcome="limited"\} (\S+)', metrics)
    assert limited is not None and float(limited.group(1)) >= sum(refused.values())
