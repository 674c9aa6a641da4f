"""LimitTable (proxyd.ratelimit.table) on twisted's task.Clock: keyed limits in bounded memory,
forgetting what owes nothing without changing a single verdict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from proxyd.ratelimit.gcra import Gcra
from proxyd.ratelimit.rates import rate
from proxyd.ratelimit.table import LimitTable, hit_all


def table(
    text: str = "10/s",
    burst: int = 3,
    *,
    max_keys: int = 1000,
    idle_after: float | None = None,
    clock: Clock | None = None,
) -> tuple[LimitTable, Clock]:
    clock = clock or Clock()
    return LimitTable(
        Gcra(rate(text), burst), clock, max_keys=max_keys, idle_after=idle_after
    ), clock


def test_a_burst_passes_then_the_rate_and_refusals_are_counted() -> None:
    limits, clock = table("10/s", 3)
    assert [limits.hit("a").allowed for _ in range(4)] == [True, True, True, False]
    assert (limits.allowed, limits.limited) == (3, 1)
    clock.advance(0.1)
    assert limits.hit("a").allowed
    assert not limits.hit("a").allowed
    assert (limits.allowed, limits.limited) == (4, 2)


def test_keys_are_limited_apart() -> None:
    limits, _ = table("10/s", 1)
    assert limits.hit("a").allowed
    assert not limits.hit("a").allowed
    assert limits.hit(("b", "/api")).allowed
    assert limits.tracked == 2


def test_the_verdict_is_the_gcra_verdict() -> None:
    limits, clock = table("10/s", 3)
    clock.advance(5)
    limits.hit("a")
    verdict = limits.hit("a")
    assert (verdict.allowed, verdict.remaining, verdict.retry_after) == (True, 1, 0.0)
    assert verdict.reset_after == pytest.approx(0.2)
    limits.hit("a")
    refused = limits.hit("a")
    assert (refused.allowed, refused.tat, refused.remaining) == (False, None, 0)
    assert refused.retry_after == pytest.approx(0.1)
    clock.advance(refused.retry_after)
    assert limits.hit("a").allowed


def test_a_key_that_owes_nothing_is_forgotten_as_other_keys_are_hit() -> None:
    limits, clock = table("10/s", 3)
    limits.hit("a")
    clock.advance(0.1)  # "a" owes nothing from now on
    limits.hit("b")
    assert limits.tracked == 1
    clock.advance(0.1)
    limits.hit("b")
    assert limits.tracked == 1
    assert (limits.evicted, limits.expired) == (0, 0)


def test_sweep_forgets_what_owes_nothing_when_no_traffic_comes() -> None:
    limits, clock = table("10/s", 5)
    for key in "abcd":
        limits.hit(key)
    limits.hit("d")
    clock.advance(0.1)
    assert limits.sweep() == 3  # "d" still owes 0.1 s
    assert limits.tracked == 1
    clock.advance(0.1)
    assert limits.sweep() == 1
    assert limits.tracked == 0


def test_sweep_looks_at_no_more_than_its_budget() -> None:
    limits, clock = table("10/s", 5)
    for key in range(10):
        limits.hit(key)
    clock.advance(1)
    assert limits.sweep(budget=4) == 4
    assert limits.tracked == 6


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcde"),
            st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.1, 0.3, 1.0]),
            st.integers(min_value=0, max_value=3),
        ),
        max_size=200,
    ),
    st.booleans(),
)
def test_forgetting_changes_no_verdict(hits: list[tuple[str, float, int]], sweeping: bool) -> None:
    """A table that forgets keys owing nothing decides as a plain dict of TATs would."""
    gcra = Gcra(rate("10/s"), 3)
    clock = Clock()
    limits = LimitTable(gcra, clock, max_keys=1000)
    tats: dict[str, float] = {}
    for key, gap, cost in hits:
        clock.advance(gap)
        now = clock.seconds()
        expected = gcra.decide(tats.get(key), now, cost)
        got = limits.hit(key, cost)
        assert got._replace(tat=None) == pytest.approx(expected._replace(tat=None), abs=1e-9)
        if expected.tat is not None:
            tats[key] = expected.tat
        if sweeping:
            limits.sweep()
        owing = {k for k, tat in tats.items() if tat > now + 1e-9}
        assert owing <= set(limits._keys)
    assert limits.evicted == 0


def test_past_max_keys_the_least_recently_hit_is_evicted_and_counted() -> None:
    limits, _ = table("1/s", 2, max_keys=3)
    for key in "abc":
        limits.hit(key)
    limits.hit("a")  # now "b" is the least recently hit
    limits.hit("d")
    assert limits.tracked == 3
    assert set(limits._keys) == {"c", "a", "d"}
    assert limits.evicted == 1
    # "b" starts again with a full burst: what eviction costs.
    assert [limits.hit("b").allowed for _ in range(3)] == [True, True, False]
    assert limits.evicted == 2


def test_an_evicted_key_that_owed_nothing_is_not_counted() -> None:
    limits, clock = table("10/s", 2, max_keys=2)
    limits.hit("a")
    clock.advance(0.05)
    limits.hit("b")  # "a" still owes 0.05 s: kept
    clock.advance(0.06)  # "a" owes nothing now, but is only forgotten by the next hit
    limits._sweep_at = float("inf")  # as if the hint were stale
    limits.hit("c")
    assert limits.evicted == 0
    assert limits.tracked == 2


def test_refused_hits_keep_a_hammering_key_from_eviction() -> None:
    limits, clock = table("1/m", 1, max_keys=2)
    assert limits.hit("abuser").allowed
    assert limits.hit("other").allowed
    clock.advance(1)
    assert not limits.hit("abuser").allowed  # refused, but recent
    assert limits.hit("new").allowed  # evicts "other", not "abuser"
    assert "abuser" in limits._keys
    assert not limits.hit("abuser").allowed


def test_idle_after_forgets_an_owing_key_not_hit_for_that_long() -> None:
    limits, clock = table("1/h", 1, idle_after=60)
    assert limits.hit("a").allowed
    clock.advance(59)
    assert limits.sweep() == 0
    assert not limits.hit("a").allowed  # refused, which counts as a hit
    clock.advance(60)
    assert limits.sweep() == 1
    assert limits.expired == 1
    assert limits.hit("a").allowed  # a fresh burst, as idle_after wanted


def test_idle_after_forgets_on_hits_too() -> None:
    limits, clock = table("1/h", 1, idle_after=60)
    limits.hit("a")
    clock.advance(61)
    limits.hit("b")
    assert set(limits._keys) == {"b"}
    assert limits.expired == 1


def test_a_look_of_cost_zero_stores_nothing_for_a_new_key() -> None:
    limits, _ = table()
    verdict = limits.hit("a", 0)
    assert (verdict.allowed, verdict.remaining) == (True, 3)
    assert limits.tracked == 0


def test_peek_changes_and_counts_nothing() -> None:
    limits, clock = table("10/s", 3)
    limits.hit("a")
    limits.hit("b")
    clock.advance(0.05)
    verdict = limits.peek("a")
    assert (verdict.allowed, verdict.remaining) == (True, 2)
    assert verdict.reset_after == pytest.approx(0.05)
    assert limits.peek("new").remaining == 3
    assert list(limits._keys) == ["a", "b"]
    assert (limits.allowed, limits.limited, limits.tracked) == (2, 0, 2)


def test_a_cost_beyond_the_burst_is_an_error() -> None:
    limits, _ = table("10/s", 3)
    with pytest.raises(ValueError):
        limits.hit("a", 4)
    assert (limits.tracked, limits.allowed, limits.limited) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "burst"), [("100k/s", 1000), ("10k/s", 1000), ("1000/s", 1000), ("3/s", 7)]
)
def test_bursts_stay_exact_after_a_month_on_an_epoch_clock(text: str, burst: int) -> None:
    clock = Clock()
    clock.advance(1_700_000_000.123456)
    limits, _ = table(text, burst, clock=clock)
    clock.advance(86400 * 30 + 0.5)
    passed = 0
    while limits.hit("a").allowed:
        passed += 1
    assert passed == burst
    # Then the steady rate: one every T (the clock reads in steps of 0.24 us at this
    # magnitude, so each request comes a microsecond after its time), never two.
    interval = limits.gcra.interval
    start = clock.seconds()
    for k in range(1, 2001):
        clock.advance(start + k * interval + 1e-6 - clock.seconds())
        assert limits.hit("a").allowed, k
        assert not limits.hit("a").allowed, k


def test_limits_hit_together_charge_all_or_none() -> None:
    clock = Clock()
    short = LimitTable(Gcra(rate("10/s"), 2), clock, max_keys=10)
    long = LimitTable(Gcra(rate("5/m"), 3), clock, max_keys=10)
    both = [(short, "ip"), (long, "user")]
    assert [v.allowed for v in hit_all(both)] == [True, True]
    assert [v.allowed for v in hit_all(both)] == [True, True]
    refused = hit_all(both)
    assert [v.allowed for v in refused] == [False, True]
    # The refused request used none of the long limit's quota: it still has one left.
    assert long.peek("user").remaining == 1
    assert (short.allowed, short.limited, long.allowed, long.limited) == (2, 1, 2, 0)
    clock.advance(0.1)
    assert [v.allowed for v in hit_all(both)] == [True, True]
    clock.advance(0.1)
    assert [v.allowed for v in hit_all(both)] == [True, False]
    assert short.peek("ip").remaining == 1  # not charged for the long limit's refusal


def test_hit_all_with_one_limit_is_hit() -> None:
    limits, _ = table("10/s", 1)
    assert [v.allowed for v in hit_all([(limits, "a")])] == [True]
    assert [v.allowed for v in hit_all([(limits, "a")])] == [False]


def test_hit_all_tracks_a_new_key_only_when_charged() -> None:
    clock = Clock()
    open_ = LimitTable(Gcra(rate("10/s"), 5), clock, max_keys=10)
    shut = LimitTable(Gcra(rate("10/s"), 1), clock, max_keys=10)
    shut.hit("x")
    hit_all([(open_, "new"), (shut, "x")])
    assert open_.tracked == 0


def test_the_arguments_are_checked() -> None:
    gcra = Gcra(rate("10/s"), 1)
    with pytest.raises(ValueError, match="max_keys"):
        LimitTable(gcra, Clock(), max_keys=0)
    with pytest.raises(ValueError, match="idle_after"):
        LimitTable(gcra, Clock(), max_keys=1, idle_after=0)


# What other processes charged (proxyd.ratelimit.ledger and .synced)


def test_charge_adds_the_requests_whatever_the_burst_and_returns_the_tat() -> None:
    limits, clock = table("10/s", 3)
    clock.advance(100)
    assert limits.charge("a", 5, clock.seconds()) == pytest.approx(100.5)
    assert limits.tat("a") == pytest.approx(100.5)
    assert not limits.hit("a").allowed  # owes 0.5 s, past the burst's 0.3
    clock.advance(0.3)
    assert limits.hit("a").allowed
    assert limits.tat("unknown") is None


def test_a_charge_dated_earlier_finds_what_the_key_owed_then() -> None:
    limits, clock = table("10/s", 3)
    clock.advance(10)
    limits.charge("a", 2, 10.0)
    clock.advance(0.05)
    # Dated at 10.0 too (another worker's first charge at the same time): no decay twice.
    assert limits.charge("a", 2, 10.0) == pytest.approx(10.4)
    # Dated later: what it owed then, 0.35 s at 10.05, plus its own.
    assert limits.charge("a", 1, 10.05) == pytest.approx(10.5)
    # A date in the future counts as now.
    assert limits.charge("b", 1, 99.0) == pytest.approx(10.15)


def test_a_charge_dated_before_the_hold_counts_as_of_the_hold() -> None:
    gcra = Gcra(rate("10/s"), 3)
    clock = Clock()
    clock.advance(10)
    limits = LimitTable(gcra, clock, max_keys=10, hold=1.0)
    assert limits.charge("a", 1, 5.0) == pytest.approx(9.1)  # at 9.0, owing 0.1


def test_with_a_hold_a_paid_key_is_kept_that_long_for_late_charges() -> None:
    gcra = Gcra(rate("10/s"), 3)
    clock = Clock()
    limits = LimitTable(gcra, clock, max_keys=10, hold=1.0)
    limits.charge("a", 1, 0.0)
    clock.advance(0.5)
    assert limits.sweep() == 0
    # A late report dated at 0.0 still finds the first charge.
    assert limits.charge("a", 1, 0.0) == pytest.approx(0.2)
    clock.advance(1.3)
    assert limits.sweep() == 1


def test_owe_at_least_raises_a_debt_and_never_lowers_one() -> None:
    limits, clock = table("10/s", 3, max_keys=2)
    limits.hit("a")
    limits.hit("b")
    limits.owe_at_least("a", 0.3)
    assert not limits.hit("a").allowed
    limits.owe_at_least("a", 0.0)
    assert not limits.peek("a").remaining
    # A key learned of is added, without becoming the most recently hit...
    limits.owe_at_least("c", 0.25)  # evicting "b", the least recently hit
    assert set(limits._keys) == {"a", "c"}
    assert limits.peek("c").remaining == 0
    # ...and one that owes nothing is not.
    limits.owe_at_least("d", 0.0)
    assert "d" not in limits._keys
    clock.advance(0.1)
    assert limits.hit("c").allowed
