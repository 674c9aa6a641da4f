"""A connect to a server for a relay whose own protocol takes the connection over (the TCP
relay): `dial()` is the connect function its AttemptDriver (proxyd.relay.attempt) calls.

Over TLS the connection is usable only once its handshake is done and the certificate
verified; connect_timeout bounds the TCP connect and the handshake together. The protocol
tells its Dial what happens to it until then (`made`, `handshake_done`, `lost`): a loss
before the connection was usable is the dial's failure, not a loss of the relay's server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ILoggingContext, IProtocolFactory, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import classImplements

from proxyd.clock import Clock, DelayedCall
from proxyd.metrics import ErrorKind
from proxyd.pool import Server
from proxyd.relay.attempt import AttemptError, Failed
from proxyd.relay.io import ConnectingReactor, Connector, Transport
from proxyd.tls import ClientTls

__all__ = ["Dial", "dial"]

P = TypeVar("P")


class Dial(Generic[P]):
    """One connect: `result` fires with the protocol `build` made once the connection is
    usable, or fails (Twisted's connect errors, a TLS error, AttemptError for a
    connect_timeout run out); cancelling it stops the connect or aborts the handshake.

    A client factory of its own (IProtocolFactory and ClientFactory's methods) rather than a
    subclass of Twisted's ClientFactory, so that mypyc compiles it as a native class
    (docs/performance.md, "Compiled modules")."""

    def __init__(
        self, clock: Clock, build: Callable[[Dial[P]], P], tls: bool, timeout: float
    ) -> None:
        self.clock = clock
        self.build = build
        self.tls = tls
        self.timeout = timeout
        self.result: Deferred[P] = Deferred(self._cancel)
        self.connector: Connector | None = None
        self.built: P | None = None
        self.ready = False
        self._handshaking: Transport | None = None
        self._timer: DelayedCall | None = None
        self._stopping = False

    def start(self, reactor: ConnectingReactor, server: Server, factory: object) -> None:
        address = server.address
        if self.tls and self.timeout > 0:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)
        connector = reactor.connectTCP(
            address.host, address.port, cast(ClientFactory[Any], factory), timeout=self.timeout
        )
        if not self.result.called:  # a synchronous failure may have ended it already
            self.connector = connector

    # Twisted's ClientFactory, for its connector (and a TLS wrapper's).

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def startedConnecting(self, connector: Any) -> None:
        pass

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return type(self).__name__

    def buildProtocol(self, addr: IAddress | None) -> P | None:
        if self.result.called:
            return None  # given up on: Twisted closes the late connection
        self.built = self.build(self)
        return self.built

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.result.called and not self._stopping:
            self._fail(reason)

    # Called by the protocol.

    def made(self, transport: Transport) -> None:
        """connectionMade: usable now, or over TLS once the handshake is done."""
        if not self.tls:
            self._ready()
        else:
            self._handshaking = transport

    def handshake_done(self) -> bool:
        """handshakeCompleted (its certificate verified): False when given up on already,
        the connection then aborted."""
        if self.result.called:
            if self._handshaking is not None:
                self._handshaking.abortConnection()
            return False
        self._ready()
        return True

    def lost(self, reason: Failure) -> bool:
        """connectionLost: True when the connection never became usable (the dial's failure,
        nothing for the relay), False once it did (the relay's server is gone)."""
        if self.ready:
            return False
        self._handshaking = None
        if not self.result.called:
            self._fail(reason)
        return True

    # Internals.

    def _ready(self) -> None:
        self._cancel_timer()
        self.ready = True
        self._handshaking = None
        assert self.built is not None
        self.result.callback(self.built)

    def _fail(self, reason: Failure | BaseException) -> None:
        self._cancel_timer()
        self.result.errback(reason)

    def _timed_out(self) -> None:
        self._timer = None
        what = "connect" if self._handshaking is None else "TLS handshake"
        why = f"{what} not done within connect_timeout {self.timeout:g}s"
        # Failed first, stopped after: the stopped connect's own failure then finds it over.
        self._fail(AttemptError(Failed(why, ErrorKind.CONNECT_TIMEOUT, 504)))
        self._stop()

    def _cancel(self, result: Deferred[P]) -> None:
        self._cancel_timer()
        self._stop()

    def _stop(self) -> None:
        self._stopping = True
        handshaking, self._handshaking = self._handshaking, None
        if handshaking is not None:
            handshaking.abortConnection()
        elif self.connector is not None:
            with contextlib.suppress(error.NotConnectingError):
                self.connector.stopConnecting()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def dial(
    reactor: ConnectingReactor,
    server: Server,
    build: Callable[[Dial[P]], P],
    *,
    tls: ClientTls | None,
    timeout: float,
) -> Deferred[P]:
    """Connect to `server` (over TLS with `tls`) within `timeout`; `build` makes the
    protocol, which reports to the Dial it is given (see Dial.made, handshake_done, lost)."""
    attempt: Dial[P] = Dial(reactor, build, tls is not None, timeout)
    factory: object = attempt
    if tls is not None:
        factory = tls.wrap(attempt, server.address.host, cast(IReactorTime, reactor))
    attempt.start(reactor, server, factory)
    return attempt.result


classImplements(Dial, IProtocolFactory, ILoggingContext)
