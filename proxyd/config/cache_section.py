"""`[cache NAME]` sections and the `cache` key of listeners and routes (docs/cache.md): their
parsers, and the CacheConfig a section makes once its keys have parsed
(proxyd.config.cross_checks)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import attrs

from proxyd.cache.keys import Condition, KeyRule
from proxyd.config import tls
from proxyd.config import values as v
from proxyd.config.cache_model import USE_STALE, CacheConfig
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.ini import Section
from proxyd.config.keys import Context, Key, reference
from proxyd.config.ratelimit_model import RedisStore
from proxyd.config.ratelimit_section import store as redis_store
from proxyd.config.security import Problems
from proxyd.config.security_model import OFF, Off

MAX_SIZE: Final = 1 << 50
"""Of the tiers' sizes: a petabyte."""
_KINDS: Final = ("cookie", "header", "query")


def cache(text: str, ctx: Context) -> CacheConfig | Off:
    """`cache = NAME`: a [cache] section; `off` (on a route: not the listener's)."""
    name = text.strip()
    if name == OFF:
        return OFF
    reference("cache", name, ctx.section_names.get("cache", frozenset()))
    found: CacheConfig | None = ctx.sections.get("cache", {}).get(name)
    # A [cache] with errors has them reported there (and the file is refused).
    return OFF if found is None else found


def path(text: str, ctx: Context) -> str:
    value = text.strip()
    if not value:
        raise Invalid("a directory", "nothing")
    return os.path.join(ctx.base_dir, value)


def conditions(text: str) -> tuple[Condition, ...]:
    """`cookie:NAME header:NAME query:NAME`, separated by spaces or lines."""
    found: list[Condition] = []
    for word in v.words(text, "conditions"):
        kind, colon, name = word.partition(":")
        if not colon or kind not in _KINDS or not name:
            raise Invalid(
                f"conditions {one_of(_KINDS)}:NAME, such as 'cookie:session'",
                repr(word),
                did_you_mean(kind, _KINDS) if colon else None,
            )
        if kind == "header":
            name = v.header_name(name).lower()
        found.append(Condition(kind, name))
    if not found:
        raise Invalid("one or more conditions such as 'cookie:session'", "nothing")
    return tuple(found)


def use_stale(text: str) -> frozenset[str]:
    words = v.words(text, "words")
    for word in words:
        if word not in USE_STALE and word != OFF:
            raise Invalid(
                f"words among {one_of(USE_STALE)}, or 'off'",
                repr(word),
                did_you_mean(word, USE_STALE),
            )
    return frozenset(word for word in words if word != OFF)


def params(text: str) -> frozenset[str]:
    return frozenset(v.words(text, "query parameter names"))


def header_names(text: str) -> tuple[bytes, ...]:
    return tuple(
        v.header_name(word).lower().encode("ascii") for word in v.words(text, "field names")
    )


def status_name(text: str) -> str:
    name = text.strip()
    if not name or any(not 0x21 <= ord(char) <= 0x7E for char in name):
        raise Invalid("a name of printable ASCII without spaces", repr(name))
    return name


def cluster(text: str) -> RedisStore | None:
    """`off` (None), or `redis://[USER:PASSWORD@]HOST[:PORT][/DB]` (`rediss://`: TLS)."""
    if text.strip() == OFF:
        return None
    if text.strip() == "local":
        raise Invalid("'off' or a URL redis://[USER:PASSWORD@]HOST[:PORT][/DB]", "'local'")
    return redis_store(text)


def redis_ca(text: str, ctx: Context) -> str:
    """`cluster_ca`, `stick_ca`: the PEM file of the CAs a rediss:// server is checked
    against (relative to the config file)."""
    return tls.ca_file(text, ctx.base_dir)


def with_ca(
    store: RedisStore | None, ca: str | None, url_key: str, ca_key: str
) -> tuple[RedisStore | None, list[tuple[str | None, Invalid]]]:
    """`store` with the CA file `ca` of its `ca_key`, which needs a rediss:// `url_key`."""
    if ca is None:
        return store, []
    if store is None:
        return store, [(ca_key, Invalid(f"{url_key} = rediss://... (TLS)", f"no {url_key}"))]
    if not store.tls:
        return store, [(ca_key, Invalid(f"{url_key} = rediss://... (TLS)", "redis://"))]
    return attrs.evolve(store, ca=ca), []


def cluster_name(text: str) -> str:
    name = text.strip()
    if not name or any(not 0x21 <= ord(char) <= 0x7E for char in name):
        raise Invalid("a name of printable ASCII without spaces", repr(name))
    return name


KEYS: Mapping[str, Key] = {
    "memory_size": Key(v.size(0, MAX_SIZE)),
    "memory_object_size": Key(v.size(1, MAX_SIZE)),
    "path": Key(path, context=True),
    "disk_size": Key(v.size(1 << 20, MAX_SIZE)),
    "max_object_size": Key(v.size(1, MAX_SIZE)),
    "lock_timeout": Key(v.duration),
    "use_stale": Key(use_stale),
    "key_ignore_params": Key(params),
    "key_sort_params": Key(v.boolean),
    "key_headers": Key(header_names),
    "bypass": Key(conditions),
    "no_store": Key(conditions),
    "tag_headers": Key(header_names),
    "strip_tag_headers": Key(v.boolean),
    "purge_method": Key(v.boolean),
    "status_name": Key(status_name),
    "heuristic": Key(v.boolean),
    "store_set_cookie": Key(v.boolean),
    "cluster": Key(cluster),
    "cluster_name": Key(cluster_name),
    "cluster_log": Key(v.integer(10, 10_000_000)),
    "cluster_ca": Key(redis_ca, context=True),
}
"""[cache NAME]'s keys."""


def cache_section(section: Section, fields: dict[str, Any]) -> Problems:
    """The key_* settings make the cache key's rule; a memory-only cache needs memory."""
    fields["key"] = KeyRule(
        ignore_params=fields.pop("key_ignore_params", frozenset()),
        sort_params=fields.pop("key_sort_params", False),
        headers=fields.pop("key_headers", ()),
    )
    problems: Problems = []
    fields["cluster"], found = with_ca(
        fields.get("cluster"), fields.pop("cluster_ca", None), "cluster", "cluster_ca"
    )
    problems += found
    if fields.get("cluster") is None:
        for name in ("cluster_name", "cluster_log"):
            if name in fields:
                problems.append((name, Invalid("cluster = redis://...", "no cluster")))
                fields.pop(name)
    if "path" not in fields and fields.get("memory_size", 1) == 0:
        problems.append(("memory_size", Invalid("above 0 without a disk tier (path)", "0")))
    if "path" not in fields and "disk_size" in fields:
        problems.append(("disk_size", Invalid("a disk tier (path = DIRECTORY)", "no path")))
        fields.pop("disk_size")
    return problems


__all__ = ["KEYS", "CacheConfig", "cache", "cache_section"]
