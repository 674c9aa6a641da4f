"""TLS benchmark: handshakes and HTTPS throughput through nginx, HAProxy and proxyd, side by
side in one run, with the same certificate, protocols and ciphers.

    .venv/bin/python bench/tls.py [--runs 3] [--duration 5] [--only nginx,haproxy,proxyd]
                                  [--scenarios full,resumed,1m] [--json FILE]

(or `make bench-tls`). Each terminates TLS (an EC P-256 certificate made for the run, TLS 1.2
and 1.3, the same ECDHE+AEAD TLS 1.2 ciphers, session cache and tickets on) and proxies to the
nginx origin of bench/http.py. Scenarios:

- full:    `openssl s_time -new`: full TLS 1.3 handshakes, one connection after the other;
- resumed: `openssl s_time -reuse -tls1_2`: TLS 1.2 handshakes resuming the first session;
- 1m:      `wrk -c 8 -t 1 https://.../1m`: 1 MiB answers over kept-alive TLS connections.

s_time is one process doing one handshake at a time, so the handshake rates also measure the
client: they compare the servers' latency per handshake more than their capacity. Targets are
interleaved run by run; medians are printed with the ratio proxyd / nginx. Pinning as in
bench/tcp.py: the proxies on the first CPU, the clients and the origin on the others. Traffic
stays on 127.0.0.1. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from http import Bench, nginx_main, parse_wrk  # bench/http.py
from pathlib import Path

from tcp import VENV_BIN, Pinning, Processes, free_port, machine, ratio, which

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxyd.config.model import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES  # noqa: E402
from tests.certs import TestCA  # noqa: E402

TARGETS = ("nginx", "haproxy", "proxyd")
SCENARIOS = ("full", "resumed", "1m")


def nginx_tls_config(directory: Path, port: int, origin: int, pem: Path) -> str:
    return f"""{nginx_main(directory)}
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 32;
    }}
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {DEFAULT_CIPHERS};
    ssl_conf_command Ciphersuites {DEFAULT_CIPHERSUITES};
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_tls_config(port: int, origin: int, pem: Path) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-ciphers {DEFAULT_CIPHERS}
    ssl-default-bind-ciphersuites {DEFAULT_CIPHERSUITES}
    ssl-default-bind-options ssl-min-ver TLSv1.2 prefer-client-ciphers
    tune.ssl.cachesize 20000
defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
"""


def proxyd_tls_config(port: int, origin: int, pem: Path) -> str:
    return f"""\
[proxyd]
access_log = off

[pool origin]
servers = 127.0.0.1:{origin}
keepalive = 64

[https bench]
listen = tcp:{port}:interface=127.0.0.1
certificates = {pem}
routes =
    path / -> pool origin
"""


def start_target(bench: Bench, workdir: Path, target: str, origin: int, pem: Path) -> int:
    port = free_port()
    cpus = bench.pinning.proxy()
    if target == "nginx":
        config = nginx_tls_config(workdir / "nginx", port, origin, pem)
        bench.nginx("nginx", config, port, cpus)
    elif target == "haproxy":
        haproxy = which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        path = workdir / "haproxy.cfg"
        path.write_text(haproxy_tls_config(port, origin, pem))
        bench._start("haproxy", [*cpus, haproxy, "-db", "-f", str(path)], port)
    else:
        path = workdir / "proxyd.ini"
        path.write_text(proxyd_tls_config(port, origin, pem))
        twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile", "", "--logfile"]
        twistd += [str(workdir / "proxyd.log"), "proxyd", "--config", str(path)]
        bench._start("proxyd", [*cpus, *twistd], port)
    return port


def run_s_time(pinning: Pinning, port: int, duration: int, resumed: bool) -> float:
    """Handshakes per second (user+sys time of the client is what s_time divides by; we use
    the count over the wall-clock duration instead)."""
    argv = [*pinning.load(), "openssl", "s_time", "-connect", f"127.0.0.1:{port}"]
    argv += ["-time", str(duration)]
    argv += ["-reuse", "-tls1_2"] if resumed else ["-new"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    counts = re.findall(r"(\d+) connections in (\d+) real seconds", result.stdout)
    if not counts:
        raise RuntimeError(f"s_time said:\n{result.stdout}\n{result.stderr}")
    done, seconds = map(int, counts[-1])
    return done / max(seconds, 1)


def run_wrk_tls(pinning: Pinning, port: int, duration: int) -> float:
    argv = [*pinning.load(), str(which("wrk")), "-c", "8", "-t", "1", "-d", f"{duration}s"]
    argv += ["--latency", "--timeout", "5s", f"https://127.0.0.1:{port}/1m"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    figures = parse_wrk(result.stdout)
    if figures["socket_errors"] or figures["non_2xx"]:
        raise RuntimeError(f"wrk saw errors: {figures}")
    return figures["bytes_per_s"] / (1 << 20)


def measure(scenario: str, pinning: Pinning, port: int, duration: int) -> float:
    if scenario == "1m":
        return run_wrk_tls(pinning, port, duration)
    return run_s_time(pinning, port, duration, resumed=scenario == "resumed")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    targets = [t for t in args.only.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120:
        parser.error("--runs 1..20 and --duration 1..120 keep every run bounded")
    pinning = Pinning()
    print(f"machine: {machine()}\npinning: {pinning.describe()}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="proxyd-bench-tls-") as tmp:
        workdir = Path(tmp)
        pem = TestCA("bench CA").issue(["localhost", "127.0.0.1"]).write(workdir / "site.pem")
        procs = Processes(workdir)
        try:
            bench = Bench(workdir, pinning, procs)
            origin = bench.origin()
            ports = {t: start_target(bench, workdir, t, origin, pem) for t in targets}
            for scenario in scenarios:
                samples: dict[str, list[float]] = {t: [] for t in targets}
                for _ in range(args.runs):
                    for target in targets:
                        samples[target].append(
                            measure(scenario, pinning, ports[target], args.duration)
                        )
                results[scenario] = {t: statistics.median(v) for t, v in samples.items()}
        finally:
            procs.stop_all()
    unit = {"full": "handshakes/s", "resumed": "handshakes/s", "1m": "MiB/s"}
    print(f"\nmedians of {args.runs} runs of {args.duration}s")
    print(f"{'scenario':<10}{'unit':<14}" + "".join(f"{t:>10}" for t in targets) + "  proxyd/nginx")
    for scenario, figures in results.items():
        row = f"{scenario:<10}{unit[scenario]:<14}"
        row += "".join(f"{figures[t]:>10.0f}" for t in targets)
        print(row + f"  {ratio(figures.get('proxyd'), figures.get('nginx')):>12}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
