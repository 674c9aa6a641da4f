"""Per-client limits for L4 listeners: connections open per address, new connections per
period per address (a token bucket), and the bounded table of addresses behind them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from proxyd.access.client_limits import MAX_CONNECTIONS, MAX_RATE, ClientLimits

A = "192.0.2.1"
B = "192.0.2.2"


def limits(
    clock: Clock | None = None,
    *,
    max_connections: int | None = None,
    max_rate: float | None = None,
    rate_period: float = 1.0,
    max_tracked: int = 100_000,
) -> ClientLimits:
    return ClientLimits(
        clock if clock is not None else Clock(),
        max_connections=max_connections,
        max_rate=max_rate,
        rate_period=rate_period,
        max_tracked=max_tracked,
    )


def admit_many(limiter: ClientLimits, ip: str, count: int) -> list[str | None]:
    return [limiter.admit(ip) for _ in range(count)]


def test_reasons_are_the_documented_strings() -> None:
    assert MAX_CONNECTIONS == "max_connections_per_client"
    assert MAX_RATE == "max_connection_rate_per_client"


def test_with_both_limits_off_everything_is_admitted_and_nothing_tracked() -> None:
    limiter = limits()
    assert admit_many(limiter, A, 1000) == [None] * 1000
    assert limiter.tracked == 0
    limiter.release(A)
    assert limiter.open_connections(A) == 0


# Connections open at once


def test_exactly_max_connections_are_admitted_and_one_more_refused() -> None:
    limiter = limits(max_connections=3)
    assert admit_many(limiter, A, 3) == [None, None, None]
    assert limiter.admit(A) == MAX_CONNECTIONS
    assert limiter.open_connections(A) == 3


def test_release_frees_one_slot() -> None:
    limiter = limits(max_connections=2)
    admit_many(limiter, A, 2)
    limiter.release(A)
    assert limiter.open_connections(A) == 1
    assert limiter.admit(A) is None
    assert limiter.admit(A) == MAX_CONNECTIONS


def test_connection_limit_is_per_address() -> None:
    limiter = limits(max_connections=1)
    assert limiter.admit(A) is None
    assert limiter.admit(B) is None
    assert limiter.admit(A) == MAX_CONNECTIONS
    assert limiter.admit(B) == MAX_CONNECTIONS


def test_refused_connection_is_not_counted_open() -> None:
    limiter = limits(max_connections=1)
    limiter.admit(A)
    limiter.admit(A)
    limiter.release(A)
    assert limiter.open_connections(A) == 0
    assert limiter.admit(A) is None


def test_releasing_more_than_admitted_never_goes_below_zero() -> None:
    limiter = limits(max_connections=1)
    limiter.release(A)
    limiter.admit(A)
    limiter.release(A)
    limiter.release(A)
    assert limiter.open_connections(A) == 0
    assert limiter.tracked == 0
    assert limiter.admit(A) is None
    assert limiter.admit(A) == MAX_CONNECTIONS


def test_address_with_nothing_open_and_no_rate_limit_is_forgotten() -> None:
    limiter = limits(max_connections=5)
    limiter.admit(A)
    limiter.admit(A)
    assert limiter.tracked == 1
    limiter.release(A)
    limiter.release(A)
    assert limiter.tracked == 0


# New connections per period


def test_burst_of_exactly_max_rate_passes_and_one_more_is_refused() -> None:
    limiter = limits(max_rate=5)
    assert admit_many(limiter, A, 5) == [None] * 5
    assert limiter.admit(A) == MAX_RATE
    assert limiter.open_connections(A) == 5


def test_after_the_period_a_whole_burst_passes_again() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=5)
    admit_many(limiter, A, 5)
    clock.advance(1.0)
    assert admit_many(limiter, A, 5) == [None] * 5
    assert limiter.admit(A) == MAX_RATE


def test_just_before_the_period_the_bucket_is_not_yet_full() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=5)
    admit_many(limiter, A, 5)
    clock.advance(0.999)  # 4.995 tokens
    assert admit_many(limiter, A, 5) == [None, None, None, None, MAX_RATE]


def test_one_connection_passes_every_period_over_max_rate() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=10)
    admit_many(limiter, A, 10)
    for _ in range(20):
        clock.advance(0.099)
        assert limiter.admit(A) == MAX_RATE
        clock.advance(0.001)
        assert limiter.admit(A) is None
        assert limiter.admit(A) == MAX_RATE


@pytest.mark.parametrize("max_rate", [1, 3, 7, 10, 100, 1000])
@pytest.mark.parametrize("rate_period", [0.1, 1.0, 3.0, 60.0])
def test_exact_refill_times_admit_despite_float_rounding(max_rate: int, rate_period: float) -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=max_rate, rate_period=rate_period)
    assert admit_many(limiter, A, max_rate) == [None] * max_rate
    assert limiter.admit(A) == MAX_RATE
    for _ in range(max_rate):
        clock.advance(rate_period / max_rate)
        assert limiter.admit(A) is None
    assert limiter.admit(A) == MAX_RATE
    clock.advance(rate_period)
    assert admit_many(limiter, A, max_rate) == [None] * max_rate
    assert limiter.admit(A) == MAX_RATE


def test_rate_period_spreads_the_rate() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=2, rate_period=10.0)
    admit_many(limiter, A, 2)
    clock.advance(4.9)
    assert limiter.admit(A) == MAX_RATE
    clock.advance(0.1)
    assert limiter.admit(A) is None


def test_fractional_rate_bursts_its_integer_part_then_refills_the_rest() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=2.5)
    assert admit_many(limiter, A, 3) == [None, None, MAX_RATE]
    clock.advance(0.2)  # 0.5 + 0.2 * 2.5 = 1 token
    assert limiter.admit(A) is None
    assert limiter.admit(A) == MAX_RATE


def test_refused_attempts_do_not_use_the_rate() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=2)
    admit_many(limiter, A, 2)
    for _ in range(100):
        assert limiter.admit(A) == MAX_RATE
    clock.advance(0.5)
    assert limiter.admit(A) is None


def test_connection_limit_refusal_takes_no_token() -> None:
    limiter = limits(max_connections=1, max_rate=3)
    assert limiter.admit(A) is None
    assert limiter.admit(A) == MAX_CONNECTIONS
    assert limiter.admit(A) == MAX_CONNECTIONS
    limiter.release(A)
    assert admit_many(limiter, A, 2) == [None, MAX_CONNECTIONS]
    limiter.release(A)
    assert limiter.admit(A) is None
    limiter.release(A)
    assert limiter.admit(A) == MAX_RATE


def test_connection_limit_is_checked_before_the_rate() -> None:
    limiter = limits(max_connections=2, max_rate=2)
    admit_many(limiter, A, 2)
    assert limiter.admit(A) == MAX_CONNECTIONS


def test_rate_is_remembered_after_every_connection_closed() -> None:
    limiter = limits(max_rate=2)
    admit_many(limiter, A, 2)
    limiter.release(A)
    limiter.release(A)
    assert limiter.tracked == 1
    assert limiter.admit(A) == MAX_RATE


def test_rate_is_per_address() -> None:
    limiter = limits(max_rate=1)
    assert limiter.admit(A) is None
    assert limiter.admit(B) is None
    assert limiter.admit(A) == MAX_RATE


def test_clock_going_back_does_not_lock_an_address_out() -> None:
    clock = Clock()
    clock.advance(1000.0)
    limiter = limits(clock, max_rate=2)
    admit_many(limiter, A, 2)
    clock.rightNow = 100.0  # wall clock set back by 900 s
    assert limiter.admit(A) == MAX_RATE
    clock.advance(0.5)
    assert limiter.admit(A) is None


# The table of addresses


def test_idle_address_is_forgotten_once_its_bucket_is_full() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=2)
    limiter.admit(A)
    limiter.release(A)
    assert limiter.tracked == 1
    clock.advance(0.4)
    limiter.admit(B)
    assert limiter.tracked == 2
    clock.advance(0.1)  # A's bucket is full again
    limiter.admit(B)
    assert limiter.tracked == 1
    assert limiter.evicted == 0


def test_released_address_with_a_full_bucket_is_forgotten_at_once() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=2)
    limiter.admit(A)
    clock.advance(0.5)
    limiter.release(A)
    assert limiter.tracked == 0


def test_address_with_connections_open_stays_however_long() -> None:
    clock = Clock()
    limiter = limits(clock, max_connections=1, max_rate=2)
    limiter.admit(A)
    for _ in range(20):
        clock.advance(100.0)
        limiter.admit(B)
        limiter.release(B)
    assert limiter.admit(A) == MAX_CONNECTIONS


def test_beyond_max_tracked_the_least_recently_seen_idle_address_is_evicted() -> None:
    clock = Clock()
    limiter = limits(clock, max_rate=1, max_tracked=3)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.admit(ip)
        limiter.release(ip)
    assert limiter.admit("10.0.0.1") == MAX_RATE  # seen again: now the most recent
    assert (limiter.tracked, limiter.evicted) == (3, 0)
    assert limiter.admit("10.0.0.4") is None
    assert (limiter.tracked, limiter.evicted) == (3, 1)
    assert limiter.admit("10.0.0.2") is None  # evicted: its rate was forgotten
    assert limiter.admit("10.0.0.1") == MAX_RATE  # kept
    assert limiter.admit("10.0.0.3") is None  # evicted in turn, for 10.0.0.2
    assert limiter.evicted == 3


def test_addresses_with_connections_open_are_never_evicted() -> None:
    limiter = limits(max_connections=1, max_rate=1, max_tracked=2)
    limiter.admit(A)
    limiter.admit("10.0.0.9")
    limiter.release("10.0.0.9")
    limiter.admit(B)  # evicts 10.0.0.9, the only one with nothing open
    assert limiter.evicted == 1
    assert limiter.overflowed == 0
    assert limiter.admit(A) == MAX_CONNECTIONS
    assert limiter.admit(B) == MAX_CONNECTIONS


def test_full_table_of_open_addresses_tracks_a_new_one_anyway_and_counts_it() -> None:
    limiter = limits(max_connections=1, max_tracked=2)
    limiter.admit(A)
    limiter.admit(B)
    assert limiter.admit("10.0.0.1") is None
    assert (limiter.tracked, limiter.overflowed, limiter.evicted) == (3, 1, 0)
    assert limiter.admit("10.0.0.1") == MAX_CONNECTIONS
    assert limiter.admit(A) == MAX_CONNECTIONS


def test_overflowed_table_shrinks_back_to_max_tracked_as_connections_close() -> None:
    limiter = limits(max_connections=1, max_rate=1, max_tracked=2)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        limiter.admit(ip)
    assert (limiter.tracked, limiter.overflowed) == (4, 2)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limiter.release(ip)
    assert limiter.tracked == 2
    assert limiter.evicted == 2
    assert limiter.admit("10.0.0.3") == MAX_RATE  # the most recently released is kept


def test_table_stays_within_max_tracked_under_a_flood_of_addresses() -> None:
    clock = Clock()
    limiter = limits(clock, max_connections=2, max_rate=1, max_tracked=100)
    for n in range(1000):
        ip = f"10.0.{n // 256}.{n % 256}"
        assert limiter.admit(ip) is None
        limiter.release(ip)
        assert limiter.tracked <= 100
    assert limiter.evicted == 900
    assert limiter.overflowed == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_connections": 0},
        {"max_rate": 0.5},
        {"max_rate": float("nan")},
        {"max_rate": 1, "rate_period": 0.0},
        {"max_connections": 1, "max_tracked": 0},
    ],
)
def test_meaningless_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        limits(**kwargs)  # type: ignore[arg-type]


# Properties


operations = st.lists(
    st.tuples(
        st.sampled_from(["admit", "release", "advance"]),
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]),
        st.sampled_from([0.0, 0.01, 0.25, 1.0, 5.0]),
    ),
    max_size=200,
)


@given(operations)
def test_counts_match_a_model_and_the_table_stays_bounded(
    ops: list[tuple[str, str, float]],
) -> None:
    clock = Clock()
    limiter = limits(clock, max_connections=2, max_rate=3, max_tracked=3)
    model: dict[str, int] = {}
    admitted_at: dict[str, list[float]] = {}
    for op, ip, delay in ops:
        if op == "advance":
            clock.advance(delay)
        elif op == "admit":
            reason = limiter.admit(ip)
            if reason is None:
                model[ip] = model.get(ip, 0) + 1
                admitted_at.setdefault(ip, []).append(clock.seconds())
            elif reason == MAX_CONNECTIONS:
                assert model.get(ip, 0) == 2
        elif model.get(ip):
            limiter.release(ip)
            model[ip] -= 1
        for address, count in model.items():
            assert limiter.open_connections(address) == count <= 2
        open_addresses = sum(1 for count in model.values() if count)
        assert limiter.tracked <= max(3, open_addresses)
    for times in admitted_at.values():
        # A bucket of 3 refilled at 3/s: never more than 3 + 3 * span in any span.
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= 3 + 3 * (times[j] - start) + 1e-6
