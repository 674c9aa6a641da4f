"""The disk tier: responses stored in a directory that every worker process opens, each
with its own DiskStore, bounded in bytes as one cache.

The index is in LMDB (proxyd.cache.disk_index, in `path/index`); each body is a file of
`path/bodies/xx/NAME` (NAME a random 32 hex digits, xx its first two). A body is written to
`path/tmp/NAME.tmp` as it arrives, renamed into place when complete, and only then entered
in the index: a crash before the index write leaves an orphan file that the startup sweep
deletes, a crash after leaves a consistent entry. Nothing is fsync'd but the index (by
LMDB): after a machine crash a body may come back short (open() compares its size with
the index and drops the entry) or with wrong bytes (its CRC-32 fails as it is read to the
end); a cache can always fetch again.

A write that fails (a full disk, any I/O error) gives the response up: the temporary file
is removed and nothing enters the index, so a partial body is never served.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import lmdb

from proxyd.cache.disk_index import Batch, Index, Record, entry_id, index_text, key_prefix
from proxyd.cache.locks import FetchLocks
from proxyd.cache.store import Fields, Meta, declared_length, purge_matches

USE_INTERVAL: Final = 60.0
"""Seconds between two uses of an entry recorded for its LRU order: a hit costs a write
transaction at most this often."""
TEMPORARY_AGE: Final = 60.0
"""A temporary or unindexed body file older than this is a crashed process's."""
SWEEP_INTERVAL: Final = 3600.0
"""The workers starting together sweep once: the first one, then none for this long."""
MIN_MAP_SIZE: Final = 1 << 30
MAX_MAP_SIZE: Final = 1 << 40


def map_size_for(max_size: int) -> int:
    """LMDB's map (address space, not disk) for a tier of `max_size` bytes: twice that,
    since records count against the bound and B-tree pages are half full at worst; a full
    map evicts all the same."""
    return min(max(2 * max_size, MIN_MAP_SIZE), MAX_MAP_SIZE)


class DiskBody:
    """A body file open for reading; `writer` when it is still being written."""

    verified = False

    def __init__(self, fd: int, length: int, writer: DiskWriter | None = None) -> None:
        self._fd = fd
        self._length = length
        self._writer = writer

    @property
    def length(self) -> int:
        return self._writer.written if self._writer is not None else self._length

    def read_at(self, offset: int, size: int) -> bytes:
        if self._fd < 0:
            raise OSError("the body is closed")
        if self._writer is not None and self._writer.state in ("gave up", "aborted"):
            raise OSError(f"the response to {self._writer.meta.url} was not stored")
        size = min(size, self.length - offset)
        return os.pread(self._fd, size, offset) if size > 0 else b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DiskWriter:
    """A response being written to its temporary file; the CRC-32 and length as it goes."""

    def __init__(self, store: DiskStore, meta: Meta, name: bytes, fd: int) -> None:
        self._store = store
        self._meta = meta
        self._name = name
        self._fd = fd
        self._written = 0
        self._checksum = 0
        self.state = "open"

    @property
    def meta(self) -> Meta:
        return self._meta

    @property
    def written(self) -> int:
        return self._written

    def append(self, data: bytes) -> bool:
        if self.state != "open":
            return False
        if self._written + len(data) > self._store.max_object_size:
            self._drop("gave up")
            return False
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:  # ENOSPC, EIO, ...: a partial body must never be indexed
            self._drop("gave up")
            return False
        self._written += len(data)
        self._checksum = zlib.crc32(data, self._checksum)
        return True

    def commit(self, headers: Fields | None = None) -> Meta | None:
        if self.state != "open":
            return None
        store, name = self._store, self._name
        meta = attrs.evolve(
            self._meta,
            headers=self._meta.headers if headers is None else headers,
            length=self._written,
            checksum=self._checksum,
        )
        try:
            os.close(self._fd)
            self._fd = -1
            os.rename(store.temporary(name), store.body_path(name))
        except OSError:  # the temporary file swept by another process, or I/O
            self._drop("gave up")
            return None
        self.state = "committed"
        stored = store.insert(meta, name)
        if stored is None:
            store.unlink([name])
        return stored

    def abort(self) -> None:
        if self.state == "open":
            self._drop("aborted")

    def body(self) -> DiskBody:
        """Reads the file as written so far (its temporary, then committed, name)."""
        path = self._store.temporary(self._name)
        if self.state == "committed":
            path = self._store.body_path(self._name)
        try:
            return DiskBody(os.open(path, os.O_RDONLY | os.O_CLOEXEC), -1, self)
        except OSError:
            return DiskBody(-1, -1, self)  # reading it fails

    def _drop(self, state: str) -> None:
        self.state = state
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        _remove(self._store.temporary(self._name))


class DiskStore:
    """A Store in directory `path`, of at most `max_size` bytes (bodies and index records),
    each body at most `max_object_size`; `clock` gives the wall clock's seconds. `map_size`
    overrides LMDB's map (the first store of a directory in a process sets it)."""

    def __init__(
        self,
        path: str,
        max_size: int,
        max_object_size: int,
        clock: Callable[[], float],
        *,
        map_size: int | None = None,
    ) -> None:
        self.path = path
        self.max_size = max_size
        self.max_object_size = max_object_size
        self._clock = clock
        for xx in range(256):
            os.makedirs(os.path.join(path, "bodies", f"{xx:02x}"), exist_ok=True)
        os.makedirs(os.path.join(path, "tmp"), exist_ok=True)
        self._index = Index(
            os.path.join(path, "index"), map_size or map_size_for(max_size), self.unlink
        )
        self._closed = False
        self.locks = FetchLocks(os.path.join(path, "locks"), clock)
        """One fetch per key across the processes of this directory (proxyd.cache.locks)."""
        self._sweep()

    def epoch(self) -> int:
        """A counter that every purge and removal, by any process, increases."""
        return self._index.stats().epoch

    def variants(self, key: bytes) -> Sequence[Meta]:
        records = self._index.records(key_prefix(key))
        records.sort(key=lambda item: item[1].serial, reverse=True)
        return [r.meta for _, r in records if r.meta is not None and r.meta.key == key]

    def open(self, meta: Meta) -> DiskBody | None:
        ident = entry_id(meta.key, meta.variant)
        with self._index.read() as txn:
            raw = txn.get(ident, db=self._index.entries)
        record = Record.decode(raw) if raw is not None else None
        if record is None or not _same(record.meta, meta):
            return None
        try:
            fd = os.open(self.body_path(record.name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd < 0 or os.fstat(fd).st_size != record.length:
            if fd >= 0:
                os.close(fd)
            self._drop(ident, record.name)
            return None
        now = int(self._clock() * 1000)
        if now - record.used >= USE_INTERVAL * 1000:
            with contextlib.suppress(lmdb.Error):  # the LRU order is best effort
                self._index.write(lambda batch: _use(batch, ident, record.name, now))
        return DiskBody(fd, record.length)

    def writer(self, meta: Meta) -> DiskWriter | None:
        length = declared_length(meta)
        if self._closed or (length is not None and length > self.max_object_size):
            return None
        name = secrets.token_bytes(16)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(self.temporary(name), flags, 0o644)
        except OSError:
            return None
        return DiskWriter(self, meta, name, fd)

    def insert(self, meta: Meta, name: bytes) -> Meta | None:
        """Enter a committed body file in the index (DiskWriter.commit's end), replacing the
        variant stored before and evicting to make room; None when it does not fit."""
        if self._closed:
            return None
        ident = entry_id(meta.key, meta.variant)
        used = int(self._clock() * 1000)

        def change(batch: Batch) -> Meta | None:
            batch.delete(ident)
            record = Record(batch.stats.serial + 1, used, name, meta.length, meta)
            size = len(record.encode()) + meta.length
            if size > self.max_size or not batch.evict(size, self.max_size):
                return None
            batch.stats.serial += 1
            batch.put(ident, record)
            return meta

        try:
            return self._index.write(change)
        except lmdb.Error:  # the map full after evicting, the disk full: give this one up
            return None

    def update(self, meta: Meta) -> bool:
        ident = entry_id(meta.key, meta.variant)

        def change(batch: Batch) -> bool:
            record = batch.record(ident)
            if record is None or not _same(record.meta, meta):
                return False
            record = attrs.evolve(record, meta=meta)
            size = len(record.encode()) + record.length
            batch.delete(ident, keep_body=True)
            if size > self.max_size or not batch.evict(size, self.max_size):
                batch.doomed.append(record.name)
                return False
            batch.put(ident, record)
            return True

        try:
            return self._index.write(change)
        except lmdb.Error:
            return False

    def remove(self, key: bytes, variant: bytes | None = None) -> int:
        def change(batch: Batch) -> int:
            if variant is not None:
                idents = {entry_id(key, variant)}
            else:
                idents = batch.ids(self._index.entries, key_prefix(key))
            dropped = 0
            for ident in idents:
                record = batch.record(ident)
                if record is not None and (record.meta is None or record.meta.key == key):
                    batch.delete(ident)
                    dropped += 1
            batch.stats.epoch += bool(dropped)
            return dropped

        return self._index.write(change)

    def purge(
        self,
        *,
        url: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
        soft: bool = False,
        now: float = 0.0,
    ) -> int:
        """Purges by URL and by prefix are range scans of the urls index; by tag, of the
        tags index; each candidate is checked against its meta."""

        def change(batch: Batch) -> int:
            index, candidates = self._index, set()
            for text in (url, prefix):
                if text is not None:
                    candidates |= batch.ids(index.urls, index_text(text))
            if tag is not None:
                candidates |= batch.ids(index.tags, index_text(tag) + b"\0")
            purged = 0
            for ident in sorted(candidates):
                record = batch.record(ident)
                if record is None or (meta := record.meta) is None:
                    continue
                if not purge_matches(meta, url, prefix, tag):
                    continue
                purged += 1
                if not soft:
                    batch.delete(ident)
                elif meta.invalid_after is None or meta.invalid_after > now:
                    invalid = attrs.evolve(meta, invalid_after=now)
                    batch.replace(ident, attrs.evolve(record, meta=invalid))
            batch.stats.epoch += bool(purged)
            return purged

        return self._index.write(change)

    @property
    def entries(self) -> int:
        return self._index.stats().entries

    @property
    def size(self) -> int:
        return self._index.stats().bytes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.locks.close()
            self._index.close()

    def temporary(self, name: bytes) -> str:
        return os.path.join(self.path, "tmp", name.hex() + ".tmp")

    def body_path(self, name: bytes) -> str:
        text = name.hex()
        return os.path.join(self.path, "bodies", text[:2], text)

    def unlink(self, names: list[bytes]) -> None:
        for name in names:
            _remove(self.body_path(name))

    def _drop(self, ident: bytes, name: bytes) -> None:
        """Forget an entry whose body file is gone or short (unless replaced since)."""

        def change(batch: Batch) -> None:
            record = batch.record(ident)
            if record is not None and record.name == name:
                batch.delete(ident)
                batch.stats.epoch += 1

        with contextlib.suppress(lmdb.Error):  # tried again at the next open
            self._index.write(change)

    def _sweep(self) -> None:
        """Delete the files that crashed processes left: temporary files, and body files
        without an entry, older than TEMPORARY_AGE. Once per SWEEP_INTERVAL for all the
        processes; a full listing and a full scan of the index."""
        now = self._clock()

        def claim(batch: Batch) -> bool:
            if now - batch.stats.swept < SWEEP_INTERVAL:
                return False
            batch.stats.swept = now
            return True

        if not self._index.write(claim):
            return
        old = now - TEMPORARY_AGE
        for path in _old_files(os.path.join(self.path, "tmp"), old):
            _remove(path)
        bodies = os.path.join(self.path, "bodies")
        found = [path for xx in range(256) for path in _old_files(f"{bodies}/{xx:02x}", old)]
        indexed = {name.hex() for name in self._index.names()}  # after the listing
        for path in found:
            if os.path.basename(path) not in indexed:
                _remove(path)


def _same(stored: Meta | None, meta: Meta) -> bool:
    """`meta` describes the stored response (the same body, not a newer one since)."""
    return (
        stored is not None
        and stored.key == meta.key
        and stored.variant == meta.variant
        and stored.checksum == meta.checksum
        and stored.length == meta.length
    )


def _use(batch: Batch, ident: bytes, name: bytes, now: int) -> None:
    record = batch.record(ident)
    if record is not None and record.meta is not None and record.name == name:
        batch.replace(ident, attrs.evolve(record, used=now))


def _old_files(directory: str, before: float) -> list[str]:
    """The files of `directory` last written before `before`."""
    try:
        with os.scandir(directory) as entries:
            return [
                entry.path
                for entry in entries
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < before
            ]
    except OSError:
        return []


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
