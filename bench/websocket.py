"""WebSocket benchmark: small messages over 100 connections, direct to an echo server, through
nginx, HAProxy and proxyd (`[http]` Upgrade passthrough, `[websocket]` passthrough and message
mode), side by side in one run.

    .venv/bin/python bench/websocket.py [--runs 3] [--duration 5] [--connections 100]
                                        [--size 32] [--window 1] [--only TARGETS] [--json FILE]

(or `make bench-websocket`, which installs the pinned `ws` package into bench/ws/node_modules).
The echo server and the load client are Node.js programs on `ws` (bench/ws/wsbench.js), so that
neither is what limits a Python proxy. The client opens `--connections` WebSockets, then, for
`--duration` seconds, keeps `--window` text messages of `--size` bytes in flight on each: with
the default window of 1 a closed loop (send, wait for the echo, send the next), so the latency
is the round trip and the rate is echoes a second. Every echo is compared with what was sent.

Targets: direct (the client to the echo server); nginx (one worker, `proxy_http_version 1.1`,
`Upgrade` and `Connection "upgrade"` passed); HAProxy (`mode http`, `nbthread 1`: it passes an
upgrade through); proxyd-http (an `[http]` route: Upgrade passthrough); proxyd-passthrough and
proxyd-message (`[websocket]` with `mode = passthrough` and `mode = message`), each proxyd its
own `twistd -n proxyd` process with the access log off. Each target is first checked with one
connection (a text and a binary message echoed unchanged, a close answered with 1000); one that
does not start or fails its check is reported as FAILED with the reason and the others go on,
and the exit status is then 1. Targets are interleaved run by run; medians of `--runs` are
printed with ratios to direct and to nginx, and the proxy's CPU time per echo from its own
process group's accounting (/proc), measured over the loaded seconds only: the figure that stays
comparable on a noisy machine. Pinning as bench/tcp.py: the proxies on the first CPU, the client
and the echo server on the others. Traffic stays on 127.0.0.1. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from http import Bench, nginx_main  # bench/http.py, which shadows the stdlib's http
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

TARGETS = (
    "direct",
    "nginx",
    "haproxy",
    "proxyd-http",
    "proxyd-passthrough",
    "proxyd-message",
)
WSBENCH = Path(__file__).resolve().parent / "ws" / "wsbench.js"
MAX_ECHOES = 10_000_000
"""Most echoes in one client run, whatever its duration."""
CLIENT_GRACE = 60
"""Seconds a client may take beyond its duration (opening, closing) before it is killed."""
LOG_PROBLEM = re.compile(r"Traceback|Unhandled|Error|CRITICAL")

Sample = dict[str, float]


# --- configurations -----------------------------------------------------------------------


def nginx_ws_config(directory: Path, port: int, echo: int) -> str:
    return f"""{nginx_main(directory)}
    upstream echo {{
        server 127.0.0.1:{echo};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def haproxy_ws_config(port: int, echo: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
frontend bench
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    server echo 127.0.0.1:{echo}
"""


def proxyd_ws_config(target: str, port: int, echo: int) -> str:
    listen = f"listen = tcp:{port}:interface=127.0.0.1\n"
    if target == "proxyd-http":
        listener = f"[http bench]\n{listen}routes =\n    path / -> pool echo\n"
    else:
        mode = target.removeprefix("proxyd-")
        listener = f"[websocket bench]\n{listen}pool = echo\nmode = {mode}\n"
    return f"[proxyd]\naccess_log = off\n\n[pool echo]\nservers = 127.0.0.1:{echo}\n\n{listener}"


# --- processes ----------------------------------------------------------------------------


class WsBench(Bench):
    """bench/http.py's Bench with a WebSocket echo server as the origin and WebSocket targets."""

    def origin(self) -> int:
        port = free_port()
        self._start(
            "origin",
            [*self.pinning.load(), str(which("node")), str(WSBENCH), "echo", str(port)],
            port,
        )
        return port

    def start(self, target: str, origin: int) -> int:
        if target == "direct":
            return origin
        port = free_port()
        cpus = self.pinning.proxy()
        if target == "nginx":
            self.nginx("nginx", nginx_ws_config(self.workdir / "nginx", port, origin), port, cpus)
        elif target == "haproxy":
            haproxy = which("haproxy")
            if haproxy is None:
                raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
            path = self.workdir / "haproxy.cfg"
            path.write_text(haproxy_ws_config(port, origin))
            self._start("haproxy", [*cpus, haproxy, "-db", "-f", str(path)], port)
        else:
            path = self.workdir / f"{target}.ini"
            path.write_text(proxyd_ws_config(target, port, origin))
            twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile", ""]
            twistd += ["--logfile", str(self.proxyd_log(target))]
            try:
                self._start(target, [*cpus, *twistd, "proxyd", "--config", str(path)], port)
            except RuntimeError as e:
                said = self.proxyd_log(target).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{e}\nits log ends:\n{said}") from None
        return port

    def proxyd_log(self, target: str) -> Path:
        return self.workdir / f"{target}.log"

    def usage(self, name: str) -> tuple[float, int]:
        return group_usage(self.started[name].pid)  # each child leads its own session


# --- checking and loading -----------------------------------------------------------------


def check(pinning: Pinning, port: int) -> str | None:
    """None when one WebSocket through `port` echoes and closes right; otherwise what is wrong."""
    argv = [
        *pinning.load(),
        str(which("node")),
        str(WSBENCH),
        "check",
        f"ws://127.0.0.1:{port}/echo",
    ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "check: no answer within 30 s"
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"check exited with {result.returncode}"
    return None


def measure(bench: WsBench, target: str, port: int, args: argparse.Namespace) -> Sample:
    """One client run against `port`; the proxy's and the echo server's CPU are read just
    before the client starts sending and just after it stops, so that neither the opening
    handshakes nor the closes are counted."""
    argv = [*bench.pinning.load(), str(which("node")), str(WSBENCH), "load"]
    argv += [f"ws://127.0.0.1:{port}/echo", str(args.connections), str(args.duration)]
    argv += [str(args.size), str(args.window), str(MAX_ECHOES)]
    client = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert client.stdin is not None and client.stdout is not None and client.stderr is not None
    watchdog = threading.Timer(args.duration + CLIENT_GRACE, client.kill)
    watchdog.start()
    names = ["origin"] if target == "direct" else ["origin", target]
    try:
        if client.stdout.readline().strip() != "open":
            raise RuntimeError(f"client: {client.stderr.read().strip() or 'no connections'}")
        before = {name: bench.usage(name) for name in names}
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        after = {name: bench.usage(name) for name in names}
        if not line:
            raise RuntimeError(f"client: {client.stderr.read().strip() or 'no result'}")
        client.stdin.write("close\n")
        client.stdin.close()
        if client.wait() != 0:
            raise RuntimeError(f"client: {client.stderr.read().strip()}")
    finally:
        watchdog.cancel()
        if client.poll() is None:
            client.kill()
            client.wait()
    result = json.loads(line)
    seconds = result["seconds"]
    sample: Sample = {key: float(value) for key, value in result.items()}
    sample["rate"] = result["echoes"] / seconds
    echo_cpu = after["origin"][0] - before["origin"][0]
    sample["load_cpu_share"] = (result["client_cpu"] + echo_cpu) / seconds
    if target != "direct":
        proxy_cpu = after[target][0] - before[target][0]
        sample["proxy_cpu"] = proxy_cpu
        sample["proxy_cpu_share"] = proxy_cpu / seconds
        sample["us_per_echo"] = proxy_cpu / result["echoes"] * 1e6 if result["echoes"] else 0.0
        sample["rss_mib"] = after[target][1] / (1 << 20)
    return sample


def log_problems(path: Path) -> list[str]:
    """The lines of a proxyd log that mention a traceback or an error."""
    if not path.exists():
        return []
    return [
        line for line in path.read_text(errors="replace").splitlines() if LOG_PROBLEM.search(line)
    ]


def run_all(
    targets: list[str], pinning: Pinning, args: argparse.Namespace
) -> tuple[dict[str, list[Sample]], dict[str, str], dict[str, list[str]]]:
    """(samples, failures, proxyd log lines with errors) per target, every process fresh."""
    samples: dict[str, list[Sample]] = {t: [] for t in targets}
    failed: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-websocket-") as tmp:
        procs = Processes(Path(tmp))
        bench = WsBench(Path(tmp), pinning, procs)
        try:
            try:
                origin = bench.origin()
            except RuntimeError as e:
                return samples, dict.fromkeys(targets, f"the echo server did not start: {e}"), {}
            if problem := check(pinning, origin):
                return (
                    samples,
                    dict.fromkeys(targets, f"the echo server answers wrong: {problem}"),
                    {},
                )
            ports = {}
            for target in targets:
                try:
                    ports[target] = bench.start(target, origin)
                except RuntimeError as e:
                    failed[target] = f"did not start: {e}"
                    continue
                if problem := check(pinning, ports[target]):
                    failed[target] = problem
            for run in range(1, args.runs + 1):
                for target in targets:
                    if target in failed:
                        continue
                    try:
                        sample = measure(bench, target, ports[target], args)
                    except (RuntimeError, ValueError, OSError) as e:
                        failed[target] = f"run {run}: {e}"
                        continue
                    samples[target].append(sample)
                    proxy = ""
                    if "us_per_echo" in sample:
                        proxy = (
                            f"  proxy {sample['us_per_echo']:6.1f} us/echo"
                            f" CPU {sample['proxy_cpu_share']:4.0%}"
                            f" RSS {sample['rss_mib']:5.1f} MiB"
                        )
                    print(
                        f"  run {run}/{args.runs} {target:18} {sample['rate']:8.0f} echoes/s"
                        f"  p50 {sample['p50_ms']:6.2f} ms  p99 {sample['p99_ms']:6.2f} ms"
                        f"  {int(sample['errors'])} errors{proxy}"
                        f"  load CPU {sample['load_cpu_share']:4.0%}",
                        flush=True,
                    )
                    if not bench.alive(target):
                        failed[target] = f"run {run}: it (or the echo server) exited during the run"
        finally:
            procs.stop_all()
            for target in targets:
                if target.startswith("proxyd") and (
                    lines := log_problems(bench.proxyd_log(target))
                ):
                    problems[target] = lines
    return samples, failed, problems


# --- report -------------------------------------------------------------------------------

KEYS = (
    "rate",
    "p50_ms",
    "p99_ms",
    "us_per_echo",
    "proxy_cpu_share",
    "load_cpu_share",
    "rss_mib",
)


def medians(samples: list[Sample]) -> dict[str, float] | None:
    if not samples:
        return None
    table = {key: statistics.median(s[key] for s in samples) for key in KEYS if key in samples[0]}
    table["errors"] = sum(s["errors"] for s in samples)
    return table


def report(
    samples: dict[str, list[Sample]], failed: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, float] | None]:
    """Prints the table and the ratios; returns the medians (None for a failed target)."""
    table = {t: None if t in failed else medians(s) for t, s in samples.items()}
    direct = table.get("direct")
    nginx = table.get("nginx")
    print(
        f"\n{args.connections} connections, {args.size}-byte text messages, window {args.window}; "
        f"medians of {args.runs} runs of {args.duration} s"
    )
    print(
        f"{'target':18} {'echoes/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'us/echo':>8} {'proxy CPU':>9} {'load CPU':>8} {'/direct':>7} {'/nginx':>7} "
        f"{'CPU/nginx':>9}"
    )
    for target, values in table.items():
        if values is None:
            print(f"{target:18} FAILED: {failed.get(target, 'no samples')}")
            continue
        cost = f"{values['us_per_echo']:8.1f}" if "us_per_echo" in values else f"{'-':>8}"
        share = f"{values['proxy_cpu_share']:9.0%}" if "proxy_cpu_share" in values else f"{'-':>9}"
        to_direct = ratio(values["rate"], direct["rate"]) if direct else "n/a"
        to_nginx = ratio(values["rate"], nginx["rate"]) if nginx else "n/a"
        cpu_to_nginx = (
            ratio(values["us_per_echo"], nginx["us_per_echo"])
            if nginx and "us_per_echo" in values
            else "-"
        )
        print(
            f"{target:18} {values['rate']:9.0f} {values['p50_ms']:7.2f} {values['p99_ms']:7.2f} "
            f"{int(values['errors']):6d} {cost} {share} {values['load_cpu_share']:8.0%} "
            f"{to_direct:>7} {to_nginx:>7} {cpu_to_nginx:>9}"
        )
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per target")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=100, help="WebSockets at once")
    parser.add_argument("--size", type=int, default=32, help="bytes per message")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per connection")
    parser.add_argument("--only", default=",".join(TARGETS), help="targets, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    targets = [t for t in args.only.split(",") if t]
    if not set(targets) <= set(TARGETS) or not targets:
        parser.error(f"--only: choose among {', '.join(TARGETS)}")
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 60:
        parser.error("--runs must be 1..20 and --duration 1..60")
    if not 1 <= args.connections <= 2000 or not 1 <= args.size <= 65536:
        parser.error("--connections must be 1..2000 and --size 1..65536")
    if not 1 <= args.window <= 100:
        parser.error("--window must be 1..100")
    missing = [name for name in ("node", "nginx") if which(name) is None]
    if missing or not (WSBENCH.parent / "node_modules" / "ws").is_dir():
        print(
            f"bench/websocket.py: missing {', '.join(missing) or 'bench/ws/node_modules'} "
            "(make bench-websocket installs them)"
        )
        return 1
    targets = [t for t in TARGETS if t in targets]

    pinning = Pinning()
    info = machine()
    node = subprocess.run([str(which("node")), "--version"], capture_output=True, text=True)
    print(
        f"{info['date']}  {info['cpu']} ({info['cpus']} CPUs), Linux {info['kernel']}, "
        f"Python {info['python']}, Node.js {node.stdout.strip()}"
    )
    print(f"pinning: {pinning.describe()}")
    load_before = os.getloadavg()
    print(f"load average before the run: {' '.join(f'{x:.2f}' for x in load_before)}")
    print(
        "echoes/s: round trips a second, each one message to the echo server and one back; "
        "us/echo: the proxy's own CPU time per round trip (two messages relayed)"
    )
    try:
        samples, failed, problems = run_all(targets, pinning, args)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here is stopped")
        return 130
    table = report(samples, failed, args)
    load_after = os.getloadavg()
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in load_after)}")
    for target, lines in problems.items():
        print(f"\n{target}: {len(lines)} log lines mention an error; the first ones:")
        for line in lines[:5]:
            print(f"  {line}")
    if args.json:
        document = {
            "machine": info,
            "node": node.stdout.strip(),
            "runs": args.runs,
            "duration": args.duration,
            "connections": args.connections,
            "size": args.size,
            "window": args.window,
            "pinning": pinning.describe(),
            "load_average": {"before": load_before, "after": load_after},
            "samples": samples,
            "medians": table,
            "failed": failed,
            "log_problems": problems,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
