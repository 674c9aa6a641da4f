"""HTTP/2 in the real proxyd (docs/http.md, "HTTP/2"), seen by curl, nghttp and h2load:
prior knowledge on [http] with h2c, ALPN h2 on [https], each stream proxied to an HTTP/1.1
backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.certs import TestCA

from .harness import Backend, free_port
from .test_drain import arrivals, wait_for_arrivals
from .test_http_relay import http_backend  # noqa: F401

pytestmark = pytest.mark.integration


def config(http_port: int, https_port: int, backend: Backend, pem: Path) -> str:
    return (
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[http plain]\nlisten = tcp:{http_port}:interface=127.0.0.1\nh2c = on\n"
        "routes =\n    path / -> pool web\n\n"
        f"[https tls]\nlisten = tcp:{https_port}:interface=127.0.0.1\ncertificates = {pem}\n"
        "routes =\n    path / -> pool web\n"
    )


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def head_and_body(*argv: str) -> tuple[bytes, bytes]:
    """curl -i's output as bytes, split at the end of the response head."""
    out = subprocess.run(argv, capture_output=True, timeout=60)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head, out.stderr
    return head, body


@pytest.fixture
def ports(tmp_path: Path, http_backend, proxyd) -> tuple[int, int, Path, object]:  # noqa: F811
    ca = TestCA()
    ca.write_ca(tmp_path / "ca.pem")
    pem = ca.issue(["h2.example.test"]).write(tmp_path / "h2.pem")
    http_port, https_port = free_port(), free_port()
    instance = proxyd(config(http_port, https_port, http_backend("b1"), pem))
    return http_port, https_port, tmp_path / "ca.pem", instance


def test_curl_with_prior_knowledge_gets_http2_and_http1_still_works(ports) -> None:
    http_port, _, _, instance = ports
    url = f"http://127.0.0.1:{http_port}/echo"
    head, body = head_and_body("curl", "-sS", "-i", "--http2-prior-knowledge", url)
    assert head.startswith(b"HTTP/2 200"), head
    echoed = json.loads(body)
    assert echoed["version"] == "1.1"  # the backend speaks HTTP/1.1
    posted = run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", "x" * 100000, url)
    assert json.loads(posted.stdout)["body_length"] == 100000
    head, _ = head_and_body("curl", "-sS", "-i", "--http1.1", url)
    assert head.startswith(b"HTTP/1.1 200")
    records = instance.wait_access_records(3)
    assert [r.get("protocol") for r in records] == ["HTTP/2", "HTTP/2", None]
    assert records[0]["stream"] == 1


def test_curl_over_tls_negotiates_h2_by_alpn(ports) -> None:
    _, https_port, ca_file, _ = ports
    head, body = head_and_body(
        "curl", "-sS", "-i", "--http2", "--cacert", str(ca_file),
        "--resolve", f"h2.example.test:{https_port}:127.0.0.1",
        f"https://h2.example.test:{https_port}/size/300k",
    )  # fmt: skip
    assert head.startswith(b"HTTP/2 200"), head
    assert len(body) == 300 * 1024


def test_nghttp_fetches_many_streams_on_one_connection(ports) -> None:
    http_port, _, _, _ = ports
    urls = [f"http://127.0.0.1:{http_port}/size/{n}k" for n in (1, 64, 200, 3)]
    result = run("nghttp", "-n", "-s", *urls)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" 200 ") == 4, result.stdout


def test_h2load_many_streams_all_answered(ports) -> None:
    http_port, _, _, _ = ports
    result = run("h2load", "-n", "2000", "-c", "4", "-m", "25", f"http://127.0.0.1:{http_port}/")
    assert "2000 succeeded, 0 failed, 0 errored" in result.stdout, result.stdout
    assert "status codes: 2000 2xx" in result.stdout


def test_sigterm_sends_goaway_and_the_open_streams_finish(
    tmp_path: Path,
    http_backend,  # noqa: F811
    proxyd,
) -> None:
    backend = http_backend("slow")
    port = free_port()
    relay = proxyd(
        f"[proxyd]\ndrain_timeout = 20s\naccess_log = {tmp_path / 'access.log'}\n\n"
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[http plain]\nlisten = tcp:{port}:interface=127.0.0.1\nh2c = on\n"
        "routes =\n    path / -> pool web\n"
    )
    urls = [f"http://127.0.0.1:{port}/slow/1.5?n={n}" for n in range(3)]
    since = arrivals(backend)
    fetch = subprocess.Popen(
        ["nghttp", "-n", "-s", *urls], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_arrivals(since, 3)  # the three streams are at the backend
    relay.stopped_by_test = True
    os.kill(relay.pid, signal.SIGTERM)
    out, err = fetch.communicate(timeout=30)
    assert fetch.returncode == 0, err
    assert out.count(" 200 ") == 3, out
    assert relay.process.popen.wait(15) == 0
