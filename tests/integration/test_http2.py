"""HTTP/2 in the real proxyd (docs/http.md, "HTTP/2"), seen by curl, nghttp and h2load:
prior knowledge on [http] with h2c, ALPN h2 on [https], each stream proxied to an HTTP/1.1
backend."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.certs import TestCA

from .harness import Backend, free_port
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
