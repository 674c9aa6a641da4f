"""`[ratelimit NAME]` sections and the `ratelimits` key of listeners and routes: their
parsers, and the RateLimitConfig a section makes once its keys have parsed
(proxyd.config.cross_checks). The rate and burst parsers are proxyd.ratelimit.rates'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs

from proxyd.config import tls
from proxyd.config import values as v
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.http_values import status
from proxyd.config.ini import Section
from proxyd.config.keys import Context, Key, reference
from proxyd.config.ratelimit_model import KEY_SOURCES, KeyPart, RateLimitConfig, RedisStore
from proxyd.config.security import Problems
from proxyd.config.security_model import OFF, Off
from proxyd.ratelimit import rates

MAX_DB: Final = 1_000_000
"""Of a Redis store's database number (Redis's `databases`, 16 by default)."""
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


_STORE_EXPECTED: Final = (
    "'local' or a URL redis://[USER:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"
)


def store(text: str) -> RedisStore | None:
    """`local` (None), or `redis://...` / `rediss://...` (a RedisStore)."""
    word = text.strip()
    if word == "local":
        return None
    try:
        url = urlsplit(word)
        port = url.port
    except ValueError as e:
        if "port" in str(e).lower():
            raise Invalid("a port from 1 to 65535", repr(_redacted(word))) from None
        raise Invalid(_STORE_EXPECTED, f"{_redacted(word)!r} ({e})") from None
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise Invalid(_STORE_EXPECTED, repr(_redacted(word)))
    if port == 0:
        raise Invalid("a port from 1 to 65535", f"0 in {_redacted(word)!r}")
    if url.query or url.fragment:
        raise Invalid("no query nor fragment in the URL", repr(_redacted(word)))
    path = url.path.lstrip("/")
    if path and not (path.isdigit() and int(path) <= MAX_DB):
        raise Invalid(f"a database number from 0 to {MAX_DB} after the '/'", repr(path))
    return RedisStore(
        host=url.hostname,
        port=6379 if port is None else port,
        db=int(path) if path else 0,
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password is not None else None,
        tls=url.scheme == "rediss",
    )


def _redacted(text: str) -> str:
    """A store URL as it may be shown: without what comes before an '@'."""
    scheme, sep, rest = text.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return text
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _store_ca(text: str, ctx: Context) -> str:
    return tls.ca_file(text, ctx.base_dir)


KEYS: Mapping[str, Key] = {
    "rate": Key(rates.rate, required=True),
    "burst": Key(rates.burst),
    "key": Key(key),
    "dry_run": Key(v.boolean),
    "max_keys": Key(v.integer(1, MAX_KEYS)),
    "status": Key(status(400, 599, "a status")),
    "store": Key(store),
    "store_timeout": Key(v.positive_duration),
    "on_store_error": Key(v.choice("allow", "deny")),
    "local_allowance": Key(v.integer(0, rates.MAX_COUNT)),
    "store_ca": Key(_store_ca, context=True),
}
"""[ratelimit NAME]'s keys."""


def ratelimit_section(section: Section, fields: dict[str, Any]) -> Problems:
    """The burst defaults to the rate's count (proxyd.ratelimit.rates). The store's keys need
    a Redis store, `store_ca` one over TLS; a local allowance is at most the burst."""
    fields.setdefault("burst", rates.default_burst(fields["rate"]))
    problems: Problems = []
    redis = fields.get("store")
    if redis is None:
        for name in ("store_timeout", "on_store_error", "local_allowance", "store_ca"):
            if name in fields:
                problems.append((name, Invalid("store = redis://...", "no Redis store")))
                fields.pop(name)
    ca = fields.pop("store_ca", None)
    if ca is not None and redis is not None:
        if not redis.tls:
            problems.append(("store_ca", Invalid("store = rediss://... (TLS)", "redis://")))
        else:
            fields["store"] = attrs.evolve(redis, ca=ca)
    allowance = fields.get("local_allowance", 0)
    if allowance > fields["burst"]:
        problems.append(
            (
                "local_allowance",
                Invalid(f"at most the burst ({fields['burst']})", str(allowance)),
            )
        )
    return problems


__all__ = ["KEYS", "RateLimitConfig", "key", "ratelimit_section", "ratelimits"]
