"""The memory tier: responses held as bytes in this process, bounded in bytes, the least
recently served dropped first when a new one needs room.

An entry counts its body and an estimate of its meta (the fields, URL and keys, plus a
fixed overhead for the Python objects that hold them), so that many small responses with
large headers are bounded too. Each worker process has its own memory tier; the disk tier
(proxyd.cache.disk) is the one shared by the workers.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import attrs

from proxyd.cache.store import Fields, Meta, declared_length, purge_matches

META_OVERHEAD: Final = 512
"""Bytes counted for a stored response beyond its body and the bytes of its meta's strings:
the attrs instance, its tuples and the LRU table's node (measured near 500 on CPython
3.11 for a response with ten fields)."""


def meta_size(meta: Meta) -> int:
    """What a stored response's meta counts for against the bound."""
    return (
        META_OVERHEAD
        + len(meta.key)
        + len(meta.variant)
        + len(meta.url)
        + len(meta.reason)
        + sum(len(name) + len(value) for name, value in meta.headers)
        + sum(len(tag) for tag in meta.tags)
    )


@attrs.define
class _Entry:
    meta: Meta
    data: bytes
    serial: int

    @property
    def size(self) -> int:
        return len(self.data) + meta_size(self.meta)


class BytesBody:
    """A committed body held whole."""

    verified = True

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def length(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass


class _WriterBody:
    """The bytes a memory writer holds so far; reading fails once the writer gave up or
    was aborted, so that a reader never takes a partial body for a whole one."""

    verified = True

    def __init__(self, writer: MemoryWriter) -> None:
        self._writer = writer

    @property
    def length(self) -> int:
        return self._writer.written

    def read_at(self, offset: int, size: int) -> bytes:
        return self._writer.read_at(offset, size)

    def close(self) -> None:
        pass


class MemoryWriter:
    """A response being stored in memory: its body as the chunks that arrived, joined once
    at commit; bounded by the tier's max_object_size."""

    def __init__(self, store: MemoryStore, meta: Meta) -> None:
        self._store = store
        self._meta = meta
        self._chunks: list[bytes] = []
        self._ends: list[int] = []
        self._written = 0
        self._checksum = 0
        self._state = "open"

    @property
    def meta(self) -> Meta:
        return self._meta

    @property
    def written(self) -> int:
        return self._written

    def append(self, data: bytes) -> bool:
        if self._state != "open":
            return False
        if self._written + len(data) > self._store.max_object_size:
            self._drop("gave up")
            return False
        if data:
            self._chunks.append(bytes(data))
            self._written += len(data)
            self._ends.append(self._written)
            self._checksum = zlib.crc32(data, self._checksum)
        return True

    def commit(self, headers: Fields | None = None) -> Meta | None:
        if self._state != "open":
            return None
        data = b"".join(self._chunks)
        self._chunks, self._ends = [data], [len(data)]
        self._state = "committed"
        meta = attrs.evolve(
            self._meta,
            headers=self._meta.headers if headers is None else headers,
            length=len(data),
            checksum=self._checksum,
        )
        return self._store.insert(meta, data)

    def abort(self) -> None:
        if self._state == "open":
            self._drop("aborted")

    def body(self) -> _WriterBody:
        return _WriterBody(self)

    def read_at(self, offset: int, size: int) -> bytes:
        """Bytes written so far from `offset`, across the chunks they arrived in."""
        if self._state in ("gave up", "aborted"):
            raise OSError(f"the response to {self._meta.url} was not stored ({self._state})")
        end = min(offset + size, self._written)
        pieces = []
        index = bisect_right(self._ends, offset)
        while offset < end:
            start = self._ends[index] - len(self._chunks[index])
            piece = self._chunks[index][offset - start : end - start]
            pieces.append(piece)
            offset += len(piece)
            index += 1
        return b"".join(pieces)

    def _drop(self, state: str) -> None:
        self._state = state
        self._chunks, self._ends = [], []


class MemoryStore:
    """A Store in this process's memory, of at most `max_size` bytes, each response's body
    at most `max_object_size`."""

    def __init__(self, max_size: int, max_object_size: int) -> None:
        self.max_size = max_size
        self.max_object_size = max_object_size
        self._lru: OrderedDict[tuple[bytes, bytes], _Entry] = OrderedDict()
        """Least recently served first."""
        self._keys: dict[bytes, dict[bytes, _Entry]] = {}
        self._size = 0
        self._serial = 0
        self._closed = False

    def variants(self, key: bytes) -> Sequence[Meta]:
        stored = sorted(self._keys.get(key, {}).values(), key=lambda e: e.serial, reverse=True)
        return [entry.meta for entry in stored]

    def open(self, meta: Meta) -> BytesBody | None:
        entry = self._find(meta)
        if entry is None:
            return None
        self._lru.move_to_end((meta.key, meta.variant))
        return BytesBody(entry.data)

    def writer(self, meta: Meta) -> MemoryWriter | None:
        length = declared_length(meta)
        if self._closed or (length is not None and length > self.max_object_size):
            return None
        return MemoryWriter(self, meta)

    def insert(self, meta: Meta, data: bytes) -> Meta | None:
        """Store a committed response (MemoryWriter.commit's end), replacing the variant
        stored before and making room; None when it is larger than the whole tier."""
        if self._closed:
            return None
        self._serial += 1
        entry = _Entry(meta, data, self._serial)
        self._delete(meta.key, meta.variant)
        if entry.size > self.max_size:
            return None
        while self._size + entry.size > self.max_size:
            key, variant = next(iter(self._lru))
            self._delete(key, variant)
        self._lru[meta.key, meta.variant] = entry
        self._keys.setdefault(meta.key, {})[meta.variant] = entry
        self._size += entry.size
        return meta

    def update(self, meta: Meta) -> bool:
        entry = self._find(meta)
        if entry is None:
            return False
        this = (meta.key, meta.variant)
        self._size += meta_size(meta) - meta_size(entry.meta)
        entry.meta = meta
        if entry.size > self.max_size:
            self._delete(*this)
            return False
        for other in list(self._lru):  # larger fields may need room, made by the others
            if self._size <= self.max_size:
                break
            if other != this:
                self._delete(*other)
        return True

    def remove(self, key: bytes, variant: bytes | None = None) -> int:
        stored = self._keys.get(key, {})
        variants = list(stored) if variant is None else [variant]
        return sum(self._delete(key, one) for one in variants)

    def purge(
        self,
        *,
        url: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
        soft: bool = False,
        now: float = 0.0,
    ) -> int:
        matched = [e for e in self._lru.values() if purge_matches(e.meta, url, prefix, tag)]
        for entry in matched:
            meta = entry.meta
            if not soft:
                self._delete(meta.key, meta.variant)
            elif meta.invalid_after is None or meta.invalid_after > now:
                entry.meta = attrs.evolve(meta, invalid_after=now)
        return len(matched)

    def clear(self) -> None:
        """Forget every response (the disk tier says that another process purged some)."""
        self._lru.clear()
        self._keys.clear()
        self._size = 0

    @property
    def entries(self) -> int:
        return len(self._lru)

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self.clear()
        self._closed = True

    def _find(self, meta: Meta) -> _Entry | None:
        """The stored entry that `meta` describes: the same body (a newer one stored since
        under the same variant is another response)."""
        entry = self._keys.get(meta.key, {}).get(meta.variant)
        if entry is None or entry.meta.checksum != meta.checksum:
            return None
        if entry.meta.length != meta.length:
            return None
        return entry

    def _delete(self, key: bytes, variant: bytes) -> int:
        entry = self._lru.pop((key, variant), None)
        if entry is None:
            return 0
        stored = self._keys[key]
        del stored[variant]
        if not stored:
            del self._keys[key]
        self._size -= entry.size
        return 1
