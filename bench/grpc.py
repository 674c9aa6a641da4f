"""gRPC unary calls through the proxy (docs/grpc.md): bench.grpc_load's asyncio client, 50
calls in flight on one HTTP/2 connection (h2c), to the grpcio server of the gRPC tests,
directly, through nginx (`grpc_pass`) and through proxyd (`h2c = on` in front of a
`protocol = h2c` pool). An extra: run only when named."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.processes import free_port
from bench.scenario import Bench, Load, Meter, Scenario, bounded

PEER = Path(__file__).resolve().parents[1] / "tests" / "integration" / "grpc_peer.py"
CONCURRENCY = 50


class GrpcUnary(Scenario):
    name = "grpc-unary"
    title = "gRPC unary calls, 50 in flight on one HTTP/2 connection (h2c)"
    unit = "call"
    needs = ("nginx",)

    def origin(self, bench: Bench) -> int:
        port = free_port()
        argv = [*bench.pinning.load(), sys.executable, str(PEER), "--port", str(port)]
        bench.start("origin", argv, tcp=(port,))
        return port

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        body = f"""    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        location / {{
            grpc_pass grpc://127.0.0.1:{origin};
        }}
    }}
"""
        return bench.nginx_http("nginx", body)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        body = f"""frontend bench
    bind 127.0.0.1:{port} proto h2
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin} proto h2
"""
        return bench.haproxy_config("http", body, "")

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        return f"""[pool origin]
servers = 127.0.0.1:{origin}
protocol = h2c

[http bench]
listen = tcp:{port}:interface=127.0.0.1
h2c = on
routes =
    path / -> pool origin
"""

    def describe(self) -> str:
        return f"python -m bench.grpc_load PORT SECONDS {CONCURRENCY}"

    def check(self, bench: Bench, port: int) -> str | None:
        result = self._run(port, 0.5, 1)
        if result is None or result[0] == 0 or result[1]:
            return f"check: no successful call through port {port} ({result})"
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        with meter:
            result = self._run(port, bench.duration, CONCURRENCY, bench)
        if result is None:
            raise RuntimeError("bench.grpc_load printed no figures")
        calls, errors, seconds = result
        return Load(operations=calls, seconds=seconds, errors=errors)

    @staticmethod
    def _run(
        port: int, seconds: float, concurrency: int, bench: Bench | None = None
    ) -> tuple[int, int, float] | None:
        pin = [*bench.pinning.load()] if bench is not None else []
        argv = [*pin, sys.executable, "-m", "bench.grpc_load", str(port), str(seconds)]
        argv.append(str(concurrency))
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=bounded(seconds),
            cwd=Path(__file__).resolve().parents[1],
        ).stdout
        found = re.search(r"CALLS (\d+) ERRORS (\d+) SECONDS ([\d.]+)", out)
        if found is None:
            return None
        return int(found.group(1)), int(found.group(2)), float(found.group(3))


SCENARIOS = (GrpcUnary(),)
