"""The service tree's graceful stop: stop accepting, let connections in flight finish up to
`[proxyd] drain_timeout`, then close the rest."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from proxyd.app import CLOSE_GRACE, ProxydService
from proxyd.config.load import loads
from proxyd.otlp import OtlpExport
from tests.unit.test_trace_export import Recorder

CONFIG = """
[proxyd]
access_log = off
drain_timeout = 5s
[pool web]
servers = 127.0.0.1:9001
[http front]
listen = tcp:0:interface=127.0.0.1
routes =
    path / -> pool web
"""


class Stopping:
    """A ProxydService on a memory reactor with one client connection in the middle of a
    request to its [http] listener."""

    def __init__(self, config: str = CONFIG) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = ProxydService(self.reactor, loads(config, "proxyd.ini"))
        self.proxy.startService()
        [listener] = self.proxy.listeners
        self.factory = listener.factory
        self.client = self.factory.buildProtocol(None)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "10.0.0.7", 40000),
        )
        self.client.makeConnection(self.transport)
        self.client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.stopped: list[Any] = []

    def stop(self) -> None:
        self.proxy.stopService().addBoth(self.stopped.append)


def test_the_stop_waits_for_the_request_in_flight_and_not_longer() -> None:
    stopping = Stopping()
    with capturedLogs() as events:
        stopping.stop()
        assert stopping.stopped == []
        assert not stopping.transport.disconnecting
        stopping.reactor.advance(4)
        stopping.client.connectionLost(Failure(error.ConnectionDone()))
        stopping.reactor.advance(10)  # the drain timer was cancelled
    assert len(stopping.stopped) == 1 and not isinstance(stopping.stopped[0], Failure)
    assert [e["log_format"] for e in events if e["log_level"] >= LogLevel.info] == [
        "stopping: connections in flight have up to {timeout:g}s to finish",
        "stopping: every connection finished",
    ]


def test_after_drain_timeout_what_is_left_is_closed_and_the_stop_goes_on() -> None:
    stopping = Stopping()
    with capturedLogs() as events:
        stopping.stop()
        stopping.reactor.advance(4.9)
        assert stopping.stopped == [] and not stopping.transport.disconnecting
        stopping.reactor.advance(0.1)
        assert stopping.transport.disconnecting
        assert stopping.stopped == [], "the closed connections go (and are logged) first"
        stopping.client.connectionLost(Failure(error.ConnectionLost()))
    assert len(stopping.stopped) == 1
    [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
    assert warning["timeout"] == 5.0


def test_connections_that_do_not_go_when_closed_hold_the_stop_only_close_grace() -> None:
    stopping = Stopping()
    stopping.stop()
    stopping.reactor.advance(5)
    stopping.reactor.advance(CLOSE_GRACE - 0.1)
    assert stopping.stopped == []
    stopping.reactor.advance(0.1)
    assert len(stopping.stopped) == 1


def test_with_nothing_in_flight_the_stop_is_immediate() -> None:
    stopping = Stopping()
    stopping.client.connectionLost(Failure(error.ConnectionDone()))
    with capturedLogs() as events:
        stopping.stop()
    assert len(stopping.stopped) == 1
    assert events == []


def test_the_span_export_is_flushed_once_the_connections_have_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Export(OtlpExport):
        def __init__(self, reactor: Any) -> None:
            self.recorder = Recorder()
            super().__init__(reactor, make_processor=lambda endpoint: self.recorder)
            self.flushed: Deferred[None] | None = None

        def stop(self, timeout: float = 5.0) -> Deferred[None]:
            self.flushed = Deferred()
            return self.flushed

    monkeypatch.setattr("proxyd.app.OtlpExport", Export)
    stopping = Stopping(
        CONFIG + "trace_context = on\notlp_endpoint = http://127.0.0.1:4318/v1/traces\n"
    )
    export = stopping.proxy.otlp
    assert isinstance(export, Export) and export.endpoints == ["http://127.0.0.1:4318/v1/traces"]
    stopping.stop()
    assert export.flushed is None  # the request in flight may still make a span
    stopping.client.connectionLost(Failure(error.ConnectionDone()))
    [span] = export.recorder.spans  # the client left: 499
    assert span.attributes["http.response.status_code"] == 499
    assert export.flushed is not None and stopping.stopped == []
    export.flushed.callback(None)
    assert len(stopping.stopped) == 1
