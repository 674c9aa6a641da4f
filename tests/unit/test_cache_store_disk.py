"""proxyd.cache.disk: the disk tier shared by the workers, its index in LMDB."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import attrs
import pytest

from proxyd.cache.disk import TEMPORARY_AGE, DiskStore
from proxyd.cache.store import Meta

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def meta(
    key: bytes = b"k",
    variant: bytes = b"",
    url: str = "http://example.test/a",
    tags: tuple[str, ...] = (),
) -> Meta:
    return Meta(
        key=key,
        variant=variant,
        url=url,
        status=200,
        reason=b"OK",
        headers=((b"content-type", b"text/plain"), (b"x-bytes", bytes(range(128, 256)))),
        request_time=1000.0,
        response_time=1001.5,
        tags=tags,
    )


def disk(
    path: Path, max_size: int = 1 << 24, max_object_size: int = 1 << 20, **kwargs: Any
) -> DiskStore:
    return DiskStore(str(path), max_size, max_object_size, kwargs.pop("clock", Clock()), **kwargs)


def store(into: DiskStore, m: Meta, body: bytes = b"hello", chunk: int = 3) -> Meta | None:
    writer = into.writer(m)
    assert writer is not None
    for start in range(0, len(body), chunk):
        if not writer.append(body[start : start + chunk]):
            break
    return writer.commit()


def read_all(s: DiskStore, m: Meta) -> bytes:
    body = s.open(m)
    assert body is not None
    try:
        return body.read_at(0, body.length)
    finally:
        body.close()


def files(path: Path, folder: str) -> list[Path]:
    return sorted(p for p in (path / folder).rglob("*") if p.is_file())


def test_a_committed_response_is_found_read_and_replaced_by_variant(tmp_path: Path) -> None:
    s = disk(tmp_path)
    stored = store(s, meta(), b"hello world")
    assert stored is not None
    assert (stored.length, stored.checksum) == (11, zlib.crc32(b"hello world"))
    assert s.variants(b"k") == [stored]
    assert read_all(s, stored) == b"hello world"
    gzip = store(s, meta(variant=b"gzip"), b"zz")
    again = store(s, meta(), b"again")
    assert again is not None and gzip is not None
    assert s.variants(b"k") == [again, gzip]
    assert s.open(stored) is None  # replaced: another body
    assert read_all(s, again) == b"again"
    assert s.entries == 2
    assert len(files(tmp_path, "bodies")) == 2  # the replaced body file is gone
    assert files(tmp_path, "tmp") == []
    assert s.variants(b"other") == []


def test_commit_with_headers_stores_them(tmp_path: Path) -> None:
    s = disk(tmp_path)
    writer = s.writer(meta())
    assert writer is not None
    writer.append(b"x")
    stored = writer.commit(((b"etag", b'"1"'),))
    assert stored is not None and s.variants(b"k")[0].headers == ((b"etag", b'"1"'),)


@pytest.mark.parametrize(("offset", "size"), [(0, 10), (2, 5), (3, 3), (4, 100), (9, 1), (10, 4)])
def test_read_at_ranges(tmp_path: Path, offset: int, size: int) -> None:
    s = disk(tmp_path)
    stored = store(s, meta(), b"0123456789")
    assert stored is not None
    body = s.open(stored)
    assert body is not None
    assert body.read_at(offset, size) == b"0123456789"[offset : offset + size]
    body.close()


def test_a_reader_sees_the_bytes_as_they_are_appended(tmp_path: Path) -> None:
    s = disk(tmp_path)
    writer = s.writer(meta())
    assert writer is not None
    body = writer.body()
    assert body.length == 0 and body.read_at(0, 10) == b""
    writer.append(b"abc")
    assert body.length == 3 and body.read_at(1, 10) == b"bc"
    writer.append(b"def")
    assert body.length == 6 and body.read_at(2, 3) == b"cde"
    writer.commit()
    assert body.read_at(0, 100) == b"abcdef"  # the same file under its committed name
    body.close()


def test_an_aborted_writer_leaves_nothing_and_its_reader_fails(tmp_path: Path) -> None:
    s = disk(tmp_path)
    writer = s.writer(meta())
    assert writer is not None
    body = writer.body()
    writer.append(b"abc")
    writer.abort()
    writer.abort()
    with pytest.raises(OSError):
        body.read_at(0, 3)
    body.close()
    assert writer.commit() is None
    assert s.variants(b"k") == [] and s.entries == 0
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "bodies") == []


def test_max_object_size_at_the_bound(tmp_path: Path) -> None:
    s = disk(tmp_path, max_object_size=10)
    assert store(s, meta(b"a"), b"x" * 10, chunk=4) is not None
    writer = s.writer(meta(b"b"))
    assert writer is not None
    assert writer.append(b"x" * 10)
    assert not writer.append(b"x")  # gives up: its temporary file is removed
    assert files(tmp_path, "tmp") == []
    assert writer.commit() is None
    assert s.variants(b"b") == []
    assert s.writer(attrs.evolve(meta(), headers=((b"content-length", b"11"),))) is None


def size_of(tmp_path: Path, m: Meta, body: bytes) -> int:
    """What one entry counts for against the bound (measured in a scratch directory)."""
    scratch = disk(tmp_path / f"scratch-{len(list(tmp_path.iterdir()))}")
    assert store(scratch, m, body) is not None
    size = scratch.size
    scratch.close()
    return size


def test_an_entry_exactly_filling_the_tier_fits_one_byte_more_never(tmp_path: Path) -> None:
    size = size_of(tmp_path, meta(), b"x" * 100)
    s = disk(tmp_path / "exact", max_size=size)
    assert store(s, meta(), b"x" * 100) is not None and s.size == size
    small = disk(tmp_path / "small", max_size=size - 1)
    assert store(small, meta(), b"x" * 100) is None
    assert small.entries == 0 and small.size == 0
    assert files(tmp_path / "small", "bodies") == []


def test_the_least_recently_used_goes_first_at_the_exact_bound(tmp_path: Path) -> None:
    sizes = [size_of(tmp_path, meta(name), b"x" * 100) for name in (b"a", b"b", b"c")]
    clock = Clock()
    s = disk(tmp_path / "lru", max_size=sum(sizes), clock=clock)
    stored = {}
    for name in (b"a", b"b", b"c"):
        kept = store(s, meta(name), b"x" * 100)
        assert kept is not None
        stored[name] = kept
        clock.now += 61
    assert s.size == sum(sizes) and s.entries == 3  # exactly at the bound
    body = s.open(stored[b"a"])  # a used: b is now the least recently used
    assert body is not None
    body.close()
    clock.now += 61
    assert store(s, meta(b"d"), b"x" * 100) is not None  # exactly b's room: b goes
    assert [n for n in (b"a", b"b", b"c", b"d") if s.variants(n)] == [b"a", b"c", b"d"]
    assert s.size == s.max_size
    clock.now += 61
    more = size_of(tmp_path, meta(b"e"), b"x" * 101)
    assert more == sizes[2] + 1  # one byte more than c's room: c and a go
    assert store(s, meta(b"e"), b"x" * 101) is not None
    assert [n for n in (b"a", b"b", b"c", b"d", b"e") if s.variants(n)] == [b"d", b"e"]
    assert s.size == sizes[1] + more
    assert len(files(tmp_path / "lru", "bodies")) == 2


def test_a_use_is_recorded_at_most_once_a_minute(tmp_path: Path) -> None:
    sizes = [size_of(tmp_path, meta(name), b"x" * 100) for name in (b"a", b"b")]
    clock = Clock()
    s = disk(tmp_path / "lru", max_size=sum(sizes), clock=clock)
    a = store(s, meta(b"a"), b"x" * 100)
    clock.now += 30
    store(s, meta(b"b"), b"x" * 100)
    assert a is not None
    body = s.open(a)  # 30 s after a was stored: not recorded, a stays the oldest
    assert body is not None
    body.close()
    store(s, meta(b"c"), b"x" * 100)
    assert s.variants(b"a") == [] and s.variants(b"b") != []


def test_update_is_matched_by_checksum(tmp_path: Path) -> None:
    s = disk(tmp_path)
    stored = store(s, meta(), b"one")
    assert stored is not None
    fresher = attrs.evolve(stored, headers=((b"etag", b'"2"'),), response_time=2000.0)
    assert s.update(fresher)
    assert s.variants(b"k") == [fresher]
    assert read_all(s, fresher) == b"one"
    newer = store(s, meta(), b"two")
    assert not s.update(attrs.evolve(stored, response_time=3000.0))
    assert s.variants(b"k") == [newer]
    assert not s.update(meta(b"gone"))


def test_remove_one_variant_or_all(tmp_path: Path) -> None:
    s = disk(tmp_path)
    for variant in (b"1", b"2", b"3"):
        store(s, meta(variant=variant))
    assert s.remove(b"k", b"2") == 1
    assert s.remove(b"k", b"2") == 0
    assert s.remove(b"k") == 2
    assert s.entries == 0 and s.size == 0 and files(tmp_path, "bodies") == []


PURGE_ENTRIES = [
    ("a", "http://example.test/a", ("red",)),
    ("a2", "http://example.test/a", ()),
    ("ab", "http://example.test/a/b", ("red", "blue")),
    ("other", "http://other.test/a", ("blue",)),
    ("long", "http://example.test/" + "x" * 600, ("y" * 500,)),
]


@pytest.mark.parametrize(
    ("criteria", "purged"),
    [
        ({"url": "http://example.test/a"}, {"a", "a2"}),
        ({"prefix": "http://example.test/a"}, {"a", "a2", "ab"}),
        ({"prefix": "http://example.test/a/"}, {"ab"}),
        ({"prefix": "http://example.test/" + "x" * 599}, {"long"}),
        ({"url": "http://example.test/" + "x" * 599}, set()),
        ({"tag": "red"}, {"a", "ab"}),
        ({"tag": "blue"}, {"ab", "other"}),
        ({"tag": "re"}, set()),
        ({"tag": "y" * 500}, {"long"}),
        ({"url": "http://other.test/a", "tag": "red"}, {"a", "ab", "other"}),
    ],
)
@pytest.mark.parametrize("soft", [False, True])
def test_purge(tmp_path: Path, criteria: dict[str, Any], purged: set[str], soft: bool) -> None:
    s = disk(tmp_path)
    for name, url, tags in PURGE_ENTRIES:
        store(s, meta(name.encode(), url=url, tags=tags))
    epoch = s.epoch()
    assert s.purge(soft=soft, now=5000.0, **criteria) == len(purged)
    assert s.epoch() == epoch + bool(purged)
    for name, *_ in PURGE_ENTRIES:
        kept = s.variants(name.encode())
        if not soft:
            assert bool(kept) == (name not in purged)
        else:
            assert kept[0].invalid_after == (5000.0 if name in purged else None)
            assert read_all(s, kept[0]) == b"hello"
    assert s.entries == len(PURGE_ENTRIES) - (0 if soft else len(purged))


def test_a_restart_keeps_the_entries(tmp_path: Path) -> None:
    s = disk(tmp_path)
    stored = store(s, meta(tags=("t",)), b"kept")
    assert stored is not None
    size = s.size
    s.close()
    again = disk(tmp_path)
    assert again.variants(b"k") == [stored]
    assert read_all(again, stored) == b"kept"
    assert (again.entries, again.size) == (1, size)
    assert again.purge(tag="t") == 1


def test_a_truncated_body_file_is_detected_on_open_and_the_entry_dropped(
    tmp_path: Path,
) -> None:
    s = disk(tmp_path)
    stored = store(s, meta(), b"0123456789")
    assert stored is not None
    (body_file,) = files(tmp_path, "bodies")
    os.truncate(body_file, 5)
    epoch = s.epoch()
    assert s.open(stored) is None
    assert s.variants(b"k") == [] and s.entries == 0 and s.size == 0
    assert s.epoch() == epoch + 1
    assert not body_file.exists()


def test_a_missing_body_file_drops_the_entry(tmp_path: Path) -> None:
    s = disk(tmp_path)
    stored = store(s, meta())
    assert stored is not None
    files(tmp_path, "bodies")[0].unlink()
    assert s.open(stored) is None and s.entries == 0


def test_a_full_disk_leaves_no_entry_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = disk(tmp_path)
    real_write = os.write
    writes: list[int] = []

    def full(fd: int, data: bytes) -> int:
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    writer = s.writer(meta())
    assert writer is not None
    body = writer.body()
    assert writer.append(b"first")
    assert not writer.append(b"second")
    assert not writer.append(b"third")
    with pytest.raises(OSError):
        body.read_at(0, 5)  # never a partial body
    body.close()
    assert writer.commit() is None
    assert s.variants(b"k") == [] and s.entries == 0 and s.size == 0
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "bodies") == []


def test_two_workers_share_entries_purges_and_one_bound(tmp_path: Path) -> None:
    size = size_of(tmp_path, meta(b"a"), b"x" * 100)
    clock = Clock()
    one = disk(tmp_path / "c", max_size=2 * size, clock=clock)
    two = disk(tmp_path / "c", max_size=2 * size, clock=clock)
    a = store(one, meta(b"a"), b"x" * 100)
    clock.now += 1
    assert two.variants(b"a") == [a] and a is not None
    assert read_all(two, a) == b"x" * 100
    store(two, meta(b"b"), b"x" * 100)
    clock.now += 1
    assert one.entries == two.entries == 2 and one.size == two.size == 2 * size
    store(one, meta(b"c"), b"x" * 100)  # a, the oldest, makes room
    assert two.variants(b"a") == [] and two.entries == 2
    epoch = one.epoch()
    assert two.purge(url="http://example.test/a") == 2
    assert one.epoch() == epoch + 1 and one.entries == 0
    one.close()
    assert store(two, meta(b"d")) is not None  # the index stays open for the other


CHILD = """
import sys
from proxyd.cache.disk import DiskStore
from proxyd.cache.store import Meta

s = DiskStore(sys.argv[1], int(sys.argv[2]), 1 << 20, lambda: 1_000_100.0)
print(len(s.variants(b"parent")), s.purge(url="http://example.test/parent"))
meta = Meta(b"child", b"", "http://example.test/child", 200, b"OK", (), 1.0, 2.0)
writer = s.writer(meta)
writer.append(b"y" * 100)
print(writer.commit() is not None, s.entries, s.epoch())
s.close()
"""


def test_another_process_sees_the_entries_and_its_purges_are_seen(tmp_path: Path) -> None:
    one = disk(tmp_path / "c", max_size=1 << 20)
    store(one, meta(b"parent", url="http://example.test/parent"), b"x" * 100)
    store(one, meta(b"kept", url="http://example.test/kept"), b"x" * 100)
    epoch = one.epoch()
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path / "c"), str(1 << 20)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert child.stdout.split() == ["1", "1", "True", "2", str(epoch + 1)]
    assert one.variants(b"parent") == [] and one.epoch() == epoch + 1
    (child_meta,) = one.variants(b"child")
    assert read_all(one, child_meta) == b"y" * 100


def test_the_startup_sweep_removes_what_crashed_processes_left(tmp_path: Path) -> None:
    s = disk(tmp_path)
    stored = store(s, meta())
    assert stored is not None
    s.close()
    orphan = tmp_path / "bodies" / "ab" / ("ab" * 16)
    orphan.write_bytes(b"orphan")
    stale = tmp_path / "tmp" / ("cd" * 16 + ".tmp")
    stale.write_bytes(b"partial")
    young = tmp_path / "tmp" / ("ef" * 16 + ".tmp")
    young.write_bytes(b"being written")
    later = time.time() + 3 * 3600
    os.utime(young, (later, later))
    again = disk(tmp_path, clock=Clock(later + TEMPORARY_AGE - 1))
    assert not orphan.exists() and not stale.exists() and young.exists()
    assert read_all(again, stored) == b"hello"
    orphan.write_bytes(b"orphan")
    again.close()
    disk(tmp_path, clock=Clock(later + 600)).close()  # swept within the hour: not again
    assert orphan.exists()


def test_epoch_counts_purges_and_removals_not_stores(tmp_path: Path) -> None:
    s = disk(tmp_path)
    assert s.epoch() == 0
    stored = store(s, meta())
    store(s, meta())
    assert s.epoch() == 0
    assert stored is not None
    assert s.purge(url="http://example.test/none") == 0 and s.epoch() == 0
    assert s.purge(url="http://example.test/a", soft=True, now=1.0) == 1 and s.epoch() == 1
    assert s.remove(b"k") == 1 and s.epoch() == 2


def test_a_full_map_evicts_the_oldest_entries(tmp_path: Path) -> None:
    clock = Clock()
    s = disk(tmp_path, max_size=1 << 30, map_size=256 << 10, clock=clock)
    big = ((b"x-filler", b"f" * 3000),)
    stored = []
    for n in range(300):
        m = attrs.evolve(meta(b"%d" % n, url=f"http://example.test/{n}"), headers=big)
        stored.append(store(s, m, b"body"))
        clock.now += 1
    assert all(stored)  # each commit found room
    assert s.variants(b"299") and not s.variants(b"0")
    assert 0 < s.entries < 300
    assert len(files(tmp_path, "bodies")) == s.entries
