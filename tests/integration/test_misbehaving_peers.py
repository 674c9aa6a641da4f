"""The real proxyd against peers that misbehave on purpose (issue 18): a backend that sends
more than its responses declare must never answer another client's request, and clients that
abort while proxyd connects for them must never get a healthy server ejected."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from .harness import Proxyd, free_port, wait_until

pytestmark = pytest.mark.integration

INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\nINJECTED"

# What the backend answers to GET /PATH for the misbehaving paths; any other path is
# answered 200 with the path as its body.
ANSWERS = {
    "/overrun": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + INJECTED,
    "/204": b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED,
    "/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nINJECTED",
    "/early": b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n",
    "/storm": b"HTTP/1.1 102 Processing\r\n\r\n" * 200
    + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
}


class RawBackend:
    """An HTTP/1.1 server on a raw socket that answers as told (ANSWERS), keeps its
    connections alive, and can write unasked bytes on the connection it answered last."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.last: socket.socket | None = None
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._stop = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                answer = ANSWERS.get(path)
                if answer is None:
                    body = path.encode()
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                self.last = conn
                conn.sendall(answer)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def raw_backend() -> Iterator[RawBackend]:
    backend = RawBackend()
    yield backend
    backend.close()


def http_config(port: int, backend: str, pool_options: str = "", listener: str = "") -> str:
    return (
        f"[pool web]\nservers = {backend}\n{pool_options}\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"routes =\n    path / -> pool web\n{listener}\n"
    )


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One final response (1xx skipped) from a keep-alive connection: its status and body."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {data!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200:
            continue
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and status not in (204, 304):
                length = int(value)
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            data += chunk
        return status, data[:length]


def get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock)


@pytest.mark.parametrize("attack", ["/overrun", "/204", "/304"])
def test_a_backend_sending_more_than_it_declares_never_answers_another_client(
    raw_backend: RawBackend, proxyd: Callable[..., Proxyd], attack: str
) -> None:
    port = free_port()
    proxy = proxyd(http_config(port, raw_backend.address))
    rounds = 30
    wrong = []
    for n in range(rounds):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as attacker,
            socket.create_connection(("127.0.0.1", port), timeout=10) as victim,
        ):
            get(attacker, attack)
            status, body = get(victim, f"/victim-{n}")
            if (status, body) != (200, f"/victim-{n}".encode()):
                wrong.append((status, body))
            # The same client's next request is not poisoned either.
            status, body = get(attacker, f"/again-{n}")
            if (status, body) != (200, f"/again-{n}".encode()):
                wrong.append((status, body))
    assert wrong == []
    assert "sent bytes after its response ended" in proxy.log()


def test_bytes_sent_on_an_idle_pooled_connection_close_it(
    raw_backend: RawBackend, proxyd: Callable[..., Proxyd]
) -> None:
    port = free_port()
    proxy = proxyd(http_config(port, raw_backend.address))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert get(client, "/first") == (200, b"/first")
        assert raw_backend.last is not None
        raw_backend.last.sendall(INJECTED)  # out of turn: proxyd's connection idles in its pool
        proxy.wait_for_log(r"bytes on an idle keep-alive connection; closed it")
        assert get(client, "/second") == (200, b"/second")
    assert raw_backend.connections == 2


def test_a_response_before_the_request_body_was_sent_closes_both_connections(
    raw_backend: RawBackend, proxyd: Callable[..., Proxyd]
) -> None:
    port = free_port()
    proxyd(http_config(port, raw_backend.address))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        client.sendall(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")  # body bytes, not a request
        status, _ = read_response(client)
        assert status == 413
        assert client.recv(4096) == b""  # Connection: close, the rest of the body unread
    with socket.create_connection(("127.0.0.1", port), timeout=10) as victim:
        assert get(victim, "/victim") == (200, b"/victim")
    assert raw_backend.connections == 2


def test_an_interim_response_storm_is_answered_502(
    raw_backend: RawBackend, proxyd: Callable[..., Proxyd]
) -> None:
    port = free_port()
    proxyd(http_config(port, raw_backend.address, listener="retries = 0"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET /storm HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _ = read_response(client)
    assert status == 502
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert get(client, "/after") == (200, b"/after")


class StuckServer:
    """A server whose accept queue is full, so that connects to it hang (the SYNs are
    dropped) until it starts accepting; then it answers every request 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):  # fill the accept queue (and the SYN that completes beside it)
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)
        self.served = 0

    def serve(self) -> None:
        for filler in self.fillers:
            filler.close()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.served += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()
        for filler in self.fillers:
            filler.close()


def abort(sock: socket.socket, how: str) -> None:
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    elif how == "half-close":
        sock.shutdown(socket.SHUT_WR)
        sock.close()
    else:
        sock.close()


@pytest.mark.parametrize("listener", ["http", "websocket"])
def test_clients_aborting_while_proxyd_connects_never_eject_the_server(
    proxyd: Callable[..., Proxyd], listener: str
) -> None:
    server = StuckServer()
    try:
        port = free_port()
        pool = f"[pool web]\nservers = 127.0.0.1:{server.port}\nmax_fails = 3\n\n"
        listen = f"listen = tcp:{port}:interface=127.0.0.1\nconnect_timeout = 30s\n"
        if listener == "http":
            front = f"[http front]\n{listen}routes =\n    path / -> pool web\n"
            request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
        else:
            front = f"[websocket front]\n{listen}pool = web\nmode = passthrough\n"
            request = (
                b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
        proxy = proxyd(pool + front)
        aborted = 30
        for n in range(aborted):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(request)
            abort(client, ("fin", "rst", "half-close")[n % 3])
        wait_until(
            lambda: len(proxy.access_records()) >= aborted, 20, f"{aborted} access-log records"
        )
        assert "EJECTED" not in proxy.log()
        assert "User aborted" not in proxy.log()
        server.serve()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request)
            answer = client.recv(4096)
        # The server answers (a 200 refusing the upgrade, for the WebSocket port): it was
        # still in the pool, where before an ejection answered 503.
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert server.served == 1
        assert "EJECTED" not in proxy.log()
    finally:
        server.close()
