"""One `[cache NAME]` of a process: its storage, its fetches in progress (collapsing), and
its counters; made once per process and name (proxyd.cache.registry) and shared by every
listener and route that names it, across reloads while its storage settings are the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from proxyd.cache.fills import Fills
from proxyd.cache.memory import MemoryStore
from proxyd.cache.store import Store
from proxyd.cache.tiers import Tiers
from proxyd.config.cache_model import CacheConfig


@attrs.define
class Counters:
    """What proxyd_cache_* metrics show (proxyd.admin.metrics)."""

    hits: int = 0
    misses: int = 0
    stale: int = 0
    """Stale responses served (stale-while-revalidate, stale-if-error, use_stale)."""
    revalidated: int = 0
    """Stored responses the origin confirmed with a 304."""
    collapsed: int = 0
    """Requests answered from another request's fetch."""
    bypassed: int = 0
    stored: int = 0
    bytes_served: int = 0
    """Body bytes sent from the cache."""
    purged: int = 0
    cluster_sent: int = 0
    """Purges made here and sent to the cluster (proxyd.cache.cluster)."""
    cluster_applied: int = 0
    """Purges of other nodes applied here."""
    cluster_gaps: int = 0
    """Times the cluster's purge log had lost purges not applied here (all marked stale)."""
    cluster_errors: int = 0
    """Calls to the cluster's Redis that failed or timed out, and purges not sent (dropped
    past proxyd.cache.cluster_link.MAX_PENDING)."""


@attrs.frozen
class Purge:
    """What a purge through the admin API removes: the responses of one effective URI
    (proxyd.cache.keys.effective_uri), of every URI that starts with a prefix, or that
    carry a tag; `soft` marks them stale instead (they are revalidated before a hit)."""

    url: str | None = None
    prefix: str | None = None
    tag: str | None = None
    soft: bool = False

    def __attrs_post_init__(self) -> None:
        given = [value for value in (self.url, self.prefix, self.tag) if value is not None]
        if len(given) != 1 or not given[0]:
            raise ValueError("exactly one of url, prefix or tag, not empty")

    def describe(self) -> str:
        """For the log: `url http://a/b (soft)`."""
        kind, value = next(
            (kind, value)
            for kind, value in (("url", self.url), ("prefix", self.prefix), ("tag", self.tag))
            if value is not None
        )
        return f"{kind} {value}" + (" (soft)" if self.soft else "")


_CLUSTER_COUNTERS = ("cluster_sent", "cluster_applied", "cluster_gaps", "cluster_errors")
"""Shown only for a cache with `cluster`."""


def _nowhere(purge: Purge) -> None:
    pass


class Cache:
    def __init__(self, config: CacheConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.fills = Fills(store.locks if isinstance(store, Tiers) else None)
        self.counters = Counters()
        self.announce: Callable[[Purge], None] = _nowhere
        """Sends a purge made on this node to the other nodes of its cluster (`cluster`:
        proxyd.cache.cluster_link); set by the registry."""

    @property
    def name(self) -> str:
        return self.config.name

    def purge(self, purge: Purge, now: float, shared: bool = True) -> int:
        """Purge what `purge` names, and count it in `purged`: how many responses.

        `shared` False purges this process's memory tier alone (with `workers = N`, each
        worker's; the master purges the disk tier the workers share). The count is then
        that of a memory-only cache: a memory tier in front of a disk holds copies of the
        disk's responses, counted once, by the disk's purge."""
        store = self.store
        options = {"url": purge.url, "prefix": purge.prefix, "tag": purge.tag}
        if not shared and isinstance(store, Tiers) and store.disk is not None:
            if store.memory is not None:
                store.memory.purge(**options, soft=purge.soft, now=now)
            return 0
        count = store.purge(**options, soft=purge.soft, now=now)
        self.counters.purged += count
        return count

    def figures(self, memory: bool = True, disk: bool = True) -> dict[str, Any]:
        """The counters, and what the tiers hold (`memory_entries` and `memory_bytes`,
        `disk_entries` and `disk_bytes`, for the tiers there are and asked for), as
        numbers that add up across worker processes: each worker shows its memory tier,
        and one process (the master) the disk they share."""
        found: dict[str, Any] = attrs.asdict(self.counters)
        if self.config.cluster is None:
            for field in _CLUSTER_COUNTERS:
                del found[field]
        store = self.store
        tiers: dict[str, Any] = {}
        if isinstance(store, Tiers):
            tiers = {"memory": store.memory, "disk": store.disk}
        elif isinstance(store, MemoryStore):
            tiers = {"memory": store}
        for name, asked in (("memory", memory), ("disk", disk)):
            tier = tiers.get(name)
            if asked and tier is not None:
                found[f"{name}_entries"] = tier.entries
                found[f"{name}_bytes"] = tier.size
        return found

    def close(self) -> None:
        self.store.close()
