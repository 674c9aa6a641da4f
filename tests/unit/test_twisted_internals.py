"""The private Twisted names proxyd relies on, one test per internal: each checks that the
installed Twisted still has exactly what proxyd uses (the attribute, its type or signature,
the behaviour assumed) and fails naming the proxyd module to update. Where proxyd copies a
Twisted function (its reactor's doPoll, the adopted unix port's startListening), the test
holds a digest of Twisted's code, without comments and docstrings: when it changes, compare
the two, update proxyd's copy, then the digest. proxyd.twisted_internals lists them all."""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import select
import socket
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.copyright import version as VERSION
from twisted.internet import abstract, epollreactor, error, posixbase, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvidedBy, providedBy

from proxyd import accept_log, twisted_internals
from proxyd.relay import io
from proxyd.twisted_internals import InvalidProxyHeader, V1Parser, V2Parser


def changed(what: str, module: str) -> str:
    return f"Twisted {VERSION} changed {what}: {module} must be updated"


def digest(function: Callable[..., Any]) -> str:
    """A digest of `function`'s code, blind to its comments, docstring and layout."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    first = definition.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        definition.body = definition.body[1:]
    return hashlib.sha256(ast.unparse(definition).encode()).hexdigest()[:16]


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


class _Port:
    _realPortNumber = 8080


@pytest.fixture
def connection() -> Iterator[tuple[tcp.Server, socket.socket]]:
    """A real tcp.Server over one end of a loopback connection (MemoryReactorClock); the
    other end, which reads nothing unless told."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    listener.close()
    protocol = Protocol()
    reactor = MemoryReactorClock()
    server = tcp.Server(accepted, protocol, address, _Port(), 1, reactor)  # type: ignore[arg-type]
    protocol.makeConnection(server)
    yield server, peer
    peer.close()
    accepted.close()


@pytest.fixture
def port() -> Iterator[tcp.Port]:
    """A real tcp.Port listening on loopback, on a MemoryReactorClock."""
    built = tcp.Port(
        0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=MemoryReactorClock()
    )
    built.startListening()
    yield built
    if built.connected:
        built.connectionLost(Failure(error.ConnectionDone()))


# proxyd.reactor: EPollReactor.doPoll without callWithLogger for plain reads and writes.


def test_epoll_reactor_do_poll_is_the_one_proxyd_reactor_copies() -> None:
    assert epollreactor.EPollReactor.doIteration is epollreactor.EPollReactor.doPoll, changed(
        "EPollReactor.doIteration", "proxyd.reactor"
    )
    assert digest(epollreactor.EPollReactor.doPoll) == "63d8cd39bc3446b4", changed(
        "EPollReactor.doPoll", "proxyd.reactor (its doPoll is a copy of Twisted's)"
    )


def test_poll_like_mixin_do_read_or_write_is_the_one_proxyd_reactor_reproduces() -> None:
    assert epollreactor.EPollReactor._doReadOrWrite is posixbase._PollLikeMixin._doReadOrWrite
    assert digest(posixbase._PollLikeMixin._doReadOrWrite) == "1c2b886057898f07", changed(
        "_PollLikeMixin._doReadOrWrite", "proxyd.socket_events (_read_or_write)"
    )
    assert parameters(posixbase._PollLikeMixin._doReadOrWrite) == [
        "self",
        "selectable",
        "fd",
        "event",
    ], changed("_PollLikeMixin._doReadOrWrite's arguments", "proxyd.socket_events")


def test_tcp_connection_do_read_is_the_one_socket_events_inlines() -> None:
    assert tcp.Server.doRead is tcp.Connection.doRead is tcp.Client.doRead
    assert digest(tcp.Connection.doRead) == "7400095c2d5e647d", changed(
        "tcp.Connection.doRead", "proxyd.socket_events (_read)"
    )
    assert digest(tcp.Connection._dataReceived) == "14f89f05f87abd28", changed(
        "tcp.Connection._dataReceived", "proxyd.socket_events (_read)"
    )


def test_file_descriptor_abort_makes_do_read_a_no_op(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = connection
    server.abortConnection()
    peer.sendall(b"after the abort")
    assert server._aborting and server.doRead() is None, changed(
        "FileDescriptor.abortConnection (its doRead)", "proxyd.socket_events (_aborting)"
    )


def test_epoll_reactor_poller_and_selectables() -> None:
    built = epollreactor.EPollReactor()
    try:
        poll = getattr(getattr(built, "_poller", None), "poll", None)
        assert callable(poll), changed("EPollReactor._poller", "proxyd.reactor")
        assert isinstance(getattr(built, "_selectables", None), dict), changed(
            "EPollReactor._selectables", "proxyd.reactor"
        )
        waker = built.waker
        assert built._selectables.get(waker.fileno()) is waker, changed(
            "EPollReactor._selectables (by file descriptor)", "proxyd.reactor"
        )
    finally:
        for reader in list(built._internalReaders):
            built.removeReader(reader)
            reader.connectionLost(None)
        built._poller.close()


def test_disconnect_selectable_and_no_filedesc() -> None:
    assert parameters(posixbase.PosixReactorBase._disconnectSelectable)[:4] == [
        "self",
        "selectable",
        "why",
        "isRead",
    ], changed("PosixReactorBase._disconnectSelectable", "proxyd.reactor and proxyd.relay.io")
    assert isinstance(posixbase._NO_FILEDESC, error.ConnectionFdescWentAway), changed(
        "posixbase._NO_FILEDESC", "proxyd.reactor"
    )


def test_tcp_connections_are_the_classes_proxyd_reactor_and_relay_io_know() -> None:
    for kind in (tcp.Server, tcp.Client):
        assert issubclass(kind, tcp.Connection) and kind.TLS is False, changed(
            f"tcp.{kind.__name__} (or its TLS flag)", "proxyd.reactor and proxyd.relay.io"
        )


# proxyd.accept_log: tcp.Port._logger and tcp._accept's messages.


def test_tcp_port_logger() -> None:
    assert isinstance(getattr(tcp.Port, "_logger", None), Logger), changed(
        "tcp.Port._logger", "proxyd.accept_log"
    )
    assert "self._logger" in inspect.getsource(tcp.Port.doRead), changed(
        "tcp.Port.doRead's use of _logger", "proxyd.accept_log"
    )
    assert issubclass(unix.Port, tcp.Port), changed("unix.Port's base", "proxyd.accept_log")


def test_tcp_accept_messages() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(tcp._accept)))
    texts = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    for message in (
        accept_log._EMFILE_REFUSED,
        accept_log._FAILED,
        *accept_log._EMFILE_QUIET,
    ):
        assert message in texts, changed(f"tcp._accept's message {message!r}", "proxyd.accept_log")


# proxyd.relay.io: FileDescriptor's write buffer (send_now, held, producer_paused).


def test_file_descriptor_write_buffer_fields(connection: tuple[tcp.Server, socket.socket]) -> None:
    server, _peer = connection
    what = changed("FileDescriptor's write buffer", "proxyd.relay.io (send_now, held)")
    assert (server.dataBuffer, server.offset, server._tempDataLen) == (b"", 0, 0), what
    assert server._writeDisconnecting is False and not server.disconnecting, what
    assert server.connected, what
    server.write(b"x" * 10)
    assert server._tempDataLen == 10 and io.held(server) == 10, what
    big = 8 << 20  # more than the kernel's buffers take
    server.write(b"y" * big)
    server.doWrite()
    left = io.held(server)
    assert left is not None and 0 < left < big + 10, what
    assert len(server.dataBuffer) - server.offset == left and server._tempDataLen == 0, what
    server.loseConnection()
    assert server.disconnecting, changed("FileDescriptor.loseConnection", "proxyd.relay.io")


def test_tcp_connection_write_some_data_sends_on_its_socket(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = connection
    assert digest(tcp.Connection.writeSomeData) == "ccd168f06f979ebd", changed(
        "tcp.Connection.writeSomeData", "proxyd.relay.io (send_now sends as it does)"
    )
    assert isinstance(server.socket, socket.socket), changed(
        "tcp.Connection.socket", "proxyd.relay.io (send_now)"
    )
    io.send_now(server, [b"hel", b"lo"])
    peer.settimeout(5)
    assert peer.recv(5) == b"hello"
    assert server.dataBuffer == b"" and server._tempDataLen == 0, changed(
        "FileDescriptor's write buffer", "proxyd.relay.io (send_now)"
    )


def test_file_descriptor_aborting(connection: tuple[tcp.Server, socket.socket]) -> None:
    server, _peer = connection
    what = changed("FileDescriptor._aborting", "proxyd.relay.io (SendBatch.close)")
    assert server._aborting is False, what
    server.abortConnection()
    assert server._aborting is True, what


def test_file_descriptor_write_disconnecting(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, peer = connection
    what = changed(
        "FileDescriptor's half-close (_writeDisconnecting, _writeDisconnected,"
        " tcp.Connection._closeWriteConnection)",
        "proxyd.relay.io (SendBatch.shut_write)",
    )
    assert server._writeDisconnecting is False and server._writeDisconnected is False, what
    server.loseWriteConnection()
    assert server._writeDisconnecting is True, what
    assert parameters(tcp.Server._closeWriteConnection) == ["self"], what
    server.doWrite()
    assert server._writeDisconnected is True, what
    peer.settimeout(5)
    assert peer.recv(1) == b"", what


def test_file_descriptor_producer_paused(connection: tuple[tcp.Server, socket.socket]) -> None:
    server, _peer = connection
    assert abstract.FileDescriptor.producerPaused is False, changed(
        "FileDescriptor.producerPaused", "proxyd.relay.io (producer_paused)"
    )
    producer = Protocol()
    producer.pauseProducing = lambda: None  # type: ignore[attr-defined]
    producer.resumeProducing = lambda: None  # type: ignore[attr-defined]
    producer.stopProducing = lambda: None  # type: ignore[attr-defined]
    server.registerProducer(producer, True)
    server.write(b"x" * (server.bufferSize + 1))
    assert server.producerPaused is True and io.producer_paused(server), changed(
        "FileDescriptor.producerPaused (set when the buffer is full)",
        "proxyd.relay.io (producer_paused)",
    )


# proxyd.twisted_internals: twisted.protocols.haproxy's parsers (proxyd.relay.proxy_protocol).


def test_haproxy_v1_parser() -> None:
    info = V1Parser.parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 1234 443")
    what = changed("twisted.protocols.haproxy._v1parser.V1Parser.parse", "proxyd.twisted_internals")
    assert info.source == IPv4Address("TCP", "192.0.2.1", 1234), what
    assert info.destination == IPv4Address("TCP", "198.51.100.2", 443), what
    info = V1Parser.parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2")
    assert isinstance(info.source, IPv6Address), what
    for refused in (b"PROXY UNKNOWN", b"PROXY TCP4 nonsense"):
        with pytest.raises(InvalidProxyHeader):
            V1Parser.parse(refused)


def test_haproxy_v2_parser() -> None:
    what = changed("twisted.protocols.haproxy._v2parser.V2Parser.parse", "proxyd.twisted_internals")
    body = socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.2") + b"\x04\xd2\x01\xbb"
    header = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + body
    info = V2Parser.parse(header)
    assert info.source == IPv4Address("TCP", "192.0.2.1", 1234), what
    assert info.destination == IPv4Address("TCP", "198.51.100.2", 443), what
    local = V2Parser.parse(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
    assert local.source is None and local.destination is None, what
    with pytest.raises(InvalidProxyHeader):
        V2Parser.parse(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x02ab")
    assert issubclass(InvalidProxyHeader, Exception), what


# proxyd.twisted_internals: hand_over (proxyd.relay.proxy_header), tcp.Connection's protocol
# read anew at each event, getPeer and getHost shadowed on the instance.


def test_hand_over_a_tcp_connection(connection: tuple[tcp.Server, socket.socket]) -> None:
    server, peer = connection
    what = changed("tcp.Connection's protocol attribute", "proxyd.twisted_internals (hand_over)")
    events: list[object] = []

    class Taker(Protocol):
        def dataReceived(self, data: bytes) -> None:
            events.append(data)

        def connectionLost(self, reason: Failure | None = None) -> None:
            events.append("lost")

    source = IPv4Address("TCP", "192.0.2.10", 5555)
    destination = IPv4Address("TCP", "198.51.100.1", 443)
    assert twisted_internals.hand_over(server, Taker(), source, destination), what
    assert type(server) is tcp.Server, what
    assert server.getPeer() == source and server.getHost() == destination, what
    peer.sendall(b"after the header")
    select.select([server.socket], [], [], 5)
    assert server.doRead() is None, what
    assert events == [b"after the header"], what
    server.connectionLost(Failure(error.ConnectionDone()))
    assert events[-1] == "lost", what
    assert not twisted_internals.hand_over(object(), Taker()), what


# proxyd.twisted_internals: TlsProtocol, TLSMemoryBIOProtocol.makeConnection with one
# interface declaration.


def test_tls_protocol_make_connection_is_the_one_tls_protocol_copies() -> None:
    assert digest(TLSMemoryBIOProtocol.makeConnection) == "7c2ef89c425dbca2", changed(
        "TLSMemoryBIOProtocol.makeConnection", "proxyd.twisted_internals (TlsProtocol)"
    )


def test_tls_protocol_provides_what_twisteds_does(
    connection: tuple[tcp.Server, socket.socket],
) -> None:
    server, _peer = connection
    made = []
    for kind in (TLSMemoryBIOProtocol, twisted_internals.TlsProtocol):
        factory = TLSMemoryBIOFactory(
            CertificateOptions(), False, Factory.forProtocol(Protocol), MemoryReactorClock()
        )
        factory.protocol = kind
        wrapper = factory.buildProtocol(None)
        wrapper.makeConnection(server)
        made.append(wrapper)
    twisteds, ours = made
    assert list(directlyProvidedBy(ours)) == list(directlyProvidedBy(twisteds)), changed(
        "what TLSMemoryBIOProtocol.makeConnection declares", "proxyd.twisted_internals"
    )
    assert list(providedBy(ours)) == list(providedBy(twisteds))
    assert ours.wrappedProtocol.transport is ours and ours._tlsConnection is not None


# proxyd.twisted_internals: listening ports beyond IListeningPort.


def test_port_do_read_accepts_what_is_queued(port: tcp.Port) -> None:
    """accept_queued (a listener that stops serves the connections queued)."""
    accepted: list[Any] = []
    port.factory.buildProtocol = lambda addr: accepted.append(addr)  # type: ignore[method-assign]
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)]
    try:
        assert port.connected is True, changed("tcp.Port.connected", "proxyd.twisted_internals")
        twisted_internals.accept_queued(port)
        assert len(accepted) == 3, changed(
            "tcp.Port.doRead (accepts what is queued)", "proxyd.twisted_internals (accept_queued)"
        )
    finally:
        for client in clients:
            client.close()


def test_port_stop_reading_socket_and_connection_lost(port: tcp.Port) -> None:
    """stop_accepting and close_now (the master's shared unix: sockets); stopReading,
    startReading, connected and disconnecting are also how proxyd.relay.tcp pauses accepting
    (its ReadingPort)."""
    reactor = port.reactor
    assert isinstance(port.socket, socket.socket) and port in reactor.readers
    duplicate = twisted_internals.stop_accepting(port)
    try:
        assert port not in reactor.readers, changed(
            "tcp.Port.stopReading", "proxyd.twisted_internals and proxyd.relay.tcp"
        )
        assert duplicate.getsockname() == port.socket.getsockname()
        port.startReading()
        assert port in reactor.readers, changed("tcp.Port.startReading", "proxyd.relay.tcp")
        assert not port.disconnecting, changed("tcp.Port.disconnecting", "proxyd.relay.tcp")
        twisted_internals.close_now(port)
        assert port.connected is False and port not in reactor.readers, changed(
            "tcp.Port.connectionLost", "proxyd.twisted_internals (close_now)"
        )
    finally:
        duplicate.close()


def test_unix_port_from_listening_descriptor(tmp_path: Any) -> None:
    """adopt_unix (a worker accepts on the unix: socket the master made): its startListening
    is tcp.Port.startListening's, for a socket that exists already."""
    assert parameters(unix.Port._fromListeningDescriptor) == ["reactor", "fd", "factory"]
    assert digest(tcp.Port.startListening) == "72f5a770c0215be4", changed(
        "tcp.Port.startListening", "proxyd.twisted_internals (_AdoptedUnixPort.startListening)"
    )
    assert isinstance(
        tcp._reservedFD, tcp._FileDescriptorReservation | tcp._NullFileDescriptorReservation
    )
    assert unix.Port._shouldShutdown is True and unix.Port._preexistingSocket is None
    path = str(tmp_path / "s.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(5)
    listening.setblocking(False)
    reactor = MemoryReactorClock()
    accepted: list[Any] = []
    factory = Factory.forProtocol(Protocol)
    factory.buildProtocol = lambda addr: accepted.append(addr)  # type: ignore[method-assign]
    adopted = twisted_internals.adopt_unix(reactor, listening.fileno(), factory)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        adopted.doRead()
        assert len(accepted) == 1 and adopted in reactor.readers, changed(
            "unix.Port._fromListeningDescriptor or tcp.Port.startListening",
            "proxyd.twisted_internals (adopt_unix)",
        )
        adopted.connectionLost(Failure(error.ConnectionDone()))
        assert os.path.exists(path), "the socket file belongs to the master"
    finally:
        client.close()
        listening.close()
