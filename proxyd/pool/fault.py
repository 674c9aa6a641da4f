"""Whose fault a failed attempt at a server is (design principle 12: blame only the guilty).

A pool's passive health (`max_fails`, ejection) and the health checks must count only what
the server did: it refused, did not answer in time, reset, failed its TLS handshake or sent
garbage. A connect that proxyd cancelled because its client left, or one that failed because
proxyd ran out of a local resource (file descriptors, ephemeral ports, buffer memory), says
nothing about the server: counting it would let any anonymous client, or a busy moment of
proxyd's own, eject healthy servers.
"""

from __future__ import annotations

import errno
from enum import Enum
from typing import Final

from twisted.internet import defer, error
from twisted.python.failure import Failure

__all__ = ["LOCAL_ERRNOS", "Fault", "fault_of"]


class Fault(Enum):
    SERVER = "server"
    """The server's doing: count it against the server."""
    LOCAL = "local"
    """proxyd's own resources ran out: answer an error, but never blame the server."""
    CANCELLED = "cancelled"
    """proxyd gave the attempt up (its client left, a timer of its own): nothing to count."""


LOCAL_ERRNOS: Final = frozenset(
    {
        errno.EMFILE,  # this process's file descriptor limit
        errno.ENFILE,  # the system's
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,  # no ephemeral port left for the connect
        errno.EADDRINUSE,
        errno.EAGAIN,  # connect(): no ephemeral port (Linux, for some socket kinds)
    }
)
"""Errors from socket(), bind() or connect() that describe this host, not the server."""


def _errno(value: BaseException) -> int | None:
    if isinstance(value, error.ConnectError):
        os_error = value.osError
        if isinstance(os_error, int):
            return os_error
        if isinstance(os_error, OSError):
            return os_error.errno
        return None
    if isinstance(value, error.CannotListenError):  # listenUDP(0) of a UDP check
        value = value.socketError
    if isinstance(value, OSError):
        return value.errno
    return None


def fault_of(failure: Failure | BaseException) -> Fault:
    """Who caused a failed connect (or connection) to a server.

    Twisted reports a connect that proxyd stopped (`connector.stopConnecting()`) as UserError
    and a cancelled Deferred as CancelledError; a socket() or bind() that failed (EMFILE, say)
    as ConnectBindError; other connect errors carry their errno.
    """
    value = failure.value if isinstance(failure, Failure) else failure
    if value is None:
        return Fault.SERVER
    # Twisted's connect TimeoutError (the server never answered) subclasses UserError.
    if type(value) is error.UserError or isinstance(
        value, defer.CancelledError | error.ConnectingCancelledError
    ):
        return Fault.CANCELLED
    if isinstance(value, error.ConnectBindError):
        return Fault.LOCAL
    number = _errno(value)
    if number is not None and number in LOCAL_ERRNOS:
        return Fault.LOCAL
    return Fault.SERVER
