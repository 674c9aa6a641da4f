"""What the listeners and the service tree (proxyd.listeners, proxyd.app) use of a relay,
declared as typing.Protocols so that mypy checks every relay where it is handed over.

A stream relay (TcpRelayFactory, HttpRelayFactory, WebSocketRelayFactory) is a RelayFactory:
a Twisted protocol factory, told its listening port, with the TLS it listens through, its
metrics (`stats`), and its lifetime: `drain()` at a stop, `retire()` when a reload replaced it
(Retiring; a relay without one is retired as it is drained), `close_all()` when the drain time
is up. A datagram relay (UdpListener, DnsListener) has only the metrics.

Each relay kind counts its connections or sessions under its own names; its *_counts
function reads them as Counts: the gauges (open now, still counted for a relay a reload
replaced) and the totals (which only grow, carried on to the relay that replaces it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IListeningPort

from proxyd.metrics import RelayStats
from proxyd.tls import ServerTls

__all__ = [
    "Counted",
    "Counts",
    "DnsCounted",
    "HttpCounted",
    "Inheriting",
    "Listening",
    "ProtocolFactory",
    "RelayFactory",
    "Retiring",
    "TcpCounted",
    "UdpCounted",
    "WebSocketCounted",
    "dns_counts",
    "http_counts",
    "tcp_counts",
    "udp_counts",
    "websocket_counts",
]


class ProtocolFactory(Protocol):
    """A Twisted protocol factory as a listening port uses it."""

    def buildProtocol(self, addr: IAddress | None) -> object:
        """The protocol of the connection accepted from `addr`, or None to close it."""
        ...

    def doStart(self) -> None: ...

    def doStop(self) -> None: ...

    def logPrefix(self) -> str: ...


class Listening(ProtocolFactory, Protocol):
    """The factory of a listener (a relay's, or the admin listener's): told its listening
    port once it has one (at a bind, an adopt, or a reload that handed it the socket)."""

    def set_listening_port(self, port: IListeningPort) -> None: ...


class Counted(Protocol):
    """Every relay: its metrics by route, pool and server (proxyd.metrics). A relay that
    replaces another at a reload records into the same `stats`."""

    stats: RelayStats


class RelayFactory(Listening, Counted, Protocol):
    """The listening factory of a stream relay."""

    @property
    def tls(self) -> ServerTls | None:
        """The TLS its port accepts through (None: plain TCP)."""
        ...

    def drain(self) -> Deferred[None]:
        """Stopping: admit nothing new, let what is open finish; fires once nothing is."""
        ...

    def close_all(self) -> None:
        """The drain time is up: close everything still open."""
        ...


@runtime_checkable
class Retiring(Protocol):
    """A relay that finishes differently when a reload replaced it than when proxyd stops
    (an HTTP connection closes after its next response)."""

    def retire(self) -> Deferred[None]:
        """Fires once its last connection is gone."""
        ...


@runtime_checkable
class Inheriting(Protocol):
    """A relay that carries state over from the relay it replaces at a reload (an HTTP
    relay's unchanged rate limits keep their tables)."""

    def take_over(self, old: object) -> None:
        """This relay replaces `old`, the relay of the listener of the same name."""
        ...


@attrs.frozen
class Counts:
    """A relay's counters by name, as the admin API and /metrics show them per listener."""

    gauges: Mapping[str, int] = attrs.field(factory=dict)
    """Open now: a relay a reload replaced still counts them until its last one ends."""
    totals: Mapping[str, int] = attrs.field(factory=dict)
    """Since the relay started: the relay replacing it at a reload goes on from them."""


class TcpCounted(Protocol):
    @property
    def active(self) -> int: ...


class WebSocketCounted(Protocol):
    @property
    def active(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def messages_in(self) -> int: ...
    @property
    def messages_out(self) -> int: ...


class HttpCounted(Protocol):
    @property
    def connections(self) -> int: ...
    @property
    def tunnels(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def tunnels_total(self) -> int: ...


class UdpCounted(Protocol):
    @property
    def sessions(self) -> Sized: ...
    @property
    def dropped_sessions(self) -> int: ...
    @property
    def dropped_oversized(self) -> int: ...
    @property
    def dropped_no_server(self) -> int: ...
    @property
    def dropped_denied(self) -> int: ...


class DnsCounted(Protocol):
    @property
    def malformed(self) -> int: ...
    @property
    def dropped_oversized(self) -> int: ...
    @property
    def dropped_no_server(self) -> int: ...
    @property
    def dropped_denied(self) -> int: ...
    @property
    def unmatched(self) -> int: ...
    @property
    def failed(self) -> int: ...


def tcp_counts(relay: TcpCounted) -> Counts:
    return Counts({"active": relay.active})


def websocket_counts(relay: WebSocketCounted) -> Counts:
    return Counts(
        {"active": relay.active},
        {
            "total": relay.total,
            "messages_in": relay.messages_in,
            "messages_out": relay.messages_out,
        },
    )


def http_counts(relay: HttpCounted) -> Counts:
    return Counts(
        {"connections": relay.connections, "tunnels": relay.tunnels},
        {"requests": relay.requests, "tunnels_total": relay.tunnels_total},
    )


def udp_counts(relay: UdpCounted) -> Counts:
    return Counts(
        {"sessions": len(relay.sessions)},
        {
            "dropped_sessions": relay.dropped_sessions,
            "dropped_oversized": relay.dropped_oversized,
            "dropped_no_server": relay.dropped_no_server,
            "dropped_denied": relay.dropped_denied,
        },
    )


def dns_counts(relay: DnsCounted) -> Counts:
    return Counts(
        totals={
            "malformed": relay.malformed,
            "dropped_oversized": relay.dropped_oversized,
            "dropped_no_server": relay.dropped_no_server,
            "dropped_denied": relay.dropped_denied,
            "unmatched": relay.unmatched,
            "failed": relay.failed,
        }
    )
