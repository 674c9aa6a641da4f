"""The demo HTTP backend (examples/http_backend.py) on its own, driven by curl and raw sockets:
when an `[http]` relay test fails, these tell whether the backend or proxyd is at fault."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import Process, ProcessList, RssSampler, connect, connect_with_buffers, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"
MiB = 1 << 20


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


class Origin:
    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict[str, int]:
        return json.loads(curl(self.url("/stats")).stdout)


def start_origin(processes: ProcessList, name: str) -> Origin:
    argv = [sys.executable, ROOT / "examples" / "http_backend.py", "--port", "0", "--name", name]
    process = processes.start(f"http-backend-{name}", argv)
    match = process.wait_for_output(rf"http backend {name} listening on 127\.0\.0\.1:(\d+)", 15)
    return Origin(process, int(match.group(1)))


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """One backend for the tests that only look at their own connections."""
    processes = ProcessList(tmp_path_factory.mktemp("http-backend"))
    try:
        yield start_origin(processes, "web-1")
    finally:
        processes.stop_all()


@pytest.fixture
def fresh_origin(processes: ProcessList) -> Callable[[], Origin]:
    return lambda: start_origin(processes, "fresh")


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-s", "--http1.1", *args], input=stdin, capture_output=True, timeout=30
    )


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Client:
    """HTTP/1.1 over a raw socket: what we send is exactly what the backend gets."""

    def __init__(self, port: int, sock: socket.socket | None = None) -> None:
        self.sock = sock or connect(port)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buffer[:200]!r}")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self, head: bool = False) -> Response:
        """The next response; `head`: it answers a HEAD, so it has no body."""
        status = int(self._line().split()[1])
        headers = {}
        while line := self._line():
            name, value = line.decode().split(":", 1)
            headers[name.lower()] = value.strip()
        if head or status in (204, 304) or status < 200:
            return Response(status, headers, b"")
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            while self._line():  # trailers
                pass
            return Response(status, headers, body)
        return Response(status, headers, self._take(int(headers["content-length"])))

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the backend closed the connection with nothing more to read."""
        self.sock.settimeout(timeout)
        return not self.buffer and self.sock.recv(1) == b""


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


def test_root_says_hello_and_names_the_backend_and_connection(origin: Origin) -> None:
    result = curl("-i", origin.url("/"))
    head, body = result.stdout.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"hello from web-1\n"
    assert b"\r\nX-Backend: web-1\r\n" in head
    assert re.search(rb"\r\nX-Connection: \d+\r\n", head)
    assert b"\r\nX-Request-Count: 1\r\n" in head


def test_keepalive_numbers_connections_and_requests(origin: Origin) -> None:
    fields = "%header{x-connection} %header{x-request-count}\n"
    result = curl("-w", fields, *["-o", "/dev/null", origin.url("/")] * 3)
    pairs = [line.split() for line in result.stdout.decode().splitlines()]
    first = int(pairs[0][0])
    assert pairs == [[str(first), "1"], [str(first), "2"], [str(first), "3"]]
    with Client(origin.port) as client:
        client.send(get("/healthz"))
        answer = client.response()
        assert answer.body == b"ok"
        assert answer.headers["x-connection"] == str(first + 1)
        assert answer.headers["x-request-count"] == "1"


def test_pipelined_requests_are_answered_in_order(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(
            get("/slow/0.2")
            + get("/size/5")
            + b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc"
            + get("/status/404")
        )
        answers = [client.response() for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 404]
    assert [a.headers["x-request-count"] for a in answers] == ["1", "2", "3", "4"]
    assert answers[0].body == b"hello from web-1\n"
    assert answers[1].body == b"01234"
    assert json.loads(answers[2].body)["body_length"] == 3


def test_http_1_0_closes_unless_keepalive_is_asked(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(get("/", version="1.0"))
        answer = client.response()
        assert answer.headers["connection"] == "close"
        assert client.at_eof()
    with Client(origin.port) as client:
        client.send(get("/", "Connection: keep-alive", version="1.0"))
        assert client.response().headers["connection"] == "keep-alive"
        client.send(get("/size/10?chunked=1", "Connection: keep-alive", version="1.0"))
        answer = client.response()  # no chunked encoding for an HTTP/1.0 client
        assert answer.headers["content-length"] == "10"
        assert answer.headers["x-request-count"] == "2"


def test_head_sends_the_headers_of_get_and_no_body(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(get("/size/1m", method="HEAD") + get("/"))
        head = client.response(head=True)
        assert head.headers["content-length"] == str(MiB)
        assert client.response().body == b"hello from web-1\n"  # nothing in between


def test_echo_reports_the_request_as_received(origin: Origin) -> None:
    body = os.urandom(5000)
    result = curl(
        "-X", "PUT", "-H", "X-Test: A  b", "-H", "Expect:", "--data-binary", "@-",
        origin.url("/echo?x=1"), stdin=body,
    )  # fmt: skip
    echo = json.loads(result.stdout)
    assert echo["method"] == "PUT"
    assert echo["target"] == "/echo?x=1"
    assert echo["version"] == "1.1"
    assert ["X-Test", "A  b"] in echo["headers"]
    assert echo["body_length"] == 5000
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_echo_body_answers_the_body_as_received_with_its_content_type(origin: Origin) -> None:
    body = b'{"a": [1, 2]}'
    for framing in ([], ["-H", "Transfer-Encoding: chunked"]):
        result = curl(
            *framing, "-D", "-", "-H", "Content-Type: application/json; charset=utf-8",
            "--data-binary", "@-", origin.url("/echo-body"), stdin=body,
        )  # fmt: skip
        head, answer = result.stdout.split(b"\r\n\r\n", 1)
        assert b"\r\nContent-Type: application/json; charset=utf-8\r\n" in head
        assert answer == body
    result = curl(
        "-w", "%{http_code}", "-o", "/dev/null", "-H", "Expect:", "--data-binary", "@-",
        origin.url("/echo-body"), stdin=bytes(MiB + 1),
    )  # fmt: skip
    assert result.stdout == b"413"


def test_size_sends_the_pattern_with_a_length_or_chunked(origin: Origin) -> None:
    assert curl(origin.url("/size/1k")).stdout == pattern(1024)
    result = curl("-D", "-", origin.url("/size/100000?chunked=1"))
    head, body = result.stdout.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    assert body == pattern(100000)
    result = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}", origin.url("/size/3m"))
    assert result.stdout == b"200 %d" % (3 * MiB)
    assert curl("-w", "%{http_code}", "-o", "/dev/null", origin.url("/size/12x")).stdout == b"400"


def test_uploads_are_counted_and_hashed_with_length_or_chunked(origin: Origin) -> None:
    body = os.urandom(3 * MiB + 7)
    expected = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    for framing in ([], ["-H", "Transfer-Encoding: chunked"]):
        started = time.monotonic()
        result = curl(*framing, "--data-binary", "@-", origin.url("/upload"), stdin=body)
        assert json.loads(result.stdout) == expected
        assert time.monotonic() - started < 0.9  # 100 Continue came: curl did not wait 1 s
    assert curl("-w", "%{http_code}", "-o", "/dev/null", origin.url("/upload")).stdout == b"405"


def test_expect_100_continue_is_answered_before_the_body(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert client.response().status == 100
        client.send(b"hi")
        assert json.loads(client.response().body)["bytes"] == 2


def test_upload_of_256_mib_streams_in_bounded_memory(origin: Origin) -> None:
    size = 256 * MiB
    with RssSampler(origin.process.pid) as sampler:
        source = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        result = subprocess.run(
            ["curl", "-s", "-T", "-", "-H", "Expect:", origin.url("/upload")],
            stdin=source.stdout,
            capture_output=True,
            timeout=30,
        )
        source.wait(10)
    assert json.loads(result.stdout)["bytes"] == size
    assert sampler.growth_kib < 20 * 1024, f"RSS grew by {sampler.growth_kib} KiB"


def test_download_waits_for_a_slow_reader(origin: Origin) -> None:
    sock = connect_with_buffers(origin.port, rcvbuf=16384)
    with Client(origin.port, sock) as client, RssSampler(origin.process.pid) as sampler:
        client.send(get("/size/1g"))
        time.sleep(0.5)  # not reading: the backend must stop producing, not buffer 1 GiB
        assert sampler.growth_kib < 20 * 1024, f"RSS grew by {sampler.growth_kib} KiB"
        received = 0
        while received < 20 * MiB:
            received += len(sock.recv(MiB))
    assert sampler.growth_kib < 20 * 1024, f"RSS grew by {sampler.growth_kib} KiB"


def test_status_answers_that_status_and_204_304_have_no_body(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(get("/status/503") + get("/status/204") + get("/status/304") + get("/"))
        unavailable, no_content, not_modified, hello = (client.response() for _ in range(4))
    assert (unavailable.status, unavailable.body) == (503, b"503 Service Unavailable\n")
    assert no_content.status == 204 and "content-length" not in no_content.headers
    assert not_modified.status == 304 and "content-length" not in not_modified.headers
    assert hello.body == b"hello from web-1\n"  # so 204 and 304 sent no body bytes


def test_slow_waits_and_slow_body_sends_the_head_first(origin: Origin) -> None:
    started = time.monotonic()
    assert curl(origin.url("/slow/0.3")).stdout == b"hello from web-1\n"
    assert time.monotonic() - started >= 0.3
    with Client(origin.port) as client:
        started = time.monotonic()
        client.send(get("/slow-body/0.5"))
        client._line()  # the status line comes at once
        assert time.monotonic() - started < 0.3
        while client._line():
            pass
        assert client._take(17) == b"hello from web-1\n"
        assert time.monotonic() - started >= 0.5


def test_drop_cuts_the_body_short(origin: Origin) -> None:
    result = curl("-o", "/dev/null", origin.url("/drop"))
    assert result.returncode == 18  # curl: partial file


def test_close_answers_then_closes(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(get("/close") + get("/"))
        answer = client.response()
        assert answer.headers["connection"] == "close"
        assert client.at_eof()  # the pipelined second request is not answered


def test_malformed_request_gets_400_and_close(origin: Origin) -> None:
    with Client(origin.port) as client:
        client.send(get("/") + b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        assert client.response().status == 200
        assert client.response().status == 400
        assert client.at_eof()


def test_stats_count_connections_open_and_requests(fresh_origin) -> None:
    origin = fresh_origin()
    with Client(origin.port) as first, Client(origin.port) as second:
        first.send(get("/") + get("/"))
        first.response(), first.response()
        second.send(get("/healthz"))
        second.response()
        assert origin.stats() == {"connections": 3, "open": 3, "requests": 4}
    final = wait_until(lambda: (s := origin.stats())["open"] == 1 and s, 5, "closes counted")
    assert final["connections"] >= 4 and final["requests"] >= 5
