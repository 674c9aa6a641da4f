"""One way to reach a server for every relay: pick, acquire, connect, classify a failure,
report it to the pool, release, then the next server or give up (design principle 10).

How a relay uses it::

    policy = AttemptPolicy(config.retries)           # once, for every connection
    driver = AttemptDriver(clock, pool, owner, policy, Affinity(client_address))
    driver.start()

The owner (AttemptOwner) connects: `attempt_connect(server)` is the pool's one connect
function, a cancellable Deferred that fires with the connection once it is usable (TCP
connected, the TLS handshake done and verified, a WebSocket's 101 received) or fails (a Twisted
connect error, a TLS error, or AttemptError carrying the caller's own classification);
`attempt_cell(server)` is where the attempts are counted (proxyd.metrics). The driver tells the
owner `attempt_started(server)` before each try, `attempt_connected(connection, server,
reused)` once one is usable, `attempt_failed(server, failed)` for each failed connect (to log
it), and `attempt_gave_up(give_up)` when no server is left to try, with one of the
GiveUpReason words. Methods of the owner rather than callables given to each driver: a bound
method is an object more a request.

After connecting the caller may still find the server at fault (a reset before any response
byte, a 502/503/504, a response timeout): `failed(Failed(...), retry=...)` counts it on the
server, reports it to the pool, releases the server and tries the next one. `reconnect()`
tries the same server again on a fresh connection, not counted as an attempt (a reused
keep-alive connection that closed before any response byte). `cancel()` stops a connect under
way and lets go of the server (the client left); `release()` lets go of it once the
connection is over.

Options of a driver: `affinity`, what balance = hash keys on; `prefer`, a server tried first
when it is available and has capacity (the HTTP sticky cookie). The AttemptPolicy, the same
for all of a listener's drivers, holds the rest (made once: a driver is made per HTTP request
or TCP connection).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from enum import StrEnum
from typing import Any, Final, Generic, Protocol, TypeVar

import attrs
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import Clock, DelayedCall
from proxyd.metrics import Cell, ErrorKind
from proxyd.pool import ALL_SERVERS_BUSY, NO_SERVER_UP, Affinity, Server
from proxyd.pool.fault import Fault, fault_of
from proxyd.pool.waiting import Waiting
from proxyd.tls import describe_failure

__all__ = [
    "AttemptDriver",
    "AttemptError",
    "AttemptOwner",
    "AttemptPolicy",
    "Failed",
    "GiveUp",
    "GiveUpReason",
    "PoolApi",
    "classify",
]

_log = Logger(namespace="proxyd.relay.attempt")

C = TypeVar("C")


class GiveUpReason(StrEnum):
    """Why no server took the connection: the words every relay logs and answers with."""

    NO_SERVER_UP = NO_SERVER_UP
    """None is up: down, ejected, drained or in maintenance (HTTP: 503)."""
    ALL_SERVERS_BUSY = ALL_SERVERS_BUSY
    """Every server up is at max_connections (HTTP: 503)."""
    ATTEMPTS_FAILED = "attempts failed"
    """Each server tried failed, and the retries or the servers ran out (HTTP: the last
    failure's status, 502 or 504)."""
    LOCAL_RESOURCE = "local resource"
    """proxyd ran out of a resource of its own (file descriptors, ports): 503, no server
    blamed."""
    INTERNAL = "internal error"
    """A bug of proxyd's, logged with its traceback (HTTP: 500)."""
    QUEUE_FULL = "all servers busy, queue full"
    """Every server up is at max_connections and the pool's queue is full (HTTP: 503)."""
    QUEUE_TIMEOUT = "all servers busy, queue timeout"
    """Waited the pool's queue_timeout for a server with room (HTTP: 503)."""


@attrs.frozen
class Failed:
    """A failed attempt, classified: what the logs and the pool are told (`why`), the
    metrics' error kind (None: not an error to count, e.g. a 503 answer retried), the HTTP
    status it would be answered with, and whose fault it is (only Fault.SERVER is reported
    to the pool)."""

    why: str
    kind: str | None
    status: int = 502
    fault: Fault = Fault.SERVER


class AttemptError(Exception):
    """A connect function's own verdict on a failed attempt (a WebSocket's refused opening
    handshake, a TLS handshake over connect_timeout), passed through classify as is."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.why)
        self.failed = failed


def classify(failure: Failure) -> Failed | None:
    """What a failed connect says, or None when proxyd cancelled it (nothing to count)."""
    value = failure.value
    if isinstance(value, AttemptError):
        return value.failed
    fault = fault_of(failure)
    if fault is Fault.CANCELLED:
        return None
    message = failure.getErrorMessage()
    if fault is Fault.LOCAL:
        return Failed(message, ErrorKind.LOCAL_RESOURCE, 503, Fault.LOCAL)
    tls = describe_failure(failure)
    if tls:
        return Failed(f"TLS handshake failed: {tls}", ErrorKind.TLS_FAILED)
    if failure.check(error.TimeoutError, TimeoutError) is not None:
        return Failed(message, ErrorKind.CONNECT_TIMEOUT, 504)
    return Failed(message, ErrorKind.CONNECT_FAILED)


@attrs.frozen
class GiveUp:
    """The attempts are over without a usable connection."""

    reason: GiveUpReason
    attempts: int
    """Servers tried."""
    last: Failed | None = None
    """The last failure, if a server was tried."""

    retry_after: int | None = None
    """Seconds to tell the client to wait (a pool with a queue)."""

    @property
    def no_server(self) -> bool:
        """No server could be tried at all."""
        return self.reason in _NO_SERVER

    @property
    def why(self) -> str:
        if self.no_server:
            return str(self.reason)
        if self.reason is GiveUpReason.ATTEMPTS_FAILED:
            return f"connect failed after {self.attempts} attempt(s)"
        return self.last.why if self.last is not None else str(self.reason)

    @property
    def status(self) -> int:
        """The HTTP status to answer with."""
        if self.reason is GiveUpReason.INTERNAL:
            return 500
        if self.no_server or self.reason is GiveUpReason.LOCAL_RESOURCE:
            return 503
        return self.last.status if self.last is not None else 502


_NO_SERVER: Final = frozenset(
    {
        GiveUpReason.NO_SERVER_UP,
        GiveUpReason.ALL_SERVERS_BUSY,
        GiveUpReason.QUEUE_FULL,
        GiveUpReason.QUEUE_TIMEOUT,
    }
)


class PoolApi(Protocol):
    """What the driver uses of a pool (proxyd.pool.Pool)."""

    @property
    def name(self) -> str: ...

    @property
    def waiting(self) -> Waiting | None:
        """The queue for room when every server up is full (None: no queue)."""

    def pick(
        self, exclude: Collection[Server] = (), *, affinity: Affinity | None = None
    ) -> Server | None: ...

    def acquire(self, server: Server) -> None: ...

    def release(self, server: Server) -> None: ...

    def report_success(self, server: Server) -> None: ...

    def report_failure(self, server: Server, reason: str) -> None: ...

    def any_up(self) -> bool: ...


class AttemptOwner(Protocol[C]):
    """The relay that drives a driver: what it is asked, and told."""

    def attempt_connect(self, server: Server) -> Deferred[C]:
        """Connect to `server`: the connection once usable."""
        ...

    def attempt_checkout(self, server: Server) -> C | None:
        """An idle keep-alive connection to `server`, if any (asked only when the policy
        says `checkout`)."""
        ...

    def attempt_cell(self, server: Server) -> Cell:
        """The metrics the attempts at `server` count on."""
        ...

    def attempt_started(self, server: Server) -> None:
        """A try at `server` begins (it is acquired): the access log's backend."""

    def attempt_connected(self, connection: C, server: Server, reused: bool) -> None:
        """`connection` to `server` is usable (`reused`: an idle keep-alive one)."""

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        """A connect to `server` failed (counted and reported already): log it."""

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        """No server is left to try."""


@attrs.frozen
class AttemptPolicy:
    """How a relay's attempts go: the same for every driver of a listener."""

    retries: int
    """Servers tried after the first, at most."""
    count_retries: bool = False
    """Each try after the first counts as a retry on the metrics of the server tried before
    it."""
    local_gives_up: bool = False
    """A connect that failed for want of proxyd's own resources ends the attempts (no other
    server would fare better) rather than moving on."""
    checkout: bool = False
    """Before connecting, ask the owner for an idle keep-alive connection to the server."""
    classify: Callable[[Failure], Failed | None] = classify
    """A relay's own reading of a failed connect in place of this module's `classify` (the
    HTTP relay words its failures for its logs and the pool)."""


class AttemptDriver(Generic[C]):
    """The attempts of one client connection (or request) at the servers of one pool.
    Slotted: the HTTP relay makes one a request."""

    __slots__ = (
        "_clock",
        "_owner",
        "_pending",
        "_policy",
        "_queued",
        "affinity",
        "connect_time",
        "last",
        "pool",
        "prefer",
        "retries",
        "server",
        "started",
        "tried",
    )

    def __init__(
        self,
        clock: Clock,
        pool: PoolApi,
        owner: AttemptOwner[C],
        policy: AttemptPolicy,
        affinity: Affinity | None = None,
        prefer: Server | None = None,
    ) -> None:
        self._clock = clock
        self.pool = pool
        self._owner = owner
        self._policy = policy
        self.retries = policy.retries
        self.affinity = affinity
        self.prefer = prefer
        self.tried: list[Server] = []
        """The servers tried, in order (the last is the current one)."""
        self.server: Server | None = None
        """The server acquired: the one being tried or connected to, until released."""
        self.started = 0.0
        """When the current try began."""
        self.connect_time: float | None = None
        """How long the usable connection took to make (0 for a reused one)."""
        self.last: Failed | None = None
        """The last failure."""
        self._pending: Deferred[C] | None = None
        self._queued: _Queued | None = None
        """Waiting in the pool's queue for a server with room."""

    @property
    def count(self) -> int:
        """Servers tried so far."""
        return len(self.tried)

    @property
    def connecting(self) -> bool:
        return self._pending is not None

    def start(self) -> None:
        """Try the first server (the preferred one, else the pool's pick)."""
        self._next()

    def failed(self, failed: Failed, *, retry: bool = True, report: bool = True) -> None:
        """The caller found the server at fault (after connecting, or at a deadline of its
        own): stop a connect under way, count `failed` on the server, report it to the pool
        (unless `report` is False or it is not the server's fault), release the server; with
        `retry`, try the next server (the owner hears attempt_gave_up if none is left)."""
        self._stop_pending()
        server = self.server
        if server is not None:
            self._count_failure(server, failed, report)
        else:
            self.last = failed
        if retry:
            self._next()

    def reconnect(self) -> None:
        """The same server again on a fresh connection, not counted as a new attempt."""
        self._stop_pending()
        server = self.server
        assert server is not None, "reconnect() needs a server acquired"
        self.started = self._clock.seconds()
        self._connect(server)

    def cancel(self) -> None:
        """Stop a connect under way and let go of the server (the client left)."""
        if self._queued is not None:
            self._unqueue()
        if self._pending is not None:
            self._stop_pending()
        server = self.server
        if server is not None:
            self.server = None
            self.pool.release(server)

    def detach(self) -> None:
        """The attempts are over for good: cancel() them, then drop the owner, so that the
        driver and its owner are freed at once by their reference counts rather than left in
        a cycle for the garbage collector (an HTTP request makes a driver)."""
        if self._queued is not None:
            self._unqueue()
        if self._pending is not None:
            self._stop_pending()
        server = self.server
        if server is not None:
            self.server = None
            self.pool.release(server)
        self._owner = _DETACHED

    def release(self) -> None:
        """Let go of the server (the connection is over); idempotent."""
        server, self.server = self.server, None
        if server is not None:
            self.pool.release(server)

    # Internals.

    def _pick(self) -> Server | None:
        tried = self.tried
        prefer = self.prefer
        if (
            prefer is not None
            and not tried
            and prefer.is_available(self._clock.seconds())
            and prefer.has_capacity()
        ):
            return prefer
        return self.pool.pick(exclude=tried, affinity=self.affinity)

    def may_try_another(self) -> bool:
        """The first attempt, then `retries` more."""
        return len(self.tried) <= self.retries

    def _next(self) -> None:
        tried = self.tried
        server = self._pick() if len(tried) <= self.retries else None
        if server is None:
            waiting = self.pool.waiting
            if waiting is not None and not tried and self.pool.any_up():
                self._queue(waiting)
            else:
                self._give_up(None)
            return
        if tried and self._policy.count_retries:
            self._owner.attempt_cell(tried[-1]).retries += 1
        self.pool.acquire(server)
        self.server = server
        tried.append(server)
        self.started = self._clock.seconds()
        self._owner.attempt_started(server)
        if self._policy.checkout:
            connection = self._owner.attempt_checkout(server)
            if connection is not None:
                self.connect_time = 0.0
                self._owner.attempt_connected(connection, server, True)
                return
        self._connect(server)

    def _queue(self, waiting: Waiting) -> None:
        """Every server up is full: wait for room, at most the pool's queue_timeout in all
        (a waiter woken without room after all goes back to the head of the queue)."""
        queued = self._queued
        now = self._clock.seconds()
        place = waiting.wait(front=queued is not None)
        if place is None:
            self._give_up(GiveUpReason.QUEUE_FULL, waiting.retry_after)
            return
        since = now if queued is None else queued.since
        timer = self._clock.callLater(since + waiting.timeout - now, self._queue_timeout)
        self._queued = _Queued(place, timer, since)
        place.addCallbacks(self._room, _left_queue)

    def _room(self, _: None) -> None:
        queued = self._queued
        if queued is None:
            return
        if queued.timer.active():
            queued.timer.cancel()
        self._next()
        if self._queued is queued:  # served: not queued again
            self._queued = None
            waiting = self.pool.waiting
            if waiting is not None:
                waiting.wait_seconds += self._clock.seconds() - queued.since

    def _queue_timeout(self) -> None:
        queued, self._queued = self._queued, None
        waiting = self.pool.waiting
        if queued is None:
            return
        queued.place.cancel()
        if waiting is not None:
            waiting.timed_out += 1
        retry_after = None if waiting is None else waiting.retry_after
        self._give_up(GiveUpReason.QUEUE_TIMEOUT, retry_after)

    def _unqueue(self) -> None:
        queued, self._queued = self._queued, None
        if queued is not None:
            if queued.timer.active():
                queued.timer.cancel()
            queued.place.cancel()

    def _connect(self, server: Server) -> None:
        pending = self._owner.attempt_connect(server)
        self._pending = pending
        pending.addCallbacks(
            self._connected,
            self._connect_failed,
            callbackArgs=(server, pending),
            errbackArgs=(server, pending),
        )
        pending.addErrback(self._crashed)

    def _connected(self, connection: C, server: Server, pending: Deferred[C]) -> None:
        if pending is not self._pending:
            return  # cannot happen: a connect given up on was cancelled
        self._pending = None
        self.pool.report_success(server)
        self.connect_time = self._clock.seconds() - self.started
        self._owner.attempt_cell(server).connect_duration.observe(self.connect_time)
        self._owner.attempt_connected(connection, server, False)

    def _connect_failed(self, failure: Failure, server: Server, pending: Deferred[C]) -> None:
        if pending is not self._pending:
            return  # given up on already (cancelled, or a deadline of the caller's)
        self._pending = None
        failed = self._policy.classify(failure)
        if failed is None:
            return  # stopped by proxyd, not by this driver: nothing to count, nothing to do
        self._count_failure(server, failed, report=True)
        self._owner.attempt_failed(server, failed)
        if failed.fault is Fault.LOCAL and self._policy.local_gives_up:
            self._give_up(GiveUpReason.LOCAL_RESOURCE)
            return
        self._next()

    def _count_failure(self, server: Server, failed: Failed, report: bool) -> None:
        self.last = failed
        if failed.kind is not None:
            self._owner.attempt_cell(server).error(failed.kind)
        if report and failed.fault is Fault.SERVER:
            self.pool.report_failure(server, failed.why)
        self.release()

    def _give_up(self, reason: GiveUpReason | None, retry_after: int | None = None) -> None:
        if reason is None:
            if self.tried:
                reason = GiveUpReason.ATTEMPTS_FAILED
            elif self.pool.any_up():
                reason = GiveUpReason.ALL_SERVERS_BUSY
            else:
                reason = GiveUpReason.NO_SERVER_UP
        self._owner.attempt_gave_up(GiveUp(reason, len(self.tried), self.last, retry_after))

    def _stop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _crashed(self, failure: Failure) -> None:
        """A bug in an owner's callback: logged with its traceback, then given up on."""
        _log.failure("pool {pool}: an upstream attempt failed", failure, pool=self.pool.name)
        self._stop_pending()
        self.release()
        self.last = Failed("internal error", ErrorKind.INTERNAL, 500, Fault.LOCAL)
        self._give_up(GiveUpReason.INTERNAL)


@attrs.frozen
class _Queued:
    """A driver's place in its pool's queue, its deadline, and when it first queued."""

    place: Deferred[None]
    timer: DelayedCall
    since: float


def _left_queue(failure: Failure) -> None:
    """A place cancelled (timed out, or the client left): nothing more to do."""
    failure.trap(CancelledError)


class _Detached:
    """The owner of a detached driver: it hears nothing more, and connects and counts no
    more."""

    def attempt_connect(self, server: Server) -> Deferred[Any]:
        raise RuntimeError("a detached AttemptDriver connects no more")

    def attempt_checkout(self, server: Server) -> None:
        return None

    def attempt_cell(self, server: Server) -> Cell:
        raise RuntimeError("a detached AttemptDriver counts no more")

    def attempt_started(self, server: Server) -> None:
        pass

    def attempt_connected(self, connection: object, server: Server, reused: bool) -> None:
        pass

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        pass

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        pass


_DETACHED: Final = _Detached()
