"""Small POSTs through the real proxyd (issue 18, defect 5): a request whose head and 3-byte
body reach proxyd in two reads must not wait for the backend's delayed ACK (Nagle on proxyd's
upstream socket: about 40 ms on Linux). Whether a socket has TCP_NODELAY cannot be seen from
outside the process; its effect can: the latency of such requests.

The client sends each head, then after a millisecond its body (TCP_NODELAY on: two segments),
so that proxyd reads them apart, as it does when a client's segments arrive apart; the backend
(examples/http_backend.py) answers once it has the body."""

from __future__ import annotations

import socket
import time

import pytest

from .harness import free_port

pytestmark = pytest.mark.integration

REQUESTS = 100
BODY = b"abc"
HEAD = b"POST /upload HTTP/1.1\r\nHost: small.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
GAP = 0.001
"""Between a head and its body: long enough for proxyd to read the head alone."""


def read_answer(sock: socket.socket) -> bytes:
    """One Content-Length answer: its head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return head


def post_latencies(port: int) -> list[float]:
    """REQUESTS small POSTs on one kept-alive connection: each one's time in ms."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(REQUESTS):
            started = time.perf_counter()
            sock.sendall(HEAD)
            time.sleep(GAP)
            sock.sendall(BODY)
            head = read_answer(sock)
            times.append((time.perf_counter() - started) * 1e3)
            assert head.startswith(b"HTTP/1.1 200 "), head
    return times


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.9 * len(ordered))]


LISTENERS = {
    "http": "[http front]\nlisten = {listen}\nroutes =\n    path / -> pool web\n",
    "tcp": "[tcp front]\nlisten = {listen}\npool = web\n",
}


@pytest.mark.parametrize("kind", sorted(LISTENERS))
def test_small_posts_sent_in_two_segments_do_not_wait_for_a_delayed_ack(
    http_backend, proxyd, kind: str
) -> None:
    """Through the HTTP relay, and through the TCP relay, which writes each read on as it
    comes (the same head, then body, towards the backend)."""
    port = free_port()
    listener = LISTENERS[kind].format(listen=f"tcp:{port}:interface=127.0.0.1")
    proxyd(f"[pool web]\nservers = {http_backend.address}\n\n{listener}")
    direct = post_latencies(http_backend.port)
    through = post_latencies(port)
    slow = sum(1 for t in through if t > 20)
    assert p90(through) < 20, (
        f"p90 {p90(through):.1f} ms through proxyd ({slow} of {REQUESTS} over 20 ms), "
        f"{p90(direct):.1f} ms direct"
    )
