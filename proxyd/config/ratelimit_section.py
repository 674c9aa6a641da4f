"""`[ratelimit NAME]` sections and the `ratelimits` key of listeners and routes: their
parsers, and the RateLimitConfig a section makes once its keys have parsed
(proxyd.config.cross_checks). The rate and burst parsers are proxyd.ratelimit.rates'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from proxyd.config import values as v
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.http_values import status
from proxyd.config.ini import Section
from proxyd.config.keys import Context, Key, reference
from proxyd.config.ratelimit_model import KEY_SOURCES, KeyPart, RateLimitConfig
from proxyd.config.security import Problems
from proxyd.config.security_model import OFF, Off
from proxyd.ratelimit import rates

MAX_KEYS: Final = 100_000_000
"""Of `max_keys`: about 20 GB of keys at 190 bytes each (proxyd.ratelimit.table)."""

_KEY_EXPECTED: Final = (
    f"one or more of {one_of(KEY_SOURCES)} ('header NAME': that field's value), such as"
    " 'client' or 'route header X-API-Key'"
)


def key(text: str) -> tuple[KeyPart, ...]:
    """`client`, `header NAME`, `auth`, `route`, or several: `route client`."""
    words = text.split()
    if not words:
        raise Invalid(_KEY_EXPECTED, "nothing")
    parts: list[KeyPart] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word not in KEY_SOURCES:
            raise Invalid(_KEY_EXPECTED, repr(word), did_you_mean(word, KEY_SOURCES))
        name: str | None = None
        if word == "header":
            index += 1
            if index == len(words):
                raise Invalid("'header NAME'", repr(text.strip()))
            name = v.header_name(words[index]).lower()
        part = (word, name)
        if part in parts:
            raise Invalid("each part of the key once", f"{' '.join(filter(None, part))!r} twice")
        parts.append(part)
        index += 1
    return tuple(parts)


def ratelimits(text: str, ctx: Context) -> tuple[RateLimitConfig, ...] | Off:
    """`ratelimits = NAME, NAME`: [ratelimit] sections, in order; `off` (on a route: none of
    the listener's)."""
    names = text.replace(",", " ").split()
    if names == [OFF]:
        return OFF
    if not names:
        raise Invalid("names of [ratelimit] sections, or 'off'", "nothing")
    known = ctx.section_names.get("ratelimit", frozenset())
    found: list[RateLimitConfig] = []
    seen: set[str] = set()
    for name in names:
        reference("ratelimit", name, known)
        if name in seen:
            raise Invalid("each limit once", f"{name!r} twice")
        seen.add(name)
        limit = ctx.sections.get("ratelimit", {}).get(name)
        if limit is not None:  # else the [ratelimit] has errors, reported there
            found.append(limit)
    return tuple(found)


KEYS: Mapping[str, Key] = {
    "rate": Key(rates.rate, required=True),
    "burst": Key(rates.burst),
    "key": Key(key),
    "dry_run": Key(v.boolean),
    "max_keys": Key(v.integer(1, MAX_KEYS)),
    "status": Key(status(400, 599, "a status")),
}
"""[ratelimit NAME]'s keys."""


def ratelimit_section(section: Section, fields: dict[str, Any]) -> Problems:
    """The burst defaults to the rate's count (proxyd.ratelimit.rates)."""
    fields.setdefault("burst", rates.default_burst(fields["rate"]))
    return []


__all__ = ["KEYS", "RateLimitConfig", "key", "ratelimit_section", "ratelimits"]
