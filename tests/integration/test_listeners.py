"""The real proxyd's listening sockets: the listen backlog the kernel holds connections in
(in one process and with workers, the admin listener's too), and proxyd at its open-files
limit: a bounded log, the failures counted, and serving again once connections close."""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .harness import Backend, connect, free_port, wait_until

pytestmark = pytest.mark.integration


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def _listening(port: int) -> list[list[str]]:
    result = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines() if "LISTEN" in line]


def listen_backlogs(port: int) -> list[int]:
    """The backlog of each socket listening on `port`: for a listening socket, `ss -ltn`
    shows its sk_max_ack_backlog as Send-Q."""
    return [int(fields[2]) for fields in _listening(port)]


def accept_queue(port: int) -> list[int]:
    """The connections waiting in each listening socket's accept queue (Recv-Q)."""
    return [int(fields[1]) for fields in _listening(port)]


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
@pytest.mark.parametrize("workers", [1, 2])
def test_every_listener_listens_with_the_kernels_maximum_backlog(
    proxyd, http_backend: Backend, tmp_path: Path, workers: int
) -> None:
    http, tcp, admin = free_port(), free_port(), free_port()
    proxyd(
        f"[proxyd]\naccess_log = {tmp_path / 'access.log'}\nworkers = {workers}\n\n"
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool web]\nservers = {http_backend.address}\n\n"
        f"[http front]\nlisten = tcp:{http}:interface=127.0.0.1\n"
        "routes =\n    path / -> pool web\n\n"
        f"[tcp raw]\nlisten = tcp:{tcp}:interface=127.0.0.1\npool = web\n"
    )
    # The kernel caps a backlog at net.core.somaxconn: proxyd asks for at least that.
    expected = somaxconn()
    assert listen_backlogs(http) == [expected] * workers
    assert listen_backlogs(tcp) == [expected] * workers
    assert listen_backlogs(admin) == [expected]


def _open_files_config(port: int, admin: int, backend: Backend, tmp_path: Path) -> str:
    return (
        f"[proxyd]\naccess_log = {tmp_path / 'access.log'}\n\n"
        f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n\n"
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        "routes =\n    path / -> pool web\n"
        "header_timeout = 5m\nkeepalive_timeout = 5m\n"
    )


NOFILE = 48
"""proxyd's open-files limit in the test: it holds some 15 descriptors of its own."""
CLIENTS = 120


@pytest.mark.skipif(
    shutil.which("prlimit") is None or shutil.which("ss") is None,
    reason="prlimit (util-linux) or ss (iproute2) is missing",
)
def test_at_its_open_files_limit_proxyd_logs_a_bounded_summary_and_serves_again(
    proxyd, http_backend: Backend, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    proxy = proxyd(
        _open_files_config(port, admin, http_backend, tmp_path),
        taskset=["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"],
    )
    start = proxy.log_offset()
    began = time.monotonic()
    clients: list[socket.socket] = []
    try:
        # Each connect completes in the kernel (the backlog holds them); proxyd accepts
        # until it is out of descriptors, then closes the rest at once.
        for _ in range(CLIENTS):
            clients.append(connect(port, timeout=10))
        first = proxy.wait_for_log(
            r"\[http front\] (\d+) connection\(s\) could not be accepted: EMFILE", 10, start
        )
        reported = int(first.group(1))

        def closed_by_proxyd() -> list[socket.socket]:
            readable, _, _ = select.select(clients, [], [], 0)
            return [s for s in readable if s.recv(1, socket.MSG_PEEK) == b""]

        # Every connection accepted (and held) or closed: nothing left in the queue.
        wait_until(lambda: accept_queue(port) == [0], 10, "proxyd to take every connection")
        refused = closed_by_proxyd()
        assert len(refused) >= reported >= 1
        assert CLIENTS - len(refused) <= NOFILE  # the rest were held open
    finally:
        for client in clients:
            client.close()
    elapsed = time.monotonic() - began
    log = proxy.log()[start:]
    emfile_lines = [line for line in log.splitlines() if "EMFILE" in line]
    # One line, then at most one per 10 s (Twisted logged three per connection refused).
    assert 1 <= len(emfile_lines) <= 2 + elapsed / 10, "\n".join(emfile_lines[:10])

    def served() -> bytes | None:
        try:
            with connect(port, timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer if answer.startswith(b"HTTP/1.1 200") else None
        except OSError:
            return None

    assert wait_until(served, 15, "a request served after the clients closed", interval=0.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("proxyd_errors_total{")
        and 'listener="front"' in line
        and 'error="accept_failed"' in line
    ]
    assert counted and counted[0] >= len(refused), metrics
