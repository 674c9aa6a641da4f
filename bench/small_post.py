"""The small-POST scenario: the latency of POSTs whose head and few body bytes leave the client
in two segments, as many HTTP clients send them (issue 18, defect 5).

One client connection, kept alive, sends a POST head, then its 3-byte body in a second send()
(TCP_NODELAY on, so that they are two segments), waits for the answer, and sends the next, for
the run's duration. A proxy that reads the head and the body in two reads and writes them to the
origin in two writes without TCP_NODELAY on its upstream socket holds the body back until the
origin's ACK of the head (Nagle), and the origin, which answers only once it has the body,
delays that ACK (up to 40 ms on Linux): such a request takes 40 ms instead of a fraction of a
millisecond. The p90 shows it even when only some requests are hit.

The origin is examples/http_backend.py (POST /upload answers once the body is read), so that
the scenario needs nothing beyond this repository; nginx and HAProxy are compared when present.

    .venv/bin/python -m bench --scenarios http-small-post --targets direct,proxyd-1
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from bench.http import ProxiedHttp
from bench.processes import free_port
from bench.scenario import Bench, Load, Meter, percentile

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "examples" / "http_backend.py"
BODY = b"abc"
HEAD = (
    b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)
MAX_REQUESTS = 100_000
"""Most requests in one run, whatever its duration."""


def small_posts(port: int, seconds: float, most: int) -> tuple[list[float], int]:
    """POSTs on one kept-alive connection, each head and body sent apart, for `seconds` (at
    most `most` of them): their latencies in ms, and the failures."""
    times: list[float] = []
    errors = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(times) + errors < most:
            started = time.perf_counter()
            sock.sendall(HEAD)
            sock.sendall(BODY)
            if read_answer(sock):
                times.append((time.perf_counter() - started) * 1e3)
            else:
                errors += 1
                break  # the connection's framing is lost
    return times, errors


def read_answer(sock: socket.socket) -> bool:
    """Reads one Content-Length answer; True when it is a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200 ")


class SmallPost(ProxiedHttp):
    name = "http-small-post"
    title = "HTTP 3-byte POSTs, head and body in two segments (Nagle against delayed ACK)"
    unit = "req"

    def origin(self, bench: Bench) -> int:
        port = free_port()
        argv = [*bench.pinning.load(), sys.executable, str(BACKEND), "--port", str(port)]
        bench.start("origin", [*argv, "--interface", "127.0.0.1"], tcp=(port,))
        return port

    def check(self, bench: Bench, port: int) -> str | None:
        try:
            times, errors = small_posts(port, 5, 3)
        except OSError as e:
            return f"check: {e}"
        return None if len(times) == 3 and not errors else "check: a POST was not answered 200"

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        with meter:
            times, errors = small_posts(port, bench.duration, MAX_REQUESTS)
        if not times:
            raise RuntimeError("no POST was answered")
        return Load(
            operations=len(times),
            seconds=meter.seconds,
            p50_ms=percentile(times, 50),
            p90_ms=percentile(times, 90),
            p99_ms=percentile(times, 99),
            errors=errors,
            extra={"over_20ms": sum(1 for t in times if t > 20.0)},
        )

    def describe(self) -> str:
        return (
            "one keep-alive connection, POST /upload: head, then a 3-byte body in a second "
            "send() (TCP_NODELAY), sequential"
        )


SCENARIOS = (SmallPost(),)
