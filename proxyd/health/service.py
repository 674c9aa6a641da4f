"""The health-check service: one per process, an active check loop per checked server.

Each server of a pool with a `check` is checked first after a random delay in
[0, check_interval), so that a process with many servers does not check them all at once, and
then check_interval (±10%) after each check ends: a slow server is never checked twice at once.
Results go through the server's rise/fall state (proxyd.health.state); only changes of state
reach the pool (Pool.set_health, which publishes them) and the log.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import DelayedCall
from proxyd.config.model import CheckConfig
from proxyd.health.checks import Checker, CheckFailed, CheckReactor, checker_for
from proxyd.health.state import HealthState, Transition
from proxyd.pool import Pool, Server

JITTER = 0.1
"""Each interval after the first is check_interval times a factor in [1 - JITTER, 1 + JITTER)."""

log = Logger()


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
        self.state = HealthState(rise=pool.config.rise, fall=pool.config.fall)
        self.stopped = False
        self.pending: DelayedCall | None = None
        self.in_flight: Deferred[None] | None = None
        self.started_at = 0.0
        self.last_ok: bool | None = None
        self.last_reason = ""
        self.last_check: float | None = None
        self.last_duration: float | None = None

    def schedule(self, delay: float) -> None:
        self.pending = self.reactor.callLater(delay, self.run)

    def run(self) -> None:
        self.pending = None
        self.started_at = self.reactor.seconds()
        config = self.pool.config
        try:
            d = self.checker(self.reactor, self.server.address, self.check, config.check_timeout)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        # Set before adding callbacks: an already-fired result clears it again at once.
        self.in_flight = d
        d.addCallbacks(self.passed, self.failed)
        d.addErrback(self.broken)

    def passed(self, _: None) -> None:
        self.result(True, "")

    def failed(self, failure: Failure) -> None:
        if self.stopped and failure.check(CancelledError):
            self.in_flight = None
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
        if not self.stopped and self.pending is None:
            self.schedule(self.pool.config.check_interval)

    def result(self, ok: bool, reason: str) -> None:
        self.in_flight = None
        now = self.reactor.seconds()
        self.last_ok = ok
        self.last_reason = reason
        self.last_check = now
        self.last_duration = now - self.started_at
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
        if not self.stopped:
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

    def stop(self) -> None:
        self.stopped = True
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if self.in_flight is not None:
            self.in_flight.cancel()
            self.in_flight = None

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

    def startService(self) -> None:
        # Look every checker up before starting any loop: a kind without one is a bug to
        # report at start, not a loop that dies later.
        plans = [
            (pool, pool.config.check, checker_for(type(pool.config.check)))
            for pool in self.pools.values()
            if pool.config.check is not None
        ]
        super().startService()
        self._watches = {}
        for pool, check, checker in plans:
            assert check is not None
            for server in pool.servers:
                if server.config.down:
                    continue
                watch = _Watch(self, pool, server, check, checker)
                self._watches[server] = watch
                watch.schedule(self.rng.random() * pool.config.check_interval)

    def stopService(self) -> None:
        """Cancels every timer and every check in flight; their connections are aborted."""
        for watch in self._watches.values():
            watch.stop()
        super().stopService()

    def status(self, server: Server) -> ServerHealth | None:
        """The checked state of `server`, or None if it is not checked."""
        watch = self._watches.get(server)
        return watch.snapshot() if watch is not None else None

    def statuses(self) -> list[ServerHealth]:
        """The checked state of every checked server, pool by pool in configuration order."""
        return [watch.snapshot() for watch in self._watches.values()]
