"""The RateLimit-Policy, RateLimit and Retry-After fields (proxyd.ratelimit.headers), byte for
byte, from GCRA verdicts on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.ratelimit.gcra import SLACK, Gcra, Verdict
from proxyd.ratelimit.headers import (
    Field,
    Policy,
    policy_field,
    ratelimit_field,
    response_fields,
    retry_after_field,
    whole_seconds,
)
from proxyd.ratelimit.rates import Rate, rate


def policy(name: str, text: str, burst: int) -> Policy:
    return Policy(name, Gcra(rate(text), burst))


def spend(p: Policy, n: int, now: float = 0.0, tat: float | None = None) -> list[Verdict]:
    verdicts = []
    for _ in range(n):
        verdict = p.gcra.decide(tat, now)
        verdicts.append(verdict)
        if verdict.allowed:
            tat = verdict.tat
    return verdicts


def wire(fields: list[Field]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


def test_a_policy_item_is_the_configured_rate() -> None:
    assert policy("api", "100/s", 20).item == b'"api";q=100;w=1'
    assert policy("daily", "1M/d", 1000).item == b'"daily";q=1000000;w=86400'
    assert policy("ten", "100/10s", 5).item == b'"ten";q=100;w=10'
    assert policy("m", "6000/m", 1).item == b'"m";q=6000;w=60'


def test_a_policy_name_is_a_structured_field_string() -> None:
    assert policy('say "hi" \\o/', "1/s", 1).item == b'"say \\"hi\\" \\\\o/";q=1;w=1'
    with pytest.raises(ValueError, match="printable ASCII"):
        policy("caf\u00e9", "1/s", 1)
    with pytest.raises(ValueError, match="printable ASCII"):
        policy("tab\there", "1/s", 1)


def test_the_policy_field_lists_the_limits_in_the_order_given() -> None:
    fields = policy_field([policy("api", "100/s", 20), policy("daily", "1M/d", 1000)])
    assert fields == (b"RateLimit-Policy", b'"api";q=100;w=1, "daily";q=1000000;w=86400')


def test_the_first_request_of_a_fast_limit() -> None:
    api = policy("api", "100/s", 20)
    (verdict,) = spend(api, 1)
    assert wire(response_fields([(api, verdict)])) == (
        b'RateLimit-Policy: "api";q=100;w=1\r\nRateLimit: "api";r=19;t=1\r\n'
    )


def test_a_slow_limit_counts_its_window_to_the_next_request() -> None:
    hourly = policy("hourly", "10/h", 5)  # T = 360 s
    verdicts = spend(hourly, 6)
    items = [hourly.service_item(v) for v in verdicts]
    assert items == [
        b'"hourly";r=4;t=360',
        b'"hourly";r=3;t=360',
        b'"hourly";r=2;t=360',
        b'"hourly";r=1;t=360',
        b'"hourly";r=0;t=360',
        b'"hourly";r=0;t=360',
    ]
    assert wire(response_fields([(hourly, verdicts[-1])])) == (
        b'RateLimit-Policy: "hourly";q=10;w=3600\r\n'
        b'RateLimit: "hourly";r=0;t=360\r\n'
        b"Retry-After: 360\r\n"
    )
    tat = verdicts[4].tat
    assert hourly.service_item(hourly.gcra.decide(tat, 100.0, 0)) == b'"hourly";r=0;t=260'
    # 400 s on, one request is back and the next comes 320 s later.
    assert hourly.service_item(hourly.gcra.decide(tat, 400.0, 0)) == b'"hourly";r=1;t=320'
    # A key that owes nothing has its whole burst, which nothing will add to.
    assert hourly.service_item(hourly.gcra.decide(tat, 1800.0, 0)) == b'"hourly";r=5;t=0'


def test_several_limits_list_the_most_restrictive_first() -> None:
    short = policy("short", "10/s", 2)
    long = policy("long", "5/m", 3)
    (s1,) = spend(short, 1)
    (l1,) = spend(long, 1)
    assert ratelimit_field([(long, l1), (short, s1)]) == (
        b"RateLimit",
        b'"short";r=1;t=1, "long";r=2;t=12',
    )
    s3 = spend(short, 3)[-1]
    l2 = spend(long, 2)[-1]
    assert ratelimit_field([(long, l2), (short, s3)]) == (
        b"RateLimit",
        b'"short";r=0;t=1, "long";r=1;t=12',
    )
    # The same remaining: the longer wait first; a refusal before anything.
    l3 = spend(long, 3)[-1]
    assert ratelimit_field([(short, s3), (long, l3)])[1] == b'"short";r=0;t=1, "long";r=0;t=12'
    assert ratelimit_field([(long, l3), (short, spend(short, 2)[-1])])[1] == (
        b'"long";r=0;t=12, "short";r=0;t=1'
    )


def test_retry_after_comes_from_the_longest_refusal() -> None:
    short = policy("short", "10/s", 1)
    long = policy("long", "1/m", 1)
    s = spend(short, 2)[-1]
    lim = spend(long, 2)[-1]
    ok = spend(policy("ok", "1/s", 5), 1)[-1]
    fields = response_fields(
        [(short, s), (long, lim), (policy("ok", "1/s", 5), ok)],
        policy=policy_field([short, long]),
    )
    assert wire(fields) == (
        b'RateLimit-Policy: "short";q=10;w=1, "long";q=1;w=60\r\n'
        b'RateLimit: "long";r=0;t=60, "short";r=0;t=1, "ok";r=4;t=1\r\n'
        b"Retry-After: 60\r\n"
    )


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (0.0, b"1"),
        (0.01, b"1"),
        (1.0, b"1"),
        (1.0000000000000002, b"1"),
        (1.5, b"2"),
        (359.99, b"360"),
        (360.0, b"360"),
        (86400.5, b"86401"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, value: bytes) -> None:
    assert retry_after_field(seconds) == (b"Retry-After", value)


def test_whole_seconds_forgives_float_rounding_only() -> None:
    assert whole_seconds(2.0000000000000004) == 2
    assert whole_seconds(2.00001) == 3
    assert whole_seconds(0.0) == 0
    assert whole_seconds(-0.5) == 0


def test_an_allowed_response_has_no_retry_after() -> None:
    api = policy("api", "100/s", 20)
    fields = response_fields([(api, spend(api, 1)[0])])
    assert [name for name, _ in fields] == [b"RateLimit-Policy", b"RateLimit"]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=100),
    st.sampled_from([1, 10, 60, 3600]),
    st.integers(min_value=1, max_value=10),
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60),
)
def test_the_window_is_when_the_available_quota_grows(
    count: int, period: int, burst: int, gaps: list[float]
) -> None:
    """Within the effective window no more than r pass; at its exact end, one more does. And
    with r = 0 it ends with Retry-After, as the draft asks."""
    p = Policy("p", Gcra(Rate(count, period), burst))
    gcra = p.gcra
    tat = None
    now = 0.0
    for gap in gaps:
        now += gap * gcra.interval
        verdict = gcra.decide(tat, now)
        if verdict.allowed:
            tat = verdict.tat
        remaining = verdict.remaining
        if remaining == burst:
            assert p.effective_window(verdict) == 0
            continue
        exact = verdict.reset_after - (burst - remaining - 1) * gcra.interval
        assert exact > 0
        assert p.effective_window(verdict) >= exact - 1e-6
        epsilon = 10 * SLACK * gcra.interval
        assert gcra.decide(tat, now + exact - epsilon, 0).remaining <= remaining
        assert gcra.decide(tat, now + exact + epsilon, 0).remaining >= remaining + 1
        if remaining == 0 and not verdict.allowed:
            assert retry_after_field(verdict.retry_after)[1] == b"%d" % max(
                1, p.effective_window(verdict)
            )
