"""A listening port keeps one factory for its life (Front, DatagramFront): a reload points it
at the new relay, on real Twisted ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, tcp, udp
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxyd.listeners import DatagramFront, Front


class _Counting(Factory):
    noisy = False

    def __init__(self) -> None:
        self.built: list[Any] = []
        self.started = 0
        self.stopped = 0

    def startFactory(self) -> None:
        self.started += 1

    def stopFactory(self) -> None:
        self.stopped += 1

    def buildProtocol(self, addr: Any) -> Protocol:
        self.built.append(addr)
        return Protocol()


@pytest.fixture
def fronted() -> Iterator[tuple[tcp.Port, Front, _Counting]]:
    first = _Counting()
    front = Front(first)
    port = tcp.Port(0, front, interface="127.0.0.1", reactor=MemoryReactorClock())
    port.startListening()
    yield port, front, first
    if port.connected:
        port.connectionLost(Failure(error.ConnectionDone()))


def test_a_front_builds_each_connection_with_the_factory_it_was_swapped_to(
    fronted: tuple[tcp.Port, Front, _Counting],
) -> None:
    port, front, first = fronted
    assert (first.started, first.stopped) == (1, 0)
    successor = _Counting()
    front.swap(successor)
    assert (first.stopped, successor.started) == (1, 1)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        port.doRead()
        assert port.factory is front
        assert len(successor.built) == 1 and first.built == []
    finally:
        client.close()
    port.connectionLost(Failure(error.ConnectionDone()))
    assert successor.stopped == 1 and first.stopped == 1


def test_a_front_not_listening_yet_starts_nothing_when_swapped() -> None:
    first, successor = _Counting(), _Counting()
    front = Front(first)
    front.swap(successor)
    assert (first.started, first.stopped, successor.started) == (0, 0, 0)
    front.doStart()
    assert (first.started, successor.started) == (0, 1)


def test_a_datagram_front_delivers_to_the_relay_it_was_swapped_to() -> None:
    reactor = MemoryReactorClock()
    first, second = DatagramProtocol(), DatagramProtocol()
    received: list[bytes] = []
    second.datagramReceived = lambda data, addr: received.append(data)  # type: ignore[method-assign]
    front = DatagramFront(first)
    listening = udp.Port(0, front, interface="127.0.0.1", reactor=reactor)
    listening.startListening()
    assert first.transport is listening
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        front.swap(second)
        assert second.transport is listening and first.transport is None
        sender.sendto(b"hello", ("127.0.0.1", listening.getHost().port))
        listening.doRead()
        assert received == [b"hello"]
        assert listening.protocol is front
    finally:
        sender.close()
        listening.connectionLost()
    assert second.transport is None
