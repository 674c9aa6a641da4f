"""`otlp_endpoint` through the real proxyd: one span per request reaches a test collector (an
OTLP/HTTP server in this process that decodes what it gets), with the ids the demo backend
received in traceparent; and a collector that is down costs the requests nothing."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .harness import Backend, Proxyd, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
UNSAMPLED = "5cf92f3577b34da6a3ce929d0e0e4737"
QUICK = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
"""The SDK's batch delay (5 s by default): a batch every 100 ms."""


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Received:
    """A span as the collector decoded it, with its resource's and its own attributes."""

    def __init__(self, resource: dict[str, Any], scope: str, span: Span) -> None:
        self.resource = resource
        self.scope = scope
        self.span = span
        self.attributes = {kv.key: value(kv.value) for kv in span.attributes}
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex() or None


class Collector:
    """An OTLP/HTTP trace collector on 127.0.0.1 (stdlib http.server, in a thread): each
    POST's body is decoded as an ExportTraceServiceRequest and its spans kept."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.posts: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.keep(self.path, dict(self.headers), request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def keep(self, path: str, headers: dict[str, str], request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(Received(resource, scope_spans.scope.name, span))
        with self.lock:
            self.posts.append((path, headers))
            self.received.extend(spans)

    def spans(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def wait_spans(self, count: int, timeout: float = 15.0) -> list[Received]:
        return wait_until(
            lambda: (spans := self.spans()) and len(spans) >= count and spans,
            timeout,
            f"{count} spans at the collector",
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    try:
        yield found
    finally:
        found.close()


def config(port: int, backend: Backend, endpoint: str, dead_port: int) -> str:
    return f"""
[pool web]
servers = {backend.address}

[pool dead]
servers = 127.0.0.1:{dead_port}

[http front]
listen = tcp:{port}:interface=127.0.0.1
trace_context = on
otlp_endpoint = {endpoint}
otlp_service_name = edge
retries = 0
routes =
    path /dead/ -> pool dead
    path / -> pool web
"""


def get(url: str, *fields: tuple[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(fields))
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def echoed_traceparent(body: bytes) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the traceparent the backend received."""
    headers = json.loads(body)["headers"]
    [found] = [v for name, v in headers if name.lower() == "traceparent"]
    version, trace, parent, flags = found.split("-")
    assert version == "00"
    return trace, parent, flags


def test_each_request_exports_the_span_whose_id_the_backend_got(
    http_backend: Backend, proxyd: Any, collector: Collector
) -> None:
    port = free_port()
    proxy: Proxyd = proxyd(config(port, http_backend, collector.endpoint, free_port()), env=QUICK)
    base = f"http://127.0.0.1:{port}"
    before = time.time()

    # A trace the client does not sample: passed on, but no span.
    status, body = get(f"{base}/echo", ("traceparent", f"00-{UNSAMPLED}-{PARENT}-00"))
    assert status == 200
    assert echoed_traceparent(body)[::2] == (UNSAMPLED, "00")

    status, body = get(
        f"{base}/echo?api_key=k3y",
        ("traceparent", f"00-{TRACE}-{PARENT}-01"),
        ("Authorization", "Bearer s3cr3t"),
        ("Cookie", "session=c00kie"),
    )
    assert status == 200
    continued = echoed_traceparent(body)
    assert continued[0] == TRACE and continued[1] != PARENT and continued[2] == "01"

    status, body = get(f"{base}/echo")
    assert status == 200
    begun = echoed_traceparent(body)
    assert begun[0] != TRACE and begun[2] == "01"  # proxyd records it: sampled

    status, _ = get(f"{base}/dead/x", ("traceparent", f"00-{TRACE}-{PARENT}-01"))
    assert status == 502

    spans = collector.wait_spans(3)
    [ok, new, failed] = sorted(spans, key=lambda s: s.span.start_time_unix_nano)

    # The continued trace: the span the backend got as its parent, the client's as its own.
    assert (ok.trace_id, ok.span_id, ok.parent_id) == (TRACE, continued[1], PARENT)
    assert ok.span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert ok.span.flags & 0x300 == 0x300  # its parent is remote
    assert ok.resource["service.name"] == "edge"
    assert ok.scope == "proxyd"
    records = proxy.wait_access_records(4)
    route = records[1]["route"]
    assert ok.span.name == f"GET {route}"
    assert ok.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/echo",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": port,
        "network.peer.address": "127.0.0.1",
        "proxyd.route": route,
        "proxyd.upstream.server": http_backend.address,
    }
    assert ok.span.status.code == Status.STATUS_CODE_UNSET
    start, end = ok.span.start_time_unix_nano, ok.span.end_time_unix_nano
    assert before * 1e9 <= start <= end <= time.time() * 1e9

    # The new trace: proxyd's span has no parent.
    assert (new.trace_id, new.span_id, new.parent_id) == (begun[0], begun[1], None)

    # The 502: an error.
    assert failed.trace_id == TRACE and failed.parent_id == PARENT
    assert failed.span.status.code == Status.STATUS_CODE_ERROR
    assert failed.span.status.message == records[3]["error"]
    assert failed.attributes["error.type"] == "502"
    assert failed.attributes["http.response.status_code"] == 502

    # The access log's trace ids are the spans'.
    assert [r["trace_id"] for r in records] == [UNSAMPLED, TRACE, begun[0], TRACE]
    # No field's value, nor the query, went out.
    everything = b"".join(s.span.SerializeToString() for s in spans)
    for secret in (b"k3y", b"s3cr3t", b"c00kie", b"api_key"):
        assert secret not in everything
    assert {path for path, _ in collector.posts} == {"/v1/traces"}

    # The stop flushes; nothing more (the unsampled request's span never was).
    assert proxy.terminate() == 0
    assert len(collector.spans()) == 3
    assert UNSAMPLED not in {s.trace_id for s in collector.spans()}


def test_spans_still_queued_are_sent_at_a_graceful_stop(
    http_backend: Backend, proxyd: Any, collector: Collector
) -> None:
    port = free_port()
    # The SDK's default batch delay, 5 s: the spans wait in the queue until the stop.
    proxy = proxyd(config(port, http_backend, collector.endpoint, free_port()))
    for _ in range(5):
        assert get(f"http://127.0.0.1:{port}/echo")[0] == 200
    assert collector.spans() == []
    assert proxy.terminate() == 0
    assert len(collector.spans()) == 5
    assert re.search(r"span export stopped \(\d+\.\d+s\)", proxy.log())


def test_a_collector_that_is_down_costs_the_requests_nothing(
    http_backend: Backend, proxyd: Any
) -> None:
    port = free_port()
    down = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    proxy = proxyd(config(port, http_backend, down, free_port()), env=QUICK)
    slowest = 0.0
    for _ in range(20):
        started = time.monotonic()
        status, body = get(f"http://127.0.0.1:{port}/echo")
        slowest = max(slowest, time.monotonic() - started)
        assert status == 200
        assert echoed_traceparent(body)[2] == "01"
    # The export thread is now retrying (1 s, 2 s, 4 s apart): the requests never wait.
    proxy.wait_for_log(r"opentelemetry\S*: Transient error .* retrying in", timeout=10)
    for _ in range(20):
        started = time.monotonic()
        assert get(f"http://127.0.0.1:{port}/echo")[0] == 200
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.5
    proxy.wait_for_log(r"Failed to export spans batch", timeout=15)
    # Bounded: one line a minute of each kind of message, whatever the requests.
    for _ in range(50):
        assert get(f"http://127.0.0.1:{port}/echo")[0] == 200
    time.sleep(1.5)
    lines = [line for line in proxy.log().splitlines() if "opentelemetry" in line]
    assert 2 <= len(lines) <= 4, lines
    # The stop waits at most proxyd.otlp.FLUSH_TIMEOUT (5 s) for the collector: less when the
    # batch being retried runs out of retries sooner and nothing else is queued.
    started = time.monotonic()
    assert proxy.terminate() == 0
    assert time.monotonic() - started < 9
    assert re.search(r"span export stopped \(\d|within 5s of the stop are dropped", proxy.log())
