"""The metrics of the HTTP/2 connections to the servers (pools with `protocol = h2` or
`h2c`), per pool and server: the connections and streams open now, the streams opened, and
the streams that ended before their response's end, by why.

A connection finds its server's H2ServerCounts once, when it is made; it and its streams
then count with attribute arithmetic (no lookup, no label string per request). The process
keeps them in one H2Metrics, by pool and server name, across reloads: a pool rebuilt by a
reload counts on in the same place, and so do the connections of the one it replaced while
they finish. The snapshot is JSON-able and adds up across worker processes
(proxyd.metrics.add_counters):

    {POOL: {SERVER: {"connections": n, "streams": n, "streams_total": n,
                     "resets": {REASON: n}}}}
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RESET_REASONS", "H2Metrics", "H2PoolCounts", "H2ServerCounts"]

RESET_REASONS: Final = ("refused", "goaway", "server_reset", "cancelled", "connection_lost")
"""Why a stream ended before its response's end (the H2ServerCounts fields of the same
names): the server refused it (REFUSED_STREAM), it was above the last stream id of the
server's GOAWAY, the server reset it with another code, proxyd reset it (CANCEL: the client
left, a timeout), or its connection was lost. A stream reset once its response is whole (the
rest of a request body the server no longer reads, RFC 9113 8.1) is none of these."""


class H2ServerCounts:
    """One server's HTTP/2 connections and streams."""

    __slots__ = (
        "cancelled",
        "connection_lost",
        "connections",
        "goaway",
        "refused",
        "server_reset",
        "streams",
        "streams_total",
    )

    def __init__(self) -> None:
        self.connections = 0
        """Connections open now, from the handshake done (with TLS: ALPN h2) to the close."""
        self.streams = 0
        """Streams open now: from their HEADERS sent until proxyd is done with them."""
        self.streams_total = 0
        self.refused = 0
        self.goaway = 0
        self.server_reset = 0
        self.cancelled = 0
        self.connection_lost = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "streams": self.streams,
            "streams_total": self.streams_total,
            "resets": {reason: getattr(self, reason) for reason in RESET_REASONS},
        }


class H2PoolCounts:
    """The counts of one pool's servers, by server name."""

    def __init__(self) -> None:
        self.servers: dict[str, H2ServerCounts] = {}

    def server(self, name: str) -> H2ServerCounts:
        """The counts of the server `name`, made when first asked for."""
        found = self.servers.get(name)
        if found is None:
            found = self.servers[name] = H2ServerCounts()
        return found


class H2Metrics:
    """The process's HTTP/2 upstream counts, by pool name."""

    def __init__(self) -> None:
        self._pools: dict[str, H2PoolCounts] = {}

    def pool(self, name: str) -> H2PoolCounts:
        """The counts of the pool `name`, made when first asked for."""
        found = self._pools.get(name)
        if found is None:
            found = self._pools[name] = H2PoolCounts()
        return found

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            pool: {server: counts.snapshot() for server, counts in found.servers.items()}
            for pool, found in self._pools.items()
        }
