"""The process's export of spans to OpenTelemetry collectors (OTLP over HTTP, protobuf):
one TracerProvider, one BatchSpanProcessor and OTLPSpanExporter per collector, made when the
first listener exporting to it is built and kept across reloads, flushed and shut down when
the service stops. A process resource (proxyd.resources), owned by proxyd.app.ProxydService
as the password-check threads are; each listener's trace_context filter hands its spans to
the SpanSink it got here (proxyd.filters.trace_export).

Not the SDK's global tracer provider: proxyd makes its spans itself (their ids were chosen
and sent upstream before the span could start; see proxyd.filters.trace_export) and one
provider per process, passed down, is what a reload and the tests can reason about.

The reactor thread never waits on a collector: BatchSpanProcessor.on_end appends the span to
a bounded deque (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 by default; when it is full the oldest span
is dropped) and its own thread encodes and POSTs batches (of up to
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512) every `OTEL_BSP_SCHEDULE_DELAY` ms (5000), or as soon as
a batch is full. Those variables and the exporter's (`OTEL_EXPORTER_OTLP_TRACES_HEADERS` for
credentials, `..._COMPRESSION`, `..._TIMEOUT`, `..._CERTIFICATE`) are read from proxyd's
environment, as the SDK documents them; the endpoint is the config's.

The SDK logs through the standard library's logging: its records (a collector that refuses or
does not answer, the queue full) go to proxyd's event log, at most one a minute for each kind
of message, with a count of those held back (_SdkLog).

The SDK (some 70 ms and a few MB to import) is imported only when a listener exports.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python import threadable
from twisted.python.failure import Failure

from proxyd import __version__
from proxyd.config.otlp_model import OtlpConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

log = Logger(namespace="proxyd.otlp")

FLUSH_TIMEOUT: Final = 5.0
"""Seconds a stopping service waits for the spans still queued to reach their collectors.
Past it the stop goes on; the export threads are daemons, and what they hold is lost."""
LOG_INTERVAL: Final = 60.0
"""Seconds between two event-log lines of one kind of SDK message."""
SDK_LOGGER: Final = "opentelemetry"

MakeProcessor = Callable[[str], "SpanProcessor"]
"""Makes the span processor that exports to a collector's URL."""


def batch_processor(endpoint: str) -> SpanProcessor:
    """The SDK's BatchSpanProcessor over its OTLP/HTTP (protobuf) exporter to `endpoint`;
    their other settings from the OTEL_* environment variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))


class SpanSink:
    """Where one listener's spans go: its collector's processor, its service's resource."""

    __slots__ = ("endpoint", "processor", "resource", "scope")

    def __init__(
        self,
        endpoint: str,
        processor: SpanProcessor,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self.endpoint = endpoint
        self.processor = processor
        self.resource = resource
        """`service.name` (and `service.version`) over the SDK's resource attributes."""
        self.scope = scope
        """The instrumentation scope: `proxyd`, its version."""

    def emit(self, span: ReadableSpan) -> None:
        """Queue an ended span for export (a deque append: never waits)."""
        self.processor.on_end(span)


class OtlpExport:
    """The process's span export: made empty (nothing imported, no thread) by the service;
    `sink()` builds what a listener's config asks for, `stop()` flushes it all."""

    def __init__(self, reactor: Any, make_processor: MakeProcessor = batch_processor) -> None:
        self._reactor = reactor
        self._make_processor = make_processor
        self.provider: TracerProvider | None = None
        """Made with the first sink."""
        self._processors: dict[str, SpanProcessor] = {}
        self._sinks: dict[tuple[str, str], SpanSink] = {}
        self._scope: InstrumentationScope | None = None
        self._sdk_log: _SdkLog | None = None
        self.stopped = False

    @property
    def endpoints(self) -> list[str]:
        """The collectors exported to, in the order they were first used."""
        return list(self._processors)

    def sink(self, config: OtlpConfig) -> SpanSink:
        """The sink of a listener with these `otlp_*` settings: one processor (and export
        thread) per collector URL, shared by every listener and generation that names it."""
        if self.stopped:
            raise RuntimeError("the span export is stopped")
        key = (config.endpoint, config.service_name)
        found = self._sinks.get(key)
        if found is not None:
            return found
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        provider = self.provider
        if provider is None:
            # Resource.create() adds the SDK's attributes and OTEL_RESOURCE_ATTRIBUTES'.
            provider = self.provider = TracerProvider(
                resource=Resource.create({}), shutdown_on_exit=False
            )
            self._scope = InstrumentationScope("proxyd", __version__)
            self._sdk_log = _SdkLog.install(self._reactor)
        processor = self._processors.get(config.endpoint)
        if processor is None:
            processor = self._processors[config.endpoint] = self._make_processor(config.endpoint)
            provider.add_span_processor(processor)
            log.info("exporting spans to {endpoint}", endpoint=config.endpoint)
        service = Resource({"service.name": config.service_name, "service.version": __version__})
        assert self._scope is not None
        found = self._sinks[key] = SpanSink(
            config.endpoint, processor, provider.resource.merge(service), self._scope
        )
        return found

    def stop(self, timeout: float = FLUSH_TIMEOUT) -> Deferred[None]:
        """Export what is queued and stop the export threads, waiting up to `timeout`
        seconds. The SDK's shutdown joins its threads, which may be waiting on a collector:
        it runs in a thread of its own, never the reactor's (nor the reactor's pool, which
        the reactor joins as it stops)."""
        provider = self.provider
        if self.stopped or provider is None:
            self.stopped = True
            return succeed(None)
        self.stopped = True
        reactor = self._reactor
        done: Deferred[None] = Deferred()
        started = reactor.seconds()

        def shut_down() -> None:
            try:
                provider.shutdown()
            except Exception:
                failure = Failure()
                reactor.callFromThread(log.failure, "shutting down the span export failed", failure)
            reactor.callFromThread(done.callback, None)

        def late(result: object, timeout: float) -> None:
            log.warn(
                "span export: spans not sent to {endpoints} within {timeout:g}s of the stop"
                " are dropped",
                endpoints=", ".join(self._processors),
                timeout=timeout,
            )

        def over(result: None) -> None:
            # Rounded here: the master relays a worker's events without their format's
            # precision.
            elapsed = round(reactor.seconds() - started, 3)
            log.info("span export stopped ({elapsed}s)", elapsed=elapsed)

        threading.Thread(target=shut_down, name="proxyd-otlp-stop", daemon=True).start()
        done.addCallback(over)
        # A thread's late callback on a Deferred the timeout cancelled is ignored.
        return done.addTimeout(timeout, reactor, onTimeoutCancel=late)


class _SdkLog(logging.Handler):
    """The SDK's records (the standard library's logging) into proxyd's event log: warnings
    and errors only, at most one every LOG_INTERVAL seconds for each message (its format
    string, e.g. the exporter's "Failed to export %s batch code: %s, reason: %s"), with the
    count of those held back since. The export thread logs: its lines reach twisted.logger
    on the reactor's thread (callFromThread)."""

    def __init__(self, reactor: Any, interval: float = LOG_INTERVAL) -> None:
        super().__init__(logging.WARNING)
        self._reactor = reactor
        self._interval = interval
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}
        self._seen_lock = threading.Lock()
        self._logger: logging.Logger | None = None

    @classmethod
    def install(cls, reactor: Any) -> _SdkLog:
        """One on the `opentelemetry` logger, which then no longer passes its records on to
        the root logger (stderr, unformatted)."""
        handler = cls(reactor)
        logger = handler._logger = logging.getLogger(SDK_LOGGER)
        for old in [h for h in logger.handlers if isinstance(h, _SdkLog)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        return handler

    def remove(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pass_on(record)
        except Exception:
            self.handleError(record)  # never into the SDK's caller (a request's log phase)

    def _pass_on(self, record: logging.LogRecord) -> None:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._seen_lock:
            last, held = self._seen.get(key, (-math.inf, 0))
            if now - last < self._interval:
                self._seen[key] = (last, held + 1)
                return
            self._seen[key] = (now, 0)
        text = record.getMessage()
        if held:
            text += f" ({held} more like it in the last {self._interval:g}s)"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        level = LogLevel.error if record.levelno >= logging.ERROR else LogLevel.warn
        if threadable.isInIOThread() or not getattr(self._reactor, "running", False):
            _emit(level, record.name, text)
        else:
            self._reactor.callFromThread(_emit, level, record.name, text)


def _emit(level: LogLevel, source: str, text: str) -> None:
    log.emit(level, "{source}: {text}", source=source, text=text)
