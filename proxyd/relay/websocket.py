"""The message-mode WebSocket relay `[websocket NAME]` with `mode = message`.

proxyd completes each client's WebSocket itself (autobahn's server protocol), opens its own
WebSocket to a server of the pool (autobahn's client protocol, over TLS when the pool has
`tls = on`), and relays messages between the two: text and binary, one message for one
message. The client's opening handshake waits, paused, until a server has answered proxyd's
with 101; the client is then accepted with the subprotocol the server chose. Close codes and
reasons are passed on; a side that ends without a close makes proxyd close the other with
1001. Each side's transport is the other's producer, so a slow reader pauses the sender.

Layout: proxyd.relay.websocket_policy decides (Origins, message rate, handshake fields, close
codes); `Relay` holds one connection's two legs; `_ClientLeg` and `_BackendLeg` forward
autobahn's callbacks to it; `WebSocketRelayFactory` is the listening factory.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, cast

import txaio
from autobahn.exception import PayloadExceededError
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from txaio.tx import make_logger
from zope.interface import implementer

from proxyd.accesslog import AccessLog
from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import WebSocketListenerConfig
from proxyd.pool import Pool, Server
from proxyd.relay import proxy_protocol
from proxyd.relay.io import ConnectingReactor, Connector, Transport
from proxyd.relay.session import (
    Attempts,
    CloseReason,
    ConnectionRecord,
    IdleTimer,
    Side,
    client_hash_key,
)
from proxyd.relay.websocket_policy import (
    GOING_AWAY,
    INVALID_PAYLOAD,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    MessageRate,
    OriginPolicy,
    backend_request,
    client_response_headers,
    close_reason_bytes,
    parse_head,
    request_target,
    sendable,
)
from proxyd.tls import ClientTls, ServerTls, describe_failure, peer_tls

__all__ = ["Relay", "WebSocketRelayFactory", "WsClose"]

txaio.use_twisted()

_log = Logger(namespace="proxyd.relay.websocket")

CLOSE_TIMEOUT = 2.0
"""How long a side has to answer proxyd's close frame (autobahn's closeHandshakeTimeout)."""
CLOSE_LINGER = 5.0
"""Once a connection starts closing, how long until what is left of it is aborted: a server
that never drops its TCP connection after the closing handshake, a client that never
answers."""

_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSE_FRAME = 8


class WsClose(StrEnum):
    """How a WebSocket connection ended, where proxyd.relay.session.CloseReason has no word."""

    ORIGIN_REFUSED = "origin_refused"
    BAD_HANDSHAKE = "bad_handshake"
    """The client's opening handshake was malformed (autobahn answered it 400 or the like)."""
    SERVER_HANDSHAKE_TIMEOUT = "server_handshake_timeout"
    """No server answered proxyd's opening handshake with 101 within handshake_timeout."""
    CLIENT_DROPPED = "client_dropped"
    """The client's TCP connection ended without a WebSocket close."""
    SERVER_DROPPED = "server_dropped"
    MESSAGE_TOO_BIG = "message_too_big"
    MESSAGE_RATE = "message_rate"
    PROTOCOL_ERROR = "protocol_error"
    """A side broke RFC 6455 (autobahn closed it with 1002, 1007, ...)."""
    PING_TIMEOUT = "ping_timeout"


Close = CloseReason | WsClose

_NAMES = {Side.CLIENT: "client", Side.SERVER: "backend"}

# autobahn logs through txaio at info and warn for every malformed handshake and every unclean
# close; proxyd says what matters itself, in its own namespace.
_QUIET = make_logger(level="error")


class _Call:
    """A delayed call that may be cancelled after it ran (autobahn's timers may be)."""

    def __init__(self, call: DelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class _ReactorTimer:
    """Stands in for autobahn's batched timer, which txaio runs on the global reactor: the
    handshake, close and ping timeouts of both legs run on the factory's reactor."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Call:
        return _Call(self._clock.callLater(delay, func, *args, **kw))


@implementer(IPushProducer)
class _Reader:
    """A leg's transport as the producer for the other leg's transport: a full write buffer
    on one side pauses reading on the other. Unlike the transport itself, it does not close
    the connection when the consumer's ends (stopProducing): the relay closes each side
    itself, with a close frame."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """The consumer is gone; this side closes on the relay's word."""


def _accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """permessage_deflate = on: accept the client's first permessage-deflate offer."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _refuse_compression(offers: list[Any]) -> None:
    return None


class _Leg(WebSocketProtocol):
    """What both legs do: hand autobahn's callbacks to the Relay, tell proxyd's own closes
    from autobahn's (a protocol error, a message too big) and from the peer's."""

    side: Side
    transport: Any
    relay: Relay | None = None
    log = _QUIET
    _relay_closing = False
    """The close frame being sent is the relay's (close_with), not autobahn's own."""
    _failing: tuple[int, str] | None = None

    def close_with(self, code: int | None, reason: str | None) -> None:
        """Start the closing handshake with `code` and `reason` (no code: an empty close)."""
        if self.state == _OPEN:
            self._relay_closing = True
            self.sendCloseFrame(code, close_reason_bytes(reason) if code is not None else None)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        failing = not isReply and not self._relay_closing and self.state == _OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if failing and self.relay is not None:
            self.relay.leg_failed(self.side, code)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        from_peer = self.state == _OPEN  # not the answer to a close of ours
        stop = super().onCloseFrame(code, reasonRaw)
        if self.relay is None:
            return stop
        if self._failing is not None:
            return stop  # a close frame the failure stopped at
        if from_peer and not self.failedByMe:
            self.relay.close_frame(self.side, self.remoteCloseCode, self.remoteCloseReason)
        elif not from_peer:
            self.relay.close_answered(self.side)
        return stop

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.relay is not None:
            self.relay.message(self.side, payload, isBinary)

    def onAutoPingTimeout(self) -> None:
        if self.relay is not None:
            self.relay.ping_timed_out(self.side)
        super().onAutoPingTimeout()


class _ClientLeg(_Leg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT
    factory: WebSocketRelayFactory
    _failing: tuple[int, str] | None = None
    """The client broke the protocol (1002) or sent invalid UTF-8 (1007): the close waits for
    the server's answers to the messages relayed before (see Relay.client_failing), and
    nothing more from the client is processed meanwhile (RFC 6455 7.1.7). A message too big
    (1009) closes at once: it was not relayed."""

    def _defer_failure(self, code: int, reason: str) -> bool:
        if self._failing is not None:
            return True
        relay = self.relay
        if self._in_close_frame():
            return False  # a broken close: the client has said its last word
        if relay is None or self.state != _OPEN or not relay.client_failing(code, reason):
            return False
        self._failing = (code, reason)
        cast(Transport, self.transport).pauseProducing()
        return True

    def _in_close_frame(self) -> bool:
        """The frame being processed is a close: its payload (current_frame), else its
        header, which starts the unprocessed data."""
        frame = getattr(self, "current_frame", None)
        if frame is not None:
            return bool(frame.opcode == _CLOSE_FRAME)
        data: bytes = getattr(self, "data", b"")
        return bool(data) and data[0] & 0x0F == _CLOSE_FRAME

    def _protocol_violation(self, reason: str) -> bool:
        if self._defer_failure(PROTOCOL_ERROR, reason):
            return True  # stop processing the frame and what follows it
        return bool(super()._protocol_violation(reason))

    def _invalid_payload(self, reason: str) -> bool:
        if self._defer_failure(INVALID_PAYLOAD, reason):
            return True
        return bool(super()._invalid_payload(reason))

    def processData(self) -> bool:
        if self._failing is not None:
            return False
        return bool(super().processData())

    def fail_now(self) -> None:
        """Fail the connection as autobahn asked before; what the client sent after the
        failure is dropped, and its answer to the close is read."""
        failing, self._failing = self._failing, None
        if failing is not None and self.state == _OPEN:
            self.data = b""
            super()._fail_connection(*failing)
            cast(Transport, self.transport).resumeProducing()

    def connectionMade(self) -> None:
        self.relay = Relay(self.factory, self)
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> Any:
        assert self.relay is not None
        try:
            return self.relay.admit(request)
        except ConnectionDeny:
            raise
        except Exception:
            # autobahn answers 500, and would say why only at a level proxyd silences.
            _log.failure(
                "websocket {listener}: admitting a client", listener=self.relay.config.name
            )
            raise

    def onOpen(self) -> None:
        if self.relay is not None:
            self.relay.client_open()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.relay is not None:
            self.relay.leg_closed(Side.CLIENT, code, reason)


class _BackendLeg(_Leg, WebSocketClientProtocol):  # type: ignore[misc]
    side = Side.SERVER
    attempt: _BackendAttempt
    opened = False
    lost_reason: Failure | None = None

    def startHandshake(self) -> None:
        """proxyd's own request, not autobahn's: autobahn writes Host as host:port of the
        server and a single value per field, where the client's Host and fields must pass."""
        relay = self.attempt.relay
        if relay is None:
            self.dropConnection(abort=True)
            return
        self.websocket_key = base64.b64encode(os.urandom(16))
        self.http_request_data = relay.backend_request(self.websocket_key.decode("ascii"))
        self.sendData(self.http_request_data)

    def onOpen(self) -> None:
        relay = self.attempt.relay
        if relay is None:
            self.dropConnection(abort=True)
            return
        self.opened = True
        self.relay = relay
        relay.backend_open(self.attempt, self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.opened:
            if self.relay is not None:
                self.relay.leg_closed(Side.SERVER, code, reason)
            return
        relay = self.attempt.relay
        if relay is not None:
            relay.attempt_failed(self.attempt, self._why_refused())

    def _why_refused(self) -> str:
        """Why the opening handshake failed: the server's answer, else the connection's end."""
        status = getattr(self, "http_status_line", None)
        if status:
            parts = status.split(None, 1)
            if len(parts) == 2 and not parts[1].startswith("101"):
                return f"answered {parts[1]}"[:100]
        if self.wasNotCleanReason and self.droppedByMe:
            return str(self.wasNotCleanReason)[:100]
        if self.lost_reason is not None:
            tls = describe_failure(self.lost_reason)
            if tls:
                return f"TLS handshake failed: {tls}"
        return "connection closed before answering the opening handshake"


class _BackendAttempt(WebSocketClientFactory):  # type: ignore[misc]
    """One attempt at a server: connect, then proxyd's opening handshake. `relay` is None
    once the relay has given up on it."""

    protocol = _BackendLeg
    noisy = False
    log = _QUIET

    def __init__(self, relay: Relay, server: Server, protocols: list[str]) -> None:
        factory = relay.factory
        address = server.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        scheme = "wss" if factory.client_tls is not None else "ws"
        super().__init__(
            url=f"{scheme}://{host}:{address.port}/", protocols=protocols, reactor=factory.reactor
        )
        self._batched_timer = factory.timer
        config = factory.config
        self.setProtocolOptions(
            maxFramePayloadSize=config.max_frame_size,
            maxMessagePayloadSize=config.max_message_size,
            autoFragmentSize=config.max_frame_size,
            failByDrop=False,
            echoCloseCodeReason=True,
            serverConnectionDropTimeout=0,  # proxyd's own linger covers it, on its reactor
            openHandshakeTimeout=0,  # the relay bounds the handshake itself
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout if config.ping_interval > 0 else 0,
        )
        self.relay: Relay | None = relay
        self.server = server
        self.leg: _BackendLeg | None = None

    def buildProtocol(self, addr: IAddress | None) -> _BackendLeg | None:
        if self.relay is None:
            return None  # Twisted then closes the late connection
        leg = cast(_BackendLeg, super().buildProtocol(addr))
        leg.attempt = self
        self.leg = leg
        return leg

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.attempt_failed(self, reason.getErrorMessage())

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        """The leg's onClose has already told the relay."""


class Relay:
    """One client's WebSocket and proxyd's WebSocket to a server, from the client's TCP
    connection to the access-log line."""

    def __init__(self, factory: WebSocketRelayFactory, client: _ClientLeg) -> None:
        self.factory = factory
        self.config = factory.config
        self.client = client
        self.backend: _BackendLeg | None = None
        self.pool = factory.pool
        clock = cast(IReactorTime, factory.reactor)
        self.record = ConnectionRecord(self.config.name, factory.reactor.seconds())
        self.attempts = Attempts(self.config.retries)
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
        self._attempt: _BackendAttempt | None = None
        self._connector: Connector | None = None
        self._held: Server | None = None
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
        transport = cast(Transport, client.transport)
        self.record.client = proxy_protocol.address_of(transport.getPeer())

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
        self._connect_next()
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

    def _connect_next(self) -> None:
        server = None
        if self.attempts.may_try_another():
            key = client_hash_key(self.record.client)
            server = self.pool.pick(key, exclude=self.attempts.tried)
        if server is None:
            self._give_up()
            return
        self.pool.acquire(server)
        self._held = server
        self.attempts.record(server)
        self.record.backend = server.address
        self.record.connect_attempts = self.attempts.count
        attempt = self._attempt = _BackendAttempt(self, server, self._offer)
        factory: Any = attempt
        client_tls = self.factory.client_tls
        reactor = self.factory.reactor
        if client_tls is not None:
            factory = client_tls.wrap(attempt, server.address.host, cast(IReactorTime, reactor))
        connector = reactor.connectTCP(
            server.address.host, server.address.port, factory, timeout=self.config.connect_timeout
        )
        if self._attempt is attempt:  # a synchronous failure may have moved on already
            self._connector = connector

    def attempt_failed(self, attempt: _BackendAttempt, why: str) -> None:
        if attempt is not self._attempt:
            return
        self._attempt = self._connector = None
        attempt.relay = None
        _log.info(
            "websocket {listener}: server {server} failed: {why}",
            listener=self.config.name,
            server=attempt.server.name,
            why=why,
        )
        self._release()
        self.pool.report_failure(attempt.server, why)
        self._connect_next()

    def _give_up(self) -> None:
        if self.attempts.count == 0:
            self._set_word(CloseReason.NO_SERVER)
            why = "no server up" if not self.pool.any_up() else "all servers busy"
            code, phrase = 503, "Service Unavailable"
        else:
            self._set_word(CloseReason.CONNECT_FAILED)
            why = f"no server accepted after {self.attempts.count} attempt(s)"
            code, phrase = 502, "Bad Gateway"
        _log.warn(
            "websocket {listener}: pool {pool}: {why}, refusing {client} {code}",
            listener=self.config.name,
            pool=self.pool.name,
            why=why,
            client=str(self.record.client),
            code=code,
        )
        self._deny(code, phrase)

    def _handshake_timed_out(self) -> None:
        attempt = self._attempt
        timeout = f"{self.config.handshake_timeout:g}s"
        if attempt is not None:
            self._cancel_attempt()
            self.pool.report_failure(attempt.server, f"no 101 within {timeout}")
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

    def backend_open(self, attempt: _BackendAttempt, leg: _BackendLeg) -> None:
        """The server answered 101: accept the client with the server's subprotocol and its
        end-to-end response fields (Set-Cookie, ...)."""
        if attempt is not self._attempt or self._accept is None:
            leg.dropConnection(abort=True)
            return
        self._attempt = self._connector = None
        self._deadline.cancel()
        self.pool.report_success(attempt.server)
        self.backend = leg
        self.subprotocol = leg.websocket_protocol_in_use
        _, fields = parse_head(leg.http_response_data)
        accept, self._accept = self._accept, None
        accept.callback((self.subprotocol, client_response_headers(fields)))

    def client_open(self) -> None:
        """proxyd's 101 went to the client: relay, each transport the other's producer."""
        backend = self.backend
        if backend is None or backend.state != _OPEN:
            self.client.close_with(GOING_AWAY, "backend closed the connection")
            return
        client_transport = cast(Transport, self.client.transport)
        backend_transport = cast(Transport, backend.transport)
        client_transport.registerProducer(_Reader(backend_transport), True)
        backend_transport.registerProducer(_Reader(client_transport), True)
        self._producers = True
        client_transport.resumeProducing()
        self._idle.start()

    # Messages.

    def message(self, side: Side, payload: bytes, is_binary: bool) -> None:
        self._idle.touch()
        factory = self.factory
        if side is Side.CLIENT:
            if not self._rate.allow(factory.reactor.seconds()):
                self._rate_exceeded()
                return
            self.messages_in += 1
            self.record.bytes_in += len(payload)
            factory.messages_in += 1
            peer: _Leg | None = self.backend
        else:
            self.messages_out += 1
            self.record.bytes_out += len(payload)
            factory.messages_out += 1
            peer = self.client
        if peer is None or peer.state != _OPEN:
            return
        try:
            peer.sendMessage(payload, is_binary)
        except PayloadExceededError:
            # Compressed for the client, a message at max_message_size may grow past it.
            self._set_word(WsClose.MESSAGE_TOO_BIG)
            self._close_both(peer.side, MESSAGE_TOO_BIG, "message too big", "message too big")

    def _rate_exceeded(self) -> None:
        if self._closing:
            return
        self._set_word(WsClose.MESSAGE_RATE)
        _log.info(
            "websocket {listener}: {client} sent over {limit} messages a second, closing",
            listener=self.config.name,
            client=str(self.record.client),
            limit=self.config.max_messages_per_second,
        )
        self._close_both(
            Side.CLIENT, POLICY_VIOLATION, "message rate exceeded", "client message rate exceeded"
        )

    def _on_idle(self) -> None:
        self._set_word(CloseReason.IDLE_TIMEOUT)
        self._close_both(Side.CLIENT, GOING_AWAY, "idle timeout", "idle timeout")

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
        if backend is None or backend.state != _OPEN or self._closing:
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
        if side is Side.CLIENT:
            self._client_gone = True
            self._client_ended_early()
        else:
            self._backend_gone = True
            self._fail_client()
        _, peer = self._legs(side)
        if peer is not None and peer.state == _OPEN:
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

    def _legs(self, side: Side) -> tuple[_Leg | None, _Leg | None]:
        if side is Side.CLIENT:
            return self.client, self.backend
        return self.backend, self.client

    def _set_word(self, word: Close) -> None:
        if self.word is None:
            self.word = word

    def _cancel_attempt(self) -> None:
        attempt, connector = self._attempt, self._connector
        self._attempt = self._connector = None
        if attempt is None:
            return
        attempt.relay = None
        self._release()
        if attempt.leg is not None and attempt.leg.transport is not None:
            cast(Transport, attempt.leg.transport).abortConnection()
        elif connector is not None:
            with contextlib.suppress(error.NotConnectingError):
                connector.stopConnecting()

    def _release(self) -> None:
        if self._held is not None:
            self.pool.release(self._held)
            self._held = None

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
        self.factory.access_log.log(self.log_line(self.factory.reactor.seconds()))
        self.factory.finished(self)

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


class WebSocketRelayFactory(WebSocketServerFactory):  # type: ignore[misc]
    """The listening factory of one `[websocket NAME]` with `mode = message`.

    Counters for metrics: `active` (admitted, not finished), `total` (admitted ever),
    `messages_in` (client to server) and `messages_out`.
    """

    protocol = _ClientLeg  # type: ignore[assignment]
    noisy = False
    log = _QUIET

    def __init__(
        self,
        reactor: IReactorTCP,
        config: WebSocketListenerConfig,
        pools: Mapping[str, Pool],
        access_log: AccessLog,
        client_tls: ClientTls | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well. `client_tls`: the pool's servers are
        spoken to over TLS (wss)."""
        super().__init__(server=None, reactor=reactor)
        self.reactor = cast(ConnectingReactor, reactor)
        self.timer = _ReactorTimer(self.reactor)
        self._batched_timer = self.timer
        self.config = config
        self.pool = pools[config.pool]
        self.access_log = access_log
        self.client_tls = client_tls
        self.tls = (
            ServerTls(f"websocket {config.name}", config.tls, [b"http/1.1"])
            if config.tls is not None
            else None
        )
        self.origins = OriginPolicy(config.allowed_origins)
        self.active = 0
        self.total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=config.max_frame_size,
            maxMessagePayloadSize=config.max_message_size,
            autoFragmentSize=config.max_frame_size,
            failByDrop=False,
            echoCloseCodeReason=True,
            openHandshakeTimeout=config.handshake_timeout,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            perMessageCompressionAccept=(
                _accept_deflate if config.permessage_deflate else _refuse_compression
            ),
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout if config.ping_interval > 0 else 0,
            allowNullOrigin=True,  # allowed_origins decides, in the relay
        )

    def set_listening_port(self, port: IListeningPort) -> None:
        """Called once listening. Clients over max_connections are answered 503 rather than
        left in the accept queue, so the port is never paused."""

    def full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and self.active >= limit

    def admit(self, relay: Relay) -> None:
        relay.admitted = True
        self.active += 1
        self.total += 1

    def finished(self, relay: Relay) -> None:
        if relay.admitted:
            self.active -= 1
