"""Structural types for the Twisted objects the relays call, and small helpers on them.

zope interfaces cannot type method calls for mypy without the mypy-zope plugin, so the relays
describe what they use of a transport, a connector and a reactor here.

This is the one module that reads Twisted's private write-buffer fields of a TCP connection
(twisted.internet.abstract.FileDescriptor's dataBuffer, offset, _tempDataLen,
_writeDisconnecting, producerPaused, and tcp.Connection's TLS): send_now, held and
producer_paused. send_now runs for every write of a request, so it reads them directly rather
than through a helper, and sends on the connection's socket itself (tcp.Connection's
writeSomeData, without its slice and retry wrapper: Python's send() retries on EINTR).
SendBatch.close and shut_write end a connection as Twisted's own write
event would (the reactor's _disconnectSelectable with CONNECTION_DONE; FileDescriptor's
_writeDisconnecting, _writeDisconnected and tcp.Connection._closeWriteConnection), unless
abortConnection() ran (FileDescriptor._aborting). tests/unit/test_twisted_internals.py
fails when Twisted changes any of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
import sys
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol

from proxyd.clock import Clock, soon
from proxyd.twisted_internals import TlsProtocol


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
    """TCP_NODELAY on (below Twisted's TLS layer too): a small write leaves at once instead of
    waiting for the peer's ACK of what was sent before (Nagle). A relay that writes what it
    reads as it reads it (an HTTP request's head, then its few body bytes; WebSocket frames)
    needs it: the peer, waiting for the rest before it answers, delays that ACK (up to 40 ms
    on Linux). Large transfers are unaffected: their writes fill whole segments anyway."""
    set_it = getattr(socket_of(transport), "setTcpNoDelay", None)
    if set_it is not None:
        with contextlib.suppress(OSError):
            set_it(True)


def listening_no_delay(port: object) -> bool:
    """TCP_NODELAY on the listening socket of `port`, which Linux copies to every connection
    it accepts from then on: True when set, and the connections need no setsockopt of their
    own (no_delay). False elsewhere, and for sockets without it (unix:)."""
    handle = getattr(port, "socket", None)
    if not sys.platform.startswith("linux") or handle is None:
        return False
    try:
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


_PLAIN_TCP: Final = frozenset({tcp.Server, tcp.Client})
"""Twisted's plain TCP connections (no TLS layer): their write buffer fields are read here."""
_BATCHED: Final = frozenset({tcp.Server, tcp.Client, TlsProtocol})
"""What SendBatch gathers for: plain TCP connections, and proxyd's TLS connections (one
SSL_write, and so one TLS record, for what a turn wrote)."""


def send_now(transport: Transport, pieces: list[bytes]) -> None:
    """Write `pieces` like writeSequence, but hand them to the kernel at once when `transport`
    is a plain TCP connection with nothing queued; what the socket does not take is queued
    with write(), in order, as before (and a socket error is left for Twisted's own write to
    find). This reads FileDescriptor's private write-buffer fields (see the module's
    docstring): any other transport (TLS, test transports) just queues.
    """
    fd = cast(Any, transport)
    if (
        type(fd) in _PLAIN_TCP
        and fd.connected
        and not (
            fd.disconnecting or fd._writeDisconnecting or fd._tempDataLen or fd.dataBuffer or fd.TLS
        )
    ):
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        try:
            sent = fd.socket.send(data)
        except OSError:  # EWOULDBLOCK, ENOBUFS, or an error Twisted's own write then finds
            sent = 0
        if sent == len(data):
            return
        fd.write(data[sent:] if sent else data)
        return
    transport.writeSequence(pieces)


def held(transport: object) -> int | None:
    """The bytes `transport` holds that its peer has not taken yet: Twisted's write buffer
    (FileDescriptor's private dataBuffer, offset and _tempDataLen), of the TCP connection
    below a TLS layer. None for a transport without one (test transports)."""
    fd = socket_of(transport)
    try:
        return int(len(fd.dataBuffer) - fd.offset + fd._tempDataLen)
    except (AttributeError, TypeError):
        return None


def producer_paused(transport: object) -> bool:
    """`transport`'s write buffer is full: it has paused its producer and not resumed it yet
    (FileDescriptor's producerPaused, below a TLS layer)."""
    return bool(getattr(socket_of(transport), "producerPaused", False))


def closes_at_once(transport: object) -> bool:
    """After loseConnection(), `transport` closes at its next write event, with no peer to
    wait for: a plain TCP connection with nothing left to send and no producer to resume
    (TLS waits for the peer's close_notify; a paused producer would be resumed instead)."""
    return (
        type(transport) in _PLAIN_TCP
        and held(transport) == 0
        and getattr(transport, "producer", None) is None
    )


class SendBatch:
    """Writes to plain TCP connections, gathered during a reactor turn and sent at its end
    (proxyd.clock.soon), one send() per connection.

    Twisted's write() also waits for the next turn, but it asks epoll to watch the socket for
    writability (epoll_ctl), gets a poll event for it, writes, and asks epoll to stop
    watching (epoll_ctl again): four system calls and two event dispatches per request on a
    proxy. Sending at the end of the turn needs none of that, and still sends once the whole
    turn's events were handled, so that a response's head and body, or several pipelined
    responses, leave together. proxyd's TLS connections (proxyd.twisted_internals.TlsProtocol)
    are gathered too, and written with one writeSequence: one SSL_write, one TLS record, where
    a response's head and body were two. Other transports (test transports) get writeSequence
    at once.
    """

    def __init__(self, clock: Clock) -> None:
        self._soon = soon(clock)
        self._queued: dict[Transport, list[bytes]] = {}
        self._ending: list[tuple[Any, bool]] = []
        """Connections to close (True) or half-close at the flush."""
        self._flush_pending = False

    def send(self, transport: Transport, pieces: list[bytes]) -> None:
        if type(transport) not in _BATCHED:
            transport.writeSequence(pieces)
            return
        queued = self._queued.get(transport)
        if queued is not None:
            queued.extend(pieces)
            return
        self._queued[transport] = list(pieces)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._soon(self.flush)

    def flush_to(self, transport: Transport) -> None:
        """Send at once what waits for `transport`: before closing it (a loseConnection with
        nothing in Twisted's buffer may close before the next turn's flush), or before
        writing to it otherwise."""
        pieces = self._queued.pop(transport, None)
        if pieces is not None:
            send_now(transport, pieces)

    def discard(self, transport: Transport) -> None:
        """Forget what waits for `transport` (before aborting it)."""
        self._queued.pop(transport, None)

    def close(self, transport: Transport) -> bool:
        """Close `transport` at this turn's flush, as loseConnection() would, when it is a
        plain TCP connection with nothing to send (flush_to it first) and no producer: True.
        It stops reading at once and is `disconnecting` from now on; a write that comes
        before the flush is sent, and the connection then closes once Twisted's buffer has
        drained, as after loseConnection().

        loseConnection() asks epoll to watch the socket for writability (epoll_ctl), and
        closes at the write event that follows: a send() of nothing, another epoll_ctl, and
        an event dispatch, for a connection that has nothing left to write. A half-close
        waiting for its write event (or for this flush) is overtaken. False for any other
        transport (TLS, whose close_notify waits on the peer; test transports), or one
        half-closed already: call loseConnection()."""
        fd = cast(Any, transport)
        if not _ends_at_once(fd, half_closing=True) or fd._writeDisconnected:
            return False
        fd.stopReading()
        fd.disconnecting = True
        self._ending.append((fd, True))
        self._flush_soon()
        return True

    def shut_write(self, transport: Transport) -> bool:
        """Half-close `transport` (a FIN; it goes on reading) at this turn's flush, as
        loseWriteConnection() would, without the write event it waits for; True when it is
        a plain TCP connection with nothing to send and no producer, else call
        loseWriteConnection(). A write that comes before the flush is sent first."""
        if not _ends_at_once(transport):
            return False
        fd = cast(Any, transport)
        fd._writeDisconnecting = True
        self._ending.append((fd, False))
        self._flush_soon()
        return True

    def flush(self) -> None:
        self._flush_pending = False
        queued, self._queued = self._queued, {}
        for transport, pieces in queued.items():
            send_now(transport, pieces)
        if self._ending:
            ending, self._ending = self._ending, []
            for fd, whole in ending:
                _end_written(fd, whole)


def _ends_at_once(transport: object, *, half_closing: bool = False) -> bool:
    """A plain TCP connection, open, with nothing to send and no producer; not half-closing
    unless `half_closing` may be (a close overtakes a half-close)."""
    fd = cast(Any, transport)
    return bool(
        type(fd) in _PLAIN_TCP
        and fd.connected
        and not fd.disconnecting
        and (half_closing or not fd._writeDisconnecting)
        and fd.producer is None
        and not held(fd)
    )


def _end_written(fd: Any, whole: bool) -> None:
    """What the write event after loseConnection() (`whole`) or loseWriteConnection() does to
    a connection with nothing left to send (FileDescriptor.doWrite, then for a close the
    reactor's _disconnectSelectable). One written to since is left to that event, once its
    buffer has drained."""
    if fd.disconnected or not fd.connected or fd._aborting:
        return  # closed meanwhile, or aborted: its own connectionLost is on its way
    if not whole and fd.disconnecting:
        return  # loseConnection() since: its write event closes it
    if held(fd):
        fd.startWriting()
        return
    if whole:
        fd.reactor._disconnectSelectable(fd, CONNECTION_DONE, False)
        return
    fd._writeDisconnected = True
    fd._closeWriteConnection()


_M_TRIM_THRESHOLD: Final = -1
"""glibc's mallopt parameter (malloc.h)."""
RETAINED_HEAP: Final = 8 << 20


def retain_freed_memory(size: int = RETAINED_HEAP) -> bool:
    """Let glibc's malloc keep up to `size` free bytes at the top of the heap instead of
    giving them back to the kernel (M_TRIM_THRESHOLD; the default is 128 KiB, grown
    dynamically). Every recv() makes a new 64 KiB bytes object: relaying large responses on
    many connections frees and regrows the top of the heap all the time, and each page given
    back is faulted in again by the next read (measured: ~240 minor faults per 1 MiB response
    relayed, about 40% of the CPU it took). Process-wide; True when applied (glibc only)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, size))


_Connection = TypeVar("_Connection")


class OpenConnections(Generic[_Connection]):
    """A relay factory's open connections, and at a graceful stop who waits for the last of
    them to end (its drain())."""

    def __init__(self) -> None:
        self.open: set[_Connection] = set()
        self.draining = False
        self._waiting: list[Deferred[None]] = []

    def add(self, connection: _Connection) -> None:
        self.open.add(connection)

    def discard(self, connection: _Connection) -> None:
        self.open.discard(connection)
        if self.draining and not self.open and self._waiting:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def drain(self) -> Deferred[None]:
        """From now on `draining`; fires once no connection is open (at once if none is)."""
        self.draining = True
        if not self.open:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d
