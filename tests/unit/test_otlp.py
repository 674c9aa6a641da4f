"""The process's span export (proxyd.otlp): its stop flushes off the reactor's thread and is
bounded, and the SDK's log records reach proxyd's event log, bounded too."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from proxyd.app import ProxydService
from proxyd.config.load import loads
from proxyd.config.otlp_model import OtlpConfig
from proxyd.otlp import FLUSH_TIMEOUT, LOG_INTERVAL, OtlpExport
from tests.unit.test_trace_export import ENDPOINT, Recorder


class ThreadedClock(Clock):
    """A Clock whose callFromThread queues the call for the test to run (on its thread)."""

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.put((f, args))

    def run_from_thread(self, timeout: float = 10.0) -> None:
        f, args = self.from_threads.get(timeout=timeout)
        f(*args)


@pytest.fixture(autouse=True)
def sdk_logger() -> Iterator[logging.Logger]:
    """The `opentelemetry` logger, as it was again after the test (OtlpExport sets it)."""
    logger = logging.getLogger("opentelemetry")
    before = list(logger.handlers), logger.propagate, logger.level
    yield logger
    logger.handlers[:] = before[0]
    logger.propagate, logger.level = before[1], before[2]


class Blocking(Recorder):
    """Its shutdown waits until the test lets it go (a collector that does not answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def shutdown(self) -> None:
        self.release.wait(10)
        super().shutdown()


def test_stop_shuts_the_processors_down_in_a_thread_and_fires_when_done() -> None:
    clock = ThreadedClock()
    recorder = Recorder()
    export = OtlpExport(clock, make_processor=lambda endpoint: recorder)
    export.sink(OtlpConfig(ENDPOINT))
    stopped = export.stop()
    assert not stopped.called
    clock.run_from_thread()  # the thread's "done"
    assert recorder.shut_down
    assert stopped.called
    with pytest.raises(RuntimeError):
        export.sink(OtlpConfig(ENDPOINT))


def test_stop_gives_up_waiting_after_the_flush_timeout() -> None:
    clock = ThreadedClock()
    blocking = Blocking()
    export = OtlpExport(clock, make_processor=lambda endpoint: blocking)
    export.sink(OtlpConfig(ENDPOINT))
    with capturedLogs() as events:
        stopped = export.stop()
        clock.advance(FLUSH_TIMEOUT)
    assert stopped.called and stopped.result is None
    [event] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert formatEvent(event) == (
        f"span export: spans not sent to {ENDPOINT} within 5s of the stop are dropped"
    )
    blocking.release.set()
    clock.run_from_thread()  # the late "done" is ignored
    assert blocking.shut_down


def test_stop_without_any_sink_is_at_once_and_starts_nothing() -> None:
    export = OtlpExport(ThreadedClock(), make_processor=lambda endpoint: Recorder())
    assert export.stop().called
    assert export.provider is None


def test_the_sdks_warnings_reach_the_event_log_once_a_minute_a_kind(
    sdk_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ThreadedClock()
    clock.running = False  # logged at once, not through callFromThread
    export = OtlpExport(clock, make_processor=lambda endpoint: Recorder())
    export.sink(OtlpConfig(ENDPOINT))
    assert not sdk_logger.propagate  # nothing to stderr besides
    moments = iter([0.0, 1.0, 2.0, 3.0, LOG_INTERVAL + 1.0])
    monkeypatch.setattr("proxyd.otlp.time.monotonic", lambda: next(moments))
    source = "opentelemetry.exporter.otlp.common.http"
    sdk = logging.getLogger(source)
    with capturedLogs() as events:
        for _ in range(3):
            sdk.error("Failed to export %s batch code: %s, reason: %s", "spans", None, "x")
        sdk.warning("Queue full, dropping %s.", "Span")
        sdk.info("not passed on")
        sdk.error("Failed to export %s batch code: %s, reason: %s", "spans", 503, "y")
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.error, f"{source}: Failed to export spans batch code: None, reason: x"),
        (LogLevel.warn, f"{source}: Queue full, dropping Span."),
        (
            LogLevel.error,
            f"{source}: Failed to export spans batch code: 503, reason: y"
            " (2 more like it in the last 60s)",
        ),
    ]


def test_a_record_from_another_thread_is_logged_on_the_reactors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ThreadedClock()
    export = OtlpExport(clock, make_processor=lambda endpoint: Recorder())
    export.sink(OtlpConfig(ENDPOINT))
    thread = threading.Thread(
        target=logging.getLogger("opentelemetry.sdk").warning, args=("from a %s", "thread")
    )
    with capturedLogs() as events:
        thread.start()
        thread.join()
        assert events == []
        clock.run_from_thread()
    assert [formatEvent(e) for e in events] == ["opentelemetry.sdk: from a thread"]


def test_a_reload_keeps_the_collectors_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Recorder] = []

    def record(endpoint: str) -> Recorder:
        made.append(Recorder())
        return made[-1]

    monkeypatch.setattr("proxyd.app.OtlpExport", lambda reactor: OtlpExport(reactor, record))
    config = (
        "[pool web]\nservers = 127.0.0.1:9001\n"
        "[http front]\nlisten = tcp:0:interface=127.0.0.1\nroutes =\n    path / -> pool web\n"
        f"trace_context = on\notlp_endpoint = {ENDPOINT}\n"
    )
    proxy = ProxydService(MemoryReactorClock(), loads(config, "proxyd.ini"))
    [before] = proxy.listeners
    outcome = proxy.apply(loads(config + "otlp_service_name = edge\n", "proxyd.ini"))
    assert outcome.reloaded, outcome.errors
    [after] = proxy.listeners
    assert after.factory is not before.factory
    assert len(made) == 1 and after.factory.spans.processor is made[0]
    assert after.factory.spans.resource.attributes["service.name"] == "edge"
