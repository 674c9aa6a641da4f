"""`check = tls [http ...]`: a TLS handshake that verifies the server's certificate as the
pool's `tls_*` keys say, then optionally an HTTP check over the TLS connection. The HTTP
checks of a `tls = on` pool come here too (the loader makes them TlsChecks)."""

from __future__ import annotations

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
    why = describe_failure(reason)
    if why is None:
        why = "connection closed" if "Done" in type(reason.value).__name__ else "connection reset"
    return CheckFailed(f"TLS handshake failed: {why}")


@implementer(IHandshakeListener)
class HandshakeCheckProtocol(CheckProtocol):
    """Passes once the handshake (and so the certificate's verification) is done."""

    waiting_for = _HANDSHAKE

    def handshakeCompleted(self) -> None:
        if not getattr(self.transport, "disconnecting", False):
            self.succeed()

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        return _handshake_failure(reason)


@implementer(IHandshakeListener)
class TlsHttpCheckProtocol(HttpCheckProtocol):
    """The HTTP check over TLS: its request waits in the TLS layer until the handshake ends."""

    waiting_for = _HANDSHAKE
    handshaken = False

    def handshakeCompleted(self) -> None:
        if not getattr(self.transport, "disconnecting", False):
            self.handshaken = True
            self.waiting_for = "response headers"

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        if not self.handshaken:
            return _handshake_failure(reason)
        return super().closed_result(reason)


@register(TlsCheck)
def check_tls(
    reactor: CheckReactor, address: Address, check: TlsCheck, timeout: float
) -> Deferred[None]:
    tls = _client_tls(check.tls)
    clock: IReactorTime = reactor  # type: ignore[assignment]

    def wrap(factory: ClientFactory) -> Any:
        return tls.wrap(factory, address.host, clock)

    http = check.http
    if http is None:
        return connect_and_check(reactor, address, timeout, HandshakeCheckProtocol, wrap)
    host = http.host if http.host is not None else str(address)
    return connect_and_check(
        reactor, address, timeout, lambda: TlsHttpCheckProtocol(http, host), wrap
    )
