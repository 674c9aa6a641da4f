"""proxyd.cache.memory: the memory tier, an LRU bounded in bytes."""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import pytest

from proxyd.cache.memory import MemoryStore, meta_size
from proxyd.cache.store import Meta, Writer


def meta(
    key: bytes = b"k",
    variant: bytes = b"",
    url: str = "http://example.test/a",
    tags: tuple[str, ...] = (),
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"text/plain"),),
) -> Meta:
    return Meta(
        key=key,
        variant=variant,
        url=url,
        status=200,
        reason=b"OK",
        headers=headers,
        request_time=1000.0,
        response_time=1001.0,
        tags=tags,
    )


def store(into: MemoryStore, m: Meta, body: bytes = b"hello", chunk: int = 3) -> Meta | None:
    writer = into.writer(m)
    assert writer is not None
    for start in range(0, len(body), chunk):
        if not writer.append(body[start : start + chunk]):
            break
    return writer.commit()


def read_all(s: MemoryStore, m: Meta) -> bytes:
    body = s.open(m)
    assert body is not None
    return body.read_at(0, body.length)


def test_a_committed_response_is_found_with_its_length_and_checksum() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    stored = store(s, meta(), b"hello world")
    assert stored is not None
    assert stored.length == 11
    assert stored.checksum == zlib.crc32(b"hello world")
    assert s.variants(b"k") == [stored]
    assert read_all(s, stored) == b"hello world"
    assert s.entries == 1
    assert s.size == 11 + meta_size(stored)


def test_commit_replaces_the_variant_and_lists_the_newest_first() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    gzip = store(s, meta(variant=b"gzip"), b"one")
    plain = store(s, meta(variant=b""), b"two")
    again = store(s, meta(variant=b"gzip"), b"three")
    assert s.variants(b"k") == [again, plain]
    assert gzip is not None and s.open(gzip) is None  # the old body is another response
    assert again is not None and read_all(s, again) == b"three"
    assert s.entries == 2


def test_commit_with_headers_stores_them() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    writer = s.writer(meta())
    assert writer is not None
    writer.append(b"x")
    stored = writer.commit(((b"etag", b'"1"'),))
    assert stored is not None and stored.headers == ((b"etag", b'"1"'),)
    assert s.variants(b"k")[0].headers == ((b"etag", b'"1"'),)


@pytest.mark.parametrize(("offset", "size"), [(0, 10), (2, 5), (3, 3), (4, 100), (9, 1), (10, 4)])
def test_read_at_across_chunks(offset: int, size: int) -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    writer = s.writer(meta())
    assert writer is not None
    for piece in (b"012", b"3", b"", b"45678", b"9"):
        writer.append(piece)
    expected = b"0123456789"[offset : offset + size]
    assert writer.body().read_at(offset, size) == expected
    stored = writer.commit()
    assert stored is not None
    body = s.open(stored)
    assert body is not None and body.read_at(offset, size) == expected


def test_a_reader_sees_the_bytes_as_they_are_appended() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    writer = s.writer(meta())
    assert writer is not None
    body = writer.body()
    assert body.length == 0 and body.read_at(0, 10) == b""
    writer.append(b"abc")
    assert body.length == 3 and body.read_at(1, 10) == b"bc"
    writer.append(b"def")
    assert body.length == 6 and body.read_at(2, 3) == b"cde"
    writer.commit()
    assert body.read_at(0, 100) == b"abcdef"


def test_a_reader_of_an_aborted_writer_fails_rather_than_see_a_partial_body() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    writer = s.writer(meta())
    assert writer is not None
    body = writer.body()
    writer.append(b"abc")
    writer.abort()
    writer.abort()  # idempotent
    with pytest.raises(OSError):
        body.read_at(0, 3)
    assert writer.commit() is None
    assert s.variants(b"k") == [] and s.entries == 0


def entry_size(body: bytes, m: Meta | None = None) -> int:
    return len(body) + meta_size(m or meta())


def test_an_entry_exactly_filling_the_tier_fits() -> None:
    s = MemoryStore(max_size=entry_size(b"x" * 100), max_object_size=1 << 16)
    stored = store(s, meta(), b"x" * 100)
    assert stored is not None and s.size == s.max_size


def test_an_entry_one_byte_larger_than_the_tier_is_never_stored() -> None:
    s = MemoryStore(max_size=entry_size(b"x" * 100), max_object_size=1 << 16)
    assert store(s, meta(), b"x" * 101) is None
    assert s.entries == 0 and s.size == 0


def test_the_least_recently_served_goes_first_when_a_commit_needs_room() -> None:
    bound = 3 * entry_size(b"x" * 100)
    s = MemoryStore(max_size=bound, max_object_size=1 << 16)
    a = store(s, meta(b"a"), b"x" * 100)
    b = store(s, meta(b"b"), b"x" * 100)
    c = store(s, meta(b"c"), b"x" * 100)
    assert a is not None and b is not None and c is not None
    assert s.size == bound  # three exactly at the bound
    assert s.open(a) is not None  # a served: b is now the least recently used
    store(s, meta(b"d"), b"x" * 99)  # fits in b's room
    assert s.variants(b"b") == [] and s.entries == 3
    assert s.size == bound - 1
    store(s, meta(b"e"), b"x" * 101)  # c's room and the spare byte: exactly at the bound
    assert s.variants(b"c") == [] and s.size == bound
    assert [k for k in (b"a", b"d", b"e") if s.variants(k)] == [b"a", b"d", b"e"]
    store(s, meta(b"f"), b"x" * 102)  # two bytes more than a's room: a and d go
    assert [k for k in (b"a", b"d", b"e", b"f") if s.variants(k)] == [b"e", b"f"]
    assert s.size == entry_size(b"x" * 101) + entry_size(b"x" * 102)


def test_max_object_size_at_the_bound() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=10)
    assert store(s, meta(b"a"), b"x" * 10, chunk=4) is not None
    writer = s.writer(meta(b"b"))
    assert writer is not None
    assert writer.append(b"x" * 10)
    assert not writer.append(b"x")  # one more byte: the writer gives up
    assert not writer.append(b"")  # and stays given up
    assert writer.commit() is None
    assert s.variants(b"b") == []


def test_a_declared_length_over_max_object_size_is_refused_at_once() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=10)
    assert s.writer(meta(headers=((b"Content-Length", b"11"),))) is None
    assert s.writer(meta(headers=((b"Content-Length", b"10"),))) is not None


def test_update_is_matched_by_checksum() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    stored = store(s, meta(), b"one")
    assert stored is not None
    fresher = attrs.evolve(stored, headers=((b"etag", b'"2"'),), response_time=2000.0)
    assert s.update(fresher)
    assert s.variants(b"k") == [fresher]
    assert s.size == 3 + meta_size(fresher)
    newer = store(s, meta(), b"two")  # a newer body stored since the 304 was asked for
    assert newer is not None
    assert not s.update(attrs.evolve(stored, response_time=3000.0))
    assert s.variants(b"k") == [newer]
    assert not s.update(meta(b"gone"))


def test_remove_one_variant_or_all() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    store(s, meta(variant=b"1"))
    store(s, meta(variant=b"2"))
    store(s, meta(variant=b"3"))
    assert s.remove(b"k", b"2") == 1
    assert s.remove(b"k", b"2") == 0
    assert s.remove(b"k") == 2
    assert s.entries == 0 and s.size == 0


def purge_fixture() -> tuple[MemoryStore, dict[str, Meta]]:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    stored = {}
    for name, url, tags in [
        ("a", "http://example.test/a", ("red",)),
        ("a2", "http://example.test/a", ()),
        ("ab", "http://example.test/a/b", ("red", "blue")),
        ("other", "http://other.test/a", ("blue",)),
    ]:
        m = store(s, meta(name.encode(), url=url, tags=tags))
        assert m is not None
        stored[name] = m
    return s, stored


@pytest.mark.parametrize(
    ("criteria", "purged"),
    [
        ({"url": "http://example.test/a"}, {"a", "a2"}),
        ({"prefix": "http://example.test/a"}, {"a", "a2", "ab"}),
        ({"prefix": "http://example.test/a/"}, {"ab"}),
        ({"tag": "red"}, {"a", "ab"}),
        ({"tag": "blue"}, {"ab", "other"}),
        ({"tag": "green"}, set()),
        ({"url": "http://other.test/a", "tag": "red"}, {"a", "ab", "other"}),
    ],
)
def test_purge_hard_and_soft(criteria: dict[str, Any], purged: set[str]) -> None:
    s, stored = purge_fixture()
    assert s.purge(**criteria) == len(purged)
    assert {name for name in stored if not s.variants(name.encode())} == purged
    s, stored = purge_fixture()
    assert s.purge(soft=True, now=5000.0, **criteria) == len(purged)
    for name in stored:
        (kept,) = s.variants(name.encode())
        assert kept.invalid_after == (5000.0 if name in purged else None)
        assert s.open(kept) is not None  # still served where stale may be


def test_a_soft_purge_keeps_an_earlier_invalidation() -> None:
    s, _ = purge_fixture()
    s.purge(tag="red", soft=True, now=100.0)
    s.purge(tag="red", soft=True, now=200.0)
    assert s.variants(b"a")[0].invalid_after == 100.0


def test_clear_and_close() -> None:
    s, _ = purge_fixture()
    s.clear()
    assert s.entries == 0 and s.size == 0
    s.close()
    assert s.writer(meta()) is None


def test_a_memory_writer_is_a_writer() -> None:
    s = MemoryStore(max_size=1 << 20, max_object_size=1 << 16)
    writer: Writer | None = s.writer(meta())
    assert writer is not None and writer.meta == meta() and writer.written == 0
