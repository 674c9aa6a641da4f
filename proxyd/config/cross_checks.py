"""The checks of a section that span several of its keys, per section kind, and the parts of
its object built from grouped keys (a listener's or a pool's `tls`). They run once every key
has parsed on its own (proxyd.config.schema)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from proxyd.config import routes, security, tier, tls
from proxyd.config import values as v
from proxyd.config.acme_section import acme_section
from proxyd.config.auth_section import auth_section
from proxyd.config.cache_section import cache_section, with_ca
from proxyd.config.check_model import GrpcCheck, HttpCheck, TlsCheck, WebSocketCheck
from proxyd.config.compress import compress_group
from proxyd.config.discovery import discovery_group
from proxyd.config.errors import ConfigError, Invalid, one_of
from proxyd.config.gslb_section import gslb_section
from proxyd.config.ini import Section
from proxyd.config.otlp import otlp_group
from proxyd.config.ratelimit_section import ratelimit_section
from proxyd.config.route_model import RouteConfig, RouteSecurity
from proxyd.config.schema import TLS_SERVER_KEYS, WEBSOCKET_MESSAGE_KEYS
from proxyd.config.security_model import OFF
from proxyd.config.stick import stick_group
from proxyd.config.tls_model import TlsClientConfig, TlsServerConfig


def route_section_errors(section: Section, path: str) -> list[ConfigError]:
    """A [route] has exactly one action key, and options only of that action."""
    actions = [key for key in routes.ROUTE_ACTION_KEYS if key in section.entries]
    expected = f"exactly one of {one_of(routes.ROUTE_ACTION_KEYS)}"
    if not actions:
        return [ConfigError(path, section.line, section.title, None, expected, "none")]
    if len(actions) > 1:
        entry = section.entries[actions[1]]
        found = " and ".join(f"'{key}'" for key in actions)
        return [ConfigError(path, entry.line, section.title, actions[1], expected, found)]
    problems = []
    for key, needs in routes.ROUTE_OPTION_KEYS.items():
        if key in section.entries and needs != actions[0]:
            problems.append(
                ConfigError(
                    path,
                    section.entries[key].line,
                    section.title,
                    key,
                    f"'{key}' only in a [route] with '{needs}'",
                    f"a [route] with '{actions[0]}'",
                )
            )
    return problems


_Problems = list[tuple[str | None, Invalid | v.Invalids]]
"""(key, what is wrong): problems found across a section's keys."""


def _no_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    return []


def _tls_server(section: Section, values: dict[str, Any]) -> tuple[Any, _Problems]:
    """A TlsServerConfig from the `certificates` and `tls_*` keys, the certificates read."""
    sources = values.pop("certificates", ())
    refuse = values.get("expired_certificates") == "refuse"
    try:
        loaded = tls.load_all(sources, refuse_expired=refuse)
    except (Invalid, v.Invalids) as e:
        return None, [("certificates", e)]
    config = TlsServerConfig(sources, loaded, **values)
    problems: _Problems = []
    if config.verify_client != "off" and config.client_ca is None:
        problems.append(
            (
                "tls_verify_client",
                Invalid(
                    "tls_client_ca, the CA bundle client certificates are verified against",
                    f"tls_verify_client = {config.verify_client} without it",
                ),
            )
        )
    return config, problems


def _https_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    if not _terminates(section):
        return [("certificates", Invalid("a 'certificates' or an 'acme' key", "none"))]
    fields["tls"], problems = _tls_server(section, values)
    return problems


def _terminates(section: Section) -> bool:
    """TLS is terminated: the section has certificates of its own or from an [acme]."""
    return "certificates" in section.entries or "acme" in section.entries


def _tcp_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    problems: _Problems = []
    sni = fields.get("route_by") == "sni"
    if _terminates(section):
        if sni:
            problems.append(
                (
                    "route_by",
                    Invalid(
                        "route_by = sni (passthrough) or certificates (termination), not both",
                        "both",
                    ),
                )
            )
        fields["tls"], more = _tls_server(section, values)
        problems += more
    else:
        for key in section.entries:
            if key in TLS_SERVER_KEYS or key == "tls_alpn":
                problems.append(
                    (
                        key,
                        Invalid(
                            f"'{key}' only with certificates or acme (TLS termination)", "none"
                        ),
                    )
                )
    if "routes" in fields and not sni:
        problems.append(("routes", Invalid("routes only with route_by = sni", "no route_by")))
    if sni and "routes" not in fields:
        problems.append(("routes", Invalid("a 'routes' key with route_by = sni", "none")))
    if not sni and "pool" not in fields:
        problems.append(("pool", Invalid("a 'pool' key", "none")))
    fields.setdefault("pool", None)
    return problems


def _websocket_groups(
    section: Section, fields: dict[str, Any], values: dict[str, Any]
) -> _Problems:
    problems: _Problems = []
    if fields.get("mode") == "passthrough":
        for key in WEBSOCKET_MESSAGE_KEYS:
            if key in section.entries:
                problems.append(
                    (key, Invalid(f"'{key}' only with mode = message", "mode = passthrough"))
                )
    if _terminates(section):
        fields["tls"], more = _tls_server(section, values)
        problems += more
    else:
        for key in section.entries:
            if key in TLS_SERVER_KEYS:
                problems.append(
                    (key, Invalid(f"'{key}' only with certificates (TLS termination)", "none"))
                )
    return problems


def _pool_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    client = fields["tls"] = TlsClientConfig(**values)
    problems: _Problems = []
    protocol = fields.get("protocol", "http1")
    if protocol == "h2" and not client.enabled:
        problems.append(("protocol", Invalid("'tls = on' with protocol = h2", "no tls")))
    elif protocol == "h2c" and client.enabled:
        why = "protocol = h2 over TLS (h2c is HTTP/2 in cleartext)"
        problems.append(("protocol", Invalid(why, "h2c with tls = on")))
    if "h2_connections" in fields and protocol == "http1":
        why = "h2_connections only with protocol = h2 or h2c"
        problems.append(("h2_connections", Invalid(why, "protocol = http1")))
    problems += tier.pool_tier_problems(section.name or "", fields)
    check = fields.get("check")
    if isinstance(check, TlsCheck) or (
        isinstance(check, WebSocketCheck | GrpcCheck) and client.enabled
    ):
        fields["check"] = attrs.evolve(check, tls=client)
    elif isinstance(check, HttpCheck) and client.enabled:
        fields["check"] = TlsCheck(client, check)
    return problems


def _admin_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    """A token is required where others than this machine can reach the admin listener;
    `cluster_name` names a `cluster`."""
    fields["cluster"], ca_problems = with_ca(
        fields.get("cluster"), fields.pop("cluster_ca", None), "cluster", "cluster_ca"
    )
    if ca_problems:
        return [*ca_problems]
    if "cluster_name" in fields and fields.get("cluster") is None:
        fields.pop("cluster_name")
        return [("cluster_name", Invalid("cluster = redis://...", "no cluster"))]
    if fields.get("read_token") is not None and fields.get("token") is None:
        return [
            (
                "read_token",
                Invalid(
                    "a 'token' too: without one every request may change everything",
                    "a read_token alone",
                ),
            )
        ]
    if fields.get("read_token") is not None and fields.get("read_token") == fields.get("token"):
        return [("read_token", Invalid("a token other than 'token'", "the same token"))]
    if fields.get("token") is None and not v.is_local_endpoint(fields["listen"]):
        return [
            (
                "token",
                Invalid(
                    "a 'token' when 'listen' is not a loopback address or a unix: socket",
                    "none",
                ),
            )
        ]
    return []


_GROUPS: Mapping[str, Callable[[Section, dict[str, Any], dict[str, Any]], _Problems]] = {
    "admin": _admin_groups,
    "https": _https_groups,
    "tcp": _tcp_groups,
    "pool": _pool_groups,
    "websocket": _websocket_groups,
}
"""Per section kind: builds the parts of its object from grouped keys and checks what
spans several keys."""


def _http_security(
    section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> _Problems:
    """[http] and [https]: the security_headers preset; `auth = off` and `cors = off` are
    none; a route's limits no larger than the listener's, which are checked first; the
    `otlp_*` keys (proxyd.config.otlp)."""
    problems: _Problems = [*otlp_group(section, fields, groups.get("otlp", {}))]
    problems += security.security_headers_group(section, fields)
    for key in ("auth", "cors", "cache"):
        if fields.get(key) == OFF:
            fields[key] = None
    if fields.get("ratelimits") == OFF:
        fields["ratelimits"] = ()
    for route in fields.get("routes", ()):
        problems += _route_limits(fields, route)
    if "cdn_loop_max" in fields and fields.get("cdn_loop") is None:
        problems.append(("cdn_loop_max", Invalid("cdn_loop with cdn_loop_max", "no cdn_loop")))
    return problems


def _route_limits(fields: dict[str, Any], route: RouteConfig) -> _Problems:
    """The listener reads every request within its max_body_size and max_uri_length before
    it is routed: a route may only lower them."""
    problems: _Problems = []
    for key, default in (("max_body_size", 0), ("max_uri_length", 8192)):
        mine = getattr(route.security, key)
        listener = fields.get(key, default)
        if mine is not None and listener and (mine > listener or mine == 0):
            problems.append(
                (
                    "routes",
                    Invalid(
                        f"routes whose {key} is at most the listener's ({listener} bytes: the"
                        " listener reads every request within it before routing)",
                        f"{route.name!r} with {key} = {mine or 'unlimited'}",
                        value_line=route.line,
                    ),
                )
            )
    return problems


def _route_security(
    section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> _Problems:
    values = groups.get("security", {})
    problems = security.security_headers_group(section, values)
    fields["security"] = RouteSecurity(**values)
    return problems


def _rule(section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]) -> _Problems:
    return security.rule_section(section, fields)


def _cors(section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]) -> _Problems:
    return security.cors_section(section, fields)


def _auth(section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]) -> _Problems:
    return auth_section(section, fields)


def _ratelimit(
    section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> _Problems:
    return ratelimit_section(section, fields)


def _cache(
    section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> _Problems:
    return cache_section(section, fields)


def _acme(section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]) -> _Problems:
    return acme_section(section, fields)


def _gslb(section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]) -> _Problems:
    return gslb_section(section, fields)


_SECTIONS: Mapping[
    str, Callable[[Section, dict[str, Any], dict[str, dict[str, Any]]], _Problems]
] = {
    "http": _http_security,
    "https": _http_security,
    "route": _route_security,
    "rule": _rule,
    "cors": _cors,
    "auth": _auth,
    "ratelimit": _ratelimit,
    "cache": _cache,
    "acme": _acme,
    "gslb": _gslb,
}
"""Per section kind: the checks across its keys (after _GROUPS)."""


def cross_check(
    section: Section, fields: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> _Problems:
    """The problems across `section`'s keys, its own `fields` parsed and its grouped values
    by group (the `tls_*` keys under "tls", a route's security keys under "security", the
    compression keys under "compress");
    completes `fields` with the parts built from them."""
    problems = _GROUPS.get(section.kind, _no_groups)(section, fields, groups.get("tls", {}))
    if section.kind == "pool":
        problems += discovery_group(section, fields, groups.get("discovery", {}))
        problems += stick_group(section, fields, groups.get("stick", {}))
    if section.kind in ("http", "https", "route"):
        compress_group(section, fields, groups.get("compress", {}))
    more = _SECTIONS.get(section.kind)
    if more is not None and not problems:
        problems += more(section, fields, groups)
    return problems
