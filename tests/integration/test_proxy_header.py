"""accept_proxy on [http], [https], [websocket] and a TLS-terminating [tcp] of the real
proxyd, behind proxyd's own [tcp] relay with send_proxy (the L4 balancer): the client
connects from 127.0.0.2, and the echo backend, the access log and X-Forwarded-For see
127.0.0.2, not the relay's 127.0.0.1; a connection without a header is closed with nothing
sent."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxyd.config.model import Address
from proxyd.relay.proxy_protocol import encode_v2
from tests.certs import TestCA

from .harness import Backend, ProcessList, free_port, recv_all, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "127.0.0.2"
NAME = "a.test"


@pytest.fixture
def http_backend(processes: ProcessList) -> Backend:
    """examples/http_backend.py: /echo answers with the request as JSON."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "examples" / "http_backend.py"), "--port", str(port)]
    process = processes.start("http-backend", [*argv, "--name", "b1"])
    process.wait_listening([port], 15)
    return Backend(process, port)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for NAME (chain and key in one PEM) and its CA's file."""
    directory = tmp_path_factory.mktemp("certs")
    ca = TestCA()
    return ca.issue([NAME]).write(directory / "a.pem"), ca.write_ca(directory / "ca.pem")


def edge(port: int, target: int, send_proxy: str) -> str:
    """The L4 balancer: a [tcp] relay to `target` sending a PROXY header."""
    return (
        f"[pool fronts]\nservers = 127.0.0.1:{target}\n\n"
        f"[tcp edge]\nlisten = tcp:{port}:interface=127.0.0.1\npool = fronts\n"
        f"send_proxy = {send_proxy}\n\n"
    )


def front(kind: str, port: int, backend: Backend, extra: str = "") -> str:
    return (
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[{kind} front]\nlisten = tcp:{port}:interface=127.0.0.1\naccept_proxy = on\n"
        f"routes =\n    path / -> pool web\n{extra}\n"
    )


def echoed(body: bytes | str) -> dict[str, Any]:
    """The echo's request: its headers as a dict, and its version."""
    answer = json.loads(body)
    return {"headers": dict(answer["headers"]), "version": answer["version"]}


def front_clients(relay: Any, count: int) -> list[str]:
    """The client IP addresses of the first `count` access-log records of `front`."""

    def found() -> list[dict[str, Any]] | None:
        records = [r for r in relay.access_records() if r.get("listener") == "front"]
        return records if len(records) >= count else None

    records = wait_until(found, 10, f"{count} access-log records of front")
    return [r["client"].rsplit(":", 1)[0] for r in records[:count]]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_http_behind_a_tcp_relay_sees_the_original_client_on_every_kept_alive_request(
    http_backend: Backend, proxyd: Callable[..., Any], version: str
) -> None:
    port, http_port = free_port(), free_port()
    relay = proxyd(edge(port, http_port, version) + front("http", http_port, http_backend))
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(CLIENT, 0)
    )
    try:
        for _ in range(2):
            connection.request("GET", "/echo", headers={"Host": "example.test"})
            response = connection.getresponse()
            assert response.status == 200
            assert echoed(response.read())["headers"]["X-Forwarded-For"] == CLIENT
    finally:
        connection.close()
    assert front_clients(relay, 2) == [CLIENT, CLIENT]
    edge_records = wait_until(
        lambda: [r for r in relay.access_records() if r.get("listener") == "edge"],
        10,
        "the edge's access-log record",
    )
    assert edge_records[0]["client"].startswith(CLIENT + ":")


def test_h2c_behind_a_tcp_relay(http_backend: Backend, proxyd: Callable[..., Any]) -> None:
    port, http_port = free_port(), free_port()
    proxyd(edge(port, http_port, "v2") + front("http", http_port, http_backend, "h2c = on\n"))
    result = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "--interface", CLIENT, "-w", "\n%{http_version}",
         f"http://127.0.0.1:{port}/echo"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, http_version = result.stdout.rsplit("\n", 1)
    assert http_version == "2"
    assert echoed(body)["headers"]["X-Forwarded-For"] == CLIENT


def test_a_connection_without_a_header_is_closed_and_a_local_one_served(
    http_backend: Backend, proxyd: Callable[..., Any]
) -> None:
    http_port = free_port()
    relay = proxyd(front("http", http_port, http_backend))
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(sock) == b""  # closed, nothing sent
    relay.wait_for_log(r"http front: 127\.0\.0\.1:\d+: connection does not start with a PROXY")
    # A LOCAL header (the balancer's own health check) keeps the connection's address.
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
        sock.sendall(
            encode_v2(None, None) + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = recv_all(sock)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert echoed(body)["headers"]["X-Forwarded-For"] == "127.0.0.1"
    # A header with the source it says, from any connection (the balancer is trusted).
    source = Address("203.0.113.9", 4000)
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
        sock.sendall(encode_v2(source, Address("127.0.0.1", http_port)))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = recv_all(sock)
    assert echoed(answer.split(b"\r\n\r\n", 1)[1])["headers"]["X-Forwarded-For"] == "203.0.113.9"


def test_https_behind_a_tcp_relay_over_http2_and_http_1_1(
    http_backend: Backend, proxyd: Callable[..., Any], pem: tuple[Path, Path]
) -> None:
    certificate, ca = pem
    port, https_port = free_port(), free_port()
    relay = proxyd(
        edge(port, https_port, "v2")
        + front("https", https_port, http_backend, f"certificates = {certificate}\n")
    )
    result = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(ca), "--interface", CLIENT,
         "--resolve", f"{NAME}:{port}:127.0.0.1", "-w", "\n%{http_version}",
         f"https://{NAME}:{port}/echo"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, http_version = result.stdout.rsplit("\n", 1)
    assert http_version == "2"
    headers = echoed(body)["headers"]
    assert headers["X-Forwarded-For"] == CLIENT and headers["X-Forwarded-Proto"] == "https"
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection(NAME, port, timeout=10, context=context)
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)),
        server_hostname=NAME,
    )
    try:
        for _ in range(2):
            connection.request("GET", "/echo")
            response = connection.getresponse()
            assert response.status == 200
            assert echoed(response.read())["headers"]["X-Forwarded-For"] == CLIENT
    finally:
        connection.close()
    assert front_clients(relay, 3) == [CLIENT] * 3


def test_tcp_tls_termination_behind_a_tcp_relay(
    backend: Callable[..., Backend], proxyd: Callable[..., Any], pem: tuple[Path, Path]
) -> None:
    certificate, ca = pem
    echo = backend("echo")
    port, tls_port = free_port(), free_port()
    relay = proxyd(
        edge(port, tls_port, "v1") + f"[pool echo]\nservers = {echo.address}\n\n"
        f"[tcp front]\nlisten = tcp:{tls_port}:interface=127.0.0.1\npool = echo\n"
        f"certificates = {certificate}\naccept_proxy = on\n"
    )
    context = ssl.create_default_context(cafile=str(ca))
    plain = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0))
    with context.wrap_socket(plain, server_hostname=NAME) as sock:
        sock.sendall(b"hello over TLS")
        received = b""
        while len(received) < len(b"hello over TLS"):
            chunk = sock.recv(100)
            assert chunk
            received += chunk
        assert received == b"hello over TLS"
    (record,) = [r for r in relay.wait_access_records(2) if r["listener"] == "front"]
    assert record["client"].startswith(CLIENT + ":")
    assert record["tls_version"] in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("mode", ["message", "passthrough"])
def test_websocket_behind_a_tcp_relay(
    processes: ProcessList, proxyd: Callable[..., Any], mode: str
) -> None:
    argv = [sys.executable, str(ROOT / "examples" / "chat_server.py"), "--port", "0"]
    chat = processes.start("chat", [*argv, "--name", "chat-a"])
    chat_port = int(chat.wait_for_output(r"listening on 127\.0\.0\.1:(\d+)", 15).group(1))
    port, ws_port = free_port(), free_port()
    relay = proxyd(
        edge(port, ws_port, "v2") + f"[pool chat]\nservers = 127.0.0.1:{chat_port}\n\n"
        f"[websocket front]\nlisten = tcp:{ws_port}:interface=127.0.0.1\npool = chat\n"
        f"mode = {mode}\naccept_proxy = on\n"
    )
    handshake = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)
    ) as sock:
        sock.sendall(handshake)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert front_clients(relay, 1) == [CLIENT]
