"""`otlp_endpoint`: the span each exchange of a listener with trace_context exports
(proxyd.filters.trace_export), driven through the relay on StringTransports with a processor
that records what it is given: its ids (those sent upstream), parent, times, attributes and
status; sampling; what no span may hold; its protobuf encoding."""

from __future__ import annotations

import re
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
)
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import StatusCode
from twisted.internet import error
from twisted.python.failure import Failure

from proxyd.access.networks import parse_rules
from proxyd.config.otlp_model import OtlpConfig
from proxyd.filters import trace_context
from proxyd.filters.trace_context import TraceContext
from proxyd.filters.trace_export import TraceExport
from proxyd.otlp import OtlpExport
from proxyd.resources import ProcessResources
from tests.unit.test_http_relay import Relay, field, route
from tests.unit.test_security_filters import get, proxied, status

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
ENDPOINT = "http://127.0.0.1:4318/v1/traces"
_SENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


class Recorder(SpanProcessor):
    """A span processor that keeps what on_end is given."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.shut_down = False

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        self.shut_down = True


class Export(OtlpExport):
    """An OtlpExport whose processors record (one per endpoint)."""

    def __init__(self) -> None:
        self.recorders: dict[str, Recorder] = {}
        super().__init__(reactor=None, make_processor=self._record)

    def _record(self, endpoint: str) -> Recorder:
        recorder = self.recorders[endpoint] = Recorder()
        return recorder

    def spans(self, endpoint: str = ENDPOINT) -> list[ReadableSpan]:
        return self.recorders[endpoint].spans if endpoint in self.recorders else []


@pytest.fixture(autouse=True)
def _no_sdk_log_handler() -> Any:
    """OtlpExport puts its handler on the `opentelemetry` logger: take it off after each
    test (the handler holds the test's reactor)."""
    import logging

    logger = logging.getLogger("opentelemetry")
    before = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = before[0]
    logger.propagate, logger.level = before[1], before[2]


def exporting(
    trace: str = "on", sample: float = 1.0, service: str = "proxyd", **config: Any
) -> tuple[Relay, Export]:
    export = Export()
    relay = Relay(
        trace_context=trace,
        otlp=OtlpConfig(ENDPOINT, service, sample),
        resources=ProcessResources(otlp=export),
        **config,
    )
    return relay, export


def sent_trace(upstream: bytes) -> tuple[str, str, str]:
    values = field(upstream, "traceparent")
    assert len(values) == 1, values
    match = _SENT.fullmatch(values[0].decode())
    assert match is not None, values
    trace, span, flags = match.groups()
    return trace, span, flags


def only_span(export: Export) -> ReadableSpan:
    spans = export.spans()
    assert len(spans) == 1, spans
    return spans[0]


def ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent id) as hex."""
    context = span.context
    assert context is not None
    parent = span.parent
    return (
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
        None if parent is None else f"{parent.span_id:016x}",
    )


# The span of an exchange.


def test_a_continued_traces_span_is_the_one_sent_upstream_child_of_the_clients() -> None:
    relay, export = exporting()
    relay.send(get("/a/b?q=1", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    relay.reactor.advance(0.25)
    upstream, answer = proxied(relay)
    assert status(answer) == 200
    trace, span_id, flags = sent_trace(upstream)
    span = only_span(export)
    assert ids(span) == (TRACE, span_id, PARENT)
    assert (trace, flags) == (TRACE, "01")
    assert span.parent is not None and span.parent.is_remote
    assert span.context is not None and span.context.trace_flags.sampled
    assert not span.context.is_remote
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET */"
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "proxyd"
    assert span.resource.attributes["service.name"] == "proxyd"
    # The reactor's seconds: the request came at 0, its answer 0.25 s later.
    assert (span.start_time, span.end_time) == (0, 250_000_000)


def test_the_spans_attributes_follow_the_http_server_conventions() -> None:
    relay, export = exporting()
    relay.send(get("/a/b?q=1", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    proxied(relay)
    assert dict(only_span(export).attributes) == {
        http_attributes.HTTP_REQUEST_METHOD: "GET",
        url_attributes.URL_SCHEME: "http",
        url_attributes.URL_PATH: "/a/b",
        http_attributes.HTTP_RESPONSE_STATUS_CODE: 200,
        server_attributes.SERVER_ADDRESS: "a",
        server_attributes.SERVER_PORT: 8080,  # no port in Host: the one it came to
        network_attributes.NETWORK_PEER_ADDRESS: "10.0.0.7",
        "proxyd.route": "*/",
        "proxyd.upstream.server": "127.0.0.1:9001",
    }


def test_server_port_is_the_hosts_when_it_has_one() -> None:
    relay, export = exporting()
    relay.send(b"GET / HTTP/1.1\r\nHost: example.test:8443\r\n\r\n")
    proxied(relay)
    attributes = only_span(export).attributes
    assert attributes["server.address"] == "example.test"
    assert attributes["server.port"] == 8443


def test_a_new_trace_is_sampled_and_its_span_has_no_parent() -> None:
    relay, export = exporting()
    relay.send(get("/"))
    trace, span_id, flags = sent_trace(proxied(relay)[0])
    assert flags == "01"  # proxyd records it: the server may too
    assert ids(only_span(export)) == (trace, span_id, None)
    assert relay.log.records[-1]["trace_id"] == trace


def test_a_clients_unsampled_trace_makes_no_span() -> None:
    relay, export = exporting()
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-00"))
    assert sent_trace(proxied(relay)[0])[::2] == (TRACE, "00")
    assert export.spans() == []


def test_restart_exports_a_new_trace_without_the_clients_parent() -> None:
    relay, export = exporting(trace="restart")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-00"))
    trace, span_id, flags = sent_trace(proxied(relay)[0])
    assert trace != TRACE and flags == "01"
    assert ids(only_span(export)) == (trace, span_id, None)


def test_otlp_sample_samples_that_share_of_new_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0.1, 0.3, 0.2])
    monkeypatch.setattr(trace_context, "random", lambda: next(draws))
    relay, export = exporting(sample=0.25)
    flags = []
    for _ in range(3):
        relay.send(get("/"))
        flags.append(sent_trace(proxied(relay)[0])[2])
    assert flags == ["01", "00", "01"]
    assert len(export.spans()) == 2


def test_otlp_sample_0_exports_only_traces_the_client_sampled() -> None:
    relay, export = exporting(sample=0.0)
    relay.send(get("/"))
    assert sent_trace(proxied(relay)[0])[2] == "00"
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    proxied(relay)
    assert [ids(span)[0] for span in export.spans()] == [TRACE]


def test_a_5xx_span_is_an_error_with_its_type_and_proxyds_reason() -> None:
    relay, export = exporting(retries=0)
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    relay.refuse_upstream(error.ConnectionRefusedError())
    assert status(relay.received()) == 502
    span = only_span(export)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == relay.log.records[-1]["error"]
    assert span.attributes[error_attributes.ERROR_TYPE] == "502"
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["proxyd.upstream.server"] == "127.0.0.1:9001"
    assert ids(span)[0] == TRACE


def test_a_servers_5xx_is_an_error_typed_by_its_status() -> None:
    relay, export = exporting(retries=0)
    relay.send(get("/"))
    proxied(relay, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    span = only_span(export)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "503"
    assert span.attributes["proxyd.upstream.server"] == "127.0.0.1:9001"


def test_a_response_cut_by_the_server_is_an_error_though_its_status_is_200() -> None:
    relay, export = exporting()
    relay.send(get("/"))
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    upstream.connectionLost(Failure(error.ConnectionLost()))
    span = only_span(export)
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "upstream_reset"


def test_a_4xx_span_is_not_an_error_and_no_route_makes_no_route_attribute() -> None:
    relay, export = exporting(routes=(route("/only/"),))
    relay.send(get("/elsewhere"))
    assert status(relay.received()) == 404
    span = only_span(export)
    assert span.status.status_code is StatusCode.UNSET
    assert span.name == "GET"
    assert span.attributes["http.response.status_code"] == 404
    assert "proxyd.route" not in span.attributes
    assert "error.type" not in span.attributes


def test_an_unknown_method_is_other_with_its_original() -> None:
    relay, export = exporting()
    relay.send(get("/", method="PURGE"))
    proxied(relay)
    span = only_span(export)
    assert span.name == "HTTP */"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_no_request_fields_value_nor_the_query_goes_into_a_span() -> None:
    relay, export = exporting()
    secrets = ["Basic c2VjcmV0OnNlY3JldA==", "session=s3cr3t", "agent-x", "k3y"]
    relay.send(
        get(
            "/p?api_key=k3y",
            f"Authorization: {secrets[0]}",
            f"Cookie: {secrets[1]}",
            f"User-Agent: {secrets[2]}",
            f"traceparent: 00-{TRACE}-{PARENT}-01",
        )
    )
    proxied(relay)
    text = only_span(export).to_json()
    for secret in [*secrets, "api_key"]:
        assert secret not in text


def test_the_span_encodes_as_otlp_with_the_remote_parent_flag() -> None:
    relay, export = exporting(service="edge")
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    _, span_id, _ = sent_trace(proxied(relay)[0])
    request = encode_spans(export.spans())
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "edge"
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "proxyd"
    [encoded] = scope_spans.spans
    assert encoded.trace_id.hex() == TRACE
    assert encoded.span_id.hex() == span_id
    assert encoded.parent_span_id.hex() == PARENT
    assert encoded.kind == PbSpan.SpanKind.SPAN_KIND_SERVER
    assert encoded.flags & 0x300 == 0x300  # the parent is known to be remote


def test_a_request_refused_by_a_later_row_is_exported_too() -> None:
    relay, export = exporting(access=parse_rules(enumerate(["deny all"]), ""))
    relay.send(get("/", f"traceparent: 00-{TRACE}-{PARENT}-01"))
    assert status(relay.received()) == 403
    span = only_span(export)
    assert ids(span)[::2] == (TRACE, PARENT)
    assert span.attributes["http.response.status_code"] == 403
    assert "proxyd.upstream.server" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


# Export off: nothing in the chain.


def test_without_otlp_endpoint_the_filter_has_no_log_phase() -> None:
    relay = Relay(trace_context="on")
    for chain in relay.factory.chains.values():
        assert chain.log == ()
        [step] = [step for step in chain.request_head if step[1] == "trace_context"]
        assert type(step[2].__self__) is TraceContext


def test_with_otlp_endpoint_the_trace_context_row_logs_on_every_chain() -> None:
    relay, _ = exporting()
    for chain in relay.factory.chains.values():
        assert [name for _, name, _ in chain.log] == ["trace_context"]
        assert isinstance(chain.log[0][2].__self__, TraceExport)


def test_without_a_process_export_nothing_is_exported() -> None:
    relay = Relay(trace_context="on", otlp=OtlpConfig(ENDPOINT))
    assert relay.factory.chains["*/"].log == ()


# The process's export: one processor per collector, a resource per service name.


def test_listeners_share_a_collectors_processor_and_differ_by_service_name() -> None:
    export = Export()
    a = export.sink(OtlpConfig(ENDPOINT, "a"))
    b = export.sink(OtlpConfig(ENDPOINT, "b"))
    other = export.sink(OtlpConfig("http://127.0.0.2:4318/v1/traces", "a"))
    assert export.sink(OtlpConfig(ENDPOINT, "a")) is a
    assert a.processor is b.processor is export.recorders[ENDPOINT]
    assert other.processor is not a.processor
    assert a.resource.attributes["service.name"] == "a"
    assert b.resource.attributes["service.name"] == "b"
    assert a.resource.attributes["telemetry.sdk.name"] == "opentelemetry"
    assert export.endpoints == [ENDPOINT, "http://127.0.0.2:4318/v1/traces"]
