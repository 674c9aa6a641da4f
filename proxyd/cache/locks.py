"""Fetch locks shared by the processes of one disk tier (the workers of `workers = N`, or
several proxyd on one cache directory), so that a key is fetched from the origin once
across them (nginx's proxy_cache_lock, which its workers share in memory).

A lock is a file in the tier's `locks/` directory made with O_CREAT | O_EXCL, the one
atomic test-and-set every local file system gives; the process that made it fetches, and
removes it when the fetch is stored or given up. A lock older than its `ttl` (its process
died, or hangs) counts as free and is taken over. Others poll `held` while they wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable


class FetchLocks:
    def __init__(self, directory: str, clock: Callable[[], float]) -> None:
        self.directory = directory
        self._clock = clock
        self._mine: set[str] = set()
        os.makedirs(directory, exist_ok=True)

    def _path(self, key: bytes) -> str:
        return os.path.join(self.directory, hashlib.blake2b(key, digest_size=16).hexdigest())

    def claim(self, key: bytes, ttl: float) -> bool:
        """Take the lock of `key` for this process: False when another holds it (made less
        than `ttl` ago). An I/O error other than the lock existing claims nothing but
        answers True: the fetch goes on, collapsed within this process only."""
        path = self._path(key)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                if not self._expired(path, ttl):
                    return False
                _unlink(path)  # a dead or hung holder's: take it over
                continue
            except OSError:
                return True
            os.close(fd)
            self._mine.add(path)
            return True
        return False

    def held(self, key: bytes, ttl: float) -> bool:
        """Whether another process holds the lock of `key`."""
        path = self._path(key)
        return path not in self._mine and not self._expired(path, ttl)

    def release(self, key: bytes) -> None:
        path = self._path(key)
        if path in self._mine:
            self._mine.discard(path)
            _unlink(path)

    def close(self) -> None:
        """Release this process's locks (at stop)."""
        for path in self._mine:
            _unlink(path)
        self._mine.clear()

    def _expired(self, path: str, ttl: float) -> bool:
        try:
            made = os.stat(path).st_mtime
        except OSError:
            return True
        return self._clock() - made > ttl


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
