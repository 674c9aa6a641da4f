"""What a scenario is made of, and the per-scenario context that starts its targets.

A scenario says how to start its origin (the backend every target relays to), each proxy's
configuration in front of it, how to check a target, and how to load it once: the load returns
the operations done (requests, MiB, queries, echoes, handshakes, connections) over the seconds
it took, with the latencies and errors it saw. bench/run.py runs the scenarios, measures each
proxy's own CPU time around the load, and prints the tables.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.processes import STARTUP_TIMEOUT, Pinning, Processes, free_port, redis_call, which

TWISTD = Path(sys.executable).parent / "twistd"
TARGETS = ("direct", "proxyd-1", "proxyd-baseline", "proxyd-auto", "nginx", "haproxy")
PROXYD_WORKERS = {"proxyd-1": None, "proxyd-baseline": None, "proxyd-auto": "auto"}
"""proxyd-baseline is proxyd-1 run from another revision's source (`--baseline REV`): a
change's cost, measured side by side with the tree it changes."""
"""The `[proxyd] workers` value of each proxyd target; None leaves the key out (one process)."""
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
NGINX_TEMP = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class StartError(RuntimeError):
    """A target or an origin that did not come up: `reason` in a line, `detail` its output."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Load:
    """One load run as the load tool saw it."""

    operations: float
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    p90_ms: float | None = None
    """Reported by the scenarios where the 90th percentile tells something (http-small-post)."""
    extra: Mapping[str, float] = field(default_factory=dict)


class Meter:
    """The proxy's CPU seconds and the wall-clock seconds between `begin` and `end` (or over a
    `with` block): the load functions call it around the loaded seconds only."""

    def __init__(self, usage: Callable[[], tuple[float, int]] | None) -> None:
        self._usage = usage
        self.cpu: float | None = None
        self.rss: int | None = None
        self.seconds = 0.0
        self._started = (0.0, 0.0)

    def begin(self) -> None:
        cpu = self._usage()[0] if self._usage else 0.0
        self._started = (cpu, time.monotonic())

    def end(self) -> None:
        self.seconds = time.monotonic() - self._started[1]
        if self._usage:
            cpu, self.rss = self._usage()
            self.cpu = cpu - self._started[0]

    def __enter__(self) -> Meter:
        self.begin()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.end()


class Bench:
    """One scenario's temporary directory, processes and settings."""

    def __init__(
        self,
        workdir: Path,
        pinning: Pinning,
        duration: int,
        access_log: bool,
        baseline: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.baseline = baseline
        """The source tree proxyd-baseline runs (on its PYTHONPATH)."""
        self.pinning = pinning
        self.procs = Processes(workdir)
        self.duration = duration
        self.access_log = access_log
        self.redis_port: int | None = None
        """The port of the redis-server `redis` started, if any."""

    def access_log_path(self, name: str) -> Path | None:
        return self.workdir / f"{name}-access.log" if self.access_log else None

    def start(
        self,
        name: str,
        argv: list[str],
        tcp: tuple[int, ...] = (),
        udp: tuple[int, ...] = (),
        logs: tuple[Path, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Starts `argv` as `name`; a StartError says why it did not come up, from the end of
        its output and of its `logs`."""
        try:
            self.procs.start(name, argv, tcp=tcp, udp=udp, env=env)
        except RuntimeError as e:
            said = [self.procs.log(name), *logs]
            tails = [p.read_text(errors="replace")[-2000:] for p in said if p.exists()]
            lines = [line.strip() for tail in tails for line in tail.splitlines() if line.strip()]
            status = self.procs.children[name][0].poll()
            reason = "not listening after a while" if status is None else f"exit status {status}"
            telling = [line for line in lines if re.search(r"rror|expected", line)]
            last = (telling or lines or [""])[-1].replace(f"{self.workdir}/", "")
            raise StartError(f"{name} did not start ({reason}): {last}", str(e)) from None

    def origin_nginx(self, config: str, tcp: tuple[int, ...]) -> None:
        self.nginx("origin", config, self.pinning.load(), tcp=tcp)

    def redis(self) -> int:
        """Starts a redis-server as `redis` on the load CPUs, on a free 127.0.0.1 port, with no
        persistence (its directory the bench's), and waits until it answers PING; returns its
        port, also kept as `redis_port`. It is stopped with the other processes."""
        port = free_port()
        argv = [*self.pinning.load(), str(which("redis-server")), "--bind", "127.0.0.1"]
        argv += ["--port", str(port), "--save", "", "--appendonly", "no"]
        self.start("redis", [*argv, "--dir", str(self.workdir)], tcp=(port,))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                answer = redis_call(port, "PING")
            except (OSError, RuntimeError, ValueError) as e:
                answer = str(e).encode()
            if answer == b"+PONG":
                self.redis_port = port
                return port
            if time.monotonic() > deadline or not self.procs.alive("redis"):
                raise StartError(f"redis did not answer PING: {answer[:200]!r}")
            time.sleep(0.05)

    def nginx(
        self,
        name: str,
        config: str,
        cpus: list[str],
        tcp: tuple[int, ...] = (),
        udp: tuple[int, ...] = (),
    ) -> None:
        """Starts nginx on `config` with `-p WORKDIR/NAME`, where its temporary files go."""
        directory = self.nginx_directory(name)
        (directory / "nginx.conf").write_text(config)
        directives = f"daemon off; pid {directory / 'nginx.pid'}; error_log stderr;"
        argv = [*cpus, str(which("nginx")), "-e", "stderr", "-p", str(directory)]
        self.start(name, [*argv, "-c", "nginx.conf", "-g", directives], tcp=tcp, udp=udp)

    def nginx_directory(self, name: str) -> Path:
        directory = self.workdir / name
        for kind in NGINX_TEMP:
            (directory / kind).mkdir(parents=True, exist_ok=True)
        return directory

    def nginx_http(self, name: str, body: str) -> str:
        """A whole nginx configuration: one worker, no request limit on kept-alive connections,
        temporary files under its directory, an access log when asked, and `body` inside the
        `http` block."""
        directory = self.nginx_directory(name)
        log = self.access_log_path(name)
        temp = "".join(f"    {kind}_temp_path {directory / kind};\n" for kind in NGINX_TEMP)
        return f"""{nginx_main()}http {{
    access_log {log or "off"};
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{temp}{body}}}
"""

    def nginx_stream(self, name: str, body: str) -> str:
        """A whole nginx configuration with `body` in a `stream` block (libnginx-mod-stream)."""
        if not NGINX_STREAM.exists():
            raise StartError(f"nginx's stream module is missing ({NGINX_STREAM})")
        log = self.access_log_path(name)
        access = "    access_log off;\n"
        if log:
            access = (
                "    log_format basic '$remote_addr [$time_local] $protocol $status "
                "$bytes_sent $bytes_received $session_time';\n"
                f"    access_log {log} basic;\n"
            )
        return f"load_module {NGINX_STREAM};\n{nginx_main()}stream {{\n{access}{body}}}\n"

    def haproxy_config(self, mode: str, body: str, globals_: str = "") -> str:
        """A whole HAProxy configuration: one thread, `mode` (http or tcp), a log line per
        request or connection to its standard output when asked, and `body`."""
        log = "    log stdout format raw local0\n" if self.access_log else ""
        option = f"    log global\n    option {mode}log\n" if self.access_log else ""
        return f"""global
    nbthread 1
    maxconn 4000
{log}{globals_}defaults
    mode {mode}
{option}    timeout connect 5s
    timeout client 1m
    timeout server 1m
    timeout tunnel 1h
{body}"""

    def proxyd_log(self, target: str) -> Path:
        return self.workdir / f"{target}.log"

    def proxyd(
        self, target: str, sections: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()
    ) -> None:
        """Starts `twistd -n proxyd` as `target` with `sections` after its `[proxyd]` section,
        where the target's `workers` and the access log are set."""
        workers = PROXYD_WORKERS[target]
        log = self.access_log_path(target)
        head = f"[proxyd]\naccess_log = {log or 'off'}\n"
        if workers is not None:
            head += f"workers = {workers}\n"
        path = self.workdir / f"{target}.ini"
        path.write_text(f"{head}\n{sections}")
        cpus = self.pinning.proxy() if workers is None else self.pinning.all()
        twistd = [str(TWISTD), "-n", "--pidfile", "", "--logfile", str(self.proxyd_log(target))]
        argv = [*cpus, *twistd, "proxyd", "--config", str(path)]
        env = None
        if target == "proxyd-baseline":
            if self.baseline is None:
                raise StartError("proxyd-baseline needs --baseline REV")
            env = {**os.environ, "PYTHONPATH": str(self.baseline)}
        self.start(target, argv, tcp=tcp, udp=udp, logs=(self.proxyd_log(target),), env=env)


def nginx_main() -> str:
    """The main context every nginx here shares: one worker, as the user we are."""
    user = ""
    if os.geteuid() == 0:  # as root nginx would run its worker as nobody; stay who we are
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
    return f"{user}worker_processes 1;\nevents {{\n    worker_connections 4096;\n}}\n"


class Scenario:
    """One measure: its origin, its targets' configurations, its check and its load.

    `unit` names one operation (the throughput is `unit`/s and the CPU cost is per `unit`);
    `needs` lists the commands it cannot run without; `not_applicable` says why a target is
    left out; `udp` marks a scenario whose targets listen on UDP."""

    name = ""
    title = ""
    unit = ""
    needs: tuple[str, ...] = ()
    not_applicable: Mapping[str, str] = {}
    udp = False

    def origin(self, bench: Bench) -> int:
        """Starts the origin (on the load CPUs); returns the port the targets relay to."""
        raise NotImplementedError

    def nginx(self, bench: Bench, port: int, origin: int) -> str:
        raise NotImplementedError

    def haproxy(self, bench: Bench, port: int, origin: int) -> str:
        raise NotImplementedError

    def proxyd(self, bench: Bench, port: int, origin: int) -> str:
        """proxyd's sections after `[proxyd]`: the pool and the listener."""
        raise NotImplementedError

    def describe(self) -> str:
        """The load, in a line: the tool and its settings."""
        raise NotImplementedError

    def check(self, bench: Bench, port: int) -> str | None:
        """None when the target at `port` answers right, else what is wrong."""
        return None

    def load(self, bench: Bench, port: int, meter: Meter) -> Load:
        """One load run of `bench.duration` seconds against `port`, inside `meter`."""
        raise NotImplementedError

    def start(self, bench: Bench, target: str, origin: int) -> int:
        """Starts `target` in front of the origin; returns the port to load."""
        if target == "direct":
            return origin
        port = free_port()
        ports = {"udp": (port,)} if self.udp else {"tcp": (port,)}
        if target == "nginx":
            bench.nginx("nginx", self.nginx(bench, port, origin), bench.pinning.proxy(), **ports)
        elif target == "haproxy":
            haproxy = which("haproxy")
            if haproxy is None:
                raise StartError("haproxy is not installed (apt-get install haproxy)")
            path = bench.workdir / "haproxy.cfg"
            path.write_text(self.haproxy(bench, port, origin))
            argv = [*bench.pinning.proxy(), haproxy, "-db", "-f", str(path)]
            bench.start("haproxy", argv, **ports)
        else:
            bench.proxyd(target, self.proxyd(bench, port, origin), **ports)
        return port


def bounded(seconds: float) -> float:
    """A subprocess timeout for a load of `seconds`: its start-up and ending included."""
    return seconds + 30


def percentile(values: list[float], p: float) -> float:
    """The `p`th percentile of `values` (not empty), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
