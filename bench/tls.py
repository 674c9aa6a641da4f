"""TLS benchmark: handshakes and HTTPS throughput through nginx, HAProxy and proxyd, side by
side in one run, with the same certificate, protocols, ciphers and session settings.

    .venv/bin/python bench/tls.py [--runs 3] [--duration 5] [--only nginx,haproxy,proxyd]
                                  [--scenarios full13,full12,resumed12,resumed13,1m]
                                  [--json FILE]

(or `make bench-tls`). Each target terminates TLS with one EC P-256 certificate made for the
run, TLS 1.2 and 1.3, proxyd's default TLS 1.2 ciphers and TLS 1.3 suites in the server's
order, session cache and tickets on, and proxies to an nginx origin as in bench/http.py.
Scenarios:

- full13:    `openssl s_time -new -tls1_3`: full TLS 1.3 handshakes, one after the other;
- full12:    `openssl s_time -new -tls1_2`: full TLS 1.2 handshakes;
- resumed12: `openssl s_time -reuse -tls1_2`: TLS 1.2 handshakes resuming the first session;
- resumed13: TLS 1.3 handshakes resuming with a ticket (PSK with ECDHE), from a Python `ssl`
             client, since s_time does not resume TLS 1.3 sessions;
- 1m:        `wrk -c 8 -t 1 https://.../1m`: 1 MiB answers over kept-alive TLS connections.

The handshake clients do one handshake at a time, so the rate they see is bounded by their own
cost and the round trips as much as by the server's. The server's CPU time (of its process
group, from /proc) is therefore measured over each run too, and each target's capacity is given
as handshakes (or MiB) per second of its CPU, the figure to compare servers by. Every process
is started afresh per scenario; each target is first checked with one HTTPS request over TLS 1.2
and one over TLS 1.3 (status, body length, negotiated cipher). Targets are interleaved run by
run; medians are printed with the ratios of proxyd to nginx and HAProxy. Pinning as in
bench/tcp.py: the proxies on the first CPU, the clients and the origin on the others. Traffic
stays on 127.0.0.1. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from http import Bench, nginx_main, parse_wrk  # bench/http.py, which shadows the stdlib's http
from pathlib import Path

from tcp import (
    VENV_BIN,
    Pinning,
    Processes,
    free_port,
    group_usage,
    machine,
    ratio,
    which,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxyd.config.model import DEFAULT_CIPHERS, DEFAULT_CIPHERSUITES  # noqa: E402
from tests.certs import TestCA  # noqa: E402

MiB = 1 << 20
TARGETS = ("nginx", "haproxy", "proxyd")
SERVER_NAME = "localhost"
MAX_HANDSHAKES = 1_000_000
"""Most handshakes of one Python client run, whatever its duration."""

Sample = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    tool: str
    unit: str  # of the rate: "hs/s" (handshakes a second) or "MiB/s"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("full13", "full TLS 1.3 handshakes", "openssl s_time -new -tls1_3", "hs/s"),
        Scenario("full12", "full TLS 1.2 handshakes", "openssl s_time -new -tls1_2", "hs/s"),
        Scenario(
            "resumed12",
            "TLS 1.2 handshakes resuming a session",
            "openssl s_time -reuse -tls1_2",
            "hs/s",
        ),
        Scenario(
            "resumed13",
            "TLS 1.3 handshakes resuming a ticket, PSK with ECDHE",
            "Python ssl client, one process",
            "hs/s",
        ),
        Scenario("1m", "1 MiB answers over TLS, keep-alive", "wrk -c 8 -t 1", "MiB/s"),
    )
}
S_TIME_FLAGS = {
    "full13": ["-new", "-tls1_3"],
    "full12": ["-new", "-tls1_2"],
    "resumed12": ["-reuse", "-tls1_2"],
}


# --- configurations -----------------------------------------------------------------------


def nginx_tls_config(directory: Path, port: int, origin: int, pem: Path) -> str:
    return f"""{nginx_main(directory)}
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    ssl_protocols TLSv1.2 TLSv1.3;
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
}}
"""


def haproxy_tls_config(port: int, origin: int, pem: Path) -> str:
    # HAProxy chooses ciphers in its own order unless told `prefer-client-ciphers`; tickets
    # and a 300 s session cache are its defaults.
    return f"""\
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-ciphers {DEFAULT_CIPHERS}
    ssl-default-bind-ciphersuites {DEFAULT_CIPHERSUITES}
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000
    tune.ssl.lifetime 300
defaults
    mode http
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port} ssl crt {pem}
    http-request set-header X-Forwarded-Proto https
    default_backend origin
backend origin
    server origin 127.0.0.1:{origin}
"""


def proxyd_tls_config(port: int, origin: int, pem: Path) -> str:
    # No tls_* keys: proxyd's defaults are what the others are given.
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


# --- processes ----------------------------------------------------------------------------


class TlsBench(Bench):
    """bench/http.py's Bench with TLS-terminating targets, all using the certificate `pem`."""

    def __init__(self, workdir: Path, pinning: Pinning, procs: Processes, pem: Path) -> None:
        super().__init__(workdir, pinning, procs)
        self.pem = pem

    def start(self, target: str, origin: int) -> int:
        port = free_port()
        cpus = self.pinning.proxy()
        if target == "nginx":
            config = nginx_tls_config(self.workdir / "nginx", port, origin, self.pem)
            self.nginx("nginx", config, port, cpus)
        elif target == "haproxy":
            haproxy = which("haproxy")
            if haproxy is None:
                raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
            path = self.workdir / "haproxy.cfg"
            path.write_text(haproxy_tls_config(port, origin, self.pem))
            self._start("haproxy", [*cpus, haproxy, "-db", "-f", str(path)], port)
        elif target == "proxyd":
            path = self.workdir / "proxyd.ini"
            path.write_text(proxyd_tls_config(port, origin, self.pem))
            twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile", ""]
            twistd += ["--logfile", str(self.workdir / "proxyd.log")]
            self._start("proxyd", [*cpus, *twistd, "proxyd", "--config", str(path)], port)
        return port

    def cpu_seconds(self, target: str) -> float:
        """User + system CPU time so far of `target`'s process group (nginx's master and
        worker), read from /proc."""
        return group_usage(self.started[target].pid)[0]  # each child leads its session


# --- checking -----------------------------------------------------------------------------


def client_context(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.minimum_version = context.maximum_version = version
    return context


def fetch_tls(
    port: int, context: ssl.SSLContext, path: str
) -> tuple[int, int, str, ssl.SSLSession]:
    """(status, body length, negotiated cipher, session) of one GET over a new connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed after {data[:200]!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        wanted = int(length.group(1)) if length else None
        while wanted is None or len(body) < wanted:
            chunk = tls.recv(65536)
            if not chunk:
                break
            body += chunk
        status = int(head.split(b" ", 2)[1])
        cipher = tls.cipher()
        assert tls.session is not None
        return status, len(body), f"{cipher[1]} {cipher[0]}" if cipher else "?", tls.session


def check(port: int, ca: Path) -> tuple[str | None, str]:
    """(None or what is wrong, the ciphers negotiated): GET /1m over TLS 1.3 and over TLS 1.2,
    the certificate verified against the run's CA."""
    ciphers = []
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        try:
            status, length, cipher, _ = fetch_tls(port, client_context(ca, version), "/1m")
        except (OSError, RuntimeError, ValueError) as e:
            return f"check over {version.name}: {e}", ", ".join(ciphers)
        if status != 200 or length != MiB:
            problem = f"check over {version.name}: status {status} and {length} body bytes"
            return f"{problem}, wanted 200 and {MiB}", ", ".join(ciphers)
        ciphers.append(cipher)
    return None, ", ".join(ciphers)


# --- load ---------------------------------------------------------------------------------


def run_s_time(pinning: Pinning, port: int, flags: list[str], duration: int) -> Sample:
    """One `openssl s_time` run. Its own rate divides by the client's user CPU time and its
    wall-clock seconds are whole ones (and the run ends on a second boundary), so the rate here
    is its count of connections over the wall-clock time measured around it."""
    argv = [*pinning.load(), str(which("openssl")), "s_time", "-connect", f"127.0.0.1:{port}"]
    argv += [*flags, "-time", str(duration)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    seconds = time.monotonic() - started
    counts = re.findall(r"^(\d+) connections in [\d.]+s;", result.stdout, re.MULTILINE)
    if result.returncode != 0 or not counts:
        raise RuntimeError(
            f"s_time exited with {result.returncode}:\n{result.stdout[-500:]}\n"
            f"{result.stderr[-1000:]}"
        )
    # One character a connection: 'r' when the session was resumed, '*' otherwise.
    marks = "".join(re.findall(r"^[*rt3]+$", result.stdout, re.MULTILINE))
    return {"count": int(counts[-1]), "seconds": seconds, "resumed": marks.count("r")}


def _first_session(context: ssl.SSLContext, port: int) -> ssl.SSLSession:
    """A TLS 1.3 session with a ticket: the ticket comes after the handshake, so read an
    answer."""
    status, _, _, session = fetch_tls(port, context, "/")
    if status != 200:
        raise RuntimeError(f"first request answered {status}")
    return session


def _resumed13_client(
    port: int, ca: str, duration: float, cpus: list[int], out: multiprocessing.Queue
) -> None:
    """Loops for `duration` seconds (at most MAX_HANDSHAKES times): connect, TLS 1.3
    handshake resuming the first connection's session, close."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    context = client_context(Path(ca), ssl.TLSVersion.TLSv1_3)
    try:
        session = _first_session(context, port)
    except (OSError, RuntimeError, ValueError) as e:
        out.put((0, 0, 0, f"first connection: {e}"))
        return
    done = resumed = errors = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and done + errors < MAX_HANDSHAKES:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as tls,
            ):
                resumed += tls.session_reused
            done += 1
        except OSError:  # ssl.SSLError included
            errors += 1
    out.put((done, resumed, errors, ""))


def run_resumed13(pinning: Pinning, port: int, ca: Path, duration: int) -> Sample:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    client = multiprocessing.Process(
        target=_resumed13_client, args=(port, str(ca), duration, pinning.load_cpus, queue)
    )
    started = time.monotonic()
    client.start()
    try:
        done, resumed, errors, problem = queue.get(timeout=duration + 30)
    finally:
        client.join(10)
        if client.is_alive():
            client.kill()
            client.join(10)
    seconds = time.monotonic() - started
    if problem or errors:
        raise RuntimeError(problem or f"{errors} handshakes failed")
    return {"count": done, "seconds": seconds, "resumed": resumed}


def run_wrk_tls(pinning: Pinning, port: int, duration: int) -> Sample:
    argv = [*pinning.load(), str(which("wrk")), "-c", "8", "-t", "1", "-d", f"{duration}s"]
    argv += ["--latency", "--timeout", "5s", f"https://127.0.0.1:{port}/1m"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    figures = parse_wrk(result.stdout)
    if figures["socket_errors"] or figures["non_2xx"]:
        raise RuntimeError(f"wrk saw errors: {figures}")
    # MiB moved, from wrk's own rate over its own duration; the wall time around wrk (start-up,
    # the last answers) is used only for the CPU shares.
    return {"count": figures["bytes_per_s"] / MiB * duration, "seconds": seconds, "wrk": duration}


def measure(
    bench: TlsBench, scenario: str, target: str, port: int, ca: Path, duration: int
) -> Sample:
    """One run: the client's figures, the rate, and the CPU the server and the client used."""
    children = os.times()
    server = bench.cpu_seconds(target)
    if scenario == "1m":
        sample = run_wrk_tls(bench.pinning, port, duration)
    elif scenario == "resumed13":
        sample = run_resumed13(bench.pinning, port, ca, duration)
    else:
        sample = run_s_time(bench.pinning, port, S_TIME_FLAGS[scenario], duration)
    server = bench.cpu_seconds(target) - server
    after = os.times()
    client = (after.children_user - children.children_user) + (
        after.children_system - children.children_system
    )
    if scenario != "1m":
        wanted = sample["count"] if scenario.startswith("resumed") else 0
        if sample["resumed"] != wanted:
            raise RuntimeError(
                f"{int(sample['resumed'])} of {int(sample['count'])} handshakes resumed a "
                f"session, wanted {int(wanted)}"
            )
    sample["rate"] = sample["count"] / sample.get("wrk", sample["seconds"])
    sample["server_cpu"] = server
    sample["server_cpu_share"] = server / sample["seconds"]
    sample["client_cpu_share"] = client / sample["seconds"]
    # What one core of the server would do flat out: the count over the server's CPU time.
    sample["per_cpu_second"] = sample["count"] / server if server > 0 else 0.0
    return sample


def run_scenario(
    scenario: Scenario,
    targets: list[str],
    pinning: Pinning,
    ca: Path,
    pem: Path,
    args: argparse.Namespace,
) -> tuple[dict[str, list[Sample]], dict[str, str], dict[str, str]]:
    """(samples, failures, negotiated ciphers) per target for one scenario, processes fresh."""
    samples: dict[str, list[Sample]] = {t: [] for t in targets}
    failed: dict[str, str] = {}
    ciphers: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-tls-{scenario.name}-") as tmp:
        procs = Processes(Path(tmp))
        bench = TlsBench(Path(tmp), pinning, procs, pem)
        try:
            try:
                origin = bench.origin()
            except RuntimeError as e:
                return samples, dict.fromkeys(targets, f"the origin nginx did not start: {e}"), {}
            ports = {}
            for target in targets:
                try:
                    ports[target] = bench.start(target, origin)
                except RuntimeError as e:
                    failed[target] = f"did not start: {e}"
                    continue
                problem, ciphers[target] = check(ports[target], ca)
                if problem:
                    failed[target] = problem
            for run in range(1, args.runs + 1):
                for target in targets:
                    if target in failed:
                        continue
                    try:
                        sample = measure(
                            bench, scenario.name, target, ports[target], ca, args.duration
                        )
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        failed[target] = f"run {run}: {e}"
                        continue
                    samples[target].append(sample)
                    print(
                        f"  run {run}/{args.runs} {target:8} {sample['rate']:8.0f} "
                        f"{scenario.unit:6}  server CPU {sample['server_cpu_share']:4.0%}"
                        f"  client CPU {sample['client_cpu_share']:4.0%}"
                        f"  {sample['per_cpu_second']:8.0f} per server CPU-second",
                        flush=True,
                    )
                    if not bench.alive(target):
                        failed[target] = f"run {run}: it (or the origin) exited during the run"
        finally:
            procs.stop_all()
    return samples, failed, ciphers


# --- report -------------------------------------------------------------------------------

ROWS = (
    ("rate", "{unit}", "{:.0f}"),
    ("server_cpu_share", "server CPU", "{:.0%}"),
    ("per_cpu_second", "per server CPU-second", "{:.0f}"),
    ("client_cpu_share", "client CPU", "{:.0%}"),
)
RATIO_ROWS = ("rate", "per_cpu_second")


def medians(samples: list[Sample]) -> dict[str, float] | None:
    if not samples:
        return None
    return {key: statistics.median(s[key] for s in samples) for key, _, _ in ROWS}


def report(
    scenario: Scenario, samples: dict[str, list[Sample]], failed: dict[str, str], runs: int
) -> dict[str, dict[str, float] | None]:
    """Prints the scenario's table (a column per target, then proxyd's ratios); returns the
    medians (None for a failed target)."""
    table = {t: None if t in failed else medians(s) for t, s in samples.items()}
    print(f"\n{scenario.name}: {scenario.title} ({scenario.tool}), medians of {runs} runs")
    others = [t for t in ("nginx", "haproxy") if t in table]
    header = f"{'':26}" + "".join(f"{t:>10}" for t in table)
    if "proxyd" in table:
        header += "".join(f"{'proxyd/' + t:>16}" for t in others)
    print(header)
    for key, label, form in ROWS:
        row = f"{label.format(unit=scenario.unit):26}"
        for values in table.values():
            row += f"{'FAILED' if values is None else form.format(values[key]):>10}"
        proxyd = table.get("proxyd")
        if proxyd and key in RATIO_ROWS:
            for other in others:
                theirs = table[other]
                row += f"{ratio(proxyd[key], theirs[key] if theirs else None):>16}"
        print(row)
    for target in table:
        if target in failed:
            print(f"{target} FAILED: {failed[target]}")
    return table


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (result.stdout or result.stderr).strip().splitlines()[0]

    found = {
        "openssl": first_line(["openssl", "version"]),
        "nginx": first_line([str(which("nginx")), "-v"]),
        "haproxy": first_line([str(which("haproxy")), "-v"]) if which("haproxy") else "none",
        "python_ssl": ssl.OPENSSL_VERSION,
    }
    for package in ("pyOpenSSL", "cryptography", "Twisted"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per target and scenario")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
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
    missing = [name for name in ("openssl", "wrk", "nginx") if which(name) is None]
    if missing:
        print(f"bench/tls.py: missing {', '.join(missing)} (make bench-tls installs them)")
        return 1
    targets = [t for t in TARGETS if t in targets]

    pinning = Pinning()
    info = machine()
    found = versions()
    print(
        f"{info['date']}  {info['cpu']} ({info['cpus']} CPUs), Linux {info['kernel']}, "
        f"Python {info['python']}"
    )
    print(", ".join(f"{name} {version}" for name, version in found.items()))
    print(f"pinning: {pinning.describe()}")
    print(f"{args.duration} s runs, medians of {args.runs}; EC P-256 certificate")
    print(
        "hs/s: handshakes a second as the client saw them; per server CPU-second: handshakes "
        "(or MiB) per second of the server's own CPU time, what one core of it would do flat out"
    )
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
            ca = TestCA("bench CA")
            ca_pem = ca.write_ca(Path(tmp) / "ca.pem")
            pem = ca.issue([SERVER_NAME, "127.0.0.1"]).write(Path(tmp) / "site.pem")
            for name in scenarios:
                scenario = SCENARIOS[name]
                print(f"\n{name}: {scenario.title} ({scenario.tool})", flush=True)
                samples, failed, ciphers = run_scenario(
                    scenario, targets, pinning, ca_pem, pem, args
                )
                if len(set(ciphers.values())) == 1:
                    print(f"  negotiated by every target: {next(iter(ciphers.values()))}")
                elif ciphers:
                    print("  WARNING: the targets negotiated different ciphers:")
                    for target, negotiated in ciphers.items():
                        print(f"    {target}: {negotiated}")
                table = report(scenario, samples, failed, args.runs)
                results[name] = {
                    "samples": samples,
                    "medians": table,
                    "failed": failed,
                    "ciphers": ciphers,
                }
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here is stopped")
        return 130
    if args.json:
        document = {
            "machine": info,
            "versions": found,
            "runs": args.runs,
            "duration": args.duration,
            "pinning": pinning.describe(),
            "scenarios": results,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
