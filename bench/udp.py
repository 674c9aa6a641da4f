"""UDP scenarios: DNS queries with dnsperf against one dnsmasq, directly and through proxyd's
`[udp]` and nginx `stream` UDP (HAProxy does not relay UDP)."""

from __future__ import annotations

import re
import subprocess
import time

import dns.exception
import dns.message
import dns.query

from bench.processes import free_port, which
from bench.scenario import Bench, Load, Meter, Scenario, bounded

CLIENTS = 20
NAMES = 1000
_FIGURES = {
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "seconds": re.compile(r"Run time \(s\):\s+([\d.]+)"),
    "latency": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}


def wait_answering(port: int, limit: float = 15.0) -> str | None:
    """None once a query through `port` is answered (UDP has no listen state to watch), or
    what is wrong after `limit` seconds."""
    query = dns.message.make_query("ready.example.test", "A")
    deadline = time.monotonic() + limit
    while True:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
            return None
        except (dns.exception.Timeout, OSError) as e:
            if time.monotonic() > deadline:
                return f"check: no DNS answer on port {port} within {limit:.0f} s ({e!r})"


class Dns(Scenario):
    """dnsperf with CLIENTS sockets and 1000 names of example.test round and round; proxyd
    relays with `protocol` (raw: a session per client socket, datagrams passed as they are;
    dns: each query parsed and its ID rewritten on a shared upstream socket)."""

    unit = "query"
    needs = ("dnsperf", "dnsmasq", "nginx")
    not_applicable = {"haproxy": "HAProxy has no UDP proxying"}
    udp = True

    def __init__(self, name: str, protocol: str) -> None:
        self.name = name
        self.protocol = protocol
        self.title = f"DNS over UDP, queries a second (proxyd protocol = {protocol})"

    def origin(self, bench: Bench) -> int:
        port = free_port()
        config = bench.workdir / "dnsmasq.conf"
        config.write_text(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\n"
            "address=/example.test/192.0.2.1\ncache-size=0\n"
        )
        argv = [*bench.pinning.load(), str(which("dnsmasq")), "-k", "-C", str(config)]
        argv += ["-p", str(port), "--pid-file=", "--user=root", "--log-facility=-"]
        bench.start("origin", argv, udp=(port,))
        (bench.workdir / "names").write_text(
            "".join(f"n{i}.example.test A\n" for i in range(NAMES))
        )
        return port

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        body = f"""    server {{
        listen 127.0.0.1:{port} udp;
        proxy_pass 127.0.0.1:{origin};
        proxy_responses 1;
        proxy_timeout 2s;
    }}
"""
        return bench.nginx_stream("nginx", body)

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        return f"""[pool dns]
servers = 127.0.0.1:{origin}

[udp dns]
listen = udp:{port}:interface=127.0.0.1
pool = dns
protocol = {self.protocol}
session_timeout = 5s
max_sessions = 0
"""

    def describe(self) -> str:
        return f"dnsperf -c {CLIENTS} -q 200, {NAMES} names (p50/p99: dnsperf gives averages only)"

    def check(self, bench: Bench, port: int) -> str | None:
        return wait_answering(port)

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        argv = [*bench.pinning.load(), str(which("dnsperf")), "-s", "127.0.0.1", "-p", str(port)]
        argv += ["-d", str(bench.workdir / "names"), "-c", str(CLIENTS), "-q", "200"]
        argv += ["-l", str(bench.duration), "-t", "2"]
        with meter:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=bounded(bench.duration)
            )
        found = {key: pattern.search(result.stdout) for key, pattern in _FIGURES.items()}
        figures = {key: float(match.group(1)) for key, match in found.items() if match}
        if len(figures) != len(_FIGURES):
            raise RuntimeError(f"dnsperf said:\n{result.stdout}\n{result.stderr}")
        return Load(
            operations=figures["completed"],
            seconds=figures["seconds"],
            errors=int(figures["lost"]),
            extra={"average_ms": figures["latency"] * 1e3},
        )


SCENARIOS = (Dns("udp-dns", "raw"), Dns("udp-dns-parsed", "dns"))
