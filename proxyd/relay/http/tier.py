"""A request to a pool of cache peers (docs/cdn.md), sans-IO: its key on the pool's
consistent-hash ring (`hash_key = uri` or `header NAME`), and whether it goes to a peer or,
when this node owns the key or a peer sent it, to the pool's `parent`.

The exchange asks only for a pool whose `tier` is set (proxyd.pool.Pool.tier): a route to any
other pool computes nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from proxyd.cache.keys import KeyRule, effective_uri, keyed_query
from proxyd.config.cache_model import CacheConfig
from proxyd.config.model import Address
from proxyd.pool import Affinity, Pool

FROM_PEER: Final = "cdn_loop.from_peer"
"""exchange.vars' key set by proxyd.filters.cdn_loop when the request carried this node's
CDN-Loop pseudonym: a peer of the tier sent it."""


def request_key(
    hash_key: str,
    scheme: str,
    host: str,
    path: str,
    query: str,
    headers: Sequence[tuple[bytes, bytes]],
    rule: KeyRule | None,
) -> bytes | None:
    """The request's key for `hash_key`: for `uri`, the cache key's URL without its scheme
    (host in lower case without the default port, path, query with the route's [cache]
    key_ignore_params and key_sort_params applied: `rule`), so that the request lands on the
    peer that stores it, over http or https alike; for `header NAME`, the field's values
    joined (None when absent: the pool keys on the client's address). None for client_ip."""
    if hash_key == "uri":
        if rule is not None:
            query = keyed_query(query, rule)
        uri = effective_uri(scheme, host, path, query)
        return uri[len(scheme) + 3 :].encode("utf-8", "surrogateescape")
    if hash_key.startswith("header "):
        wanted = hash_key[7:].encode("latin-1")
        values = [value.strip() for name, value in headers if name.lower() == wanted]
        return b",".join(values) if values else None
    return None


def choose(pool: Pool, pools: Mapping[str, Pool], affinity: Affinity, from_peer: bool) -> Pool:
    """The pool the request goes to: `pool` (a peer is picked there, never this node), or its
    parent when this node owns the key or a peer sent the request (a request crosses at most
    one peer of the tier, as Squid's siblings and Varnish's self-routing clusters do)."""
    parent = pool.config.parent
    if parent is None:
        return pool
    if from_peer or pool.owns(affinity):
        return pools[parent]
    return pool


def route(
    pool: Pool,
    pools: Mapping[str, Pool],
    cache: object,
    client: Address | None,
    target: tuple[str, str, str, str],
    headers: Sequence[tuple[bytes, bytes]],
    from_peer: bool,
) -> tuple[Pool, Affinity]:
    """The pool a request to `pool` goes to and what that pool keys on: the request's key
    (`target`: scheme, host, path, query; `cache`: the route's [cache], whose key rule the
    uri key follows) made once, for the choice and the pick; made again only for a parent
    that hashes on something else."""
    rule = cache.key if isinstance(cache, CacheConfig) else None
    key = request_key(pool.config.hash_key, *target, headers, rule)
    affinity = Affinity(client, request=key)
    chosen = choose(pool, pools, affinity, from_peer)
    if chosen is not pool and chosen.tier and chosen.config.hash_key != pool.config.hash_key:
        key = request_key(chosen.config.hash_key, *target, headers, rule)
        affinity = Affinity(client, request=key)
    return chosen, affinity
