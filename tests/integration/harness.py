"""Process and readiness helpers for the integration tests.

Every process is started in its own session (so its whole process group can be signalled),
writes its output to a file (no pipe to fill up), and is waited on by polling with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
PROXYD_CLI = VENV_BIN / "proxyd"

T = TypeVar("T")

# Output that means proxyd hit an error it did not handle.
CRASH_MARKERS = ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error in")


class Timeout(AssertionError):
    pass


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Polls `predicate` until it returns something true, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Only for programs that cannot bind port 0 and tell
    us the port (mariadbd, proxyd listeners)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on this host, read from /proc (no connection is made, so
    no probe shows up in an access log or a backend)."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as table:
                next(table)
                for line in table:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            continue
    return ports


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def recv_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Reads up to and including the first newline (byte by byte: only for short answers)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data


def recv_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


class Process:
    """A child process in its own process group, with its output in a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = log_path
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
                cwd=cwd,
            )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid}>"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """Waits for `pattern` (a regex) in the output after character `start`; fails early,
        with the output, if the process exits first."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.output(), start)
            if match is None and not self.alive:
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode} before printing "
                    f"{pattern!r}:\n{self.tail()}"
                )
            return match

        try:
            return wait_until(found, timeout, f"{pattern!r} from {self.name}")
        except Timeout as e:
            raise Timeout(f"{e}; output so far:\n{self.tail()}") from None

    def wait_listening(self, ports: Iterable[int], timeout: float) -> None:
        wanted = set(ports)

        def ready() -> bool:
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode} before listening on "
                    f"{sorted(wanted)}:\n{self.tail()}"
                )
            return wanted <= listening_ports()

        try:
            wait_until(ready, timeout, f"{self.name} to listen on {sorted(wanted)}")
        except Timeout as e:
            raise Timeout(f"{e}; output so far:\n{self.tail()}") from None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM to the group, then SIGKILL after `timeout`. Returns the exit status."""
        if self.alive:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(10)
        # Whatever the leader left behind in its group goes too.
        self.signal_group(signal.SIGKILL)
        return self.popen.returncode

    def kill(self) -> int:
        self.signal_group(signal.SIGKILL)
        self.popen.wait(10)
        return self.popen.returncode


class ProcessList:
    """Everything a test started, stopped at teardown in reverse order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[Process] = []

    def start(self, name: str, argv: Sequence[str | os.PathLike], **kwargs: Any) -> Process:
        index = len(self.processes)
        process = Process(name, argv, self.directory / f"{index:02d}-{name}.log", **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class Backend:
    """A peers.py server: `port` is where it listens."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.kill()


def start_backend(
    processes: ProcessList, mode: str, *args: str, name: str = "", timeout: float = 15.0
) -> Backend:
    argv = [sys.executable, HERE / "peers.py", mode, *args]
    if name:
        argv += ["--name", name]
    process = processes.start(f"peer-{mode}-{name or 'x'}", argv)
    match = process.wait_for_output(r"PORT (\d+)\n", timeout)
    return Backend(process, int(match.group(1)))


_LISTEN_PORT = re.compile(r"^\s*listen\s*=\s*tcp6?:(\d+)", re.MULTILINE)


class Proxyd:
    """A running `twistd -n proxyd --config FILE`."""

    def __init__(self, process: Process, config_path: Path, access_log: Path) -> None:
        self.expected_failures: list[str] = []
        """Log lines of failures a test provokes, each followed by a traceback."""
        self.process = process
        self.config_path = config_path
        self.access_log = access_log
        self.stopped_by_test = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM to proxyd's own process (not its group) and its exit status (0 after a
        graceful stop)."""
        self.stopped_by_test = True
        os.kill(self.pid, signal.SIGTERM)
        return self.process.popen.wait(timeout)

    def log(self) -> str:
        return self.process.output()

    def log_offset(self) -> int:
        """Where the log ends now: pass as `start` to wait for a line written after this."""
        return len(self.log())

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        return self.process.wait_for_output(pattern, timeout, start)

    def wait_for_state(
        self, server: str, pool: str, state: str, timeout: float = 10.0, start: int = 0
    ) -> re.Match[str]:
        pattern = rf"server {re.escape(server)} in pool {re.escape(pool)} is {state}\b"
        return self.wait_for_log(pattern, timeout, start)

    def access_records(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        # The last line may be half-written.
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def wait_access_records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (records := self.access_records()) and len(records) >= count and records,
            timeout,
            f"{count} access-log records in {self.access_log}",
        )

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def crash_report(self) -> str | None:
        """The log, when proxyd logged an unhandled error (beyond one traceback for each
        line holding one of `expected_failures`, which a test provoked)."""
        text = self.log()
        expected = sum(text.count(line) for line in self.expected_failures)
        if text.count(CRASH_MARKERS[0]) > expected or any(m in text for m in CRASH_MARKERS[1:]):
            return text
        return None


def twistd_argv(config: Path, logfile: str = "-") -> list[str]:
    return [
        str(TWISTD),
        "-n",
        "--pidfile",
        "",
        "--logfile",
        logfile,
        "proxyd",
        "--config",
        str(config),
    ]


def start_proxyd(
    processes: ProcessList,
    directory: Path,
    config: str,
    timeout: float = 20.0,
    taskset: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Proxyd:
    """Writes `config` (with a `[proxyd]` section pointing the access log into `directory`
    unless the text has one) and starts proxyd on it, waiting for every `listen = tcp:PORT`.
    `env` adds to the environment proxyd gets (the tests' own)."""
    access_log = directory / "access.log"
    if not re.search(r"^\[proxyd\]", config, re.MULTILINE):
        config = f"[proxyd]\naccess_log = {access_log}\n\n{config}"
    index = sum(1 for p in processes.processes if p.name.startswith("proxyd"))
    config_path = directory / f"proxyd-{index}.ini"
    config_path.write_text(config)
    process = processes.start(
        "proxyd", [*taskset, *twistd_argv(config_path)], cwd=directory, env=env
    )
    process.wait_listening((int(p) for p in _LISTEN_PORT.findall(config)), timeout)
    return Proxyd(process, config_path, access_log)


def tcp_config(
    listen_port: int,
    servers: Iterable[str],
    *,
    pool: str = "backends",
    listener: str = "relay",
    pool_options: str = "",
    listener_options: str = "",
) -> str:
    """A `[pool]` and a `[tcp]` listener in front of it; options are extra `key = value` lines."""
    server_lines = "".join(f"    {server}\n" for server in servers)
    return (
        f"[pool {pool}]\nservers =\n{server_lines}{pool_options.strip()}\n\n"
        f"[tcp {listener}]\nlisten = tcp:{listen_port}:interface=127.0.0.1\npool = {pool}\n"
        f"{listener_options.strip()}\n"
    )


def connect_with_buffers(
    port: int, rcvbuf: int = 0, sndbuf: int = 0, timeout: float = 30.0
) -> socket.socket:
    """A connection whose kernel buffers are set before connecting (so the window honours
    them): small buffers make a paused reader or writer felt by proxyd at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


class RssSampler:
    """Samples a process's resident set size every 20 ms in a thread, keeping the peak."""

    def __init__(self, pid: int, growth_limit_kib: int = 0) -> None:
        self.pid = pid
        self.growth_limit_kib = growth_limit_kib
        self.baseline_kib = 0
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (FileNotFoundError, ProcessLookupError, AssertionError):
                return
            self._stop.wait(0.02)

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.baseline_kib

    def check(self) -> None:
        """Fails as soon as the growth passes the limit (rather than when a transfer that
        a process without backpressure makes crawl finally times out)."""
        if self.growth_limit_kib and self.growth_kib > self.growth_limit_kib:
            raise AssertionError(
                f"RSS of pid {self.pid} grew by {self.growth_kib} KiB (from "
                f"{self.baseline_kib} KiB), over the {self.growth_limit_kib} KiB limit"
            )

    def __enter__(self) -> RssSampler:
        self.baseline_kib = self.peak_kib = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
