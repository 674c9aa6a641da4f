"""The cache's two tiers as one Store: this process's memory in front of the disk shared by
the workers.

With a disk, responses are written to it alone (every worker then finds them), and a small
one (at most `memory_object_size`) is copied into memory when served from disk, so that a
hot response costs no file read. Another worker's purge is noticed through the disk's
epoch: when it moved since the last lookup, the memory tier is cleared whole (purges are
rare; a purged response served from memory is a wrong answer). Without a disk, the memory
tier takes the writes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Final

from proxyd.cache.disk import DiskStore
from proxyd.cache.locks import FetchLocks
from proxyd.cache.memory import BytesBody, MemoryStore
from proxyd.cache.store import Body, Meta, Writer

READ_SIZE: Final = 64 * 1024


class Tiers:
    """A Store of a memory tier, a disk tier, or both (memory first)."""

    def __init__(
        self, memory: MemoryStore | None, disk: DiskStore | None, memory_object_size: int
    ) -> None:
        self.memory = memory
        self.disk = disk
        self.memory_object_size = memory_object_size
        self._epoch = disk.epoch() if disk is not None else 0

    def variants(self, key: bytes) -> Sequence[Meta]:
        """Each variant once, the copy with the latest response first (a copy in memory
        when the disk's is the same response), most recent responses first."""
        if self.memory is not None and self.disk is not None:
            epoch = self.disk.epoch()
            if epoch != self._epoch:
                self._epoch = epoch
                self.memory.clear()
        best: dict[bytes, Meta] = {}
        for tier in (self.memory, self.disk):
            for meta in tier.variants(key) if tier is not None else ():
                known = best.get(meta.variant)
                if known is None or meta.response_time > known.response_time:
                    best[meta.variant] = meta
        return sorted(best.values(), key=lambda meta: meta.response_time, reverse=True)

    def open(self, meta: Meta) -> Body | None:
        if self.memory is not None:
            body = self.memory.open(meta)
            if body is not None:
                return body
        if self.disk is None:
            return None
        found = self.disk.open(meta)
        if found is None or self.memory is None or meta.length > self.memory_object_size:
            return found
        return self._promote(meta, found)

    def writer(self, meta: Meta) -> Writer | None:
        if self.disk is not None:
            return self.disk.writer(meta)
        return self.memory.writer(meta) if self.memory is not None else None

    def update(self, meta: Meta) -> bool:
        updated = [tier.update(meta) for tier in self._tiers()]
        return any(updated)

    def remove(self, key: bytes, variant: bytes | None = None) -> int:
        """How many responses were dropped from the tier that had the most (the memory's
        are copies of the disk's)."""
        return max((tier.remove(key, variant) for tier in self._tiers()), default=0)

    def purge(
        self,
        *,
        url: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
        soft: bool = False,
        now: float = 0.0,
    ) -> int:
        """Purges both tiers; the count of the tier that had the most."""
        return max(
            (
                tier.purge(url=url, prefix=prefix, tag=tag, soft=soft, now=now)
                for tier in self._tiers()
            ),
            default=0,
        )

    @property
    def entries(self) -> int:
        """The responses stored in the tier that takes the writes (the disk when there is
        one)."""
        tier = self.disk or self.memory
        return tier.entries if tier is not None else 0

    @property
    def size(self) -> int:
        tier = self.disk or self.memory
        return tier.size if tier is not None else 0

    def close(self) -> None:
        for tier in self._tiers():
            tier.close()

    @property
    def locks(self) -> FetchLocks | None:
        """The disk tier's fetch locks, shared by its processes; None without a disk."""
        return None if self.disk is None else self.disk.locks

    def _tiers(self) -> list[MemoryStore | DiskStore]:
        return [tier for tier in (self.memory, self.disk) if tier is not None]

    def _promote(self, meta: Meta, body: Body) -> Body | None:
        """Copy a small body from disk into memory; a body that fails its checksum is
        dropped from disk (never served, never copied)."""
        assert self.memory is not None and self.disk is not None
        pieces = []
        try:
            for offset in range(0, meta.length, READ_SIZE):
                pieces.append(body.read_at(offset, READ_SIZE))
        except OSError:
            return None
        finally:
            body.close()
        data = b"".join(pieces)
        if len(data) != meta.length or zlib.crc32(data) != meta.checksum:
            self.disk.remove(meta.key, meta.variant)
            return None
        self.memory.insert(meta, data)
        return BytesBody(data)
