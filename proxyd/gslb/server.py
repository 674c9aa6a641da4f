"""The thin protocols of a `[gslb NAME]` (docs/gslb.md): a DatagramProtocol for UDP and a
length-prefixed TCP Protocol (RFC 1035 4.2.2, RFC 7766), both passing each query to the
sans-IO Zone (proxyd.gslb.answers) with the pools' healthy servers (proxyd.gslb.view)."""

from __future__ import annotations

import struct
from typing import Any, Final, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from proxyd.clock import DelayedCall
from proxyd.config.gslb_model import GslbConfig
from proxyd.gslb.answers import TCP_MAX, UDP_MIN, Reply, Zone
from proxyd.gslb.view import HealthyView
from proxyd.metrics import RelayStats
from proxyd.relay.factory import Counts
from proxyd.tls import ServerTls

__all__ = ["RCODES", "Gslb", "GslbDatagram", "GslbStreamFactory", "gslb_counts", "stream_counts"]

RCODES: Final = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS")
"""The rcodes a [gslb] answers with: proxyd_gslb_queries' `rcode` label."""


class Gslb:
    """What the UDP and TCP sides of one [gslb] share: its zone, the healthy servers of its
    pools, and its counters."""

    def __init__(self, reactor: Any, config: GslbConfig, zone: Zone, view: HealthyView) -> None:
        self.reactor = reactor
        self.config = config
        self.zone = zone
        self.view = view
        self.rcodes = dict.fromkeys(RCODES, 0)
        """Answers sent, by rcode (UDP and TCP)."""
        self.malformed = 0
        """Datagrams or messages not answered: shorter than a header, or responses."""
        self.truncated = 0
        """UDP answers sent with TC (too big for the client's payload size)."""
        self.stats = RelayStats("gslb", config.name)

    def answer(self, wire: bytes, client: str, limit: int) -> bytes | None:
        reply: Reply = self.zone.answer(wire, client, limit, self.view)
        if reply.rcode is None:
            self.malformed += 1
            return None
        self.rcodes[reply.rcode] = self.rcodes.get(reply.rcode, 0) + 1
        self.truncated += reply.truncated
        return reply.wire


def gslb_counts(gslb: Gslb) -> Counts:
    return Counts(
        totals={
            **{f"gslb_{rcode}": count for rcode, count in gslb.rcodes.items()},
            "malformed": gslb.malformed,
            "gslb_truncated": gslb.truncated,
        }
    )


class GslbDatagram(DatagramProtocol):
    """The UDP side: each datagram is a query, answered at once to its source."""

    noisy = False

    def __init__(self, gslb: Gslb) -> None:
        self.gslb = gslb
        self.stats = gslb.stats

    @property
    def config(self) -> GslbConfig:
        return self.gslb.config

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        answer = self.gslb.answer(datagram, addr[0], UDP_MIN)
        if answer is not None and self.transport is not None:
            cast(Any, self.transport).write(answer, addr)

    def stop(self) -> None:
        """The listener is replaced or stopped: stop following the pools."""
        self.gslb.view.close()


class GslbStream(Protocol):
    """One TCP client: two-byte length-prefixed queries, pipelined or split anyhow, each
    answered in turn; closed when idle for idle_timeout, or after max_queries_per_connection
    answers."""

    def __init__(self, factory: GslbStreamFactory, client: str) -> None:
        self.factory = factory
        self.client = client
        self.buffer = b""
        self.answered = 0
        self.timer: DelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self._idle_from_now()

    def _idle_from_now(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        reactor = self.factory.gslb.reactor
        self.timer = reactor.callLater(self.factory.gslb.config.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.timer = None
        cast(Any, self.transport).loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # closing after its last answer: what follows is not read
        self.buffer += data
        self._idle_from_now()
        transport = cast(Any, self.transport)
        while len(self.buffer) >= 2 and transport is not None:
            (size,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + size:
                return
            message, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            answer = self.factory.gslb.answer(message, self.client, TCP_MAX)
            if answer is None:
                transport.loseConnection()  # not a query: the stream cannot be trusted
                return
            transport.write(struct.pack("!H", len(answer)) + answer)
            self.answered += 1
            if (
                self.answered >= self.factory.gslb.config.max_queries_per_connection
                or self.factory.draining
            ):
                self.buffer = b""
                transport.loseConnection()
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.factory.lost(self)


class GslbStreamFactory(Factory):
    """The TCP side's factory (a RelayFactory for the listeners, proxyd.relay.factory): at
    most max_connections clients at once (more are closed at accept)."""

    noisy = False

    def __init__(self, gslb: Gslb) -> None:
        self.gslb = gslb
        self.stats = gslb.stats
        self.connections: set[GslbStream] = set()
        self.refused = 0
        """Connections closed at accept: max_connections were open."""
        self.draining = False
        self._drained: Deferred[None] | None = None

    @property
    def tls(self) -> ServerTls | None:
        return None

    @property
    def active(self) -> int:
        return len(self.connections)

    def set_listening_port(self, port: IListeningPort) -> None:
        """Nothing to learn from the port."""

    def buildProtocol(self, addr: IAddress | None) -> GslbStream | None:
        if self.draining or len(self.connections) >= self.gslb.config.max_connections:
            self.refused += 1
            return None
        host = getattr(addr, "host", "")
        protocol = GslbStream(self, host)
        protocol.factory = self
        return protocol

    def lost(self, protocol: GslbStream) -> None:
        self.connections.discard(protocol)
        if self._drained is not None and not self.connections and not self._drained.called:
            self._drained.callback(None)

    def drain(self) -> Deferred[None]:
        """Stopping or replaced: no new connection; those open close after their next
        answer, or now when waiting for a query (every one between two queries is idle)."""
        self.draining = True
        if not self.connections:
            return succeed(None)
        self._drained = Deferred()
        for protocol in list(self.connections):
            if not protocol.buffer and protocol.transport is not None:
                cast(Any, protocol.transport).loseConnection()
        return self._drained

    def close_all(self) -> None:
        for protocol in list(self.connections):
            if protocol.transport is not None:
                cast(Any, protocol.transport).abortConnection()


def stream_counts(factory: GslbStreamFactory) -> Counts:
    return Counts({"active": factory.active}, {"dropped_connections": factory.refused})
