"""The disk tier's index (proxyd.cache.disk): which responses are stored, under which body
file, in what LRU order, with the totals that bound the tier, in one LMDB environment
shared by every worker process that opens the cache directory.

Its named databases:

- entries: entry id (a hash of the primary key, then of the variant) -> a record: a fixed
  head (serial, last use, body file name, body length) and the meta as JSON.
- lru: last use (ms, big-endian) + entry id -> b"", the eviction order.
- urls: the URL's first 400 bytes + entry id -> b"", so that purges by URL and by prefix
  are range scans (LMDB keys are at most 511 bytes; the meta's URL is checked).
- tags: the tag's first 400 bytes, NUL, entry id -> b"", for purges by tag.
- info: b"stats" -> the bytes and entries stored, the purge epoch, the serial of the last
  store and when the last startup sweep ran; written in the same transaction as every insert
  and delete, so that every process sees one bound.

LMDB serializes write transactions between processes (its lock file), so an insert that
evicts to make room and the totals it checks are one atomic step.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import attrs
import lmdb

from proxyd.cache.store import Meta

T = TypeVar("T")

ID_SIZE: Final = 24
INDEX_BYTES: Final = 400
"""How much of a URL or tag an index key holds (LMDB's default key limit is 511 bytes)."""
VERSION: Final = 1
HEAD: Final = struct.Struct(">QQ16sQ")
"""A record's head: serial, last use (ms), body file name, body length."""
STATS: Final = struct.Struct(">QQQQd")
MS: Final = struct.Struct(">Q")


def entry_id(key: bytes, variant: bytes) -> bytes:
    """An entry's id: its primary key's hash first, so that its variants are one range."""
    return key_prefix(key) + hashlib.blake2b(variant, digest_size=8).digest()


def key_prefix(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


def index_text(value: str) -> bytes:
    """A URL or tag as the urls and tags indexes key it."""
    return value.encode("utf-8", "surrogateescape")[:INDEX_BYTES]


def encode_meta(meta: Meta) -> bytes:
    """The meta as compact JSON (bytes as latin-1 text, which any byte survives)."""
    return json.dumps(
        [
            VERSION,
            meta.key.decode("latin-1"),
            meta.variant.decode("latin-1"),
            meta.url,
            meta.status,
            meta.reason.decode("latin-1"),
            [[name.decode("latin-1"), value.decode("latin-1")] for name, value in meta.headers],
            meta.request_time,
            meta.response_time,
            meta.length,
            list(meta.tags),
            meta.invalid_after,
            meta.checksum,
        ],
        separators=(",", ":"),
    ).encode("ascii")


def decode_meta(data: bytes) -> Meta | None:
    """The meta of a record; None when it is unreadable or of another version."""
    try:
        fields = json.loads(data)
        if fields[0] != VERSION:
            return None
        return Meta(
            key=fields[1].encode("latin-1"),
            variant=fields[2].encode("latin-1"),
            url=fields[3],
            status=fields[4],
            reason=fields[5].encode("latin-1"),
            headers=tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in fields[6]),
            request_time=fields[7],
            response_time=fields[8],
            length=fields[9],
            tags=tuple(fields[10]),
            invalid_after=fields[11],
            checksum=fields[12],
        )
    except (ValueError, TypeError, IndexError, AttributeError):
        return None


@attrs.frozen
class Record:
    """An entry of the index: its body file and its meta (None when unreadable)."""

    serial: int
    used: int
    """The last use recorded, in ms."""
    name: bytes
    length: int
    meta: Meta | None

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        serial, used, name, length = HEAD.unpack_from(raw)
        return cls(serial, used, name, length, decode_meta(raw[HEAD.size :]))

    def encode(self) -> bytes:
        assert self.meta is not None, "an unreadable record is only ever deleted"
        head = HEAD.pack(self.serial, self.used, self.name, self.length)
        return head + encode_meta(self.meta)


@attrs.define
class Stats:
    bytes: int = 0
    entries: int = 0
    epoch: int = 0
    serial: int = 0
    swept: float = 0.0
    """When the last startup sweep of orphan files began (the clock's seconds)."""


def _scan(txn: lmdb.Transaction[bytes], db: lmdb._Database, prefix: bytes) -> list[bytes]:
    """The keys of `db` that begin with `prefix`."""
    cursor = txn.cursor(db)
    found = cursor.set_range(prefix) if prefix else cursor.first()
    keys = []
    while found and cursor.key().startswith(prefix):
        keys.append(cursor.key())
        found = cursor.next()
    return keys


class Batch:
    """One write transaction: the records changed and the totals kept with them; the body
    files of deleted records are unlinked once it commits."""

    def __init__(self, index: Index, txn: lmdb.Transaction[bytes]) -> None:
        self.index = index
        self.txn = txn
        raw = txn.get(b"stats", db=index.info)
        self.stats = Stats(*STATS.unpack(raw)) if raw is not None else Stats()
        self.doomed: list[bytes] = []

    def record(self, ident: bytes) -> Record | None:
        raw = self.txn.get(ident, db=self.index.entries)
        return Record.decode(raw) if raw is not None else None

    def ids(self, db: lmdb._Database, prefix: bytes) -> set[bytes]:
        return {key[-ID_SIZE:] for key in _scan(self.txn, db, prefix)}

    def put(self, ident: bytes, record: Record) -> None:
        """Add an entry (none is stored under `ident`)."""
        raw, meta = record.encode(), record.meta
        assert meta is not None
        txn, index = self.txn, self.index
        txn.put(ident, raw, db=index.entries)
        txn.put(MS.pack(record.used) + ident, b"", db=index.lru)
        txn.put(index_text(meta.url) + ident, b"", db=index.urls)
        for tag in set(meta.tags):
            txn.put(index_text(tag) + b"\0" + ident, b"", db=index.tags)
        self.stats.bytes += len(raw) + record.length
        self.stats.entries += 1

    def delete(self, ident: bytes, keep_body: bool = False) -> Record | None:
        raw = self.txn.get(ident, db=self.index.entries)
        if raw is None:
            return None
        record = Record.decode(raw)
        txn, index = self.txn, self.index
        txn.delete(ident, db=index.entries)
        txn.delete(MS.pack(record.used) + ident, db=index.lru)
        if record.meta is not None:  # else its url and tag rows stay, found by no record
            txn.delete(index_text(record.meta.url) + ident, db=index.urls)
            for tag in set(record.meta.tags):
                txn.delete(index_text(tag) + b"\0" + ident, db=index.tags)
        self.stats.bytes -= len(raw) + record.length
        self.stats.entries -= 1
        if not keep_body:
            self.doomed.append(record.name)
        return record

    def replace(self, ident: bytes, record: Record) -> None:
        """Rewrite an entry, keeping its body file."""
        self.delete(ident, keep_body=True)
        self.put(ident, record)

    def evict(self, room: int, bound: int) -> bool:
        """Delete the least recently used entries until `room` more bytes fit in `bound`."""
        while self.stats.bytes + room > bound:
            cursor = self.txn.cursor(self.index.lru)
            if not cursor.first():
                return False
            oldest = cursor.key()
            self.txn.delete(oldest, db=self.index.lru)
            self.delete(oldest[MS.size :])
        return True

    def evict_share(self, share: int = 8) -> None:
        """Delete the least recently used 1/share of the entries (the map is full)."""
        cursor = self.txn.cursor(self.index.lru)
        oldest: list[bytes] = []
        found = cursor.first()
        while found and len(oldest) < max(1, self.stats.entries // share):
            oldest.append(cursor.key())
            found = cursor.next()
        for key in oldest:
            self.txn.delete(key, db=self.index.lru)
            self.delete(key[MS.size :])

    def finish(self) -> None:
        stats = attrs.astuple(self.stats)
        self.txn.put(b"stats", STATS.pack(*stats), db=self.index.info)


@attrs.define
class _Environment:
    env: lmdb.Environment
    dbs: tuple[lmdb._Database, ...]
    users: int = 0


_OPEN: dict[str, _Environment] = {}
"""The environments this process has open, by path: LMDB forbids opening one twice in a
process (its fcntl locks belong to the process), so the stores of one directory share it."""


class Index:
    """The index of one cache directory; `unlink` removes the body files of the entries a
    committed write transaction deleted."""

    def __init__(self, path: str, map_size: int, unlink: Callable[[list[bytes]], None]) -> None:
        self.path = os.path.realpath(path)
        self.unlink = unlink
        shared = _OPEN.get(self.path)
        if shared is None:
            os.makedirs(self.path, exist_ok=True)
            # metasync=False: a machine crash may lose the last transaction, never the
            # index's integrity (LMDB's MDB_NOMETASYNC); one fsync per write, not two.
            env = lmdb.open(self.path, map_size=map_size, max_dbs=8, metasync=False, lock=True)
            names = (b"entries", b"lru", b"urls", b"tags", b"info")
            shared = _OPEN[self.path] = _Environment(env, tuple(map(env.open_db, names)))
        shared.users += 1
        self._shared: _Environment | None = shared
        self.env = shared.env
        self.entries, self.lru, self.urls, self.tags, self.info = shared.dbs

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction[bytes]]:
        with self._begin(write=False) as txn:
            yield txn

    def stats(self) -> Stats:
        with self.read() as txn:
            raw = txn.get(b"stats", db=self.info)
        return Stats(*STATS.unpack(raw)) if raw is not None else Stats()

    def records(self, prefix: bytes) -> list[tuple[bytes, Record]]:
        """The records whose ids begin with `prefix`."""
        with self.read() as txn:
            cursor = txn.cursor(self.entries)
            found = cursor.set_range(prefix)
            records = []
            while found and cursor.key().startswith(prefix):
                records.append((cursor.key(), Record.decode(cursor.value())))
                found = cursor.next()
        return records

    def names(self) -> set[bytes]:
        """The body file names of every entry (the startup sweep's one full scan)."""
        with self.read() as txn:
            return {HEAD.unpack_from(raw)[2] for raw in txn.cursor(self.entries).iternext(False)}

    def write(self, change: Callable[[Batch], T]) -> T:
        """Run `change` in a write transaction; when the map is full, evict an eighth of the
        entries and try again, twice (then lmdb.MapFullError). LMDB reuses the pages a
        transaction freed only from the second transaction after it on (the one before it
        must stay whole for a crash), hence two evictions before the last try."""
        for _ in range(2):
            try:
                return self._write(change)
            except lmdb.MapFullError:
                self._write(Batch.evict_share)
        return self._write(change)

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None:
            return
        shared.users -= 1
        if not shared.users:
            del _OPEN[self.path]
            shared.env.close()

    def _write(self, change: Callable[[Batch], T]) -> T:
        with self._begin(write=True) as txn:
            batch = Batch(self, txn)
            result = change(batch)
            batch.finish()
        if batch.doomed:
            self.unlink(batch.doomed)
        return result

    def _begin(self, write: bool) -> lmdb.Transaction[bytes]:
        try:
            return self.env.begin(write=write)
        except lmdb.MapResizedError:  # another process grew the map: adopt its size
            self.env.set_mapsize(0)
            return self.env.begin(write=write)
