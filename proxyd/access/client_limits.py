"""Per-client limits for L4 listeners: connections open at once and new connections per
period from one source address (HAProxy's src_conn_cur and src_conn_rate), sans-IO.

The listener asks `admit(ip)` at accept and calls `release(ip)` when an admitted connection
closes; the clock is only read, never scheduled on, so there is nothing to stop.

Rate arithmetic: a token bucket per address holding up to `max_rate` tokens, refilled
continuously at `max_rate` tokens per `rate_period`; a new address starts full, and each
admitted connection takes one token. So a burst of max_rate connections (its integer part)
passes at once and the next is refused; one more passes every rate_period / max_rate after
that, and a whole burst again once the address has been quiet for rate_period. Sustained, an
address gets max_rate connections per rate_period; over any one rate_period it can get up to
2 x max_rate (a full bucket, then its refill), where a sliding window would allow max_rate:
the price of O(1) memory per address. Float rounding is absorbed by a tolerance of 1e-9 of a
token, so advancing the clock by exactly rate_period / max_rate always buys one connection.

Refused attempts take no token (HAProxy counts them in src_conn_rate): a client retrying
while refused gets in as soon as its sustained rate allows, instead of locking itself out,
and with it every client behind the same NAT address, for as long as it keeps retrying. A
refused attempt costs proxyd an accept and a close, which is what the limit already bounds.

Memory: an address with nothing open and a full bucket is forgotten (it is
indistinguishable from a new one). An address with nothing open but a bucket still filling is
kept, least recently seen first, and evicted (counted in `evicted`, its rate forgotten early)
when more than `max_tracked` addresses are tracked. An address with connections open is never
evicted, since losing its count would lift its connection limit; when the table is full of
such addresses a new one is tracked anyway, past max_tracked, and counted in `overflowed`.
That stays bounded, by the open connections (a file descriptor each), and keeps every limit
exact, where refusing would let the holders of max_tracked connections lock every new client
out, and admitting untracked would give a new address unlimited connections.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Protocol

MAX_CONNECTIONS: Final = "max_connections_per_client"
"""admit()'s answer when the address already has max_connections open."""
MAX_RATE: Final = "max_connection_rate_per_client"
"""admit()'s answer when the address has used its rate."""

_TOLERANCE: Final = 1e-9
"""Of a token: float rounding never refuses what exact arithmetic admits."""
_SWEEP: Final = 8
"""Forgettable addresses dropped per admit() at most, so no call does a long sweep."""


class Seconds(Protocol):
    """The part of IReactorTime that ClientLimits uses."""

    def seconds(self) -> float: ...


class _Client:
    """One tracked address: its open connections and its bucket's tokens at `stamp`."""

    __slots__ = ("open", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.open = 0
        self.tokens = tokens
        self.stamp = stamp


class ClientLimits:
    """Connections open and new connections per period, per source address, for one listener.

    `max_connections` None or `max_rate` None turns that limit off; with both off, admit()
    always admits and nothing is tracked. `tracked`, `evicted` and `overflowed` are for the
    metrics."""

    def __init__(
        self,
        clock: Seconds,
        *,
        max_connections: int | None,
        max_rate: float | None,
        rate_period: float = 1.0,
        max_tracked: int = 100_000,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if max_rate is not None and not max_rate >= 1:
            raise ValueError(f"max_rate must be at least 1, not {max_rate}")
        if not rate_period > 0:
            raise ValueError(f"rate_period must be positive, not {rate_period}")
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1, not {max_tracked}")
        self._clock = clock
        self.max_connections = max_connections
        self.max_rate = max_rate
        self.rate_period = rate_period
        self.max_tracked = max_tracked
        self._per_second = 0.0 if max_rate is None else max_rate / rate_period
        self._capacity = 0.0 if max_rate is None else float(max_rate)
        self._off = max_connections is None and max_rate is None
        self._open: dict[str, _Client] = {}
        """Addresses with connections open: never evicted."""
        self._idle: OrderedDict[str, _Client] = OrderedDict()
        """Addresses with nothing open and a bucket still filling, least recently seen first."""
        self.evicted = 0
        """Addresses forgotten before their bucket was full, to stay within max_tracked."""
        self.overflowed = 0
        """New addresses tracked past max_tracked, every tracked one having connections open."""

    @property
    def tracked(self) -> int:
        """Addresses held now."""
        return len(self._open) + len(self._idle)

    def open_connections(self, ip: str) -> int:
        """Connections admitted for `ip` and not yet released."""
        client = self._open.get(ip)
        return 0 if client is None else client.open

    def admit(self, ip: str) -> str | None:
        """None when a new connection from `ip` may go on, counted open until release(ip);
        else why it is refused (MAX_CONNECTIONS or MAX_RATE), nothing counted."""
        if self._off:
            return None
        now = self._clock.seconds()
        self._sweep(now)
        client = self._open.get(ip)
        if client is None:
            client = self._idle.get(ip)
            if client is None:
                client = self._track(ip, now)
            else:
                self._idle.move_to_end(ip)
        elif self.max_connections is not None and client.open >= self.max_connections:
            return MAX_CONNECTIONS
        if self.max_rate is not None:
            tokens = self._tokens(client, now)
            if tokens < 1.0 - _TOLERANCE:
                return MAX_RATE
            client.tokens = max(0.0, tokens - 1.0)
        client.open += 1
        if client.open == 1:
            self._idle.pop(ip, None)
            self._open[ip] = client
        return None

    def release(self, ip: str) -> None:
        """A connection admitted for `ip` closed. Releasing more than was admitted is
        ignored; making each connection release once is the caller's part."""
        client = self._open.get(ip)
        if client is None:
            return
        client.open -= 1
        if client.open:
            return
        del self._open[ip]
        if self.max_rate is None or self._full(client, self._clock.seconds()):
            return
        self._idle[ip] = client
        while self.tracked > self.max_tracked and self._idle:
            self._evict()

    def _track(self, ip: str, now: float) -> _Client:
        """A new address's entry, room made for it first (it goes into _open at once)."""
        while self.tracked >= self.max_tracked and self._idle:
            self._evict()
        if self.tracked >= self.max_tracked:
            self.overflowed += 1
        return _Client(self._capacity, now)

    def _evict(self) -> None:
        """Forget the least recently seen address with nothing open."""
        _, client = self._idle.popitem(last=False)
        if not self._full(client, self._clock.seconds()):
            self.evicted += 1

    def _sweep(self, now: float) -> None:
        """Forget the least recently seen idle addresses whose bucket has filled up."""
        idle = self._idle
        for _ in range(_SWEEP):
            if not idle:
                return
            ip = next(iter(idle))
            if not self._full(idle[ip], now):
                return
            del idle[ip]

    def _tokens(self, client: _Client, now: float) -> float:
        """The client's tokens now, stored back with `now` as the stamp. A clock gone back
        refills nothing (and restarts the refill from now, so it costs no more than that)."""
        tokens = client.tokens + max(0.0, now - client.stamp) * self._per_second
        if tokens >= self._capacity - _TOLERANCE:
            tokens = self._capacity
        client.tokens = tokens
        client.stamp = now
        return tokens

    def _full(self, client: _Client, now: float) -> bool:
        return self._tokens(client, now) >= self._capacity
