"""Clients that stop reading, against the real proxyd (issue 18, defect 3): with a short
idle_timeout, each one is reset (the client sees an RST: its socket goes to CLOSE, not
CLOSE_WAIT) within idle_timeout and a margin, and proxyd's descriptors go back to what they
were. The clients have a small receive buffer and never read; their socket's state is read
with TCP_INFO, which takes nothing from it."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import (
    Backend,
    Proxyd,
    connect_with_buffers,
    free_port,
    start_backend,
    wait_until,
)

pytestmark = pytest.mark.integration

CLIENTS = 20
IDLE_TIMEOUT = 1.0
MARGIN = 6.0
"""Beyond idle_timeout (and its last quarter): filling the buffers, the reset, a busy machine."""
TCP_ESTABLISHED, TCP_CLOSE = 1, 7


@pytest.fixture
def certificate(certs: Callable[..., Path]) -> tuple[Path, Path]:
    """(the proxy's certificate chain and key for 127.0.0.1, the CA's certificate)."""
    pem = certs("proxy", ["127.0.0.1", "localhost"])
    return pem, pem.parent / "ca.pem"


def descriptors(proxy: Proxyd) -> int:
    return len(os.listdir(f"/proc/{proxy.pid}/fd"))


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of `sock` (struct tcp_info's first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def http_config(port: int, backend: Backend, kind: str = "http", extra: str = "") -> str:
    return (
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[{kind} front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"idle_timeout = {IDLE_TIMEOUT:g}s\nroutes =\n    path / -> pool web\n{extra}"
    )


def stalled_clients(
    port: int, request: bytes, wrap: Callable[[socket.socket], socket.socket] | None = None
) -> list[socket.socket]:
    """CLIENTS connections that send `request` and never read."""
    clients = []
    for _ in range(CLIENTS):
        sock = connect_with_buffers(port, rcvbuf=4096)
        if wrap is not None:
            sock = wrap(sock)
        sock.sendall(request)
        clients.append(sock)
    return clients


def assert_all_reset(proxy: Proxyd, clients: list[socket.socket], baseline: int) -> float:
    """Every client is reset, and proxyd holds no descriptor for them, within the bound;
    returns how long that took."""
    started = time.monotonic()
    bound = IDLE_TIMEOUT * 1.25 + MARGIN
    try:
        wait_until(
            lambda: all(tcp_state(c) != TCP_ESTABLISHED for c in clients),
            bound,
            f"proxyd to end {CLIENTS} connections whose client does not read",
        )
        assert [tcp_state(c) for c in clients] == [TCP_CLOSE] * CLIENTS, "reset, not closed"
        wait_until(lambda: descriptors(proxy) <= baseline, bound, "proxyd's descriptors back")
    finally:
        for client in clients:
            client.close()
    return time.monotonic() - started


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /size/1g HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /size/8m HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ],
    ids=["keep-alive", "connection-close"],
)
def test_http_clients_that_stop_reading_are_reset(
    http_backend, proxyd, request_bytes: bytes
) -> None:
    port = free_port()
    proxy = proxyd(http_config(port, http_backend))
    baseline = descriptors(proxy)
    clients = stalled_clients(port, request_bytes)
    wait_until(lambda: descriptors(proxy) >= baseline + CLIENTS, 10, "the clients to be served")
    assert_all_reset(proxy, clients, baseline)
    records = proxy.wait_access_records(CLIENTS)
    assert {r["error"] for r in records} == {f"client took no bytes for {IDLE_TIMEOUT:g}s"}
    assert proxy.log().count("took no bytes") == CLIENTS


def test_https_clients_that_stop_reading_are_reset(http_backend, proxyd, certificate) -> None:
    pem, ca_pem = certificate
    port = free_port()
    proxy = proxyd(http_config(port, http_backend, "https", f"certificates = {pem}\n"))
    context = ssl.create_default_context(cafile=str(ca_pem))
    baseline = descriptors(proxy)
    clients = stalled_clients(
        port,
        b"GET /size/1g HTTP/1.1\r\nHost: a\r\n\r\n",
        lambda sock: context.wrap_socket(sock, server_hostname="127.0.0.1"),
    )
    assert_all_reset(proxy, clients, baseline)
    records = proxy.wait_access_records(CLIENTS)
    assert {r["error"] for r in records} == {f"client took no bytes for {IDLE_TIMEOUT:g}s"}


def test_tcp_client_that_sends_but_never_reads_is_reset(processes, proxyd) -> None:
    """The server streams, the client goes on sending (so the connection is never idle) and
    never reads what it is sent."""
    backend = start_backend(processes, "stream", name="s")
    port = free_port()
    proxy = proxyd(
        f"[pool s]\nservers = {backend.address}\n\n"
        f"[tcp relay]\nlisten = tcp:{port}:interface=127.0.0.1\npool = s\n"
        f"idle_timeout = {IDLE_TIMEOUT:g}s\n"
    )
    baseline = descriptors(proxy)
    client = connect_with_buffers(port, rcvbuf=4096)
    client.setblocking(False)
    deadline = time.monotonic() + IDLE_TIMEOUT * 1.25 + MARGIN
    sent = 0
    while tcp_state(client) == TCP_ESTABLISHED:
        assert time.monotonic() < deadline, f"still open after sending {sent} bytes"
        with contextlib.suppress(BlockingIOError, ConnectionError):
            sent += client.send(b"x" * 100)
        time.sleep(0.05)  # a client that sends a little, often
    assert tcp_state(client) == TCP_CLOSE
    assert sent > 100 * IDLE_TIMEOUT / 0.05 / 2, "the client kept sending throughout"
    client.close()
    wait_until(lambda: descriptors(proxy) <= baseline, 10, "proxyd's descriptors back")
    [record] = proxy.wait_access_records(1)
    assert record["close"] == "client_stalled"


def test_https_client_that_reads_its_answer_but_never_closes_is_reset(
    http_backend, proxyd, certificate
) -> None:
    """After `Connection: close` proxyd sends close_notify and waits for the client's; a
    client that read everything but never closes (nor answers) is reset after idle_timeout."""
    pem, ca_pem = certificate
    port = free_port()
    proxy = proxyd(http_config(port, http_backend, "https", f"certificates = {pem}\n"))
    context = ssl.create_default_context(cafile=str(ca_pem))
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1"
    )
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        served = descriptors(proxy)  # the client's, and the upstream one kept in the pool
        wait_until(
            lambda: tcp_state(sock) != TCP_ESTABLISHED,
            IDLE_TIMEOUT * 1.25 + MARGIN,
            "proxyd to end a TLS connection whose client does not close",
        )
        assert tcp_state(sock) == TCP_CLOSE
        wait_until(lambda: descriptors(proxy) < served, 10, "proxyd's descriptor for it closed")
    finally:
        sock.close()
