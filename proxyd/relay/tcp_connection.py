"""One connection of the raw TCP relay (proxyd.relay.tcp): `Relay` holds the client until a
server is connected (admission, the PROXY header and ClientHello, the attempts through
proxyd.relay.attempt), then a Splice (proxyd.relay.splice) holds both; it writes the
access-log line. `EndProtocol` only forwards Twisted's callbacks to it. What it uses of its
listening factory (proxyd.relay.tcp's TcpRelayFactory) is `Listener`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, TcpListenerConfig
from proxyd.metrics import Cell, RelayStats
from proxyd.pool import Affinity, Server
from proxyd.relay import proxy_protocol
from proxyd.relay.attempt import AttemptDriver, AttemptPolicy, Failed, GiveUp, PoolApi
from proxyd.relay.dial import Dial, dial
from proxyd.relay.io import (
    ConnectingReactor,
    SendBatch,
    Transport,
    no_delay,
    set_buffer_size,
    socket_of,
)
from proxyd.relay.session import CloseReason, ConnectionRecord, IdleTimer, Side, close_reason
from proxyd.relay.sni import SniRoutes
from proxyd.relay.splice import Splice, TransportPipe
from proxyd.relay.tcp_preamble import Preamble, Refused
from proxyd.tls import ClientTls, ServerTls, describe_failure, peer_tls

__all__ = ["SHUTDOWN_LINGER", "EndProtocol", "Listener", "Relay"]

_log = Logger(namespace="proxyd.relay.tcp")

_CLEAN: Final = frozenset(
    {
        CloseReason.CLIENT_CLOSED,
        CloseReason.SERVER_CLOSED,
        CloseReason.SHUTDOWN,
        CloseReason.CONNECT_FAILED,  # each failed attempt was counted on its server
    }
)
"""Close reasons that the metrics do not count as errors of the connection."""

SHUTDOWN_LINGER = 5.0
"""After close_all, how long a connection has to take its last bytes and close before it is
reset: the drain's Deferred fires at most this long after close_all."""


class Listener(Protocol):
    """What a Relay uses of its listening factory (proxyd.relay.tcp's TcpRelayFactory)."""

    @property
    def config(self) -> TcpListenerConfig: ...

    @property
    def reactor(self) -> ConnectingReactor: ...

    @property
    def pools(self) -> Mapping[str, PoolApi]: ...

    @property
    def default_pool(self) -> PoolApi | None: ...

    @property
    def sni_routes(self) -> SniRoutes: ...

    @property
    def client_tls(self) -> Mapping[str, ClientTls]: ...

    @property
    def tls(self) -> ServerTls | None: ...

    @property
    def access_log(self) -> AccessLog: ...

    @property
    def ending(self) -> SendBatch:
        """Ends the connections without waiting for a write event (proxyd.relay.io)."""
        ...

    @property
    def attempts(self) -> AttemptPolicy:
        """How its connections try servers (retries), made once."""
        ...

    @property
    def stats(self) -> RelayStats: ...

    @property
    def gate(self) -> Gate | None:
        """`access` and the per-client limits; None when the listener has neither."""
        ...

    def opened(self, relay: Relay) -> None: ...

    def admit(self, relay: Relay) -> None: ...

    def finished(self, relay: Relay) -> None: ...


class Relay:
    """One client connection and its server connection, from accept to the access-log line.

    Until a server is connected it holds the client alone (admission, the preamble, the
    attempts); from then on a Splice holds both."""

    _gate: Gate | None = None
    """The listener's gate, once it admitted the client: released when the relay ends. (Class
    defaults: a listener without a gate stores nothing per connection.)"""
    _gated = ""
    """The address the gate admitted."""

    def __init__(self, factory: Listener) -> None:
        self.factory = factory
        self.config = factory.config
        self.client: TransportPipe | None = None
        self.splice: Splice | None = None
        self.driver: AttemptDriver[EndProtocol] | None = None
        self.record = ConnectionRecord(self.config.name, factory.reactor.seconds())
        self.admitted = False
        self.handshaken = False
        """TLS termination: the client's handshake is done."""
        self._local: Address | None = None
        self._preamble: Preamble | None = None
        self._pending: list[bytes] = []
        self._closing = False
        """Closing before a server was connected (then the splice says)."""
        self._client_lost = False
        self._finished = False
        clock = cast(IReactorTime, factory.reactor)
        self._idle = IdleTimer(clock, self.config.idle_timeout, self._on_idle)
        """Until spliced (the splice has its own)."""
        self._preamble_timer = IdleTimer(
            clock, self.config.handshake_timeout, self._preamble_timed_out
        )
        """handshake_timeout: the TLS handshake, PROXY header and ClientHello (never touched)."""
        self.pool: PoolApi | None = factory.default_pool
        """The pool of this connection: the listener's, or the one its server name picked."""
        self._linger: IdleTimer | None = None
        """Once shut down: resets what is still open after SHUTDOWN_LINGER."""
        self._cell: Cell | None = None
        """The metrics of the pool and server, once connected to it."""

    @property
    def closing(self) -> bool:
        return self.splice.closing if self.splice is not None else self._closing

    # Called by the protocols and the factory.

    def connected(self, transport: Transport) -> None:
        """The client's connection is made."""
        tls = self.factory.tls is not None
        clock = self.factory.reactor
        self.client = TransportPipe(
            transport, clock, self.config.idle_timeout, tls=tls, ending=self.factory.ending
        )
        if self.config.tcp_nodelay:
            no_delay(transport)
        self.factory.opened(self)
        self.record.started = clock.seconds()
        self.record.client = proxy_protocol.address_of(transport.getPeer())
        if self.config.send_proxy != "off":  # the PROXY header's destination, only there
            self._local = proxy_protocol.address_of(transport.getHost())
        gate = self.factory.gate
        # With TLS, a PROXY header was read below it (proxyd.relay.proxy_header), before this
        # connection was made: its source is the transport's peer already.
        judged_later = self.config.accept_proxy and not tls
        if gate is not None and not judged_later and not self._pass(gate):
            return  # turned away before its TLS handshake and before max_connections
        if tls:
            # Twisted's TLS layer is handshaking below: pausing now would stall it.
            self._preamble_timer.start()
            return
        transport.pauseProducing()  # nothing is read until there is somewhere to send it
        self.factory.admit(self)

    def handshake_done(self) -> None:
        """The client's TLS handshake (TLS termination) is done: now it may be admitted."""
        client = self.client
        if client is None or self._closing or getattr(client.transport, "disconnecting", False):
            return
        transport = client.transport
        self.handshaken = True
        self._preamble_timer.cancel()
        facts = peer_tls(transport)
        if facts is not None:
            self.record.tls_version = facts.version
            self.record.sni = facts.server_name or None
        transport.pauseProducing()
        self.factory.admit(self)

    def start(self) -> None:
        """Admitted under max_connections: read the PROXY header (unless it was read below
        TLS), then the ClientHello (route_by = sni), then go for a server."""
        assert self.client is not None
        self._idle.start()
        sni = self.config.route_by == "sni"
        header = self.config.accept_proxy and not self.client.tls
        if not (header or sni):
            self._connect()
            return
        routes = self.factory.sni_routes if sni else None
        self._preamble = Preamble(header, routes, self.config.pool)
        self._preamble_timer.start()
        self.client.transport.resumeProducing()

    def reject(self) -> None:
        """Over max_connections with on_max_connections = close."""
        _log.warn(
            "tcp {listener}: max_connections {limit} reached, closing {client}",
            listener=self.config.name,
            limit=self.config.max_connections,
            client=str(self.record.client),
        )
        self.record.close_as(CloseReason.MAX_CONNECTIONS)
        self._close_all()

    def shut_down(self) -> None:
        """proxyd is stopping: close both ends (a FIN, or close_notify over TLS), unless the
        connection is already closing on its own; reset what is left after SHUTDOWN_LINGER.
        A client whose TLS handshake is unfinished is reset at once: it has nothing to flush."""
        if self._finished:
            return
        if not self.closing:
            if self.splice is not None:
                self.splice.reason = CloseReason.SHUTDOWN  # also over a half-close's reason
                self.splice.close()
            else:
                self.record.reason = CloseReason.SHUTDOWN
                self._close_all()
                if self.client is not None and self.client.tls and not self.handshaken:
                    self.client.reset()
        if self._linger is None:
            clock = cast(IReactorTime, self.factory.reactor)
            self._linger = IdleTimer(clock, SHUTDOWN_LINGER, self._reset_both)
            self._linger.start()

    def _reset_both(self) -> None:
        if self.splice is not None:
            self.splice.reset()
        elif self.client is not None and not self._client_lost:
            self.client.reset()

    def data_received(self, side: Side, data: bytes) -> None:
        splice = self.splice
        if splice is not None:
            splice.received(side, data)
            return
        self._idle.touch()
        if self._preamble is not None:
            self._preamble_received(data)
        else:
            self._pending.append(data)  # at most one read: the client is paused

    def read_closed(self, side: Side) -> None:
        """A FIN from `side`: passed on by the splice; before it, the end."""
        if self.splice is not None:
            self.splice.read_closed(side)
            return
        self.record.close_as(close_reason(side, None))
        if not self._closing:
            self._close_all()

    def lost(self, side: Side, reason: Failure) -> None:
        client = self.client
        if side is Side.CLIENT and client is not None and client.tls and not self.handshaken:
            self._handshake_failed(reason)
        if self.splice is not None:
            self.splice.lost(side, reason)
            return
        self._client_lost = True
        if self.client is not None:
            self.client.gone()
        if not self._closing:
            self.record.close_as(close_reason(side, reason))
            self._close_all()
        self._finish()

    # The attempts at servers (proxyd.relay.attempt's AttemptOwner).

    def attempt_started(self, server: Server) -> None:
        assert self.driver is not None
        self.record.backend = server.address
        self.record.connect_attempts = self.driver.count

    def attempt_connected(self, connection: EndProtocol, server: Server, reused: bool) -> None:
        self._spliced(cast(Transport, connection.transport), server)

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        _log.info(
            "tcp {listener}: connect to {server} failed: {why}",
            listener=self.config.name,
            server=server.name,
            why=failed.why,
        )

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        assert self.pool is not None
        reason = CloseReason.NO_SERVER if give_up.no_server else CloseReason.CONNECT_FAILED
        self.record.close_as(reason)
        _log.warn(
            "tcp {listener}: pool {pool}: {why}, closing {client}",
            listener=self.config.name,
            pool=self.pool.name,
            why=give_up.why,
            client=str(self.record.client),
        )
        self._close_all()

    # The splice (proxyd.relay.splice's SpliceOwner).

    def splice_stalled(self, side: Side, held: int | None, timeout: float, first: bool) -> None:
        if side is Side.CLIENT:
            reason, name, peer = CloseReason.CLIENT_STALLED, "client", self.record.client
        else:
            reason, name, peer = CloseReason.SERVER_STALLED, "server", self.record.backend
        _log.info(
            "tcp {listener}: {name} {peer} took no bytes for {timeout:g}s"
            " ({held} bytes waiting): reset",
            listener=self.config.name,
            name=name,
            peer=str(peer),
            timeout=timeout,
            held="?" if held is None else held,
        )
        if not first and self._cell is not None:
            self._cell.error(reason)

    def splice_ended(self) -> None:
        self._finish()

    # Internals.

    def _preamble_received(self, data: bytes) -> None:
        assert self._preamble is not None and self.client is not None
        preamble = self._preamble
        outcome = preamble.feed(data)
        header = preamble.header
        gate = self.factory.gate
        if header is not None and gate is not None and self._gate is None:
            # The header's source is the client: judged as soon as it is read, before a
            # ClientHello that may follow.
            if header.source is not None:
                self.record.client = header.source
                self._local = header.destination
            if not self._pass(gate):
                return
        if outcome is None:
            return
        self._preamble = None
        self._preamble_timer.cancel()
        if header is not None and header.source is not None:
            self.record.client = header.source
            self._local = header.destination
        if preamble.hello is not None:
            self.record.sni = preamble.hello.server_name
        transport = self.client.transport
        if isinstance(outcome, Refused):
            (_log.warn if outcome.warn else _log.info)(
                "tcp {listener}: {client}: {why}",
                listener=self.config.name,
                client=str(self.record.client),
                why=outcome.why,
            )
            self.record.close_as(outcome.reason)
            if outcome.reply:
                transport.write(outcome.reply)
            self._close_all()
            return
        self.pool = self.factory.pools[outcome.pool]
        transport.pauseProducing()
        if outcome.first:
            self._pending.append(outcome.first)
        self._connect()

    def _pass(self, gate: Gate) -> bool:
        """Whether the listener's gate lets the client in; if not, it is closed (a FIN,
        nothing sent) with the gate's reason, before any server is contacted."""
        client = self.record.client
        ip = "" if client is None else client.host
        refused = gate.admit(ip)
        if refused is None:
            self._gate, self._gated = gate, ip
            return True
        self.record.close_as(CloseReason(refused))
        self._closing = True
        self._preamble = None
        self._preamble_timer.cancel()
        if self.client is not None:
            # Below Twisted's TLS layer, whose loseConnection before a handshake is an
            # abort (an RST): there is no TLS session to close, and a refusal is a FIN.
            socket_of(self.client.transport).loseConnection()
        return False

    def _preamble_timed_out(self) -> None:
        if self._closing:
            return
        tls_handshake = self.client is not None and self.client.tls and not self.handshaken
        if tls_handshake:
            what = "TLS handshake"
        else:
            what = self._preamble.waiting_for if self._preamble is not None else "preamble"
        _log.info(
            "tcp {listener}: {client}: no {what} within {timeout}s",
            listener=self.config.name,
            client=str(self.record.client),
            what=what,
            timeout=self.config.handshake_timeout,
        )
        self.record.close_as(
            CloseReason.TLS_HANDSHAKE_FAILED if tls_handshake else CloseReason.HANDSHAKE_TIMEOUT
        )
        self._close_all()
        if tls_handshake and self.client is not None:
            self.client.reset()  # an unfinished handshake has nothing to flush

    def _handshake_failed(self, reason: Failure) -> None:
        if self.record.reason is None:
            _log.info(
                "tcp {listener}: TLS handshake with {client} failed: {why}",
                listener=self.config.name,
                client=str(self.record.client),
                why=describe_failure(reason) or "connection closed during the handshake",
            )
        self.record.close_as(CloseReason.TLS_HANDSHAKE_FAILED)

    def _connect(self) -> None:
        pool = self.pool
        assert pool is not None
        driver = self.driver = AttemptDriver(
            self.factory.reactor,
            pool,
            self,
            self.factory.attempts,
            Affinity(self.record.client),
        )
        driver.start()

    def attempt_cell(self, server: Server) -> Cell:
        pool = self.pool
        assert pool is not None
        return self.factory.stats.cell("", pool.name, server.name)

    def attempt_checkout(self, server: Server) -> None:
        return None  # the policy never asks

    def attempt_connect(self, server: Server) -> Deferred[EndProtocol]:
        assert self.pool is not None
        return dial(
            self.factory.reactor,
            server,
            self._server_protocol,
            tls=self.factory.client_tls.get(self.pool.name),
            timeout=self.config.connect_timeout,
        )

    def _server_protocol(self, attempt: Dial[EndProtocol]) -> EndProtocol:
        return EndProtocol(self, Side.SERVER, attempt)

    def _spliced(self, transport: Transport, server: Server) -> None:
        client = self.client
        assert client is not None and self.pool is not None
        cell = self._cell = self.factory.stats.cell("", self.pool.name, server.name)
        cell.connections += 1
        clock = self.factory.reactor
        tls = self.pool.name in self.factory.client_tls
        pipe = TransportPipe(
            transport, clock, self.config.idle_timeout, tls=tls, ending=self.factory.ending
        )
        if self.config.tcp_nodelay:
            no_delay(transport)
        if self.config.send_proxy != "off":
            transport.write(
                proxy_protocol.encode(self.config.send_proxy, self.record.client, self._local)
            )
        for each in (client.transport, transport):
            set_buffer_size(socket_of(each), self.config.buffer_size)
        self._idle.cancel()
        splice = self.splice = Splice(
            cast(IReactorTime, clock),
            client,
            pipe,
            self,
            idle_timeout=self.config.idle_timeout,
            meters=(cell,),
        )
        splice.start()
        pending, self._pending = self._pending, []
        for chunk in pending:
            splice.received(Side.CLIENT, chunk)
        client.transport.resumeProducing()

    def _on_idle(self) -> None:
        """Idle before a server was connected (the preamble, the attempts)."""
        if self._closing:  # a close that has not ended for a whole timeout
            self._reset_both()
            return
        self.record.close_as(CloseReason.IDLE_TIMEOUT)
        self._close_all()
        self._idle.start()

    def _count_close(self) -> None:
        """A close reason that is an error, on the server connected to ("" if none)."""
        reason = self.record.reason
        if reason is None or reason in _CLEAN:
            return
        cell = self._cell
        if cell is None:
            pool = "" if self.pool is None else self.pool.name
            cell = self.factory.stats.cell("", pool, "")
        cell.error(reason)

    def _close_all(self) -> None:
        """Close before a server was connected: stop the attempts, close the client."""
        self._closing = True
        if self.driver is not None:
            self.driver.cancel()
        if self.client is not None and not self._client_lost:
            self.client.close()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.driver is not None:
            self.driver.cancel()
        self._preamble_timer.cancel()
        self._idle.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._pending.clear()
        splice = self.splice
        if splice is not None:
            record = self.record
            record.reason = splice.reason or record.reason
            record.bytes_in, record.bytes_out = splice.bytes_in, splice.bytes_out
        if self._gate is not None:
            self._gate.release(self._gated)
        self._count_close()
        self.factory.access_log.log(self.record.as_log(self.factory.reactor.seconds()))
        self.factory.finished(self)
        # Let go of what refers back to this relay (timers' and the driver's callbacks, the
        # splice's owner): freed at once by reference counts, not by the cycle collector.
        self._idle.release()
        self._preamble_timer.release()
        if self._linger is not None:
            self._linger.release()
        if self.driver is not None:
            self.driver.detach()
        if splice is not None:
            splice.release()


class EndProtocol:
    """Either end of a relay: forwards Twisted's callbacks to the Relay, nothing else.

    A server end is its Dial's (`attempt`) until the connection is usable (over TLS, once its
    handshake is done): until then its loss is a failed connect attempt. An IProtocol of its
    own rather than a subclass of Twisted's Protocol, so that mypyc compiles it as a native
    class (docs/performance.md, "Compiled modules")."""

    def __init__(self, relay: Relay, side: Side, attempt: Dial[EndProtocol] | None = None) -> None:
        self.relay = relay
        self.side = side
        self.attempt = attempt
        self.transport: Any = None
        """IProtocol's: the connection's transport, once made."""

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return type(self).__name__

    def connectionMade(self) -> None:
        transport = cast(Transport, self.transport)
        if self.attempt is not None:
            self.attempt.made(transport)
            return
        self.relay.connected(transport)

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "disconnecting", False):
            return  # verification failed or given up on: connectionLost follows
        if self.attempt is not None:
            self.attempt.handshake_done()
        else:
            self.relay.handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.relay.data_received(self.side, data)

    def readConnectionLost(self) -> None:
        self.relay.read_closed(self.side)

    def writeConnectionLost(self) -> None:
        pass  # our own FIN went out; the peer's FIN decides when to close

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.attempt is not None and self.attempt.lost(reason):
            return
        self.relay.lost(self.side, reason)


classImplements(EndProtocol, IProtocol, ILoggingContext, IHalfCloseableProtocol, IHandshakeListener)
