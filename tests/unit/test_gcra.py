"""GCRA (proxyd.ratelimit.gcra) on explicit times: a burst of exactly `burst` passes, the
steady rate passes for ever, one more is refused, the retry time is exact; and the Redis Lua
script computes the same as decide(), when a Lua 5.1 interpreter is at hand."""

from __future__ import annotations

import random
import shutil
import subprocess
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.ratelimit.gcra import (
    LUA_SCRIPT,
    LUA_SHA1,
    SLACK,
    Gcra,
    Verdict,
    verdict_from_reply,
)
from proxyd.ratelimit.rates import Rate, rate

# Rates whose T is exact in binary, and ones whose T is not (1/3 s, 60/7 s, 0.0864 s).
RATES = ["100/s", "3/s", "7/m", "10/h", "1M/d", "100/10s", "6000/m", "100k/s"]
BURSTS = [1, 2, 20, 1000]


def burst_at_once(gcra: Gcra, now: float, tat: float | None = None) -> tuple[int, float | None]:
    """How many cost-1 requests pass at `now`, one after the other, and the TAT after."""
    passed = 0
    while True:
        verdict = gcra.decide(tat, now)
        if not verdict.allowed:
            return passed, tat
        passed += 1
        tat = verdict.tat


def burst_at_once_in_debt(gcra: Gcra, now: float, debt: float = 0.0) -> int:
    passed = 0
    while (verdict := gcra.decide_debt(debt, now)).allowed:
        passed += 1
        debt = verdict.reset_after
    return passed


@pytest.mark.parametrize("text", RATES)
@pytest.mark.parametrize("burst", BURSTS)
def test_a_burst_of_exactly_burst_passes_at_one_instant_and_one_more_is_refused(
    text: str, burst: int
) -> None:
    gcra = Gcra(rate(text), burst)
    for now in (0.0, 12.345, 600.0):
        assert burst_at_once(gcra, now)[0] == burst
    # Kept as a debt, the count stays exact at any magnitude of time.
    for now in (0.0, 86400.0 * 365, 1_700_000_000.123456):
        assert burst_at_once_in_debt(gcra, now) == burst


def test_a_tat_far_from_zero_rounds_where_a_debt_does_not() -> None:
    """Why LimitTable keeps debts: at epoch seconds, adding T to a stored TAT rounds to
    0.24 us, and a burst of 1000 at 10k/s adds up to one request too many."""
    gcra = Gcra(rate("10k/s"), 1000)
    assert burst_at_once(gcra, 1_700_000_000.0)[0] == 1001
    assert burst_at_once_in_debt(gcra, 1_700_000_000.0) == 1000


def test_remaining_counts_down_and_the_refused_one_changes_nothing() -> None:
    gcra = Gcra(rate("100/s"), 5)
    tat = None
    seen = []
    for _ in range(5):
        verdict = gcra.decide(tat, 10.0)
        seen.append(verdict.remaining)
        tat = verdict.tat
    assert seen == [4, 3, 2, 1, 0]
    refused = gcra.decide(tat, 10.0)
    assert refused == Verdict(
        allowed=False,
        tat=None,
        remaining=0,
        retry_after=pytest.approx(0.01),
        reset_after=pytest.approx(0.05),
    )
    assert gcra.decide(tat, 10.0) == refused


@pytest.mark.parametrize("text", RATES)
@pytest.mark.parametrize("burst", [1, 20])
def test_the_steady_rate_passes_indefinitely_after_the_burst(text: str, burst: int) -> None:
    gcra = Gcra(rate(text), burst)
    start = 5.0
    passed, tat = burst_at_once(gcra, start)
    assert passed == burst
    interval = gcra.interval
    for k in range(1, 20_001):
        now = start + k * interval
        verdict = gcra.decide(tat, now)
        assert verdict.allowed, (k, now, tat)
        assert verdict.remaining == 0
        tat = verdict.tat
        # One more at the same instant is refused: the steady rate is all there is.
        assert not gcra.decide(tat, now).allowed


def test_twice_the_rate_gets_the_burst_then_the_rate() -> None:
    gcra = Gcra(rate("100/s"), 10)
    tat = None
    allowed = []
    for k in range(201):  # every 5 ms for a second
        verdict = gcra.decide(tat, k * 0.005)
        if verdict.allowed:
            allowed.append(k)
            tat = verdict.tat
    # The debt grows 5 ms an arrival until it reaches 0.1 s (19 arrivals), then one in two
    # passes: 19 + 91 = 110, the most any window of 1 s may hold (burst + 1 s / T).
    assert allowed[:20] == [*range(19), 20]
    assert len(allowed) == 110


def test_burst_one_spaces_requests_by_t() -> None:
    gcra = Gcra(rate("100/s"), 1)
    tat = None
    allowed = []
    for k in range(100):  # every 9.9 ms: a little too fast, so every other one waits
        verdict = gcra.decide(tat, k * 0.0099)
        if verdict.allowed:
            allowed.append(k)
            tat = verdict.tat
    assert allowed == list(range(0, 100, 2))


@pytest.mark.parametrize("text", RATES)
@pytest.mark.parametrize("burst", [1, 3, 20])
@pytest.mark.parametrize("cost", [1, 2])
def test_retry_after_is_exact(text: str, burst: int, cost: int) -> None:
    gcra = Gcra(rate(text), burst)
    if cost > burst:
        return
    now = 100.0
    tat: float | None = None
    while (verdict := gcra.decide(tat, now, cost)).allowed:
        tat = verdict.tat
    retry = verdict.retry_after
    assert retry > 0
    epsilon = 10 * SLACK * gcra.interval
    assert gcra.decide(tat, now + retry, cost).allowed
    assert not gcra.decide(tat, now + retry - epsilon, cost).allowed
    # An allowed verdict's retry_after is when the next request of its cost would pass.
    verdict = gcra.decide(tat, now + retry, cost)
    assert verdict.allowed
    later = now + retry + verdict.retry_after
    assert gcra.decide(verdict.tat, later, cost).allowed
    if verdict.retry_after > 0:
        assert not gcra.decide(verdict.tat, later - epsilon, cost).allowed


def test_retry_after_is_zero_while_requests_remain() -> None:
    gcra = Gcra(rate("10/s"), 3)
    first = gcra.decide(None, 0.0)
    assert first.remaining == 2
    assert first.retry_after == 0.0
    second = gcra.decide(first.tat, 0.0)
    third = gcra.decide(second.tat, 0.0)
    assert third.remaining == 0
    assert third.retry_after == pytest.approx(0.1)


@pytest.mark.parametrize("text", RATES)
def test_long_idle_resets_to_a_full_burst(text: str) -> None:
    burst = 20
    gcra = Gcra(rate(text), burst)
    _, tat = burst_at_once(gcra, 0.0)
    full = burst * gcra.interval
    verdict = gcra.decide(tat, 0.0, 0)
    assert verdict.reset_after == pytest.approx(full)
    assert burst_at_once(gcra, full, tat)[0] == burst
    assert burst_at_once(gcra, full * 0.99, tat)[0] == burst - 1
    assert burst_at_once(gcra, full * 1000, tat)[0] == burst


def test_reset_after_is_when_the_key_owes_nothing() -> None:
    gcra = Gcra(rate("10/s"), 5)
    verdict = gcra.decide(None, 1.0)
    verdict = gcra.decide(verdict.tat, 1.0)
    assert verdict.reset_after == pytest.approx(0.2)
    assert verdict.tat == pytest.approx(1.2)
    assert gcra.decide(verdict.tat, 1.2, 0).remaining == 5


def test_costs_above_one_take_that_many() -> None:
    gcra = Gcra(rate("10/s"), 10)
    first = gcra.decide(None, 0.0, 4)
    assert (first.allowed, first.remaining, first.reset_after) == (True, 6, pytest.approx(0.4))
    assert first.retry_after == 0.0
    second = gcra.decide(first.tat, 0.0, 4)
    assert (second.allowed, second.remaining) == (True, 2)
    assert second.retry_after == pytest.approx(0.2)  # until 4 are free again
    third = gcra.decide(second.tat, 0.0, 4)
    assert (third.allowed, third.tat, third.remaining) == (False, None, 2)
    assert third.retry_after == pytest.approx(0.2)
    assert gcra.decide(second.tat, 0.2, 4).allowed
    assert gcra.decide(second.tat, 0.0, 2).allowed
    assert not gcra.decide(second.tat, 0.0, 3).allowed


def test_a_cost_of_zero_looks_without_taking() -> None:
    gcra = Gcra(rate("10/s"), 3)
    look = gcra.decide(None, 7.0, 0)
    assert look == Verdict(True, 7.0, 3, 0.0, 0.0)
    spent = gcra.decide(gcra.decide(None, 7.0).tat, 7.0, 0)
    assert (spent.allowed, spent.remaining) == (True, 2)


def test_a_cost_that_could_never_pass_is_refused_as_an_error() -> None:
    gcra = Gcra(rate("10/s"), 3)
    with pytest.raises(ValueError, match="from 0 to the burst"):
        gcra.decide(None, 0.0, 4)
    with pytest.raises(ValueError):
        gcra.decide(None, 0.0, -1)
    assert gcra.decide(None, 0.0, 3).allowed


def test_a_clock_that_goes_back_grants_nothing_more() -> None:
    gcra = Gcra(rate("10/s"), 2)
    _, tat = burst_at_once(gcra, 50.0)
    verdict = gcra.decide(tat, 49.0)
    assert not verdict.allowed
    assert verdict.remaining == 0
    assert verdict.retry_after == pytest.approx(1.1)


def test_the_derived_values() -> None:
    gcra = Gcra(Rate(100, 1), 20)
    assert gcra.interval == 0.01
    assert gcra.tolerance == pytest.approx(0.19)
    assert gcra.depth == pytest.approx(0.2)
    with pytest.raises(ValueError, match="burst must be at least 1"):
        Gcra(Rate(100, 1), 0)


# Properties over any arrival times.

_gaps = st.lists(
    st.one_of(
        st.just(0.0), st.floats(min_value=0.0, max_value=2.0, allow_nan=False, allow_infinity=False)
    ),
    min_size=1,
    max_size=120,
)


@st.composite
def limits(draw: st.DrawFn) -> Gcra:
    count = draw(st.integers(min_value=1, max_value=50))
    period = draw(st.sampled_from([1, 2, 3, 60]))
    burst = draw(st.integers(min_value=1, max_value=10))
    return Gcra(Rate(count, period), burst)


def allowed_times(gcra: Gcra, gaps: list[float], costs: list[int] | None = None) -> list[float]:
    now = 0.0
    tat: float | None = None
    times = []
    for index, gap in enumerate(gaps):
        now += gap
        cost = 1 if costs is None else min(costs[index % len(costs)], gcra.burst)
        verdict = gcra.decide(tat, now, cost)
        if verdict.allowed:
            tat = verdict.tat
            times.extend([now] * cost)
    return times


@settings(max_examples=300, deadline=None)
@given(limits(), _gaps)
def test_no_window_of_w_seconds_allows_more_than_burst_plus_w_over_t(
    gcra: Gcra, gaps: list[float]
) -> None:
    times = allowed_times(gcra, gaps)
    # The fullest windows start and end on an allowed request.
    for i in range(len(times)):
        for j in range(i, len(times)):
            window = times[j] - times[i]
            assert j - i + 1 <= gcra.burst + window / gcra.interval + 1e-6


@settings(max_examples=300, deadline=None)
@given(limits(), _gaps, st.lists(st.integers(min_value=1, max_value=4), min_size=1))
def test_remaining_is_exactly_what_passes_now(
    gcra: Gcra, gaps: list[float], costs: list[int]
) -> None:
    now = sum(gaps)
    tat = None
    start = 0.0
    for index, gap in enumerate(gaps):
        start += gap
        verdict = gcra.decide(tat, start, min(costs[index % len(costs)], gcra.burst))
        if verdict.allowed:
            tat = verdict.tat
    remaining = gcra.decide(tat, now, 0).remaining
    passed, _ = burst_at_once(gcra, now, tat)
    assert passed == remaining


@settings(max_examples=300, deadline=None)
@given(limits(), _gaps, st.integers(min_value=1, max_value=3))
def test_retry_after_is_exact_after_any_history(gcra: Gcra, gaps: list[float], cost: int) -> None:
    cost = min(cost, gcra.burst)
    now = 0.0
    tat: float | None = None
    for gap in gaps:
        now += gap
        verdict = gcra.decide(tat, now, cost)
        if verdict.allowed:
            tat = verdict.tat
            continue
        epsilon = 10 * SLACK * gcra.interval
        assert verdict.retry_after > 0
        assert gcra.decide(tat, now + verdict.retry_after, cost).allowed
        if verdict.retry_after > epsilon:  # a wait shorter than that is all slack
            assert not gcra.decide(tat, now + verdict.retry_after - epsilon, cost).allowed


def exact_decide(
    tat: Fraction | None, now: Fraction, interval: Fraction, burst: int, cost: int
) -> tuple[bool, Fraction | None]:
    """GCRA in exact rational arithmetic, as the module docstring writes it."""
    base = tat if tat is not None and tat > now else now
    new = base + cost * interval
    if new - now <= burst * interval:
        return True, new
    return False, None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=1000),
    st.sampled_from([1, 3, 7, 60, 86400]),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=8),
    st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=150),
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=5),
)
def test_floats_decide_as_exact_arithmetic_does_on_the_boundaries(
    count: int, period: int, burst: int, ticks: int, gaps: list[int], costs: list[int]
) -> None:
    """Arrivals on multiples of T/ticks land exactly on GCRA's boundaries (a request at the
    very moment it may pass): the floats, with their slack, must decide as exact fractions."""
    gcra = Gcra(Rate(count, period), burst)
    interval = Fraction(period, count)
    step = interval / ticks
    exact_now = Fraction(0)
    exact_tat: Fraction | None = None
    tat: float | None = None
    for index, gap in enumerate(gaps):
        exact_now += gap * step
        cost = min(costs[index % len(costs)], burst)
        allowed, new = exact_decide(exact_tat, exact_now, interval, burst, cost)
        verdict = gcra.decide(tat, float(exact_now), cost)
        assert verdict.allowed == allowed, (index, exact_now, exact_tat)
        if allowed:
            exact_tat, tat = new, verdict.tat


# The Redis script against decide().

LUA = shutil.which("lua5.1") or shutil.which("lua")

_HARNESS = """\
-- Redis as far as the script uses it: GET, SET with PX (keys expire), TIME; no globals.
local store, expires = {}, {}
NOW = 0
TIME = {"0", "0"}
redis = {}
function redis.call(command, key, value, px, ms)
  if command == 'GET' then
    if store[key] ~= nil and NOW >= expires[key] then
      store[key] = nil
    end
    if store[key] == nil then return false end
    return store[key]
  elseif command == 'SET' then
    assert(px == 'PX' and ms >= 1 and ms == math.floor(ms), 'bad PX')
    store[key] = value
    expires[key] = NOW + ms / 1000 + 1e-6 -- never early for float rounding
    return {ok = 'OK'}
  elseif command == 'TIME' then
    return TIME
  end
  error('unexpected command ' .. command)
end
local script = assert(loadstring(SCRIPT))
setfenv(script, setmetatable({}, {
  __index = _G,
  __newindex = function(_, name) error('the script set a global: ' .. name) end,
}))
for _, call in ipairs(CALLS) do
  NOW = call.now
  TIME = call.time
  KEYS = {call.key}
  ARGV = call.argv
  local r = script()
  print(r[1], r[2], r[3], r[4], store[call.key] or '-')
end
"""


def _lua_string(text: str) -> str:
    return "[==[\n" + text + "]==]"


def redis_time(now: float) -> tuple[int, int]:
    """TIME's answer at `now`: seconds and microseconds."""
    seconds = int(now)
    return seconds, round((now - seconds) * 1_000_000)


def run_lua(gcra: Gcra, calls: list[tuple[str, float, int, bool]]) -> list[list[str]]:
    """Run the script for each (key, now, cost, use_redis_time); one output row per call."""
    assert LUA is not None
    rows = []
    for key, now, cost, use_time in calls:
        seconds, micros = redis_time(now)
        argv = gcra.lua_args(None if use_time else now, cost)
        argv_lua = ", ".join(f"'{a}'" for a in argv)
        rows.append(
            f"{{key={_lua_string(key)}, now={now!r}, time={{'{seconds}', '{micros}'}}, "
            f"argv={{{argv_lua}}}}}"
        )
    program = (
        f"SCRIPT = {_lua_string(LUA_SCRIPT)}\nCALLS = {{\n" + ",\n".join(rows) + "\n}\n" + _HARNESS
    )
    done = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in done.stdout.splitlines()]


def scenario(seed: int) -> tuple[Gcra, list[tuple[str, float, int, bool]]]:
    rng = random.Random(seed)
    text = rng.choice(RATES)
    burst = rng.choice([1, 2, 5, 20])
    gcra = Gcra(rate(text), burst)
    now = 1_700_000_000.0 if seed % 2 else 1000.0
    # A burst and one more at one instant, then anything.
    calls = [("a", now, 1, seed % 3 == 0)] * (burst + 1)
    for _ in range(400):
        # Bursts at one instant, steps of a fraction of T, and pauses past the bucket's depth.
        now += rng.choice([0.0, 0.0, gcra.interval * rng.random(), gcra.interval, gcra.depth * 2])
        now = round(now, 6)  # Redis's TIME has microseconds
        cost = rng.choice([1, 1, 1, min(2, burst), 0])
        calls.append((rng.choice(["a", "b"]), now, cost, seed % 3 == 0))
    return gcra, calls


@pytest.mark.skipif(LUA is None, reason="no Lua 5.1 interpreter (Debian's lua5.1)")
@pytest.mark.parametrize("seed", range(6))
def test_the_lua_script_decides_as_decide_does(seed: int) -> None:
    gcra, calls = scenario(seed)
    rows = run_lua(gcra, calls)
    assert len(rows) == len(calls)
    tats: dict[str, float] = {}
    outcomes = set()
    for (key, now, cost, use_time), row in zip(calls, rows, strict=True):
        if use_time:  # the script computes the time from TIME's two integers
            seconds, micros = redis_time(now)
            now = seconds + micros / 1000000
        expected = gcra.decide(tats.get(key), now, cost)
        got = verdict_from_reply([int(row[0]), int(row[1]), row[2], row[3]])
        assert got == expected._replace(tat=None), (key, now, cost)
        if expected.tat is not None:
            tats[key] = expected.tat
            if expected.reset_after > 0:
                assert float(row[4]) == expected.tat
        outcomes.add(expected.allowed)
    assert outcomes == {True, False}


def test_the_script_has_a_stable_name_for_evalsha() -> None:
    assert len(LUA_SHA1) == 40
    assert "redis.call('SET', KEYS[1]" in LUA_SCRIPT
    assert Gcra(rate("100/s"), 20).lua_args(12.5, 1) == ("12.5", "0.01", "0.19", "1")
    assert Gcra(rate("100/s"), 20).lua_args(None) == ("", "0.01", "0.19", "1")
    with pytest.raises(ValueError):
        Gcra(rate("100/s"), 20).lua_args(None, 21)


def test_a_redis_reply_becomes_a_verdict() -> None:
    assert verdict_from_reply([1, 19, b"0", b"0.01"]) == Verdict(True, None, 19, 0.0, 0.01)
    assert verdict_from_reply([0, 0, "0.5", "1.5"]) == Verdict(False, None, 0, 0.5, 1.5)


def test_up_to_grants_what_passes_now_and_retry_is_for_one_more() -> None:
    gcra = Gcra(rate("10/s"), 5)
    granted, verdict = gcra.decide_up_to(None, 100.0, 3)
    assert (granted, verdict.allowed, verdict.remaining) == (3, True, 2)
    assert verdict.reset_after == pytest.approx(0.3) and verdict.retry_after == 0.0
    granted, verdict = gcra.decide_up_to(100.3, 100.0, 5)
    assert (granted, verdict.remaining) == (2, 0)
    assert verdict.retry_after == pytest.approx(0.1)  # one more, 0.1 s later
    granted, verdict = gcra.decide_up_to(100.5, 100.0, 2)
    assert (granted, verdict.allowed, verdict.tat) == (0, False, None)
    assert verdict == gcra.decide(100.5, 100.0, 1)
    with pytest.raises(ValueError):
        gcra.decide_up_to(None, 100.0, 6)
    with pytest.raises(ValueError):
        gcra.decide_up_to(None, 100.0, 0)


def run_lua_up_to(gcra: Gcra, calls: list[tuple[str, float, int]]) -> list[list[str]]:
    assert LUA is not None
    rows = []
    for key, now, wanted in calls:
        argv_lua = ", ".join(f"'{a}'" for a in gcra.lua_args(now, wanted, up_to=True))
        rows.append(
            f"{{key={_lua_string(key)}, now={now!r}, time={{'0', '0'}}, argv={{{argv_lua}}}}}"
        )
    program = (
        f"SCRIPT = {_lua_string(LUA_SCRIPT)}\nCALLS = {{\n" + ",\n".join(rows) + "\n}\n" + _HARNESS
    )
    done = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in done.stdout.splitlines()]


@pytest.mark.skipif(LUA is None, reason="no Lua 5.1 interpreter (Debian's lua5.1)")
@pytest.mark.parametrize("seed", range(4))
def test_the_lua_script_grants_up_to_as_decide_up_to_does(seed: int) -> None:
    rng = random.Random(seed)
    burst = rng.choice([1, 3, 10, 50])
    gcra = Gcra(rate(rng.choice(RATES)), burst)
    now = 1000.0
    calls = []
    for _ in range(300):
        now = round(now + rng.choice([0.0, gcra.interval * rng.random(), gcra.depth]), 6)
        calls.append((rng.choice("ab"), now, rng.randint(1, burst)))
    rows = run_lua_up_to(gcra, calls)
    tats: dict[str, float] = {}
    grants = set()
    for (key, now, wanted), row in zip(calls, rows, strict=True):
        granted, expected = gcra.decide_up_to(tats.get(key), now, wanted)
        assert int(row[0]) == granted, (key, now, wanted)
        assert verdict_from_reply(row[:4]) == pytest.approx(expected._replace(tat=None))
        if expected.tat is not None:
            tats[key] = expected.tat
        grants.add(0 if granted == 0 else 1 if granted == wanted else 2)
    assert grants == {0, 1, 2} or burst == 1
