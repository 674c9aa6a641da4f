"""The master's side of the limits its workers share (proxyd.ratelimit.synced has the
exchange): one LimitTable per worker table id, charged with every worker's reports, and per
worker the keys the others charged since its last report, which its next answer carries.

Wiring: proxyd.workers.master answers each worker's ChargeLimits call with
`Ledger.report(index, reports)`, calls `forget(index)` when a worker ends and `sweep()` about
once a second. Sans-IO: the clock is injected, nothing else is touched.

Memory: a table is bounded by its max_keys as in one process; a worker's set of keys to tell
is bounded by the same (keys beyond it are left out: that worker learns of them at the next
key's report, or overshoots once by its own view); a table no worker has reported to for
FORGET_AFTER seconds, and that owes nothing, is dropped.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from proxyd.ratelimit.gcra import Gcra
from proxyd.ratelimit.rates import Rate
from proxyd.ratelimit.synced import Report, decode_key
from proxyd.ratelimit.table import LimitTable, Seconds

HOLD: Final = 1.0
"""Seconds a key that owes nothing is held: a report's charges are dated from the first of
them (up to SYNC_INTERVAL ago, more when the master is busy), and must find what the key
owed then; charges dated earlier count as of HOLD ago."""
FORGET_AFTER: Final = 60.0
"""Seconds without a report after which a table that owes nothing is dropped."""


class _Account:
    """One table id's LimitTable, its shape and when a worker last reported to it."""

    __slots__ = ("reported_at", "shape", "table")

    def __init__(self, table_shape: list[int], clock: Seconds) -> None:
        count, period, burst, max_keys = table_shape
        self.shape = table_shape
        self.table = LimitTable(
            Gcra(Rate(count, period), burst), clock, max_keys=max_keys, hold=HOLD
        )
        self.reported_at = clock.seconds()


class Ledger:
    """Every shared limit's charges, summed over the workers."""

    def __init__(self, clock: Seconds) -> None:
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._untold: dict[int, dict[str, set[Hashable]]] = {}
        """Per worker, per table id: keys the other workers charged since its last report."""

    @property
    def tables(self) -> dict[str, LimitTable]:
        return {ident: account.table for ident, account in self._accounts.items()}

    def report(self, worker: int, reports: list[Report]) -> dict[str, list[list[Any]]]:
        """Charge what `worker` reports; answer, per table id, [key, TAT] for the keys it
        reported and those the other workers charged since its last report."""
        untold = self._untold.setdefault(worker, {})
        self._untold[worker] = {}
        answer: dict[str, list[list[Any]]] = {}
        now = self._clock.seconds()
        for report in reports:
            ident = report["id"]
            account = self._account(ident, report["shape"])
            account.reported_at = now
            table = account.table
            states = answer.setdefault(ident, [])
            charged: list[Hashable] = []
            for key_value, at, cost in report["charges"]:
                key = decode_key(key_value)
                states.append([key_value, table.charge(key, cost, at)])
                charged.append(key)
            self._tell_others(worker, ident, charged, table.max_keys)
            untold.get(ident, set()).difference_update(charged)
        for ident, keys in untold.items():
            held = self._accounts.get(ident)
            if held is None:
                continue
            states = answer.setdefault(ident, [])
            for key in keys:
                tat = held.table.tat(key)
                if tat is not None and tat > now:
                    states.append([key, tat])
        return {ident: states for ident, states in answer.items() if states}

    def _account(self, ident: str, table_shape: list[int]) -> _Account:
        account = self._accounts.get(ident)
        if account is None or account.shape != table_shape:
            account = self._accounts[ident] = _Account(table_shape, self._clock)
            for untold in self._untold.values():
                untold.pop(ident, None)
        return account

    def _tell_others(self, worker: int, ident: str, keys: list[Hashable], max_keys: int) -> None:
        for other, untold in self._untold.items():
            if other == worker:
                continue
            pending = untold.setdefault(ident, set())
            room = max_keys - len(pending)
            pending.update(keys if len(keys) <= room else keys[: max(room, 0)])

    def forget(self, worker: int) -> None:
        """`worker` ended: nothing more to tell it (its successor starts afresh)."""
        self._untold.pop(worker, None)

    def sweep(self) -> None:
        """Forget keys that owe nothing, and tables long unreported that hold none."""
        now = self._clock.seconds()
        for ident, account in list(self._accounts.items()):
            account.table.sweep()
            if account.table.tracked == 0 and now - account.reported_at > FORGET_AFTER:
                del self._accounts[ident]
