"""The HTTP/2 connections of one `[pool]` with `protocol = h2` or `h2c`: per server at most
`h2_connections` connections, each carrying as many streams as the server's
SETTINGS_MAX_CONCURRENT_STREAMS allows. A request takes a stream on an open connection with
room (`checkout`); when none has room it waits for one (`connect`), and a new connection is
opened for it while the server has fewer than `h2_connections`. The wait is bounded by the
listener's connect_timeout: past it, a connection still being made is a connect timeout (the
server's fault), while a server whose every stream is busy is not blamed: the request moves
on to the next server, or gets 503.

Its connections and their streams count on their server's H2ServerCounts
(proxyd.relay.http.h2_upstream_metrics), which the process keeps across reloads.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from proxyd.clock import DelayedCall
from proxyd.config.model import PoolConfig
from proxyd.metrics import ErrorKind
from proxyd.pool import Server
from proxyd.pool.fault import Fault
from proxyd.relay.attempt import AttemptError, Failed
from proxyd.relay.http.h2_upstream import H2UpstreamConnection
from proxyd.relay.http.h2_upstream_metrics import H2Metrics
from proxyd.relay.http.h2_upstream_stream import UpstreamStream
from proxyd.relay.io import ConnectingReactor
from proxyd.tls import ClientTls


class _Waiter:
    __slots__ = ("due", "result", "server", "timer")

    def __init__(self, server: Server, result: Deferred[UpstreamStream], due: float) -> None:
        self.server = server
        self.result = result
        self.due = due
        self.timer: DelayedCall | None = None


class _Connecting(ClientFactory[H2UpstreamConnection]):
    """One connection being made: TCP connect, the TLS handshake with ALPN, within the
    connect timeout."""

    noisy = False

    def __init__(self, owner: H2Upstreams, server: Server, timeout: float) -> None:
        self.owner = owner
        self.server = server
        self.conn: H2UpstreamConnection | None = None
        self.connector: Any = None
        self.timer = owner.reactor.callLater(timeout, self._timed_out)

    def buildProtocol(self, addr: IAddress | None) -> H2UpstreamConnection:
        owner = self.owner
        counts = owner.counts.server(self.server.name)
        self.conn = H2UpstreamConnection(owner, self.server, owner.tls is not None, counts)
        return self.conn

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.owner.connect_failed(self, reason)

    def _timed_out(self) -> None:
        conn = self.conn
        if conn is not None and not conn.lost:
            conn.lost_reason = TimeoutError("TLS handshake timed out")
            conn.channel.abortConnection()
        elif conn is None and self.connector is not None:
            self.connector.stopConnecting()  # reported as a failed connect

    def stop_timer(self) -> None:
        if self.timer.active():
            self.timer.cancel()


class H2Upstreams:
    """The per-server multiplexer of a pool's HTTP/2 connections (an Upstreams for the
    Forward: connect, checkout, checkin)."""

    def __init__(
        self,
        reactor: IReactorTCP,
        config: PoolConfig,
        tls: ClientTls | None,
        metrics: H2Metrics | None = None,
    ) -> None:
        """`metrics`: the process's, where the pool's servers count (their series are
        there from the start); by default the pool's own."""
        self.reactor = cast(ConnectingReactor, reactor)
        self.config = config
        self.protocol = config.protocol
        self.pool_name = config.name
        self.keepalive_timeout = config.keepalive_timeout
        self.tls = tls
        self.counts = (metrics if metrics is not None else H2Metrics()).pool(config.name)
        for server_config in config.servers:
            self.counts.server(server_config.name)
        self.connections: dict[Server, list[H2UpstreamConnection]] = {}
        self._connecting: dict[Server, list[_Connecting]] = {}
        self._waiters: dict[Server, deque[_Waiter]] = {}
        self._stopped = False

    # Upstreams, for the Forward.

    def checkout(self, server: Server) -> UpstreamStream | None:
        for conn in self.connections.get(server, ()):
            if conn.has_room:
                return conn.reserve()
        return None

    def connect(self, server: Server, timeout: float) -> Deferred[UpstreamStream]:
        waiters = self._waiters.setdefault(server, deque())

        def cancel(_: Deferred[UpstreamStream]) -> None:
            self._forget(waiter)

        waiter = _Waiter(server, Deferred(cancel), self.reactor.seconds() + timeout)
        waiter.timer = self.reactor.callLater(timeout, self._wait_expired, waiter, timeout)
        waiters.append(waiter)
        self._wake(server)
        return waiter.result

    def checkin(self, stream: UpstreamStream) -> None:
        stream.close()

    def stop(self) -> None:
        """The pool is retired: no new stream; each connection closes with its last one."""
        self._stopped = True
        for conns in self.connections.values():
            for conn in list(conns):
                conn.draining = True
                if not conn.streams and not conn.reserved:
                    conn.close()

    # Waiting for a stream.

    def _wake(self, server: Server) -> None:
        """Give waiting requests the streams there is room for; open a connection for the
        rest if the server may have another."""
        waiters = self._waiters.get(server)
        while waiters:
            stream = self.checkout(server)
            if stream is None:
                break
            waiter = waiters.popleft()
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.result.callback(stream)
        if not waiters or self._stopped:
            return
        # A connection that got GOAWAY takes no new stream: it does not count.
        usable = [c for c in self.connections.get(server, []) if not c.draining]
        connecting = self._connecting.get(server, [])
        if not connecting and len(usable) < self.config.h2_connections:
            self._open(server, self._timeout_of(waiters[0]))

    def _timeout_of(self, waiter: _Waiter) -> float:
        return max(waiter.due - self.reactor.seconds(), 0.001)

    def _open(self, server: Server, timeout: float) -> None:
        address = server.address
        factory = _Connecting(self, server, timeout)
        wrapped: ClientFactory[Any] = factory
        if self.tls is not None:
            wrapped = self.tls.wrap(factory, address.host, cast(IReactorTime, self.reactor))
        self._connecting.setdefault(server, []).append(factory)
        factory.connector = self.reactor.connectTCP(address.host, address.port, wrapped, timeout)

    def _wait_expired(self, waiter: _Waiter, timeout: float) -> None:
        waiter.timer = None
        self._forget(waiter)
        if self._connecting.get(waiter.server):
            error: Exception = TimeoutError(f"connect timed out after {timeout:g}s")
        else:
            failed = Failed(
                f"every HTTP/2 stream to the server busy for {timeout:g}s",
                ErrorKind.QUEUE_TIMEOUT,
                503,
                Fault.CANCELLED,
            )
            error = AttemptError(failed)
        waiter.result.errback(error)

    def _forget(self, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.server)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    # From the connections (h2_upstream.Owner).

    def ready(self, conn: H2UpstreamConnection) -> None:
        server = conn.server
        for factory in self._connecting.get(server, []):
            if factory.conn is conn:
                factory.stop_timer()
                self._connecting[server].remove(factory)
                break
        self.connections.setdefault(server, []).append(conn)
        if self._stopped:
            conn.draining = True
        self._wake(server)

    def room(self, conn: H2UpstreamConnection) -> None:
        self._wake(conn.server)

    def gone(self, conn: H2UpstreamConnection, reason: Failure) -> None:
        server = conn.server
        conns = self.connections.get(server, [])
        if conn in conns:
            conns.remove(conn)
            self._wake(server)
            return
        for factory in self._connecting.get(server, []):
            if factory.conn is conn:
                self.connect_failed(factory, reason)
                return

    def connect_failed(self, factory: _Connecting, reason: Failure) -> None:
        """A connection could not be made: the requests waiting for the server fail with
        `reason` when no other connection to it is left to wait for."""
        server = factory.server
        factory.stop_timer()
        connecting = self._connecting.get(server, [])
        if factory in connecting:
            connecting.remove(factory)
        if connecting or self.connections.get(server):
            return
        waiters = self._waiters.pop(server, deque())
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.result.errback(reason)
