"""What proxyd uses of Twisted beyond its public interfaces: listening ports and the PROXY
protocol parsers, each behind one small adapter here.

Twisted's private names proxyd relies on, and the one place that uses each (docs/operations.md
lists them; tests/unit/test_twisted_internals.py has a test per internal that fails, naming the
module to update, when a Twisted upgrade changes it; pyproject.toml bounds Twisted's version):

- EPollReactor.doPoll, _poller, _selectables, _doReadOrWrite, _disconnectSelectable and
  posixbase._NO_FILEDESC: proxyd.reactor (its doPoll is a copy of Twisted's) and
  proxyd.socket_events (the events' dispatch; tcp.Connection.doRead and _dataReceived
  inlined, FileDescriptor._aborting).
- tcp.Port._logger and tcp._accept's messages: proxyd.accept_log.
- FileDescriptor's write buffer (dataBuffer, offset, _tempDataLen, _writeDisconnecting,
  producerPaused), tcp.Connection.TLS and its socket (send_now sends as writeSomeData does),
  and the ends of a connection (_writeDisconnected, _closeWriteConnection, _aborting, the
  reactor's _disconnectSelectable): proxyd.relay.io (send_now, a hot path; SendBatch's close
  and shut_write).
- twisted.protocols.haproxy's private parsers (V1Parser, V2Parser, InvalidProxyHeader): here,
  for proxyd.relay.proxy_protocol.
- tcp.Connection's `protocol` attribute (read anew by doRead, _closeWriteConnection,
  readConnectionLost and connectionLost, and by proxyd.socket_events), and its getPeer and
  getHost shadowed on the instance: hand_over, here, for proxyd.relay.proxy_header.
- TLSMemoryBIOProtocol.makeConnection (and the _tlsConnection, _appSendBuffer and
  _connectWrapped it sets or reads, the factory's _creatorCallable and registerProtocol):
  TlsProtocol, here, the protocol of proxyd's TLS factories (proxyd.tls).
- Listening ports beyond IListeningPort (doRead, stopReading, socket, connected,
  connectionLost; unix.Port._fromListeningDescriptor and what tcp.Port.startListening sets):
  here. A reload changes no port's attribute: each port keeps one factory for its life, which
  delegates to the relay serving (proxyd.listeners.Front). proxyd.relay.tcp pauses accepting
  with the port's stopReading/startReading (its ReadingPort, proxyd.relay.io).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, cast

from twisted.internet import tcp, unix
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = [
    "InvalidProxyHeader",
    "TlsProtocol",
    "V1Parser",
    "V2Parser",
    "accept_queued",
    "adopt_unix",
    "close_now",
    "hand_over",
    "stop_accepting",
]


def accept_queued(port: Any) -> None:
    """Accept the connections the kernel has queued on the listening `port`, as the reactor
    would at its next readable event (tcp.Port.doRead), unless it has stopped listening."""
    if getattr(port, "connected", False):
        port.doRead()


def stop_accepting(port: Any) -> socket.socket:
    """A duplicate of the listening `port`'s socket, the port no longer accepting on it (it
    stays its socket's owner: for unix:, its file and lock)."""
    port.stopReading()
    return cast(socket.socket, port.socket.dup())


def close_now(port: Any) -> None:
    """What stopListening() does on the reactor's next turn, done now (the reactor may be
    stopping). A unix: port removes its socket file and lock. When the lock names the pid
    that bound the socket before twistd forked, Twisted refuses to unlock it (ValueError):
    the socket file is gone by then, and the next start finds the lock stale and takes it."""
    if port.connected:
        with contextlib.suppress(ValueError):
            port.connectionLost(Failure(ConnectionDone()))


def adopt_unix(reactor: Any, fd: int, factory: Any) -> unix.Port:
    """A listening unix.Port on the socket `fd` (a duplicate is kept), which leaves the
    socket file alone: no lock, bind, chmod or listen at start, no unlink at its end."""
    port = _AdoptedUnixPort._fromListeningDescriptor(reactor, fd, factory)
    port.startListening()
    return port


def hand_over(
    transport: Any, protocol: Any, peer: IAddress | None = None, host: IAddress | None = None
) -> bool:
    """From now on `transport` delivers its reads and its end to `protocol`, straight from the
    reactor, as if it had been built with it (tcp.Connection's `protocol`, which Twisted and
    proxyd.socket_events read at each event); with `peer` and `host`, its getPeer() and
    getHost() answer them. The transport stays Twisted's own (the relays' write fast paths
    look at its type). False when it has no `protocol` (a test transport): the protocol it
    has then passes the calls on itself."""
    if peer is not None:
        transport.getPeer = lambda: peer
    if host is not None:
        transport.getHost = lambda: host
    if not hasattr(transport, "protocol"):
        return False
    transport.protocol = protocol
    return True


class _AdoptedUnixPort(unix.Port):
    """unix.Port on a socket listening already, whose file belongs to another process."""

    def startListening(self) -> None:
        # unix.Port.startListening without the lock, the bind, the chmod and the listen: all
        # done by the process that made the socket.
        listening = cast(socket.socket, self._preexistingSocket)
        tcp._reservedFD.reserve()
        cast(Any, self.factory).doStart()
        self._preexistingSocket = None
        self._shouldShutdown = False  # shutdown() would stop the socket in every process
        self.socket = listening
        self.fileno = listening.fileno  # type: ignore[method-assign]
        self.connected = True
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # not unix.Port's: the file stays


class TlsProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, made a connection with one interface declaration instead of
    one per interface of its transport.

    TLSMemoryBIOProtocol.makeConnection calls directlyProvides(self, interface) for each
    interface the transport provides (nine for a TCP connection); each call replaces the
    declaration the one before made, so what is left is the last interface. This makes that
    one declaration, and otherwise does what Twisted's does (a copy, checked by a digest in
    tests/unit/test_twisted_internals.py)."""

    def makeConnection(self, transport: Any) -> None:
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        interfaces = tuple(providedBy(transport))
        if interfaces:
            directlyProvides(self, interfaces[-1])
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()
