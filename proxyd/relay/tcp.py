"""The raw TCP relay `[tcp NAME]`: each client connection spliced to one server of a pool.

Per connection: the client is paused at once, a server is picked (balance = hash keys on the
client's IP), connected to (trying further servers on failure: proxyd.relay.attempt),
optionally sent a PROXY protocol header, and then the two connections are spliced
(proxyd.relay.splice): bytes stream both ways with each transport the other's producer (as in
Twisted's portforward), FINs are passed on one way at a time (half-close), a reset on one side
is passed on as a reset (RST), and a side that takes none of what waits for it for
idle_timeout gets both sides reset (`client_stalled`, `server_stalled`). Both sockets have
TCP_NODELAY, as HAProxy's and nginx's stream proxies set it: each read is written on at once,
and Nagle would only add the peer's delayed ACK to a small one.

A listener with `access` or per-client limits judges each client by its address as it is
accepted (proxyd.access.gate), before its TLS handshake and before max_connections, or once
its PROXY header is read with accept_proxy: a refused client is closed (a FIN, nothing sent)
and never reaches a server.

With TLS termination the client is admitted only once its handshake is done; with route_by =
sni its ClientHello picks the pool (proxyd.relay.tcp_preamble reads it, and the PROXY header);
a pool with `tls = on` counts a server as connected once its handshake is done
(proxyd.relay.dial). TLS cannot half-close: a FIN towards a TLS end closes it with
close_notify instead.

Layout: plain classes in proxyd.relay.session and proxyd.relay.tcp_preamble decide; `Relay`
(proxyd.relay.tcp_connection) holds one connection until it is spliced, and logs it;
`TcpRelayFactory`, here, admits connections against max_connections.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    ILoggingContext,
    IProtocolFactory,
    IReactorTCP,
)
from twisted.logger import Logger
from zope.interface import classImplements

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, TcpListenerConfig
from proxyd.metrics import RelayStats
from proxyd.relay.attempt import AttemptPolicy, PoolApi
from proxyd.relay.io import ConnectingReactor, OpenConnections, ReadingPort, SendBatch
from proxyd.relay.session import CloseReason, ConnectionRecord, Side
from proxyd.relay.sni import SniRoutes
from proxyd.relay.tcp_connection import SHUTDOWN_LINGER, EndProtocol, Relay
from proxyd.tls import ClientTls, ServerTls, Stapling

__all__ = ["SHUTDOWN_LINGER", "Relay", "TcpRelayFactory"]

_log = Logger(namespace="proxyd.relay.tcp")


class TcpRelayFactory:
    """The listening factory of one `[tcp NAME]`: a Relay per client connection. An
    IProtocolFactory of its own rather than a subclass of Twisted's Factory, so that mypyc
    compiles it as a native class (docs/performance.md, "Compiled modules").

    With accept_proxy on, each client's first bytes must be a PROXY v1 or v2 header, whose
    source address then stands for the client everywhere (hash key, access log, send_proxy):
    read by each Relay's preamble, or with TLS termination before the TLS handshake, by the
    port's factory (proxyd.relay.proxy_header), which tells proxy_header_refused() of the
    connections it closes.
    Call `set_listening_port()` once listening: on_max_connections = queue stops reading the
    port while max_connections relays are active, leaving further clients in the kernel's
    accept queue. At a graceful stop, `drain()` then `close_all()`.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        config: TcpListenerConfig,
        pools: Mapping[str, PoolApi],
        access_log: AccessLog,
        client_tls: Mapping[str, ClientTls] | None = None,
        stapling: Stapling | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well (for timeouts and the log's times).
        `client_tls` holds the pools whose servers are spoken to over TLS; `stapling` the
        OCSP responses a TLS listener staples."""
        self.reactor = cast(ConnectingReactor, reactor)
        self.config = config
        self.pools = pools
        self.default_pool: PoolApi | None = pools[config.pool] if config.pool is not None else None
        self.sni_routes = SniRoutes(config.routes, config.pool)
        self.client_tls = dict(client_tls or {})
        self.tls = (
            ServerTls(f"tcp {config.name}", config.tls, stapling=stapling)
            if config.tls is not None
            else None
        )
        self.access_log = access_log
        self.ending = SendBatch(self.reactor)
        """Ends the relays' plain TCP connections without waiting for a write event."""
        self.active = 0
        self.attempts = AttemptPolicy(config.retries)
        """Relays admitted and not finished: at most max_connections (when not 0)."""
        self._waiting: deque[Relay] = deque()
        self._port: ReadingPort | None = None
        self._port_paused = False
        self._relays: OpenConnections[Relay] = OpenConnections()
        """Every relay from its client's accept until its access-log line."""
        self.stats = RelayStats("tcp", config.name)
        """The metrics by pool and server (proxyd.metrics)."""
        self.gate = Gate.of(config, self.reactor)
        """`access` and the per-client limits; None when the listener has neither. A reload
        makes a new factory, so per-client counts start afresh for the connections accepted
        from then on; the older ones release into this gate."""

    def set_listening_port(self, port: IListeningPort) -> None:
        if not hasattr(port, "stopReading"):
            _log.warn(
                "tcp {listener}: this listener cannot pause accepting; with"
                " on_max_connections = queue, clients over the limit wait accepted",
                listener=self.config.name,
            )
            return
        self._port = cast(ReadingPort, port)
        self._sync_port()

    # IProtocolFactory: nothing to start or stop with the listening port.

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def logPrefix(self) -> str:
        return type(self).__name__

    def buildProtocol(self, addr: IAddress | None) -> EndProtocol:
        return EndProtocol(Relay(self), Side.CLIENT)

    def proxy_header_refused(self, client: Address | None, reason: str, started: float) -> None:
        """A connection closed before its PROXY header was read below TLS: counted as a
        relay's close reason, and its access-log line."""
        record = ConnectionRecord(self.config.name, started, client)
        record.close_as(CloseReason(reason))
        self.stats.cell("", self.config.pool or "", "").error(reason)
        self.access_log.log(record.as_log(self.reactor.seconds()))

    @property
    def waiting(self) -> int:
        """Clients accepted in a burst beyond max_connections, queued until a slot frees."""
        return len(self._waiting)

    def opened(self, relay: Relay) -> None:
        self._relays.add(relay)

    def drain(self) -> Deferred[None]:
        """Admit nothing new: clients queued under max_connections are closed (`shutdown`),
        the relays already admitted go on to their end. Fires once no relay is left open."""
        drained = self._relays.drain()
        waiting, self._waiting = list(self._waiting), deque()
        for relay in waiting:
            relay.shut_down()
        return drained

    def close_all(self) -> None:
        """The drain time is up: close both ends of every relay still open (`shutdown` in the
        access log); the drain's Deferred fires once they are gone."""
        self._relays.draining = True
        self._waiting.clear()
        for relay in list(self._relays.open):
            relay.shut_down()

    def admit(self, relay: Relay) -> None:
        if self._relays.draining:
            relay.shut_down()
        elif not self._full():
            self._start(relay)
        elif self.config.on_max_connections == "close":
            relay.reject()
        else:
            # Twisted's accept loop may accept several clients in one go, past the moment the
            # port stopped reading: those wait here, paused, in order.
            self._waiting.append(relay)

    def finished(self, relay: Relay) -> None:
        if relay.admitted:
            self.active -= 1
        elif relay in self._waiting:
            self._waiting.remove(relay)
        while self._waiting and not self._full():
            self._start(self._waiting.popleft())
        self._sync_port()
        self._relays.discard(relay)

    def _full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and self.active >= limit

    def _start(self, relay: Relay) -> None:
        relay.admitted = True
        self.active += 1
        self._sync_port()
        relay.start()

    def _sync_port(self) -> None:
        port = self._port
        if port is None or self.config.on_max_connections != "queue" or self._relays.draining:
            return
        full = self._full()
        if full and not self._port_paused:
            port.stopReading()
            self._port_paused = True
            _log.info(
                "tcp {listener}: max_connections {limit} reached, new clients wait",
                listener=self.config.name,
                limit=self.config.max_connections,
            )
        elif not full and self._port_paused:
            self._port_paused = False
            if getattr(port, "connected", True) and not getattr(port, "disconnecting", False):
                port.startReading()


classImplements(TcpRelayFactory, IProtocolFactory, ILoggingContext)
