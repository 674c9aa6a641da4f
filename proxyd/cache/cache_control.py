"""Cache-Control (RFC 9111 5.2) and the HTTP dates of caching (RFC 9110 5.6.7), parsed
sans-IO into the values the cache decides with (proxyd.cache.freshness).

Cache-Control is a comma-separated list of directives, `token` or `token=value` where the
value is a token or a quoted-string, case-insensitive names, over any number of field lines.
Parsing is lenient where RFC 9111 asks caches to be robust, and strict where a mistake would
serve what must not be served:

- An unknown directive is ignored (5.2.3: extensions a cache does not understand).
- A delta-seconds argument (max-age, s-maxage, max-stale, min-fresh, stale-while-revalidate,
  stale-if-error) that is not a non-negative integer makes the directive invalid: for a
  response's max-age or s-maxage that means "stale" (4.2.1 lets a cache treat an invalid
  freshness as stale), never "fresh for ever"; for the others it is ignored. A value past
  2^31 seconds counts as 2^31 (1.2.2: "at least 2147483648 ... infinity").
- A directive written twice with different arguments (two max-age) is invalid the same way
  (4.2.1: "either the first occurrence should be used or the response should be considered
  stale"; proxyd takes stale, the safer reading for a shared cache).
- no-cache and private may carry field names (`private="Set-Cookie"`): kept as a frozenset of
  lower-case names; without names, None-with-presence means the unqualified form.
- A quoted-string argument where a token is expected (`max-age="60"`) is accepted as the
  token inside (5.2: senders SHOULD NOT, recipients are lenient).
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from typing import Final

import attrs

MAX_DELTA: Final = 2**31
"""delta-seconds past this count as this (RFC 9111 1.2.2)."""
INVALID: Final = -1
"""A delta-seconds directive present but unusable (a bad or conflicting argument)."""


@attrs.frozen
class Directives:
    """One message's Cache-Control: the directives RFC 9111 defines, as the cache uses them.
    Seconds are ints (INVALID when present but unusable), None when absent; flags are
    bools; no_cache and private are None when absent, an empty frozenset when unqualified,
    else the lower-case field names they name."""

    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None
    """Request: MAX_DELTA for a bare `max-stale` (any staleness)."""
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    no_cache: frozenset[str] | None = None
    private: frozenset[str] | None = None
    no_store: bool = False
    no_transform: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    public: bool = False
    immutable: bool = False
    only_if_cached: bool = False


NONE: Final = Directives()

_SECONDS: Final = {
    "max-age": "max_age",
    "s-maxage": "s_maxage",
    "max-stale": "max_stale",
    "min-fresh": "min_fresh",
    "stale-while-revalidate": "stale_while_revalidate",
    "stale-if-error": "stale_if_error",
}
_FLAGS: Final = {
    "no-store": "no_store",
    "no-transform": "no_transform",
    "must-revalidate": "must_revalidate",
    "proxy-revalidate": "proxy_revalidate",
    "must-understand": "must_understand",
    "public": "public",
    "immutable": "immutable",
    "only-if-cached": "only_if_cached",
}
_FIELDS: Final = {"no-cache": "no_cache", "private": "private"}


def parse(lines: Iterable[bytes | str]) -> Directives:
    """The Cache-Control of a message from its field lines' values (none: NONE)."""
    values: dict[str, object] = {}
    for line in lines:
        text = line.decode("latin-1") if isinstance(line, bytes) else line
        for name, argument in _directives(text):
            if name in _SECONDS:
                seconds = _delta(argument, bare=name == "max-stale")
                field = _SECONDS[name]
                if field in values and values[field] != seconds:
                    seconds = INVALID
                values[field] = seconds
            elif name in _FLAGS:
                values[_FLAGS[name]] = True
            elif name in _FIELDS:
                field = _FIELDS[name]
                names = _field_names(argument)
                if field in values:
                    before = values[field]
                    assert isinstance(before, frozenset)
                    # Unqualified anywhere wins: it asks more of the cache than any list.
                    names = frozenset() if not before or not names else before | names
                values[field] = names
    return Directives(**values) if values else NONE  # type: ignore[arg-type]


def _directives(text: str) -> Iterable[tuple[str, str | None]]:
    """(lower-case name, argument or None) for each directive of one field value, quoted
    commas kept inside their argument."""
    index, length = 0, len(text)
    while index < length:
        end = index
        while end < length and text[end] not in ",=":
            end += 1
        name = text[index:end].strip().lower()
        argument: str | None = None
        if end < length and text[end] == "=":
            start = end + 1
            while start < length and text[start] in " \t":
                start += 1
            if start < length and text[start] == '"':
                chars: list[str] = []
                position = start + 1
                while position < length and text[position] != '"':
                    if text[position] == "\\" and position + 1 < length:
                        position += 1
                    chars.append(text[position])
                    position += 1
                argument = "".join(chars)
                end = text.find(",", position)
                end = length if end < 0 else end
            else:
                end = text.find(",", start)
                end = length if end < 0 else end
                argument = text[start:end].strip()
        if name:
            yield name, argument
        index = end + 1


def _delta(argument: str | None, *, bare: bool) -> int:
    if argument is None:
        return MAX_DELTA if bare else INVALID
    if not argument.isdigit() or not argument.isascii():
        return INVALID
    return min(int(argument), MAX_DELTA)


def _field_names(argument: str | None) -> frozenset[str]:
    if not argument:
        return frozenset()
    return frozenset(name.strip().lower() for name in argument.split(",") if name.strip())


def http_date(value: bytes | str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms that recipients
    must read: RFC 9110 5.6.7) as POSIX seconds; None when absent or not a date."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        parsed = email.utils.parsedate_tz(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None or parsed[0] < 1970:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None
