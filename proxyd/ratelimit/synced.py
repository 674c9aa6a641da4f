"""A worker's side of a limit held for the whole machine (`[proxyd] workers = N`): each worker
judges every request on its own table at once, and tells its master what it charged; the
master's ledger (proxyd.ratelimit.ledger) adds every worker's charges up and answers with what
the others charged, which the worker's table takes on. No request waits on another process.

Wiring: a worker's ProxydService builds its rate-limit tables with `LimitSync.table` (a
TableSource, proxyd.filters.ratelimit) instead of plain LimitTables; proxyd.workers.worker
gives the LimitSync its `send` (the ChargeLimits AMP call to the master) and starts it.

The exchange, every SYNC_INTERVAL while requests are charged (and every IDLE_INTERVAL
otherwise, so that a worker with no traffic of its own still learns what the others charged):

    worker -> master   for each table: its id ("listener/limit"), its shape (rate, burst,
                       max_keys: a reload that changes the limit starts a new table), and per
                       key charged since the last report, [key, time of its first charge,
                       requests charged]
                       (tables with nothing charged are left out: a report may be empty)
    master -> worker   for each table: [key, TAT] for the keys this worker reported and those
                       the other workers charged since this worker's last report

The worker then raises each such key's debt to at least the master's (TAT - now) plus what it
charged itself since it sent the report (SyncedTable.take). Its view is thus never more than
the truth (the others' charges since their last report are missing), and never less than the
master's as of the last answer: no worker refuses what one process would allow, and the
machine overshoots by at most what the other workers allowed in one interval beyond the
limit. The overshoot is not lost: the master's TAT carries it, and every worker refuses until
it is paid off, so over any long window the machine holds the rate (docs/ratelimits.md).

Keys cross as JSON: a key is a string or a tuple of keys (proxyd.filters.ratelimit), a tuple
travels as a list and comes back a tuple (`decode_key`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.ratelimit_model import RateLimitConfig
from proxyd.ratelimit.gcra import Gcra, Verdict
from proxyd.ratelimit.table import LimitTable, Seconds

log = Logger(namespace="proxyd.ratelimit")

SYNC_INTERVAL: Final = 0.02
"""Seconds between two reports while requests are charged: what bounds the overshoot (the
other workers' allowance for one interval) and what the exchange costs (50 AMP calls a second
per worker)."""
IDLE_INTERVAL: Final = 1.0
"""Seconds between two reports when nothing was charged nor learned."""

Report = dict[str, Any]
"""One table's part of a report (the module docstring): `id`, `shape`, `charges`."""
Send = Callable[[list[Report]], "Deferred[dict[str, list[list[Any]]]]"]
"""Sends a report to the master; fires with its answer, table id: [[key, TAT], ...]."""


def decode_key(value: Any) -> Hashable:
    """A key as JSON gave it back: lists (tuples that crossed) become tuples again."""
    if isinstance(value, list):
        return tuple(decode_key(part) for part in value)
    return value  # type: ignore[no-any-return]


def shape(config: RateLimitConfig) -> list[int]:
    """What a limit's table counts with: a table of another shape is another table."""
    return [config.rate.count, config.rate.period_seconds, config.burst, config.max_keys]


class SyncedTable(LimitTable):
    """A LimitTable that notes what it charges for the master and takes on what the master
    says the other workers charged."""

    def __init__(
        self,
        gcra: Gcra,
        clock: Seconds,
        *,
        max_keys: int,
        ident: str,
        table_shape: list[int],
        wake: Callable[[], None],
    ) -> None:
        super().__init__(gcra, clock, max_keys=max_keys)
        self.ident = ident
        self.shape = table_shape
        self._wake = wake
        self.unsent: dict[Hashable, list[Any]] = {}
        """Key: [time of its first charge since the last report, requests charged]; at most
        max_keys of them (beyond, a key's charges stay this worker's own)."""

    def hit(self, key: Hashable, cost: int = 1) -> Verdict:
        verdict = super().hit(key, cost)
        if verdict.allowed and cost:
            self._note(key, cost)
        return verdict

    def _record(
        self, key: Hashable, verdict: Verdict, debt: float, charge: bool, now: float, cost: int
    ) -> None:
        super()._record(key, verdict, debt, charge, now, cost)
        if charge and verdict.allowed and cost:
            self._note(key, cost)

    def _note(self, key: Hashable, cost: int) -> None:
        unsent = self.unsent
        entry = unsent.get(key)
        if entry is not None:
            entry[1] += cost
        elif len(unsent) < self.max_keys:
            unsent[key] = [self._clock.seconds(), cost]
            if len(unsent) == 1:
                self._wake()

    def report(self) -> Report:
        """What was charged since the last report (forgotten here: it is the master's now)."""
        unsent, self.unsent = self.unsent, {}
        return {
            "id": self.ident,
            "shape": self.shape,
            "charges": [[key, at, cost] for key, (at, cost) in unsent.items()],
        }

    def take(self, states: list[list[Any]]) -> None:
        """The master's [key, TAT] pairs: each key owes at least what the master says plus
        what this worker charged it since its report."""
        now = self._clock.seconds()
        interval = self.gcra.interval
        unsent = self.unsent
        for key_value, tat in states:
            key = decode_key(key_value)
            debt = max(tat - now, 0.0)
            pending = unsent.get(key)
            if pending is not None:
                debt += pending[1] * interval
            self.owe_at_least(key, debt)


class LimitSync:
    """A worker's rate-limit tables and their exchange with the master. `table` is the
    TableSource its relays build tables with; `start()` once `send` is set, `stop()` at the
    end (charges not reported by then are lost with the worker)."""

    def __init__(
        self,
        reactor: Any,
        send: Send | None = None,
        *,
        interval: float = SYNC_INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.send = send
        self.interval = interval
        self.idle_interval = idle_interval
        self._tables: weakref.WeakSet[SyncedTable] = weakref.WeakSet()
        """The tables some relay still holds: one that a reload replaced, or made and left
        unused for the table it took over, goes from here with its last holder."""
        self._next: Any = None
        """The delayed call of the next report."""
        self._sending = False
        self._running = False
        self._failing = False

    def table(self, listener: str, config: RateLimitConfig) -> SyncedTable:
        ident = f"{listener}/{config.name}"
        made = SyncedTable(
            Gcra(config.rate, config.burst),
            self.reactor,
            max_keys=config.max_keys,
            ident=ident,
            table_shape=shape(config),
            wake=self.wake,
        )
        self._tables.add(made)
        return made

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._schedule(self.idle_interval)

    def stop(self) -> None:
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def wake(self) -> None:
        """A table charged its first key since its last report: report within an interval
        (sooner than the idle one)."""
        if not self._running or self._sending:
            return  # the answer schedules the next report
        if self._next is None or self._next.getTime() > self.reactor.seconds() + self.interval:
            self._schedule(self.interval)

    def _schedule(self, delay: float) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self.reactor.callLater(delay, self.sync)

    def sync(self) -> None:
        """Send what every table charged; take on the answer."""
        self._next = None
        if not self._running or self.send is None:
            return
        tables = list(self._tables)
        if not tables:
            self._schedule(self.idle_interval)
            return
        reports = [table.report() for table in tables if table.unsent]
        self._sending = True
        self.send(reports).addCallbacks(self._answered, self._failed, callbackArgs=(bool(reports),))

    def _answered(self, answer: dict[str, list[list[Any]]], charged: bool) -> None:
        self._sending = False
        self._failing = False
        learned = False
        if answer:
            for table in list(self._tables):
                states = answer.get(table.ident)
                if states:
                    table.take(states)
                    learned = True
        if self._running:
            busy = charged or learned or any(table.unsent for table in self._tables)
            self._schedule(self.interval if busy else self.idle_interval)

    def _failed(self, failure: Failure) -> None:
        self._sending = False
        if not self._failing:
            self._failing = True
            log.warn(
                "rate limits: the master did not take this worker's charges ({why}); each"
                " worker counts alone until it does",
                why=failure.getErrorMessage(),
            )
        if self._running:
            self._schedule(self.idle_interval)
