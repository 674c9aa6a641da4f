"""The autobahn side of the message-mode WebSocket relay (proxyd.relay.websocket): the two
legs of a relayed connection (autobahn's server protocol towards the client, its client
protocol towards a server), one attempt at a server, and the small adapters that put
autobahn's timers on the relay's reactor and make each transport the other's producer. The
legs only hand autobahn's callbacks to the Relay, which decides.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol, cast

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import error as twisted_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from txaio.tx import make_logger
from zope.interface import implementer

from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import WebSocketListenerConfig
from proxyd.metrics import ErrorKind
from proxyd.pool import Server
from proxyd.relay.attempt import AttemptError, Failed
from proxyd.relay.io import ConnectingReactor, Connector, Transport
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import Side
from proxyd.relay.websocket_policy import (
    INVALID_PAYLOAD,
    PROTOCOL_ERROR,
    close_reason_bytes,
)
from proxyd.tls import ClientTls, describe_failure

_log = Logger(namespace="proxyd.relay.websocket")

CLOSE_TIMEOUT = 2.0
"""How long a side has to answer proxyd's close frame (autobahn's closeHandshakeTimeout)."""

# autobahn logs through txaio at info and warn for every malformed handshake and every unclean
# close; proxyd says what matters itself, in its own namespace.
QUIET = make_logger(level="error")

OPEN = WebSocketProtocol.STATE_OPEN
_CLOSE_FRAME = 8


class Call:
    """A delayed call that may be cancelled after it ran (autobahn's timers may be)."""

    def __init__(self, call: DelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimer:
    """Stands in for autobahn's batched timer, which txaio runs on the global reactor: the
    handshake, close and ping timeouts of both legs run on the factory's reactor."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> Call:
        return Call(self._clock.callLater(delay, func, *args, **kw))


@implementer(IPushProducer)
class Reader:
    """A leg's transport as the producer for the other leg's transport: a full write buffer
    on one side pauses reading on the other, and starts the send timeout of the side whose
    buffer it is (`sending`). Unlike the transport itself, it does not close the connection
    when the consumer's ends (stopProducing): the relay closes each side itself, with a close
    frame."""

    def __init__(self, transport: Transport, sending: SendTimeout | None = None) -> None:
        self._transport = transport
        self._sending = sending

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()
        if self._sending is not None:
            self._sending.paused()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()
        if self._sending is not None:
            self._sending.resumed()

    def stopProducing(self) -> None:
        """The consumer is gone; this side closes on the relay's word."""


class Listener(Protocol):
    """What a BackendAttempt uses of the listener's factory (proxyd.relay.websocket's
    WebSocketRelayFactory)."""

    @property
    def config(self) -> WebSocketListenerConfig: ...

    @property
    def reactor(self) -> ConnectingReactor: ...

    @property
    def timer(self) -> ReactorTimer: ...

    @property
    def client_tls(self) -> ClientTls | None: ...


class LegRelay(Protocol):
    """What the legs hand autobahn's callbacks to: the Relay of proxyd.relay.websocket, which
    decides."""

    @property
    def factory(self) -> Listener: ...

    @property
    def config(self) -> WebSocketListenerConfig: ...

    def admit(self, request: ConnectionRequest) -> Deferred[Any]: ...

    def backend_request(self, key: str) -> bytes: ...

    def client_open(self) -> None: ...

    def message(self, side: Side, payload: bytes, is_binary: bool) -> None: ...

    def close_frame(self, side: Side, code: int | None, reason: str | None) -> None: ...

    def leg_failed(self, side: Side, code: int | None) -> None: ...

    def client_failing(self, code: int, reason: str) -> bool: ...

    def close_answered(self, side: Side) -> None: ...

    def ping_timed_out(self, side: Side) -> None: ...

    def leg_closed(self, side: Side, code: int | None, reason: str | None) -> None: ...


class RelayMaker(Protocol):
    """What a client's leg uses of its factory (proxyd.relay.websocket's
    WebSocketRelayFactory)."""

    def new_relay(self, client: ClientLeg) -> LegRelay: ...


def accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """permessage_deflate = on: accept the client's first permessage-deflate offer."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def refuse_compression(offers: list[Any]) -> None:
    return None


class Leg(WebSocketProtocol):
    """What both legs do: hand autobahn's callbacks to the Relay, tell proxyd's own closes
    from autobahn's (a protocol error, a message too big) and from the peer's."""

    side: Side
    transport: Any
    relay: LegRelay | None = None
    log = QUIET
    _relay_closing = False
    """The close frame being sent is the relay's (close_with), not autobahn's own."""
    _failing: tuple[int, str] | None = None

    def close_with(self, code: int | None, reason: str | None) -> None:
        """Start the closing handshake with `code` and `reason` (no code: an empty close)."""
        if self.state == OPEN:
            self._relay_closing = True
            self.sendCloseFrame(code, close_reason_bytes(reason) if code is not None else None)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        failing = not isReply and not self._relay_closing and self.state == OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if failing and self.relay is not None:
            self.relay.leg_failed(self.side, code)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        from_peer = self.state == OPEN  # not the answer to a close of ours
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


class ClientLeg(Leg, WebSocketServerProtocol):  # type: ignore[misc]
    side = Side.CLIENT
    factory: RelayMaker
    _skipping = False
    """fail_now() is reading the frame that failed the connection again (see
    _skip_failed_frame)."""
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
        if relay is None or self.state != OPEN or not relay.client_failing(code, reason):
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
        if self._skip_failed_frame():
            return False
        if self._defer_failure(PROTOCOL_ERROR, reason):
            return True  # stop processing the frame and what follows it
        return bool(super()._protocol_violation(reason))

    def _invalid_payload(self, reason: str) -> bool:
        if self._skip_failed_frame():
            return False
        if self._defer_failure(INVALID_PAYLOAD, reason):
            return True
        return bool(super()._invalid_payload(reason))

    def _skip_failed_frame(self) -> bool:
        """fail_now() parses the frame that failed the connection again: it is skipped, as
        autobahn skips it when it fails at once, so that the frames after it are read in step
        and the client's answer to the close is found."""
        skip, self._skipping = self._skipping, False
        return skip

    def processData(self) -> bool:
        if self._failing is not None:
            return False
        return bool(super().processData())

    def fail_now(self) -> None:
        """Fail the connection as autobahn asked before. What the client sent from the frame
        that failed on is read on, frame by frame, in the closing state (messages are no
        longer relayed), so that its answer to the close is found: dropping the bytes buffered
        would leave the parser in the middle of a frame when the client's frames come in
        pieces, and the close could be read as part of one."""
        failing, self._failing = self._failing, None
        if failing is not None and self.state == OPEN:
            super()._fail_connection(*failing)
            self._skipping = True
            self.consumeData()
            self._skipping = False
            cast(Transport, self.transport).resumeProducing()

    def connectionMade(self) -> None:
        self.relay = self.factory.new_relay(self)
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


class BackendLeg(Leg, WebSocketClientProtocol):  # type: ignore[misc]
    side = Side.SERVER
    attempt: BackendAttempt
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
        self.attempt.opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.opened:
            if self.relay is not None:
                self.relay.leg_closed(Side.SERVER, code, reason)
            return
        if self.attempt.relay is not None:
            self.attempt.refused(Failed(self._why_refused(), self._refusal_kind()))

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

    def _refusal_kind(self) -> ErrorKind:
        if self.lost_reason is not None and describe_failure(self.lost_reason):
            return ErrorKind.TLS_FAILED
        return ErrorKind.HANDSHAKE_FAILED


class BackendAttempt(WebSocketClientFactory):  # type: ignore[misc]
    """One attempt at a server: connect, then proxyd's opening handshake. `result` fires with
    the leg once the server answered 101, or fails (a connect error, or AttemptError with the
    refusal); cancelling it drops the attempt. `relay` is None once it is over."""

    protocol = BackendLeg
    noisy = False
    log = QUIET

    def __init__(self, relay: LegRelay, server: Server, protocols: list[str]) -> None:
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
        self.relay: LegRelay | None = relay
        self.server = server
        self.leg: BackendLeg | None = None
        self.connector: Connector | None = None
        self.result: Deferred[BackendLeg] = Deferred(self._cancel)

    def connect(self, reactor: ConnectingReactor, tls: ClientTls | None, timeout: float) -> None:
        factory: Any = self
        address = self.server.address
        if tls is not None:
            factory = tls.wrap(self, address.host, cast(IReactorTime, reactor))
        connector = reactor.connectTCP(address.host, address.port, factory, timeout=timeout)
        if not self.result.called:  # a synchronous failure may have ended it already
            self.connector = connector

    def buildProtocol(self, addr: IAddress | None) -> BackendLeg | None:
        if self.relay is None:
            return None  # Twisted then closes the late connection
        leg = cast(BackendLeg, super().buildProtocol(addr))
        leg.attempt = self
        self.leg = leg
        return leg

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.relay is not None:
            self.relay = None
            self.result.errback(reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        """The leg's onClose has already told the relay."""

    def opened(self, leg: BackendLeg) -> None:
        """The server answered 101."""
        if not self.result.called:
            self.result.callback(leg)

    def refused(self, failed: Failed) -> None:
        """The connection ended before a 101."""
        self.relay = None
        if not self.result.called:
            self.result.errback(AttemptError(failed))

    def _cancel(self, result: Deferred[BackendLeg]) -> None:
        self.relay = None
        leg, connector = self.leg, self.connector
        if leg is not None and leg.transport is not None:
            cast(Transport, leg.transport).abortConnection()
        elif connector is not None:
            with contextlib.suppress(twisted_error.NotConnectingError):
                connector.stopConnecting()
