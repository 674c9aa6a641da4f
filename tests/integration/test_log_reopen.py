"""SIGUSR1 after logrotate moved the access log: proxyd (every worker, with workers) writes
to a new file at the configured path, and no line is lost on the way."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest

from .harness import Backend, free_port, wait_until

pytestmark = pytest.mark.integration


def ask(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: rotate.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_reopens_the_access_log_and_loses_no_line(
    http_backend: Backend, proxyd, tmp_path: Path, workers: int
) -> None:
    access = tmp_path / "access.log"
    port = free_port()
    relay = proxyd(
        f"[proxyd]\nworkers = {workers}\naccess_log = {access}\n\n"
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n    path / -> pool web\n"
    )
    for index in range(workers if workers > 1 else 0):
        relay.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
    for _ in range(10):
        ask(port)
    wait_until(lambda: len(lines(access)) == 10, 10, "10 lines in the access log")
    rotated = tmp_path / "access.log.1"
    access.rename(rotated)
    start = relay.log_offset()
    os.kill(relay.pid, signal.SIGUSR1)
    relay.wait_for_log(r"access logs reopened \(1 files\)", start=start)
    if workers > 1:
        for index in range(workers):
            relay.wait_for_log(rf"worker {index}#info [\w.]+\] access logs reopened", start=start)
    for _ in range(10):
        ask(port)
    wait_until(lambda: len(lines(access)) == 10, 10, "10 lines in the new access log")
    assert len(lines(rotated)) == 10
    assert relay.process.alive, "SIGUSR1 does not stop proxyd or a worker"
