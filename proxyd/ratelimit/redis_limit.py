"""A limit counted in Redis for every node (`store = redis://...`): the GCRA step of
proxyd.ratelimit.gcra as one atomic script, called through an injected `StoreCall` (the
txredisapi pool of proxyd.ratelimit.redis_client in a process; a fake in the tests), on an
injected clock.

Wiring: a listener's RateLimitContext (proxyd.filters.ratelimit) makes one RedisLimit per
`[ratelimit]` with a store; the filter calls `hit(key)`, which answers a Verdict at once or a
Deferred of one. Its counters are the metrics, as a LimitTable's.

Per key, at most one call is out at a time. Requests for a key that arrive while it is out
wait for the next one, which asks for all of them at once ("up to" N: Redis grants what passes
now, and refuses the rest exactly as it would one by one). With `local_allowance = A`, each
call asks for A more than the requests waiting, and the node spends what it was granted beyond
them without asking (a lease, kept LEASE_LIFE at most): Redis sees about one call per A
requests of a busy key, and the cluster lets through at most A per node more than the limit
(the lease was charged when granted; spent later, it counts against the window it was granted
in). A lease left unspent is not given back: the limit is then stricter, never looser.

Redis slow or down: a call not answered within `store_timeout` is cancelled, and its requests
(and every request after it) follow `on_store_error`: STORE_ALLOWED, or STORE_DENIED (the
filter answers 503). The first failure is logged, with the store's URL without its password;
from then on one request a second (PROBE_INTERVAL) tries Redis again, and the first answer
ends the outage, logged with how many requests were decided without Redis. So the outage
costs each request at most `store_timeout`, once, and nothing waits on Redis meanwhile.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.ratelimit.gcra import Gcra, Verdict, verdict_from_reply
from proxyd.ratelimit.table import Seconds

log = Logger(namespace="proxyd.ratelimit")

LEASE_LIFE: Final = 1.0
"""Seconds a node may spend a local allowance after Redis granted it."""
PROBE_INTERVAL: Final = 1.0
"""Seconds between two tries of a Redis that failed."""
PREFIX: Final = "proxyd:rl:"
"""Of every key proxyd keeps in Redis: `proxyd:rl:LIMIT:KEY` (the key as JSON)."""

STORE_ALLOWED: Final = Verdict(True, None, 0, 0.0, 0.0)
"""What `on_store_error = allow` decides (the filter sends no RateLimit fields for it)."""
STORE_DENIED: Final = Verdict(False, None, 0, 1.0, 0.0)
"""What `on_store_error = deny` decides (the filter answers 503, Retry-After: 1)."""

StoreCall = Callable[[str, tuple[str, ...]], "Deferred[Any]"]
"""Runs gcra.LUA_SCRIPT on one Redis key with ARGV; fires with its reply."""


class _Key:
    """One key's lease and its call in flight."""

    __slots__ = (
        "calling",
        "granted_at",
        "lease",
        "remaining",
        "reset_after",
        "retry_after",
        "waiting",
    )

    def __init__(self) -> None:
        self.waiting: list[Deferred[Verdict]] = []
        self.calling = False
        self.lease = 0
        """Requests granted by Redis and not spent yet."""
        self.granted_at = 0.0
        self.remaining = 0
        """What Redis said remained beyond the lease when it granted it."""
        self.reset_after = 0.0
        self.retry_after = 0.0


class RedisLimit:
    """One `[ratelimit]` with a Redis store, on one listener of one process."""

    def __init__(
        self,
        gcra: Gcra,
        name: str,
        clock: Any,
        call: StoreCall,
        *,
        store: str,
        timeout: float,
        on_error: str,
        allowance: int,
        max_keys: int,
    ) -> None:
        self.gcra = gcra
        self.name = name
        self._clock: Seconds = clock
        self._reactor = clock
        self._call = call
        self.store = store
        """The store's URL without credentials, for the log."""
        self.timeout = timeout
        self._fallback = STORE_ALLOWED if on_error == "allow" else STORE_DENIED
        self.allowance = allowance
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        """Keys with a lease or a call out, least recently used first."""
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._probing = False
        self._unchecked_before = 0
        self.allowed = 0
        self.limited = 0
        self.evicted = 0
        """Leases dropped past max_keys."""
        self.store_errors = 0
        """Calls that failed or timed out."""
        self.unchecked = 0
        """Requests decided by on_store_error."""

    @property
    def tracked(self) -> int:
        return len(self._keys)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def sweep(self) -> None:
        """Drop leases past their life."""
        expired = self._clock.seconds() - LEASE_LIFE
        for key, state in list(self._keys.items()):
            if not state.calling and state.granted_at <= expired:
                del self._keys[key]

    def hit(self, key: Hashable) -> Verdict | Deferred[Verdict]:
        """Judge a request for `key`: a Verdict now (a lease, or Redis down), or a Deferred
        that fires with one (never with a failure) within `timeout`."""
        now = self._clock.seconds()
        if self._down_since is not None and (self._probing or now < self._probe_at):
            return self._unchecked()
        redis_key = PREFIX + self.name + ":" + json.dumps(key, separators=(",", ":"))
        keys = self._keys
        state = keys.get(redis_key)
        if state is None:
            if len(keys) >= self.max_keys and not self._make_room():
                return self._unchecked()
            state = keys[redis_key] = _Key()
        else:
            keys.move_to_end(redis_key)
        if state.lease and not state.waiting and now - state.granted_at < LEASE_LIFE:
            state.lease -= 1
            self.allowed += 1
            if not state.lease:
                del keys[redis_key]
            return self._leased(state, now)
        waiter: Deferred[Verdict] = Deferred(lambda gone: self._gone(redis_key, gone))
        state.waiting.append(waiter)
        if not state.calling:
            self._ask(redis_key, state)
        return waiter

    def _gone(self, redis_key: str, waiter: Deferred[Verdict]) -> None:
        """A waiter's request was given up (its client left): it leaves the next call."""
        state = self._keys.get(redis_key)
        if state is not None and waiter in state.waiting:
            state.waiting.remove(waiter)

    def _make_room(self) -> bool:
        for key, state in self._keys.items():
            if not state.calling:
                del self._keys[key]
                if state.lease:
                    self.evicted += 1
                return True
        return False

    def _unchecked(self) -> Verdict:
        self.unchecked += 1
        if self._fallback.allowed:
            self.allowed += 1
        else:
            self.limited += 1
        return self._fallback

    def _leased(self, state: _Key, now: float) -> Verdict:
        elapsed = now - state.granted_at
        left = state.lease + state.remaining
        retry = 0.0 if left else max(state.retry_after - elapsed, 0.0)
        return Verdict(True, None, left, retry, max(state.reset_after - elapsed, 0.0))

    def _ask(self, redis_key: str, state: _Key) -> None:
        waiting, state.waiting = state.waiting, []
        state.calling = True
        if self._down_since is not None:
            self._probing = True
        wanted = min(len(waiting) + self.allowance, self.gcra.burst)
        call = self._call(redis_key, self.gcra.lua_args(None, wanted, up_to=True))
        settled = False

        def answered(reply: Any) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            timer.cancel()
            self._answered(redis_key, state, waiting, reply)

        def failed(why: str) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            self._failed(redis_key, state, waiting, why)

        def errored(failure: Failure) -> None:
            if not failure.check(CancelledError):
                if timer.active():
                    timer.cancel()
                failed(failure.getErrorMessage() or repr(failure.value))

        def late() -> None:
            failed(f"did not answer within {self.timeout:g}s")
            call.cancel()

        timer = self._reactor.callLater(self.timeout, late)
        call.addCallbacks(answered, errored)

    def _answered(
        self, redis_key: str, state: _Key, waiting: list[Deferred[Verdict]], reply: Any
    ) -> None:
        now = self._clock.seconds()
        self._recovered(now)
        try:
            granted = int(reply[0])
            verdict = verdict_from_reply(reply)
        except (TypeError, ValueError, IndexError):
            self._failed(redis_key, state, waiting, f"answered {reply!r:.100}")
            return
        waiting = [waiter for waiter in waiting if not waiter.called]  # not those gone since
        served = min(granted, len(waiting))
        for index, waiter in enumerate(waiting):
            if index < served:
                self.allowed += 1
                left = verdict.remaining + granted - index - 1
                waiter.callback(
                    Verdict(
                        True, None, left, 0.0 if left else verdict.retry_after, verdict.reset_after
                    )
                )
            else:
                self.limited += 1
                waiter.callback(Verdict(False, None, 0, verdict.retry_after, verdict.reset_after))
        state.calling = False
        state.lease = granted - served
        state.granted_at = now
        state.remaining = verdict.remaining
        state.reset_after = verdict.reset_after
        state.retry_after = verdict.retry_after
        self._next(redis_key, state, now)

    def _failed(
        self, redis_key: str, state: _Key, waiting: list[Deferred[Verdict]], why: str
    ) -> None:
        now = self._clock.seconds()
        self.store_errors += 1
        self._probing = False
        if self._down_since is None:
            self._down_since = now
            self._unchecked_before = self.unchecked
            log.error(
                "ratelimit {limit}: Redis at {store} {why}; requests follow on_store_error ="
                " {fallback} until it answers (tried again once a second)",
                limit=self.name,
                store=self.store,
                why=why,
                fallback="allow" if self._fallback.allowed else "deny",
            )
        self._probe_at = now + PROBE_INTERVAL
        state.calling = False
        state.lease = 0
        for waiter in [*waiting, *state.waiting]:
            if not waiter.called:  # a request given up while its call was out
                waiter.callback(self._unchecked())
        state.waiting = []
        self._keys.pop(redis_key, None)

    def _recovered(self, now: float) -> None:
        self._probing = False
        if self._down_since is not None:
            log.info(
                "ratelimit {limit}: Redis at {store} answers again after {seconds:.1f}s;"
                " {count} requests were decided by on_store_error meanwhile",
                limit=self.name,
                store=self.store,
                seconds=now - self._down_since,
                count=self.unchecked - self._unchecked_before,
            )
            self._down_since = None

    def _next(self, redis_key: str, state: _Key, now: float) -> None:
        """After an answer: requests that came while the call was out spend the lease, and
        the others make the next call; a key with neither is forgotten."""
        waiting = state.waiting
        while waiting and state.lease:
            state.lease -= 1
            self.allowed += 1
            waiting.pop(0).callback(self._leased(state, now))
        if waiting:
            self._ask(redis_key, state)
        elif not state.lease:
            self._keys.pop(redis_key, None)
