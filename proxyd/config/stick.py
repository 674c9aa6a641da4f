"""A pool's stick table (`stick_on`, `stick_store`, `stick_expire`, `stick_timeout`;
docs/health.md, "Stick tables across nodes"): the keys' parsers, and the StickConfig they
make (PoolConfig.stick), grouped as discovery's are."""

from __future__ import annotations

from typing import Any, Final

from proxyd.config.cache_section import redis_ca, with_ca
from proxyd.config.errors import Invalid, did_you_mean
from proxyd.config.http_values import cookie_name, header_name
from proxyd.config.ini import Section
from proxyd.config.keys import Key
from proxyd.config.ratelimit_model import RedisStore
from proxyd.config.ratelimit_section import store as redis_store
from proxyd.config.scalars import positive_duration
from proxyd.config.stick_model import StickConfig

_SOURCES: Final = ("cookie", "header", "client_ip")


def stick_on(text: str) -> tuple[str, str | None]:
    """`cookie NAME`, `header NAME` or `client_ip`."""
    words = text.split()
    expected = "'cookie NAME', 'header NAME' or 'client_ip'"
    if not words or words[0] not in _SOURCES:
        kind = words[0] if words else ""
        raise Invalid(expected, repr(text.strip()), did_you_mean(kind, _SOURCES))
    kind = words[0]
    if kind == "client_ip":
        if len(words) != 1:
            raise Invalid("nothing after 'client_ip'", repr(" ".join(words[1:])))
        return kind, None
    if len(words) != 2:
        raise Invalid(f"one name after '{kind}'", repr(text.strip()))
    name = cookie_name(words[1]) if kind == "cookie" else header_name(words[1]).lower()
    return kind, name


def stick_store(text: str) -> RedisStore | None:
    """`local` (None: this process's table) or `redis://...` (`rediss://`: TLS)."""
    return redis_store(text)


KEYS: dict[str, Key] = {
    "stick_on": Key(stick_on, group="stick"),
    "stick_store": Key(stick_store, group="stick"),
    "stick_expire": Key(positive_duration, group="stick"),
    "stick_timeout": Key(positive_duration, group="stick"),
    "stick_ca": Key(redis_ca, context=True, group="stick"),
}
"""The [pool] keys of its stick table."""


def stick_group(
    section: Section, fields: dict[str, Any], values: dict[str, Any]
) -> list[tuple[str | None, Invalid]]:
    """Build the pool's `stick` from its keys: the others need `stick_on`."""
    problems: list[tuple[str | None, Invalid]] = []
    found = values.get("stick_on")
    if found is None:
        for key in ("stick_store", "stick_expire", "stick_timeout", "stick_ca"):
            if key in values:
                problems.append((key, Invalid(f"'{key}' only with 'stick_on'", "no stick_on")))
        return problems
    if "sticky_cookie" in fields:
        why = "either sticky_cookie or stick_on, not both"
        problems.append(("stick_on", Invalid(why, "both")))
    if "stick_timeout" in values and values.get("stick_store") is None:
        why = "'stick_timeout' only with stick_store = redis://..."
        problems.append(("stick_timeout", Invalid(why, "a local table")))
    source, name = found
    store, found_ca = with_ca(
        values.get("stick_store"), values.get("stick_ca"), "stick_store", "stick_ca"
    )
    problems += found_ca
    given = {
        key: values[f"stick_{key}"] for key in ("expire", "timeout") if f"stick_{key}" in values
    }
    fields["stick"] = StickConfig(source=source, name=name, store=store, **given)
    return problems


__all__ = ["KEYS", "StickConfig", "stick_group"]
