"""proxyd.reactor: TCP reads and writes without callWithLogger, everything else as Twisted
does it. Each test runs its own (uninstalled) reactor over loopback sockets, a few
iterations at a time."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import epollreactor, error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import capturedLogs
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.reactor import EPollReactor
from proxyd.relay.io import SendBatch


def _take_down(built: epollreactor.EPollReactor) -> None:
    """As Twisted's own reactor tests take theirs down (ReactorBuilder._unbuildReactor)."""
    for reader in list(built._internalReaders):
        built.removeReader(reader)
        reader.connectionLost(None)
    built.disconnectAll()
    for call in built.getDelayedCalls():
        call.cancel()
    built._poller.close()


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    built = EPollReactor()
    yield built
    _take_down(built)


@pytest.fixture(params=[EPollReactor, epollreactor.EPollReactor], ids=["proxyd", "twisted"])
def any_reactor(request: pytest.FixtureRequest) -> Iterator[epollreactor.EPollReactor]:
    """proxyd's reactor, and Twisted's: what is tested with both behaves the same."""
    built = request.param()
    yield built
    _take_down(built)


def spin(
    reactor: epollreactor.EPollReactor, done: Callable[[], bool], seconds: float = 5.0
) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        reactor.iterate(0.01)


def system() -> str:
    return str(context.get(log.ILogContext)["system"])


class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.systems: list[str] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.systems.append(system())
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason


class Raising(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        raise ZeroDivisionError("bug in dataReceived")


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Recorder):
    read_closed = False

    def readConnectionLost(self) -> None:
        self.read_closed = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class ServerFactory(protocol.Factory):
    def __init__(self, make: Callable[[], Recorder]) -> None:
        self.make = make
        self.built: list[Recorder] = []
        self.systems: list[str] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        self.systems.append(system())
        built = self.make()
        self.built.append(built)
        return built


def connect(
    reactor: epollreactor.EPollReactor, make: Callable[[], Recorder]
) -> tuple[ServerFactory, Recorder]:
    """A listening port serving `make()` protocols, and a client connected to it."""
    factory = ServerFactory(make)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = Recorder()
    protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
    spin(reactor, lambda: bool(factory.built) and client.transport is not None)
    return factory, client


def test_reads_and_writes_on_tcp_connections_run_without_a_logging_context(
    reactor: EPollReactor,
) -> None:
    factory, client = connect(reactor, Recorder)
    [server] = factory.built
    client.transport.write(b"ping")
    spin(reactor, lambda: server.data == b"ping")
    server.transport.write(b"pong")
    spin(reactor, lambda: client.data == b"pong")
    assert server.systems == client.systems == ["-"]


def test_a_listening_port_accepts_without_its_logging_context(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    factory, _client = connect(any_reactor, Recorder)
    [accepted_in] = factory.systems
    if isinstance(any_reactor, EPollReactor):
        assert accepted_in == "-"
    else:
        assert accepted_in.endswith("ServerFactory")


def test_a_reset_reaches_connection_lost_as_a_lost_connection(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    factory, client = connect(any_reactor, Recorder)
    [server] = factory.built
    client.transport.abortConnection()  # an RST: the server's event is IN|HUP|ERR
    spin(any_reactor, lambda: server.lost is not None)
    assert server.lost is not None and server.lost.check(error.ConnectionLost)
    assert server.systems == []


def test_a_read_and_a_write_in_one_event_are_both_done(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    factory, client = connect(any_reactor, Recorder)
    [server] = factory.built
    server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = b"x" * (4 << 20)
    server.transport.write(big)  # more than the buffers: the rest waits for write events
    client.transport.write(b"ping")
    spin(any_reactor, lambda: server.data == b"ping" and client.data == big)


def test_a_clean_close_reaches_connection_lost_as_connection_done(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    factory, client = connect(any_reactor, Recorder)
    [server] = factory.built
    client.transport.loseConnection()
    spin(any_reactor, lambda: server.lost is not None and client.lost is not None)
    assert server.lost is not None and server.lost.check(error.ConnectionDone)


def test_a_half_close_reaches_read_connection_lost(any_reactor: epollreactor.EPollReactor) -> None:
    factory, client = connect(any_reactor, HalfCloseable)
    [server] = factory.built
    client.transport.loseWriteConnection()
    spin(any_reactor, lambda: client.lost is not None)
    assert isinstance(server, HalfCloseable) and server.read_closed


def test_an_exception_is_logged_in_the_connections_context_and_disconnects_it(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    with capturedLogs() as events:
        factory, client = connect(any_reactor, Raising)
        [server] = factory.built
        prefix = server.transport.logPrefix()
        client.transport.write(b"boom")
        spin(any_reactor, lambda: server.lost is not None and client.lost is not None)
    assert server.lost is not None and server.lost.check(ZeroDivisionError)
    [logged] = [e for e in events if e.get("isError")]
    assert logged["failure"].check(ZeroDivisionError)
    assert logged["log_system"] == prefix
    assert prefix.startswith("Raising")


def test_a_write_larger_than_the_socket_buffers_is_finished_on_write_events(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    factory, client = connect(any_reactor, Recorder)
    [server] = factory.built
    data = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than one send() takes
    server.transport.write(data)
    server.transport.loseConnection()
    spin(any_reactor, lambda: client.lost is not None)
    assert client.data == data


class FailingOnLost(Recorder):
    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        raise ZeroDivisionError("bug in connectionLost")


def test_an_exception_from_connection_lost_is_logged_in_the_connections_context(
    any_reactor: epollreactor.EPollReactor,
) -> None:
    with capturedLogs() as events:
        factory, client = connect(any_reactor, FailingOnLost)
        [server] = factory.built
        prefix = server.transport.logPrefix()
        client.transport.loseConnection()
        spin(any_reactor, lambda: server.lost is not None)
    [logged] = [e for e in events if e.get("isError")]
    assert logged["failure"].check(ZeroDivisionError)
    assert logged["log_system"] == prefix


def test_install_makes_it_the_global_reactor_unless_one_is_installed_already() -> None:
    code = (
        "from proxyd.reactor import EPollReactor, install\n"
        "assert install()\n"
        "from twisted.internet import reactor\n"
        "assert type(reactor) is EPollReactor\n"
        "assert not install()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    chosen = (
        "from twisted.internet import pollreactor\n"
        "pollreactor.install()\n"
        "from proxyd.reactor import install\n"
        "assert not install()\n"
        "from twisted.internet import reactor\n"
        "assert type(reactor) is pollreactor.PollReactor\n"
    )
    subprocess.run([sys.executable, "-c", chosen], check=True, timeout=60)


# at_turn_end: calls run once the turn's events (or delayed calls) are handled.


def test_a_call_at_the_turn_end_runs_after_the_events_of_the_turn(reactor: EPollReactor) -> None:
    order: list[str] = []
    reactor.callLater(
        0, lambda: (order.append("delayed"), reactor.at_turn_end(lambda: order.append("end")))
    )
    reactor.callLater(0, lambda: order.append("delayed too"))
    reactor.iterate(0)
    assert order == ["delayed", "delayed too", "end"]
    assert reactor.getDelayedCalls() == []


def test_calls_added_at_the_turn_end_run_in_the_same_turn(reactor: EPollReactor) -> None:
    order: list[int] = []

    def first() -> None:
        order.append(1)
        reactor.at_turn_end(lambda: order.append(2))

    reactor.at_turn_end(first)
    assert reactor.timeout() == 0.0, "no wait while a call is due"
    reactor.doPoll(0)
    assert order == [1, 2]
    assert reactor.timeout() != 0.0


def test_a_failing_call_at_the_turn_end_is_logged_and_the_others_run(
    reactor: EPollReactor,
) -> None:
    ran: list[str] = []

    def fails() -> None:
        raise ZeroDivisionError

    reactor.at_turn_end(fails)
    reactor.at_turn_end(lambda: ran.append("next"))
    with capturedLogs() as events:
        reactor.doPoll(0)
    assert ran == ["next"]
    [failed] = [e for e in events if e.get("isError")]
    assert failed["failure"].check(ZeroDivisionError)


def test_writes_gathered_in_a_turn_leave_at_its_end(reactor: EPollReactor) -> None:
    """SendBatch on proxyd's reactor: no delayed call; the bytes leave at the turn's end."""
    received: list[bytes] = []
    connected: list[protocol.Protocol] = []

    class Sink(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    class Client(protocol.Protocol):
        def connectionMade(self) -> None:
            connected.append(self)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
    reactor.connectTCP("127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(Client))
    spin(reactor, lambda: bool(connected))
    batch = SendBatch(reactor)
    batch.send(connected[0].transport, [b"head ", b"body"])
    assert reactor.getDelayedCalls() == [] and reactor._turn_end
    spin(reactor, lambda: b"".join(received) == b"head body")
    connected[0].transport.loseConnection()
    port.stopListening()


def test_a_read_event_while_connecting_is_the_connections_own_do_read(
    reactor: EPollReactor,
) -> None:
    """A client still connecting has doConnect as its doRead (an instance attribute): a
    server that writes at once makes its first event a read and a write together."""
    from select import EPOLLIN, EPOLLOUT

    from twisted.internet import tcp

    from proxyd.socket_events import dispatch

    calls: list[str] = []
    client = tcp.Client.__new__(tcp.Client)
    client.connected = 0
    client._aborting = False
    client.fileno = lambda: 7  # type: ignore[method-assign]
    client.doRead = lambda: calls.append("connect") or None  # type: ignore[method-assign]
    client.doWrite = lambda: calls.append("write") or None  # type: ignore[method-assign]
    reactor._selectables[7] = client
    try:
        dispatch(reactor, [(7, EPOLLIN | EPOLLOUT)])
    finally:
        del reactor._selectables[7]
    assert calls == ["connect", "write"]
