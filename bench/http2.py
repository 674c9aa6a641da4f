"""HTTP/2 from clients: h2load over TLS (ALPN h2), 10 connections of 10 streams each (100 at
once), against nginx (`listen ... ssl; http2 on;`), HAProxy (`alpn h2,http/1.1`) and proxyd
(`[https]`, HTTP/2 on by default), each relaying to the HTTP/1.1 origin of bench/http.py:
small answers (`http2-small`) and 1 MiB ones (`http2-1m`). The certificate and TLS settings
are bench/tls.py's. Extras: run only when named."""

from __future__ import annotations

import re
import subprocess

from bench.http import SMALL_BODY, MiB, haproxy_http, start_origin
from bench.processes import which
from bench.scenario import Bench, Load, Meter, Scenario, bounded
from bench.tls import Tls, authority, certificate
from tests.certs import TestCA

CONNECTIONS = 10
STREAMS = 10
"""Streams at once on each connection (h2load -m)."""
_DONE = re.compile(
    r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed,"
    r" (\d+) errored"
)


class Http2(Scenario):
    needs = ("h2load", "nginx")
    not_applicable = {"direct": "the origin speaks HTTP/1.1 without TLS"}

    def __init__(self, name: str, title: str, path: str, size: int) -> None:
        self.name = name
        self.title = title
        self.path = path
        self.size = size
        self.unit = "MiB" if size >= MiB else "req"

    def origin(self, bench: Bench) -> int:
        ca = TestCA("bench CA")
        ca.write_ca(authority(bench))
        ca.issue(["localhost", "127.0.0.1"]).write(certificate(bench))
        return start_origin(bench)

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        config = Tls("", "").nginx(bench, port, origin)
        # `listen ... ssl http2`: the form every nginx with HTTP/2 takes (1.25 deprecates it
        # for `http2 on;`, and still reads it).
        return config.replace(" ssl backlog=4096;", " ssl http2 backlog=4096;")

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        bind = f"127.0.0.1:{port} ssl crt {certificate(bench)} alpn h2,http/1.1"
        return haproxy_http(bench, bind, origin)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        return Tls("", "").proxyd(bench, port, origin)

    def describe(self) -> str:
        return f"h2load -c {CONNECTIONS} -m {STREAMS} https://.../{self.path.lstrip('/')}"

    def check(self, bench: Bench, port: int) -> str | None:
        result = subprocess.run(
            ["h2load", "-n", "20", "-c", "1", f"https://127.0.0.1:{port}{self.path}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if "20 succeeded" not in result.stdout or "Application protocol: h2" not in result.stdout:
            return f"check: h2load said {result.stdout[-400:]} {result.stderr[-300:]}"
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        argv = [*bench.pinning.load(), str(which("h2load"))]
        argv += ["-c", str(CONNECTIONS), "-m", str(STREAMS), "-t", "1"]
        argv += ["-D", str(bench.duration), f"https://127.0.0.1:{port}{self.path}"]
        with meter:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=bounded(bench.duration)
            )
        done = _DONE.search(result.stdout)
        if result.returncode != 0 or done is None:
            raise RuntimeError(f"h2load exited with {result.returncode}: {result.stdout[-800:]}")
        succeeded = int(done.group(2))
        errors = int(done.group(3)) + int(done.group(4))
        operations = succeeded * self.size / MiB if self.size >= MiB else succeeded
        return Load(operations=operations, seconds=meter.seconds, errors=errors)


SCENARIOS = (
    Http2(
        "http2-small",
        "HTTP/2 over TLS, small answers, 100 streams on 10 connections",
        "/",
        len(SMALL_BODY),
    ),
    Http2("http2-1m", "HTTP/2 over TLS, 1 MiB answers, 100 streams on 10 connections", "/1m", MiB),
)
