"""One connection of the message-mode WebSocket relay (proxyd.relay.websocket): the client's
WebSocket and proxyd's to a server (reached through proxyd.relay.attempt), the messages and
closes between them, the access-log line."""

from __future__ import annotations

import functools
from typing import Any, Protocol, cast

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.clock import DelayedCall
from proxyd.metrics import Cell, RelayStats
from proxyd.pool import Affinity, Pool, Server
from proxyd.relay import proxy_protocol
from proxyd.relay.attempt import AttemptDriver, AttemptPolicy, Failed, GiveUp
from proxyd.relay.io import Transport, socket_of
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import CloseReason, ConnectionRecord, IdleTimer, Side
from proxyd.relay.websocket_legs import (
    CLOSE_TIMEOUT,
    OPEN,
    BackendAttempt,
    BackendLeg,
    ClientLeg,
    Leg,
    Reader,
)
from proxyd.relay.websocket_legs import Listener as LegListener
from proxyd.relay.websocket_messages import Messages
from proxyd.relay.websocket_policy import (
    CLEAN_CLOSES,
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    Close,
    MessageRate,
    OriginPolicy,
    WsClose,
    backend_request,
    client_response_headers,
    parse_head,
    request_target,
    sendable,
)
from proxyd.tls import ServerTls, peer_tls

__all__ = ["CLOSE_LINGER", "Listener", "Relay", "WsClose"]

_log = Logger(namespace="proxyd.relay.websocket")

CLOSE_LINGER = 5.0
"""Once a connection starts closing, how long until what is left of it is aborted: a server
that never drops its TCP connection after the closing handshake, a client that never
answers."""


_NAMES = {Side.CLIENT: "client", Side.SERVER: "backend"}


class Listener(LegListener, Protocol):
    """What a Relay uses of its listening factory (proxyd.relay.websocket's
    WebSocketRelayFactory), beside what its legs use."""

    messages_in: int
    messages_out: int

    @property
    def pool(self) -> Pool: ...

    @property
    def access_log(self) -> AccessLog: ...

    @property
    def attempts(self) -> AttemptPolicy:
        """How its connections try servers (retries), made once."""
        ...

    @property
    def tls(self) -> ServerTls | None: ...

    @property
    def origins(self) -> OriginPolicy: ...

    @property
    def stats(self) -> RelayStats: ...

    @property
    def draining(self) -> bool: ...

    @property
    def gate(self) -> Gate | None: ...

    def full(self) -> bool: ...

    def admit(self, relay: Relay) -> None: ...

    def finished(self, relay: Relay) -> None: ...


class Relay(Messages):
    """One client's WebSocket and proxyd's WebSocket to a server, from the client's TCP
    connection to the access-log line."""

    _gate: Gate | None = None
    """The listener's gate, once it admitted the client: released when the relay ends. (Class
    defaults: a listener without a gate stores nothing per connection.)"""
    _gated = ""
    """The address the gate admitted."""

    def __init__(self, factory: Listener, client: ClientLeg) -> None:
        self.factory = factory
        self.config = factory.config
        self.client = client
        self.backend: BackendLeg | None = None
        self.pool = factory.pool
        clock = cast(IReactorTime, factory.reactor)
        self.record = ConnectionRecord(self.config.name, factory.reactor.seconds())
        self.driver: AttemptDriver[BackendLeg] | None = None
        self.admitted = False
        self.word: Close | None = None
        """The access log's `close`: the first reason set wins."""
        self.messages_in = 0
        self.messages_out = 0
        self.subprotocol: str | None = None
        self.closes: dict[Side, tuple[int | None, str | None]] = {}
        """Each leg's close code and reason, as autobahn reports them when it ends."""
        self._target = "/"
        self._host = ""
        self._fields: list[tuple[str, str]] = []
        self._offer: list[str] = []
        self._accept: Deferred[Any] | None = None
        self._refused = False
        self._closing = False
        self._finished = False
        self._client_gone = False
        self._backend_gone = False
        self._producers = False
        self._fail_timer: DelayedCall | None = None
        self._peer_reason: dict[Side, str] = {}
        """Why a side ended, for the 1001 its peer gets (a ping timeout)."""
        self._rate = MessageRate(self.config.max_messages_per_second)
        self._idle = IdleTimer(clock, self.config.idle_timeout, self._on_idle)
        self._deadline = IdleTimer(clock, self.config.handshake_timeout, self._handshake_timed_out)
        """handshake_timeout for the servers' answers, from the client's handshake on."""
        self._linger = IdleTimer(clock, CLOSE_LINGER, self._abort_all)
        self._cell: Cell | None = None
        """The metrics of the pool and server, once it answered 101."""
        self._sending: dict[Side, SendTimeout] = {}
        """Each side's send timeout, once relaying."""
        transport = cast(Transport, client.transport)
        self.record.client = proxy_protocol.address_of(transport.getPeer())

    def pass_gate(self, gate: Gate) -> bool:
        """Judge the client as its TCP connection is made: admitted, or closed at once (a
        FIN, before its opening handshake is read and before any TLS handshake), which ends
        the relay as a client leaving before its handshake does (leg_closed), with the
        gate's reason in the access log."""
        client = self.record.client
        ip = "" if client is None else client.host
        refused = gate.admit(ip)
        if refused is None:
            self._gate, self._gated = gate, ip
            return True
        self._set_word(CloseReason(refused))
        self._refused = True
        self._start_closing()  # the linger bounds the close
        # Below Twisted's TLS layer, whose loseConnection before a handshake is an abort
        # (an RST): there is no TLS session to close, and a refusal is a FIN.
        socket_of(self.client.transport).loseConnection()
        return False

    # The opening handshakes.

    def admit(self, request: ConnectionRequest) -> Deferred[Any]:
        """The client's opening handshake is valid: apply the policies, then find a server.
        The result fires (subprotocol, headers) for autobahn's 101, or fails ConnectionDeny."""
        client = self.client
        if self.factory.tls is not None:
            facts = peer_tls(client.transport)
            if facts is not None:
                self.record.tls_version = facts.version
                self.record.sni = facts.server_name or None
        origin = request.headers.get("origin")
        if not self.factory.origins.allows(origin):
            self._refuse(WsClose.ORIGIN_REFUSED, 403, "Forbidden", f"origin {origin!r} not allowed")
        if self.factory.draining:
            self._refuse(CloseReason.SHUTDOWN, 503, "Service Unavailable", "proxyd is stopping")
        if self.factory.full():
            limit = self.config.max_connections
            self._refuse(
                CloseReason.MAX_CONNECTIONS, 503, "Service Unavailable", f"{limit} connections"
            )
        self.factory.admit(self)
        if client.openHandshakeTimeoutCall is not None:
            # From here on the relay bounds the handshake: the servers' answers.
            client.openHandshakeTimeoutCall.cancel()
            client.openHandshakeTimeoutCall = None
        cast(Transport, client.transport).pauseProducing()  # nothing read until there is a server
        _, self._fields = parse_head(client.http_request_data)
        self._host = next((value for name, value in self._fields if name.lower() == "host"), "")
        self._target = request_target(client.http_request_uri)
        self._offer = list(request.protocols)
        accept: Deferred[Any] = Deferred()
        self._accept = accept
        self._deadline.start()
        pool = self.pool
        self.driver = AttemptDriver(
            self.factory.reactor,
            pool,
            self,
            self.factory.attempts,
            Affinity(self.record.client),
        )
        self.driver.start()
        return accept

    def backend_request(self, key: str) -> bytes:
        client = self.record.client
        return backend_request(
            target=self._target,
            client_fields=self._fields,
            host=self._host,
            client_ip=client.host if client is not None else None,
            secure=self.factory.tls is not None,
            protocols=self._offer,
            key=key,
        )

    def _refuse(self, word: Close, code: int, phrase: str, why: str) -> None:
        self._set_word(word)
        self._refused = True
        _log.info(
            "websocket {listener}: {client} refused {code}: {why}",
            listener=self.config.name,
            client=str(self.record.client),
            code=code,
            why=why,
        )
        raise ConnectionDeny(code, phrase)

    # The attempts at servers (proxyd.relay.attempt's AttemptOwner).

    def attempt_cell(self, server: Server) -> Cell:
        pool = self.pool
        assert pool is not None
        return self.factory.stats.cell("", pool.name, server.name)

    def attempt_checkout(self, server: Server) -> None:
        return None  # the policy never asks

    def attempt_connect(self, server: Server) -> Deferred[BackendLeg]:
        """Connect, then proxyd's opening handshake: the leg once the server answered 101."""
        attempt = BackendAttempt(self, server, self._offer)
        factory = self.factory
        attempt.connect(factory.reactor, factory.client_tls, self.config.connect_timeout)
        return attempt.result

    def attempt_started(self, server: Server) -> None:
        assert self.driver is not None
        self.record.backend = server.address
        self.record.connect_attempts = self.driver.count

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        _log.info(
            "websocket {listener}: server {server} failed: {why}",
            listener=self.config.name,
            server=server.name,
            why=failed.why,
        )

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        if give_up.no_server:
            self._set_word(CloseReason.NO_SERVER)
            code, phrase = 503, "Service Unavailable"
        else:
            self._set_word(CloseReason.CONNECT_FAILED)
            code, phrase = 502, "Bad Gateway"
        _log.warn(
            "websocket {listener}: pool {pool}: {why}, refusing {client} {code}",
            listener=self.config.name,
            pool=self.pool.name,
            why=give_up.why,
            client=str(self.record.client),
            code=code,
        )
        self._deny(code, phrase)

    def _handshake_timed_out(self) -> None:
        timeout = f"{self.config.handshake_timeout:g}s"
        driver = self.driver
        if driver is not None and driver.connecting:
            failed = Failed(f"no 101 within {timeout}", WsClose.SERVER_HANDSHAKE_TIMEOUT, 504)
            driver.failed(failed, retry=False)
        self._set_word(WsClose.SERVER_HANDSHAKE_TIMEOUT)
        _log.warn(
            "websocket {listener}: no server answered {client} within {timeout}",
            listener=self.config.name,
            client=str(self.record.client),
            timeout=timeout,
        )
        self._deny(504, "Gateway Timeout")

    def _deny(self, code: int, phrase: str) -> None:
        self._deadline.cancel()
        accept, self._accept = self._accept, None
        if accept is not None:
            accept.errback(ConnectionDeny(code, phrase))

    def attempt_connected(self, leg: BackendLeg, server: Server, reused: bool) -> None:
        """The server answered 101: accept the client with the server's subprotocol and its
        end-to-end response fields (Set-Cookie, ...)."""
        if self._accept is None:
            leg.dropConnection(abort=True)
            return
        self._deadline.cancel()
        cell = self._cell = self.factory.stats.cell("", self.pool.name, server.name)
        cell.connections += 1
        self.backend = leg
        self.subprotocol = leg.websocket_protocol_in_use
        _, fields = parse_head(leg.http_response_data)
        accept, self._accept = self._accept, None
        accept.callback((self.subprotocol, client_response_headers(fields)))

    def client_open(self) -> None:
        """proxyd's 101 went to the client: relay, each transport the other's producer."""
        backend = self.backend
        if backend is None or backend.state != OPEN:
            self.client.close_with(GOING_AWAY, "backend closed the connection")
            return
        client_transport = cast(Transport, self.client.transport)
        backend_transport = cast(Transport, backend.transport)
        for side, transport in ((Side.CLIENT, client_transport), (Side.SERVER, backend_transport)):
            self._sending[side] = SendTimeout(
                self.factory.reactor,
                transport,
                self.config.idle_timeout,
                functools.partial(self._stalled, side),
            )
        client_transport.registerProducer(
            Reader(backend_transport, self._sending[Side.CLIENT]), True
        )
        backend_transport.registerProducer(
            Reader(client_transport, self._sending[Side.SERVER]), True
        )
        self._producers = True
        client_transport.resumeProducing()
        self._idle.start()

    def _stalled(self, side: Side) -> None:
        """`side` took none of what waits for it for idle_timeout (it stopped reading; its
        pongs and close frames wait behind the rest): both legs are aborted. A connection
        already closing keeps its first word (a stall counts on its own then)."""
        if self._finished:
            return
        sending = self._sending[side]
        word = CloseReason.CLIENT_STALLED if side is Side.CLIENT else CloseReason.SERVER_STALLED
        _log.info(
            "websocket {listener}: {side} of {client} took no bytes for {timeout:g}s"
            " ({held} bytes waiting): aborting",
            listener=self.config.name,
            side=_NAMES[side],
            client=str(self.record.client),
            timeout=sending.timeout,
            held="?" if sending.held is None else sending.held,
        )
        if self.word is None:
            self.word = word
        else:
            (self._cell or self.factory.stats.cell("", self.pool.name, "")).error(word)
        self._start_closing()
        self._abort_all()

    def _on_idle(self) -> None:
        self._set_word(CloseReason.IDLE_TIMEOUT)
        self._close_both(Side.CLIENT, GOING_AWAY, "idle timeout", "idle timeout")

    def shut_down(self) -> None:
        """proxyd is stopping: an open connection gets 1001 both ways (RFC 6455 7.4.1: a
        server going down), a handshake under way a 503, and a client that has not sent its
        handshake a plain close. One already ending on its own is left to end. Whatever is
        left after CLOSE_LINGER is aborted."""
        if self._finished:
            return
        if self._closing or self.word is not None:
            self._start_closing()  # the linger, for a refusal still under way
            return
        self._set_word(CloseReason.SHUTDOWN)
        client = self.client
        if client.state == OPEN:
            self._close_both(Side.CLIENT, GOING_AWAY, "going away", "going away")
            return
        self._start_closing()  # the linger bounds whatever follows
        self._cancel_attempt()
        if self._accept is not None:
            self._deny(503, "Service Unavailable")
        elif client.transport is not None:
            cast(Transport, client.transport).loseConnection()

    def _close_both(self, side: Side, code: int, reason: str, peer_reason: str) -> None:
        """Close `side` with code and reason, and its peer with 1001 and `peer_reason`."""
        self._start_closing()
        leg, peer = self._legs(side)
        if leg is not None:
            leg.close_with(code, reason)
        if peer is not None:
            peer.close_with(GOING_AWAY, peer_reason)

    # Closes.

    def close_frame(self, side: Side, code: int | None, reason: str | None) -> None:
        """A side sent a close (autobahn has answered it): the other side gets the same."""
        self._set_word(
            CloseReason.CLIENT_CLOSED if side is Side.CLIENT else CloseReason.SERVER_CLOSED
        )
        self._start_closing()
        _, peer = self._legs(side)
        if peer is not None:
            if sendable(code):
                peer.close_with(code, reason)
            else:
                peer.close_with(GOING_AWAY, f"{_NAMES[side]} closed the connection")

    def leg_failed(self, side: Side, code: int | None) -> None:
        """autobahn is closing `side` on its own: a protocol error (1002, 1007) or a message
        or frame over the limits (1009). The other side gets 1001."""
        self._set_word(
            WsClose.MESSAGE_TOO_BIG if code == MESSAGE_TOO_BIG else WsClose.PROTOCOL_ERROR
        )
        _log.info(
            "websocket {listener}: closing {side} {client} with {code}",
            listener=self.config.name,
            side=_NAMES[side],
            client=str(self.record.client),
            code=code,
        )
        self._start_closing()
        _, peer = self._legs(side)
        if peer is not None:
            peer.close_with(GOING_AWAY, f"{_NAMES[side]} connection failed ({code})")

    def client_failing(self, code: int, reason: str) -> bool:
        """autobahn is failing the client's connection (a protocol error, a message too big)
        while messages it sent before are with the server. As a direct connection would, the
        client first gets the server's answers to them: proxyd closes the server's side (1001),
        relays what comes before its close, then fails the client. False: fail it at once."""
        backend = self.backend
        if backend is None or backend.state != OPEN or self._closing:
            return False
        self._start_closing()
        self._fail_timer = self.factory.reactor.callLater(CLOSE_TIMEOUT, self._fail_client)
        backend.close_with(GOING_AWAY, f"client connection failed ({code})")
        return True

    def close_answered(self, side: Side) -> None:
        """`side` answered proxyd's close: nothing more comes from it."""
        if side is Side.SERVER:
            self._fail_client()

    def _fail_client(self) -> None:
        timer, self._fail_timer = self._fail_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.client.fail_now()

    def ping_timed_out(self, side: Side) -> None:
        self._set_word(WsClose.PING_TIMEOUT)
        self._peer_reason[side] = f"{_NAMES[side]} did not answer a ping"
        _log.info(
            "websocket {listener}: {side} of {client} did not answer a ping within {timeout}s",
            listener=self.config.name,
            side=_NAMES[side],
            client=str(self.record.client),
            timeout=self.config.ping_timeout,
        )

    def leg_closed(self, side: Side, code: int | None, reason: str | None) -> None:
        """A leg's TCP connection is gone."""
        self.closes[side] = (code, reason)
        sending = self._sending.get(side)
        if sending is not None:
            sending.cancel()
        if side is Side.CLIENT:
            self._client_gone = True
            self._client_ended_early()
        else:
            self._backend_gone = True
            self._fail_client()
        _, peer = self._legs(side)
        if peer is not None and peer.state == OPEN:
            # No close came from this side (a close would have been passed on already).
            self._set_word(
                WsClose.CLIENT_DROPPED if side is Side.CLIENT else WsClose.SERVER_DROPPED
            )
            default = "client went away" if side is Side.CLIENT else "backend closed the connection"
            peer.close_with(GOING_AWAY, self._peer_reason.get(side, default))
        if self._producers:
            self._producers = False
            if peer is not None and peer.transport is not None:
                cast(Transport, peer.transport).unregisterProducer()
        self._start_closing()
        self._maybe_finish()

    def _client_ended_early(self) -> None:
        """The client's connection ended before it was accepted: say why, stop the attempt."""
        if self._accept is not None:
            self._accept = None
            self._set_word(CloseReason.CLIENT_CLOSED)
        client = self.client
        if not self.admitted and not self._refused:
            if client.wasOpenHandshakeTimeout:
                self._set_word(CloseReason.HANDSHAKE_TIMEOUT)
            elif client.droppedByMe:
                self._set_word(WsClose.BAD_HANDSHAKE)
        self._cancel_attempt()

    def _start_closing(self) -> None:
        if not self._closing:
            self._closing = True
            self._idle.cancel()
            self._linger.start()

    def _abort_all(self) -> None:
        for leg in (self.client, self.backend):
            if leg is not None and leg.transport is not None:
                cast(Transport, leg.transport).abortConnection()

    def _legs(self, side: Side) -> tuple[Leg | None, Leg | None]:
        if side is Side.CLIENT:
            return self.client, self.backend
        return self.backend, self.client

    def _set_word(self, word: Close) -> None:
        if self.word is None:
            self.word = word

    def _cancel_attempt(self) -> None:
        """Stop a connect or opening handshake under way (and let go of its server)."""
        driver = self.driver
        if driver is not None and driver.connecting:
            driver.cancel()

    def _release(self) -> None:
        if self.driver is not None:
            self.driver.release()

    def _maybe_finish(self) -> None:
        if self._finished or not self._client_gone:
            return
        if self.backend is not None and not self._backend_gone:
            return
        self._finished = True
        self._fail_client()
        self._cancel_attempt()
        self._idle.cancel()
        self._deadline.cancel()
        self._linger.cancel()
        self._release()
        if self._gate is not None:
            self._gate.release(self._gated)
        self._count_close()
        self.factory.access_log.log(self.log_line(self.factory.reactor.seconds()))
        self.factory.finished(self)

    def _count_close(self) -> None:
        """A close word that is an error, on the server connected to ("" if none)."""
        word = self.word
        if word is None or word in CLEAN_CLOSES:
            return
        cell = self._cell
        if cell is None:
            cell = self.factory.stats.cell("", self.pool.name, "")
        cell.error(word)

    def log_line(self, ended: float) -> dict[str, object]:
        line = self.record.as_log(ended)
        line["close"] = str(self.word or CloseReason.CLIENT_CLOSED)
        client_code, client_reason = self.closes.get(Side.CLIENT, (None, None))
        backend_code, backend_reason = self.closes.get(Side.SERVER, (None, None))
        line.update(
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            client_close_code=client_code,
            client_close_reason=client_reason,
            backend_close_code=backend_code,
            backend_close_reason=backend_reason,
            subprotocol=self.subprotocol,
        )
        return line
