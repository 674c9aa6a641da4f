"""The raw TCP relay `[tcp NAME]`: each client connection spliced to one server of a pool.

Per connection: the client is paused at once, a server is picked (hash key: the client's IP),
connected to (trying further servers on failure), optionally sent a PROXY protocol header, and
then bytes stream both ways with each transport the other's producer (as in Twisted's
portforward), so a slow reader on either side pauses the other. FINs are passed on one way at
a time (half-close); a reset on one side is passed on as a reset (RST) to the other. A side
that takes none of what waits for it for idle_timeout (it stopped reading, or a close waits on
it) gets both sides reset (`client_stalled`, `server_stalled`), whatever the other direction
does. Both sockets have TCP_NODELAY, as HAProxy's and nginx's stream proxies set it: each read
is written on at once, and Nagle would only add the peer's delayed ACK to a small one.

With TLS termination the client is admitted only once its handshake is done; with route_by =
sni its ClientHello picks the pool (proxyd.relay.tcp_preamble reads it, and the PROXY header);
a pool with `tls = on` counts a server as connected once its handshake is done. TLS cannot
half-close: a FIN towards a TLS end closes it with close_notify instead.

Layout: plain classes in proxyd.relay.session and proxyd.relay.tcp_preamble decide; `Relay`
holds one connection's two ends and applies those decisions; `_EndProtocol` only forwards
Twisted's callbacks to it; `TcpRelayFactory` admits connections against max_connections.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, TcpListenerConfig
from proxyd.metrics import Cell, ErrorKind, RelayStats
from proxyd.pool import Pool, Server, why_no_server
from proxyd.pool.fault import Fault, fault_of
from proxyd.relay import proxy_protocol
from proxyd.relay.io import (
    ConnectingReactor,
    Connector,
    OpenConnections,
    ReadingPort,
    Transport,
    closes_at_once,
    no_delay,
    producer_paused,
    reset,
    send_now,
    set_buffer_size,
    socket_of,
)
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import (
    Attempts,
    CloseReason,
    ConnectionRecord,
    IdleTimer,
    Side,
    client_hash_key,
    close_reason,
)
from proxyd.relay.sni import SniRoutes
from proxyd.relay.tcp_preamble import Preamble, Refused
from proxyd.tls import ClientTls, ServerTls, describe_failure, peer_tls

__all__ = ["Relay", "TcpRelayFactory"]

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


@attrs.define(eq=False)
class _End:
    """One side of a relay: its transport and what has happened to it."""

    transport: Transport | None = None
    tls: bool = False
    """Over Twisted's TLS layer, which cannot half-close (it has no loseWriteConnection of its
    own: the one it seems to have is the TCP transport's below it, which would skip
    close_notify)."""
    has_producer: bool = False
    read_closed: bool = False
    lost: bool = False
    sending: SendTimeout | None = None
    """Its send timeout, once connected to the other side."""

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.lost

    def unregister_producer(self) -> None:
        if self.has_producer and self.transport is not None:
            self.has_producer = False
            self.transport.unregisterProducer()

    def close(self) -> None:
        if self.open:
            assert self.transport is not None
            self.unregister_producer()
            self.transport.loseConnection()
            if self.sending is not None and not closes_at_once(self.transport):
                self.sending.closing()

    def wrote(self) -> None:
        """After relaying a read to this end. A read from the other side means that this
        end's buffer drained since it last filled (a full one pauses that side), unless this
        very write filled it: the send timeout starts again either way."""
        sending = self.sending
        if sending is not None and producer_paused(self.transport):
            sending.resumed()
            sending.paused()

    def reset(self) -> None:
        """Abort with an RST."""
        if self.open:
            assert self.transport is not None
            reset(self.transport)


class Relay:
    """One client connection and its server connection, from accept to the access-log line."""

    def __init__(self, factory: TcpRelayFactory) -> None:
        self.factory = factory
        self.config = factory.config
        self.client = _End()
        self.server = _End()
        self.record = ConnectionRecord(self.config.name, factory.reactor.seconds())
        self.attempts = Attempts(self.config.retries)
        self.admitted = False
        self.handshaken = False
        """TLS termination: the client's handshake is done."""
        self._local: Address | None = None
        self._preamble: Preamble | None = None
        self._pending: list[bytes] = []
        self._held: Server | None = None
        self._attempt: _ServerAttempt | None = None
        self._connector: Connector | None = None
        self._closing = False
        self._finished = False
        clock = cast(IReactorTime, factory.reactor)
        self._idle = IdleTimer(clock, self.config.idle_timeout, self._on_idle)
        self._preamble_timer = IdleTimer(
            clock, self.config.handshake_timeout, self._preamble_timed_out
        )
        """handshake_timeout: the TLS handshake, PROXY header and ClientHello (never touched)."""
        self._attempt_timer = IdleTimer(clock, self.config.connect_timeout, self._attempt_timed_out)
        """Upstream TLS: connect_timeout for the TCP connect and the handshake together."""
        self.pool: Pool | None = factory.default_pool
        """The pool of this connection: the listener's, or the one its server name picked."""
        self._handshaking: Transport | None = None
        """A server connection whose TLS handshake is under way (upstream TLS)."""
        self._linger: IdleTimer | None = None
        """Once shut down: resets what is still open after SHUTDOWN_LINGER."""
        self._attempt_started = 0.0
        self._cell: Cell | None = None
        """The metrics of the pool and server, once connected to it."""

    # Called by the protocols and the factory.

    def connected(self, side: Side, transport: Transport) -> None:
        if side is Side.SERVER:
            self._server_connected(transport)
            return
        self.client.transport = transport
        if self.config.tcp_nodelay:
            no_delay(transport)
        self.factory.opened(self)
        self.record.started = self.factory.reactor.seconds()
        self.record.client = proxy_protocol.address_of(transport.getPeer())
        self._local = proxy_protocol.address_of(transport.getHost())
        if self.factory.tls is not None:
            self.client.tls = True
            # Twisted's TLS layer is handshaking below: pausing now would stall it.
            self._preamble_timer.start()
            return
        transport.pauseProducing()  # nothing is read until there is somewhere to send it
        self.factory.admit(self)

    def handshake_done(self) -> None:
        """The client's TLS handshake (TLS termination) is done: now it may be admitted."""
        transport = self.client.transport
        if transport is None or self._closing or getattr(transport, "disconnecting", False):
            return
        self.handshaken = True
        self._preamble_timer.cancel()
        facts = peer_tls(transport)
        if facts is not None:
            self.record.tls_version = facts.version
            self.record.sni = facts.server_name or None
        transport.pauseProducing()
        self.factory.admit(self)

    def start(self) -> None:
        """Admitted under max_connections: read the PROXY header, then the ClientHello
        (route_by = sni), then go for a server."""
        assert self.client.transport is not None
        self._idle.start()
        sni = self.config.route_by == "sni"
        if not (self.config.accept_proxy or sni):
            self._connect_next()
            return
        routes = self.factory.sni_routes if sni else None
        self._preamble = Preamble(self.config.accept_proxy, routes, self.config.pool)
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
        if not self._closing:
            self.record.reason = CloseReason.SHUTDOWN  # also over a half-close's reason
            self._close_all()
            if self.client.tls and not self.handshaken:
                self.client.reset()
        if self._linger is None:
            clock = cast(IReactorTime, self.factory.reactor)
            self._linger = IdleTimer(clock, SHUTDOWN_LINGER, self._reset_both)
            self._linger.start()

    def _reset_both(self) -> None:
        self.client.reset()
        self.server.reset()

    def data_received(self, side: Side, data: bytes) -> None:
        self._idle.touch()
        if side is Side.SERVER:
            self.record.bytes_out += len(data)
            if self._cell is not None:
                self._cell.bytes_out += len(data)
            assert self.client.transport is not None
            send_now(self.client.transport, [data])
            self.client.wrote()
        elif self._preamble is not None:
            self._preamble_received(data)
        elif self.server.transport is None:
            self._pending.append(data)  # at most one read: the client is paused
        else:
            self.record.bytes_in += len(data)
            if self._cell is not None:
                self._cell.bytes_in += len(data)
            send_now(self.server.transport, [data])
            self.server.wrote()

    def read_closed(self, side: Side) -> None:
        """A FIN from `side`: pass it on; once both ways are shut, close."""
        end, peer = self._ends(side)
        end.read_closed = True
        self.record.close_as(close_reason(side, None))
        if self._closing:
            return
        if not peer.open:
            self._close_all()
            return
        assert peer.transport is not None
        peer.unregister_producer()  # this end produces nothing more for the peer
        if peer.tls:
            # No half-close over TLS: close_notify after what it was sent. Until its own
            # close_notify (TLS 1.3 peers may still send), it is relayed; its loss ends it all.
            peer.close()
            return
        peer.transport.loseWriteConnection()
        if peer.read_closed:
            self._close_all()

    def lost(self, side: Side, reason: Failure) -> None:
        if side is Side.CLIENT and self.client.tls and not self.handshaken:
            self._handshake_failed(reason)
        end, peer = self._ends(side)
        end.lost = True
        end.has_producer = False
        if end.sending is not None:
            end.sending.cancel()
        if not self._closing:
            self._closing = True
            why = close_reason(side, reason)
            self.record.close_as(why)
            if why in (CloseReason.CLIENT_RESET, CloseReason.SERVER_RESET):
                peer.reset()
            else:
                peer.close()
        self._maybe_finish()

    def server_handshaking(self, attempt: _ServerAttempt, transport: Transport) -> None:
        """Upstream TLS: connected, handshake under way; it counts once server_ready."""
        if attempt is self._attempt:
            self._handshaking = transport
        else:
            transport.abortConnection()

    def server_ready(self, attempt: _ServerAttempt, transport: Transport) -> bool:
        """Upstream TLS: the server's handshake is done, certificate verified. False when the
        relay has given up on that attempt."""
        if attempt is not self._attempt:
            return False
        self._server_connected(transport)
        return True

    def connect_failed(self, attempt: _ServerAttempt, reason: Failure) -> None:
        fault = fault_of(reason)
        if fault is Fault.CANCELLED:
            return
        tls = describe_failure(reason)
        if fault is Fault.LOCAL:
            kind = ErrorKind.LOCAL_RESOURCE
        elif tls:
            kind = ErrorKind.TLS_FAILED
        elif reason.check(error.TimeoutError, TimeoutError):
            kind = ErrorKind.CONNECT_TIMEOUT
        else:
            kind = ErrorKind.CONNECT_FAILED
        self._attempt_failed(
            attempt, f"TLS handshake failed: {tls}" if tls else reason.getErrorMessage(), kind
        )

    # Internals.

    def _attempt_failed(self, attempt: _ServerAttempt, why: str, kind: ErrorKind) -> None:
        if attempt is not self._attempt:
            return
        assert self.pool is not None
        self.factory.stats.cell("", self.pool.name, attempt.server.name).error(kind)
        self._attempt = self._connector = None
        self._handshaking = None
        self._attempt_timer.cancel()
        _log.info(
            "tcp {listener}: connect to {server} failed: {why}",
            listener=self.config.name,
            server=attempt.server.name,
            why=why,
        )
        self._release()
        if kind is not ErrorKind.LOCAL_RESOURCE:  # only the server's doing counts against it
            self.pool.report_failure(attempt.server, why)
        self._connect_next()

    def _both(self) -> tuple[_End, _End]:
        return self.client, self.server

    def _ends(self, side: Side) -> tuple[_End, _End]:
        if side is Side.CLIENT:
            return self.client, self.server
        return self.server, self.client

    def _preamble_received(self, data: bytes) -> None:
        assert self._preamble is not None and self.client.transport is not None
        preamble = self._preamble
        outcome = preamble.feed(data)
        if outcome is None:
            return
        self._preamble = None
        self._preamble_timer.cancel()
        if preamble.header is not None and preamble.header.source is not None:
            self.record.client = preamble.header.source
            self._local = preamble.header.destination
        if preamble.hello is not None:
            self.record.sni = preamble.hello.server_name
        if isinstance(outcome, Refused):
            (_log.warn if outcome.warn else _log.info)(
                "tcp {listener}: {client}: {why}",
                listener=self.config.name,
                client=str(self.record.client),
                why=outcome.why,
            )
            self.record.close_as(outcome.reason)
            if outcome.reply:
                self.client.transport.write(outcome.reply)
            self._close_all()
            return
        self.pool = self.factory.pools[outcome.pool]
        self.client.transport.pauseProducing()
        if outcome.first:
            self._pending.append(outcome.first)
        self._connect_next()

    def _preamble_timed_out(self) -> None:
        if self._closing:
            return
        tls_handshake = self.client.tls and not self.handshaken
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
        if tls_handshake:
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

    def _connect_next(self) -> None:
        pool = self.pool
        assert pool is not None
        server = None
        if self.attempts.may_try_another():
            hashed = pool.config.balance == "hash"
            key = client_hash_key(self.record.client) if hashed else None
            server = pool.pick(key, exclude=self.attempts.tried)
        if server is None:
            self._give_up()
            return
        pool.acquire(server)
        self._held = server
        self.attempts.record(server)
        self.record.backend = server.address
        self.record.connect_attempts = self.attempts.count
        self._attempt_started = self.factory.reactor.seconds()
        client_tls = self.factory.client_tls.get(pool.name)
        attempt = self._attempt = _ServerAttempt(self, server, tls=client_tls is not None)
        factory: ClientFactory[Any] = attempt
        if client_tls is not None:
            factory = client_tls.wrap(
                attempt, server.address.host, cast(IReactorTime, self.factory.reactor)
            )
            self._attempt_timer.start()
        connector = self.factory.reactor.connectTCP(
            server.address.host,
            server.address.port,
            factory,
            timeout=self.config.connect_timeout,
        )
        if self._attempt is attempt:  # a synchronous failure may have moved on already
            self._connector = connector

    def _attempt_timed_out(self) -> None:
        """Upstream TLS: connect_timeout ran out before the server's handshake was done."""
        attempt = self._attempt
        if attempt is None:
            return
        handshaking, connector = self._handshaking, self._connector
        what = "connect" if handshaking is None else "TLS handshake"
        self._attempt_failed(
            attempt,
            f"{what} not done within connect_timeout {self.config.connect_timeout:g}s",
            ErrorKind.CONNECT_TIMEOUT,
        )
        # Stopped after moving on, so that their own failure refers to a stale attempt.
        if handshaking is not None:
            handshaking.abortConnection()
        elif connector is not None:
            with contextlib.suppress(error.NotConnectingError):
                connector.stopConnecting()

    def _give_up(self) -> None:
        assert self.pool is not None
        if self.attempts.count == 0:
            self.record.close_as(CloseReason.NO_SERVER)
            why = why_no_server(self.pool)
        else:
            self.record.close_as(CloseReason.CONNECT_FAILED)
            why = f"connect failed after {self.attempts.count} attempt(s)"
        _log.warn(
            "tcp {listener}: pool {pool}: {why}, closing {client}",
            listener=self.config.name,
            pool=self.pool.name,
            why=why,
            client=str(self.record.client),
        )
        self._close_all()

    def _server_connected(self, transport: Transport) -> None:
        assert self._attempt is not None and self.client.transport is not None
        assert self.pool is not None
        server = self._attempt.server
        self.pool.report_success(server)
        cell = self._cell = self.factory.stats.cell("", self.pool.name, server.name)
        cell.connections += 1
        cell.connect_duration.observe(self.factory.reactor.seconds() - self._attempt_started)
        self.server.tls = self._attempt.tls
        self._attempt = self._connector = None
        self._handshaking = None
        self._attempt_timer.cancel()
        self.server.transport = transport
        client = self.client.transport
        if self.config.tcp_nodelay:
            no_delay(transport)
        if self.config.send_proxy != "off":
            transport.write(
                proxy_protocol.encode(self.config.send_proxy, self.record.client, self._local)
            )
        for chunk in self._pending:
            self.record.bytes_in += len(chunk)
            cell.bytes_in += len(chunk)
            transport.write(chunk)
        self._pending.clear()
        for side in (client, transport):
            set_buffer_size(socket_of(side), self.config.buffer_size)
        client.registerProducer(transport, True)
        self.client.has_producer = True
        transport.registerProducer(client, True)
        self.server.has_producer = True
        for which, end in ((Side.CLIENT, self.client), (Side.SERVER, self.server)):
            end.sending = SendTimeout(
                self.factory.reactor,
                end.transport,
                self.config.idle_timeout,
                functools.partial(self._stalled, which),
                poll=True,
            )
        client.resumeProducing()

    def _on_idle(self) -> None:
        if self._closing:  # a graceful close that read nothing for a whole timeout
            if any(end.open and end.sending and end.sending.waiting for end in self._both()):
                # An end still has bytes to take: its send timeout bounds the close, and
                # lets a slow reader take the rest.
                self._idle.start()
                return
            self._reset_both()
            return
        self.record.close_as(CloseReason.IDLE_TIMEOUT)
        self._close_all()
        self._idle.start()

    def _stalled(self, side: Side) -> None:
        """`side` took none of what waits for it for idle_timeout: reset both sides. The
        first close reason stays the access log's (a stall counts on its own then)."""
        if self._finished:
            return
        end, _ = self._ends(side)
        sending = end.sending
        assert sending is not None
        if sending.held != 0:
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
                timeout=sending.timeout,
                held="?" if sending.held is None else sending.held,
            )
            if self.record.reason is None:
                self.record.close_as(reason)
            elif self._cell is not None:
                self._cell.error(reason)
        self._closing = True
        self._reset_both()

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
        self._closing = True
        self._cancel_attempt()
        self.client.close()
        self.server.close()

    def _cancel_attempt(self) -> None:
        attempt, connector = self._attempt, self._connector
        self._attempt = self._connector = None
        handshaking, self._handshaking = self._handshaking, None
        self._attempt_timer.cancel()
        if handshaking is not None:
            handshaking.abortConnection()
        if attempt is not None:
            attempt.relay = None
            self._release()
        if connector is not None:
            with contextlib.suppress(error.NotConnectingError):
                connector.stopConnecting()

    def _release(self) -> None:
        if self._held is not None:
            assert self.pool is not None
            self.pool.release(self._held)
            self._held = None

    def _maybe_finish(self) -> None:
        if self._finished or not self.client.lost:
            return
        if self.server.transport is not None and not self.server.lost:
            return
        self._finished = True
        self._cancel_attempt()
        self._preamble_timer.cancel()
        self._idle.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._release()
        self._pending.clear()
        self._count_close()
        self.factory.access_log.log(self.record.as_log(self.factory.reactor.seconds()))
        self.factory.finished(self)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _EndProtocol(TwistedProtocol):
    """Either end of a relay: forwards Twisted's callbacks to the Relay, nothing else.

    A server end over TLS (`attempt` given) is connected for the relay only once its
    handshake is done; until then its loss is a failed connect attempt."""

    def __init__(self, relay: Relay, side: Side, attempt: _ServerAttempt | None = None) -> None:
        self.relay = relay
        self.side = side
        self.attempt = attempt

    def connectionMade(self) -> None:
        transport = cast(Transport, self.transport)
        if self.attempt is not None:
            self.relay.server_handshaking(self.attempt, transport)
            return
        self.relay.connected(self.side, transport)

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "disconnecting", False):
            return  # verification failed or given up on: connectionLost follows
        if self.side is Side.CLIENT:
            self.relay.handshake_done()
        elif self.attempt is not None:
            attempt, self.attempt = self.attempt, None
            transport = cast(Transport, self.transport)
            if not self.relay.server_ready(attempt, transport):
                self.attempt = attempt  # its loss is then no loss of the relay's server
                transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.relay.data_received(self.side, data)

    def readConnectionLost(self) -> None:
        self.relay.read_closed(self.side)

    def writeConnectionLost(self) -> None:
        pass  # our own FIN went out; the peer's FIN decides when to close

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.attempt is not None:
            self.relay.connect_failed(self.attempt, reason)
            return
        self.relay.lost(self.side, reason)


class _ServerAttempt(ClientFactory[_EndProtocol]):
    """One connect attempt to `server`; `relay` is None once the relay gave up on it."""

    noisy = False

    def __init__(self, relay: Relay, server: Server, tls: bool = False) -> None:
        self.relay: Relay | None = relay
        self.server = server
        self.tls = tls

    def buildProtocol(self, addr: IAddress | None) -> _EndProtocol | None:
        if self.relay is None:
            return None  # Twisted then closes the late connection
        return _EndProtocol(self.relay, Side.SERVER, self if self.tls else None)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.connect_failed(self, reason)


class TcpRelayFactory(Factory[_EndProtocol]):
    """The listening factory of one `[tcp NAME]`: a Relay per client connection.

    With accept_proxy on, each client's first bytes must be a PROXY v1 or v2 header, whose
    source address then stands for the client everywhere (hash key, access log, send_proxy).
    Call `set_listening_port()` once listening: on_max_connections = queue stops reading the
    port while max_connections relays are active, leaving further clients in the kernel's
    accept queue. At a graceful stop, `drain()` then `close_all()`.
    """

    noisy = False

    def __init__(
        self,
        reactor: IReactorTCP,
        config: TcpListenerConfig,
        pools: Mapping[str, Pool],
        access_log: AccessLog,
        client_tls: Mapping[str, ClientTls] | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well (for timeouts and the log's times).
        `client_tls` holds the pools whose servers are spoken to over TLS."""
        self.reactor = cast(ConnectingReactor, reactor)
        self.config = config
        self.pools = pools
        self.default_pool = pools[config.pool] if config.pool is not None else None
        self.sni_routes = SniRoutes(config.routes, config.pool)
        self.client_tls = dict(client_tls or {})
        self.tls = ServerTls(f"tcp {config.name}", config.tls) if config.tls is not None else None
        self.access_log = access_log
        self.active = 0
        """Relays admitted and not finished: at most max_connections (when not 0)."""
        self._waiting: deque[Relay] = deque()
        self._port: ReadingPort | None = None
        self._port_paused = False
        self._relays: OpenConnections[Relay] = OpenConnections()
        """Every relay from its client's accept until its access-log line."""
        self.stats = RelayStats("tcp", config.name)
        """The metrics by pool and server (proxyd.metrics)."""

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

    def buildProtocol(self, addr: IAddress | None) -> _EndProtocol:
        return _EndProtocol(Relay(self), Side.CLIENT)

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
