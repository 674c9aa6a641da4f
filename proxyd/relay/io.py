"""Structural types for the Twisted objects the relays call, and small helpers on them.

zope interfaces cannot type method calls for mypy without the mypy-zope plugin, so the relays
describe what they use of a transport, a connector and a reactor here.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory

from proxyd.clock import Clock


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def writeSequence(self, data: list[bytes]) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def loseWriteConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def getHost(self) -> IAddress: ...


class Connector(Protocol):
    def stopConnecting(self) -> None: ...


class ReadingPort(Protocol):
    """What tcp.Port (a FileDescriptor) offers beyond IListeningPort."""

    def stopReading(self) -> None: ...
    def startReading(self) -> None: ...


class ConnectingReactor(Clock, Protocol):
    def connectTCP(
        self, host: str, port: int, factory: ClientFactory[Any], timeout: float
    ) -> Connector: ...


def set_buffer_size(transport: object, size: int) -> None:
    """twisted.internet.abstract.FileDescriptor.bufferSize is both the recv() size of a TCP
    connection and the write-buffer level at which its producer is paused."""
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = size
