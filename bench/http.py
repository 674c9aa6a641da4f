"""HTTP relay benchmark: wrk direct, through proxyd, nginx and HAProxy, side by side in one run.

    .venv/bin/python bench/http.py [--runs 3] [--duration 5] [--only direct,nginx,haproxy,proxyd]
                                   [--scenarios keepalive,close,1m] [--connections 50]
                                   [--threads 2] [--json FILE]

(or `make bench-http`). The origin is an nginx (one worker) answering `GET /` with `hello`
and serving a 1 MiB file at `/1m`, so that it is not what limits the figures. Scenarios:

- keepalive: `GET /`, small answers, client connections kept alive;
- close:     `GET /` with `Connection: close`, one client connection per request;
- 1m:        `GET /1m`, 1 MiB answers, kept alive.

Each scenario starts the origin and every target afresh: direct (wrk to the origin), proxyd
(`twistd -n proxyd`, one process), nginx (1 worker, upstream `keepalive 32`) and HAProxy
(`nbthread 1`, `http-reuse always`); all three proxies keep their upstream connections alive
whatever the client does. A target is checked with one request before it is loaded; one that
does not start or answers wrongly is reported and left out, and the run goes on. Then
`wrk -c 50 -t 2 -d DURATION --latency` runs `--runs` times per target, targets interleaved
run by run so that a drift in the machine hits them alike, and the medians of req/s, p99
latency and transfer rate are printed with ratios. Pinning as in bench/tcp.py: the proxies on
the first CPU, wrk and the origin on the others. Not run in CI.

Note: this file shadows the standard library's `http` package for anything run from bench/,
so nothing here imports `http` (or urllib): the checks speak HTTP over a plain socket.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tcp import VENV_BIN, Pinning, Processes, free_port, machine, ratio, which

MiB = 1 << 20
SMALL_BODY = b"hello\n"
TARGETS = ("direct", "nginx", "haproxy", "proxyd")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    headers: tuple[str, ...]
    body_length: int


SMALL = len(SMALL_BODY)
SCENARIOS = {
    s.name: s
    for s in (
        Scenario("keepalive", "small answers, keep-alive", "/", (), SMALL),
        Scenario("close", "small answers, Connection: close", "/", ("Connection: close",), SMALL),
        Scenario("1m", "1 MiB answers, keep-alive", "/1m", (), MiB),
    )
}


# --- configurations -----------------------------------------------------------------------


def nginx_main(directory: Path) -> str:
    """The part every nginx here shares: one worker, temporary files under `directory`, no
    access log."""
    user = ""
    if os.geteuid() == 0:  # as root nginx would run its worker as nobody; stay who we are
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
{user}worker_processes 1;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{temp}
"""


def nginx_origin_config(directory: Path, port: int, www: Path) -> str:
    return f"""{nginx_main(directory)}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = / {{
            default_type text/plain;
            return 200 "{SMALL_BODY.decode().strip()}\\n";
        }}
    }}
}}
"""


def nginx_proxy_config(directory: Path, port: int, origin: int) -> str:
    return f"""{nginx_main(directory)}
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Stream what does not fit the buffers, as the others do, rather than spool it to
            # a temporary file.
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def haproxy_config(port: int, origin: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
"""


def proxyd_config(port: int, origin: int) -> str:
    return f"""\
[proxyd]
access_log = off

[pool origin]
servers = 127.0.0.1:{origin}
keepalive = 64

[http bench]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path / -> pool origin
"""


# --- processes ----------------------------------------------------------------------------


class Bench:
    """One scenario's processes: the origin and the targets, all stopped by `procs`."""

    def __init__(self, workdir: Path, pinning: Pinning, procs: Processes) -> None:
        self.workdir = workdir
        self.pinning = pinning
        self.procs = procs
        self.started: dict[str, subprocess.Popen[bytes]] = {}  # target (or "origin") -> leader

    def _start(self, name: str, argv: list[str], port: int) -> None:
        self.procs.start(name, argv, ports=[port])
        self.started[name] = self.procs.children[-1][1]

    def nginx(self, name: str, config: str, port: int, cpus: list[str]) -> None:
        """Starts nginx on `config`, with `-p WORKDIR/NAME`, where its temporary files go."""
        directory = self.workdir / name
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / kind).mkdir(parents=True, exist_ok=True)
        (directory / "nginx.conf").write_text(config)
        nginx = str(which("nginx"))
        directives = f"daemon off; pid {directory / 'nginx.pid'}; error_log stderr;"
        argv = [*cpus, nginx, "-e", "stderr", "-p", str(directory), "-c", "nginx.conf"]
        self._start(name, [*argv, "-g", directives], port)

    def origin(self) -> int:
        port = free_port()
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        (www / "1m").write_bytes(os.urandom(MiB))
        config = nginx_origin_config(self.workdir / "origin", port, www)
        self.nginx("origin", config, port, self.pinning.load())
        return port

    def start(self, target: str, origin: int) -> int:
        """Starts `target` in front of the origin; returns its port."""
        if target == "direct":
            return origin
        port = free_port()
        proxy_cpus = self.pinning.proxy()
        if target == "nginx":
            config = nginx_proxy_config(self.workdir / "nginx", port, origin)
            self.nginx("nginx", config, port, proxy_cpus)
        elif target == "haproxy":
            haproxy = which("haproxy")
            if haproxy is None:
                raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
            config_path = self.workdir / "haproxy.cfg"
            config_path.write_text(haproxy_config(port, origin))
            argv = [*proxy_cpus, haproxy, "-db", "-f", str(config_path)]
            self._start("haproxy", argv, port)
        elif target == "proxyd":
            config_path = self.workdir / "proxyd.ini"
            config_path.write_text(proxyd_config(port, origin))
            twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile", ""]
            twistd += ["--logfile", str(self.workdir / "proxyd.log")]
            argv = [*proxy_cpus, *twistd, "proxyd", "--config", str(config_path)]
            self._start("proxyd", argv, port)
        return port

    def alive(self, target: str) -> bool:
        """Whether the origin and `target` still run."""
        names = ("origin",) if target == "direct" else ("origin", target)
        return all(self.started[name].poll() is None for name in names)


# --- checking and loading -----------------------------------------------------------------


def fetch(port: int, path: str, headers: tuple[str, ...]) -> tuple[int, bytes]:
    """(status, body) of one GET over a new connection: Content-Length, chunked or to EOF."""
    request = "\r\n".join([f"GET {path} HTTP/1.1", "Host: bench", *headers, "", ""])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {data[:200]!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        )
        length = int(fields.get(b"content-length", -1))
        chunked = fields.get(b"transfer-encoding", b"").lower() == b"chunked"
        while length < 0 or len(body) < length:
            if chunked and body.endswith(b"0\r\n\r\n"):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    if chunked:
        decoded, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return status, body


def check(port: int, scenario: Scenario) -> str | None:
    """None when the target answers the scenario's request right; otherwise what is wrong."""
    try:
        status, body = fetch(port, scenario.path, scenario.headers)
    except (OSError, RuntimeError, ValueError) as e:
        return f"check request failed: {e}"
    if status != 200 or len(body) != scenario.body_length:
        wanted = f"200 and {scenario.body_length}"
        return f"check: status {status} and {len(body)} body bytes, wanted {wanted}"
    return None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BINARY = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(text: str) -> dict[str, float]:
    """req/s, p99 in ms, bytes/s and error counts from wrk's `--latency` report."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {pattern!r} in wrk's output:\n{text}")
        return match

    p99 = find(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)$")
    transfer = find(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)$")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)$").group(1)),
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "bytes_per_s": float(transfer.group(1)) * _BINARY[transfer.group(2)],
        "requests": int(find(r"^\s+(\d+) requests in").group(1)),
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(bad.group(1)) if bad else 0,
    }


def run_wrk(
    pinning: Pinning, port: int, scenario: Scenario, args: argparse.Namespace
) -> dict[str, float]:
    argv = [*pinning.load(), str(which("wrk")), "-c", str(args.connections)]
    argv += ["-t", str(args.threads), "-d", f"{args.duration}s", "--latency", "--timeout", "5s"]
    for header in scenario.headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 30)
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    return parse_wrk(result.stdout)


def run_scenario(
    scenario: Scenario, targets: list[str], pinning: Pinning, args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, float]]], dict[str, str]]:
    """(samples per target, failure per target) for one scenario, every process fresh."""
    samples: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{scenario.name}-") as tmp:
        procs = Processes(Path(tmp))
        bench = Bench(Path(tmp), pinning, procs)
        try:
            try:
                origin = bench.origin()
            except RuntimeError as e:
                return samples, dict.fromkeys(targets, f"the origin nginx did not start: {e}")
            if problem := check(origin, scenario):
                return samples, dict.fromkeys(targets, f"the origin answers wrong: {problem}")
            ports = {}
            for target in targets:
                try:
                    ports[target] = bench.start(target, origin)
                except RuntimeError as e:
                    failed[target] = f"did not start: {e}"
                    continue
                if problem := check(ports[target], scenario):
                    failed[target] = problem
            for run in range(1, args.runs + 1):
                for target in targets:
                    if target in failed:
                        continue
                    try:
                        sample = run_wrk(pinning, ports[target], scenario, args)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        failed[target] = f"run {run}: {e}"
                        continue
                    samples[target].append(sample)
                    errors = int(sample["socket_errors"] + sample["non_2xx"])
                    print(
                        f"  run {run}/{args.runs} {target:8} {sample['rps']:10.0f} req/s"
                        f"  p99 {sample['p99_ms']:7.2f} ms"
                        f"  {sample['bytes_per_s'] / MiB:9.1f} MiB/s  {errors} errors",
                        flush=True,
                    )
                    if not bench.alive(target):
                        failed[target] = f"run {run}: it (or the origin) exited during the run"
        finally:
            procs.stop_all()
    return samples, failed


# --- report -------------------------------------------------------------------------------


def medians(samples: list[dict[str, float]]) -> dict[str, float] | None:
    if not samples:
        return None
    keys = ("rps", "p99_ms", "bytes_per_s")
    result = {key: statistics.median(s[key] for s in samples) for key in keys}
    result["errors"] = sum(s["socket_errors"] + s["non_2xx"] for s in samples)
    return result


def report(
    scenario: Scenario,
    samples: dict[str, list[dict[str, float]]],
    failed: dict[str, str],
) -> dict[str, dict[str, float] | None]:
    """Prints the scenario's table and ratios; returns the medians (None for a failed target)."""
    table = {t: None if t in failed else medians(s) for t, s in samples.items()}
    direct = table.get("direct")
    print(f"\n{scenario.name}: {scenario.title} (GET {scenario.path})")
    print(f"{'target':10} {'req/s':>10} {'p99 ms':>8} {'MiB/s':>9} {'errors':>7} {'/direct':>8}")
    for target, values in table.items():
        if values is None:
            print(f"{target:10} FAILED: {failed.get(target, 'no samples')}")
            continue
        to_direct = ratio(values["rps"], direct["rps"]) if direct else "n/a"
        print(
            f"{target:10} {values['rps']:10.0f} {values['p99_ms']:8.2f} "
            f"{values['bytes_per_s'] / MiB:9.1f} {int(values['errors']):7d} {to_direct:>8}"
        )
    proxyd = table.get("proxyd")
    for other in ("nginx", "haproxy"):
        theirs = table.get(other)
        if proxyd and theirs:
            print(
                f"proxyd/{other}: req/s {ratio(proxyd['rps'], theirs['rps'])}, "
                f"p99 {ratio(proxyd['p99_ms'], theirs['p99_ms'])}, "
                f"transfer {ratio(proxyd['bytes_per_s'], theirs['bytes_per_s'])}"
            )
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t")
    parser.add_argument("--only", default=",".join(TARGETS), help="targets, comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    targets = [t for t in args.only.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not set(targets) <= set(TARGETS) or not targets:
        parser.error(f"--only: choose among {', '.join(TARGETS)}")
    if not set(scenarios) <= set(SCENARIOS) or not scenarios:
        parser.error(f"--scenarios: choose among {', '.join(SCENARIOS)}")
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 60:
        parser.error("--runs must be 1..20 and --duration 1..60")
    if not 1 <= args.threads <= args.connections <= 10000:
        parser.error("--threads must be at least 1 and at most --connections (<= 10000)")
    missing = [name for name in ("wrk", "nginx") if which(name) is None]
    if missing:
        print(f"bench/http.py: missing {', '.join(missing)} (make bench-http installs them)")
        return 1
    targets = [t for t in TARGETS if t in targets]

    pinning = Pinning()
    info = machine()
    print(
        f"{info['date']}  {info['cpu']} ({info['cpus']} CPUs), Linux {info['kernel']}, "
        f"Python {info['python']}"
    )
    print(f"pinning: {pinning.describe()}")
    print(
        f"wrk -c {args.connections} -t {args.threads} -d {args.duration}s --latency; "
        f"medians of {args.runs} runs"
    )
    results = {}
    try:
        for name in scenarios:
            scenario = SCENARIOS[name]
            print(f"\n{name}: {scenario.title}", flush=True)
            samples, failed = run_scenario(scenario, targets, pinning, args)
            table = report(scenario, samples, failed)
            results[name] = {"samples": samples, "medians": table, "failed": failed}
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here is stopped")
        return 130
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "runs": args.runs,
                    "duration": args.duration,
                    "connections": args.connections,
                    "threads": args.threads,
                    "pinning": pinning.describe(),
                    "scenarios": results,
                },
                indent=2,
            )
        )
    failures = any(r["failed"] for r in results.values())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
