"""TCP relay benchmark: direct, through proxyd and through HAProxy, side by side in one run.

    .venv/bin/python bench/tcp.py [--runs 3] [--duration 5] [--clients 4] [--portforward]
                                  [--skip-haproxy] [--json FILE]

(or `make bench-tcp`). Two measures, each run `--runs` times per target, interleaved so that a
drift in the machine's speed hits every target alike; the medians are reported:

- bulk throughput: `iperf3 -c 127.0.0.1 -p PORT -t DURATION -J`, one stream, to an iperf3
  server on loopback;
- connections per second: `--clients` processes each looping connect, send a one-line HTTP/1.0
  request, read the answer to EOF, close, for DURATION seconds, against a backend that answers
  at once (HAProxy's `http-request return` when HAProxy is installed, else a Python one).

`--portforward` adds Twisted's `twistd portforward` (a bare Protocol pair, one process per
port) as a reference: what any Twisted relay costs before proxyd's own work.

The proxy under test is pinned to the first allowed CPU with taskset, the load generators and
backends to the others (when there are at least two). Everything listens on 127.0.0.1 on free
ports; every process started here is stopped on exit. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
REQUEST = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"
EXPECTED_BODY = b"ok"
STARTUP_TIMEOUT = 20.0


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def group_usage(group: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) of the process group `group`, from /proc."""
    ticks = pages = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            pages += int(fields[21])  # rss
    return ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE")


class Processes:
    """Children in their own process groups, output to files; all stopped by `stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: Sequence[str], ports: Sequence[int] = ()) -> None:
        log = self.directory / f"{len(self.children):02d}-{name}.log"
        with open(log, "wb") as out:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, child, log))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not set(ports) <= listening_ports():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not come up on {list(ports)} "
                    f"(exit status {child.poll()}):\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.02)

    def stop_all(self) -> None:
        for _, child, _ in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        for _, child, _ in reversed(self.children):
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
        self.children.clear()


class Pinning:
    """taskset prefixes: the proxy on one CPU, everything else on the rest."""

    def __init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.taskset = which("taskset")
        self.enabled = self.taskset is not None and len(cpus) >= 2
        self.proxy_cpus = cpus[:1] if self.enabled else cpus
        self.load_cpus = cpus[1:] if self.enabled else cpus

    def _prefix(self, cpus: list[int]) -> list[str]:
        if not self.enabled:
            return []
        return [str(self.taskset), "-c", ",".join(map(str, cpus))]

    def proxy(self) -> list[str]:
        return self._prefix(self.proxy_cpus)

    def load(self) -> list[str]:
        return self._prefix(self.load_cpus)

    def describe(self) -> str:
        if not self.enabled:
            return "no pinning (taskset missing or a single CPU)"
        return f"proxy on CPU {self.proxy_cpus}, load generators and backends on {self.load_cpus}"


# --- backends ----------------------------------------------------------------------------


def haproxy_backend_config(port: int) -> str:
    return f"""\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend answer
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "{EXPECTED_BODY.decode()}"
"""


PYTHON_BACKEND = f"""
import asyncio, sys
async def answer(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.0 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n" + {EXPECTED_BODY!r})
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


# --- proxies ------------------------------------------------------------------------------


def proxyd_config(listen: dict[str, int], backends: dict[str, int]) -> str:
    parts = ["[proxyd]\naccess_log = off\n"]
    for name, port in listen.items():
        parts.append(f"[pool {name}]\nservers = 127.0.0.1:{backends[name]}\n")
        parts.append(
            f"[tcp {name}]\nlisten = tcp:{port}:interface=127.0.0.1\npool = {name}\n"
            "idle_timeout = 1m\n"
        )
    return "\n".join(parts)


def haproxy_relay_config(listen: dict[str, int], backends: dict[str, int]) -> str:
    parts = [
        "global\n    nbthread 1\n    maxconn 4000\n",
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n"
        "    timeout server 1m\n",
    ]
    for name, port in listen.items():
        parts.append(
            f"frontend {name}\n    bind 127.0.0.1:{port}\n    default_backend {name}\n"
            f"backend {name}\n    server s1 127.0.0.1:{backends[name]}\n"
        )
    return "\n".join(parts)


# --- load ---------------------------------------------------------------------------------


def iperf3_once(pinning: Pinning, iperf3: str, port: int, duration: int) -> float:
    """Bits per second received, from one `iperf3 -c` run."""
    result = subprocess.run(
        [
            *pinning.load(),
            iperf3,
            "-c",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            str(duration),
            "-J",
            "--connect-timeout",
            "5000",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    report = json.loads(result.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3 through port {port}: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"])


def _cps_worker(port: int, duration: float, cpus: list[int], out: multiprocessing.Queue) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    done = errors = 0
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up on our side
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUEST)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            if answer.startswith(b"HTTP/1.") and answer.endswith(EXPECTED_BODY):
                done += 1
            else:
                errors += 1
        except OSError:
            errors += 1
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.close()
    out.put((done, errors))


def connections_per_second(
    pinning: Pinning, port: int, duration: float, clients: int
) -> tuple[float, int]:
    """(completed connections a second, failed ones) with `clients` parallel loops."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=_cps_worker, args=(port, duration, pinning.load_cpus, queue))
        for _ in range(clients)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=duration + 30) for _ in workers]
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return done / max(elapsed, duration), errors


# --- report -------------------------------------------------------------------------------


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


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--clients", type=int, default=4, help="parallel connection loops")
    parser.add_argument("--skip-haproxy", action="store_true")
    parser.add_argument(
        "--portforward",
        action="store_true",
        help="also measure Twisted's own `twistd portforward`: the floor for a Twisted relay",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 60:
        parser.error("--runs must be 1..20 and --duration 1..60")

    pinning = Pinning()
    iperf3 = which("iperf3")
    haproxy = None if args.skip_haproxy else which("haproxy")
    notes = []
    if iperf3 is None:
        notes.append("iperf3 not installed: no throughput figures (apt-get install iperf3)")
    if haproxy is None:
        notes.append(
            "HAProxy not installed or skipped: no HAProxy column; the connection "
            "backend is a Python one (slower, so it caps every figure)"
        )

    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            backends: dict[str, int] = {"cps": free_port()}
            if iperf3:
                backends["iperf"] = free_port()
                procs.start(
                    "iperf3-server",
                    [
                        *pinning.load(),
                        iperf3,
                        "-s",
                        "-B",
                        "127.0.0.1",
                        "-p",
                        str(backends["iperf"]),
                    ],
                    ports=[backends["iperf"]],
                )
            if haproxy:
                config = workdir / "backend.cfg"
                config.write_text(haproxy_backend_config(backends["cps"]))
                procs.start(
                    "backend-haproxy",
                    [*pinning.load(), haproxy, "-db", "-f", str(config)],
                    ports=[backends["cps"]],
                )
            else:
                procs.start(
                    "backend-python",
                    [*pinning.load(), sys.executable, "-c", PYTHON_BACKEND, str(backends["cps"])],
                    ports=[backends["cps"]],
                )

            targets: dict[str, dict[str, int]] = {"direct": dict(backends)}
            listen = {name: free_port() for name in backends}
            config = workdir / "proxyd.ini"
            config.write_text(proxyd_config(listen, backends))
            procs.start(
                "proxyd",
                [
                    *pinning.proxy(),
                    str(VENV_BIN / "twistd"),
                    "-n",
                    "--pidfile",
                    "",
                    "--logfile",
                    str(workdir / "proxyd.log"),
                    "proxyd",
                    "--config",
                    str(config),
                ],
                ports=list(listen.values()),
            )
            targets["proxyd"] = listen
            if args.portforward:
                listen = {name: free_port() for name in backends}
                for name, port in listen.items():
                    procs.start(
                        f"portforward-{name}",
                        [
                            *pinning.proxy(),
                            str(VENV_BIN / "twistd"),
                            "-n",
                            "--pidfile",
                            "",
                            "--logfile",
                            str(workdir / f"portforward-{name}.log"),
                            "portforward",
                            "-p",
                            f"tcp:{port}:interface=127.0.0.1",
                            "-h",
                            "127.0.0.1",
                            "-d",
                            str(backends[name]),
                        ],
                        ports=[port],
                    )
                targets["portforward"] = listen
            if haproxy:
                listen = {name: free_port() for name in backends}
                config = workdir / "relay.cfg"
                config.write_text(haproxy_relay_config(listen, backends))
                procs.start(
                    "haproxy",
                    [*pinning.proxy(), haproxy, "-db", "-f", str(config)],
                    ports=list(listen.values()),
                )
                targets["haproxy"] = listen

            print(f"pinning: {pinning.describe()}")
            samples: dict[str, dict[str, list[float]]] = {
                t: {"gbps": [], "cps": []} for t in targets
            }
            failures: dict[str, int] = dict.fromkeys(targets, 0)
            for run in range(1, args.runs + 1):
                for target, ports in targets.items():
                    line = f"run {run}/{args.runs} {target:8}"
                    if iperf3:
                        bps = iperf3_once(pinning, iperf3, ports["iperf"], args.duration)
                        samples[target]["gbps"].append(bps / 1e9)
                        line += f"  {bps / 1e9:7.2f} Gbit/s"
                    cps, errors = connections_per_second(
                        pinning, ports["cps"], args.duration, args.clients
                    )
                    samples[target]["cps"].append(cps)
                    failures[target] += errors
                    line += f"  {cps:8.0f} conn/s ({errors} failed)"
                    print(line, flush=True)
        finally:
            procs.stop_all()

    medians = {
        t: {k: (statistics.median(v) if v else None) for k, v in s.items()}
        for t, s in samples.items()
    }
    info = machine()
    print()
    print(
        f"{info['date']}  {info['cpu']} ({info['cpus']} CPUs), Linux {info['kernel']}, "
        f"Python {info['python']}"
    )
    print(f"medians of {args.runs} runs of {args.duration}s; {args.clients} connection loops")
    print(f"{'target':10} {'Gbit/s':>8} {'conn/s':>9} {'failed':>7}")
    for target, values in medians.items():
        gbps = f"{values['gbps']:.2f}" if values["gbps"] is not None else "-"
        print(f"{target:10} {gbps:>8} {values['cps']:9.0f} {failures[target]:7d}")
    proxyd = medians["proxyd"]
    direct = medians["direct"]
    haproxy_m = medians.get("haproxy", {"gbps": None, "cps": None})
    print()
    print(
        f"proxyd/direct:  throughput {ratio(proxyd['gbps'], direct['gbps'])}, "
        f"conn/s {ratio(proxyd['cps'], direct['cps'])}"
    )
    print(
        f"proxyd/haproxy: throughput {ratio(proxyd['gbps'], haproxy_m['gbps'])}, "
        f"conn/s {ratio(proxyd['cps'], haproxy_m['cps'])}"
    )
    if "portforward" in medians:
        forward = medians["portforward"]
        print(
            f"proxyd/portforward: throughput {ratio(proxyd['gbps'], forward['gbps'])}, "
            f"conn/s {ratio(proxyd['cps'], forward['cps'])}"
        )
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "runs": args.runs,
                    "duration": args.duration,
                    "clients": args.clients,
                    "pinning": pinning.describe(),
                    "samples": samples,
                    "medians": medians,
                    "failed": failures,
                    "notes": notes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
