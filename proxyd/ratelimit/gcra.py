"""The Generic Cell Rate Algorithm (GCRA: ITU-T I.371's virtual scheduling, as redis-cell and
throttled use it for HTTP), sans-IO: a pure function of one stored number and the time.

Wiring: a limit built from the config holds one `Gcra(rate, burst)`. In one process,
`proxyd.ratelimit.table.LimitTable` keeps each key's debt and calls `decide_debt()` per
request.
Across nodes, the same step runs in Redis: EVALSHA `LUA_SHA1` (EVAL `LUA_SCRIPT` after a
NOSCRIPT error) with KEYS[1] the key and ARGV `gcra.lua_args(now, cost)`, and
`verdict_from_reply()` turns the answer into the same Verdict.

The arithmetic, for a rate of `count` per `period` seconds and a burst B (an integer >= 1):

    T = period / count        the emission interval: one request every T, sustained
    tau = (B - 1) * T         the delay tolerance; tau + T = B * T is the bucket's depth

Each key has one number, its TAT (theoretical arrival time): the time at which the key will
owe nothing. An unknown key, or a TAT in the past, owes nothing. A request of cost n
(n = 1: one request) arriving at `now`:

    debt = max(TAT - now, 0)      seconds the key owes
    owed = debt + n * T           what it would owe with this request
    allowed  if and only if  owed <= tau + T
    allowed: TAT := now + owed;  refused: TAT unchanged (a refused request costs nothing)

That is I.371's max(TAT, now) + n*T, and for n = 1 its test, TAT <= now + tau. So, from a
key that owes nothing, exactly B requests pass at one instant (the B-th owes B*T) and the
next is refused; after that one more passes every T, for ever; a key idle for B*T is back to
a full burst. Over any window of W seconds a key gets at most B + W/T (a full burst, then
the steady rate), and an adversary can get exactly that. A Verdict says, with the key's debt
after the decision (`owed` when allowed, `debt` when refused):

    remaining   = floor((B*T - debt after) / T)   requests of cost 1 that would pass now
    retry_after = owed + n*T - B*T (allowed)      seconds until a request of the same cost
                  owed - B*T (refused)            passes; 0 when one would pass now
    reset_after = debt after                      seconds until a full burst again

retry_after is exact: a request of cost n at now + retry_after passes, and any earlier one is
refused (to the slack below). A request costing more than B could never pass; decide()
refuses to judge it (ValueError), so costs are the caller's to bound.

Floats: every comparison grants SLACK (a millionth of T), so what exact arithmetic admits
(a burst at one instant, arrivals exactly T apart, a retry exactly at retry_after) is never
refused for a rounding error, at the price of a millionth of a request. The decision itself
is in small numbers (debts, at most B*T), but a stored TAT is a time: each `now + owed`
rounds to the resolution of the time's magnitude (0.24 us at epoch seconds, 1.5e-11 s a day
after an origin), and over a burst at one instant those roundings add up, so a boundary
can move by B times that. Harmless in practice, but not exact: at epoch seconds, 100/s with
a burst of 100 stays exact, while a burst of 1000 came out as 1001 at 10k/s per key and as
998 at 100k/s. `decide_debt()` takes the debt instead of the TAT, and LimitTable keeps
(debt, time of the last hit) per key, which stays exact for any
uptime. The Redis script keeps a TAT, as redis-cell does, and has that resolution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from proxyd.ratelimit.rates import Rate

SLACK: Final = 1e-6
"""Of an emission interval: what comparisons forgive for float rounding."""


class Verdict(NamedTuple):
    """What one request got from one limit. A NamedTuple rather than a frozen attrs class: one
    is made per request and limit, and a NamedTuple costs a quarter of the time to build."""

    allowed: bool
    tat: float | None
    """The key's new TAT, now + reset_after, when allowed (to store); None when refused
    (the TAT is unchanged)."""
    remaining: int
    """Requests (of cost 1) that would still pass right now."""
    retry_after: float
    """Seconds until a request of the same cost would pass; 0.0 if one would pass now."""
    reset_after: float
    """Seconds until the key owes nothing: a full burst again."""


_new_verdict = tuple.__new__  # Verdict(...) through its generated __new__ costs twice as much


class Gcra:
    """One limit's arithmetic: its rate and burst, with the derived T and tau. A value (equal
    and hashed by rate and burst), written as a plain class rather than an attrs one so that
    mypyc compiles it as a native class (attrs' derived fields are not for native classes)."""

    __slots__ = ("_slack", "burst", "depth", "interval", "rate", "tolerance")

    def __init__(self, rate: Rate, burst: int) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate: Final = rate
        self.burst: Final = burst
        self.interval: Final = rate.period_seconds / rate.count
        """T: seconds between requests at the steady rate."""
        self.tolerance: Final = (burst - 1) * self.interval
        """tau = (burst - 1) * T."""
        # tau + T as the Lua script computes it, so both round alike.
        self.depth: Final = self.tolerance + self.interval
        """tau + T (= burst * T): the most a key may owe, in seconds."""
        self._slack: Final = SLACK * self.interval

    def __repr__(self) -> str:
        return f"Gcra(rate={self.rate!r}, burst={self.burst!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Gcra):
            return NotImplemented
        return self.rate == other.rate and self.burst == other.burst

    def __hash__(self) -> int:
        return hash((self.rate, self.burst))

    def decide(self, tat: float | None, now: float, cost: int = 1) -> Verdict:
        """Judge a request of `cost` (0, a look that takes nothing, up to burst) arriving at
        `now` for a key whose TAT is `tat` (None: unknown). The caller stores Verdict.tat
        when allowed; nothing changes when refused."""
        return self.decide_debt(tat - now if tat is not None and tat > now else 0.0, now, cost)

    def decide_debt(self, debt: float, now: float, cost: int = 1) -> Verdict:
        """decide() for a key that owes `debt` seconds at `now` (its TAT - now, 0 when the TAT
        has passed); the key's debt afterwards is Verdict.reset_after. A caller that keeps
        (debt, time) per key, as LimitTable does, never adds small times to large ones, so
        no rounding error builds up in what it stores (module docstring)."""
        interval = self.interval
        if cost != 1 and not 0 <= cost <= self.burst:
            raise ValueError(f"a cost from 0 to the burst ({self.burst}), not {cost}")
        owed = debt + cost * interval
        depth = self.depth
        if owed <= depth + self._slack:
            retry = owed + cost * interval - depth
            return _new_verdict(
                Verdict,
                (
                    True,
                    now + owed,
                    int((depth - owed) / interval + SLACK),
                    retry if retry > self._slack else 0.0,
                    owed,
                ),
            )
        return _new_verdict(
            Verdict,
            (
                False,
                None,
                max(0, int((depth - debt) / interval + SLACK)),
                owed - depth,
                debt,
            ),
        )

    def decide_up_to(self, tat: float | None, now: float, wanted: int) -> tuple[int, Verdict]:
        """Grant as many of `wanted` requests (1 to the burst) as pass now, none if not even
        one does: the requests that wait on one Redis call, and a node's local allowance
        (proxyd.ratelimit.redis_limit). The Verdict is that of the `granted` requests taken
        together (refused when none is), except that `retry_after` is for one request more."""
        if not 1 <= wanted <= self.burst:
            raise ValueError(f"from 1 to the burst ({self.burst}), not {wanted}")
        interval = self.interval
        debt = tat - now if tat is not None and tat > now else 0.0
        fits = int((self.depth + self._slack - debt) / interval)
        granted = min(wanted, max(fits, 1))
        verdict = self.decide_debt(debt, now, granted)
        while granted > 1 and not verdict.allowed:  # the division's rounding
            granted -= 1
            verdict = self.decide_debt(debt, now, granted)
        if not verdict.allowed:
            return 0, verdict
        retry = verdict.reset_after + interval - self.depth
        return granted, verdict._replace(retry_after=retry if retry > self._slack else 0.0)

    def lua_args(self, now: float | None, cost: int = 1, *, up_to: bool = False) -> tuple[str, ...]:
        """ARGV for LUA_SCRIPT: now (None: Redis's own clock), T, tau, cost, and with `up_to`
        a fifth, "1", for decide_up_to(); floats written exactly (repr round-trips), so Redis
        computes what decide() would."""
        if not (1 if up_to else 0) <= cost <= self.burst:
            raise ValueError(f"a cost from 0 to the burst ({self.burst}), not {cost}")
        at = "" if now is None else repr(now)
        args = (at, repr(self.interval), repr(self.tolerance), str(cost))
        return (*args, "1") if up_to else args


def verdict_from_reply(reply: Sequence[Any]) -> Verdict:
    """LUA_SCRIPT's answer, `[allowed, remaining, retry_after, reset_after]` (the two times
    as strings, since Redis truncates Lua numbers to integers), as a Verdict. Its `tat` is
    None: the TAT stays in Redis. `allowed` is the number granted in the up-to mode."""
    allowed, remaining, retry_after, reset_after = reply
    return Verdict(
        bool(int(allowed)),
        None,
        int(remaining),
        float(retry_after),
        float(reset_after),
    )


LUA_SCRIPT: Final = """\
-- proxyd GCRA step (proxyd.ratelimit.gcra): the same arithmetic as Gcra.decide().
-- KEYS[1]: the key, holding its TAT (seconds, as text) until the TAT passes.
-- ARGV: now (seconds; empty for Redis's clock), T, tau, cost, and "1" to grant up to cost.
-- Returns {allowed (1 or 0; up to cost: how many were granted), remaining, retry_after,
-- reset_after}, the times as text.
local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local interval = tonumber(ARGV[2])
local depth = tonumber(ARGV[3]) + interval
local cost = tonumber(ARGV[4])
local slack = interval * 1e-6
local tat = tonumber(redis.call('GET', KEYS[1]))
local debt = 0
if tat and tat > now then
  debt = tat - now
end
local granted = 1
local next_cost = cost
if ARGV[5] == '1' then
  local fits = math.floor((depth + slack - debt) / interval)
  if fits < cost then
    cost = math.max(fits, 1)
  end
  while cost > 1 and debt + cost * interval > depth + slack do
    cost = cost - 1 -- the floor's rounding
  end
  granted = cost
  next_cost = 1
end
local owed = debt + cost * interval
if owed <= depth + slack then
  local retry = owed + next_cost * interval - depth
  if retry <= slack then
    retry = 0
  end
  if owed > 0 then
    redis.call('SET', KEYS[1], string.format('%.17g', now + owed), 'PX', math.ceil(owed * 1000))
  end
  local remaining = math.floor((depth - owed) / interval + 1e-6)
  if remaining < 0 then
    remaining = 0
  end
  return {granted, remaining, string.format('%.17g', retry), string.format('%.17g', owed)}
end
local remaining = math.floor((depth - debt) / interval + 1e-6)
if remaining < 0 then
  remaining = 0
end
return {0, remaining, string.format('%.17g', owed - depth), string.format('%.17g', debt)}
"""
"""The GCRA step as one atomic Redis script (Lua 5.1, no globals). The key expires when its
TAT passes, which forgets exactly what owes nothing. With an empty `now` the script reads
Redis's TIME, one clock for every node (scripts replicate their effects, Redis >= 5)."""

LUA_SHA1: Final = hashlib.sha1(LUA_SCRIPT.encode()).hexdigest()
"""EVALSHA's name for LUA_SCRIPT."""
