"""proxyd.accept_log: accept failures counted and logged once per interval, driven through
Twisted's own tcp.Port.doRead so that a change of its private logger or messages fails here."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, Logger, capturedLogs, formatEvent

from proxyd.accept_log import INTERVAL, AcceptLog, watch
from proxyd.metrics import ErrorKind, RelayStats


class _File:
    """What Twisted's descriptor reservation opens (os.devnull, in Twisted)."""

    def close(self) -> None:
        pass


class _Client:
    """A connection accept() returns, which the EMFILE recovery closes at once."""

    closed = False

    def close(self) -> None:
        self.closed = True


class _ListeningSocket:
    """A listening socket of a process at its open-files limit: accept() fails with EMFILE
    while Twisted holds its reserved descriptor, and takes the next connection queued when
    it has let it go. `error` makes the next accept() fail with that errno instead."""

    def __init__(self, reservation: Any) -> None:
        self.reservation = reservation
        self.queued: list[_Client] = []
        self.error: int | None = None

    def accept(self) -> tuple[_Client, tuple[str, int]]:
        if self.error is not None:
            code, self.error = self.error, None
            raise OSError(code, "failed")
        if not self.queued:
            raise OSError(errno.EAGAIN, "again")
        if self.reservation.available():
            raise OSError(errno.EMFILE, "Too many open files")
        return self.queued.pop(0), ("127.0.0.1", 40000)

    def connect(self, count: int) -> list[_Client]:
        clients = [_Client() for _ in range(count)]
        self.queued += clients
        return clients


class _Factory(Factory):
    protocol = Protocol

    def __init__(self) -> None:
        self.stats = RelayStats("http", "web")


class Port:
    """A real tcp.Port whose socket accept()s as told, watched by an AcceptLog."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Twisted's own reservation class, over a file that needs no descriptor.
        self.reservation = tcp._FileDescriptorReservation(_File)
        self.reservation.reserve()
        monkeypatch.setattr(tcp, "_reservedFD", self.reservation)
        self.reactor = MemoryReactorClock()
        self.factory = _Factory()
        self.port = tcp.Port(0, self.factory, reactor=self.reactor)
        self.socket = _ListeningSocket(self.reservation)
        self.port.socket = self.socket  # type: ignore[assignment]
        self.port.numberAccepts = 100
        self.forwarded: list[LogEvent] = []
        self.port._logger = Logger(namespace="twisted.internet.tcp", observer=self.forwarded.append)
        found = watch(self.port, self.reactor, "http web", self.factory)
        assert found is not None
        self.accept_log: AcceptLog = found

    def accept(self) -> None:
        """The reactor saw the listening socket readable: Twisted's doRead, as often as the
        reactor would call it (the socket stays readable while connections are queued)."""
        for _ in range(1000):
            self.port.doRead()
            if not self.socket.queued:
                return
        raise AssertionError("doRead made no progress")


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[Port]:
    yield Port(monkeypatch)


def warnings(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "proxyd.listeners"]


def test_connections_closed_at_emfile_are_counted_and_reported_in_one_line(port: Port) -> None:
    clients = port.socket.connect(37)
    with capturedLogs() as events:
        port.accept()
        assert all(client.closed for client in clients)
        assert port.forwarded == [], "Twisted's EMFILE lines went on: it changed its messages?"
        assert port.accept_log.total == 37, "not counted: Twisted changed tcp.Port._logger?"
        assert warnings(events) == []  # reported when the reactor turn ends
        port.reactor.advance(0)
    [line] = warnings(events)
    assert line.startswith("[http web] 37 connection(s) could not be accepted: EMFILE")
    assert "x37" in line and "LimitNOFILE" in line
    assert [e["failed"] for e in events if "failed" in e] == [{"EMFILE": 37}]


def test_an_accept_failing_without_a_reserved_descriptor_is_counted_by_errno(port: Port) -> None:
    port.socket.error = errno.ENOBUFS
    with capturedLogs() as events:
        port.port.doRead()
        port.reactor.advance(0)
    assert port.forwarded == []
    [line] = warnings(events)
    assert "1 connection(s) could not be accepted: ENOBUFS" in line


def test_failures_go_on_with_one_line_per_interval_then_the_next_burst_is_reported_at_once(
    port: Port,
) -> None:
    with capturedLogs() as events:
        # 35 s of failures, ten accepts refused every 0.1 s.
        for _ in range(350):
            port.socket.connect(10)
            port.accept()
            port.reactor.advance(0.1)
        for _ in range(2):
            port.reactor.advance(INTERVAL)  # the last failures' line; then quiet
        lines = warnings(events)
        assert len(lines) == 5  # at 0 s, then 10, 20, 30 and 40 s
        assert sum(sum(e["failed"].values()) for e in events if "failed" in e) == 3500
        assert not port.reactor.getDelayedCalls()

        port.socket.connect(2)
        port.accept()
        port.reactor.advance(0)
    assert len(warnings(events)) == 6
    assert "[http web] 2 connection(s)" in warnings(events)[-1]


def test_failures_count_in_the_listeners_metrics(port: Port) -> None:
    port.socket.connect(3)
    port.accept()
    port.socket.error = errno.ENFILE
    port.port.doRead()
    snapshot = port.factory.stats.snapshot()
    assert snapshot == {"http": {"web": {"": {"": {"": {"errors": {"accept_failed": 4}}}}}}}
    assert ErrorKind.ACCEPT_FAILED == "accept_failed"


def test_other_events_of_the_port_go_on_unchanged(port: Port) -> None:
    port.port._logger.info("something else {x}", x=1)
    [event] = port.forwarded
    assert event["log_format"] == "something else {x}" and event["x"] == 1


def test_a_stopped_watch_logs_what_it_counted_and_schedules_nothing(port: Port) -> None:
    port.socket.connect(1)
    port.accept()
    port.reactor.advance(0)
    port.socket.connect(4)
    port.accept()
    with capturedLogs() as events:
        port.accept_log.stop()
    [line] = warnings(events)
    assert "4 connection(s)" in line
    assert not port.reactor.getDelayedCalls()


def test_watching_a_port_again_re_aims_its_accept_log(port: Port) -> None:
    other = _Factory()
    again = watch(port.port, port.reactor, "http renamed", other)
    assert again is port.accept_log
    port.socket.connect(1)
    with capturedLogs() as events:
        port.accept()
        port.reactor.advance(0)
    assert warnings(events)[0].startswith("[http renamed] 1 connection(s)")
    assert other.stats.snapshot()["http"]["web"][""][""][""]["errors"] == {"accept_failed": 1}


def test_ports_of_other_kinds_are_left_alone() -> None:
    reactor = MemoryReactorClock()
    with capturedLogs() as events:
        assert watch(object(), reactor, "http web", None) is None
    assert events == []


def test_a_tcp_port_without_its_logger_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tcp.Port, "_logger")
    reactor = MemoryReactorClock()
    port = tcp.Port(0, Factory(), reactor=reactor)
    with capturedLogs() as events:
        assert watch(port, reactor, "http web", None) is None
    assert "Twisted changed?" in warnings(events)[0]


def test_a_real_listening_socket_at_emfile_is_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real accept(): the process's descriptors are exhausted by holding duplicates."""
    resource = pytest.importorskip("resource")
    reactor = MemoryReactorClock()
    factory = _Factory()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    accept_log = watch(port, reactor, "http web", factory)
    assert accept_log is not None
    number = port.getHost().port
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients: list[socket.socket] = []
    held: list[int] = []
    try:
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", number), timeout=5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        while len(held) < limit:  # bounded by the limit
            try:
                held.append(socket.socket().detach())
            except OSError as e:
                assert e.errno == errno.EMFILE
                break
        with capturedLogs() as events:
            port.doRead()
            reactor.advance(0)
    finally:
        for fd in held:
            socket.socket(fileno=fd).close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
        port.socket.close()
    # Twisted's reservation took the first connection in the descriptor it freed, closed it,
    # and the others with it: three refused, one line.
    assert accept_log.total == 3
    [line] = warnings(events)
    assert "3 connection(s) could not be accepted: EMFILE" in line
    assert not [e for e in events if "EMFILE" in str(e.get("log_format", ""))]
