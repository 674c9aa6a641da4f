"""The benchmark runner: every scenario against direct, proxyd (one process and a worker per
core), nginx and HAProxy, side by side in one run, with one table per scenario and the issue's
targets at the end.

    .venv/bin/python -m bench [--scenarios LIST] [--targets LIST] [--runs 3] [--duration 5]
                              [--access-log on|off] [--json FILE]

(or `make bench`). For each scenario the origin and every target are started afresh in a
temporary directory on free 127.0.0.1 ports and checked; then the load runs `--runs` times per
target, targets interleaved run by run so that a drift in the machine hits them alike, and the
medians are printed: throughput, p50 and p99 latency, errors, and the proxy's own CPU time per
operation (user + system time of its processes from /proc, over the loaded seconds), the figure
that stays comparable on a noisy machine, with ratios to nginx and HAProxy. A target that does
not start is reported as skipped with the reason, one that answers wrongly or dies as failed;
the others go on. Every process started here is stopped when its scenario ends. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import cache, compress, grpc, http, http2, security, small_post, tcp, tls, udp, websocket
from bench.processes import Pinning, which
from bench.scenario import TARGETS, Bench, Meter, Scenario, StartError

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        *http.SCENARIOS,
        *compress.SCENARIOS,
        *cache.SCENARIOS,
        *http2.SCENARIOS,
        *grpc.SCENARIOS,
        *security.SCENARIOS,
        *small_post.SCENARIOS,
        *tls.SCENARIOS,
        *tcp.SCENARIOS,
        *udp.SCENARIOS,
        *websocket.SCENARIOS,
    )
}
DEFAULT_SCENARIOS = (
    "http-keepalive",
    "http-filter",
    "http-close",
    "http-1m",
    "http-upload",
    "https-handshakes",
    "tcp-bulk",
    "tcp-connect",
    "udp-dns",
    "websocket",
)
VERSION_COMMANDS = {
    "nginx": ["-v"],
    "haproxy": ["-v"],
    "wrk": ["-v"],
    "iperf3": ["--version"],
    "dnsperf": ["-h"],
    "dnsmasq": ["--version"],
    "openssl": ["version"],
    "node": ["--version"],
}
LOG_PROBLEM = re.compile(r"Traceback|Unhandled|Error|CRITICAL")
KEYS = ("rate", "p50_ms", "p90_ms", "p99_ms", "us_per_op", "cpu_share", "rss_mib")

Sample = dict[str, float]


@dataclass
class Outcome:
    """One target in one scenario: its samples, then its medians, or why it has none."""

    status: str = "ok"  # ok | skipped (did not start, tool missing) | n/a | failed
    reason: str = ""
    samples: list[Sample] = field(default_factory=list)
    median: dict[str, float] | None = None


@dataclass(frozen=True)
class Goal:
    """One of issue 7's targets: `target`'s `key` over `other`'s, at most or at least `bound`."""

    scenario: str
    target: str
    key: str
    other: str
    at_most: bool
    bound: float
    text: str

    def judge(self, results: dict[str, dict[str, Outcome]]) -> tuple[str, str]:
        """(met | missed | not measured, the ratio or why not)."""
        if self.scenario not in results:
            return "not measured", f"{self.scenario} was not run"
        outcomes = results[self.scenario]
        for name in (self.target, self.other):
            outcome = outcomes.get(name)
            if outcome is None or outcome.median is None:
                why = f"{outcome.status}: {outcome.reason}" if outcome else "not selected"
                return "not measured", f"{name} {why}"
        mine = outcomes[self.target].median[self.key]  # type: ignore[index]
        theirs = outcomes[self.other].median[self.key]  # type: ignore[index]
        if not theirs:
            return "not measured", f"{self.other}'s {self.key} is 0"
        value = mine / theirs
        met = value <= self.bound if self.at_most else value >= self.bound
        return ("met" if met else "missed"), f"{value:.2f}"


GOALS = (
    Goal("http-keepalive", "proxyd-1", "rate", "nginx", False, 0.40, "req/s >= 0.40 x nginx"),
    Goal("http-keepalive", "proxyd-1", "us_per_op", "nginx", True, 2.5, "CPU/req <= 2.5 x nginx"),
    Goal("http-close", "proxyd-1", "rate", "nginx", False, 0.30, "req/s >= 0.30 x nginx"),
    Goal("http-1m", "proxyd-1", "rate", "nginx", False, 0.75, "MiB/s >= 0.75 x nginx"),
    Goal("tcp-bulk", "proxyd-1", "rate", "haproxy", False, 0.75, "MiB/s >= 0.75 x haproxy"),
    Goal(
        "http-keepalive",
        "proxyd-auto",
        "us_per_op",
        "proxyd-1",
        True,
        1.0,
        "CPU/req <= proxyd-1 (workers = 1)",
    ),
    Goal(
        "http-keepalive",
        "proxyd-auto",
        "rate",
        "proxyd-1",
        False,
        1.0,
        "req/s above proxyd-1 (workers = 1)",
    ),
)


# --- running ------------------------------------------------------------------------------


def measure(bench: Bench, scenario: Scenario, target: str, port: int) -> Sample:
    """One load run against `target`, with its CPU time over the loaded seconds."""
    meter = Meter(None if target == "direct" else partial(bench.procs.usage, target))
    load = scenario.load(bench, port, meter)
    sample: Sample = {
        "operations": load.operations,
        "seconds": load.seconds,
        "rate": load.operations / load.seconds if load.seconds else 0.0,
        "errors": load.errors,
        **load.extra,
    }
    if load.p50_ms is not None and load.p99_ms is not None:
        sample |= {"p50_ms": load.p50_ms, "p99_ms": load.p99_ms}
    if load.p90_ms is not None:
        sample["p90_ms"] = load.p90_ms
    if meter.cpu is not None and meter.rss is not None:
        sample["cpu_s"] = meter.cpu
        sample["cpu_share"] = meter.cpu / meter.seconds if meter.seconds else 0.0
        sample["us_per_op"] = meter.cpu / load.operations * 1e6 if load.operations else 0.0
        sample["rss_mib"] = meter.rss / (1 << 20)
    return sample


def describe_sample(sample: Sample, unit: str) -> str:
    line = f"{sample['rate']:10.1f} {unit}/s"
    if "p50_ms" in sample:
        line += f"  p50 {sample['p50_ms']:7.2f} ms"
        if "p90_ms" in sample:
            line += f"  p90 {sample['p90_ms']:7.2f} ms"
        line += f"  p99 {sample['p99_ms']:7.2f} ms"
    line += f"  {int(sample['errors'])} errors"
    if "us_per_op" in sample:
        line += f"  {sample['us_per_op']:8.1f} µs CPU/{unit}  CPU {sample['cpu_share']:4.0%}"
    return line


def run_scenario(
    scenario: Scenario, targets: list[str], pinning: Pinning, args: argparse.Namespace
) -> dict[str, Outcome]:
    """Every selected target's outcome in `scenario`, every process started afresh."""
    outcomes = {t: Outcome() for t in targets}
    for target, why in scenario.not_applicable.items():
        if target in outcomes:
            outcomes[target] = Outcome("n/a", why)
    live = [t for t in targets if outcomes[t].status == "ok"]
    missing = [tool for tool in scenario.needs if which(tool) is None]
    if missing:
        for target in live:
            outcomes[target] = Outcome("skipped", f"missing {', '.join(missing)}")
        return outcomes
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario.name}-") as tmp:
        bench = Bench(
            Path(tmp), pinning, args.duration, args.access_log == "on", args.baseline_tree
        )
        try:
            try:
                origin = scenario.origin(bench)
            except StartError as e:
                print(f"  the origin did not start: {e.detail or e.reason}")
                for target in live:
                    outcomes[target] = Outcome("skipped", f"origin: {e.reason}")
                return outcomes
            ports = start_targets(bench, scenario, live, origin, outcomes)
            for run in range(1, args.runs + 1):
                for target, port in ports.items():
                    outcome = outcomes[target]
                    if outcome.status != "ok":
                        continue
                    try:
                        sample = measure(bench, scenario, target, port)
                    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                        outcomes[target] = Outcome("failed", f"run {run}: {e}", outcome.samples)
                        print(f"  run {run}/{args.runs} {target:12} FAILED: {e}", flush=True)
                        continue
                    outcome.samples.append(sample)
                    line = describe_sample(sample, scenario.unit)
                    print(f"  run {run}/{args.runs} {target:12} {line}", flush=True)
                    gone = [n for n in ("origin", target) if n in bench.procs.children]
                    if not all(bench.procs.alive(n) for n in gone):
                        why = f"run {run}: it (or the origin) exited during the run"
                        outcomes[target] = Outcome("failed", why, outcome.samples)
        finally:
            bench.procs.stop_all()
            for target in ports:
                report_log_problems(bench.proxyd_log(target), target)
    for outcome in outcomes.values():
        if outcome.status == "ok" and outcome.samples:
            outcome.median = medians(outcome.samples)
    return outcomes


def start_targets(
    bench: Bench, scenario: Scenario, targets: list[str], origin: int, outcomes: dict[str, Outcome]
) -> dict[str, int]:
    """Starts and checks each target; returns the ports of those that are ready."""
    ports = {}
    for target in targets:
        try:
            port = scenario.start(bench, target, origin)
        except StartError as e:
            outcomes[target] = Outcome("skipped", e.reason)
            print(f"  {target} skipped: {e.reason}", flush=True)
            for line in e.detail.splitlines()[-10:]:
                print(f"    {line}")
            continue
        print(f"  {target} started, on port {port}", flush=True)
        problem = scenario.check(bench, port)
        if problem and target in bench.procs.children and not bench.procs.alive(target):
            outcomes[target] = Outcome("skipped", f"exited after starting: {problem}")
        elif problem:
            outcomes[target] = Outcome("failed", problem)
        else:
            ports[target] = port
            continue
        print(f"  {target} {outcomes[target].status}: {problem}", flush=True)
    return ports


def report_log_problems(path: Path, target: str) -> None:
    """Prints how many lines of a proxyd log mention a traceback or an error, and the first
    of them with the lines that follow it (the rest of a traceback)."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    found = [n for n, line in enumerate(lines) if LOG_PROBLEM.search(line)]
    if found:
        print(f"  {target}: {len(found)} log lines mention an error; the first one:")
        for line in lines[found[0] : found[0] + 12]:
            print(f"    {line[:300]}")


def medians(samples: list[Sample]) -> dict[str, float]:
    table = {k: statistics.median(s[k] for s in samples) for k in KEYS if k in samples[0]}
    table["errors"] = sum(s["errors"] for s in samples)
    return table


# --- reporting ----------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}"


def number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def print_table(scenario: Scenario, outcomes: dict[str, Outcome], args: argparse.Namespace) -> None:
    unit = scenario.unit
    print(f"\n{scenario.name}: {scenario.title}")
    print(f"{scenario.describe()}; medians of {args.runs} runs of {args.duration} s")
    p90 = any(o.median is not None and "p90_ms" in o.median for o in outcomes.values())
    header = (
        f"{'target':12} {unit + '/s':>11} {'p50 ms':>8} "
        + (f"{'p90 ms':>8} " if p90 else "")
        + f"{'p99 ms':>8} {'errors':>6} "
        f"{'µs CPU/' + unit:>14} {'CPU':>5} {'/nginx':>7} {'/haproxy':>8} "
        f"{'CPU/nginx':>9} {'CPU/haproxy':>11}"
    )
    print(header)
    nginx = outcomes.get("nginx", Outcome()).median
    haproxy = outcomes.get("haproxy", Outcome()).median
    for target, outcome in outcomes.items():
        values = outcome.median
        if values is None:
            print(f"{target:12} {outcome.status.upper()}: {outcome.reason}")
            continue
        rate = values["rate"]
        cost = values.get("us_per_op")
        print(
            f"{target:12} {number(rate, '{:.0f}' if rate >= 100 else '{:.1f}'):>11} "
            f"{number(values.get('p50_ms'), '{:.2f}'):>8} "
            + (f"{number(values.get('p90_ms'), '{:.2f}'):>8} " if p90 else "")
            + f"{number(values.get('p99_ms'), '{:.2f}'):>8} {int(values['errors']):6d} "
            f"{number(cost, '{:.1f}'):>14} {number(values.get('cpu_share'), '{:.0%}'):>5} "
            f"{ratio(rate, nginx and nginx['rate']):>7} "
            f"{ratio(rate, haproxy and haproxy['rate']):>8} "
            f"{ratio(cost, nginx and nginx.get('us_per_op')):>9} "
            f"{ratio(cost, haproxy and haproxy.get('us_per_op')):>11}"
        )


def print_goals(results: dict[str, dict[str, Outcome]]) -> list[dict[str, str]]:
    print("\nissue 7 targets (proxyd-1: one process on its own core; proxyd-auto: every core)")
    judged = []
    for goal in GOALS:
        verdict, value = goal.judge(results)
        if verdict == "not measured":
            print(f"  {verdict:12}         {goal.scenario}: {goal.target} {goal.text} ({value})")
        else:
            print(f"  {verdict:12} {value:>6}  {goal.scenario}: {goal.target} {goal.text}")
        judged.append(
            {
                "goal": f"{goal.scenario}: {goal.target} {goal.text}",
                "verdict": verdict,
                "value": value,
            }
        )
    return judged


def machine() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def versions(tools: set[str]) -> dict[str, str]:
    """The first line naming a version of each tool, and of the Python packages that count."""
    found = {}
    for tool in sorted(tools):
        path = which(tool)
        if path is None:
            found[tool] = "missing"
            continue
        try:
            result = subprocess.run(
                [path, *VERSION_COMMANDS.get(tool, ["--version"])],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            found[tool] = "?"
            continue
        lines = (result.stdout + result.stderr).splitlines()
        found[tool] = next((line.strip() for line in lines if re.search(r"\d\.\d", line)), "?")
    for package in ("Twisted", "httptools", "pyOpenSSL", "autobahn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def export(revision: str, directory: Path) -> str | None:
    """The source of git `revision` into `directory`; what went wrong, if anything."""
    archive = subprocess.run(["git", "archive", revision], capture_output=True)
    if archive.returncode != 0:
        return archive.stderr.decode(errors="replace").strip()
    untar = subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout)
    return None if untar.returncode == 0 else "tar failed"


def listed(
    parser: argparse.ArgumentParser, option: str, text: str, known: tuple[str, ...]
) -> list[str]:
    chosen = [name for name in text.split(",") if name]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        parser.error(f"{option}: choose among {', '.join(known)}")
    return chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, among {', '.join(SCENARIOS)} (default: all but the extras)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(t for t in TARGETS if t != "proxyd-baseline"),
        help="comma-separated (proxyd-baseline with --baseline)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run proxyd-baseline: proxyd-1 from this git revision's source, side by side",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per target; medians reported")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument("--json", type=Path, help="also write every sample and median here")
    args = parser.parse_args(argv)
    scenarios = [
        SCENARIOS[n] for n in listed(parser, "--scenarios", args.scenarios, tuple(SCENARIOS))
    ]
    chosen = listed(parser, "--targets", args.targets, TARGETS)
    if args.baseline and "proxyd-baseline" not in chosen:
        chosen.append("proxyd-baseline")
    targets = [t for t in TARGETS if t in chosen]
    baseline = tempfile.TemporaryDirectory(prefix="bench-baseline-")  # removed at exit
    args.baseline_tree = Path(baseline.name) if args.baseline else None
    if args.baseline:
        problem = export(args.baseline, Path(baseline.name))
        if problem:
            parser.error(f"--baseline {args.baseline}: {problem}")
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 60:
        parser.error("--runs must be 1..20 and --duration 1..60")

    pinning = Pinning()
    info = machine()
    found = versions({tool for s in scenarios for tool in s.needs})
    load_before = os.getloadavg()
    print(
        f"{info['date']}  {info['cpu']} ({info['cpus']} CPUs), Linux {info['kernel']}, "
        f"Python {info['python']}"
    )
    print(", ".join(f"{tool} {version}" for tool, version in found.items()))
    print(f"pinning: {pinning.describe()}")
    logs = "a line per request, connection or session, to a file"
    print(f"access logs: {logs if args.access_log == 'on' else 'off'}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    results: dict[str, dict[str, Outcome]] = {}
    try:
        for scenario in scenarios:
            print(f"\n{scenario.name}: starting the origin and the targets", flush=True)
            results[scenario.name] = run_scenario(scenario, targets, pinning, args)
            print_table(scenario, results[scenario.name], args)
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here is stopped")
        return 130
    judged = print_goals(results)
    load_after = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        document: dict[str, Any] = {
            "machine": info,
            "versions": found,
            "pinning": pinning.describe(),
            "options": {k: str(v) for k, v in vars(args).items()},
            "load_average": {"before": load_before, "after": load_after},
            "scenarios": {
                name: {
                    "title": SCENARIOS[name].title,
                    "load": SCENARIOS[name].describe(),
                    "unit": SCENARIOS[name].unit,
                    "targets": {t: asdict(o) for t, o in outcomes.items()},
                }
                for name, outcomes in results.items()
            },
            "goals": judged,
        }
        args.json.write_text(json.dumps(document, indent=2))
    failed = any(o.status == "failed" for outcomes in results.values() for o in outcomes.values())
    return 1 if failed else 0
