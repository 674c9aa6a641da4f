"""The requests (or connections) that wait for a server of a pool to have room: HAProxy's
backend queue (`maxqueue`, `timeout queue`) behind servers at their `max_connections`.

Wiring: a Pool with `max_queued` > 0 holds one Waiting. When pick() finds every server up at
its max_connections, the relay's AttemptDriver (proxyd.relay.attempt) asks `wait()` for a
place and, if it gets one, tries again when the Deferred fires; the pool's release() calls
`wake()` each time a connection to one of its servers ends, which fires the oldest waiter.
One release wakes one waiter, synchronously: no newcomer can take the room first, and no
herd. A waiter that finds no room after all (the server that let go is draining, say) goes
back to the head of the queue (`wait(front=True)`). The driver bounds the wait by
`queue_timeout` and cancels the Deferred then (or when its client leaves), which takes it out
of the queue.
"""

from __future__ import annotations

import math
from collections import deque

from twisted.internet.defer import Deferred


class Waiting:
    """At most `limit` waiters, first come first served."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self._waiters: deque[Deferred[None]] = deque()
        self.total = 0
        """Waiters ever queued (a waiter put back at the head counts once)."""
        self.timed_out = 0
        """Waiters that gave up after `timeout` (counted by the driver)."""
        self.refused = 0
        """Requests that found the queue full."""
        self.wait_seconds = 0.0
        """The summed waits of those that left the queue with room."""

    def __len__(self) -> int:
        return len(self._waiters)

    @property
    def retry_after(self) -> int:
        """Seconds a refused client is told to wait: the timeout, rounded up (at least 1)."""
        return max(1, math.ceil(self.timeout))

    def wait(self, front: bool = False) -> Deferred[None] | None:
        """A place in the queue (at its head with `front`: a waiter put back), or None when
        it is full. The Deferred fires when a connection ends; cancel it to leave."""
        waiters = self._waiters
        if not front and len(waiters) >= self.limit:
            self.refused += 1
            return None
        place: Deferred[None] = Deferred(self._leave)
        if front:
            waiters.appendleft(place)
        else:
            self.total += 1
            waiters.append(place)
        return place

    def wake(self) -> None:
        """A connection ended: the oldest waiter tries again."""
        if self._waiters:
            self._waiters.popleft().callback(None)

    def _leave(self, place: Deferred[None]) -> None:
        if place in self._waiters:
            self._waiters.remove(place)
