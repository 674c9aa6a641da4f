"""proxyd.cache.tiers: the memory tier in front of the disk tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from proxyd.cache.disk import DiskStore
from proxyd.cache.memory import MemoryStore
from proxyd.cache.store import Meta, Store
from proxyd.cache.tiers import Tiers


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def meta(key: bytes = b"k", url: str = "http://example.test/a", **fields: Any) -> Meta:
    m = Meta(key, b"", url, 200, b"OK", ((b"content-type", b"text/plain"),), 1000.0, 1001.0)
    return attrs.evolve(m, **fields)


def store(into: Store, m: Meta, body: bytes = b"hello") -> Meta:
    writer = into.writer(m)
    assert writer is not None
    assert writer.append(body)
    stored = writer.commit()
    assert stored is not None
    return stored


def read_all(into: Store, m: Meta) -> bytes:
    body = into.open(m)
    assert body is not None
    try:
        return body.read_at(0, body.length)
    finally:
        body.close()


def both(path: Path, memory_object_size: int = 100) -> tuple[Tiers, MemoryStore, DiskStore]:
    memory = MemoryStore(1 << 20, 1 << 16)
    disk = DiskStore(str(path), 1 << 24, 1 << 20, Clock())
    return Tiers(memory, disk, memory_object_size), memory, disk


def test_with_a_disk_writes_go_to_the_disk_alone(tmp_path: Path) -> None:
    tiers, memory, disk = both(tmp_path)
    stored = store(tiers, meta())
    assert disk.variants(b"k") == [stored] and memory.entries == 0
    assert tiers.entries == 1 and tiers.size == disk.size
    tiers.close()


def test_a_small_disk_hit_is_promoted_into_memory(tmp_path: Path) -> None:
    tiers, memory, _ = both(tmp_path, memory_object_size=5)
    stored = store(tiers, meta(), b"hello")
    assert tiers.variants(b"k") == [stored]
    assert read_all(tiers, stored) == b"hello"
    assert memory.variants(b"k") == [stored]
    for path in (tmp_path / "bodies").rglob("*"):
        if path.is_file():
            path.unlink()  # the next hits are served from memory
    assert read_all(tiers, stored) == b"hello"
    assert tiers.variants(b"k") == [stored]


def test_a_larger_disk_hit_stays_on_disk(tmp_path: Path) -> None:
    tiers, memory, _ = both(tmp_path, memory_object_size=4)
    stored = store(tiers, meta(), b"hello")
    assert read_all(tiers, stored) == b"hello"
    assert memory.entries == 0


def test_a_disk_body_that_fails_its_checksum_is_neither_promoted_nor_served(
    tmp_path: Path,
) -> None:
    tiers, memory, disk = both(tmp_path)
    stored = store(tiers, meta(), b"hello")
    (body_file,) = (p for p in (tmp_path / "bodies").rglob("*") if p.is_file())
    body_file.write_bytes(b"jello")  # same length, other bytes
    assert tiers.open(stored) is None
    assert memory.entries == 0 and disk.entries == 0


def test_memory_is_cleared_when_another_worker_purges(tmp_path: Path) -> None:
    tiers, memory, _ = both(tmp_path)
    a = store(tiers, meta(b"a", url="http://example.test/a"))
    b = store(tiers, meta(b"b", url="http://example.test/b"))
    read_all(tiers, a)
    read_all(tiers, b)
    assert memory.entries == 2
    other = DiskStore(str(tmp_path), 1 << 24, 1 << 20, Clock())  # another worker's
    assert other.purge(url="http://example.test/a") == 1
    assert memory.entries == 2  # noticed at the next lookup
    assert tiers.variants(b"a") == []
    assert memory.entries == 0
    assert tiers.variants(b"b") == [b]
    assert read_all(tiers, b) == b"hello"  # promoted again
    assert memory.entries == 1
    other.purge(url="http://example.test/b", soft=True, now=5.0)
    (soft,) = tiers.variants(b"b")
    assert soft.invalid_after == 5.0 and memory.entries == 0


def test_purge_remove_and_update_reach_both_tiers(tmp_path: Path) -> None:
    tiers, memory, disk = both(tmp_path)
    stored = store(tiers, meta(tags=("t",)))
    read_all(tiers, stored)
    fresher = attrs.evolve(stored, response_time=2000.0, headers=((b"etag", b'"2"'),))
    assert tiers.update(fresher)
    assert memory.variants(b"k") == [fresher] and disk.variants(b"k") == [fresher]
    assert tiers.purge(tag="t", soft=True, now=7.0) == 1
    assert memory.variants(b"k")[0].invalid_after == 7.0
    assert disk.variants(b"k")[0].invalid_after == 7.0
    assert tiers.purge(tag="t") == 1
    assert memory.entries == 0 and disk.entries == 0
    store(tiers, meta())
    read_all(tiers, tiers.variants(b"k")[0])
    assert tiers.remove(b"k") == 1
    assert memory.entries == 0 and disk.entries == 0


def test_a_newer_response_stored_by_another_worker_is_preferred(tmp_path: Path) -> None:
    tiers, memory, _ = both(tmp_path)
    old = store(tiers, meta())
    read_all(tiers, old)
    other = DiskStore(str(tmp_path), 1 << 24, 1 << 20, Clock())
    newer = store(other, meta(response_time=2000.0), b"newer")
    assert memory.variants(b"k") == [old]
    assert tiers.variants(b"k") == [newer]
    assert read_all(tiers, newer) == b"newer"


def test_memory_alone_takes_the_writes() -> None:
    memory = MemoryStore(1 << 20, 1 << 16)
    tiers = Tiers(memory, None, 100)
    stored = store(tiers, meta())
    assert memory.variants(b"k") == [stored] and tiers.entries == 1
    assert read_all(tiers, stored) == b"hello"
    assert tiers.purge(url="http://example.test/a") == 1 and tiers.entries == 0


def test_disk_alone(tmp_path: Path) -> None:
    disk = DiskStore(str(tmp_path), 1 << 24, 1 << 20, Clock())
    tiers = Tiers(None, disk, 100)
    stored = store(tiers, meta())
    assert read_all(tiers, stored) == b"hello"
    assert tiers.variants(b"k") == [stored] and tiers.size == disk.size


def test_no_tier_stores_nothing() -> None:
    tiers = Tiers(None, None, 100)
    assert tiers.writer(meta()) is None
    assert tiers.variants(b"k") == [] and tiers.open(meta()) is None
    assert tiers.purge(tag="t") == 0 and tiers.remove(b"k") == 0
    assert (tiers.entries, tiers.size) == (0, 0)
