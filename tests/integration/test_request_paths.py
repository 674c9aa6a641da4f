"""Requests the real proxyd must not pass on as they came: paths that a backend would read as
a route's protected prefix (`..;/`, encoded slashes, backslashes), and client-address fields
from clients that are not trusted proxies."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.unit.test_path_policy import BYPASSES

from .harness import Backend, connect, free_port

pytestmark = pytest.mark.integration


def exchange(port: int, request: bytes) -> bytes:
    """One request on its own connection (Connection: close); the whole answer."""
    with connect(port, timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def backend_requests(backend: Backend) -> int:
    answer = exchange(backend.port, b"GET /stats HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    return int(json.loads(answer.split(b"\r\n\r\n", 1)[1])["requests"])


def config(front: int, trusting: int, backend: Backend) -> str:
    return (
        f"[pool web]\nservers = {backend.address}\n\n"
        f"[http front]\nlisten = tcp:{front}:interface=127.0.0.1\nroutes =\n"
        '    path /admin/ -> respond 403 "no"\n'
        "    path / -> pool web\n\n"
        f"[http trusting]\nlisten = tcp:{trusting}:interface=127.0.0.1\n"
        "routes = path / -> pool web\ntrusted_proxies = 127.0.0.1\n"
    )


def test_no_spelling_of_a_path_gets_past_a_path_rule_to_the_backend(
    proxyd, http_backend: Backend
) -> None:
    front, trusting = free_port(), free_port()
    proxyd(config(front, trusting, http_backend))
    before = backend_requests(http_backend)
    statuses = {}
    for path in BYPASSES:
        request = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
        statuses[path] = exchange(front, request).split(b" ", 2)[1].decode()
    # /stats itself is the one request the backend saw since.
    assert backend_requests(http_backend) == before + 1, statuses
    assert set(statuses.values()) <= {"400", "403"}, statuses
    assert statuses["/public%2F..%2Fadmin/"] == "400"
    assert statuses["/public/..;/admin/"] == "400"
    assert statuses["/%61dmin/"] == statuses["/admin;x/"] == "403"
    if shutil.which("curl"):
        url = f"http://127.0.0.1:{front}/public/..;/admin/"
        result = subprocess.run(
            ["curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout == "400", result.stderr
    ok = exchange(front, b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")


FORGED = [
    ("X-Real-IP", "10.9.9.9"),
    ("Client-IP", "10.9.9.9"),
    ("True-Client-IP", "10.9.9.9"),
    ("X-Client-IP", "10.9.9.9"),
    ("CF-Connecting-IP", "10.9.9.9"),
    ("X-Forwarded-Port", "8443"),
    ("X-Original-URL", "/admin/"),
]


def echoed_headers(port: int) -> dict[str, str]:
    fields = "".join(f"{name}: {value}\r\n" for name, value in FORGED)
    answer = exchange(
        port, f"GET /echo HTTP/1.1\r\nHost: a\r\n{fields}Connection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    echo = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return {name.lower(): value for name, value in echo["headers"]}


def test_client_address_fields_reach_the_backend_only_from_trusted_proxies(
    proxyd, http_backend: Backend
) -> None:
    front, trusting = free_port(), free_port()
    proxyd(config(front, trusting, http_backend))
    untrusted = echoed_headers(front)
    assert not {name.lower() for name, _ in FORGED} & set(untrusted), untrusted
    assert untrusted["x-forwarded-for"] == "127.0.0.1"
    trusted = echoed_headers(trusting)
    assert {name.lower(): value for name, value in FORGED}.items() <= trusted.items()
