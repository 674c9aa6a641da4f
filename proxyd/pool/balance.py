"""Balancing algorithms: which of the candidate servers takes the next connection (sans-IO).

The Pool decides who may be picked (available, not excluded, primaries before backups, below
max_connections) and passes those candidates, in configuration order, to its balancer. A
balancer only chooses among them; the state it keeps (smooth round robin weights, the hash
ring) lives on the balancer, one per pool.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from proxyd.pool.server import Server

HASH_POINTS_PER_WEIGHT = 160
"""Points on the consistent-hash ring per unit of weight, as ketama and nginx use."""


class Balancer(Protocol):
    """Chooses one of `candidates` (never empty when called by the Pool) for `key`.

    Weights are read from the servers at each pick, so a weight set at run time counts from
    the next pick on; a balancer that derives state from the weights (the hash ring) rebuilds
    it in weights_changed(), which the Pool calls after changing one.
    """

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None: ...

    def weights_changed(self) -> None: ...


def _weight(server: Server) -> int:
    # The config loader rejects weights below 1; should one get through, count it as 1 so that
    # no algorithm draws from an empty range or compares against a zero weight.
    return max(server.weight, 1)


def _less_loaded(a: Server, b: Server) -> bool:
    """Whether a.active / a.weight < b.active / b.weight, exactly (cross-multiplied, no floats)."""
    return a.active * _weight(b) < b.active * _weight(a)


def _equally_loaded(a: Server, b: Server) -> bool:
    return a.active * _weight(b) == b.active * _weight(a)


class _SmoothWeights:
    """nginx's smooth weighted round robin state (ngx_http_upstream_get_peer).

    On each pick every candidate's current weight grows by its weight; the largest wins (the
    first in order on a tie) and loses the total. Over any run of sum(weights) picks among the
    same candidates each is picked exactly `weight` times, interleaved (5,1,1 gives a a b a c a
    a). Servers that are not candidates keep their current weight until they are again.
    """

    def __init__(self) -> None:
        self._current: dict[Server, int] = {}

    def pick(self, candidates: Sequence[Server]) -> Server | None:
        best: Server | None = None
        best_current = 0
        total = 0
        current = self._current
        for server in candidates:
            weight = _weight(server)
            value = current.get(server, 0) + weight
            current[server] = value
            total += weight
            if best is None or value > best_current:
                best, best_current = server, value
        if best is not None:
            current[best] = best_current - total
        return best


class RoundRobin:
    """`balance = round_robin`: smooth weighted round robin over the candidates of each pick."""

    def __init__(self) -> None:
        self._weights = _SmoothWeights()

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None:
        return self._weights.pick(candidates)

    def weights_changed(self) -> None:
        """Nothing to do: the smooth weights grow by each server's weight of the moment."""


class LeastConn:
    """`balance = least_conn`: the fewest active connections per unit of weight.

    Ties are broken by smooth weighted round robin among the tied servers only, as nginx's
    least_conn does, so that an idle pool still honours the weights.
    """

    def __init__(self) -> None:
        self._weights = _SmoothWeights()

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None:
        tied: list[Server] = []
        for server in candidates:
            if not tied or _less_loaded(server, tied[0]):
                tied = [server]
            elif _equally_loaded(server, tied[0]):
                tied.append(server)
        if len(tied) <= 1:
            return tied[0] if tied else None
        return self._weights.pick(tied)

    def weights_changed(self) -> None:
        """Nothing to do: loads are divided by each server's weight of the moment."""


class RandomTwo:
    """`balance = random_two`: the power of two choices.

    Two distinct candidates are drawn at random, each draw weighted by weight; the one with
    fewer active connections per unit of weight wins, the first drawn on a tie (so an idle
    pool is a plain weighted random draw).
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None:
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        weights = [_weight(server) for server in candidates]
        total = sum(weights)
        first = self._draw(weights, total, skip=None)
        second = self._draw(weights, total - weights[first], skip=first)
        a, b = candidates[first], candidates[second]
        return b if _less_loaded(b, a) else a

    def weights_changed(self) -> None:
        """Nothing to do: each pick draws by the weights of the moment."""

    def _draw(self, weights: Sequence[int], total: int, skip: int | None) -> int:
        """An index drawn with probability weight / total, never `skip` (whose weight is
        already left out of `total`)."""
        point = self._rng.randrange(total)
        for index, weight in enumerate(weights):
            if index == skip:
                continue
            if point < weight:
                return index
            point -= weight
        raise AssertionError("total is the sum of the weights not skipped")


def _ring_hash(data: bytes) -> int:
    """A stable 64-bit hash: the same on every run, process and machine (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash:
    """`balance = hash`: consistent hashing of the key (e.g. the client's address).

    The ring is built over every server of the pool, available or not, and again only when a
    weight changes at run time: each server has HASH_POINTS_PER_WEIGHT * weight points, placed
    by hashing its name (its address), so a server's points do not depend on the other servers.
    A key goes to the first candidate clockwise from its own hash. A server that becomes
    unavailable, or is removed from the configuration, hands only its own keys to the servers
    next on the ring (about 1/N of the keys); the others keep theirs.
    Without a key, picks are smooth weighted round robin.
    """

    def __init__(self, servers: Iterable[Server]) -> None:
        self._servers = tuple(servers)
        self._fallback = RoundRobin()
        self._build()

    def _build(self) -> None:
        points: list[tuple[int, int, Server]] = []
        for order, server in enumerate(self._servers):
            name = server.name.encode()
            for i in range(HASH_POINTS_PER_WEIGHT * _weight(server)):
                points.append((_ring_hash(b"%s-%d" % (name, i)), order, server))
        # Equal points (astronomically rare) go to the server first in configuration order.
        points.sort(key=lambda point: point[:2])
        self._points = [point for point, _, _ in points]
        self._owners = [server for _, _, server in points]

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None:
        if key is None or not self._points:
            return self._fallback.pick(candidates, key)
        wanted = set(candidates)
        owners = self._owners
        size = len(owners)
        start = bisect.bisect_left(self._points, _ring_hash(key))
        for step in range(size):
            server = owners[(start + step) % size]
            if server in wanted:
                return server
        # Only candidates that are not servers of this pool get here; still answer.
        return self._fallback.pick(candidates, key)

    def weights_changed(self) -> None:
        """Rebuild the ring: a server's share of points follows its new weight. Its points
        are the first HASH_POINTS_PER_WEIGHT * weight of the same sequence, so a heavier
        server only gains keys and a lighter one only loses some; the other servers' points
        do not move."""
        self._build()


class First:
    """`balance = first`: the first candidate in configuration order (HAProxy's `first`).

    With max_connections set, it fills servers one after the other, leaving the last ones
    idle while traffic is low.
    """

    def pick(self, candidates: Sequence[Server], key: bytes | None) -> Server | None:
        return candidates[0] if candidates else None

    def weights_changed(self) -> None:
        """Nothing to do: weights play no part."""


_FACTORIES: Mapping[str, Callable[[Sequence[Server], random.Random], Balancer]] = {
    "round_robin": lambda servers, rng: RoundRobin(),
    "least_conn": lambda servers, rng: LeastConn(),
    "random_two": lambda servers, rng: RandomTwo(rng),
    "hash": lambda servers, rng: ConsistentHash(servers),
    "first": lambda servers, rng: First(),
}

ALGORITHMS: tuple[str, ...] = tuple(_FACTORIES)
"""The names `balance =` accepts."""


def make_balancer(name: str, servers: Sequence[Server], rng: random.Random) -> Balancer:
    """The balancer for `balance = name` over a pool's `servers` (all of them, in config order).

    Raises ValueError for an unknown name (the config loader should have caught it).
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(repr(n) for n in ALGORITHMS)
        raise ValueError(f"unknown balance algorithm {name!r}; expected one of {known}") from None
    return factory(servers, rng)
