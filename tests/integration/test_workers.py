"""`[proxyd] workers = 2` in the real proxyd: a master and two worker processes sharing the
listeners, health state reaching every worker, a killed worker restarted without touching the
other's connections, UDP sessions kept whole on one worker, SIGHUP passed on, SIGTERM
stopping all of them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Backend, ProcessList, Proxyd, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REQUEST = b"GET / HTTP/1.1\r\nHost: workers.test\r\n\r\n"


def start_workers(proxyd: Callable[..., Proxyd], config: str, tmp_path: Path) -> Proxyd:
    access_log = tmp_path / "access.log"
    relay = proxyd(f"[proxyd]\nworkers = 2\naccess_log = {access_log}\n\n{config}")
    relay.access_log = access_log
    for index in (0, 1):
        relay.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
    return relay


def workers_of(relay: Proxyd) -> list[int]:
    """The pids of the master's children (its workers)."""
    out = subprocess.run(
        ["pgrep", "-P", str(relay.pid)], capture_output=True, text=True, check=False
    ).stdout
    return sorted(int(pid) for pid in out.split())


def owner(client: socket.socket, pids: list[int]) -> int:
    """The worker holding the proxy's end of `client`'s connection, found through
    /proc/net/tcp (the socket's inode) and the workers' descriptors."""
    local_port = client.getsockname()[1]
    proxy_port = client.getpeername()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.split(":")[1], 16) == proxy_port
                and int(remote.split(":")[1], 16) == local_port
            ):
                inode = fields[9]
    assert inode is not None, "the proxy's end of the connection is not in /proc/net/tcp"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError(f"no worker of {pids} holds socket {inode}")


def ask(sock: socket.socket) -> bytes:
    """One request on a kept-alive connection; the status line of the answer (b'' if the
    connection was closed or reset)."""
    try:
        sock.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return head.split(b"\r\n")[0]
    except (ConnectionResetError, BrokenPipeError):
        return b""


def http_config(port: int, backend: int, pool_options: str = "") -> str:
    return (
        f"[pool web]\nservers = 127.0.0.1:{backend}\n{pool_options}\n"
        f"[http web]\nlisten = tcp:{port}:interface=127.0.0.1\nroutes =\n"
        "    path / -> pool web\n"
    )


def test_two_workers_share_connections_and_one_killed_leaves_the_others_alone(
    http_backend: Backend, proxyd, tmp_path: Path
) -> None:
    port = free_port()
    relay = start_workers(proxyd, http_config(port, http_backend.port), tmp_path)
    assert "reactor class: proxyd.reactor.EPollReactor" in relay.log()
    pids = workers_of(relay)
    assert len(pids) == 2
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
    try:
        for client in clients:
            assert ask(client) == b"HTTP/1.1 200 OK"
        owners = {client: owner(client, pids) for client in clients}
        assert set(owners.values()) == set(pids), "the kernel spreads connections over both"

        victim, survivor = pids
        start = relay.log_offset()
        os.kill(victim, signal.SIGKILL)
        relay.wait_for_log(
            rf"worker \d \(pid {victim}\) was killed by SIGKILL .* starting it again", start=start
        )
        for client, pid in owners.items():
            answer = ask(client)
            if pid == survivor:
                assert answer == b"HTTP/1.1 200 OK", "the other worker's connections go on"
            else:
                assert answer == b"", "the killed worker's connections are gone"
        relay.wait_for_log(r"worker \d \(pid \d+\) serving", start=start, timeout=20)
        now = workers_of(relay)
        assert len(now) == 2 and survivor in now and victim not in now
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
                assert ask(fresh) == b"HTTP/1.1 200 OK"
    finally:
        for client in clients:
            client.close()


def test_health_state_reaches_every_worker_and_a_restarted_one(
    processes: ProcessList, proxyd, tmp_path: Path
) -> None:
    backend_port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(backend_port)]
    backend = processes.start("http-backend", argv)
    backend.wait_listening([backend_port], 15)
    port = free_port()
    checks = "check = http GET /healthz\ncheck_interval = 200ms\nrise = 1\nfall = 1\n"
    relay = start_workers(proxyd, http_config(port, backend_port, checks), tmp_path)

    start = relay.log_offset()
    backend.kill()
    relay.wait_for_state(f"127.0.0.1:{backend_port}", "web", "DOWN", start=start)
    assert len(re.findall(r"is DOWN", relay.log()[start:])) == 1, "the master checks, once"

    def all_refused() -> None:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        try:
            pids = workers_of(relay)
            assert {owner(c, pids) for c in clients} == set(pids)
            # 503 (no server up) from both: a worker that did not know would try to connect,
            # be refused and answer 502.
            assert {ask(c) for c in clients} == {b"HTTP/1.1 503 Service Unavailable"}
        finally:
            for client in clients:
                client.close()

    all_refused()
    start = relay.log_offset()
    os.kill(workers_of(relay)[0], signal.SIGKILL)
    relay.wait_for_log(r"worker \d \(pid \d+\) serving", start=start, timeout=20)
    all_refused()

    backend = processes.start("http-backend-again", argv)
    backend.wait_listening([backend_port], 15)
    relay.wait_for_state(f"127.0.0.1:{backend_port}", "web", "UP", start=start)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert ask(client) == b"HTTP/1.1 200 OK"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_udp_sessions_stay_whole_on_one_worker(
    processes: ProcessList, proxyd, tmp_path: Path
) -> None:
    echo = free_udp_port()
    argv = [sys.executable, str(ROOT / "examples" / "udp_echo.py"), "--interface", "127.0.0.1"]
    processes.start("udp-echo", [*argv, str(echo)]).wait_for_output(f"Echo starting on {echo}", 15)
    port = free_udp_port()
    relay = start_workers(
        proxyd,
        f"[pool echo]\nservers = 127.0.0.1:{echo}\n\n"
        f"[udp echo]\nlisten = udp:{port}:interface=127.0.0.1\npool = echo\n"
        "session_timeout = 500ms\n",
        tmp_path,
    )
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
    try:
        for n in range(5):
            for i, client in enumerate(clients):
                client.settimeout(5)
                client.sendto(b"c%d-%d" % (i, n), ("127.0.0.1", port))
                assert client.recvfrom(65535)[0] == b"%d: c%d-%d" % (echo, i, n)
        client_ports = {client.getsockname()[1] for client in clients}
    finally:
        for client in clients:
            client.close()
    records = relay.wait_access_records(12)
    sessions = [r for r in records if r.get("listener") == "echo"]
    # One session per client, all five datagrams in it: each client stayed on one worker.
    assert len(sessions) == 12
    assert {int(r["client"].rsplit(":", 1)[1]) for r in sessions} == client_ports
    assert all(r["datagrams_in"] == 5 and r["datagrams_out"] == 5 for r in sessions)


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(
    certs, http_backend: Backend, proxyd, tmp_path: Path
) -> None:
    pem = certs("site", ["site.test", "127.0.0.1"])
    port = free_port()
    relay = start_workers(
        proxyd,
        f"[pool web]\nservers = 127.0.0.1:{http_backend.port}\n\n"
        f"[https web]\nlisten = tcp:{port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "routes =\n    path / -> pool web\n",
        tmp_path,
    )
    pids = workers_of(relay)
    start = relay.log_offset()
    os.kill(relay.pid, signal.SIGHUP)  # the master alone
    for index in (0, 1):
        relay.wait_for_log(
            rf"\[worker {index}#info [\w.]+\] reloaded .*: generation 2", start=start
        )
    assert relay.terminate() == 0
    log = relay.log()[start:]
    for pid in pids:
        assert re.search(rf"worker \d \(pid {pid}\) exited with status 0", log)
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} is still running"


def test_a_unix_listener_keeps_its_file_and_mode_while_workers_come_and_go(
    http_backend: Backend, proxyd, tmp_path: Path
) -> None:
    path = tmp_path / "web.sock"
    port = free_port()
    relay = start_workers(
        proxyd,
        http_config(port, http_backend.port)
        + f"\n[http local]\nlisten = unix:{path}:mode=600\nroutes =\n    path / -> pool web\n",
        tmp_path,
    )

    def ask_local() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(path))
            return ask(client)

    assert os.stat(path).st_mode & 0o777 == 0o600, "the workers leave the file's mode alone"
    assert {ask_local() for _ in range(10)} == {b"HTTP/1.1 200 OK"}

    start = relay.log_offset()
    os.kill(workers_of(relay)[0], signal.SIGTERM)  # one worker stops cleanly
    relay.wait_for_log(r"worker \d \(pid \d+\) exited with status 0", start=start)
    relay.wait_for_log(r"worker \d \(pid \d+\) serving", start=start, timeout=20)
    assert os.stat(path).st_mode & 0o777 == 0o600, "a worker's stop leaves the file in place"
    assert {ask_local() for _ in range(10)} == {b"HTTP/1.1 200 OK"}
    for _ in range(10):  # and its TCP socket, adopted again, is still listening
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert ask(client) == b"HTTP/1.1 200 OK"

    assert relay.terminate() == 0
    assert not path.exists(), "the master removes the socket file at its end"


def test_the_admin_api_and_metrics_show_the_sum_over_the_workers(
    http_backend: Backend, proxyd, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    relay = start_workers(
        proxyd,
        http_config(port, http_backend.port)
        + f"\n[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n",
        tmp_path,
    )
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        for client in clients:
            for _ in range(3):
                assert ask(client) == b"HTTP/1.1 200 OK"
        pids = workers_of(relay)
        assert {owner(client, pids) for client in clients} == set(pids)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/v1/status", timeout=10) as r:
            status = json.load(r)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        for client in clients:
            client.close()
    assert status["workers"] == 2
    [web] = status["listeners"]
    assert web["counters"]["requests"] == 60, "both workers' requests, added up"
    assert web["counters"]["connections"] == 20
    assert 'proxyd_http_requests_total{kind="http",listener="web"} 60.0' in metrics
    assert "proxyd_workers 2.0" in metrics
