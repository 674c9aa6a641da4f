"""What exporting a span per request (`otlp_endpoint`, proxyd.filters.trace_export) costs, as
docs/gateway.md reports it: `python -m bench.span_cost` (from the repository's root).

1. The StringTransport loop of docs/performance.md ("The filter chain"): a kept-alive GET
   with three fields through the relay of tests/unit/test_http_relay.py, the process's CPU
   (every thread's) a request, best of 30 runs of 2000, with trace_context off, on, and on
   with otlp_endpoint (the SDK's BatchSpanProcessor
   with an exporter that drops the batches: what the reactor's thread pays, plus the export
   thread's wake-ups, without a collector's network time).
   A second run encodes the batches as OTLPSpanExporter does (and sends nothing): the
   export thread's encoding holds the GIL, so it is CPU the requests do not get; a third,
   with otlp_sample = 10%.
2. The log phase alone (the span built and queued), with timeit.
3. The export thread's work per span: the SDK's protobuf encoding of a batch of 512 spans
   (what it sends is that request, POSTed once per batch).
"""

from __future__ import annotations

import gc
import time
import timeit
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from twisted.internet.task import Clock

from proxyd.config.otlp_model import OtlpConfig
from proxyd.filters import trace_export
from proxyd.otlp import OtlpExport
from proxyd.resources import ProcessResources
from tests.unit.test_http_relay import Relay

REQUEST = b"GET /a HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nUser-Agent: bench\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
RUNS = 30
REQUESTS = 2000


class Drop(SpanExporter):
    """Takes every batch and sends nothing; with `encode`, encodes it first, as
    OTLPSpanExporter.export does before its POST."""

    def __init__(self, encode: bool = False) -> None:
        self.spans = 0
        self.encode = encode

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        if self.encode:
            encode_spans(spans).SerializePartialToString()
        return SpanExportResult.SUCCESS


def relay(mode: str, export: OtlpExport | None = None, sample: float = 1.0) -> Relay:
    if mode == "off":
        return Relay()
    if export is None:
        return Relay(trace_context="on")
    return Relay(
        trace_context="on",
        otlp=OtlpConfig("http://127.0.0.1:4318/v1/traces", sample=sample),
        resources=ProcessResources(otlp=export),
    )


def loop(target: Relay) -> float:
    """µs of the process's CPU (every thread's) a request, best of RUNS runs of REQUESTS."""
    target.send(REQUEST)
    upstream, ut = target.accept_upstream()
    upstream.dataReceived(RESPONSE)
    target.received()
    ut.clear()
    best = float("inf")
    for _ in range(RUNS):
        gc.collect()
        started = time.process_time()
        for _ in range(REQUESTS):
            target.send(REQUEST)
            upstream.dataReceived(RESPONSE)
        best = min(best, time.process_time() - started)
        target.received()
        ut.clear()
    return best / REQUESTS * 1e6


def main() -> None:
    exports = {}
    samples = {"on + otlp": 1.0, "on + otlp, encoded": 1.0, "on + otlp 10%, encoded": 0.1}
    for name in samples:
        processor = BatchSpanProcessor(Drop(encode=name.endswith("encoded")))
        exports[name] = OtlpExport(Clock(), make_processor=lambda endpoint, p=processor: p)
    results: dict[str, list[float]] = {name: [] for name in ("off", "on", *exports)}
    for _ in range(5):  # interleaved, so that the machine's drift falls on each alike
        results["off"].append(loop(relay("off")))
        results["on"].append(loop(relay("on")))
        for name, export in exports.items():
            results[name].append(loop(relay("on", export, samples[name])))
    print(
        f"StringTransport loop, µs of CPU a request (best of 5 x best of {RUNS} runs of"
        f" {REQUESTS}):"
    )
    for name, values in results.items():
        print(f"  trace_context {name:24} {min(values):6.1f}")
    for export in exports.values():
        assert export.provider is not None
        export.provider.shutdown()

    # The log phase alone, on the last exchange of a relay: its span built, and queued.
    captured: list[Any] = []
    build = trace_export.exchange_span

    def spy(*args: Any) -> ReadableSpan:
        captured.append(args)
        return build(*args)

    trace_export.exchange_span = spy
    target = relay("on", exports["on + otlp"])
    target.send(REQUEST)
    upstream, _ = target.accept_upstream()
    upstream.dataReceived(RESPONSE)
    trace_export.exchange_span = build
    exchange, hop, sink = captured[-1]
    roomy = BatchSpanProcessor(
        Drop(), max_queue_size=1 << 20, max_export_batch_size=1 << 20, schedule_delay_millis=1e9
    )
    span = build(exchange, hop, sink)
    number = 10000
    made = min(timeit.repeat(lambda: build(exchange, hop, sink), number=number))
    queued = min(timeit.repeat(lambda: roomy.on_end(span), number=number, repeat=3))
    print(
        f"log phase: the span built {made / number * 1e6:.2f} µs, queued (on_end)"
        f" {queued / number * 1e6:.2f} µs"
    )
    roomy.shutdown()

    spans = [build(exchange, hop, sink) for _ in range(512)]
    encode = min(timeit.repeat(lambda: encode_spans(spans).SerializeToString(), number=20))
    size = len(encode_spans(spans).SerializeToString())
    print(
        f"export thread: {encode / 20 / 512 * 1e6:.2f} µs a span to encode"
        f" ({size // 512} bytes a span in a batch of 512)"
    )


if __name__ == "__main__":
    main()
