"""WebSocket upgrades passed through the real proxyd on [http], [https] and a [websocket]
listener in passthrough mode, against a backend in this process that shows what reached it
and how each connection ended (a FIN or a reset)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certs import TestCA

from .harness import Proxyd, free_port, wait_until

pytestmark = pytest.mark.integration

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class Backend:
    """An HTTP/1.1 server on a thread: `GET /deny` is answered 403 (keep-alive), other
    requests without Upgrade 200 `plain`, WebSocket upgrades 101; after a 101 every byte is
    echoed, except `RESET`, which resets the connection. `ends` says how each upgraded
    connection ended: `fin` or `reset`."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.ends: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                self.heads.append(head)
                fields = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(b":") for line in head.split(b"\r\n"))
                }
                if head.startswith(b"GET /deny"):
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                elif b"upgrade" not in fields:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                else:
                    key = fields[b"sec-websocket-key"]
                    conn.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                        + _accept(key)
                        + b"\r\n\r\n"
                    )
                    self._echo(conn, data)
                    return

    def _echo(self, conn: socket.socket, data: bytes) -> None:
        try:
            while True:
                if data == b"RESET":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.ends.append("reset by backend")
                    return
                if data:
                    conn.sendall(data)
                data = conn.recv(65536)
                if not data:
                    self.ends.append("fin")
                    return
        except ConnectionResetError:
            self.ends.append("reset")
        except TimeoutError:
            self.ends.append("timeout")

    def stop(self) -> None:
        self._stopping = True
        self.sock.close()


@pytest.fixture
def ws_backend() -> Iterator[Backend]:
    backend = Backend()
    yield backend
    backend.stop()


def upgrade(
    port: int,
    path: str = "/chat?room=1",
    tls: ssl.SSLContext | None = None,
    origin: str | None = None,
) -> tuple[socket.socket, bytes]:
    """Connects and sends an opening handshake; returns the socket and the response head."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="ws.test")
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + (f"\r\nOrigin: {origin}".encode() if origin else b"")
        + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    if head.startswith(b"HTTP/1.1 101 "):
        assert b"Sec-WebSocket-Accept: " + _accept(key) in head
    return sock, head


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        got += chunk
    return got


def reset_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_http_and_https_listeners_pass_websockets_through(
    proxyd: Callable[..., Proxyd], ws_backend: Backend, tmp_path: Path
) -> None:
    ca = TestCA()
    pem = ca.issue(["ws.test"]).write(tmp_path / "ws.pem")
    http_port, https_port = free_port(), free_port()
    server = proxyd(
        f"""
[pool ws]
servers = 127.0.0.1:{ws_backend.port}

[http plain]
listen = tcp:{http_port}:interface=127.0.0.1
routes = path / -> pool ws

[https secure]
listen = tcp:{https_port}:interface=127.0.0.1
certificates = {pem}
routes = path / -> pool ws
"""
    )
    sock, head = upgrade(http_port)
    assert head.startswith(b"HTTP/1.1 101 ")
    payload = os.urandom(200_000)
    assert exchange(sock, payload) == payload
    sock.close()

    context = ssl.create_default_context(cafile=str(ca.write_ca(tmp_path / "ca.pem")))
    secure, head = upgrade(https_port, tls=context)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert exchange(secure, b"over tls") == b"over tls"
    assert isinstance(secure, ssl.SSLSocket)
    secure.unwrap().close()  # with close_notify: a TCP close alone would be a TLS truncation

    plain, record = server.wait_access_records(2)
    assert plain["listener"] == "plain" and record["listener"] == "secure"
    for entry in (plain, record):
        assert entry["status"] == 101 and entry["upgrade"] == "websocket"
        assert entry["close"] == "client_closed", entry
    assert plain["bytes_in"] == len(payload) and plain["bytes_out"] == len(payload)
    assert record["tls_version"] == "TLSv1.3"
    first = ws_backend.heads[0]
    assert first.startswith(b"GET /chat?room=1 HTTP/1.1\r\n")
    assert b"\r\nUpgrade: websocket" in first and b"\r\nConnection: Upgrade" in first
    assert b"\r\nX-Forwarded-For: 127.0.0.1" in first
    wait_until(lambda: ws_backend.ends == ["fin", "fin"], 10, "both backend ends closed")


def test_resets_are_passed_on_both_ways(proxyd: Callable[..., Proxyd], ws_backend: Backend) -> None:
    port = free_port()
    server = proxyd(
        f"""
[pool ws]
servers = 127.0.0.1:{ws_backend.port}

[websocket raw]
listen = tcp:{port}:interface=127.0.0.1
pool = ws
mode = passthrough
"""
    )
    sock, head = upgrade(port)
    assert head.startswith(b"HTTP/1.1 101 ")
    sock.sendall(b"RESET")
    with pytest.raises(ConnectionResetError):
        while sock.recv(4096):
            pass
    sock.close()

    sock, _ = upgrade(port)
    assert exchange(sock, b"hello") == b"hello"
    reset_close(sock)
    wait_until(lambda: "reset" in ws_backend.ends, 10, "the backend to see a reset")
    records = server.wait_access_records(2)
    assert [r["close"] for r in records] == ["server_reset", "client_reset"]


def test_non_101_answers_plain_requests_origins_and_limits(
    proxyd: Callable[..., Proxyd], ws_backend: Backend
) -> None:
    http_port, ws_port = free_port(), free_port()
    server = proxyd(
        f"""
[pool ws]
servers = 127.0.0.1:{ws_backend.port}

[http web]
listen = tcp:{http_port}:interface=127.0.0.1
routes = path / -> pool ws
max_tunnels = 1
tunnel_timeout = 1s

[websocket raw]
listen = tcp:{ws_port}:interface=127.0.0.1
pool = ws
mode = passthrough
allowed_origins = https://*.example.com
"""
    )
    # Refused upgrade: an ordinary response, and the connection serves the next request.
    sock, head = upgrade(http_port, path="/deny")
    assert head.startswith(b"HTTP/1.1 403 ") and head.endswith(b"no")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: ws.test\r\n\r\n")
    assert sock.recv(4096).endswith(b"\r\n\r\nplain")
    sock.close()

    first, head = upgrade(http_port)
    assert head.startswith(b"HTTP/1.1 101 ")
    second, head = upgrade(http_port)
    assert head.startswith(b"HTTP/1.1 503 ")  # max_tunnels = 1
    second.close()
    assert first.recv(4096) == b""  # tunnel_timeout closed it
    first.close()
    third, head = upgrade(http_port)
    assert head.startswith(b"HTTP/1.1 101 ")
    third.close()

    plain = socket.create_connection(("127.0.0.1", ws_port), timeout=10)
    plain.sendall(b"GET / HTTP/1.1\r\nHost: ws.test\r\n\r\n")
    assert plain.recv(4096).startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    plain.close()
    denied, head = upgrade(ws_port, origin="https://evil.test")
    assert head.startswith(b"HTTP/1.1 403 ")
    denied.close()
    allowed, head = upgrade(ws_port, origin="https://chat.example.com")
    assert head.startswith(b"HTTP/1.1 101 ")
    allowed.close()

    records = server.wait_access_records(8)
    by_status = [(r["listener"], r["status"], r.get("close")) for r in records]
    assert ("web", 101, "idle_timeout") in by_status
    assert ("web", 503, None) in by_status
    assert ("raw", 426, None) in by_status and ("raw", 403, None) in by_status
