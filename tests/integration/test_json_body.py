"""JSON body transformations in the real proxyd (docs/gateway.md, "JSON bodies"), in front of
the demo HTTP backend: its /echo-body answers the body it got with the request's
Content-Type, so one round trip shows the request transformed on its way in and the answer on
its way out; /echo shows the framing the backend got."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request

import pytest

from .harness import Backend, free_port
from .test_http_relay import http_backend  # noqa: F401

pytestmark = pytest.mark.integration


def config(port: int, backend: Backend) -> str:
    return f"""\
[pool web]
servers = {backend.address}

[route both-ways]
pool = web
request_json =
    remove /password
    rename /user /login
    set /via "proxyd"
response_json =
    wrap data
max_json_body = 4KiB

[route request-only]
pool = web
strip_prefix = on
request_json = set /via "proxyd"

[route response-only]
pool = web
strip_prefix = on
response_json = wrap data
max_json_body = 1KiB

[http front]
listen = tcp:{port}:interface=127.0.0.1
routes =
    path /echo-body -> route both-ways
    path /in/       -> route request-only
    path /out/      -> route response-only
"""


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_a_json_post_arrives_transformed_and_its_answer_comes_back_transformed(
    http_backend,  # noqa: F811
    proxyd,
) -> None:
    port = free_port()
    proxy = proxyd(config(port, http_backend("web-1")))
    document = {"user": "ann", "password": "s3cret", "items": [1, 2]}
    status, headers, body = post(
        f"http://127.0.0.1:{port}/echo-body", json.dumps(document).encode(), "application/json"
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body))
    assert json.loads(body) == {"data": {"items": [1, 2], "login": "ann", "via": "proxyd"}}

    # The backend got the transformed body with its Content-Length, even from a chunked
    # request, and its own JSON answer (a route without response_json) came back untouched.
    result = subprocess.run(
        [
            "curl", "-sS", "--http1.1", "-H", "Content-Type: application/json",
            "-H", "Transfer-Encoding: chunked", "--data-binary", '{"a": 1}',
            f"http://127.0.0.1:{port}/in/echo",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    echo = json.loads(result.stdout)
    sent = b'{"a":1,"via":"proxyd"}'
    fields = {name.lower(): value for name, value in echo["headers"]}
    assert fields["content-length"] == str(len(sent)) and "transfer-encoding" not in fields
    assert echo["body_sha256"] == hashlib.sha256(sent).hexdigest()
    records = proxy.wait_access_records(2)
    assert [r["status"] for r in records] == [200, 200]


def test_other_bodies_pass_untouched_and_json_past_the_bound_is_refused(
    http_backend,  # noqa: F811
    proxyd,
) -> None:
    port = free_port()
    proxy = proxyd(config(port, http_backend("web-1")))
    base = f"http://127.0.0.1:{port}"
    text = b'{"password": "not JSON by its label"}'
    assert post(f"{base}/echo-body", text, "text/plain")[2] == text
    assert post(f"{base}/echo-body", b"{oops", "application/json")[2] == b"{oops"  # not JSON
    big = json.dumps({"pad": "x" * 5000}).encode()
    assert post(f"{base}/echo-body", big, "application/json")[0] == 413
    # On /out/ (response_json only, up to 1 KiB): a 2 KiB answer not labelled JSON streams
    # back untouched; one labelled JSON is too long to transform.
    status, headers, body = post(f"{base}/out/echo-body", big[:2048], "text/plain")
    assert (status, headers["Content-Length"], body) == (200, "2048", big[:2048])
    padded = json.dumps({"pad": "x" * 2000}).encode()
    assert post(f"{base}/out/echo-body", padded, "application/json")[0] == 502
    records = proxy.wait_access_records(5)
    assert [r["status"] for r in records] == [200, 200, 413, 200, 502]
    assert records[2]["error"] == "a JSON body of 5011 bytes, over max_json_body (4096)"
    assert records[4]["error"] == "filter json_body: body over 1024 bytes"
