"""`trace_context` with `otlp_endpoint`: the same filter (proxyd.filters.trace_context) with a
log phase, which hands one SERVER span per sampled exchange to the listener's SpanSink
(proxyd.otlp: batched and sent to the collector by the SDK's own thread).

The span is proxyd's hop: the trace id and the span id trace_context chose and sent upstream
in traceparent (so the server's spans are its children), the client's span as its parent when
the trace was continued, from the request's head to the exchange's end. Its attributes follow
OpenTelemetry's HTTP server conventions (span_attributes below). No request field's value
goes into a span (no Authorization, Cookie, User-Agent, nor the query, where API keys
travel): only the method, the path, the Host's name and port, and what proxyd itself knows.

How the span is made: the SDK's Tracer picks the ids of the spans it starts (its
IdGenerator, one per provider, knows nothing of a request), and proxyd's span id must be
chosen before the request goes upstream, so before the span could end. A per-request
IdGenerator, or a Tracer whose ids are fed through a shared variable, would bend the tracer
API to something it was not made for. What the SDK does take from outside is an ended span:
ReadableSpan, the type SpanProcessor.on_end and SpanExporter.export are defined on (its
constructor takes the context, parent, times, attributes and status). This module builds
one from the exchange, once it is over, and gives it to the processor's on_end, which is
what the tracer's Span.end() does with its own. No sampler runs: the sampled flag was
decided with the traceparent (trace_context's `sample`, or the client's flag), and an
unsampled exchange makes no span at all.

Cost on the reactor's thread: the span's construction and a deque append (see
docs/gateway.md for the figures); its encoding and sending are the export thread's.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from proxyd.filters.internal import RelayExchange
from proxyd.filters.trace_context import TraceContext
from proxyd.gateway.trace import TraceHop
from proxyd.metrics import ErrorKind
from proxyd.otlp import SpanSink

KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
"""The methods the HTTP conventions name as they are; others are `_OTHER`."""

SERVER_FAULTS: Final = frozenset(
    {
        ErrorKind.UPSTREAM_RESET,
        ErrorKind.UPSTREAM_IDLE,
        ErrorKind.UPSTREAM_TIMEOUT,
        ErrorKind.UPSTREAM_STALLED,
        ErrorKind.BAD_RESPONSE,
        ErrorKind.FILTER_FAILED,
        ErrorKind.INTERNAL,
    }
)
"""Errors that make a span's status ERROR whatever its status code (a response cut after
its head, status 200, by a server that reset): the server's or proxyd's fault. The client's
(it left, sent a bad request) leave a 4xx's span UNSET, as the conventions ask."""

_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_UNSET: Final = Status(StatusCode.UNSET)


class TraceExport(TraceContext):
    """trace_context's filter that also exports its spans to `sink`."""

    def __init__(self, sink: SpanSink, restart: bool, sample: float) -> None:
        super().__init__(restart, sample)
        self.sink = sink

    def log(self, exchange: RelayExchange) -> None:
        hop = exchange.vars.get("trace")
        if hop is not None and hop.sampled:
            self.sink.emit(exchange_span(exchange, hop, self.sink))


def exchange_span(exchange: RelayExchange, hop: TraceHop, sink: SpanSink) -> ReadableSpan:
    """The SERVER span of `exchange` (over: its end is now), proxyd's hop `hop` in its
    trace."""
    trace_id = int(hop.trace_id, 16)
    context = SpanContext(trace_id, int(hop.span_id, 16), False, _SAMPLED)
    parent = None
    if hop.parent_id is not None:
        parent = SpanContext(trace_id, int(hop.parent_id, 16), True, _SAMPLED)
    attributes = span_attributes(exchange)
    method = exchange.method
    if method not in KNOWN_METHODS:
        method = "HTTP"  # the conventions' name of a span of an unknown method
    route = exchange.route_name
    status = _UNSET
    kind = exchange.error_kind
    if exchange.status >= 500 or kind in SERVER_FAULTS:
        attributes["error.type"] = kind or str(exchange.status)
        status = Status(StatusCode.ERROR, exchange.error)
    return ReadableSpan(
        f"{method} {route}" if route is not None else method,
        context,
        parent,
        sink.resource,
        attributes,
        kind=SpanKind.SERVER,
        status=status,
        start_time=int(exchange.started * 1e9),
        end_time=int(exchange.reactor.seconds() * 1e9),
        instrumentation_scope=sink.scope,
    )


def span_attributes(exchange: RelayExchange) -> dict[str, str | int]:
    """The span's attributes: OpenTelemetry's HTTP server conventions' required ones and
    those proxyd's users look for, and proxyd's own (`proxyd.*`). Few, as each costs the
    export thread some 2 µs to encode (docs/gateway.md): no `network.protocol.version`,
    peer port nor body sizes. None of them is a request field's value but the Host's name
    and port (`server.address`, `server.port`, as the conventions define them)."""
    method = exchange.request.method.decode("latin-1")
    attributes: dict[str, str | int] = {
        "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
        "url.scheme": exchange.scheme,
        "url.path": exchange.raw_target[0].decode("latin-1"),
        "http.response.status_code": exchange.status,
    }
    if method not in KNOWN_METHODS:
        attributes["http.request.method_original"] = method
    ctx = exchange.ctx
    if ctx is not None:
        attributes["server.address"] = exchange.host_name or ctx.local_ip
        attributes["server.port"] = _host_port(ctx.host) or ctx.local_port
        attributes["network.peer.address"] = ctx.client_ip
    route = exchange.route_name
    if route is not None:
        attributes["proxyd.route"] = route
    tried = exchange.tried
    if tried:
        attributes["proxyd.upstream.server"] = tried[-1].name
    return attributes


def _host_port(host: str) -> int:
    """The port of a Host value (`example.com:8080`, `[::1]:8080`); 0 when it has none."""
    name, colon, port = host.rpartition(":")
    if not colon or not port.isdigit() or name.endswith(":"):
        return 0
    if name.startswith("[") and not name.endswith("]"):
        return 0  # an IPv6 address's last group, not a port
    return int(port)
