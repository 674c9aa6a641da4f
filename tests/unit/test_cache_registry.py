"""proxyd.cache.registry: a [cache] opened once per process and name, kept across reloads
while its storage settings are the same, a disk tier on the reactor's clock."""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.internet.task import Clock

from proxyd.cache.registry import CacheRegistry
from proxyd.config.cache_model import CacheConfig


def test_same_storage_keeps_the_cache_with_the_new_settings() -> None:
    registry = CacheRegistry(Clock())
    first = registry.cache(CacheConfig("c", memory_size=1 << 20))
    again = registry.cache(CacheConfig("c", memory_size=1 << 20, lock_timeout=1.0))
    assert again is first and again.config.lock_timeout == 1.0
    registry.close()


def test_changed_storage_opens_another_and_closes_both_at_the_end(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    registry = CacheRegistry(clock)
    config = CacheConfig("c", path=str(tmp_path / "cache"), disk_size=8 << 20)
    first = registry.cache(config)
    second = registry.cache(attrs.evolve(config, disk_size=16 << 20))
    assert second is not first
    assert (tmp_path / "cache" / "index").exists()
    closed: list[object] = []

    class Watched:
        def __init__(self, store: object) -> None:
            self.store = store

        def close(self) -> None:
            closed.append(self)
            self.store.close()  # type: ignore[attr-defined]

    first.store = Watched(first.store)  # type: ignore[assignment]
    second.store = Watched(second.store)  # type: ignore[assignment]
    registry.close()
    assert len(closed) == 2
