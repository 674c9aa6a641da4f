"""`check = tls [http ...]`: a TLS handshake that verifies the server's certificate as the
pool's `tls_*` keys say, then optionally an HTTP check over the TLS connection. The HTTP
checks of a `tls = on` pool come here too (the loader makes them TlsChecks)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.config.model import Address, TlsCheck, TlsClientConfig
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
)
from proxyd.health.http import HttpCheckProtocol
from proxyd.tls import ClientTls, describe_failure

_HANDSHAKE = "the TLS handshake"


@lru_cache(maxsize=256)
def _client_tls(config: TlsClientConfig) -> ClientTls:
    """One TLS context per pool setting: loading a CA bundle at every check would be costly."""
    return ClientTls("health check", config)


def _handshake_failure(reason: Failure) -> CheckFailed:
    # Twisted reports a close during the handshake, FIN or RST, as ConnectionLost.
    why = describe_failure(reason) or "connection closed by server"
    return CheckFailed(f"TLS handshake failed: {why}")


def _verification_failed(protocol: CheckProtocol) -> bool:
    """At handshakeCompleted: the TLS layer is already closing because the certificate was
    refused; connectionLost will say why."""
    return bool(getattr(protocol.transport, "disconnecting", False))


@implementer(IHandshakeListener)
class HandshakeCheckProtocol(CheckProtocol):
    """Passes once the handshake is done and the server has taken proxyd's close_notify
    without an alert.

    In TLS 1.3 the client's handshake ends when it sends its last flight, its certificate
    with its Finished (RFC 8446 2, figure 1), before the server has judged that certificate:
    a refusal such as `tlsv1 alert unknown ca` arrives only after handshakeCompleted. The server's
    answer to close_notify (its own close_notify, or a close) shows there was none. A server
    that answers nothing until the timeout still passes: its certificate was verified.
    """

    waiting_for = _HANDSHAKE
    handshaken = False

    def handshakeCompleted(self) -> None:
        if _verification_failed(self):
            return
        self.handshaken = True
        self.connection.loseConnection()  # sends close_notify, then waits for the server's

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        if self.handshaken and describe_failure(reason) is None:
            return None
        return _handshake_failure(reason)

    def timeout_result(self, timeout: str) -> CheckFailed | None:
        if self.handshaken:
            return None
        return super().timeout_result(timeout)


@implementer(IHandshakeListener)
class TlsHttpCheckProtocol(HttpCheckProtocol):
    """The HTTP check over TLS: the request written at connectionMade waits in the TLS layer
    until the handshake is done."""

    waiting_for = _HANDSHAKE
    handshaken = False
    answered = False
    """Some of the response has arrived."""

    def handshakeCompleted(self) -> None:
        if not _verification_failed(self):
            self.handshaken = True
            self.waiting_for = "response headers"

    def dataReceived(self, data: bytes) -> None:
        self.answered = True
        super().dataReceived(data)

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        why = describe_failure(reason)
        if not self.handshaken or (why is not None and not self.answered):
            # Under TLS 1.3 a refused client certificate is alerted after our handshake ends.
            return _handshake_failure(reason)
        if why is not None:
            return CheckFailed(f"TLS error: {why}")
        return super().closed_result(reason)


def connect_over_tls(
    reactor: CheckReactor,
    address: Address,
    timeout: float,
    build: Callable[[], CheckProtocol],
    config: TlsClientConfig,
) -> Deferred[None]:
    """connect_and_check through a TLS layer that verifies the server as `config` says; what
    the protocol writes at connect waits in that layer until the handshake is done."""
    tls = _client_tls(config)
    clock: IReactorTime = reactor  # type: ignore[assignment]

    def wrap(factory: ClientFactory) -> Any:
        return tls.wrap(factory, address.host, clock)

    return connect_and_check(reactor, address, timeout, build, wrap)


@register(TlsCheck)
def check_tls(
    reactor: CheckReactor, address: Address, check: TlsCheck, timeout: float
) -> Deferred[None]:
    http = check.http
    if http is None:
        return connect_over_tls(reactor, address, timeout, HandshakeCheckProtocol, check.tls)
    host = http.host if http.host is not None else str(address)
    return connect_over_tls(
        reactor, address, timeout, lambda: TlsHttpCheckProtocol(http, host), check.tls
    )
