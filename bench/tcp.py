"""TCP scenarios: bulk throughput with iperf3 and connections a second with Python client loops,
directly and through proxyd's `[tcp]`, nginx `stream` and HAProxy `mode tcp`."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import time

from bench.http import SMALL_BODY, start_origin
from bench.processes import free_port, which
from bench.scenario import Bench, Load, Meter, Scenario, bounded, percentile

MiB = 1 << 20
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"
CLIENTS = 4
MAX_CONNECTIONS = 1_000_000
"""Most connections of one client loop in one run, whatever its duration."""


class TcpScenario(Scenario):
    """The relays' configurations, shared by both TCP scenarios: one listener to the origin."""

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        body = f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
        body += f"        proxy_pass 127.0.0.1:{origin};\n    }}\n"
        return bench.nginx_stream("nginx", body)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        body = f"frontend bench\n    bind 127.0.0.1:{port}\n    default_backend origin\n"
        body += f"backend origin\n    server origin 127.0.0.1:{origin}\n"
        return bench.haproxy_config("tcp", body)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        return (
            f"[pool origin]\nservers = 127.0.0.1:{origin}\n\n"
            f"[tcp bench]\nlisten = tcp:{port}:interface=127.0.0.1\npool = origin\n"
            "idle_timeout = 1m\n"
        )


class Bulk(TcpScenario):
    name = "tcp-bulk"
    title = "TCP bulk throughput, one stream (iperf3)"
    unit = "MiB"
    needs = ("iperf3", "nginx")

    def origin(self, bench: Bench) -> int:
        port = free_port()
        argv = [*bench.pinning.load(), str(which("iperf3")), "-s", "-B", "127.0.0.1"]
        bench.start("origin", [*argv, "-p", str(port)], tcp=(port,))
        return port

    def describe(self) -> str:
        return "iperf3 -c -t DURATION -J, one stream, client to server"

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        argv = [*bench.pinning.load(), str(which("iperf3")), "-c", "127.0.0.1", "-p", str(port)]
        argv += ["-t", str(bench.duration), "-J", "--connect-timeout", "5000"]
        with meter:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=bounded(bench.duration)
            )
        report = json.loads(result.stdout)
        if "error" in report:
            raise RuntimeError(f"iperf3: {report['error']}")
        received = report["end"]["sum_received"]
        return Load(operations=received["bytes"] / MiB, seconds=received["seconds"])


def _client(
    port: int, duration: float, most: int, cpus: list[int], out: multiprocessing.Queue
) -> None:
    """Loops connect, request, read to EOF, close, for `duration` seconds and at most `most`
    times; puts (connection times in ms, failures)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    times: list[float] = []
    errors = 0
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up on our side
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and len(times) + errors < most:
        started = time.monotonic()
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUEST)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            if answer.startswith(b"HTTP/1.") and answer.endswith(SMALL_BODY):
                times.append((time.monotonic() - started) * 1e3)
            else:
                errors += 1
        except OSError:
            errors += 1
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.close()
    out.put((times, errors))


class Connect(TcpScenario):
    name = "tcp-connect"
    title = "TCP connections a second: connect, one HTTP/1.0 request, close"
    unit = "conn"
    needs = ("nginx",)

    def origin(self, bench: Bench) -> int:
        return start_origin(bench)

    def describe(self) -> str:
        return f"{CLIENTS} Python client loops (connect, GET / HTTP/1.0, read to EOF, RST)"

    def check(self, bench: Bench, port: int) -> str | None:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        _client(port, 10, 1, bench.pinning.load_cpus, queue)
        times, errors = queue.get(timeout=10)
        return None if times and not errors else "check: the connection failed"

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        queue: multiprocessing.Queue = multiprocessing.Queue()
        args = (port, bench.duration, MAX_CONNECTIONS, bench.pinning.load_cpus, queue)
        clients = [multiprocessing.Process(target=_client, args=args) for _ in range(CLIENTS)]
        with meter:
            for client in clients:
                client.start()
            results = [queue.get(timeout=bounded(bench.duration)) for _ in clients]
        for client in clients:
            client.join(10)
            if client.is_alive():
                client.kill()
        times = [t for done, _ in results for t in done]
        if not times:
            raise RuntimeError("no connection succeeded")
        return Load(
            operations=len(times),
            seconds=max(meter.seconds, bench.duration),
            p50_ms=percentile(times, 50),
            p99_ms=percentile(times, 99),
            errors=sum(errors for _, errors in results),
        )


SCENARIOS = (Bulk(), Connect())
