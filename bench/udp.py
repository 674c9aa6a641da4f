"""DNS over UDP benchmark: dnsperf direct to a dnsmasq, through proxyd (`protocol = dns` and
`protocol = raw`) and through nginx `stream` UDP, side by side in one run.

    .venv/bin/python bench/udp.py [--runs 3] [--duration 5] [--clients 20]
                                  [--only direct,nginx,proxyd-dns,proxyd-raw] [--json FILE]

(or `make bench-udp`). The server is one dnsmasq answering `A` queries for `*.example.test`
from its configuration (no upstream, no cache misses). dnsperf (`-c CLIENTS -q 200`, a
bounded duration) sends queries for 1000 names round and round. Reported: queries per
second, average latency and lost queries, medians of `--runs` runs, targets interleaved, and
ratios to direct and to nginx. nginx runs one worker with `proxy_responses 1`; proxyd one
process. Pinning as bench/tcp.py: the proxies on the first CPU, dnsperf and dnsmasq on the
others. Traffic stays on 127.0.0.1. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from http import Bench, nginx_main  # bench/http.py
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from tcp import VENV_BIN, Pinning, Processes, free_port, machine, ratio, which

TARGETS = ("direct", "nginx", "proxyd-dns", "proxyd-raw")
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def nginx_stream_config(directory: Path, port: int, origin: int) -> str:
    main = nginx_main(directory).split("http {", 1)[0]
    return f"""load_module {NGINX_STREAM};
{main}stream {{
    upstream dns {{
        server 127.0.0.1:{origin};
    }}
    server {{
        listen 127.0.0.1:{port} udp;
        proxy_pass dns;
        proxy_responses 1;
        proxy_timeout 2s;
    }}
}}
"""


def proxyd_config(port: int, origin: int, protocol: str) -> str:
    return f"""\
[proxyd]
access_log = off

[pool dns]
servers = 127.0.0.1:{origin}

[udp dns]
listen = udp:{port}:interface=127.0.0.1
pool = dns
protocol = {protocol}
session_timeout = 5s
max_sessions = 0
"""


def start(bench: Bench, workdir: Path, target: str, origin: int) -> int:
    if target == "direct":
        return origin
    port = free_port()
    cpus = bench.pinning.proxy()
    if target == "nginx":
        if not NGINX_STREAM.exists():
            raise RuntimeError(
                "nginx's stream module is missing (apt-get install libnginx-mod-stream)"
            )
        directory = workdir / "nginx"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / kind).mkdir(parents=True, exist_ok=True)
        (directory / "nginx.conf").write_text(nginx_stream_config(directory, port, origin))
        directives = f"daemon off; pid {directory / 'nginx.pid'}; error_log stderr;"
        argv = [*cpus, str(which("nginx")), "-e", "stderr", "-p", str(directory)]
        bench.procs.start("nginx", [*argv, "-c", "nginx.conf", "-g", directives])
        return port
    path = workdir / f"{target}.ini"
    path.write_text(proxyd_config(port, origin, target.split("-")[1]))
    twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile", "", "--logfile"]
    twistd += [str(workdir / f"{target}.log"), "proxyd", "--config", str(path)]
    # UDP ports cannot be waited on by connecting: Processes waits for nothing here.
    bench.procs.start(target, [*cpus, *twistd])
    bench.started[target] = bench.procs.children[-1][1]
    return port


def dnsmasq(bench: Bench, workdir: Path) -> int:
    port = free_port()
    config = workdir / "dnsmasq.conf"
    config.write_text(
        "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\n"
        "address=/example.test/192.0.2.1\ncache-size=0\n"
    )
    dnsmasq = which("dnsmasq")
    if dnsmasq is None:
        raise RuntimeError("dnsmasq is not installed (apt-get install dnsmasq-base)")
    argv = [*bench.pinning.load(), dnsmasq, "-k", "-C", str(config), "-p", str(port)]
    bench.procs.start("dnsmasq", [*argv, "--pid-file=", "--user=root", "--log-facility=-"])
    return port


def wait_answering(port: int, limit: float = 15.0) -> None:
    """Until a query through `port` is answered: UDP has no listen state to watch."""
    query = dns.message.make_query("ready.example.test", "A")
    deadline = time.monotonic() + limit
    while True:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers DNS on port {port}") from None


_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_LATENCY = re.compile(r"Average Latency \(s\):\s+([\d.]+)")
_LOST = re.compile(r"Queries lost:\s+(\d+)")


def run_dnsperf(
    pinning: Pinning, port: int, names: Path, args: argparse.Namespace
) -> dict[str, float]:
    argv = [*pinning.load(), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(names)]
    argv += ["-c", str(args.clients), "-q", "200", "-l", str(args.duration), "-t", "2"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 30)
    text = result.stdout
    found = [pattern.search(text) for pattern in (_QPS, _LATENCY, _LOST)]
    if not all(found):
        raise RuntimeError(f"dnsperf said:\n{text}\n{result.stderr}")
    qps, latency, lost = (float(m.group(1)) for m in found if m is not None)
    return {"qps": qps, "latency_ms": latency * 1000, "lost": lost}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120:
        parser.error("--runs 1..20 and --duration 1..120 keep every run bounded")
    targets = [t for t in args.only.split(",") if t]
    pinning = Pinning()
    print(f"machine: {machine()}\npinning: {pinning.describe()}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="proxyd-bench-udp-") as tmp:
        workdir = Path(tmp)
        names = workdir / "names"
        names.write_text("".join(f"n{i}.example.test A\n" for i in range(1000)))
        procs = Processes(workdir)
        try:
            bench = Bench(workdir, pinning, procs)
            origin = dnsmasq(bench, workdir)
            ports = {target: start(bench, workdir, target, origin) for target in targets}
            for port in ports.values():
                wait_answering(port)
            samples: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
            for _ in range(args.runs):
                for target in targets:
                    samples[target].append(run_dnsperf(pinning, ports[target], names, args))
            for target, runs in samples.items():
                results[target] = {
                    key: statistics.median(run[key] for run in runs) for key in runs[0]
                }
        finally:
            procs.stop_all()
    print(f"\nmedians of {args.runs} runs of {args.duration}s, {args.clients} dnsperf clients")
    print(f"{'target':<12}{'queries/s':>12}{'avg ms':>9}{'lost':>7}{'/direct':>9}{'/nginx':>8}")
    direct = results.get("direct", {}).get("qps")
    nginx = results.get("nginx", {}).get("qps")
    for target, figures in results.items():
        qps = figures["qps"]
        print(
            f"{target:<12}{qps:>12.0f}{figures['latency_ms']:>9.3f}{figures['lost']:>7.0f}"
            f"{ratio(qps, direct):>9}{ratio(qps, nginx):>8}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
