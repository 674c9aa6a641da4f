"""The admin listener: the status document, its Prometheus rendering, and the HTTP resource
(bearer token, methods, paths)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from proxyd.admin.api import AdminResource
from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import status_document
from proxyd.app import ProxydService, sighup_reload
from proxyd.config.load import loads
from proxyd.config.model import AdminConfig

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
READ_TOKEN = "readonly-0123456789"


def proxy(config: str = CONFIG, path: str = "proxyd.ini") -> ProxydService:
    return ProxydService(MemoryReactorClock(), loads(config, path))


def document() -> dict[str, Any]:
    service = proxy()
    first = service.pools["web"].servers[0]
    service.pools["web"].set_health(first, False, "connection refused")
    return status_document(service, COUNTERS, 1000.0)


def test_the_status_document_has_listeners_with_their_counters_and_servers_with_state() -> None:
    doc = document()
    assert doc["workers"] == 2
    assert doc["time"] == 1000.0
    assert doc["config"] == {"path": "proxyd.ini", "generation": 1, "loaded": 0.0}
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
    first, second = pool["servers"]
    assert {key: first[key] for key in first if key != "traffic"} == {
        "name": "127.0.0.1:9001",
        "state": "down",
        "health": "down",
        "admin": "ready",
        "reason": "connection refused",
        "weight": 1,
        "backup": False,
        "discovered": False,
        "active": 5,
        "http2": None,
        "checks": [],
    }
    assert (second["state"], second["health"], second["weight"], second["backup"]) == (
        "up",
        "up",
        3,
        True,
    )


def test_a_server_in_drain_shows_drain_whatever_its_health() -> None:
    service = proxy()
    first = service.pools["web"].servers[0]
    service.pools["web"].set_health(first, False, "refused")
    service.change_server("web", "127.0.0.1:9001", "drain", None, "test")
    [pool] = status_document(service, COUNTERS, 0.0)["pools"]
    assert (pool["servers"][0]["state"], pool["servers"][0]["health"]) == ("drain", "down")


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


def test_the_servers_of_an_http2_pool_show_their_connections_and_streams() -> None:
    from prometheus_client.exposition import generate_latest

    service = proxy(CONFIG + "[pool grpc]\nservers = 127.0.0.1:50051\nprotocol = h2c\n")
    counts = service.h2_upstreams.pool("grpc").server("127.0.0.1:50051")
    counts.connections, counts.streams, counts.streams_total, counts.refused = 1, 2, 7, 1
    documents: list[dict[str, Any]] = []
    service.status().addCallback(documents.append)
    pools = {pool["name"]: pool for pool in documents[0]["pools"]}
    [server] = pools["grpc"]["servers"]
    assert server["http2"] == {
        "connections": 1,
        "streams": 2,
        "streams_total": 7,
        "resets": {
            "refused": 1,
            "goaway": 0,
            "server_reset": 0,
            "cancelled": 0,
            "connection_lost": 0,
        },
    }
    assert [server["http2"] for server in pools["web"]["servers"]] == [None, None]
    found = samples(generate_latest(metrics_registry(documents[0])).decode())
    labels = (("pool", "grpc"), ("server", "127.0.0.1:50051"))
    assert found[("proxyd_upstream_http2_connections_open", labels)] == 1
    assert found[("proxyd_upstream_http2_streams_open", labels)] == 2
    assert found[("proxyd_upstream_http2_streams_total", labels)] == 7
    resets = "proxyd_upstream_http2_streams_reset_total"
    for reason, count in (("refused", 1), ("cancelled", 0)):
        reset_labels = (("pool", "grpc"), ("reason", reason), ("server", "127.0.0.1:50051"))
        assert found[(resets, reset_labels)] == count
    web = (("pool", "web"), ("server", "127.0.0.1:9001"))
    assert ("proxyd_upstream_http2_connections_open", web) not in found


def test_the_acme_sections_figures_come_from_the_process_that_orders(tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest

    config = CONFIG + f"[acme site]\nnames = example.test\nstorage = {tmp_path}/acme\n"
    service = proxy(config)
    assert service.counters()["acme"] == {
        "site": {"orders": {"success": 0, "failure": 0}, "failures": 0}
    }
    worker = ProxydService(MemoryReactorClock(), loads(config), worker=True)
    assert "acme" not in worker.counters()
    figures = {
        "orders": {"success": 2, "failure": 1},
        "failures": 1,
        "expiry": 1_800_000_000.0,
        "last_attempt": 1_790_000_000.0,
        "next_attempt": 1_790_000_060.0,
    }
    doc = status_document(service, {**COUNTERS, "acme": {"site": figures}}, 1000.0)
    assert doc["acme"] == [{"name": "site", **figures}]
    found = samples(generate_latest(metrics_registry(doc)).decode())
    site = (("acme", "site"),)
    assert found[("proxyd_acme_certificate_expiry_timestamp_seconds", site)] == 1.8e9
    assert found[("proxyd_acme_orders_total", (*site, ("result", "success")))] == 2
    assert found[("proxyd_acme_orders_total", (*site, ("result", "failure")))] == 1
    assert found[("proxyd_acme_last_attempt_timestamp_seconds", site)] == 1.79e9
    assert found[("proxyd_acme_next_attempt_timestamp_seconds", site)] == 1_790_000_060
    assert found[("proxyd_acme_consecutive_failures", site)] == 1
    # Before its first certificate and order, and while an order runs: those left out.
    ordering = {"orders": {"success": 0, "failure": 0}, "failures": 0}
    doc = status_document(service, {**COUNTERS, "acme": {"site": ordering}}, 1000.0)
    assert doc["acme"] == [
        {
            "name": "site",
            "expiry": None,
            "orders": {"success": 0, "failure": 0},
            "last_attempt": None,
            "next_attempt": None,
            "failures": 0,
        }
    ]
    shown = {name for name, _ in samples(generate_latest(metrics_registry(doc)).decode())}
    assert {name for name in shown if name.startswith("proxyd_acme")} == {
        "proxyd_acme_orders_total",
        "proxyd_acme_consecutive_failures",
    }


class Stub:
    """A proxy for AdminResource whose status() is `status` (a function)."""

    def __init__(self, status: Any) -> None:
        self.status = status
        self.config = loads(CONFIG, "proxyd.ini")


def admin(
    token: str | None = None, read_token: str | None = None, status: Any = None
) -> AdminResource:
    stub = Stub(status or (lambda: succeed(document())))
    return AdminResource(stub, AdminConfig("tcp:0", token, read_token))  # type: ignore[arg-type]


def get(
    resource: AdminResource,
    path: bytes,
    headers: dict[bytes, bytes] | None = None,
    method: bytes = b"GET",
    content: bytes = b"",
) -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    request.method = method
    request.content = io.BytesIO(content)
    request.client = IPv4Address("TCP", "127.0.0.9", 40000)
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


def bearer(token: str) -> dict[bytes, bytes]:
    return {b"Authorization": b"Bearer " + token.encode()}


def test_status_and_metrics_are_served_with_their_content_types() -> None:
    resource = admin()
    status = get(resource, b"/api/v1/status")
    assert status.responseCode in (None, 200) and status.finished
    assert header(status, b"content-type") == b"application/json"
    assert json.loads(body(status)) == {**document(), "can_change": True}
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
    resource = admin(TOKEN)
    headers = {b"Authorization": authorization} if authorization else {}
    request = get(resource, b"/api/v1/status", headers)
    assert request.responseCode == 401
    assert header(request, b"www-authenticate") == b'Bearer realm="proxyd"'
    assert b"listeners" not in body(request)


def test_with_the_token_a_request_is_served() -> None:
    request = get(admin(TOKEN), b"/metrics", bearer(TOKEN))
    assert request.responseCode in (None, 200)
    assert b"proxyd_workers 2.0" in body(request)


def test_the_read_token_reads_and_may_not_change() -> None:
    resource = admin(TOKEN, READ_TOKEN)
    status = get(resource, b"/api/v1/status", bearer(READ_TOKEN))
    assert json.loads(body(status))["can_change"] is False
    change = get(
        resource,
        b"/api/v1/pools/web/servers/127.0.0.1:9001",
        bearer(READ_TOKEN),
        b"POST",
        b'{"admin": "drain"}',
    )
    assert change.responseCode == 403
    reload = get(resource, b"/api/v1/reload", bearer(READ_TOKEN), b"POST")
    assert reload.responseCode == 403


def test_other_methods_and_paths_are_answered_405_and_404() -> None:
    resource = admin()
    post = get(resource, b"/api/v1/status", method=b"POST")
    assert post.responseCode == 405 and header(post, b"allow") == b"GET, HEAD"
    change = get(resource, b"/api/v1/pools/web/servers/127.0.0.1:9001")
    assert change.responseCode == 405 and header(change, b"allow") == b"POST"
    missing = get(resource, b"/nothing")
    assert missing.responseCode == 404
    assert "/api/v1/reload" in json.loads(body(missing))["paths"]


def test_a_status_that_fails_is_a_500_and_one_whose_client_left_writes_nothing() -> None:
    failed = get(admin(status=lambda: fail(RuntimeError("boom"))), b"/api/v1/status")
    assert failed.responseCode == 500 and failed.finished
    later: Deferred[dict[str, Any]] = Deferred()
    request = get(admin(status=lambda: later), b"/metrics")
    request.processingFailed(Exception("client gone"))  # its notifyFinish errbacks
    later.callback(document())
    assert body(request) == b""


def test_the_stats_page_is_served_without_a_token_under_a_strict_policy() -> None:
    resource = admin(TOKEN)
    page = get(resource, b"/")
    assert page.responseCode in (None, 200)
    assert header(page, b"content-type") == b"text/html; charset=utf-8"
    assert b"<html" in body(page).lower()
    assert header(page, b"content-security-policy").startswith(b"default-src 'self'")
    script = get(resource, b"/stats/stats.js")
    assert header(script, b"content-type") == b"text/javascript; charset=utf-8"
    assert get(resource, b"/stats/../app.py").responseCode == 401  # not a page file: the API
    assert get(resource, b"/", method=b"POST").responseCode == 405


def post(service: ProxydService, path: bytes, content: bytes = b"") -> DummyRequest:
    assert service.admin_resource is not None
    return get(service.admin_resource, path, method=b"POST", content=content)


def test_a_server_is_put_in_drain_and_back_and_the_change_is_logged_with_who_asked() -> None:
    service = proxy()
    with capturedLogs() as events:
        drained = post(service, b"/api/v1/pools/web/servers/127.0.0.1%3A9001", b'{"admin":"drain"}')
    assert drained.responseCode in (None, 200)
    shown = json.loads(body(drained))
    assert (shown["name"], shown["state"], shown["admin"]) == ("127.0.0.1:9001", "drain", "drain")
    server = service.pools["web"].servers[0]
    assert server.admin == "drain"
    assert service.pools["web"].pick() is not server
    assert any("admin API, 127.0.0.9 (no token)" in str(e.get("who")) for e in events)
    ready = post(service, b"/api/v1/pools/web/servers/127.0.0.1:9001", b'{"admin": "ready"}')
    assert json.loads(body(ready))["state"] == "up"


def test_a_weight_is_changed() -> None:
    service = proxy()
    request = post(service, b"/api/v1/pools/web/servers/127.0.0.1:9002", b'{"weight": 7}')
    assert json.loads(body(request))["weight"] == 7
    assert service.pools["web"].servers[1].weight == 7


@pytest.mark.parametrize(
    ("path", "content", "code"),
    [
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b"", 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b"[1]", 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b'{"admin": "off"}', 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b'{"weight": "2"}', 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b'{"weight": 0}', 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b'{"admin": "drain", "x": 1}', 400),
        (b"/api/v1/pools/web/servers/127.0.0.1:9001", b" " * 70000, 413),
        (b"/api/v1/pools/nope/servers/127.0.0.1:9001", b'{"admin": "drain"}', 404),
        (b"/api/v1/pools/web/servers/127.0.0.1:1", b'{"admin": "drain"}', 404),
    ],
)
def test_a_bad_change_is_refused_and_changes_nothing(
    path: bytes, content: bytes, code: int
) -> None:
    service = proxy()
    request = post(service, path, content)
    assert request.responseCode == code
    assert "error" in json.loads(body(request))
    assert [(s.admin, s.weight) for s in service.pools["web"].servers] == [
        ("ready", 1),
        ("ready", 3),
    ]


def test_a_reload_through_the_api_answers_its_outcome(tmp_path: Path) -> None:
    path = tmp_path / "proxyd.ini"
    path.write_text(CONFIG)
    service = proxy(CONFIG, str(path))
    path.write_text(CONFIG.replace("weight=3", "weight=4"))
    reloaded = post(service, b"/api/v1/reload")
    assert json.loads(body(reloaded)) == {"reloaded": True, "generation": 2, "errors": []}
    assert service.pools["web"].servers[1].weight == 4
    path.write_text(CONFIG.replace("weight=3", "weight=zero"))
    refused = post(service, b"/api/v1/reload")
    assert refused.responseCode == 422
    outcome = json.loads(body(refused))
    assert outcome["reloaded"] is False and outcome["generation"] == 2
    assert f"{path}:7: [pool web] servers:" in outcome["errors"][0]


def test_the_effective_config_masks_the_tokens() -> None:
    text = CONFIG + f"token = {TOKEN}\nread_token = {READ_TOKEN}\n"
    service = proxy(text)
    assert service.admin_resource is not None
    request = get(service.admin_resource, b"/api/v1/config", bearer(TOKEN))
    shown = json.loads(body(request))
    assert shown["admin"]["token"] == shown["admin"]["read_token"] == "********"
    assert TOKEN not in body(request).decode() and READ_TOKEN not in body(request).decode()
    assert shown["pools"]["web"]["servers"][1]["weight"] == 3
    assert shown["proxyd"]["drain_timeout"] == 30.0


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


ADMIN_SECTION = "[admin]\nlisten = tcp:0:interface=127.0.0.1\n"
NO_ADMIN = CONFIG.replace(ADMIN_SECTION, "")


def served(tmp_path: Path) -> tuple[ProxydService, Path]:
    path = tmp_path / "proxyd.ini"
    path.write_text(CONFIG)
    return proxy(CONFIG, str(path)), path


def serving_as_before(service: ProxydService, listeners: list[Any], admin: Any) -> bool:
    return (
        service.generation == 1
        and service.listeners == listeners
        and all(listener.parent is service for listener in listeners)
        and service.admin is admin
        and admin.parent is service
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "; cut short\n",
        "[proxyd]\naccess_log = off\n[pool web]\nservers = 127.0.0.1:9001\n",
        ADMIN_SECTION,
    ],
    ids=["empty", "comments", "proxyd-and-pool", "admin"],
)
def test_a_reload_to_a_file_with_no_listener_is_refused_and_every_listener_stays(
    tmp_path: Path, text: str
) -> None:
    service, path = served(tmp_path)
    listeners, admin = list(service.listeners), service.admin
    path.write_text(text)
    with capturedLogs() as events:
        refused = post(service, b"/api/v1/reload")
        sighup_reload(service.reload_source)
    assert refused.responseCode == 422
    outcome = json.loads(body(refused))
    assert outcome["reloaded"] is False and outcome["generation"] == 1
    [error] = outcome["errors"]
    assert error.startswith(f"{path}:1: expected at least one listener section ([http NAME],")
    assert serving_as_before(service, listeners, admin)
    said = [str(e.get("error")) for e in events if e.get("error")]
    assert said == [error, error], "the API's reload and SIGHUP's both log why"


def test_a_reload_that_would_remove_the_admin_listener_is_refused_unless_forced(
    tmp_path: Path,
) -> None:
    service, path = served(tmp_path)
    listeners, admin = list(service.listeners), service.admin
    path.write_text(NO_ADMIN)
    with capturedLogs() as events:
        refused = post(service, b"/api/v1/reload")
        sighup_reload(service.reload_source)  # a signal cannot force
        unforced = post(service, b"/api/v1/reload", b'{"force": false}')
    assert refused.responseCode == unforced.responseCode == 422
    outcome = json.loads(body(refused))
    assert outcome["reloaded"] is False and outcome["generation"] == 1
    assert outcome["errors"] == [
        f"{path}: [admin]: expected an [admin] section: without one this reload would close"
        " the admin listener on tcp:0:interface=127.0.0.1, which only a forced reload does;"
        ' found none (to remove it, POST /api/v1/reload with {"force": true}, or restart'
        " proxyd; SIGHUP cannot force it)"
    ]
    assert [e["error"] for e in events if e.get("error")] == outcome["errors"] * 3
    assert serving_as_before(service, listeners, admin)

    with capturedLogs() as events:
        forced = post(service, b"/api/v1/reload", b'{"force": true}')
    assert forced.responseCode in (None, 200)
    assert json.loads(body(forced)) == {"reloaded": True, "generation": 2, "errors": []}
    assert service.admin is None and admin is not None and admin.parent is None
    assert [listener.name for listener in service.listeners] == ["tcp db", "http front"]
    said = [formatEvent(e) for e in events]
    assert "reload asked by admin API, 127.0.0.9 (no token), forced" in said
    assert (
        "reload (forced): the new file has no [admin] section; the admin listener on"
        " tcp:0:interface=127.0.0.1 closes" in said
    )


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"force": "yes"}', 400),
        (b'{"force": 1}', 400),
        (b'{"forse": true}', 400),
        (b"[true]", 400),
        (b"force=1", 400),
        (b" " * 70000, 413),
    ],
)
def test_a_reload_with_a_body_that_is_not_a_force_flag_is_a_400_and_reloads_nothing(
    tmp_path: Path, content: bytes, code: int
) -> None:
    service, path = served(tmp_path)
    path.write_text(NO_ADMIN)
    request = post(service, b"/api/v1/reload", content)
    assert request.responseCode == code
    assert "error" in json.loads(body(request))
    assert service.generation == 1 and service.admin is not None
