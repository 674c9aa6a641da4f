"""Connections to upstream servers: one keep-alive connection, and the pool of idle ones.

An `UpstreamConnection` carries one exchange at a time: the exchange (its `handler`) writes a
request, and the connection feeds what comes back into a `ResponseReader` and tells the
handler. Between exchanges it waits in its `ConnectionPool`, which keeps the idle connections
per server (every one, as HAProxy and Envoy do, or at most `keepalive`: nginx's upstream
`keepalive`) for `keepalive_timeout`, most recently used first so that surplus connections
age out.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from proxyd.clock import Deadline, DelayedCall
from proxyd.config.model import PoolConfig
from proxyd.pool import Server
from proxyd.relay.http.h1 import ResponseReader
from proxyd.relay.http.messages import Event, UpstreamHead, request_head
from proxyd.relay.io import ConnectingReactor, Connector, SendBatch, Transport, no_delay
from proxyd.tls import ClientTls

_log = Logger(namespace="proxyd.relay.http")


class UpstreamHandler(Protocol):
    """What an exchange offers the connection it is using."""

    def upstream_readable(self) -> None:
        """Events are waiting in the connection's reader."""

    def upstream_writable(self, writable: bool) -> None:
        """The connection's write buffer filled up (False) or drained (True)."""

    def upstream_lost(self, reason: Failure) -> None:
        """The connection is gone; the reader may hold final events first."""


class EventReader(Protocol):
    def next_event(self) -> Event | None: ...


class UpstreamChannel(Protocol):
    """What a Forward (proxyd.relay.http.forward) uses of the one request it makes: an
    HTTP/1.1 connection (UpstreamConnection) or an HTTP/2 stream (proxyd.relay.http.
    h2_upstream.UpstreamStream). Events come back through its `reader` and the handler."""

    @property
    def reader(self) -> EventReader: ...

    @property
    def writable(self) -> bool: ...

    @property
    def lost(self) -> bool: ...

    @property
    def retry_fresh(self) -> bool:
        """Lost before any response, in a way that proves the server did not act on the
        request: a reused keep-alive connection closed (the race with the server's idle
        timeout), an HTTP/2 stream refused. Sent again to the same server, uncounted."""

    def begin(self, handler: UpstreamHandler, method: bytes) -> None: ...

    def send_request(self, head: UpstreamHead, body: list[bytes], end: bool) -> None:
        """The request's head and the body held so far; `end`: that is all of it."""

    def send(self, data: list[bytes]) -> None: ...

    def end_request(self) -> None:
        """The request body is complete (idempotent)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Upstreams(Protocol):
    """The connections of one pool (ConnectionPool, or proxyd.relay.http.h2_upstream.
    H2Upstreams), as the Forward's attempts use them."""

    @property
    def protocol(self) -> str:
        """http1 | h2 | h2c: an HTTP/2 pool frames bodies itself (no chunked coding)."""

    def connect(self, server: Server, timeout: float) -> Deferred[Any]: ...

    def checkout(self, server: Server) -> Any: ...

    def checkin(self, channel: Any) -> None: ...

    def stop(self) -> None: ...


class SplicedHandler(UpstreamHandler, Protocol):
    """What a tunnel (proxyd.relay.http.tunnel) offers the connection spliced to it."""

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the server, passed on as they came."""


class UpstreamConnection:
    """One TCP connection to `server`. It is its transport's producer, so that a full write
    buffer reaches the handler as upstream_writable(False). An IProtocol of its own rather
    than a subclass of Twisted's Protocol: so that mypyc compiles it as a native class
    (pyproject.toml's [tool.proxyd] mypyc)."""

    def __init__(self, pool: ConnectionPool, server: Server) -> None:
        self.transport: Any = None
        self.pool = pool
        self.server = server
        self.reader = ResponseReader()
        self.handler: UpstreamHandler | None = None
        self.requests = 0
        """Requests sent on this connection; more than one means it was reused."""
        self.writable = True
        self.lost = False
        self.paused = False
        self.idle_deadline = Deadline(pool.reactor, self._idle_expired)
        """While idle in the pool: when it expires (keepalive_timeout after its checkin)."""
        self._tunnel: SplicedHandler | None = None

    def _idle_expired(self) -> None:
        self.pool.forget(self)
        self.close()

    @property
    def channel(self) -> Transport:
        return cast(Transport, self.transport)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return type(self).__name__

    def connectionMade(self) -> None:
        # The exchange writes a request's head, then its body as it arrives, in as many
        # writes: without TCP_NODELAY a small body waits for the server's ACK of the head,
        # which the server delays (up to 40 ms) while it waits for the body.
        no_delay(self.transport)
        self.channel.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.upstream_data(data)
            return
        handler = self.handler
        if handler is None:
            # Nothing was asked: a server talking out of turn cannot be trusted with the
            # next request.
            _log.info(
                "pool {pool}: {server} sent {size} bytes on an idle keep-alive connection;"
                " closed it",
                pool=self.pool.config.name,
                server=self.server.name,
                size=len(data),
            )
            self.abort()
            return
        self.reader.feed(data)
        handler.upstream_readable()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.reader.eof()
        handler, self.handler = self.handler, None
        self.pool.forget(self)
        self.idle_deadline.release()
        if handler is not None:
            handler.upstream_lost(reason)
        self.reader.release()

    # IPushProducer, called by our own transport about its write buffer.
    def pauseProducing(self) -> None:
        self.writable = False
        if self.handler is not None:
            self.handler.upstream_writable(False)

    def resumeProducing(self) -> None:
        self.writable = True
        if self.handler is not None:
            self.handler.upstream_writable(True)

    def stopProducing(self) -> None:
        pass

    @property
    def retry_fresh(self) -> bool:
        return self.requests > 1

    # Used by the handler.
    def send(self, data: list[bytes]) -> None:
        self.pool.sends.send(self.channel, data)

    def send_request(self, head: UpstreamHead, body: list[bytes], end: bool) -> None:
        first = [request_head(head.method, head.target, head.fields)]
        if head.body:
            first.append(head.body)
        self.send(first + body)

    def end_request(self) -> None:
        """An HTTP/1.1 body ends by its framing, written by the exchange."""

    def pause_reading(self) -> None:
        if not self.paused and not self.lost:
            self.paused = True
            self.channel.pauseProducing()

    def resume_reading(self) -> None:
        if self.paused and not self.lost:
            self.paused = False
            self.channel.resumeProducing()

    def begin(self, handler: UpstreamHandler, method: bytes) -> None:
        self.handler = handler
        self.requests += 1
        self.reader.expect(method)

    def splice(self, tunnel: SplicedHandler) -> None:
        """After a 101: bytes go to `tunnel` as they come (it is the handler from now on);
        the connection is never reused."""
        self.handler = self._tunnel = tunnel

    def flush(self) -> None:
        """Send what waits in the pool's SendBatch now (before writing or closing
        otherwise)."""
        self.pool.sends.flush_to(self.channel)

    def close(self) -> None:
        self.handler = None
        if not self.lost:
            self.flush()
            self.channel.loseConnection()

    def abort(self) -> None:
        self.handler = None
        if not self.lost:
            self.pool.sends.discard(self.channel)
            self.channel.abortConnection()


class _Connect(ClientFactory[Any]):
    """(ClientFactory[Any]: an UpstreamConnection is an IProtocol of its own, not the Twisted
    Protocol the type parameter asks for.)"""

    noisy = False

    def __init__(self, pool: ConnectionPool, server: Server, handshake_timeout: float) -> None:
        self.pool = pool
        self.server = server
        self.handshake_timeout = handshake_timeout
        """Over TLS, how long the handshake may take; 0 for plain TCP."""
        self.result: Deferred[UpstreamConnection] = Deferred(self._cancel)
        self.connector: Connector | None = None
        self.announcing: _Announcing | None = None
        self._cancelling = False

    def buildProtocol(self, addr: IAddress | None) -> UpstreamConnection | None:
        if self.result.called:
            return None  # cancelled: Twisted closes the late connection
        self.announcing = _Announcing(self.pool, self.server, self.result, self.handshake_timeout)
        return self.announcing

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        # stopConnecting() below reports UserError at once: the Deferred fails with
        # CancelledError instead, which no one counts against the server.
        if not self.result.called and not self._cancelling:
            self.result.errback(reason)

    def _cancel(self, result: Deferred[UpstreamConnection]) -> None:
        self._cancelling = True
        if self.announcing is not None:
            self.announcing.abort()  # cancelled mid-handshake
        elif self.connector is not None:
            self.connector.stopConnecting()


class _Announcing(UpstreamConnection):
    """A new connection fires its connect Deferred once the transport is there, or over TLS
    once the handshake (and the certificate's verification) is done."""

    def __init__(
        self,
        pool: ConnectionPool,
        server: Server,
        result: Deferred[UpstreamConnection],
        handshake_timeout: float,
    ) -> None:
        super().__init__(pool, server)
        self._result: Deferred[UpstreamConnection] | None = result
        self._handshake_timeout = handshake_timeout
        self._handshake_timer: DelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._handshake_timeout:
            self._handshake_timer = self.pool.reactor.callLater(
                self._handshake_timeout, self._handshake_timed_out
            )
        else:
            self._announce()

    def handshakeCompleted(self) -> None:
        if not getattr(self.transport, "disconnecting", False):  # else verification failed
            self._announce()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        result, self._result = self._result, None
        self._cancel_timer()
        if result is not None and not result.called:
            self.lost = True
            result.errback(reason)
            return
        super().connectionLost(reason)

    def _announce(self) -> None:
        self._cancel_timer()
        result, self._result = self._result, None
        if result is not None and not result.called:
            result.callback(self)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        result, self._result = self._result, None
        self.abort()
        if result is not None and not result.called:
            result.errback(TimeoutError("TLS handshake timed out"))

    def _cancel_timer(self) -> None:
        timer, self._handshake_timer = self._handshake_timer, None
        if timer is not None and timer.active():
            timer.cancel()


classImplements(UpstreamConnection, IProtocol, ILoggingContext, IPushProducer)
classImplements(_Announcing, IHandshakeListener)


class ConnectionPool:
    """Idle keep-alive connections to the servers of one `[pool]`, shared by the HTTP
    listeners that use it."""

    protocol = "http1"

    def __init__(
        self, reactor: IReactorTCP, config: PoolConfig, tls: ClientTls | None = None
    ) -> None:
        """`reactor` must provide IReactorTime as well; with `tls`, connections speak TLS."""
        self.reactor = cast(ConnectingReactor, reactor)
        self.config = config
        self.tls = tls
        self.sends = SendBatch(self.reactor)
        self._idle: dict[Server, list[UpstreamConnection]] = {}

    def connect(self, server: Server, timeout: float) -> Deferred[UpstreamConnection]:
        """A new connection to `server`, its TLS handshake done within `timeout` too; fails
        with Twisted's connect errors, TimeoutError, or a TLS error (proxyd.tls)."""
        address = server.address
        factory = _Connect(self, server, timeout if self.tls is not None else 0.0)
        wrapped: ClientFactory[Any] = factory
        if self.tls is not None:
            wrapped = self.tls.wrap(factory, address.host, cast(IReactorTime, self.reactor))
        connector = self.reactor.connectTCP(address.host, address.port, wrapped, timeout)
        factory.connector = connector
        return factory.result

    def checkout(self, server: Server) -> UpstreamConnection | None:
        """The most recently used idle connection to `server`, if any. Its idle deadline is
        cleared, its delayed call left to fire and find nothing due: see `checkin`."""
        idle = self._idle.get(server)
        while idle:
            connection = idle.pop()
            connection.idle_deadline.clear()
            if not connection.lost:
                return connection
        return None

    def checkin(self, connection: UpstreamConnection) -> None:
        """Keep `connection` for reuse when there is room and it is provably clean (its last
        response ended exactly where the bytes received end: ResponseReader.clean), else
        close it. The caller checked that both sides allow keep-alive."""
        connection.handler = None
        reader = connection.reader
        if reader.overrun:
            # nginx: "upstream sent more data than specified"; whatever it was, it must
            # never reach the next request's client.
            _log.warn(
                "pool {pool}: {server} sent bytes after its response ended (a body longer"
                " than its Content-Length, or a 1xx, 204 or 304 with a body); closed the"
                " connection",
                pool=self.config.name,
                server=connection.server.name,
            )
            connection.abort()
            return
        if connection.lost or not reader.clean:
            connection.abort()
            return
        idle = self._idle.setdefault(connection.server, [])
        keep = self.config.keepalive
        if keep is not None and len(idle) >= keep:
            connection.close()
            return
        connection.resume_reading()
        idle.append(connection)
        # A connection is checked in after every request: its idle deadline moves, and the
        # delayed call, scheduled at most once per keepalive_timeout, re-arms itself for the
        # rest when it fires early (proxyd.clock.Deadline).
        connection.idle_deadline.set_in(self.config.keepalive_timeout)

    def forget(self, connection: UpstreamConnection) -> None:
        """A connection that closed, idle or not."""
        connection.idle_deadline.cancel()
        idle = self._idle.get(connection.server)
        if idle and connection in idle:
            idle.remove(connection)

    def stop(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.idle_deadline.cancel()
                connection.close()
        self._idle.clear()
