"""The health-check service: one per process, an active check loop per checked server.

Each server of a pool with a `check` is checked first after a random delay in
[0, check_interval), so that a process with many servers does not check them all at once, and
then check_interval (±10%) after each check ends: a slow server is never checked twice at once.
Results go through the server's rise/fall state (proxyd.health.state); only changes of state
reach the pool (Pool.set_health, which publishes them) and the log. The last HISTORY results of
each server are kept for the admin API and the stats page.

A server discovery adds (proxyd.discovery, heard as the pool's ServerEvent 'ADDED') is checked
at once and takes traffic only once it passes `rise` checks; one it removes is no longer
checked.

A server an operator puts in maintenance (Pool.set_admin, heard as the pool's ServerEvent) is
not checked until it leaves it; it keeps the health state it had. A reload (reload()) keeps the
loop, counters and history of every server whose check is unchanged.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import DelayedCall
from proxyd.config.model import CheckConfig
from proxyd.health.checks import (
    Checker,
    CheckFailed,
    CheckReactor,
    CheckSkipped,
    checker_for,
)
from proxyd.health.state import HealthState, Transition
from proxyd.pool import MAINT, Pool, Server, ServerEvent

JITTER = 0.1
"""Each interval after the first is check_interval times a factor in [1 - JITTER, 1 + JITTER)."""

HISTORY = 10
"""Check results kept per server, the last ones."""

log = Logger()


@attrs.frozen
class CheckResult:
    """One finished health check, for the admin API's `checks` list."""

    time: float
    """When it finished (reactor.seconds())."""
    ok: bool
    reason: str
    """Why it failed; '' when it passed."""
    duration: float
    """How long it took, in seconds."""


@attrs.frozen
class ServerHealth:
    """A snapshot of one checked server, for the admin API, metrics and the stats page."""

    pool: str
    server: str
    up: bool
    probation: bool
    """UP but no check has passed yet."""
    successes: int
    """Passed checks in a row while DOWN, toward `rise`."""
    failures: int
    """Failed checks in a row while UP, toward `fall`."""
    last_ok: bool | None
    """The last check's result; None before the first has finished."""
    last_reason: str
    """Why the last check failed; '' when it passed or none has finished."""
    last_check: float | None
    """When (reactor.seconds()) the last check finished."""
    last_duration: float | None
    """How long the last check took, in seconds."""


class _Watch:
    """The check loop of one server."""

    def __init__(
        self,
        service: HealthService,
        pool: Pool,
        server: Server,
        check: CheckConfig,
        checker: Checker,
    ) -> None:
        self.service = service
        self.reactor = service.reactor
        self.pool = pool
        self.server = server
        self.check = check
        self.checker = checker
        # A server already down (a restart, or a reload that changed its check) must pass
        # `rise` checks to come back; one that is up starts on probation, as at start.
        self.state = HealthState(
            rise=pool.config.rise,
            fall=pool.config.fall,
            up=server.healthy,
            probation=server.healthy,
        )
        self.stopped = False
        self.paused = False
        """In maintenance: no check runs until it ends."""
        self.pending: DelayedCall | None = None
        self.in_flight: Deferred[None] | None = None
        self.runs = 0
        """Checks started; a result is counted only if it is the latest run's (not one that
        was cancelled by a pause or a stop)."""
        self.started_at = 0.0
        self.last_ok: bool | None = None
        self.last_reason = ""
        self.last_check: float | None = None
        self.last_duration: float | None = None
        self.history: deque[CheckResult] = deque(maxlen=HISTORY)

    def same_plan(self, pool: Pool, check: CheckConfig) -> bool:
        """Whether `pool` would check this server exactly as this loop does."""
        old, new = self.pool.config, pool.config
        return self.check == check and (
            old.rise,
            old.fall,
            old.check_interval,
            old.check_timeout,
        ) == (new.rise, new.fall, new.check_interval, new.check_timeout)

    def start(self) -> None:
        """The first check after a random delay in [0, check_interval), unless in maint."""
        if self.server.admin == MAINT:
            self.paused = True
        else:
            self.schedule(self.service.rng.random() * self.pool.config.check_interval)

    def schedule(self, delay: float) -> None:
        self.pending = self.reactor.callLater(delay, self.run)

    def run(self) -> None:
        self.pending = None
        self.started_at = self.reactor.seconds()
        self.runs += 1
        run = self.runs
        config = self.pool.config
        try:
            d = self.checker(self.reactor, self.server.address, self.check, config.check_timeout)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        # Set before adding callbacks: an already-fired result clears it again at once.
        self.in_flight = d
        d.addCallbacks(self.passed, self.failed, callbackArgs=(run,), errbackArgs=(run,))
        d.addErrback(self.broken)

    def passed(self, _: None, run: int) -> None:
        if run == self.runs:
            self.result(True, "")

    def failed(self, failure: Failure, run: int) -> None:
        if run != self.runs:
            return  # cancelled by a pause or a stop, which cleared in_flight already
        if failure.check(CheckSkipped):
            self.skipped(str(failure.value))
            return
        if failure.check(CheckFailed):
            reason = str(failure.value)
        else:
            log.failure(
                "health check of {server} in pool {pool} went wrong",
                failure,
                server=self.server.name,
                pool=self.pool.name,
            )
            reason = f"check error: {failure.getErrorMessage()}"
        self.result(False, reason)

    def broken(self, failure: Failure) -> None:
        """A bug in handling a result: log it and keep the loop going."""
        log.failure(
            "handling the health check of {server} in pool {pool} failed",
            failure,
            server=self.server.name,
            pool=self.pool.name,
        )
        self.in_flight = None
        if not self.stopped and not self.paused and self.pending is None:
            self.schedule(self.pool.config.check_interval)

    def skipped(self, reason: str) -> None:
        """The check could not run (proxyd short of a local resource): nothing is recorded
        against or for the server; the next one runs at the usual interval."""
        self.in_flight = None
        log.warn(
            "health check of {server} in pool {pool} skipped: {reason}",
            server=self.server.name,
            pool=self.pool.name,
            reason=reason,
        )
        if not self.stopped and not self.paused:
            self.schedule(self.pool.config.check_interval)

    def result(self, ok: bool, reason: str) -> None:
        self.in_flight = None
        now = self.reactor.seconds()
        self.last_ok = ok
        self.last_reason = reason
        self.last_check = now
        self.last_duration = now - self.started_at
        self.history.append(CheckResult(now, ok, reason, self.last_duration))
        transition = self.state.record(ok, reason)
        if transition is not None:
            self.publish(transition)
        elif not ok and self.state.up:
            log.debug(
                "server {server} in pool {pool} failed a check: {reason} ({count}/{threshold})",
                server=self.server.name,
                pool=self.pool.name,
                reason=reason,
                count=self.state.failures,
                threshold=self.state.fall,
            )
        if not self.stopped and not self.paused:
            interval = self.pool.config.check_interval
            self.schedule(interval * (1 - JITTER + 2 * JITTER * self.service.rng.random()))

    def publish(self, transition: Transition) -> None:
        fields = {
            "server": self.server.name,
            "pool": self.pool.name,
            "state": transition.state,
            "reason": transition.reason,
            "counts": transition.counts,
            "count": transition.count,
            "threshold": transition.threshold,
        }
        if transition.up:
            log.info("server {server} in pool {pool} is {state} ({counts})", **fields)
            reason = transition.counts
        else:
            log.warn("server {server} in pool {pool} is {state}: {reason} ({counts})", **fields)
            reason = transition.reason
        try:
            self.pool.set_health(self.server, transition.up, reason)
        except Exception:
            log.failure(
                "pool {pool} failed to take the health of {server}",
                server=self.server.name,
                pool=self.pool.name,
            )

    def pause(self) -> None:
        """Maintenance began: cancel the next check and the one in flight, whose result is
        not counted; the health state stays as it is."""
        if self.paused or self.stopped:
            return
        self.paused = True
        self.cancel()
        log.info(
            "health checks of {server} in pool {pool} paused (maint)",
            server=self.server.name,
            pool=self.pool.name,
        )

    def resume(self) -> None:
        """Maintenance ended: the next check comes within one interval, spread at random as
        at start so that servers leaving maint together are not checked at once."""
        if not self.paused or self.stopped:
            return
        self.paused = False
        log.info(
            "health checks of {server} in pool {pool} resumed",
            server=self.server.name,
            pool=self.pool.name,
        )
        self.schedule(self.service.rng.random() * self.pool.config.check_interval)

    def stop(self) -> None:
        self.stopped = True
        self.cancel()

    def cancel(self) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            self.runs += 1  # its result, the CancelledError, is not a check result
            in_flight.cancel()

    def snapshot(self) -> ServerHealth:
        return ServerHealth(
            pool=self.pool.name,
            server=self.server.name,
            up=self.state.up,
            probation=self.state.probation,
            successes=self.state.successes,
            failures=self.state.failures,
            last_ok=self.last_ok,
            last_reason=self.last_reason,
            last_check=self.last_check,
            last_duration=self.last_duration,
        )


class HealthService(Service):
    """Runs the active health checks of every pool that has a `check`, for all relays.

    Servers configured `down` are not checked. `rng` spreads and jitters the checks; tests
    pass a seeded one.
    """

    def __init__(
        self,
        reactor: CheckReactor,
        pools: Mapping[str, Pool],
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.pools = pools
        self.rng = rng if rng is not None else random.Random()
        self._watches: dict[Server, _Watch] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    def startService(self) -> None:
        plans = self._plans(self.pools)
        super().startService()
        self._watches = {}
        for pool, check, checker in plans:
            for server in pool.servers:
                if server.config.down:
                    continue
                watch = _Watch(self, pool, server, check, checker)
                self._watches[server] = watch
                watch.start()
        self._subscribe()

    def stopService(self) -> None:
        """Cancels every timer and every check in flight; their connections are aborted."""
        self._unsubscribe_all()
        for watch in self._watches.values():
            watch.stop()
        super().stopService()

    def reload(self, pools: Mapping[str, Pool]) -> None:
        """Check the servers of `pools`, the pools a reload built, from now on.

        A server checked before with the same check, rise, fall, interval and timeout keeps
        its loop (its counters, history and next check), now reporting to its new pool. Other
        checked servers get a new loop, starting from the health they have; a server that is
        no longer checked but still serves (not configured down) is set up if its checks had
        taken it down (else nothing would ever bring it back). Raises LookupError, changing
        nothing, if a check kind has no checker.
        """
        plans = self._plans(pools)
        if not self.running:
            self.pools = pools
            return
        self._unsubscribe_all()
        old = self._watches
        watches: dict[Server, _Watch] = {}
        for pool, check, checker in plans:
            for server in pool.servers:
                if server.config.down:
                    continue
                watch = old.pop(server, None)
                if watch is not None and watch.same_plan(pool, check):
                    watch.pool = pool
                else:
                    if watch is not None:
                        watch.stop()
                    watch = _Watch(self, pool, server, check, checker)
                    watch.start()
                watches[server] = watch
        for watch in old.values():
            watch.stop()
        self._watches = watches
        self.pools = pools
        for pool in pools.values():
            for server in pool.servers:
                if server not in watches and not server.healthy and not server.config.down:
                    pool.set_health(server, True, "no longer checked")
        self._subscribe()

    def status(self, server: Server) -> ServerHealth | None:
        """The checked state of `server`, or None if it is not checked."""
        watch = self._watches.get(server)
        return watch.snapshot() if watch is not None else None

    def statuses(self) -> list[ServerHealth]:
        """The checked state of every checked server, pool by pool in configuration order."""
        return [watch.snapshot() for watch in self._watches.values()]

    def history(self, server: Server) -> list[CheckResult]:
        """The last HISTORY check results of `server`, oldest first; [] if it is not checked
        or no check has finished yet."""
        watch = self._watches.get(server)
        return list(watch.history) if watch is not None else []

    def _plans(self, pools: Mapping[str, Pool]) -> list[tuple[Pool, CheckConfig, Checker]]:
        # Look every checker up before starting any loop: a kind without one is a bug to
        # report at start (or reload), not a loop that dies later.
        return [
            (pool, pool.config.check, checker_for(type(pool.config.check)))
            for pool in pools.values()
            if pool.config.check is not None
        ]

    def _subscribe(self) -> None:
        self._unsubscribe = [
            pool.subscribe(self._server_event)
            for pool in self.pools.values()
            if pool.config.check is not None
        ]

    def _unsubscribe_all(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _server_event(self, event: ServerEvent) -> None:
        """Pause the checks of a server put in maintenance; resume them when it leaves.
        Check a server discovery added at once (it takes no traffic until it passes `rise`
        checks); stop checking one it removed."""
        if event.state == "ADDED":
            self._discovered(event)
            return
        if event.state == "REMOVED":
            for server, watch in list(self._watches.items()):
                if server.name == event.server and watch.pool.name == event.pool:
                    watch.stop()
                    del self._watches[server]
            return
        if event.state not in ("MAINT", "DRAIN", "READY"):
            return
        for server, watch in self._watches.items():
            if server.name == event.server and watch.pool.name == event.pool:
                if server.admin == MAINT:
                    watch.pause()
                else:
                    watch.resume()

    def _discovered(self, event: ServerEvent) -> None:
        pool = self.pools.get(event.pool)
        server = pool.find(event.server) if pool is not None else None
        if pool is None or server is None or pool.config.check is None:
            return
        if server in self._watches or server.config.down:
            return
        watch = _Watch(self, pool, server, pool.config.check, checker_for(type(pool.config.check)))
        self._watches[server] = watch
        if server.admin == MAINT:
            watch.paused = True
        else:
            watch.schedule(0)
