"""What a shared cache may store and when it may reuse it (RFC 9111 3, 4.2, 4.2.4, 5.2, and
RFC 5861's stale-while-revalidate and stale-if-error), sans-IO: pure functions of the
messages' parsed fields (proxyd.cache.cache_control) and the time.

Wiring (the cache filter, to come): on a response, `storable()` says whether (and why not) it
may be stored, and `Stored.of()` keeps what reuse needs; on a request, `reuse()` says what
to do with a stored response: serve it (fresh, or stale where allowed), revalidate it, or
go to the origin; `Reuse.age` is the `Age` to send.

The arithmetic is RFC 9111's, for a shared cache:

- freshness lifetime (4.2.1): s-maxage, else max-age, else Expires - Date (Expires invalid,
  such as "0": already stale), else a heuristic (4.2.2) where it is allowed: a response
  heuristically cacheable by status (RFC 9110 15.1) or marked public, with Last-Modified:
  `heuristic_fraction` (10 %, as the RFC suggests and Squid and Varnish do) of Date -
  Last-Modified, at most `heuristic_max`. An invalid max-age or s-maxage is stale (0).
- current age (4.2.3): apparent_age = max(0, response_time - date); corrected_age_value =
  Age + (response_time - request_time); corrected_initial_age = max(apparent_age,
  corrected_age_value); current_age = corrected_initial_age + (now - response_time). Without
  Date, the response_time stands for it (5.6.7 of RFC 9110: a recipient with a clock adds one).
- reuse (4, 4.2.4, 5.2.1): request no-cache, response no-cache (qualified or not: proxyd
  revalidates rather than serve without the named fields) and fresh-but-too-old for the
  request's max-age or min-fresh all mean revalidate; stale is served only where the request's
  max-stale allows it and neither must-revalidate, proxy-revalidate nor s-maxage forbids it
  (4.2.4, 5.2.2.2, 5.2.2.8, 5.2.2.10); RFC 5861 adds serving stale while revalidating in the
  background (within stale-while-revalidate) and on an origin error (within stale-if-error,
  response's or request's).
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from proxyd.cache.cache_control import INVALID, NONE, Directives

HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""Heuristically cacheable by default (RFC 9110 15.1)."""
UNDERSTOOD_STATUSES: Final = frozenset(
    {200, 203, 204, 206, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501}
)
"""The final statuses this cache understands (for must-understand, RFC 9111 5.2.2.3)."""
HEURISTIC_FRACTION: Final = 0.1
HEURISTIC_MAX: Final = 86400.0
"""A day: the heuristic freshness of a file last changed long ago is capped (Squid's
refresh_pattern default max is 3 days, Varnish's default_ttl 2 minutes; a day balances)."""


@attrs.frozen
class Stored:
    """What reuse needs of a stored response: its status, directives, dates, and when it was
    asked for and received (this cache's clock)."""

    status: int
    directives: Directives
    request_time: float
    response_time: float
    date: float | None = None
    age: int = 0
    """The Age field's value (0 when absent or not a non-negative integer)."""
    expires: float | None = None
    """Expires as a time; EXPIRED for an invalid one (already stale)."""
    last_modified: float | None = None


EXPIRED: Final = float("-inf")
"""Stored.expires for an Expires that is not a date: stale (RFC 9111 5.3)."""


class Why(enum.Enum):
    """Why a response is not stored."""

    METHOD = "method not cacheable"
    STATUS = "status not storable"
    NO_STORE = "no-store"
    PRIVATE = "private"
    AUTHORIZATION = "request with Authorization"
    NOT_CACHEABLE = "no explicit freshness and not heuristically cacheable"
    MUST_UNDERSTAND = "must-understand on a status not understood"
    VARY_STAR = "Vary: *"


def storable(
    method: str,
    status: int,
    response: Directives,
    request: Directives = NONE,
    *,
    authorization: bool = False,
    expires: bool = False,
    vary_star: bool = False,
) -> Why | None:
    """None when a shared cache may store this response (RFC 9111 3, 3.5), else why not.
    `expires`: the response has an Expires field (even an invalid one); `vary_star`: its
    Vary is `*` (never reusable: 4.1, so never stored). A `private` naming fields lets the
    response be stored without them (5.2.2.7): the caller strips them."""
    if method != "GET":
        return Why.METHOD
    if request.no_store:
        return Why.NO_STORE
    if response.must_understand:  # understood, it overrides the response's no-store
        if status not in UNDERSTOOD_STATUSES:
            return Why.MUST_UNDERSTAND
    elif response.no_store:
        return Why.NO_STORE
    if status < 200 or status == 206 or status == 304:
        return Why.STATUS
    if response.private is not None and not response.private:
        return Why.PRIVATE  # the qualified form lets a shared cache store the rest
    if authorization and not (
        response.must_revalidate or response.public or response.s_maxage is not None
    ):
        return Why.AUTHORIZATION
    if vary_star:
        return Why.VARY_STAR
    explicit = (
        response.public
        or response.max_age is not None
        or response.s_maxage is not None
        or expires
        or response.no_cache is not None  # stored to be revalidated
    )
    if not explicit and status not in HEURISTIC_STATUSES:
        return Why.NOT_CACHEABLE
    return None


def freshness_lifetime(
    stored: Stored,
    *,
    heuristic_fraction: float = HEURISTIC_FRACTION,
    heuristic_max: float = HEURISTIC_MAX,
) -> float:
    """Seconds the response is fresh for, from its generation (RFC 9111 4.2.1, 4.2.2)."""
    directives = stored.directives
    if directives.s_maxage is not None:
        return 0.0 if directives.s_maxage == INVALID else float(directives.s_maxage)
    if directives.max_age is not None:
        return 0.0 if directives.max_age == INVALID else float(directives.max_age)
    date = stored.date if stored.date is not None else stored.response_time
    if stored.expires is not None:
        return max(0.0, stored.expires - date)
    heuristic = stored.status in HEURISTIC_STATUSES or directives.public
    if heuristic and stored.last_modified is not None and stored.last_modified < date:
        return min((date - stored.last_modified) * heuristic_fraction, heuristic_max)
    return 0.0


def current_age(stored: Stored, now: float) -> float:
    """Seconds since the origin generated the response, as RFC 9111 4.2.3 computes it."""
    date = stored.date if stored.date is not None else stored.response_time
    apparent_age = max(0.0, stored.response_time - date)
    response_delay = stored.response_time - stored.request_time
    corrected_age_value = stored.age + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    return corrected_initial_age + (now - stored.response_time)


class Action(enum.Enum):
    SERVE = "serve"
    """Send the stored response (fresh, or stale as allowed)."""
    SERVE_AND_REFRESH = "serve, refresh in the background"
    """stale-while-revalidate: send it, and revalidate it without making the client wait."""
    REVALIDATE = "revalidate"
    """Ask the origin with the stored validators; a 304 refreshes the stored response. On an
    origin error, `stale_if_error` says whether the stored one may be sent instead."""


@attrs.frozen
class Reuse:
    action: Action
    age: float
    """The Age to send (whole seconds, rounded down, at the caller)."""
    fresh: bool
    stale_if_error: bool = False
    """With REVALIDATE: the stored response may answer if the origin fails (RFC 5861 4)."""


def reuse(
    stored: Stored,
    request: Directives,
    now: float,
    *,
    heuristic_fraction: float = HEURISTIC_FRACTION,
    heuristic_max: float = HEURISTIC_MAX,
) -> Reuse:
    """What to do with `stored` for a request with `request`'s Cache-Control at `now`."""
    lifetime = freshness_lifetime(
        stored, heuristic_fraction=heuristic_fraction, heuristic_max=heuristic_max
    )
    age = current_age(stored, now)
    fresh = lifetime > age
    response = stored.directives
    staleness = age - lifetime
    if_error = _stale_if_error(response, request, staleness, fresh)
    if request.no_cache is not None or response.no_cache is not None:
        return Reuse(Action.REVALIDATE, age, fresh, if_error)
    if request.max_age is not None and (request.max_age == INVALID or age > request.max_age):
        return Reuse(Action.REVALIDATE, age, fresh, if_error)
    if fresh:
        if request.min_fresh is not None and lifetime - age < max(request.min_fresh, 0):
            return Reuse(Action.REVALIDATE, age, fresh, if_error)
        return Reuse(Action.SERVE, age, True)
    if _must_revalidate(response):
        return Reuse(Action.REVALIDATE, age, False)
    allowed = request.max_stale
    if allowed is not None and allowed != INVALID and staleness <= allowed:
        return Reuse(Action.SERVE, age, False)
    window = response.stale_while_revalidate
    if window is not None and window != INVALID and staleness <= window:
        return Reuse(Action.SERVE_AND_REFRESH, age, False)
    return Reuse(Action.REVALIDATE, age, False, if_error)


def _must_revalidate(response: Directives) -> bool:
    """Stale may not be served without the origin's word (4.2.4; s-maxage implies
    proxy-revalidate for a shared cache, 5.2.2.10)."""
    return response.must_revalidate or response.proxy_revalidate or response.s_maxage is not None


def _stale_if_error(
    response: Directives, request: Directives, staleness: float, fresh: bool
) -> bool:
    """RFC 5861 4: within stale-if-error (the response's, or the request's), a stale
    response may answer when the origin fails, and a fresh one may (it is being revalidated
    only because the request asked for younger); never past must-revalidate, and never one
    that no-cache says may not be used without the origin's word (RFC 9111 5.2.2.4)."""
    if response.no_cache is not None or request.no_cache is not None:
        return False
    if fresh:
        return True
    if _must_revalidate(response):
        return False
    windows = [
        window
        for window in (response.stale_if_error, request.stale_if_error)
        if window is not None and window != INVALID
    ]
    return any(staleness <= window for window in windows)
