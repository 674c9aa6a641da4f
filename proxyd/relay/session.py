"""What every relay decides about a connection, without I/O: how it ended, the access-log
record, connect attempts and the idle timer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

import attrs
from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from proxyd.clock import Clock, Deadline
from proxyd.config.model import Address
from proxyd.pool import Server

__all__ = [
    "Attempts",
    "CloseReason",
    "ConnectionRecord",
    "IdleTimer",
    "Side",
    "close_reason",
]


class Side(StrEnum):
    """A str enum: it hashes as its str, in C (an Enum's hash is Python code, and the splice
    looks its legs up by side on every read)."""

    CLIENT = "client"
    SERVER = "server"


class CloseReason(StrEnum):
    """How a connection ended, as the access log's `close` field says it."""

    CLIENT_CLOSED = "client_closed"
    SERVER_CLOSED = "server_closed"
    CLIENT_RESET = "client_reset"
    SERVER_RESET = "server_reset"
    IDLE_TIMEOUT = "idle_timeout"
    CLIENT_STALLED = "client_stalled"
    """The client took none of what waited for it (it stopped reading) for idle_timeout: both
    sides were reset."""
    SERVER_STALLED = "server_stalled"
    """The server took none of what waited for it for idle_timeout: both sides were reset."""
    CONNECT_FAILED = "connect_failed"
    NO_SERVER = "no_server"
    MAX_CONNECTIONS = "max_connections"
    BAD_PROXY_HEADER = "bad_proxy_header"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    """The client's TLS handshake failed or did not finish in time (TLS termination)."""
    BAD_CLIENT_HELLO = "bad_client_hello"
    """route_by = sni: what the client sent first was not a TLS ClientHello."""
    NO_ROUTE = "no_route"
    """route_by = sni: no route for the client's server name and no default pool."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """The PROXY header or the ClientHello did not arrive within handshake_timeout."""
    SHUTDOWN = "shutdown"
    """proxyd was stopping: a client still queued for admission when the drain began, or a
    connection still open when the drain time ran out."""
    ACCESS_DENIED = "access_denied"
    """The listener's `access` list refused the client's address: closed as it was accepted
    (after its PROXY header, with accept_proxy), nothing sent."""
    CLIENT_LIMIT = "client_limit"
    """The client's address was at max_connections_per_client or over
    max_connection_rate_per_client: closed as it was accepted, nothing sent."""


def close_reason(side: Side, reason: Failure | None) -> CloseReason:
    """The close reason for `side` ending first: a FIN (reason None) or a connection loss.

    Only ConnectionDone is a clean close; anything else (ConnectionLost, ConnectionReset,
    a write error) is a reset.
    """
    clean = reason is None or reason.check(error.ConnectionDone) is not None
    if side is Side.CLIENT:
        return CloseReason.CLIENT_CLOSED if clean else CloseReason.CLIENT_RESET
    return CloseReason.SERVER_CLOSED if clean else CloseReason.SERVER_RESET


@attrs.define
class Attempts:
    """Connect attempts for one client: the servers tried, and whether another try is allowed."""

    retries: int
    tried: list[Server] = attrs.Factory(list)

    @property
    def count(self) -> int:
        return len(self.tried)

    def record(self, server: Server) -> None:
        self.tried.append(server)

    def may_try_another(self) -> bool:
        """The first attempt, then `retries` more."""
        return self.count <= self.retries


def iso_utc(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@attrs.define
class ConnectionRecord:
    """One connection's access-log record, filled in as it goes. The first reason set wins:
    a FIN from the client then a FIN from the server is `client_closed`."""

    listener: str
    started: float
    client: Address | None = None
    backend: Address | None = None
    bytes_in: int = 0
    """Client to server."""
    bytes_out: int = 0
    """Server to client."""
    connect_attempts: int = 0
    reason: CloseReason | None = None
    tls_version: str | None = None
    """TLS termination: the client's TLS version."""
    sni: str | None = None
    """The server name of the client's TLS hello (termination or route_by = sni)."""

    def close_as(self, reason: CloseReason) -> None:
        if self.reason is None:
            self.reason = reason

    def as_log(self, ended: float) -> dict[str, object]:
        return {
            "time": iso_utc(self.started),
            "listener": self.listener,
            "client": None if self.client is None else str(self.client),
            "backend": None if self.backend is None else str(self.backend),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration": round(max(0.0, ended - self.started), 3),
            "connect_attempts": self.connect_attempts,
            "close": str(self.reason or CloseReason.CLIENT_CLOSED),
            **({"tls_version": self.tls_version} if self.tls_version is not None else {}),
            **({"sni": self.sni} if self.sni is not None else {}),
        }


class IdleTimer:
    """Calls `on_idle` once nothing was touched for `timeout` seconds; 0 disables it.

    `touch()` only pushes the deadline back (proxyd.clock.Deadline): its one delayed call
    re-arms itself for the rest when there was activity, instead of rescheduling on every
    chunk.
    """

    __slots__ = ("_clock", "_deadline", "_timeout")

    def __init__(self, clock: IReactorTime, timeout: float, on_idle: Callable[[], None]) -> None:
        self._clock = cast(Clock, clock)
        self._timeout = timeout
        self._deadline = Deadline(self._clock, on_idle)

    def start(self) -> None:
        self._deadline.cancel()
        if self._timeout > 0:
            self._deadline.set_in(self._timeout)

    def touch(self) -> None:
        deadline = self._deadline
        if deadline.at is not None:
            deadline.set_at(self._clock.seconds() + self._timeout)

    def cancel(self) -> None:
        self._deadline.cancel()

    def release(self) -> None:
        """Cancel for good and let go of `on_idle` (a bound method of the owner: a reference
        cycle, else, for the garbage collector)."""
        self._deadline.release()
