"""The `[http]` relay of the real proxyd, driven by curl and raw sockets, in front of the
demo HTTP backend (examples/http_backend.py): keep-alive reuse seen at the backend, a backend
dying mid-response, a slow backend, streaming 1 GiB each way under a memory bound."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Backend, ProcessList, RssSampler, connect, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GiB = 1 << 30
RSS_LIMIT_KIB = 100 * 1024


@pytest.fixture
def http_backend(processes: ProcessList) -> Callable[[str], Backend]:
    def start(name: str) -> Backend:
        port = free_port()
        argv = [
            sys.executable,
            str(ROOT / "examples" / "http_backend.py"),
            "--port",
            str(port),
            "--name",
            name,
        ]
        process = processes.start(f"http-{name}", argv)
        process.wait_listening([port], 15)
        return Backend(process, port)

    return start


def http_config(
    port: int, servers: list[Backend], listener_options: str = "", pool: str = ""
) -> str:
    lines = "".join(f"    {server.address}\n" for server in servers)
    return (
        f"[pool web]\nservers =\n{lines}{pool}\n\n"
        f"[http front]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"routes =\n    path / -> pool web\n{listener_options}\n"
    )


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--http1.1", *args], capture_output=True, text=True, timeout=timeout
    )


def stats(backend: Backend) -> dict[str, int]:
    result = curl(f"http://{backend.address}/stats")
    return json.loads(result.stdout)


def test_keepalive_reuses_upstream_connections(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxy = proxyd(http_config(port, [backend]))
    urls = [arg for _ in range(20) for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}/")]
    result = curl("-w", "%{http_code} %{num_connects}\n", *urls)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0::2] == ["200"] * 20
    # 20 requests: curl reused its connection, and so did proxyd upstream.
    assert sum(int(n) for n in lines[1::2]) == 1
    for _ in range(10):  # separate client connections reuse the same upstream connection too
        assert curl(f"http://127.0.0.1:{port}/").returncode == 0
    assert stats(backend)["connections"] <= 2  # one from proxyd, one for this query
    records = proxy.wait_access_records(30)
    assert {r["status"] for r in records} == {200}
    assert all(r["upstream"] == backend.address for r in records)


def test_forwarding_headers_reach_the_backend(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxyd(http_config(port, [backend]))
    result = curl(
        "-H", "Connection: close, X-Hop", "-H", "X-Hop: 1", f"http://127.0.0.1:{port}/echo"
    )
    echo = json.loads(result.stdout)
    fields = {name.lower(): value for name, value in echo["headers"]}
    assert fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["x-forwarded-proto"] == "http"
    assert fields["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert fields["via"] == "1.1 proxyd"
    assert len(fields["x-request-id"]) >= 16
    assert "x-hop" not in fields


def test_backend_dying_mid_response_cuts_the_client(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxy = proxyd(http_config(port, [backend]))
    result = curl("-o", "/dev/null", f"http://127.0.0.1:{port}/drop")
    assert result.returncode == 18  # curl: partial file
    assert curl(f"http://127.0.0.1:{port}/").returncode == 0  # proxyd serves on
    [*_, drop, _ok] = proxy.wait_access_records(2)
    assert drop["uri"] == "/drop" and "upstream" in drop["error"]
    assert proxy.crash_report() is None


def test_slow_backend_hits_the_response_timeout(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxy = proxyd(http_config(port, [backend], "response_timeout = 500ms\nretries = 0"))
    started = time.monotonic()
    result = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/slow/5")
    assert result.stdout == "504"
    assert time.monotonic() - started < 4
    [record] = proxy.wait_access_records(1)
    assert record["status"] == 504


def test_connect_failure_moves_on_and_no_server_is_503(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    dead = Backend(backend.process, free_port())  # nothing listens there
    port = free_port()
    proxyd(http_config(port, [dead, backend], pool="balance = first"))
    result = curl("-w", "%{http_code}", "-o", "/dev/null", f"http://127.0.0.1:{port}/")
    assert result.stdout == "200"
    backend.kill()
    result = curl("-w", "%{http_code}", "-o", "/dev/null", f"http://127.0.0.1:{port}/")
    assert result.stdout in ("502", "503")


def test_smuggling_attempt_is_refused_with_400(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxyd(http_config(port, [backend]))
    sock = connect(port)
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.count(b"HTTP/1.1") == 1
    assert stats(backend)["requests"] == 1  # only the stats query itself


def test_slowloris_head_gets_408(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxyd(http_config(port, [backend], "header_timeout = 500ms"))
    sock = connect(port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
    sock.settimeout(5)
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 408 ")
    sock.close()


def _sample(proxy) -> RssSampler:
    sampler = RssSampler(proxy.pid)
    sampler.baseline_kib = proxy.rss_kib()
    sampler._thread.start()
    return sampler


def test_one_gib_download_and_upload_stream_under_100_mib(http_backend, proxyd, tmp_path) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxy = proxyd(http_config(port, [backend]))
    sampler = _sample(proxy)
    try:
        result = curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            f"http://127.0.0.1:{port}/size/1g",
            timeout=300,
        )
        assert result.stdout == f"200 {GiB}", result.stderr
        # Upload: curl reads the body from a pipe, chunked, as fast as proxyd takes it.
        producer = subprocess.Popen(["head", "-c", str(GiB), "/dev/zero"], stdout=subprocess.PIPE)
        assert producer.stdout is not None
        try:
            upload = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--http1.1",
                    "-T",
                    "-",
                    "-H",
                    "Expect:",
                    f"http://127.0.0.1:{port}/upload",
                ],
                stdin=producer.stdout,
                capture_output=True,
                text=True,
                timeout=240,
            )
        finally:
            producer.stdout.close()  # so that `head` ends even if curl stopped reading
            producer.kill()
            producer.wait()
        assert upload.returncode == 0, upload.stderr
        assert upload.stdout.startswith("{"), (upload.stdout[:300], upload.stderr)
        assert json.loads(upload.stdout)["bytes"] == GiB
    finally:
        sampler._stop.set()
    assert sampler.peak_kib < RSS_LIMIT_KIB, f"peak RSS {sampler.peak_kib} KiB"


def test_pipelined_requests_are_answered_in_order(http_backend, proxyd) -> None:
    backend = http_backend("web-1")
    port = free_port()
    proxyd(http_config(port, [backend]))
    sock = connect(port)
    sock.sendall(
        b"GET /size/3 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]


def test_http_check_takes_a_failing_server_out_and_errors_use_the_page(
    http_backend, proxyd, tmp_path
) -> None:
    good = http_backend("good")
    bad = http_backend("bad")
    page = tmp_path / "503.html"
    page.write_text("<p>all down</p>")
    port = free_port()
    proxy = proxyd(
        http_config(
            port,
            [good, bad],
            f"error_pages =\n    503 {page}",
            pool="check = http GET /status/500 expect 200\ncheck_interval = 200ms\nfall = 1",
        )
    )
    proxy.wait_for_state(good.address, "web", "DOWN")
    proxy.wait_for_state(bad.address, "web", "DOWN")
    result = curl("-w", " %{http_code}", f"http://127.0.0.1:{port}/")
    assert result.stdout == "<p>all down</p> 503"
