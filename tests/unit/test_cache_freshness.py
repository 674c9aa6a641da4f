"""RFC 9111's rules for a shared cache (proxyd.cache.cache_control, proxyd.cache.freshness),
table-driven on an injected time: Cache-Control parsing, HTTP dates, what is stored, the
freshness lifetime, the current age, and reuse with the request's directives and RFC 5861."""

from __future__ import annotations

import pytest

from proxyd.cache.cache_control import INVALID, MAX_DELTA, NONE, Directives, http_date, parse
from proxyd.cache.freshness import (
    EXPIRED,
    Action,
    Stored,
    Why,
    current_age,
    freshness_lifetime,
    reuse,
    storable,
)

T0 = 1_700_000_000.0


def cc(*lines: str) -> Directives:
    return parse(lines)


# Cache-Control (5.2)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["max-age=60"], Directives(max_age=60)),
        (["MAX-AGE = 60"], Directives(max_age=60)),
        (['max-age="60"'], Directives(max_age=60)),
        (["max-age=60, max-age=60"], Directives(max_age=60)),
        (["max-age=60", "max-age=70"], Directives(max_age=INVALID)),
        (["max-age=-1"], Directives(max_age=INVALID)),
        (["max-age=1.5"], Directives(max_age=INVALID)),
        (["max-age"], Directives(max_age=INVALID)),
        (["max-age=99999999999"], Directives(max_age=MAX_DELTA)),
        (["s-maxage=10, public"], Directives(s_maxage=10, public=True)),
        (["max-stale"], Directives(max_stale=MAX_DELTA)),
        (["max-stale=5, min-fresh=3"], Directives(max_stale=5, min_fresh=3)),
        (["no-cache"], Directives(no_cache=frozenset())),
        (['no-cache="Set-Cookie, X-A"'], Directives(no_cache=frozenset({"set-cookie", "x-a"}))),
        (['private="X-A"', "private"], Directives(private=frozenset())),
        (
            ["no-store, no-transform, must-revalidate"],
            Directives(no_store=True, no_transform=True, must_revalidate=True),
        ),
        (
            ["stale-while-revalidate=30, stale-if-error=600"],
            Directives(stale_while_revalidate=30, stale_if_error=600),
        ),
        (["only-if-cached"], Directives(only_if_cached=True)),
        (['community="UCI", foo=bar, , immutable'], Directives(immutable=True)),
        (['private="a,b", max-age=5'], Directives(private=frozenset({"a", "b"}), max_age=5)),
        ([], NONE),
    ],
)
def test_cache_control_parses_as_rfc_9111_5_2_reads(lines: list[str], expected: Directives) -> None:
    assert parse(lines) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),
        ("Sun Nov  6 08:49:37 1994", 784111777.0),
        ("0", None),
        ("-1", None),
        ("yesterday", None),
        (None, None),
    ],
)
def test_http_dates_in_the_three_forms_recipients_read(
    text: str | None, expected: float | None
) -> None:
    assert http_date(text) == expected


# Storing (3, 3.5)


@pytest.mark.parametrize(
    ("method", "status", "response", "request_cc", "options", "why"),
    [
        ("GET", 200, NONE, NONE, {}, None),  # heuristically cacheable
        ("HEAD", 200, cc("max-age=60"), NONE, {}, Why.METHOD),
        ("POST", 200, cc("max-age=60"), NONE, {}, Why.METHOD),
        ("GET", 302, NONE, NONE, {}, Why.NOT_CACHEABLE),
        ("GET", 302, cc("max-age=60"), NONE, {}, None),
        ("GET", 302, NONE, NONE, {"expires": True}, None),
        ("GET", 500, NONE, NONE, {}, Why.NOT_CACHEABLE),
        ("GET", 404, NONE, NONE, {}, None),
        ("GET", 206, cc("max-age=60"), NONE, {}, Why.STATUS),
        ("GET", 304, cc("max-age=60"), NONE, {}, Why.STATUS),
        ("GET", 200, cc("no-store"), NONE, {}, Why.NO_STORE),
        ("GET", 200, cc("max-age=60"), cc("no-store"), {}, Why.NO_STORE),
        ("GET", 200, cc("no-store, must-understand"), NONE, {}, None),
        ("GET", 299, cc("max-age=60, must-understand"), NONE, {}, Why.MUST_UNDERSTAND),
        ("GET", 200, cc("private"), NONE, {}, Why.PRIVATE),
        ("GET", 200, cc('private="Set-Cookie", max-age=60'), NONE, {}, None),
        ("GET", 200, cc("max-age=60"), NONE, {"authorization": True}, Why.AUTHORIZATION),
        ("GET", 200, cc("max-age=60, public"), NONE, {"authorization": True}, None),
        ("GET", 200, cc("s-maxage=60"), NONE, {"authorization": True}, None),
        ("GET", 200, cc("must-revalidate"), NONE, {"authorization": True}, None),
        ("GET", 200, cc("max-age=60"), NONE, {"vary_star": True}, Why.VARY_STAR),
        ("GET", 200, cc("no-cache"), NONE, {}, None),
    ],
)
def test_what_a_shared_cache_stores(
    method: str,
    status: int,
    response: Directives,
    request_cc: Directives,
    options: dict,
    why: Why | None,
) -> None:
    assert storable(method, status, response, request_cc, **options) is why


# Freshness lifetime (4.2.1, 4.2.2) and age (4.2.3)


def stored(directives: str = "", **fields: object) -> Stored:
    values: dict[str, object] = {"status": 200, "request_time": T0, "response_time": T0, "date": T0}
    values.update(fields)
    return Stored(directives=cc(directives) if directives else NONE, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entry", "lifetime"),
    [
        (stored("s-maxage=10, max-age=100"), 10.0),
        (stored("max-age=100", expires=T0 + 5), 100.0),
        (stored(expires=T0 + 5), 5.0),
        (stored(expires=T0 - 5), 0.0),
        (stored(expires=EXPIRED), 0.0),
        (stored("max-age=60, max-age=70", expires=T0 + 5), 0.0),  # conflicting: stale
        (stored("s-maxage=x"), 0.0),
        (stored(last_modified=T0 - 1000), 100.0),  # 10 % of Date - Last-Modified
        (stored(last_modified=T0 - 10**7), 86400.0),  # capped at a day
        (stored(status=302, last_modified=T0 - 1000), 0.0),  # not heuristically cacheable
        (stored("public", status=302, last_modified=T0 - 1000), 100.0),
        (stored(), 0.0),  # no Last-Modified: no heuristic
        (stored(date=None, response_time=T0 + 2, expires=T0 + 10), 8.0),  # Date from receipt
    ],
)
def test_freshness_lifetime(entry: Stored, lifetime: float) -> None:
    assert freshness_lifetime(entry) == pytest.approx(lifetime)


def test_current_age_takes_the_larger_of_the_apparent_and_the_corrected_age() -> None:
    # Generated at T0, Age 5 on arrival, asked at T0+1 and received at T0+3, now T0+10.
    entry = stored(date=T0, age=5, request_time=T0 + 1, response_time=T0 + 3)
    # apparent 3; corrected Age 5 + delay 2 = 7; resident 7: 14.
    assert current_age(entry, T0 + 10) == pytest.approx(14.0)
    # A Date in the future (a fast origin clock): apparent age 0, not negative.
    ahead = stored(date=T0 + 100, request_time=T0, response_time=T0)
    assert current_age(ahead, T0 + 4) == pytest.approx(4.0)


# Reuse (4, 4.2.4, 5.2.1; RFC 5861)


@pytest.mark.parametrize(
    ("directives", "request_cc", "after", "action", "fresh", "if_error"),
    [
        ("max-age=60", "", 30, Action.SERVE, True, False),
        ("max-age=60", "", 61, Action.REVALIDATE, False, False),
        ("max-age=60", "max-age=20", 30, Action.REVALIDATE, True, True),
        ("max-age=60", "max-age=40", 30, Action.SERVE, True, False),
        ("max-age=60", "min-fresh=40", 30, Action.REVALIDATE, True, True),
        ("max-age=60", "min-fresh=20", 30, Action.SERVE, True, False),
        ("max-age=60", "no-cache", 1, Action.REVALIDATE, True, False),
        ("max-age=60, no-cache", "", 1, Action.REVALIDATE, True, False),
        ('max-age=60, no-cache="Set-Cookie"', "", 1, Action.REVALIDATE, True, False),
        ("max-age=60", "max-stale=10", 65, Action.SERVE, False, False),
        ("max-age=60", "max-stale=10", 75, Action.REVALIDATE, False, False),
        ("max-age=60", "max-stale", 6000, Action.SERVE, False, False),
        ("max-age=60, must-revalidate", "max-stale", 65, Action.REVALIDATE, False, False),
        ("max-age=60, proxy-revalidate", "max-stale", 65, Action.REVALIDATE, False, False),
        ("s-maxage=60", "max-stale", 65, Action.REVALIDATE, False, False),
        ("max-age=60, stale-while-revalidate=30", "", 80, Action.SERVE_AND_REFRESH, False, False),
        ("max-age=60, stale-while-revalidate=30", "", 95, Action.REVALIDATE, False, False),
        ("max-age=60, stale-if-error=100", "", 150, Action.REVALIDATE, False, True),
        ("max-age=60, stale-if-error=100", "", 170, Action.REVALIDATE, False, False),
        ("max-age=60", "stale-if-error=100", 150, Action.REVALIDATE, False, True),
        (
            "max-age=60, must-revalidate, stale-if-error=100",
            "",
            70,
            Action.REVALIDATE,
            False,
            False,
        ),
        (
            "max-age=60, stale-while-revalidate=30, must-revalidate",
            "",
            70,
            Action.REVALIDATE,
            False,
            False,
        ),
    ],
)
def test_reuse(
    directives: str, request_cc: str, after: float, action: Action, fresh: bool, if_error: bool
) -> None:
    decision = reuse(stored(directives), cc(request_cc) if request_cc else NONE, T0 + after)
    assert (decision.action, decision.fresh, decision.stale_if_error) == (action, fresh, if_error)
    assert decision.age == pytest.approx(after)
