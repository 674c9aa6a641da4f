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
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from proxyd.relay.io import SendBatch, listening_no_delay, retain_freed_memory, send_now


class _Port:
    _realPortNumber = 8080


@pytest.fixture
def pair() -> Iterator[tuple[Any, socket.socket, MemoryReactorClock]]:
    """A twisted.internet.tcp.Server over one end of a connected pair; the other end."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    listener.close()
    reactor = MemoryReactorClock()
    protocol = Protocol()
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
