"""The benchmark's processes: starting and stopping them, pinning them to CPUs, and reading
their CPU time and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STARTUP_TIMEOUT = 20.0


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_call(port: int, *words: str, timeout: float = 2.0) -> bytes:
    """The reply of the Redis server on 127.0.0.1:`port` to one command, raw: a status, an
    error, an integer or a bulk string (what PING and INFO answer)."""
    encoded = [w.encode() for w in words]
    command = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(command)
        data = b""
        for _ in range(1000):  # each recv brings bytes or ends the loop
            head, found, rest = data.partition(b"\r\n")
            if found and (not head.startswith(b"$") or head == b"$-1"):  # $-1: a nil
                return head
            if found and len(rest) >= int(head[1:]) + 2:
                return rest[: int(head[1:])]
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    raise RuntimeError(f"an incomplete Redis reply: {data[:200]!r}")


def bound_ports(kind: str) -> set[int]:
    """Local ports of the TCP sockets listening (kind "tcp") or the UDP sockets bound (kind
    "udp") on this machine."""
    ports = set()
    for name in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with contextlib.suppress(FileNotFoundError), open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                if kind == "udp" or fields[3] == "0A":  # 0A: TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def tree_usage(leader: int) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) of the process group `leader` leads and of
    every process descending from it, from /proc: nginx's workers, proxyd's worker processes,
    whether or not they stay in its group. A process's figures include all its threads."""
    stats: dict[int, tuple[int, int, int, int]] = {}  # pid -> ppid, pgrp, ticks, rss pages
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        stats[int(entry)] = (int(fields[1]), int(fields[2]), ticks, int(fields[21]))

    def counted(pid: int) -> bool:
        for _ in range(64):  # a bounded walk up the tree
            if pid == leader:
                return True
            if pid not in stats or pid <= 1:
                return False
            parent, group, _, _ = stats[pid]
            if group == leader:
                return True
            pid = parent
        return False

    ticks = pages = 0
    for pid, (_, _, used, rss) in stats.items():
        if counted(pid):
            ticks += used
            pages += rss
    return ticks / os.sysconf("SC_CLK_TCK"), pages * os.sysconf("SC_PAGE_SIZE")


class Processes:
    """Children in their own process groups, output to files; all stopped by `stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.children: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts `argv` and waits until it listens on the TCP ports `tcp` and has bound the
        UDP ports `udp`; raises RuntimeError, with the end of its output, if it exits first or
        takes longer than STARTUP_TIMEOUT."""
        log = self.log(name)
        with open(log, "wb") as out:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.children[name] = (child, log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (set(tcp) <= bound_ports("tcp") and set(udp) <= bound_ports("udp")):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} did not come up on {[*tcp, *udp]} (exit status {child.poll()}):\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.02)
        return child

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.out"

    def alive(self, name: str) -> bool:
        return self.children[name][0].poll() is None

    def usage(self, name: str) -> tuple[float, int]:
        """CPU seconds and resident bytes of `name` and its descendants so far."""
        return tree_usage(self.children[name][0].pid)  # each child leads its own group

    def stop_all(self) -> None:
        children = [child for child, _ in reversed(self.children.values())]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
        self.children.clear()


class Pinning:
    """taskset prefixes: a proxy on one CPU, the load generators and origins on the rest, and
    a proxy with several worker processes on every CPU."""

    def __init__(self) -> None:
        self.cpus = sorted(os.sched_getaffinity(0))
        self.taskset = which("taskset")
        self.enabled = self.taskset is not None and len(self.cpus) >= 2
        self.proxy_cpus = self.cpus[:1] if self.enabled else self.cpus
        self.load_cpus = self.cpus[1:] if self.enabled else self.cpus

    def _prefix(self, cpus: list[int]) -> list[str]:
        if not self.enabled:
            return []
        return [str(self.taskset), "-c", ",".join(map(str, cpus))]

    def proxy(self) -> list[str]:
        return self._prefix(self.proxy_cpus)

    def all(self) -> list[str]:
        return self._prefix(self.cpus)

    def load(self) -> list[str]:
        return self._prefix(self.load_cpus)

    def describe(self) -> str:
        if not self.enabled:
            return "no pinning (taskset missing or a single CPU): proxies share every CPU"
        return (
            f"proxies on CPU {self.proxy_cpus}, load generators and origins on "
            f"{self.load_cpus}; proxyd-auto (a worker per core) on all of {self.cpus}, "
            "sharing the load CPUs"
        )
