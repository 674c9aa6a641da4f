"""Security at the edge through the real proxyd, with curl, in front of the demo HTTP backend
(examples/http_backend.py): access lists by client address (curl --interface 127.0.0.x) and
through trusted proxies, 405 with Allow, 414, 413, rules enforced and log_only, invalid header
names dropped, the backend's identity hidden, intercept_errors, security headers, a CORS
preflight answered without the backend, a list file re-read at SIGHUP, the metrics."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, Proxyd, free_port, wait_until
from .test_http_relay import curl, http_backend  # noqa: F401

pytestmark = pytest.mark.integration

APP = "https://app.example.com"
PAGE = "<h1>proxyd: something went wrong</h1>\n"


def config(tmp_path: Path, backend: Backend, port: int, edge: int, admin: int) -> str:
    (tmp_path / "5xx.html").write_text(PAGE)
    (tmp_path / "blocked.txt").write_text("# addresses refused everywhere\n127.0.0.3\n")
    return f"""
[pool web]
servers = {backend.address}

[rule admin]
match = path
pattern = ^/admin(/|$)

[rule scanners]
match = user_agent
pattern = (?i)sqlmap
mode = log_only

[cors app]
origins = {APP}
methods = GET POST PUT
headers = Content-Type
credentials = on
max_age = 10m

[route private]
pool = web
access =
    allow 127.0.0.1
    deny all

[route upload]
pool = web
max_body_size = 1KiB
allowed_methods = POST PUT

[http front]
listen = tcp:{port}:interface=127.0.0.1
access =
    deny file {tmp_path / "blocked.txt"}
    allow all
allowed_methods = GET HEAD POST
max_uri_length = 1KiB
max_query_length = 256
rules = scanners admin
intercept_errors = 5xx
error_pages = 500 502 503 {tmp_path / "5xx.html"}
security_headers = on
frame_options = DENY
cors = app
routes =
    path /private/ -> route private
    path /upload   -> route upload
    path /         -> pool web

[http edge]
listen = tcp:{edge}:interface=127.0.0.1
trusted_proxies = 127.0.0.1
access =
    deny 192.0.2.0/24
    allow all
routes =
    path / -> pool web

[admin]
listen = tcp:{admin}:interface=127.0.0.1
"""


class Front:
    def __init__(self, proxy: Proxyd, port: int, edge: int, admin: int, tmp: Path) -> None:
        self.proxy, self.port, self.edge, self.admin, self.tmp = proxy, port, edge, admin, tmp

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str = "/", *args: str) -> tuple[int, dict[str, str], str]:
        """Status, fields (last of each name, lower case) and body of `curl -i`."""
        result = curl("-i", "--path-as-is", *args, self.url(path))
        assert result.returncode == 0, result.stderr
        return parse(result.stdout)

    def record(self, uri: str) -> dict[str, Any]:
        """The last access-log record of `uri`, once written."""
        return wait_until(
            lambda: next(
                (r for r in reversed(self.proxy.access_records()) if r["uri"] == uri), None
            ),
            10,
            f"an access-log record of {uri}",
        )


def parse(output: str) -> tuple[int, dict[str, str], str]:
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


@pytest.fixture
def front(http_backend, proxyd, tmp_path: Path) -> Front:  # type: ignore[no-untyped-def]  # noqa: F811
    backend = http_backend("web-1")
    port, edge, admin = free_port(), free_port(), free_port()
    proxy = proxyd(config(tmp_path, backend, port, edge, admin))
    return Front(proxy, port, edge, admin, tmp_path)


# Access control.


def test_clients_are_allowed_or_refused_by_their_address(front: Front) -> None:
    status, fields, body = front.get("/")
    assert status == 200 and body.startswith("hello from web-1")
    status, fields, body = front.get("/", "--interface", "127.0.0.3")  # in blocked.txt
    assert status == 403 and body == "403 Forbidden\n"
    assert front.record("/")["error"] == "access denied to 127.0.0.3"
    # The route's own list, after the listener's: 127.0.0.1 only (the backend has no
    # /private/: its 404 says the request reached it).
    status, fields, _ = front.get("/private/")
    assert status == 404 and fields["x-backend"] == "web-1"
    assert front.get("/private/", "--interface", "127.0.0.2")[0] == 403


def test_x_forwarded_for_is_read_only_from_trusted_proxies(front: Front) -> None:
    edge = f"http://127.0.0.1:{front.edge}/"
    trusted = curl(
        "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Forwarded-For: 192.0.2.7", edge
    )
    assert trusted.stdout == "403"  # from 127.0.0.1, a trusted proxy: the address it names
    allowed = curl(
        "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Forwarded-For: 198.51.100.7", edge
    )
    assert allowed.stdout == "200"
    # From 127.0.0.2, not trusted: its X-Forwarded-For is not believed either way.
    untrusted = curl(
        "-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", "127.0.0.2",
        "-H", "X-Forwarded-For: 192.0.2.7", edge,
    )  # fmt: skip
    assert untrusted.stdout == "200"


def test_a_list_file_is_read_again_at_sighup(front: Front) -> None:
    assert front.get("/", "--interface", "127.0.0.4")[0] == 200
    (front.tmp / "blocked.txt").write_text("127.0.0.3\n127.0.0.4\n")
    start = front.proxy.log_offset()
    front.proxy.process.signal_group(signal.SIGHUP)
    front.proxy.wait_for_log(r"reloaded .*: generation 2", start=start)
    assert front.get("/", "--interface", "127.0.0.4")[0] == 403


# Request limits.


def test_a_method_not_allowed_gets_405_with_allow(front: Front) -> None:
    status, fields, _ = front.get("/", "-X", "DELETE")
    assert status == 405 and fields["allow"] == "GET, HEAD, POST"
    status, fields, _ = front.get("/upload", "-X", "GET")
    assert status == 405 and fields["allow"] == "POST, PUT"


def test_long_targets_and_queries_get_414(front: Front) -> None:
    assert front.get("/?q=" + "x" * 300)[0] == 414
    assert front.get("/" + "p" * 2000)[0] == 414  # the listener's max_uri_length
    assert front.get("/?q=" + "x" * 200)[0] == 200


def test_bodies_over_the_routes_limit_get_413(front: Front, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    status, _, _ = front.get("/upload", "--data-binary", f"@{big}")
    assert status == 413
    chunked = front.get("/upload", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}")
    assert chunked[0] == 413
    small = front.get("/upload", "--data-binary", "x" * 512)
    assert small[0] == 200 and json.loads(small[2])["bytes"] == 512


# Rules.


def test_an_enforced_rule_refuses_even_an_encoded_path(front: Front) -> None:
    assert front.get("/admin/users")[0] == 403
    assert front.get("/a/%2e%2e/admin/users")[0] == 403
    record = front.record("/a/%2e%2e/admin/users")
    assert record["rule"] == "admin" and record["status"] == 403
    assert front.get("/administrator")[0] == 404  # the backend's: the rule let it on


def test_a_log_only_rule_lets_the_request_on_and_is_logged(front: Front) -> None:
    status, _, _ = front.get("/echo", "-A", "sqlmap/1.7")
    assert status == 200
    record = front.record("/echo")
    assert record["rule"] == "scanners (log_only)" and record["auth_user"] is None
    front.proxy.wait_for_log(r"rule scanners \(log_only\) matches GET /echo from 127\.0\.0\.1")


# Header names and the backend's identity.


def test_an_underscored_forwarded_for_never_reaches_the_backend(front: Front) -> None:
    status, _, body = front.get("/echo", "-H", "X_Forwarded_For: 6.6.6.6")
    assert status == 200
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert "x_forwarded_for" not in seen and seen["x-forwarded-for"] == "127.0.0.1"


def test_the_backends_server_is_hidden_and_proxyds_sent(front: Front) -> None:
    status, fields, _ = front.get("/headers?Server=Apache/2.4.1&X-Powered-By=PHP/8.1&X-Ok=1")
    assert status == 200
    assert fields["server"] == "proxyd"
    assert "x-powered-by" not in fields and fields["x-ok"] == "1"
    status, fields, _ = front.get("/admin")  # proxyd's own answer
    assert status == 403 and fields["server"] == "proxyd"


def test_a_backend_error_body_is_replaced_by_proxyds_page(front: Front) -> None:
    status, fields, body = front.get("/status/500?X-Debug=trace")
    assert status == 500 and body == PAGE
    assert "x-debug" not in fields and "x-backend" not in fields
    status, fields, body = front.get("/status/404")  # not listed: the backend's answer
    assert status == 404 and fields["x-backend"] == "web-1"


def test_security_headers_are_on_every_response(front: Front) -> None:
    for path, expected in (("/", 200), ("/admin", 403)):
        status, fields, _ = front.get(path)
        assert status == expected
        assert fields["x-content-type-options"] == "nosniff"
        assert fields["x-frame-options"] == "DENY"
        assert fields["referrer-policy"] == "strict-origin-when-cross-origin"


# CORS.


def test_a_preflight_is_answered_without_the_backend(front: Front) -> None:
    status, fields, body = front.get(
        "/api/items",
        "-X",
        "OPTIONS",
        "-H",
        f"Origin: {APP}",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: content-type",
    )
    assert status == 204 and body == ""
    assert fields["access-control-allow-origin"] == APP
    assert fields["access-control-allow-credentials"] == "true"
    assert fields["access-control-allow-headers"] == "content-type"
    assert fields["access-control-max-age"] == "600"
    record = front.record("/api/items")
    assert record["upstream"] is None and record["status"] == 204
    refused = front.get(
        "/api/items", "-X", "OPTIONS", "-H", "Origin: https://evil.example",
        "-H", "Access-Control-Request-Method: PUT",
    )  # fmt: skip
    assert refused[0] == 403 and "access-control-allow-origin" not in refused[1]
    status, fields, _ = front.get("/", "-H", f"Origin: {APP}")
    assert status == 200 and fields["access-control-allow-origin"] == APP
    assert fields["vary"] == "Origin"


# Metrics.


def test_refusals_and_rule_matches_are_counted(front: Front) -> None:
    front.get("/admin")
    front.get("/", "-A", "sqlmap")
    front.get("/", "--interface", "127.0.0.3")
    front.get("/", "-X", "DELETE")

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{front.admin}/metrics", timeout=10) as r:
            text: str = r.read().decode()
        return text

    def counted(text: str) -> bool:
        return all(
            re.search(pattern, text)
            for pattern in (
                r'proxyd_rule_matches_total\{[^}]*mode="enforce"[^}]*rule="admin"[^}]*\} 1\.0',
                r'proxyd_rule_matches_total\{[^}]*mode="log_only"[^}]*rule="scanners"[^}]*\} 1\.0',
                r'proxyd_errors_total\{error="access_denied"[^}]*\} 1\.0',
                r'proxyd_errors_total\{error="rule_denied"[^}]*\} 1\.0',
                r'proxyd_errors_total\{error="method_not_allowed"[^}]*\} 1\.0',
            )
        )

    wait_until(lambda: counted(metrics()), 10, "the refusals in /metrics")
