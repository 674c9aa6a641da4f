"""Rates and bursts as the config writes them (proxyd.ratelimit.rates), and the errors a user
sees for bad ones, with file and line once the loader has them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.errors import ConfigError, Invalid
from proxyd.ratelimit.rates import (
    BURST_EXPECTED,
    MAX_COUNT,
    RATE_EXPECTED,
    Rate,
    burst,
    default_burst,
    rate,
)


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/s", 100, 1),
        ("6000/m", 6000, 60),
        ("1M/d", 1_000_000, 86400),
        ("10/h", 10, 3600),
        ("1k/s", 1000, 1),
        ("2K/m", 2000, 60),
        ("100/10s", 100, 10),
        ("5/15m", 5, 900),
        ("1000/2h", 1000, 7200),
        ("10r/s", 10, 1),
        ("  100 / s  ", 100, 1),
        ("30/1m", 30, 60),
    ],
)
def test_rates_parse(text: str, count: int, period: int) -> None:
    assert rate(text) == Rate(count, period)


def test_a_rate_gives_its_interval_and_its_name() -> None:
    assert rate("100/s").interval == 0.01
    assert rate("6000/m").per_second == 100.0
    assert rate("1M/d").interval == pytest.approx(0.0864)
    assert [str(rate(t)) for t in ("100/s", "6000/m", "1M/d", "100/10s", "5/15m", "1/90s")] == [
        "100/s",
        "6000/m",
        "1000000/d",
        "100/10s",
        "5/15m",
        "1/90s",
    ]


@given(
    st.integers(min_value=1, max_value=MAX_COUNT),
    st.integers(min_value=1, max_value=10**6),
)
def test_a_rate_written_out_reads_back_the_same(count: int, period: int) -> None:
    value = Rate(count, period)
    assert rate(str(value)) == value


@given(st.text(max_size=20))
def test_any_text_is_a_rate_or_a_clean_error(text: str) -> None:
    try:
        value = rate(text)
    except Invalid as e:
        assert e.expected
        assert e.found == repr(text)
    else:
        assert value.count >= 1
        assert value.period_seconds >= 1


@pytest.mark.parametrize(
    ("text", "expected", "hint"),
    [
        ("100/parsec", RATE_EXPECTED, "the period's unit is s, m, h or d"),
        ("100/second", RATE_EXPECTED, "did you mean '100/s'?"),
        ("100/minute", RATE_EXPECTED, "did you mean '100/m'?"),
        ("6000/min", RATE_EXPECTED, "did you mean '6000/m'?"),
        ("1M/days", RATE_EXPECTED, "did you mean '1M/d'?"),
        ("1m/s", RATE_EXPECTED, "did you mean '1M/s'? M is a million"),
        ("1G/s", RATE_EXPECTED, "a count's suffix is k (thousands) or M (millions)"),
        ("10/100ms", RATE_EXPECTED, "periods are whole seconds"),
        ("1.5/s", RATE_EXPECTED, "counts and periods are whole numbers"),
        ("100", RATE_EXPECTED, "a count, a slash and a period"),
        ("100/", RATE_EXPECTED, "the period's unit is s, m, h or d"),
        ("100/10", RATE_EXPECTED, "the period's unit is s, m, h or d"),
        ("", RATE_EXPECTED, "a count, a slash and a period"),
        ("fast", RATE_EXPECTED, "a count, a slash and a period"),
        ("0/s", "a rate above zero, like 100/s", None),
        ("100/0s", "a rate above zero, like 100/s", None),
        ("2000000M/s", f"a rate of at most {MAX_COUNT} requests a period", None),
    ],
)
def test_bad_rates_say_what_was_expected(text: str, expected: str, hint: str | None) -> None:
    with pytest.raises(Invalid) as caught:
        rate(text)
    assert caught.value.expected == expected
    assert caught.value.found == repr(text)
    if hint is None:
        assert caught.value.hint is None
    else:
        assert caught.value.hint is not None
        assert caught.value.hint.startswith(hint)


def test_a_bad_rate_reads_with_file_and_line() -> None:
    with pytest.raises(Invalid) as caught:
        rate("100/parsec")
    e = caught.value
    error = ConfigError(
        "etc/proxyd.ini", 12, "[ratelimit api]", "rate", e.expected, e.found, e.hint
    )
    assert str(error) == (
        "etc/proxyd.ini:12: [ratelimit api] rate: expected a rate like 100/s, 6000/m, 1M/d or "
        "100/10s; found '100/parsec' (the period's unit is s, m, h or d, with an optional "
        "count before it: 100/10s)"
    )


@pytest.mark.parametrize(
    ("text", "value"), [("20", 20), ("1", 1), ("1k", 1000), (" 2M ", 2_000_000)]
)
def test_bursts_parse(text: str, value: int) -> None:
    assert burst(text) == value


@pytest.mark.parametrize(
    ("text", "expected", "hint"),
    [
        ("0", f"a burst from 1 to {MAX_COUNT} requests", None),
        ("-1", BURST_EXPECTED, None),
        ("1.5", BURST_EXPECTED, None),
        ("twenty", BURST_EXPECTED, None),
        ("1m", BURST_EXPECTED, "did you mean '1M'? M is a million"),
        ("10/s", BURST_EXPECTED, None),
    ],
)
def test_bad_bursts_say_what_was_expected(text: str, expected: str, hint: str | None) -> None:
    with pytest.raises(Invalid) as caught:
        burst(text)
    assert (caught.value.expected, caught.value.hint) == (expected, hint)


def test_the_default_burst_is_the_periods_whole_quota() -> None:
    assert default_burst(rate("100/s")) == 100
    assert default_burst(rate("1M/d")) == 1_000_000
    assert default_burst(rate("100/10s")) == 100


def test_a_rate_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="count must be at least 1"):
        Rate(0, 1)
    with pytest.raises(ValueError, match="period_seconds must be at least 1"):
        Rate(1, 0)
