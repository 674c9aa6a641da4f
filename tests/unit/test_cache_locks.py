"""proxyd.cache.locks: one fetch per key across processes sharing a disk tier."""

from __future__ import annotations

import os
from pathlib import Path

from proxyd.cache.locks import FetchLocks


def test_one_claim_per_key_until_released(tmp_path: Path) -> None:
    now = [1000.0]
    worker1 = FetchLocks(str(tmp_path), lambda: now[0])
    worker2 = FetchLocks(str(tmp_path), lambda: now[0])
    assert worker1.claim(b"k", ttl=5.0)
    assert not worker2.claim(b"k", ttl=5.0)
    assert worker2.held(b"k", ttl=5.0) and not worker1.held(b"k", ttl=5.0)
    assert worker2.claim(b"other", ttl=5.0)
    worker1.release(b"k")
    assert not worker2.held(b"k", ttl=5.0)
    assert worker2.claim(b"k", ttl=5.0)


def test_a_lock_older_than_its_ttl_is_taken_over(tmp_path: Path) -> None:
    dead = FetchLocks(str(tmp_path), lambda: 0.0)
    assert dead.claim(b"k", ttl=5.0)
    path = next(tmp_path.iterdir())
    os.utime(path, (100.0, 100.0))
    alive = FetchLocks(str(tmp_path), lambda: 105.5)
    assert not alive.held(b"k", ttl=5.0)
    assert alive.claim(b"k", ttl=5.0)


def test_release_of_what_another_holds_does_nothing_and_close_releases_mine(
    tmp_path: Path,
) -> None:
    now = lambda: 1e12  # noqa: E731
    one = FetchLocks(str(tmp_path), now)
    two = FetchLocks(str(tmp_path), now)
    one.claim(b"a", ttl=1e13)
    one.claim(b"b", ttl=1e13)
    two.release(b"a")
    assert two.held(b"a", ttl=1e13)
    one.close()
    assert list(tmp_path.iterdir()) == []
