"""The schema of the security keys and sections (docs/security.md): the keys of access
control, request filtering, auth, CORS and response hardening on [http], [https] and [route]
sections, the access keys of L4 listeners, and the [rule], [cors] and [auth] sections. Their
parsers are in proxyd.config.security and proxyd.config.auth_section; those that need the
Context are here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from proxyd.access.networks import AccessList
from proxyd.config import auth_section, cache_section, ratelimit_section, security
from proxyd.config import values as v
from proxyd.config.auth_model import AUTH_TYPES, AuthConfig
from proxyd.config.cache_model import CacheConfig
from proxyd.config.errors import Invalid
from proxyd.config.keys import Context, Key, reference
from proxyd.config.ratelimit_model import RateLimitConfig
from proxyd.config.security_model import (
    OFF,
    RULE_MODES,
    CorsConfig,
    Off,
    RuleConfig,
)


def _named(kind: str, name: str, ctx: Context) -> Any:
    """The [kind NAME] section's object; None when it has errors (reported there)."""
    reference(kind, name, ctx.section_names.get(kind, frozenset()))
    return ctx.sections.get(kind, {}).get(name)


def _rules(text: str, ctx: Context) -> tuple[RuleConfig, ...]:
    """`rules`: names of [rule] sections, in the order they are checked."""
    result: list[RuleConfig] = []
    errors: list[Invalid] = []
    seen: set[str] = set()
    for index, line in v.each_line(text):
        for name in line.split():
            try:
                rule = _named("rule", name, ctx)
                if name in seen:
                    raise Invalid("each rule once", f"{name!r} twice")
            except Invalid as e:
                v.collect(errors, index, e)
                continue
            seen.add(name)
            if rule is not None:
                result.append(rule)
    v.raise_all(errors)
    if not seen:
        raise Invalid("names of [rule] sections", "nothing")
    return tuple(result)


def _auth(text: str, ctx: Context) -> AuthConfig | Off | None:
    """`auth = NAME` (an [auth NAME]) or `off`."""
    name = text.strip()
    if name == OFF:
        return OFF
    found: AuthConfig | None = _named("auth", name, ctx)
    return found


def _cors(text: str, ctx: Context) -> CorsConfig | Off | None:
    """`cors = NAME` (a [cors NAME]) or `off`."""
    name = text.strip()
    if name == OFF:
        return OFF
    found: CorsConfig | None = _named("cors", name, ctx)
    return found


def _access(text: str, ctx: Context) -> AccessList:
    return security.access_list(text, ctx.base_dir)


def _file(text: str, ctx: Context) -> str:
    return security.file_path(text, ctx.base_dir)


def _files(text: str, ctx: Context) -> tuple[str, ...]:
    """File paths separated by spaces or lines."""
    words = v.words(text, "file paths")
    if not words:
        raise Invalid("one or more file paths", "nothing")
    return tuple(security.file_path(word, ctx.base_dir) for word in words)


HTTP_SECURITY_KEYS: Mapping[str, Key] = {
    "access": Key(_access, context=True),
    "allowed_methods": Key(security.allowed_methods),
    "max_query_length": Key(v.size(0, 1 << 20)),
    "rules": Key(_rules, context=True),
    "auth": Key(_auth, context=True),
    "cors": Key(_cors, context=True),
    "ratelimits": Key(ratelimit_section.ratelimits, context=True),
    "cache": Key(cache_section.cache, context=True),
    "hide_headers": Key(security.header_names),
    "pass_headers": Key(security.header_names),
    "server_header": Key(security.server_header),
    "intercept_errors": Key(security.intercept_errors),
    "security_headers": Key(v.boolean),
    "frame_options": Key(security.frame_options),
    "referrer_policy": Key(security.referrer_policy),
    "content_security_policy": Key(security.content_security_policy),
    "frame_ancestors": Key(security.frame_ancestors),
    "security_headers_override": Key(v.boolean),
}
"""Access control, request filtering, auth, CORS and response hardening, on [http], [https]
and [route] sections (docs/security.md)."""

ROUTE_SECURITY_KEYS: Mapping[str, Key] = {
    key: attrs.evolve(spec, group="security")
    for key, spec in {
        **HTTP_SECURITY_KEYS,
        "max_body_size": Key(v.size(0, 1 << 40)),
        "max_uri_length": Key(v.size(256, 1 << 20)),
    }.items()
}
"""A [route]'s: they make its RouteSecurity (proxyd.config.cross_checks)."""

L4_ACCESS_KEYS: Mapping[str, Key] = {"access": Key(_access, context=True)}
L4_CLIENT_KEYS: Mapping[str, Key] = {
    "max_connections_per_client": Key(v.integer(1)),
    "max_connection_rate_per_client": Key(security.rate),
}
"""[tcp] and [websocket]: per-client limits (proxyd.access.client_limits)."""

SECURITY_SCHEMAS: Mapping[str, tuple[type, bool, Mapping[str, Key]]] = {
    "rule": (
        RuleConfig,
        True,
        {
            "match": Key(security.rule_match, required=True),
            "pattern": Key(security.pattern, required=True),
            "mode": Key(v.choice(*RULE_MODES)),
            "status": Key(v.status(400, 499, "a status")),
        },
    ),
    "cors": (
        CorsConfig,
        True,
        {
            "origins": Key(security.origin_patterns, required=True),
            "methods": Key(security.words_list),
            "headers": Key(security.words_list),
            "expose_headers": Key(security.words_list),
            "credentials": Key(v.boolean),
            "max_age": Key(security.cors_max_age),
        },
    ),
    "auth": (
        AuthConfig,
        True,
        {
            "type": Key(v.choice(*AUTH_TYPES), required=True),
            "realm": Key(auth_section.realm),
            "users": Key(_file, context=True),
            "cache_time": Key(v.duration),
            "max_pending": Key(v.integer(1, 100000)),
            "user_header": Key(auth_section.header_or_off),
            "keys": Key(_files, context=True),
            "header": Key(auth_section.header_or_off),
            "query_param": Key(auth_section.query_param),
            "name_header": Key(auth_section.header_or_off),
            "algorithms": Key(auth_section.algorithms),
            "jwks": Key(auth_section.url),
            "issuer": Key(auth_section.text_value),
            "audience": Key(auth_section.text_value),
            "leeway": Key(v.duration),
            "claims": Key(auth_section.claims),
            "identity_claim": Key(auth_section.text_value),
            "jwks_refresh": Key(v.positive_duration),
            "jwks_min_refresh": Key(v.positive_duration),
            "url": Key(auth_section.url),
            "timeout": Key(v.positive_duration),
            "request_headers": Key(auth_section.names),
            "copy_headers": Key(auth_section.names),
            "cache_key": Key(auth_section.names),
        },
    ),
    "ratelimit": (RateLimitConfig, True, ratelimit_section.KEYS),
    "cache": (CacheConfig, True, cache_section.KEYS),
}
"""[rule NAME], [cors NAME], [auth NAME], [ratelimit NAME], [cache NAME]: (model class,
takes a NAME, keys)."""
