"""TLS scenarios: handshakes a second with `openssl s_time`, and 1 MiB answers with wrk, through
nginx, HAProxy and proxyd terminating TLS in front of the HTTP origin of bench/http.py.

Every target gets one EC P-256 certificate made for the run, TLS 1.2 and 1.3, proxyd's default
TLS 1.2 ciphers and TLS 1.3 suites in the server's order, and session cache and tickets on
(proxyd's defaults). s_time does one handshake at a time, so its rate is bounded by the round
trips and its own cost as much as by the server's: the servers' CPU time per handshake is the
figure that compares them.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

from bench.http import MiB, haproxy_http, nginx_upstream, proxyd_pool, run_wrk, start_origin
from bench.processes import which
from bench.scenario import Bench, Load, Meter, Scenario, bounded
from proxyd.config.model import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES
from tests.certs import TestCA

SERVER_NAME = "localhost"


def certificate(bench: Bench) -> Path:
    return bench.workdir / "site.pem"


def authority(bench: Bench) -> Path:
    return bench.workdir / "ca.pem"


def fetch_tls(port: int, context: ssl.SSLContext, path: str) -> tuple[int, int, str]:
    """(status, body length, negotiated protocol and cipher) of one GET over a new connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        cipher = tls.cipher()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, len(body), f"{cipher[1]} {cipher[0]}" if cipher else "?"


class Tls(Scenario):
    """TLS terminated by each proxy; the load is `s_time` with `flags`, or wrk for `/1m`."""

    needs = ("openssl", "nginx")
    not_applicable = {"direct": "the origin speaks plain HTTP: the proxies terminate TLS"}

    def __init__(self, name: str, title: str, s_time: tuple[str, ...] = ()) -> None:
        self.name = name
        self.title = title
        self.s_time = s_time
        self.unit = "handshake" if s_time else "MiB"
        if not s_time:
            self.needs = ("openssl", "nginx", "wrk")

    def origin(self, bench: Bench) -> int:
        ca = TestCA("bench CA")
        ca.write_ca(authority(bench))
        ca.issue([SERVER_NAME, "127.0.0.1"]).write(certificate(bench))
        return start_origin(bench)

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        pem = certificate(bench)
        body = f"""    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {DEFAULT_CIPHERS};
    ssl_conf_command Ciphersuites {DEFAULT_CIPHERSUITES};
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 5m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_max_temp_file_size 0;
        }}
    }}
"""
        return bench.nginx_http("nginx", nginx_upstream(origin) + body)

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        # HAProxy chooses ciphers in its own order unless told `prefer-client-ciphers`; tickets
        # and a 300 s session cache are its defaults.
        globals_ = f"""    ssl-default-bind-ciphers {DEFAULT_CIPHERS}
    ssl-default-bind-ciphersuites {DEFAULT_CIPHERSUITES}
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000
    tune.ssl.lifetime 300
"""
        bind = f"127.0.0.1:{port} ssl crt {certificate(bench)}"
        return haproxy_http(bench, bind, origin, globals_)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        # No tls_* keys: proxyd's defaults are what the others are given.
        return f"""{proxyd_pool(origin)}
[https bench]
listen = tcp:{port}:interface=127.0.0.1
certificates = {certificate(bench)}
routes =
    path / -> pool origin
"""

    def describe(self) -> str:
        if self.s_time:
            return f"openssl s_time {' '.join(self.s_time)}, one handshake at a time, no request"
        return "wrk -c 8 -t 1 https://.../1m"

    def check(self, bench: Bench, port: int) -> str | None:
        """GET /1m over TLS 1.3 and over TLS 1.2, the certificate verified."""
        negotiated = []
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(authority(bench))
            context.minimum_version = context.maximum_version = version
            try:
                status, length, cipher = fetch_tls(port, context, "/1m")
            except (OSError, ValueError, IndexError) as e:
                return f"check over {version.name}: {e!r}"
            if status != 200 or length != MiB:
                return f"check over {version.name}: status {status} and {length} body bytes"
            negotiated.append(cipher)
        print(f"  port {port} negotiated {', '.join(negotiated)}")
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        if not self.s_time:
            figures = run_wrk(bench, meter, f"https://127.0.0.1:{port}/1m", ["-c", "8", "-t", "1"])
            return Load(
                operations=figures["requests"],
                seconds=figures["seconds"],
                p50_ms=figures["p50_ms"],
                p99_ms=figures["p99_ms"],
                errors=int(figures["errors"]),
            )
        # s_time's own rate divides by the client's CPU time and its seconds are whole ones:
        # the rate here is its count of connections over the wall-clock time around it.
        argv = [*bench.pinning.load(), str(which("openssl")), "s_time"]
        argv += ["-connect", f"127.0.0.1:{port}", *self.s_time, "-time", str(bench.duration)]
        with meter:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=bounded(bench.duration)
            )
        counts = re.findall(r"^(\d+) connections in [\d.]+s;", result.stdout, re.MULTILINE)
        if result.returncode != 0 or not counts:
            said = f"{result.stdout[-500:]}\n{result.stderr[-1000:]}"
            raise RuntimeError(f"s_time exited with {result.returncode}:\n{said}")
        count = int(counts[-1])
        # One character a connection: 'r' when the session was resumed, '*' otherwise.
        resumed = "".join(re.findall(r"^[*rt3]+$", result.stdout, re.MULTILINE)).count("r")
        wanted = count if "-reuse" in self.s_time else 0
        if resumed != wanted:
            raise RuntimeError(
                f"{resumed} of {count} handshakes resumed a session, wanted {wanted}"
            )
        return Load(operations=count, seconds=meter.seconds)


SCENARIOS = (
    Tls("https-handshakes", "HTTPS full TLS 1.3 handshakes a second", ("-new", "-tls1_3")),
    Tls(
        "https-resumed",
        "HTTPS TLS 1.2 handshakes resuming a session, a second",
        ("-reuse", "-tls1_2"),
    ),
    Tls("https-1m", "HTTPS 1 MiB answers, keep-alive"),
)
