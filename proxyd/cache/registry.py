"""The caches of a process, by name (ProcessResources.caches): a [cache] is opened once and
kept across reloads while its storage settings stay the same, so that a reload keeps what
is stored (and a disk tier's index is never opened twice by one process, which LMDB
forbids)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.cache.disk import DiskStore
from proxyd.cache.instance import Cache, Purge
from proxyd.cache.memory import MemoryStore
from proxyd.cache.tiers import Tiers
from proxyd.config.cache_model import CacheConfig


def _storage(config: CacheConfig) -> tuple[object, ...]:
    return (
        config.memory_size,
        config.memory_object_size,
        config.path,
        config.disk_size,
        config.max_object_size,
    )


class CacheRegistry:
    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self.announce: Callable[[str, Purge], None] | None = None
        """Where the caches' purges made here go to reach the other nodes (PurgeFanout)."""
        self._caches: dict[str, Cache] = {}
        self._replaced: list[Cache] = []
        """Caches a reload replaced (their storage settings changed): the generation that
        used them may still serve from them until its connections end; closed at the end."""

    def cache(self, config: CacheConfig) -> Cache:
        """The cache of `config`: the one open under its name when its storage is the same
        (with the new settings), else a new one (a disk tier on the same path shares the
        LMDB environment already open: proxyd.cache.disk)."""
        found = self._caches.get(config.name)
        if found is not None and _storage(found.config) == _storage(config):
            if found.config != config:
                found.config = config
            return found
        store = self._open(config)
        made = self._caches[config.name] = Cache(config, store)
        announce = self.announce
        if announce is not None:
            made.announce = lambda purge: announce(config.name, purge)
        if found is not None:
            self._replaced.append(found)
        return made

    def _open(self, config: CacheConfig) -> Tiers:
        memory = None
        if config.memory_size:
            memory = MemoryStore(
                config.memory_size, min(config.max_object_size, config.memory_size)
            )
        disk = None
        if config.path is not None:
            disk = DiskStore(
                config.path, config.disk_size, config.max_object_size, self._clock.seconds
            )
        return Tiers(memory, disk, config.memory_object_size)

    def find(self, name: str) -> Cache | None:
        """The cache open under `name`, if any."""
        return self._caches.get(name)

    def figures(self, memory: bool = True, disk: bool = True) -> dict[str, dict[str, Any]]:
        """Each open cache's counters and tiers (Cache.figures), by name."""
        return {
            name: cache.figures(memory=memory, disk=disk) for name, cache in self._caches.items()
        }

    @property
    def caches(self) -> list[Cache]:
        return list(self._caches.values())

    def close(self) -> None:
        for cache in [*self._caches.values(), *self._replaced]:
            cache.close()
        self._caches.clear()
        self._replaced.clear()
