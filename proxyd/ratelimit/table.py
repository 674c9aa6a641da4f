"""One limit's keys in one process: each key's TAT (proxyd.ratelimit.gcra), in bounded memory.

Wiring: each `[ratelimit NAME]` gets one `LimitTable(Gcra(rate, burst), reactor,
max_keys=..., idle_after=None)` per process, built with the filter and replaced on a reload
only when the limit changed. The filter computes the request's key (client address, header,
identity, route, or a tuple of them: any hashable) and calls `hit(key)`; when several limits
apply to a request, `hit_all()` charges all of them or none. The Verdict gives the fields
(proxyd.ratelimit.headers) and, when refused, the 429. A periodic call (a LoopingCall, about
once a second) to `sweep()` lets `tracked` fall when traffic stops; `allowed`, `limited`,
`tracked`, `evicted` and `expired` are the metrics.

`dry_run` is the caller's: it calls `hit()` as usual and, when refused, logs and counts the
request (`limited` already has it) and lets it through instead of answering 429. A refused hit
charges nothing, so a dry-run table holds exactly what the enforcing one would, and its
`limited` is what enforcing would refuse.

Memory: a key that owes nothing (its TAT in the past) is indistinguishable from a new one,
so it is forgotten, losing nothing: hits forget the least recently hit keys that owe nothing
(a couple per hit at most, and only once the first of them can go), and sweep() more. A key
last hit at time s owes nothing by s + burst*T, so the table holds about the keys hit in the
last burst*T seconds. `idle_after`, when set, also forgets a key not hit for that long
although it still owes (counted in `expired`): a shorter memory, for a limit with a long
window (`1000/d` with burst 1000 remembers a key for up to a day). Past `max_keys`, the
least recently hit key is evicted to make room (counted in `evicted` when it still owed,
since it then gets a fresh burst early), as nginx's limit_req zone does when full. Refused
hits count as use: a client that keeps hammering is the last to be evicted. A key costs
about 190 bytes besides the key itself (its entry, a tuple, two floats).

Cost of a hit, measured on the development machine (Python 3.11, 2 cores, timeit, 1e6 hits):
0.71 us with time.time as the clock (what reactor.seconds() is); with a clock written in
Python, 0.69 us refused, 0.82 us allowed, 0.83 us when every hit evicts a key, 1.05 us when
every hit adds a key and forgets one. Of that, decide_debt() is 0.32 us.

Times: per key the table keeps its debt (seconds owed) and the time of its last hit, apart,
and calls decide_debt(): the debt is never added to a large time and rounded, so it stays
exact for any uptime (gcra's docstring). A Verdict's `tat` is on the table's scale (seconds
since it was made) and only informative.

Beyond one process:

- Across workers (`workers = N`): each worker's tables are SyncedTables, which report what
  they charge to the master's ledger and take on what the other workers charged
  (proxyd.ratelimit.synced, proxyd.ratelimit.ledger). The ledger's tables are LimitTables
  charged with `charge()` and a `hold`; a worker's take the master's word by
  `owe_at_least()`.
- Across nodes (`store = redis://...`): not a LimitTable; proxyd.ratelimit.redis_limit runs
  the same step in Redis, atomically.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from itertools import islice
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from proxyd.ratelimit.gcra import Gcra, Verdict

_SWEEP: Final = 2
"""Least recently hit keys looked at per hit: more than the one key a hit may add, so the
table shrinks while traffic goes on."""


class Seconds(Protocol):
    """The part of IReactorTime that a LimitTable uses."""

    def seconds(self) -> float: ...


# SyncedTable (proxyd.ratelimit.synced, pure Python: its LimitSync holds its tables weakly,
# which a native class does not allow) is a subclass.
@mypyc_attr(allow_interpreted_subclasses=True)
class LimitTable:
    """The debts of one limit's keys, least recently hit first, at most `max_keys` of them."""

    def __init__(
        self,
        gcra: Gcra,
        clock: Seconds,
        *,
        max_keys: int,
        idle_after: float | None = None,
        hold: float = 0.0,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        if idle_after is not None and not idle_after > 0:
            raise ValueError(f"idle_after must be positive, not {idle_after}")
        self.gcra = gcra
        self._decide_debt = gcra.decide_debt
        self.max_keys = max_keys
        self.idle_after = idle_after
        self.hold = hold
        """Seconds a key is held after it owes nothing: charges may come dated that far in
        the past (charge()), and must find what the key owed then."""
        self._clock = clock
        self._origin = clock.seconds()
        self._keys: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        """Key: (its debt in seconds, when it was last hit), least recently hit first. The
        key's TAT is the sum; keeping the two apart keeps the debt exact (gcra docstring)."""
        self._sweep_at = 0.0
        """Hits before this time need not look at the first key (_sweep)."""
        self.allowed = 0
        """Hits allowed (and charged)."""
        self.limited = 0
        """Hits refused by this limit."""
        self.evicted = 0
        """Keys dropped past max_keys while they still owed: their limit restarted early."""
        self.expired = 0
        """Keys dropped after idle_after while they still owed."""

    @property
    def tracked(self) -> int:
        """Keys held now."""
        return len(self._keys)

    def now(self) -> float:
        """The time on the table's scale: seconds since it was made."""
        return self._clock.seconds() - self._origin

    def hit(self, key: Hashable, cost: int = 1) -> Verdict:
        """Judge a request of `cost` (0 to the burst) for `key` now, charging it if allowed."""
        now = self._clock.seconds() - self._origin
        keys = self._keys
        entry = keys.get(key)
        if entry is None:
            verdict = self._decide_debt(0.0, now, cost)
            if verdict.allowed:
                self.allowed += 1
                if verdict.reset_after > 0:
                    self._add(key, (verdict.reset_after, now), now)
            else:  # not for a new key: it owes nothing, and costs <= burst pass
                self.limited += 1
        else:
            debt = entry[0] - (now - entry[1])
            verdict = self._decide_debt(debt if debt > 0.0 else 0.0, now, cost)
            if verdict.allowed:
                self.allowed += 1
            else:
                self.limited += 1
            keys.move_to_end(key)
            keys[key] = (verdict.reset_after, now)
        if now >= self._sweep_at:
            self._sweep(now)
        return verdict

    def peek(self, key: Hashable) -> Verdict:
        """What `key` stands at now (a look of cost 0), counting and changing nothing."""
        now = self._clock.seconds() - self._origin
        return self._judge(key, 0, now)[0]

    def charge(self, key: Hashable, cost: int, at: float) -> float:
        """Charge `cost` requests to `key`, allowed or not, as if they came at `at` (a time
        on the clock's scale, from now - `hold` to now; one outside counts at that bound):
        what another process allowed (proxyd.ratelimit.ledger). A charge dated before the
        key's last one counts at that last one (its debt does not fall twice). Returns the
        key's TAT on the clock's scale. The key's debt may pass the burst's depth: it then
        refuses until the debt is back under it."""
        now = self._clock.seconds() - self._origin
        at = min(max(at - self._origin, now - self.hold), now)
        keys = self._keys
        entry = keys.pop(key, None)
        if entry is None:
            debt, last = 0.0, at
        else:
            debt, last = entry
            if at > last:
                debt = max(debt - (at - last), 0.0)
                last = at
        debt += cost * self.gcra.interval
        self._add(key, (debt, last), now)
        if now >= self._sweep_at:
            self._sweep(now)
        return self._origin + last + debt

    def tat(self, key: Hashable) -> float | None:
        """When `key` will owe nothing, on the clock's scale; None for a key not held."""
        entry = self._keys.get(key)
        return None if entry is None else self._origin + entry[1] + entry[0]

    def owe_at_least(self, key: Hashable, debt: float) -> None:
        """Raise what `key` owes now to `debt` seconds if it owes less (what other processes
        charged it: proxyd.ratelimit.synced), without making it the most recently hit."""
        now = self._clock.seconds() - self._origin
        keys = self._keys
        entry = keys.get(key)
        if entry is None:
            if debt > 0.0:
                self._add(key, (debt, now), now)
        elif debt > entry[0] - (now - entry[1]):
            keys[key] = (debt, now)

    def sweep(self, budget: int = 1000) -> int:
        """Look at up to `budget` least recently hit keys and forget those that owe nothing
        (and, with idle_after, those idle that long); return how many were forgotten."""
        now = self._clock.seconds() - self._origin
        idle_before = None if self.idle_after is None else now - self.idle_after
        keys = self._keys
        gone: list[Hashable] = []
        expired = 0
        for key, (debt, at) in islice(keys.items(), budget):
            if at + debt + self.hold <= now:
                gone.append(key)
            elif idle_before is not None and at <= idle_before:
                gone.append(key)
                expired += 1
        for key in gone:
            del keys[key]
        self.expired += expired
        self._sweep_at = now
        return len(gone)

    def _judge(self, key: Hashable, cost: int, now: float) -> tuple[Verdict, float]:
        """The verdict for `key`, and its debt before it."""
        entry = self._keys.get(key)
        debt = 0.0 if entry is None else max(0.0, entry[0] - (now - entry[1]))
        return self.gcra.decide_debt(debt, now, cost), debt

    def _record(
        self, key: Hashable, verdict: Verdict, debt: float, charge: bool, now: float, cost: int
    ) -> None:
        """After _judge: charge an allowed verdict when `charge`; otherwise the key keeps its
        debt (refused by this limit or by another)."""
        keys = self._keys
        if charge and verdict.allowed:
            self.allowed += 1
            debt = verdict.reset_after
        elif not verdict.allowed:
            self.limited += 1
        if key in keys:
            keys.move_to_end(key)
            keys[key] = (debt, now)
        elif debt > 0:
            self._add(key, (debt, now), now)
        if now >= self._sweep_at:
            self._sweep(now)

    def _add(self, key: Hashable, entry: tuple[float, float], now: float) -> None:
        keys = self._keys
        if len(keys) >= self.max_keys:
            _, (debt, at) = keys.popitem(last=False)
            if at + debt > now:
                self.evicted += 1
        keys[key] = entry

    def _sweep(self, now: float) -> None:
        """Forget up to _SWEEP of the least recently hit keys that owe nothing (or are idle
        past idle_after), then note when the first key left could go: until then, hits skip
        this. That time goes stale when the first key is hit again or evicted, which only
        delays forgetting the next one, by at most burst*T (a key owes no more than that)."""
        keys = self._keys
        idle_after = self.idle_after
        for _ in range(_SWEEP):
            if not keys:
                self._sweep_at = now
                return
            key = next(iter(keys))
            debt, at = keys[key]
            paid = at + debt + self.hold
            if paid > now:
                if idle_after is None:
                    self._sweep_at = paid
                    return
                if at + idle_after > now:
                    self._sweep_at = min(paid, at + idle_after)
                    return
                self.expired += 1
            del keys[key]
        self._sweep_at = now


def hit_all(hits: Sequence[tuple[LimitTable, Hashable]], cost: int = 1) -> list[Verdict]:
    """Judge one request against several limits (each table with the request's key for it),
    charging every one if all allow and none otherwise, as nginx does with several
    limit_req: a request refused by one limit uses no other's quota. The verdicts come in
    the order given; when one refuses, the others say what they would have allowed (their
    `remaining` as if charged), and none is charged."""
    if len(hits) == 1:
        table, key = hits[0]
        return [table.hit(key, cost)]
    judged: list[tuple[LimitTable, Hashable, Verdict, float, float]] = []
    for table, key in hits:
        now = table.now()
        verdict, debt = table._judge(key, cost, now)
        judged.append((table, key, verdict, debt, now))
    charge = all(verdict.allowed for _, _, verdict, _, _ in judged)
    for table, key, verdict, debt, now in judged:
        table._record(key, verdict, debt, charge, now, cost)
    return [verdict for _, _, verdict, _, _ in judged]
