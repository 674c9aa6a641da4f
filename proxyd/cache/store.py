"""What the cache filter asks of its storage, and what a stored response is: the interface
that the memory tier (proxyd.cache.memory) and the disk tier (proxyd.cache.disk) provide,
and that proxyd.cache.tiers puts one in front of the other.

Every call is synchronous and short: the memory tier works on bytes in memory; the disk
tier keeps its index in LMDB (a read or write transaction of a few microseconds) and reads
and writes body files in pieces of at most a read size (local files, from the page cache
most of the time). Bodies are never held whole by the disk tier: a body is written as it
arrives (Writer.append) and read in pieces (Body.read_at).

A stored response is found by its primary key (the cache key of the request: method
aside, scheme, host, path and query as the route's key settings make them) and, among the
responses stored under that key, by its variant (the secondary key of Vary, RFC 9111 4.1);
responses without Vary have the variant b"".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

Fields = tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class Meta:
    """A stored response without its body."""

    key: bytes
    """The primary cache key."""
    variant: bytes
    """The secondary key (proxyd.cache.validation.vary_key's values joined), b"" without
    Vary."""
    url: str
    """The effective request URI the response answers (scheme://host/path?query), for purges
    by URL and by prefix."""
    status: int
    reason: bytes
    headers: Fields
    """The response's fields as stored (hop-by-hop fields removed)."""
    request_time: float
    """When the request that fetched it was sent (the reactor's seconds, wall clock)."""
    response_time: float
    """When its head was received."""
    length: int = -1
    """The body's bytes; -1 until the writer commits."""
    tags: tuple[str, ...] = ()
    """The purge tags the server gave it (Surrogate-Key / Cache-Tag)."""
    invalid_after: float | None = None
    """A soft purge: from this time on the response is stale whatever its freshness (served
    only where stale may be, and revalidated)."""
    checksum: int = 0
    """The body's CRC-32 (zlib.crc32), checked as the body is read to its end."""


class Body(Protocol):
    """The body of a committed response, or of one being written (read-while-writer)."""

    verified: bool
    """Its bytes are known good (held in memory, checked when they got there): sending it
    whole computes no checksum."""

    @property
    def length(self) -> int:
        """The bytes available to read now (the whole body once committed)."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer at the end of what is available). Raises
        OSError when the stored body cannot be read (the tier drops the entry)."""

    def close(self) -> None:
        """Done reading (a disk body closes its file)."""


class Writer(Protocol):
    """A response being stored; readers may read what is written so far (`body()`)."""

    @property
    def meta(self) -> Meta: ...

    @property
    def written(self) -> int: ...

    def append(self, data: bytes) -> bool:
        """Store more of the body. False: the writer gave up (over max_object_size, disk
        full, an I/O error) and removed what it wrote; later calls do nothing."""

    def commit(self, headers: Fields | None = None) -> Meta | None:
        """The body is complete: the response becomes visible to lookups (replacing the
        variant stored before, if any), with `headers` in place of the meta's when given.
        Returns the stored meta (with length and checksum), or None when the writer had
        given up or the commit failed."""

    def abort(self) -> None:
        """Forget the response (the fetch failed or was cut); idempotent."""

    def body(self) -> Body:
        """A reader of the bytes written so far (its `length` grows as they are)."""


class Store(Protocol):
    """A storage tier (memory or disk), bounded in bytes; least recently used responses go
    first when a new one needs room."""

    def variants(self, key: bytes) -> Sequence[Meta]:
        """The committed responses stored under `key` (at most one per variant), most
        recently stored first. Counts as a use of each for the LRU order only when served
        (`open`)."""

    def open(self, meta: Meta) -> Body | None:
        """The body of a response `variants` returned; None when it is gone (evicted or
        purged since) or fails its check (wrong length: the entry is dropped)."""

    def writer(self, meta: Meta) -> Writer | None:
        """Begin storing a response; None when the tier will not take it (Content-Length
        over max_object_size, the tier closed)."""

    def update(self, meta: Meta) -> bool:
        """Replace the stored response's meta (a 304 freshened its fields, a soft purge):
        matched by key, variant and checksum (so that a newer body stored since is not given
        old fields). False when it is no longer there."""

    def remove(self, key: bytes, variant: bytes | None = None) -> int:
        """Drop the responses under `key` (one variant, or all): how many were dropped."""

    def purge(
        self,
        *,
        url: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
        soft: bool = False,
        now: float = 0.0,
    ) -> int:
        """Drop (or, `soft`, mark stale from `now` on) every response whose url is `url`,
        starts with `prefix`, or carries `tag`: how many were purged."""

    @property
    def entries(self) -> int: ...

    @property
    def size(self) -> int:
        """The bytes stored (bodies and metas)."""

    def close(self) -> None:
        """Release files and the index (at stop or when a reload drops the cache)."""


def declared_length(meta: Meta) -> int | None:
    """The body's length as the response announced it (its committed length, else a valid
    Content-Length), for a tier to refuse at once what it could never hold; None when
    unknown (chunked, or read to the close)."""
    if meta.length >= 0:
        return meta.length
    for name, value in meta.headers:
        if name.lower() == b"content-length":
            text = value.strip()
            return int(text) if text.isdigit() else None
    return None


def purge_matches(meta: Meta, url: str | None, prefix: str | None, tag: str | None) -> bool:
    """Whether a purge by `url`, `prefix` or `tag` (any that is given) covers `meta`."""
    return (
        (url is not None and meta.url == url)
        or (prefix is not None and meta.url.startswith(prefix))
        or (tag is not None and tag in meta.tags)
    )
