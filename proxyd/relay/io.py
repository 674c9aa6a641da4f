"""Structural types for the Twisted objects the relays call, and small helpers on them.

zope interfaces cannot type method calls for mypy without the mypy-zope plugin, so the relays
describe what they use of a transport, a connector and a reactor here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any, Final, Protocol

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol

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


_RST_LINGER: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 seconds: close() then sends an RST instead of a FIN."""


def socket_of(transport: Any) -> Any:
    """The TCP transport itself: below Twisted's TLS layer for a TLS connection."""
    return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport


def reset(transport: Transport) -> None:
    """Abort `transport` with an RST (set on the TCP socket below Twisted's TLS layer).
    Twisted's abortConnection sets the same linger on TCP sockets; setting it here makes it
    explicit and covers transports that do not."""
    get_handle = getattr(socket_of(transport), "getHandle", None)
    if get_handle is not None:  # else not a socket (a test transport): abortConnection alone
        with contextlib.suppress(OSError, AttributeError, TypeError):
            get_handle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
    transport.abortConnection()


def no_delay(transport: object) -> None:
    """TCP_NODELAY on (below Twisted's TLS layer too): small interactive writes, such as
    WebSocket frames, leave at once instead of waiting for the peer's ACK (Nagle)."""
    set_it = getattr(socket_of(transport), "setTcpNoDelay", None)
    if set_it is not None:
        with contextlib.suppress(OSError):
            set_it(True)
