"""One `[cache NAME]` of a process: its storage, its fetches in progress (collapsing), and
its counters; made once per process and name (proxyd.cache.registry) and shared by every
listener and route that names it, across reloads while its storage settings are the same."""

from __future__ import annotations

import attrs

from proxyd.cache.fills import Fills
from proxyd.cache.store import Store
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


class Cache:
    def __init__(self, config: CacheConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.fills = Fills()
        self.counters = Counters()

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        self.store.close()
