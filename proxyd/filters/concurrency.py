"""A route's `max_in_flight`, `max_queued` and `queue_timeout`: at most N of its requests at
the servers at once, the others waiting their turn in a FIFO queue (HAProxy's `maxconn` on a
backend with `timeout queue`, nginx's upstream `queue`), over proxyd.gateway.queue.

A request takes a slot at this row of the chain (after the access checks, authentication and
rate limits: a refused request never takes one) and keeps it until the exchange is over and
logged, whatever its end: the response complete, an error, the client gone. With every slot
taken it waits, up to `max_queued` of them for up to `queue_timeout`; past either, 503 with
Retry-After (the queue timeout, rounded up), counted as `queue_full` or `queue_timeout`. A
client that leaves while it waits leaves the queue.

Each route has its own queue, made with the listener's chains: a reload starts new queues,
and the requests still in flight on the old ones finish there.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.clock import Clock
from proxyd.filters.api import HeadResult, Reject
from proxyd.filters.internal import RelayExchange
from proxyd.gateway.queue import QueueTimeout, Refused, RequestQueue, Slot
from proxyd.metrics import ErrorKind

SLOT: Final = "_route_slot"
"""The exchange's `vars` key holding its Slot, released in the log phase."""


class Concurrency:
    """Built in on a proxied route with `max_in_flight`."""

    def __init__(
        self, clock: Clock, *, max_in_flight: int, max_queued: int, queue_timeout: float
    ) -> None:
        self.queue = RequestQueue(
            clock,
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            queue_timeout=queue_timeout,
            on_wait=self._waited,
        )
        self.wait_seconds = 0.0
        """The summed waits of the requests served from the queue."""

    def _waited(self, seconds: float) -> None:
        self.wait_seconds += seconds

    def figures(self) -> dict[str, float]:
        """The queue's gauges and counters, for the metrics and the stats page."""
        queue = self.queue
        return {
            "in_flight": queue.in_flight,
            "waiting": queue.queued,
            "queued": queue.total_queued,
            "served_from_queue": queue.served_from_queue,
            "timed_out": queue.timed_out,
            "cancelled": queue.cancelled,
            "refused": queue.refused,
            "wait_seconds": self.wait_seconds,
        }

    def request_head(self, exchange: RelayExchange) -> HeadResult:
        ticket = self.queue.enter()
        if isinstance(ticket, Slot):
            exchange.vars[SLOT] = ticket
            return None
        if isinstance(ticket, Refused):
            return _unavailable("route queue full", ErrorKind.QUEUE_FULL, ticket.retry_after)
        return ticket.addCallbacks(self._served, self._not_served, callbackArgs=(exchange,))

    def _served(self, slot: Slot, exchange: RelayExchange) -> None:
        exchange.vars[SLOT] = slot

    def _not_served(self, failure: Failure) -> Reject | Deferred[Any]:
        failure.trap(QueueTimeout)
        timeout: QueueTimeout = failure.value  # type: ignore[assignment]
        return _unavailable("route queue timeout", ErrorKind.QUEUE_TIMEOUT, timeout.retry_after)

    def log(self, exchange: RelayExchange) -> None:
        slot = exchange.vars.pop(SLOT, None)
        if slot is not None:
            slot.release()


def _unavailable(why: str, kind: str, retry_after: int) -> Reject:
    reject = Reject(503, why, kind)
    reject.headers.append((b"Retry-After", b"%d" % retry_after))
    return reject
