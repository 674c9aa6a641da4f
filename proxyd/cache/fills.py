"""Request collapsing (nginx's proxy_cache_lock, Varnish's waiting list): one fetch from
the origin per cache key at a time in a process. The first request that misses makes a
`Fill`; the others for the same key wait on it, at most `lock_timeout`. When the fetched
response's head arrives and it is stored, they are answered from it while it streams in
(read-while-writer, proxyd.cache.source.Pump following the Fill); when it is not stored
(not cacheable, another variant, an error), or the wait times out, each goes to the origin
itself.
"""

from __future__ import annotations

from typing import Any

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


class Fills:
    """The fetches in progress of one cache, by key."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, Fill] = {}

    def get(self, key: bytes) -> Fill | None:
        return self._by_key.get(key)

    def begin(self, key: bytes) -> Fill:
        fill = self._by_key[key] = Fill(self, key)
        return fill

    def drop(self, fill: Fill) -> None:
        if self._by_key.get(fill.key) is fill:
            del self._by_key[fill.key]

    def __len__(self) -> int:
        return len(self._by_key)
