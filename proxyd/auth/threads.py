"""The threads that check passwords: a small pool of its own, so that slow hashes (bcrypt,
argon2: tens to hundreds of milliseconds each, by design) never run on the reactor thread and
never take the reactor's shared pool (name resolution uses it) from other work.

One pool per process, owned by the service (proxyd.app.ProxydService): started with it,
stopped after its connections have drained, never rebuilt by a reload. Its size bounds the
CPU that password checks take; BasicAuth bounds how many checks may wait for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

HASH_THREADS = 2
"""Threads checking passwords at once, per process. bcrypt at cost 10 (`htpasswd -B -C 10`;
its default cost is 5) takes about 100 ms on a development VM, so two threads check some 20
passwords a second: with the cache of successes, plenty for clients that send the same
credentials with every request, and a guesser gets no more."""


class HashThreads:
    """A bounded thread pool for password checks: `run(work)` is BasicAuth's `run_in_thread`.

    `start()` makes no thread (threads are made on demand, up to `size`); `stop()` lets the
    checks running finish and joins the threads. Work given before `start()` waits for it;
    work given after `stop()` fails at once (a Deferred that errbacks), so a request that
    came in as the process stopped is answered 500 rather than left waiting.
    """

    def __init__(self, reactor: Any, size: int = HASH_THREADS) -> None:
        if size < 1:
            raise ValueError("a hash pool has at least one thread")
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name="proxyd-auth")
        self.size = size
        self._state: Literal["new", "running", "stopped"] = "new"
        self._trigger: Any = None

    def __repr__(self) -> str:
        return f"<HashThreads {self._state}, {len(self._pool.threads)}/{self.size} threads>"

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self) -> None:
        if self._state != "new":
            return
        self._state = "running"
        self._pool.start()
        # As Twisted does for its own pool: a reactor that stops without the service's stop
        # (an error at start) must not wait forever on these threads, which are not daemons.
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        """Join the threads (a check running finishes first: at most one hash's time)."""
        if self._state == "stopped":
            return
        was_running = self._state == "running"
        self._state = "stopped"
        if self._trigger is not None:
            trigger, self._trigger = self._trigger, None
            # Raises when it is the trigger running now (the reactor is shutting down).
            with contextlib.suppress(ValueError, KeyError):
                self._reactor.removeSystemEventTrigger(trigger)
        if was_running:
            self._pool.stop()

    def run(self, work: Callable[[], T]) -> Deferred[T]:
        """`work()` in one of the threads; its result (or exception) on the reactor thread."""
        if self._state == "stopped":
            raise RuntimeError("the password-check threads are stopped")
        return deferToThreadPool(self._reactor, self._pool, work)
