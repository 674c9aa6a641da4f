"""The admin listener: the status document, its Prometheus rendering, and the HTTP resource
(bearer token, methods, paths)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from proxyd.admin.api import AdminResource
from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import status_document
from proxyd.app import ProxydService
from proxyd.config.load import loads

CONFIG = """
[proxyd]
access_log = off
[pool web]
servers =
    127.0.0.1:9001
    127.0.0.1:9002 weight=3 backup
[http front]
listen = tcp:0:interface=127.0.0.1
routes =
    path / -> pool web
[tcp db]
listen = tcp:0:interface=127.0.0.1
pool = web
[admin]
listen = tcp:0:interface=127.0.0.1
"""

COUNTERS = {
    "workers": 2,
    "listeners": {
        "http front": {"connections": 3, "requests": 120, "tunnels": 1, "tunnels_total": 4},
        "tcp db": {"active": 2},
    },
    "servers": {"web/127.0.0.1:9001": {"active": 5}},
}

TOKEN = "0123456789abcdefXYZ"


def proxy() -> ProxydService:
    return ProxydService(MemoryReactorClock(), loads(CONFIG, "proxyd.ini"))


def document() -> dict[str, Any]:
    service = proxy()
    first = service.pools["web"].servers[0]
    service.pools["web"].set_health(first, False, "connection refused")
    return status_document(service.config, service.pools, COUNTERS)


def test_the_status_document_has_listeners_with_their_counters_and_servers_with_state() -> None:
    doc = document()
    assert doc["workers"] == 2
    assert doc["listeners"] == [
        {
            "name": "db",
            "kind": "tcp",
            "listen": "tcp:0:interface=127.0.0.1",
            "counters": {"active": 2},
        },
        {
            "name": "front",
            "kind": "http",
            "listen": "tcp:0:interface=127.0.0.1",
            "counters": {"connections": 3, "requests": 120, "tunnels": 1, "tunnels_total": 4},
        },
    ]
    [pool] = doc["pools"]
    assert pool["name"] == "web" and pool["balance"] == "round_robin"
    assert pool["servers"] == [
        {
            "name": "127.0.0.1:9001",
            "state": "down",
            "reason": "connection refused",
            "weight": 1,
            "backup": False,
            "active": 5,
        },
        {
            "name": "127.0.0.1:9002",
            "state": "up",
            "reason": "",
            "weight": 3,
            "backup": True,
            "active": 0,
        },
    ]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_metrics_are_the_status_document_in_prometheus_text_format() -> None:
    from prometheus_client.exposition import generate_latest

    found = samples(generate_latest(metrics_registry(document())).decode())
    front = (("kind", "http"), ("listener", "front"))
    assert found[("proxyd_workers", ())] == 2
    assert found[("proxyd_http_requests_total", front)] == 120
    assert found[("proxyd_connections_open", front)] == 3
    assert found[("proxyd_connections_open", (("kind", "tcp"), ("listener", "db")))] == 2
    assert found[("proxyd_http_tunnels_total", front)] == 4
    first = (("pool", "web"), ("server", "127.0.0.1:9001"))
    second = (("pool", "web"), ("server", "127.0.0.1:9002"))
    assert found[("proxyd_server_up", first)] == 0
    assert found[("proxyd_server_up", second)] == 1
    assert found[("proxyd_server_connections_open", first)] == 5


def get(
    resource: AdminResource, path: bytes, headers: dict[bytes, bytes] | None = None, method=b"GET"
) -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.method = method
    for name, value in (headers or {}).items():
        request.requestHeaders.addRawHeader(name, value)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def body(request: DummyRequest) -> bytes:
    return b"".join(request.written)


def header(request: DummyRequest, name: bytes) -> bytes | None:
    return request.responseHeaders.getRawHeaders(name, [None])[0]


def test_status_and_metrics_are_served_with_their_content_types() -> None:
    resource = AdminResource(lambda: succeed(document()), None)
    status = get(resource, b"/api/v1/status")
    assert status.responseCode in (None, 200) and status.finished
    assert header(status, b"content-type") == b"application/json"
    assert json.loads(body(status)) == document()
    metrics = get(resource, b"/metrics")
    assert header(metrics, b"content-type").startswith(b"text/plain; version=0.0.4")
    assert b"proxyd_http_requests_total" in body(metrics)
    assert header(metrics, b"cache-control") == b"no-store"
    openmetrics = get(
        resource, b"/metrics", {b"Accept": b"application/openmetrics-text; version=1.0.0"}
    )
    assert header(openmetrics, b"content-type").startswith(b"application/openmetrics-text")
    assert body(openmetrics).endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "authorization", [None, b"Bearer wrong-token-wrong-token", b"Basic " + TOKEN.encode()]
)
def test_with_a_token_a_request_without_it_is_refused(authorization: bytes | None) -> None:
    resource = AdminResource(lambda: succeed(document()), TOKEN)
    headers = {b"Authorization": authorization} if authorization else {}
    request = get(resource, b"/api/v1/status", headers)
    assert request.responseCode == 401
    assert header(request, b"www-authenticate") == b'Bearer realm="proxyd"'
    assert b"listeners" not in body(request)


def test_with_the_token_a_request_is_served() -> None:
    resource = AdminResource(lambda: succeed(document()), TOKEN)
    request = get(resource, b"/metrics", {b"Authorization": b"Bearer " + TOKEN.encode()})
    assert request.responseCode in (None, 200)
    assert b"proxyd_workers 2.0" in body(request)


def test_other_methods_and_paths_are_answered_405_and_404() -> None:
    resource = AdminResource(lambda: succeed(document()), None)
    post = get(resource, b"/api/v1/status", method=b"POST")
    assert post.responseCode == 405 and header(post, b"allow") == b"GET, HEAD"
    missing = get(resource, b"/nothing")
    assert missing.responseCode == 404
    assert json.loads(body(missing))["paths"] == ["/api/v1/status", "/metrics"]


def test_a_status_that_fails_is_a_500_and_one_whose_client_left_writes_nothing() -> None:
    resource = AdminResource(lambda: fail(RuntimeError("boom")), None)
    failed = get(resource, b"/api/v1/status")
    assert failed.responseCode == 500 and failed.finished
    later: Deferred[dict[str, Any]] = Deferred()
    resource = AdminResource(lambda: later, None)
    request = get(resource, b"/metrics")
    request.processingFailed(Exception("client gone"))  # its notifyFinish errbacks
    later.callback(document())
    assert body(request) == b""


def test_the_proxy_serves_its_own_status_and_a_master_the_sum_of_its_workers() -> None:
    service = proxy()
    assert service.admin is not None
    assert service.admin.description == "tcp:0:interface=127.0.0.1"
    documents: list[dict[str, Any]] = []
    service.status().addCallback(documents.append)
    assert documents[0]["workers"] == 1
    service.counters_source = lambda: succeed(COUNTERS)
    service.status().addCallback(documents.append)
    assert documents[1]["listeners"][1]["counters"]["requests"] == 120


def test_a_worker_has_no_admin_listener() -> None:
    assert ProxydService(MemoryReactorClock(), loads(CONFIG), worker=True).admin is None
