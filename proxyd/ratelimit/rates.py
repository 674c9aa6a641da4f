"""A limit's rate and burst as the config writes them: `rate = 100/s`, `burst = 20`.

Wiring: the `[ratelimit NAME]` schema uses `rate` and `burst` below as the value parsers of
its `rate` and `burst` keys (each raises Invalid, which the loader turns into a ConfigError
with file and line), and `default_burst(rate)` when `burst` is absent; the validated Rate
and burst then build a `proxyd.ratelimit.gcra.Gcra`.

Rate syntax: `COUNT/PERIOD`. COUNT is a whole number, optionally with `k` (thousands) or `M`
(millions): `100`, `6k`, `1M`. PERIOD is a unit, `s`, `m`, `h` or `d`, optionally after a
whole number: `s`, `10s`, `15m`. So `100/s`, `6000/m`, `1M/d`, `100/10s`. nginx's `10r/s`
is read too. Periods are whole seconds, because the RateLimit-Policy field's window is
(draft-ietf-httpapi-ratelimit-headers: "sub-second precision is not supported"); `10/100ms`
is written `100/s` with a burst.

Burst: how many requests may arrive at the same instant, a whole number from 1 (the same
`k`/`M` suffixes). `burst = 1` spaces requests evenly, one every period/count, and refuses
any two closer than that (nginx's limit_req without burst); `burst = N` lets N through at
once, then one per period/count. nginx's `burst=N` lets N+1 through at once (it counts the
requests beyond the first), so it is proxyd's `burst = N+1`.

The default burst is the rate's count, the whole period's quota: `rate = 100/s` alone lets
100 requests through at once, then 100 a second, as "100 a second" reads and as Kong's,
Traefik's and Envoy's buckets (max_tokens = tokens per fill) behave; proxyd's own
`max_connection_rate_per_client` does the same. The price: over any window of W seconds a
key gets at most burst + W x count/period requests, so up to twice the count in the worst
single period; a smaller burst (`burst = 20`) narrows that to 20 above the rate.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from proxyd.config.errors import Invalid

MAX_COUNT: Final = 10**12
"""Of a rate's count and of a burst; the RateLimit fields' integers have at most 15 digits."""
MAX_PERIOD: Final = 10**9
"""Seconds (about 31 years)."""

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SUFFIXES: Final = {"": 1, "k": 1000, "K": 1000, "M": 1_000_000}
_WORDS: Final = {
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
}
_RATE: Final = re.compile(r"^(\d+)\s*([a-zA-Z]*)\s*/\s*(\d*)\s*([a-zA-Z]*)$", re.ASCII)
_COUNT: Final = re.compile(r"^(\d+)([a-zA-Z]?)$", re.ASCII)

RATE_EXPECTED: Final = "a rate like 100/s, 6000/m, 1M/d or 100/10s"
BURST_EXPECTED: Final = "a burst: a whole number of requests from 1, like 20 or 1k"


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.frozen
class Rate:
    """`count` requests every `period_seconds` seconds, sustained."""

    count: int = attrs.field(validator=_positive)
    period_seconds: int = attrs.field(validator=_positive)

    @property
    def interval(self) -> float:
        """Seconds between two requests at the steady rate (GCRA's emission interval T)."""
        return self.period_seconds / self.count

    @property
    def per_second(self) -> float:
        return self.count / self.period_seconds

    def __str__(self) -> str:
        """As the config would write it: `100/s`, `6000/m`, `100/10s`, `1000000/d`."""
        for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.period_seconds % seconds == 0:
                n = self.period_seconds // seconds
                return f"{self.count}/{unit}" if n == 1 else f"{self.count}/{n}{unit}"
        if self.period_seconds == 1:
            return f"{self.count}/s"
        return f"{self.count}/{self.period_seconds}s"


def rate(text: str) -> Rate:
    """`100/s`, `6000/m`, `1M/d`, `100/10s` (or nginx's `10r/s`) as a Rate."""
    word = text.strip()
    match = _RATE.match(word)
    if match is None:
        raise Invalid(RATE_EXPECTED, repr(text), _rate_hint(word))
    digits, suffix, multiple, unit = match.groups()
    if suffix.endswith("r"):  # nginx's 10r/s
        suffix = suffix[:-1]
    if suffix not in _SUFFIXES:
        raise Invalid(RATE_EXPECTED, repr(text), _suffix_hint(digits, suffix, word))
    if unit not in _UNITS:
        raise Invalid(RATE_EXPECTED, repr(text), _unit_hint(word, unit))
    count = int(digits) * _SUFFIXES[suffix]
    period = (int(multiple) if multiple else 1) * _UNITS[unit]
    if count < 1 or period < 1:
        raise Invalid("a rate above zero, like 100/s", repr(text))
    if count > MAX_COUNT:
        raise Invalid(f"a rate of at most {MAX_COUNT} requests a period", repr(text))
    if period > MAX_PERIOD:
        raise Invalid(f"a period of at most {MAX_PERIOD} seconds", repr(text))
    return Rate(count, period)


def burst(text: str) -> int:
    """`20`, `1k`: how many requests may pass at the same instant, from 1."""
    word = text.strip()
    match = _COUNT.match(word)
    if match is None:
        raise Invalid(BURST_EXPECTED, repr(text))
    digits, suffix = match.groups()
    if suffix not in _SUFFIXES:
        raise Invalid(BURST_EXPECTED, repr(text), _suffix_hint(digits, suffix, word))
    value = int(digits) * _SUFFIXES[suffix]
    if not 1 <= value <= MAX_COUNT:
        raise Invalid(f"a burst from 1 to {MAX_COUNT} requests", repr(text))
    return value


def default_burst(rate: Rate) -> int:
    """The burst of a limit that gives none: its rate's count (module docstring)."""
    return rate.count


def _suffix_hint(digits: str, suffix: str, word: str) -> str:
    if suffix == "m":
        fixed = word.replace(f"{digits}m", f"{digits}M", 1)
        return f"did you mean '{fixed}'? M is a million"
    return "a count's suffix is k (thousands) or M (millions)"


def _unit_hint(word: str, unit: str) -> str:
    known = _WORDS.get(unit.lower())
    if unit == "ms":
        return "periods are whole seconds: write 10/100ms as 100/s"
    if known is not None:
        return f"did you mean '{word[: len(word) - len(unit)]}{known}'?"
    return "the period's unit is s, m, h or d, with an optional count before it: 100/10s"


def _rate_hint(word: str) -> str | None:
    if "/" not in word:
        return "a count, a slash and a period: 100/s"
    if re.search(r"\d[.,]\d", word):
        return "counts and periods are whole numbers: write 1.5/s as 3/2s"
    return None
