"""A graceful stop of the real proxyd (SIGTERM): it stops accepting, closes idle keep-alive
connections, answers the requests in flight (with Connection: close) and then exits; what is
still open after `[proxyd] drain_timeout` is closed. The same with worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Backend, Proxyd, free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def config(port: int, backend: int, drain_timeout: str, workers: int = 1) -> str:
    return (
        f"[proxyd]\nworkers = {workers}\ndrain_timeout = {drain_timeout}\n\n"
        f"[pool web]\nservers = 127.0.0.1:{backend}\n\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n    path / -> pool web\n"
    )


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def ask(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: drain.test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    return data


def arrivals(backend: Backend) -> Callable[[], int]:
    """A function that tells how many requests `backend` has begun to answer since now, from
    its /stats (which counts the asks for /stats too: those are left out)."""
    asks = 0

    def requests() -> int:
        nonlocal asks
        asks += 1
        url = f"http://127.0.0.1:{backend.port}/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())["requests"]

    before = requests()
    return lambda: requests() - before - (asks - 1)


def wait_for_arrivals(since: Callable[[], int], count: int) -> None:
    wait_until(lambda: since() >= count, 10, f"{count} requests to reach the backend", 0.05)


def start(proxyd, port: int, backend: Backend, drain_timeout: str, workers: int) -> Proxyd:
    relay = proxyd(config(port, backend.port, drain_timeout, workers))
    if workers > 1:
        for index in range(workers):
            relay.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
    return relay


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_the_requests_in_flight_then_exits(
    http_backend: Backend, proxyd, workers: int
) -> None:
    port = free_port()
    relay = start(proxyd, port, http_backend, "20s", workers)
    idle = [connect(port) for _ in range(4)]
    for sock in idle:
        assert ask(sock, "/").startswith(b"HTTP/1.1 200")
    busy = [connect(port) for _ in range(4)]
    since = arrivals(http_backend)
    for sock in busy:
        sock.sendall(b"GET /slow/1.5 HTTP/1.1\r\nHost: drain.test\r\n\r\n")
    wait_for_arrivals(since, len(busy))  # the slow requests reach the backend
    began = time.monotonic()
    relay.stopped_by_test = True
    os.kill(relay.pid, signal.SIGTERM)
    for sock in idle:
        assert read_all(sock) == b"", "an idle keep-alive connection is closed at once"
    for sock in busy:
        answer = read_all(sock)  # to the end: the connection is closed after the answer
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"\r\nConnection: close\r\n" in answer
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    assert relay.process.popen.wait(15) == 0, "a graceful stop exits 0"
    assert time.monotonic() - began < 10, "it exits once the last answer is out"
    log = relay.log()
    assert "stopping: every connection finished" in log
    for sock in idle + busy:
        sock.close()


def test_what_outlives_drain_timeout_is_closed(http_backend: Backend, proxyd) -> None:
    port = free_port()
    relay = start(proxyd, port, http_backend, "1s", 1)
    sock = connect(port)
    since = arrivals(http_backend)
    sock.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: drain.test\r\n\r\n")
    wait_for_arrivals(since, 1)
    began = time.monotonic()
    relay.stopped_by_test = True
    os.kill(relay.pid, signal.SIGTERM)
    assert read_all(sock) == b""
    assert relay.process.popen.wait(15) == 0, "a graceful stop exits 0"
    assert 0.8 < time.monotonic() - began < 8
    assert "drain_timeout (1s) reached, closing the connections still open" in relay.log()
    sock.close()


def test_a_tcp_connection_goes_on_through_the_drain_until_its_client_closes(
    processes, proxyd
) -> None:
    echo = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "echo_server.py"), str(echo)]
    processes.start("echo", argv).wait_listening([echo], 15)
    port = free_port()
    relay = proxyd(
        f"[proxyd]\ndrain_timeout = 20s\n\n[pool echo]\nservers = 127.0.0.1:{echo}\n\n"
        f"[tcp echo]\nlisten = tcp:{port}:interface=127.0.0.1\npool = echo\n"
    )
    sock = connect(port)
    greeting = sock.recv(65536)
    assert greeting.startswith(b"hello from echo backend")
    relay.stopped_by_test = True
    os.kill(relay.pid, signal.SIGTERM)
    relay.wait_for_log(r"stopping: connections in flight have up to 20s to finish")
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    sock.sendall(b"still here\n")
    assert sock.recv(65536) == b"still here\n"
    assert relay.process.alive
    sock.close()
    assert relay.process.popen.wait(15) == 0, "a graceful stop exits 0"
    assert "stopping: every connection finished" in relay.log()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_sigterm_closes_what_is_left_at_once(
    http_backend: Backend, proxyd, workers: int
) -> None:
    port = free_port()
    relay = start(proxyd, port, http_backend, "60s", workers)
    sock = connect(port)
    since = arrivals(http_backend)
    sock.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: drain.test\r\n\r\n")
    wait_for_arrivals(since, 1)
    relay.stopped_by_test = True
    os.kill(relay.pid, signal.SIGTERM)
    relay.wait_for_log(r"SIGTERM: stopping gracefully")
    relay.wait_for_log(r"stopping: connections in flight have up to 60(\.0)?s to finish")
    began = time.monotonic()
    os.kill(relay.pid, signal.SIGTERM)
    assert read_all(sock) == b""
    assert relay.process.popen.wait(15) == 0
    assert time.monotonic() - began < 8, "not the 60 s of drain_timeout"
    assert "SIGTERM again: closing what is still open now" in relay.log()
    sock.close()
