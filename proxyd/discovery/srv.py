"""DNS SRV records to a pool's servers (RFC 2782), sans-IO.

Priorities: the servers of the lowest priority present are the pool's primaries; every other
priority's are its backups (the pool has one backup tier: priorities 20 and 30 are both
backups, taking traffic together when no primary is available). Weights: an SRV weight is a
server's balancing weight; as a pool's weights run from 1 to 256, weights over 256 are
scaled down together (keeping their ratios, each at least 1), and weight 0 is 1 (RFC 2782
gives weight 0 "a very small chance": proxyd gives it the smallest weight it has).
A target of "." alone means the service is decidedly not available: no server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from proxyd.config.model import Address, ServerConfig
from proxyd.discovery.common import Found, bounded
from proxyd.pool.server import MAX_WEIGHT, MIN_WEIGHT

MIN_INTERVAL = 1.0
"""Records are never asked again sooner than this after an answer, whatever their TTL (a
TTL of 0 would otherwise mean asking without pause)."""
MAX_INTERVAL = 300.0
"""Records are asked again at least this often, whatever their TTL."""


@attrs.frozen
class SrvRecord:
    """One SRV record of the answer."""

    priority: int
    weight: int
    port: int
    target: str
    """The target's name, without the final dot."""
    ttl: int


def scaled_weights(weights: Sequence[int]) -> list[int]:
    """SRV weights (0..65535) as pool weights (MIN_WEIGHT..MAX_WEIGHT)."""
    top = max(weights, default=0)
    if top <= MAX_WEIGHT:
        return [max(weight, MIN_WEIGHT) for weight in weights]
    return [max(round(weight * MAX_WEIGHT / top), MIN_WEIGHT) for weight in weights]


def srv_servers(
    records: Sequence[SrvRecord], addresses: Mapping[str, Sequence[str]], limit: int
) -> Found:
    """The servers of `records`, each target's `addresses` (A and AAAA, as text) on the
    record's port, at most `limit`: the lowest priority's first, then by weight (heaviest
    first) and name, so that the bound leaves out the least wanted. A target without
    addresses gives no server."""
    usable = [record for record in records if record.target not in ("", ".")]
    if not usable:
        return Found(())
    lowest = min(record.priority for record in usable)
    weights = scaled_weights([record.weight for record in usable])
    ordered = sorted(
        zip(usable, weights, strict=True),
        key=lambda pair: (pair[0].priority, -pair[0].weight, pair[0].target, pair[0].port),
    )
    servers = [
        ServerConfig(
            address=Address(host, record.port),
            weight=weight,
            backup=record.priority != lowest,
        )
        for record, weight in ordered
        for host in sorted(addresses.get(record.target, ()))
    ]
    return bounded(servers, limit)


def next_interval(ttls: Sequence[int]) -> float:
    """When to ask again after an answer: the smallest TTL of the records it used, bounded
    by MIN_INTERVAL and MAX_INTERVAL (MAX_INTERVAL with no record)."""
    if not ttls:
        return MAX_INTERVAL
    return float(min(max(min(ttls), MIN_INTERVAL), MAX_INTERVAL))
