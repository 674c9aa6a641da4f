"""proxyd.relay.io's writes: send_now and SendBatch, on a real TCP transport over a loopback
socket pair (so that Twisted's private write-buffer fields that send_now reads are the real
ones) with a MemoryReactorClock, and on test transports."""

from __future__ import annotations

import platform
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, posixbase, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.relay.io import SendBatch, listening_no_delay, retain_freed_memory, send_now


class _Port:
    _realPortNumber = 8080


class _Reactor(MemoryReactorClock):
    """A memory reactor that disconnects a selectable as a real (posix) one does."""

    _disconnectSelectable = posixbase.PosixReactorBase._disconnectSelectable


@implementer(IHalfCloseableProtocol)
class _Lost(Protocol):
    def __init__(self) -> None:
        self.lost: list[Failure] = []
        self.write_lost = 0

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.append(reason)

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        self.write_lost += 1


@pytest.fixture
def pair() -> Iterator[tuple[Any, socket.socket, MemoryReactorClock]]:
    """A twisted.internet.tcp.Server over one end of a connected pair; the other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    listener.close()
    reactor = _Reactor()
    protocol = _Lost()
    transport = tcp.Server(accepted, protocol, address, _Port(), 1, reactor)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    peer.settimeout(5)
    yield transport, peer, reactor
    peer.close()
    accepted.close()


def _received(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def test_send_now_hands_bytes_to_the_kernel_without_watching_for_writability(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    send_now(transport, [b"HTTP/1.1 200 OK\r\n\r\n", b"hi"])
    assert _received(peer, 21) == b"HTTP/1.1 200 OK\r\n\r\nhi"
    assert transport not in reactor.writers
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""


def test_what_the_socket_does_not_take_is_queued_in_order(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 16384  # 4 MiB: more than both socket buffers
    send_now(transport, [big])
    assert transport in reactor.writers, "the rest waits in Twisted's buffer"
    send_now(transport, [b"after"])  # must not overtake the queued rest
    expected = big + b"after"
    data = b""
    while len(data) < len(expected):
        readable, writable, _ = select.select([peer], [transport.socket], [], 5)
        assert readable or writable
        if writable and transport in reactor.writers:
            transport.doWrite()  # what the reactor does on a writable socket
        if readable:
            data += peer.recv(1 << 20)
    assert data == expected
    assert transport not in reactor.writers


def test_send_now_after_lose_connection_leaves_the_bytes_to_twisted(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, _reactor = pair
    transport.loseConnection()
    send_now(transport, [b"last"])
    assert transport._tempDataLen == 4, "queued, written before the close"
    transport.doWrite()
    assert _received(peer, 4) == b"last"


def test_other_transports_get_write_sequence() -> None:
    transport = StringTransport()
    send_now(transport, [b"a", b"b"])
    assert transport.value() == b"ab"


def test_a_batch_sends_once_per_connection_at_the_next_turn(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    batch = SendBatch(reactor)
    batch.send(transport, [b"head "])
    batch.send(transport, [b"body"])
    assert len(reactor.getDelayedCalls()) == 1
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    reactor.advance(0)
    peer.setblocking(True)
    assert _received(peer, 9) == b"head body"
    assert reactor.getDelayedCalls() == []
    assert transport not in reactor.writers


def test_flush_to_and_discard(pair: tuple[Any, socket.socket, MemoryReactorClock]) -> None:
    transport, peer, reactor = pair
    batch = SendBatch(reactor)
    batch.send(transport, [b"first"])
    batch.flush_to(transport)
    assert _received(peer, 5) == b"first"
    batch.send(transport, [b"dropped"])
    batch.discard(transport)
    batch.send(transport, [b"second"])
    reactor.advance(0)
    assert _received(peer, 6) == b"second"


def test_a_batch_writes_other_transports_at_once() -> None:
    reactor = MemoryReactorClock()
    transport = StringTransport()
    SendBatch(reactor).send(transport, [b"now"])
    assert transport.value() == b"now"
    assert reactor.getDelayedCalls() == []


def _eof(peer: socket.socket) -> bytes:
    data = b""
    while chunk := peer.recv(100):
        data += chunk
    return data


def test_close_ends_the_connection_at_the_next_turn_without_a_write_event(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    protocol = transport.protocol
    batch = SendBatch(reactor)
    batch.send(transport, [b"bye"])
    batch.flush_to(transport)
    assert batch.close(transport)
    assert transport.disconnecting and transport not in reactor.readers
    assert transport not in reactor.writers, "no write event to wait for"
    transport.loseConnection()  # a no-op now, as after Twisted's own
    assert protocol.lost == []
    reactor.advance(0)
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)
    assert _eof(peer) == b"bye"
    reactor.advance(0)
    assert len(protocol.lost) == 1


def test_a_write_before_the_close_is_sent_first(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    batch = SendBatch(reactor)
    assert batch.close(transport)
    batch.send(transport, [b"late"])
    reactor.advance(0)
    assert transport.protocol.lost == [], "left to Twisted's write event"
    assert transport in reactor.writers
    transport.doWrite()  # sends, then finds nothing left and disconnecting
    assert _received(peer, 4) == b"late"


def test_an_abort_before_the_close_is_the_one_connection_lost(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, _peer, reactor = pair
    protocol = transport.protocol
    batch = SendBatch(reactor)
    assert batch.close(transport)
    transport.abortConnection()
    reactor.advance(0)
    reactor.advance(0)
    [reason] = protocol.lost
    assert reason.check(error.ConnectionAborted)


def test_close_leaves_to_lose_connection_what_it_cannot_close_at_once(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, _peer, reactor = pair
    batch = SendBatch(reactor)
    assert not batch.close(StringTransport())
    transport.write(b"held")
    assert not batch.close(transport), "bytes in Twisted's buffer"
    transport.doWrite()
    transport.registerProducer(Protocol(), True)
    assert not batch.close(transport), "a producer to unregister first"
    transport.unregisterProducer()
    assert batch.close(transport)
    assert not batch.close(transport), "closing already"
    assert reactor.getDelayedCalls() != []


def test_shut_write_half_closes_at_the_next_turn_and_goes_on_reading(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    protocol = transport.protocol
    batch = SendBatch(reactor)
    assert batch.shut_write(transport)
    assert transport not in reactor.writers
    reactor.advance(0)
    assert protocol.write_lost == 1 and transport._writeDisconnected
    assert _eof(peer) == b""
    assert transport in reactor.readers
    peer.sendall(b"more")
    assert transport.socket.recv(4) == b"more"
    assert protocol.lost == []
    assert not batch.close(transport), "half-closed: loseConnection() closes it at once"


def test_a_close_overtakes_a_half_close(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    protocol = transport.protocol
    batch = SendBatch(reactor)
    assert batch.shut_write(transport)
    assert batch.close(transport)
    reactor.advance(0)
    assert protocol.write_lost == 0
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)
    assert _eof(peer) == b""


def test_a_write_or_a_close_before_the_half_close_is_left_to_twisted(
    pair: tuple[Any, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    protocol = transport.protocol
    batch = SendBatch(reactor)
    assert batch.shut_write(transport)
    transport.write(b"last")
    reactor.advance(0)
    assert protocol.write_lost == 0 and transport in reactor.writers
    transport.doWrite()
    assert protocol.write_lost == 1
    assert _eof(peer) == b"last"
    other = SendBatch(reactor)
    assert not other.shut_write(transport), "half-closed already"


def test_listening_no_delay_is_inherited_by_accepted_connections() -> None:
    class _Listening:
        socket = socket.create_server(("127.0.0.1", 0))

    port = _Listening()
    try:
        if not listening_no_delay(port):
            pytest.skip("TCP_NODELAY is copied to accepted connections on Linux only")
        peer = socket.create_connection(port.socket.getsockname())
        accepted, _ = port.socket.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        accepted.close()
        peer.close()
    finally:
        port.socket.close()
    assert not listening_no_delay(object())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_memory_is_applied_on_glibc() -> None:
    assert retain_freed_memory()
