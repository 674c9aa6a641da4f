"""A reload of the real proxyd (SIGHUP or the admin API), with one process and with workers:
listeners on unchanged addresses keep their sockets, new ones open, removed ones close while
their connections finish; pools change; a file that is not valid is refused and the old config
goes on. And a client loop across ten reloads and a graceful stop that loses no request."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Backend, ProcessList, Proxyd, free_port, recv_line, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROUTES = "routes =\n    path / -> pool web\n\n"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_backend(processes: ProcessList, name: str) -> Backend:
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
    process = processes.start(f"http-{name}", [*argv, "--name", name])
    process.wait_listening([port], 15)
    return Backend(process, port)


def echo_backend(processes: ProcessList) -> Backend:
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "echo_server.py"), str(port)]
    process = processes.start("echo", argv)
    process.wait_listening([port], 15)
    return Backend(process, port)


def udp_backend(processes: ProcessList) -> int:
    port = free_udp_port()
    argv = [sys.executable, str(ROOT / "examples" / "udp_echo.py"), "--interface", "127.0.0.1"]
    processes.start("udp-echo", [*argv, str(port)]).wait_for_output(f"Echo starting on {port}", 15)
    return port


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": "reload.test"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def admin(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def start(proxyd: Callable[..., Proxyd], config: str, workers: int, tmp_path: Path) -> Proxyd:
    access_log = tmp_path / "access.log"
    relay = proxyd(f"[proxyd]\nworkers = {workers}\naccess_log = {access_log}\n\n{config}")
    relay.access_log = access_log
    if workers > 1:
        for index in range(workers):
            relay.wait_for_log(rf"worker {index} \(pid \d+\) serving", timeout=20)
    return relay


def rewrite(relay: Proxyd, workers: int, access_log: Path, config: str) -> None:
    relay.config_path.write_text(
        f"[proxyd]\nworkers = {workers}\naccess_log = {access_log}\n\n{config}"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_keeps_opens_and_closes_listeners_and_swaps_the_pools(
    processes: ProcessList, proxyd, tmp_path: Path, workers: int
) -> None:
    one, two = http_backend(processes, "one"), http_backend(processes, "two")
    echo = echo_backend(processes)
    kept, added, removed, admin_port = free_port(), free_port(), free_port(), free_port()
    before = (
        f"[pool web]\nservers = 127.0.0.1:{one.port}\n\n"
        f"[pool echo]\nservers = 127.0.0.1:{echo.port}\n\n"
        f"[http front]\nlisten = tcp:{kept}:interface=127.0.0.1\n{ROUTES}"
        f"[tcp old]\nlisten = tcp:{removed}:interface=127.0.0.1\npool = echo\n\n"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
    )
    relay = start(proxyd, before, workers, tmp_path)
    assert get(kept)[1]["X-Backend"] == "one"
    held = socket.create_connection(("127.0.0.1", removed), timeout=10)
    assert recv_line(held).startswith(b"hello from echo backend")

    after = (
        f"[pool web]\nservers = 127.0.0.1:{two.port}\n\n"
        f"[pool echo]\nservers = 127.0.0.1:{echo.port}\n\n"
        f"[http front]\nlisten = tcp:{kept}:interface=127.0.0.1\n{ROUTES}"
        f"[http new]\nlisten = tcp:{added}:interface=127.0.0.1\n{ROUTES}"
        f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
    )
    rewrite(relay, workers, relay.access_log, after)
    start_at = relay.log_offset()
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(
        r"reloaded .*: generation 2; listeners: 1 kept, 1 new, 1 closed", start=start_at
    )
    if workers > 1:
        for index in range(workers):
            relay.wait_for_log(
                rf"\[worker {index}#info [\w.]+\] reloaded .*: generation 2", start=start_at
            )
    # Every worker answers on the kept and the new address, from the new pool.
    for _ in range(4 * workers):
        assert get(kept)[1]["X-Backend"] == "two"
        assert get(added)[1]["X-Backend"] == "two"
    assert refused(removed)
    # The connection that started on the removed listener goes on.
    held.sendall(b"still here\n")
    assert recv_line(held) == b"still here\n"
    held.close()

    status, document = admin(admin_port, "/api/v1/status")
    assert status == 200 and document["config"]["generation"] == 2
    assert [listener["name"] for listener in document["listeners"]] == ["front", "new"]

    # A file that is not valid: refused, through the API and SIGHUP alike; the old one serves.
    relay.config_path.write_text(relay.config_path.read_text().replace(f":{two.port}", ":x"))
    status, outcome = admin(admin_port, "/api/v1/reload", "POST")
    assert status == 422 and outcome["reloaded"] is False and outcome["generation"] == 2
    assert (
        f"{relay.config_path}:" in outcome["errors"][0]
        and "[pool web] servers" in outcome["errors"][0]
    )
    start_at = relay.log_offset()
    relay.process.signal_group(signal.SIGHUP)
    relay.wait_for_log(r"reload refused: still serving generation 2", start=start_at)
    assert get(kept)[1]["X-Backend"] == "two"

    # And back to the first pool, through the API.
    rewrite(relay, workers, relay.access_log, after.replace(f":{two.port}", f":{one.port}"))
    status, outcome = admin(admin_port, "/api/v1/reload", "POST")
    assert (status, outcome) == (200, {"reloaded": True, "generation": 3, "errors": []})
    for _ in range(4 * workers):
        assert get(kept)[1]["X-Backend"] == "one"
    assert relay.terminate() == 0
    assert relay.crash_report() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_truncated_file_or_one_without_admin_is_refused_and_everything_serves_on(
    processes: ProcessList, proxyd, tmp_path: Path, workers: int
) -> None:
    web, echo = http_backend(processes, "web"), echo_backend(processes)
    http_port, tcp_port, admin_port = free_port(), free_port(), free_port()
    listeners = (
        f"[pool web]\nservers = 127.0.0.1:{web.port}\n\n"
        f"[pool echo]\nservers = 127.0.0.1:{echo.port}\n\n"
        f"[http front]\nlisten = tcp:{http_port}:interface=127.0.0.1\n{ROUTES}"
        f"[tcp echo]\nlisten = tcp:{tcp_port}:interface=127.0.0.1\npool = echo\n\n"
    )
    admin_section = f"[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
    relay = start(proxyd, listeners + admin_section, workers, tmp_path)
    path = relay.config_path

    def everything_serves(generation: int) -> None:
        assert get(http_port)[0] == 200
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as sock:
            assert recv_line(sock).startswith(b"hello from echo backend")
        status, document = admin(admin_port, "/api/v1/status")
        assert status == 200 and document["config"]["generation"] == generation

    def sighup_refused() -> str:
        start_at = relay.log_offset()
        relay.process.signal_group(signal.SIGHUP)
        relay.wait_for_log(r"reload refused: still serving generation 1", start=start_at)
        return relay.log()[start_at:]

    # A truncating editor or a full disk: the file is empty. SIGHUP is refused, saying why.
    path.write_bytes(b"")
    said = sighup_refused()
    assert f"reload refused: {path}:1: expected at least one listener section ([http NAME]," in said
    assert "found none (the file is empty)" in said
    assert "reloaded" not in said, "no worker was asked to follow"
    everything_serves(1)
    status, outcome = admin(admin_port, "/api/v1/reload", "POST")
    assert status == 422 and outcome["reloaded"] is False and outcome["generation"] == 1
    assert outcome["errors"][0].startswith(f"{path}:1: expected at least one listener section")

    # Listeners but no [admin]: refused by SIGHUP and by an API reload that does not force.
    rewrite(relay, workers, relay.access_log, listeners)
    said = sighup_refused()
    assert f"{path}: [admin]: expected an [admin] section" in said
    assert f"would close the admin listener on tcp:{admin_port}:interface=127.0.0.1" in said
    assert "SIGHUP cannot force it" in said
    everything_serves(1)
    status, outcome = admin(admin_port, "/api/v1/reload", "POST")
    assert status == 422 and '{"force": true}' in outcome["errors"][0]

    # Forced, the admin listener goes and the others serve on.
    start_at = relay.log_offset()
    status, outcome = admin(admin_port, "/api/v1/reload", "POST", b'{"force": true}')
    assert (status, outcome) == (200, {"reloaded": True, "generation": 2, "errors": []})
    relay.wait_for_log(r"reload \(forced\): the new file has no \[admin\] section", start=start_at)
    wait_until(lambda: refused(admin_port), 10, "the admin listener to close")
    assert get(http_port)[0] == 200
    assert relay.terminate() == 0
    assert relay.crash_report() is None


class Loop(threading.Thread):
    """One kind of client, asking again and again (for at most two minutes) until told to
    stop, or until the proxy refuses its connection after the stop began; counts what it got.
    Anything else that goes wrong is a failure."""

    def __init__(self, name: str, ask: Callable[[], None], proxy_stopping: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.ask = ask
        self.proxy_stopping = proxy_stopping
        self.stop_asking = threading.Event()
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self.deadline = time.monotonic() + 120

    def run(self) -> None:
        while not self.stop_asking.is_set() and time.monotonic() < self.deadline:
            try:
                self.ask()
                self.results["ok"] += 1
            except ConnectionRefusedError:
                if self.proxy_stopping.is_set():
                    self.results["refused after the stop"] += 1
                    return
                self.failures.append("connection refused before the stop")
            except ConnectionResetError as e:
                # A connection the kernel completed in the listening socket's queue in the
                # instant between proxyd's last accept and its close is reset by the close:
                # that is how a stopping server refuses it (the ask functions raise it only
                # for a new connection; a reused keep-alive one is asked again).
                if self.proxy_stopping.is_set():
                    self.results["refused after the stop"] += 1
                    self.results["reset in the accept queue at the stop"] += 1
                    return
                self.failures.append(f"ConnectionResetError before the stop: {e}")
            except Exception as e:
                when = "after" if self.proxy_stopping.is_set() else "before"
                self.failures.append(f"{type(e).__name__} {when} the stop: {e}")


def each_served(loops: list[Loop], times: int) -> None:
    """Waits until every client loop has been answered `times` more times (or one of them
    failed or ended: the test's assertions then say what it got)."""
    marks = [loop.results["ok"] + times for loop in loops]

    def done() -> bool:
        return all(
            loop.results["ok"] >= mark or loop.failures or not loop.is_alive()
            for loop, mark in zip(loops, marks, strict=True)
        )

    wait_until(done, 30, f"each client loop to be answered {times} more times")


class KeepAlive:
    """HTTP/1.1 keep-alive as browsers and curl do it: a request on a reused connection that
    the server closed before answering is sent again once on a new one (RFC 9112 section
    9.3.1: GET is idempotent)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None
        self.retried = 0

    def __call__(self) -> None:
        reused = self.connection is not None
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            self._ask(self.connection)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.connection.close()
            self.connection = None
            if not reused:
                raise
            self.retried += 1
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._ask(self.connection)

    def _ask(self, connection: http.client.HTTPConnection) -> None:
        connection.request("GET", "/", headers={"Host": "reload.test"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"status {response.status}: {body[:100]!r}")
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            self.connection = None


@pytest.mark.parametrize("workers", [1, 2])
def test_ten_reloads_and_a_graceful_stop_under_load_fail_no_request(
    processes: ProcessList, proxyd, tmp_path: Path, workers: int
) -> None:
    web = http_backend(processes, "web")
    echo = echo_backend(processes)
    udp_echo = udp_backend(processes)
    http_port, tcp_port, udp_port = free_port(), free_port(), free_udp_port()

    def config(generation: int) -> str:
        return (
            f"[pool web]\nservers = 127.0.0.1:{web.port} weight={generation}\n\n"
            f"[pool echo]\nservers = 127.0.0.1:{echo.port}\n\n"
            f"[pool udp]\nservers = 127.0.0.1:{udp_echo}\n\n"
            f"[http front]\nlisten = tcp:{http_port}:interface=127.0.0.1\nroutes =\n"
            f"    path / -> pool web\nresponse_headers =\n    set X-Generation {generation}\n\n"
            f"[tcp echo]\nlisten = tcp:{tcp_port}:interface=127.0.0.1\npool = echo\n\n"
            f"[udp dgram]\nlisten = udp:{udp_port}:interface=127.0.0.1\npool = udp\n"
        )

    relay = start(proxyd, config(1), workers, tmp_path)
    proxy_stopping = threading.Event()

    def new_connection() -> None:
        status, _headers, _body = get(http_port)
        if status != 200:
            raise AssertionError(f"status {status}")

    def tcp() -> None:
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as sock:
            if not recv_line(sock).startswith(b"hello from echo backend"):
                raise AssertionError("no greeting")
            sock.sendall(b"ping\n")
            if recv_line(sock) != b"ping\n":
                raise AssertionError("no echo")

    udp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_socket.settimeout(5)
    sequence = iter(range(1 << 30))

    def udp() -> None:
        payload = b"datagram %d" % next(sequence)
        udp_socket.sendto(payload, ("127.0.0.1", udp_port))
        # udp_echo.py answers `PORT: DATAGRAM`; a late answer to an earlier one is skipped.
        while not (answer := udp_socket.recv(2048)).endswith(b": " + payload):
            if b": datagram " not in answer:
                raise AssertionError(f"unexpected {answer!r}")

    keep_alive = KeepAlive(http_port)
    loops = [
        Loop("keep-alive", keep_alive, proxy_stopping),
        Loop("new connections", new_connection, proxy_stopping),
        Loop("tcp", tcp, proxy_stopping),
    ]
    udp_loop = Loop("udp", udp, proxy_stopping)
    everything = [*loops, udp_loop]
    for loop in everything:
        loop.start()
    try:
        for generation in range(2, 12):
            each_served(everything, 3)  # on the running generation, before the next reload
            relay.config_path.write_text(
                relay.config_path.read_text().split("[pool web]")[0] + config(generation)
            )
            start_at = relay.log_offset()
            relay.process.signal_group(signal.SIGHUP)
            relay.wait_for_log(
                rf"reloaded .*: generation {generation};", timeout=20, start=start_at
            )
        each_served(everything, 3)
        wait_until(lambda: get(http_port)[1].get("X-Generation") == "11", 10, "the last generation")
        # UDP has no refusal to tell a client that the relay stopped: stop asking first.
        udp_loop.stop_asking.set()
        udp_loop.join(15)
        proxy_stopping.set()
        assert relay.terminate(timeout=60) == 0
    finally:
        for loop in everything:
            loop.stop_asking.set()
            loop.join(30)
        udp_socket.close()
    report = {loop.name: dict(loop.results) for loop in everything}
    failures = {loop.name: loop.failures[:5] for loop in everything if loop.failures}
    assert not failures, f"{report}\n{failures}\n{relay.log()[-3000:]}"
    assert all(loop.results["ok"] >= 20 for loop in everything), report
    assert all(loop.results["refused after the stop"] == 1 for loop in loops), report
    print(report)  # with -s: what each client got, retries included
    print(f"keep-alive requests asked again on a new connection: {keep_alive.retried}")
    assert relay.crash_report() is None
