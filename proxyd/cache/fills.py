"""Request collapsing (nginx's proxy_cache_lock, Varnish's waiting list): one fetch from
the origin per cache key at a time in a process. The first request that misses makes a
`Fill`; the others for the same key wait on it, at most `lock_timeout`. When the fetched
response's head arrives and it is stored, they are answered from it while it streams in
(read-while-writer, proxyd.cache.source.Pump following the Fill); when it is not stored
(not cacheable, another variant, an error), or the wait times out, each goes to the origin
itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

from proxyd.cache.source import Pump
from proxyd.cache.store import Meta, Writer


class Fill:
    """The fetch of one key, from its request to its response's end."""

    def __init__(self, fills: Fills, key: bytes) -> None:
        self._fills = fills
        self.key = key
        self.writer: Writer | None = None
        self.meta: Meta | None = None
        """The response being stored (its head), once it is."""
        self.length: int | None = None
        """The response's Content-Length, when it has one."""
        self.done = False
        self.failed = False
        self.claimed = False
        """It holds the key's lock across processes (Fills.claim)."""
        self._waiters: list[Deferred[Fill | None]] = []
        self._pumps: set[Pump] = set()

    # Waiting for the head.

    def wait(self, reactor: Any, timeout: float) -> Deferred[Fill | None]:
        """Fires with this Fill once its response is being stored (at once if it is
        already), with None when it will not be (or after `timeout`): then the waiter goes
        to the origin."""
        if self.writer is not None:
            return succeed(self)  # the head is in: read the body as it comes
        waiter: Deferred[Fill | None] = Deferred(lambda d: self._forget(d))
        self._waiters.append(waiter)
        call = reactor.callLater(timeout, self._timed_out, waiter)
        waiter.addBoth(_cancelling, call)
        return waiter

    def _forget(self, waiter: Deferred[Fill | None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _timed_out(self, waiter: Deferred[Fill | None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.callback(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def storing(self, writer: Writer, length: int | None) -> None:
        """The response's head arrived and it is being stored (`length`: its
        Content-Length, when it has one)."""
        self.writer = writer
        self.length = length
        self.meta = writer.meta
        self._release(self)

    def not_storing(self) -> None:
        """The response is not stored: the waiters go to the origin themselves."""
        self._fills.drop(self)
        self._release(None)

    def _release(self, result: Fill | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    # Following the body.

    def follow(self, pump: Pump) -> None:
        self._pumps.add(pump)

    def unfollow(self, pump: Pump) -> None:
        self._pumps.discard(pump)

    def appended(self) -> None:
        for pump in list(self._pumps):
            pump.more()

    def committed(self) -> None:
        self.done = True
        self._fills.drop(self)
        self.appended()

    def cut(self) -> None:
        """The fetch failed after its head: its readers are cut, waiters go on their own."""
        self.failed = True
        self._fills.drop(self)
        self._release(None)
        self.appended()


def _cancelling(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


class Locks(Protocol):
    """Fetch locks shared with other processes (proxyd.cache.locks.FetchLocks)."""

    def claim(self, key: bytes, ttl: float) -> bool: ...

    def held(self, key: bytes, ttl: float) -> bool: ...

    def release(self, key: bytes) -> None: ...


class Fills:
    """The fetches in progress of one cache, by key; with `locks` (a disk tier shared by
    several processes), each also holds the key's lock across the processes."""

    def __init__(self, locks: Locks | None = None) -> None:
        self._by_key: dict[bytes, Fill] = {}
        self._locks = locks

    def get(self, key: bytes) -> Fill | None:
        return self._by_key.get(key)

    def claim(self, key: bytes, ttl: float) -> bool:
        """Whether this process may fetch `key`: no other process of the disk tier fetches
        it (a lock made less than `ttl` ago)."""
        return self._locks is None or self._locks.claim(key, ttl)

    def elsewhere(self, key: bytes, ttl: float) -> bool:
        """Whether another process fetches `key` now."""
        return self._locks is not None and self._locks.held(key, ttl)

    def begin(self, key: bytes, *, claimed: bool = False) -> Fill:
        """A fetch of `key`; `claimed`: it holds the key's lock (claim()), released when
        the fetch is over."""
        fill = self._by_key[key] = Fill(self, key)
        fill.claimed = claimed
        return fill

    def drop(self, fill: Fill) -> None:
        if self._by_key.get(fill.key) is fill:
            del self._by_key[fill.key]
        if fill.claimed and self._locks is not None:
            fill.claimed = False
            self._locks.release(fill.key)

    def __len__(self) -> int:
        return len(self._by_key)
