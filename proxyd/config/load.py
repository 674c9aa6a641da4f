"""INI file → validated Config tree, reporting every error in the file at once."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from proxyd.config import routes, tls
from proxyd.config import values as v
from proxyd.config.errors import ConfigError, ConfigErrors, Invalid, did_you_mean, one_of
from proxyd.config.ini import Entry, Section, parse_ini
from proxyd.config.model import (
    BALANCE_ALGORITHMS,
    ESCAPED_SLASHES,
    AdminConfig,
    Certificate,
    CertificateSource,
    Config,
    FilterConfig,
    GlobalConfig,
    HttpCheck,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RouteConfig,
    SniRoute,
    TcpListenerConfig,
    TlsCheck,
    TlsClientConfig,
    TlsServerConfig,
    UdpListenerConfig,
    WebSocketCheck,
    WebSocketListenerConfig,
)
from proxyd.config.routes import RouteSection
from proxyd.filters.loader import load_filter


@attrs.frozen
class Context:
    """What a parser may need beyond its text: where the file is, what else it defines."""

    base_dir: str
    """The config file's directory: relative file paths in values are relative to it."""
    pools: frozenset[str]
    """Every [pool] section's name, valid or not (a bad pool is reported once, as itself)."""
    route_names: frozenset[str]
    """Every [route] section's name, valid or not."""
    routes: dict[str, RouteSection] = attrs.field(factory=dict)
    """The valid [route] sections, built before the [http] sections that refer to them."""
    filter_names: frozenset[str] = frozenset()
    """Every [filter] section's name, valid or not."""
    filters: dict[str, FilterConfig] = attrs.field(factory=dict)
    """The valid [filter] sections, built before the sections that list them."""


@attrs.frozen
class Key:
    parse: Callable[..., Any]
    required: bool = False
    context: bool = False
    """parse takes (text, Context)."""
    group: str | None = None
    """The value belongs to a part of the section's object (`tls`): see _GROUPS."""
    field: str | None = None
    """Its name in that part (default: the key)."""


def _reference(kind: str, name: str, names: frozenset[str]) -> str:
    if name not in names:
        raise Invalid(
            f"the name of a [{kind}] ({one_of(sorted(names)) or 'none defined'})",
            repr(name),
            did_you_mean(name, names),
        )
    return name


def _pool_name(text: str, ctx: Context) -> str:
    return _reference("pool", text.strip(), ctx.pools)


def _routes(text: str, ctx: Context) -> tuple[RouteConfig, ...]:
    """The `routes` value, one route a line, with its references checked. Each route's `line`
    is its index in the value here; loads() makes it the file line."""
    result: list[RouteConfig] = []
    errors: list[Invalid] = []
    for index, text_line in v.each_line(text):
        try:
            line = routes.route_line(text_line)
            if isinstance(line.action, ProxyAction):
                _reference("pool", line.action.pool, ctx.pools)
            if line.ref is None:
                result.append(line.route(index))
                continue
            _reference("route", line.ref, ctx.route_names)
            section = ctx.routes.get(line.ref)
            if section is not None:  # else the [route] has errors, reported there
                result.append(line.route(index, section))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not text.strip():
        raise Invalid("at least one route, one a line", "none")
    return tuple(result)


def _filters(text: str, ctx: Context) -> tuple[FilterConfig, ...]:
    """`filters`: names of [filter] sections, in the order the requests meet them."""
    result: list[FilterConfig] = []
    errors: list[Invalid] = []
    seen: set[str] = set()
    for name in text.split():
        try:
            _reference("filter", name, ctx.filter_names)
            if name in seen:
                raise Invalid("each filter once", f"{name!r} twice")
        except Invalid as e:
            v.collect(errors, 0, e)
            continue
        seen.add(name)
        if name in ctx.filters:  # else the [filter] has errors, reported there
            result.append(ctx.filters[name])
    v.raise_all(errors)
    return tuple(result)


def _error_pages(text: str, ctx: Context) -> tuple[tuple[int, str], ...]:
    return v.error_pages(text, ctx.base_dir)


def _certificates(text: str, ctx: Context) -> tuple[CertificateSource, ...]:
    return tls.sources(text, ctx.base_dir)


def _ca_file(text: str, ctx: Context) -> str:
    return tls.ca_file(text, ctx.base_dir)


def _client_certificate(text: str, ctx: Context) -> Certificate:
    return tls.client_certificate(text, ctx.base_dir)


def _sni_routes(text: str, ctx: Context) -> tuple[SniRoute, ...]:
    """`routes` of a [tcp] with route_by = sni: lines of `NAME -> pool POOL`."""
    result: list[SniRoute] = []
    errors: list[Invalid] = []
    seen: set[str] = set()
    expected = "NAME -> pool POOL, NAME a server name or *.domain"
    for index, line in v.each_line(text):
        try:
            parts = v.words(line, "an SNI route")
            if not parts:
                continue
            if len(parts) != 4 or parts[1] != "->" or parts[2] != "pool":
                raise Invalid(expected, repr(line))
            name = parts[0].lower().rstrip(".")
            bare = name[2:] if name.startswith("*.") else name
            if not v.is_hostname(bare) or "*" in bare:
                raise Invalid(expected, repr(parts[0]))
            if name in seen:
                raise Invalid("each name once", f"{name!r} twice")
            seen.add(name)
            result.append(SniRoute(name, _reference("pool", parts[3], ctx.pools)))
        except Invalid as e:
            v.collect(errors, index, e)
    v.raise_all(errors)
    if not result:
        raise Invalid(expected + ", one a line", "nothing")
    return tuple(result)


def _tls(field: str, parse: Callable[..., Any], context: bool = False) -> Key:
    return Key(parse, context=context, group="tls", field=field)


_TLS_SERVER_KEYS: Mapping[str, Key] = {
    "certificates": _tls("certificates", _certificates, context=True),
    "tls_protocols": _tls("protocols", tls.protocols),
    "tls_ciphers": _tls("ciphers", tls.ciphers),
    "tls_ciphersuites": _tls("ciphersuites", tls.ciphersuites),
    "tls_prefer_server_ciphers": _tls("prefer_server_ciphers", v.boolean),
    "tls_session_tickets": _tls("session_tickets", v.boolean),
    "tls_session_cache": _tls("session_cache", v.boolean),
    "tls_session_timeout": _tls("session_timeout", v.positive_duration),
    "tls_verify_client": _tls("verify_client", v.choice("off", "optional", "required")),
    "tls_client_ca": _tls("client_ca", _ca_file, context=True),
    "expired_certificates": _tls("expired_certificates", v.choice("warn", "refuse")),
}
"""Keys of TLS termination, on [https] and [tcp] sections."""

_TLS_CLIENT_KEYS: Mapping[str, Key] = {
    "tls": _tls("enabled", v.boolean),
    "tls_ca": _tls("ca", _ca_file, context=True),
    "tls_verify": _tls("verify", v.boolean),
    "tls_server_name": _tls("server_name", tls.server_name),
    "tls_certificate": _tls("certificate", _client_certificate, context=True),
}
"""A pool's keys for TLS to its servers."""


_HTTP_KEYS: Mapping[str, Key] = {
    "listen": Key(v.endpoint, required=True),
    "routes": Key(_routes, required=True, context=True),
    "trusted_proxies": Key(v.networks),
    "request_headers": Key(routes.header_rules),
    "response_headers": Key(routes.header_rules),
    "filters": Key(_filters, context=True),
    "via": Key(v.boolean),
    "max_header_size": Key(v.size(1024, 1 << 20)),
    "max_headers": Key(v.integer(1, 10000)),
    "max_uri_length": Key(v.size(256, 1 << 20)),
    "max_body_size": Key(v.size(0, 1 << 40)),
    "header_timeout": Key(v.positive_duration),
    "body_timeout": Key(v.positive_duration),
    "keepalive_timeout": Key(v.positive_duration),
    "connect_timeout": Key(v.positive_duration),
    "response_timeout": Key(v.positive_duration),
    "idle_timeout": Key(v.positive_duration),
    "retries": Key(v.integer(0, 100)),
    "error_pages": Key(_error_pages, context=True),
    "access_log": Key(v.log_target),
    "tunnel_timeout": Key(v.positive_duration),
    "max_tunnels": Key(v.integer(0)),
    "escaped_slashes": Key(v.choice(*ESCAPED_SLASHES)),
}
"""Keys shared by [http] and [https]."""

_WEBSOCKET_MESSAGE_KEYS = (
    "max_message_size",
    "max_frame_size",
    "max_messages_per_second",
    "ping_interval",
    "ping_timeout",
    "permessage_deflate",
)
"""[websocket] keys that only mode = message acts on."""

# One schema per section kind: key -> parser. Defaults live on the model classes.
SCHEMAS: Mapping[str, tuple[type, bool, Mapping[str, Key]]] = {
    # kind: (model class, takes a NAME, keys)
    "proxyd": (
        GlobalConfig,
        False,
        {
            "access_log": Key(v.log_target),
            "workers": Key(v.workers),
            "drain_timeout": Key(v.duration),
        },
    ),
    "admin": (
        AdminConfig,
        False,
        {
            "listen": Key(v.endpoint, required=True),
            "token": Key(v.bearer_token),
            "read_token": Key(v.bearer_token),
        },
    ),
    "pool": (
        PoolConfig,
        True,
        {
            "servers": Key(v.servers, required=True),
            "balance": Key(v.choice(*BALANCE_ALGORITHMS)),
            "hash_key": Key(v.choice("client_ip")),
            "check": Key(v.check),
            "check_interval": Key(v.positive_duration),
            "check_timeout": Key(v.positive_duration),
            "rise": Key(v.integer(1, 100)),
            "fall": Key(v.integer(1, 100)),
            "max_fails": Key(v.integer(0)),
            "eject_time": Key(v.positive_duration),
            "eject_time_max": Key(v.positive_duration),
            "keepalive": Key(v.integer(0)),
            "keepalive_timeout": Key(v.positive_duration),
            "sticky_cookie": Key(v.cookie_name),
            **_TLS_CLIENT_KEYS,
        },
    ),
    "tcp": (
        TcpListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(_pool_name, context=True),
            "connect_timeout": Key(v.positive_duration),
            "idle_timeout": Key(v.positive_duration),
            "retries": Key(v.integer(0, 100)),
            "max_connections": Key(v.integer(0)),
            "on_max_connections": Key(v.choice("queue", "close")),
            "send_proxy": Key(v.choice("off", "v1", "v2")),
            "accept_proxy": Key(v.boolean),
            "access_log": Key(v.log_target),
            "buffer_size": Key(v.size(1024, 16 << 20)),
            "tcp_nodelay": Key(v.boolean),
            "route_by": Key(v.choice("sni")),
            "routes": Key(_sni_routes, context=True),
            "handshake_timeout": Key(v.positive_duration),
            **_TLS_SERVER_KEYS,
            "tls_alpn": _tls("alpn", tls.alpn),
        },
    ),
    "udp": (
        UdpListenerConfig,
        True,
        {
            "listen": Key(v.udp_endpoint, required=True),
            "pool": Key(_pool_name, required=True, context=True),
            "protocol": Key(v.choice("raw", "dns", "sip")),
            "query_timeout": Key(v.positive_duration),
            "session_timeout": Key(v.positive_duration),
            "max_sessions": Key(v.integer(0)),
            "max_datagram_size": Key(v.size(1, 65535)),
            "retries": Key(v.integer(0, 100)),
            "access_log": Key(v.log_target),
        },
    ),
    "websocket": (
        WebSocketListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(_pool_name, required=True, context=True),
            "mode": Key(v.choice("message", "passthrough")),
            "connect_timeout": Key(v.positive_duration),
            "retries": Key(v.integer(0, 100)),
            "handshake_timeout": Key(v.positive_duration),
            "idle_timeout": Key(v.positive_duration),
            "max_connections": Key(v.integer(0)),
            "allowed_origins": Key(v.origins),
            "max_message_size": Key(v.size(1, 1 << 40)),
            "max_frame_size": Key(v.size(1, 1 << 40)),
            "max_messages_per_second": Key(v.integer(0)),
            "ping_interval": Key(v.duration),
            "ping_timeout": Key(v.positive_duration),
            "permessage_deflate": Key(v.boolean),
            "access_log": Key(v.log_target),
            **_TLS_SERVER_KEYS,
        },
    ),
    "http": (HttpListenerConfig, True, {**_HTTP_KEYS, "https_redirect": Key(tls.https_redirect)}),
    "https": (
        HttpListenerConfig,
        True,
        {
            **_HTTP_KEYS,
            **_TLS_SERVER_KEYS,
            "certificates": Key(
                _certificates, required=True, context=True, group="tls", field="certificates"
            ),
            "hsts": Key(tls.hsts),
        },
    ),
    "route": (
        RouteSection,
        True,
        {
            "pool": Key(_pool_name, context=True),
            "strip_prefix": Key(v.boolean),
            "rewrite": Key(routes.rewrite),
            "host": Key(v.host_header),
            "redirect": Key(routes.redirect_value),
            "respond": Key(routes.respond_value),
            "content_type": Key(routes.content_type),
            "request_headers": Key(routes.header_rules),
            "response_headers": Key(routes.header_rules),
            "filters": Key(_filters, context=True),
        },
    ),
}

_BUILD_ORDER = (
    "proxyd",
    "admin",
    "pool",
    "filter",
    "tcp",
    "udp",
    "websocket",
    "route",
    "http",
    "https",
)
"""[http] sections are built last: their routes take actions from [route] sections; [filter]
sections before the sections that list them."""


LISTENER_KINDS = ("http", "https", "tcp", "udp", "websocket")
"""The section kinds that serve traffic: a file proxyd serves has at least one of them."""


def load(path: str) -> Config:
    """Read and validate `path` as a file to serve (loads() with `serving`); raises
    ConfigErrors listing every problem found."""
    return loads(read(path), path, serving=True)


def read(path: str) -> str:
    """The text of the config file `path`; raises ConfigErrors if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigErrors(
            [ConfigError(path, None, None, None, "a readable file", e.strerror or str(e))]
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigErrors([ConfigError(path, None, None, None, "UTF-8 text", str(e))]) from None


def loads(text: str, path: str = "<config>", *, serving: bool = False) -> Config:
    """Parse and validate `text`, the file `path`; raises ConfigErrors listing every problem.

    With `serving`, `text` is the whole file proxyd is to serve (at start, in `proxyd check`,
    at a reload), and one without a listener section is an error too: an empty or
    comment-only file (a truncating editor, a full disk) would otherwise be served as
    nothing at all. Without it, `text` may be a part of a configuration (a lone [pool])."""
    sections, errors = parse_ini(text, path)
    if serving:
        errors.extend(_no_listener(text, sections, path))
    ctx = Context(
        base_dir=os.path.dirname(path),
        pools=frozenset(s.name for s in sections if s.kind == "pool" and s.name),
        route_names=frozenset(s.name for s in sections if s.kind == "route" and s.name),
        filter_names=frozenset(s.name for s in sections if s.kind == "filter" and s.name),
    )
    built: dict[str, dict[str, Any]] = {kind: {} for kind in SCHEMAS}
    lines: dict[tuple[str, str], Section] = {}
    order = {kind: n for n, kind in enumerate(_BUILD_ORDER)}
    for section in sorted(sections, key=lambda s: order.get(s.kind, 0)):  # stable: file order
        if section.kind == "filter":
            _build_filter(section, path, errors, ctx)
            continue
        obj = _build(section, path, errors, ctx)
        if section.kind == "route" and section.name:
            problems = _route_section_errors(section, path)
            errors.extend(problems)
            if problems:
                continue
        if obj is None:
            continue
        name = section.name or ""
        if name in built[section.kind]:
            first = lines[(section.kind, name)].line
            errors.append(
                ConfigError(
                    path,
                    section.line,
                    section.title,
                    None,
                    "each section once",
                    f"a second {section.title} (first on line {first})",
                )
            )
            continue
        if section.kind == "route":
            ctx.routes[name] = obj
        built[section.kind][name] = obj
        lines[(section.kind, name)] = section

    global_config = built["proxyd"].get("", GlobalConfig())
    if global_config.workers > 1:
        errors.extend(_unshareable_listeners(path, built, lines))
    if errors:
        errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(errors)

    def inherit(kind: str, listener: Any) -> Any:
        if "access_log" in lines[(kind, listener.name)].entries:
            return listener
        return attrs.evolve(listener, access_log=global_config.access_log)

    tcp = tuple(inherit("tcp", listener) for listener in built["tcp"].values())
    udp = tuple(inherit("udp", listener) for listener in built["udp"].values())
    websocket = tuple(inherit("websocket", listener) for listener in built["websocket"].values())
    http = tuple(
        attrs.evolve(
            inherit(kind, listener),
            routes=_with_lines(listener.routes, lines[(kind, listener.name)].entries["routes"]),
        )
        for kind in ("http", "https")
        for listener in built[kind].values()
    )
    pools = dict(built["pool"])
    for listener in udp:
        # A UDP client sticks to its server unless the pool says otherwise: hash on its
        # address (its Call-ID with protocol = sip) is the default for pools UDP uses.
        if "balance" not in lines[("pool", listener.pool)].entries:
            pools[listener.pool] = attrs.evolve(pools[listener.pool], balance="hash")
    return Config(
        path=path,
        proxyd=global_config,
        pools=pools,
        tcp=tcp,
        http=http,
        udp=udp,
        websocket=websocket,
        admin=built["admin"].get(""),
    )


def _build_filter(section: Section, path: str, errors: list[ConfigError], ctx: Context) -> None:
    if not section.name:
        errors.append(
            ConfigError(path, section.line, section.title, None, "[filter NAME]", section.title)
        )
        return
    if section.name in ctx.filters:
        errors.append(
            ConfigError(
                path, section.line, section.title, None, "each section once", "a second one"
            )
        )
        return
    loaded = load_filter(section, path, ctx.pools, errors)
    if loaded is not None:
        ctx.filters[section.name] = loaded


def _no_listener(text: str, sections: list[Section], path: str) -> list[ConfigError]:
    """The error of a file with no listener section, saying what it holds instead. An
    [admin] section does not count: it serves no traffic, and an [admin]-only file is as
    likely a truncated one (it comes first in most files)."""
    if any(section.kind in LISTENER_KINDS for section in sections):
        return []
    kinds = [f"[{kind} NAME]" for kind in LISTENER_KINDS]
    expected = f"at least one listener section ({', '.join(kinds[:-1])} or {kinds[-1]})"
    hint: str | None
    if not text.strip():
        hint = "the file is empty"
    elif not sections:
        meaningful = [line for line in text.splitlines() if line.strip()]
        only_comments = all(line.lstrip()[0] in ";#" for line in meaningful)
        hint = "the file holds only comments" if only_comments else None
    else:
        titles = list(dict.fromkeys(f"[{section.kind}]" for section in sections))
        hint = f"the file's sections: {', '.join(titles)}"
        if "[admin]" in titles:
            hint += "; the admin listener serves no traffic"
    return [ConfigError(path, 1, None, None, expected, "none", hint)]


_SHAREABLE = ("tcp", "tcp6", "unix")
"""Endpoint kinds whose listening sockets the master can pass to worker processes."""


def _unshareable_listeners(
    path: str, built: Mapping[str, Mapping[str, Any]], lines: Mapping[tuple[str, str], Section]
) -> list[ConfigError]:
    """With workers above 1, each stream listener's `listen` must be a kind of _SHAREABLE."""
    errors = []
    for kind in ("tcp", "http", "https", "websocket"):
        for name, listener in built[kind].items():
            endpoint_kind = v.split_endpoint(listener.listen)[0].lower()
            if endpoint_kind not in _SHAREABLE:
                section = lines[(kind, name)]
                errors.append(
                    ConfigError(
                        path,
                        section.entries["listen"].line,
                        section.title,
                        "listen",
                        "a tcp:, tcp6: or unix: endpoint when [proxyd] workers is above 1 (its"
                        " sockets are passed to the worker processes)",
                        repr(listener.listen),
                    )
                )
    return errors


def _with_lines(parsed: tuple[RouteConfig, ...], entry: Entry) -> tuple[RouteConfig, ...]:
    """Routes with `line` made the file line of their routes entry (they hold the index)."""
    return tuple(attrs.evolve(route, line=entry.line_of(route.line)) for route in parsed)


def _route_section_errors(section: Section, path: str) -> list[ConfigError]:
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


def _build(section: Section, path: str, errors: list[ConfigError], ctx: Context) -> Any:
    if section.kind not in SCHEMAS:
        errors.append(
            ConfigError(
                path,
                section.line,
                section.title,
                None,
                f"a section kind ({one_of([*SCHEMAS, 'filter'])})",
                f"[{section.kind}]",
                did_you_mean(section.kind, [*SCHEMAS, "filter"]),
            )
        )
        return None
    model, named, keys = SCHEMAS[section.kind]
    if named and not section.name:
        errors.append(
            ConfigError(
                path, section.line, section.title, None, f"[{section.kind} NAME]", section.title
            )
        )
        return None
    if not named and section.name:
        errors.append(
            ConfigError(
                path,
                section.line,
                section.title,
                None,
                f"[{section.kind}] with no name",
                section.title,
            )
        )
        return None
    count = len(errors)
    fields: dict[str, Any] = {"name": section.name} if named else {}
    groups: dict[str, dict[str, Any]] = {}
    for key, entry in section.entries.items():
        if key not in keys:
            errors.append(
                ConfigError(
                    path,
                    entry.line,
                    section.title,
                    key,
                    f"a key of {section.kind} sections",
                    f"'{key}'",
                    did_you_mean(key, keys),
                )
            )
            continue
        spec = keys[key]
        try:
            value = spec.parse(entry.value, ctx) if spec.context else spec.parse(entry.value)
        except (Invalid, v.Invalids) as e:
            _report(errors, path, section, key, e)
            continue
        if spec.group is None:
            fields[key] = value
        else:
            groups.setdefault(spec.group, {})[spec.field or key] = value
    for key, required in keys.items():
        if required.required and key not in section.entries:
            errors.append(
                ConfigError(path, section.line, section.title, key, f"a '{key}' key", "none")
            )
    if len(errors) > count:
        return None
    problems = _GROUPS.get(section.kind, _no_groups)(section, fields, groups.get("tls", {}))
    for problem_key, problem in problems:
        _report(errors, path, section, problem_key, problem)
    if problems:
        return None
    return model(**fields)


def _report(
    errors: list[ConfigError], path: str, section: Section, key: str | None, e: Exception
) -> None:
    """Add the Invalid (or each of the Invalids) found in `key` (None: the section)."""
    assert isinstance(e, Invalid | v.Invalids)
    for error in e.errors if isinstance(e, v.Invalids) else (e,):
        entry = section.entries.get(key) if key else None
        line = entry.line_of(error.value_line) if entry else section.line
        errors.append(
            ConfigError(path, line, section.title, key, error.expected, error.found, error.hint)
        )


_Problems = list[tuple[str | None, Invalid | v.Invalids]]
"""(key, what is wrong): problems found across a section's keys."""


def _no_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    return []


def _tls_server(section: Section, values: dict[str, Any]) -> tuple[Any, _Problems]:
    """A TlsServerConfig from the `certificates` and `tls_*` keys, the certificates read."""
    sources = values.pop("certificates")
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
    fields["tls"], problems = _tls_server(section, values)
    return problems


def _tcp_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    problems: _Problems = []
    sni = fields.get("route_by") == "sni"
    if "certificates" in values:
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
        if fields.get("accept_proxy"):
            # The PROXY header comes before the TLS handshake; the TLS layer would get it.
            problems.append(
                (
                    "accept_proxy",
                    Invalid("accept_proxy without certificates (not supported yet)", "both"),
                )
            )
        fields["tls"], more = _tls_server(section, values)
        problems += more
    else:
        for key in section.entries:
            if key in _TLS_SERVER_KEYS or key == "tls_alpn":
                problems.append(
                    (key, Invalid(f"'{key}' only with certificates (TLS termination)", "none"))
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
        for key in _WEBSOCKET_MESSAGE_KEYS:
            if key in section.entries:
                problems.append(
                    (key, Invalid(f"'{key}' only with mode = message", "mode = passthrough"))
                )
    if "certificates" in values:
        fields["tls"], more = _tls_server(section, values)
        problems += more
    else:
        for key in section.entries:
            if key in _TLS_SERVER_KEYS:
                problems.append(
                    (key, Invalid(f"'{key}' only with certificates (TLS termination)", "none"))
                )
    return problems


def _pool_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    client = fields["tls"] = TlsClientConfig(**values)
    check = fields.get("check")
    if isinstance(check, TlsCheck) or (isinstance(check, WebSocketCheck) and client.enabled):
        fields["check"] = attrs.evolve(check, tls=client)
    elif isinstance(check, HttpCheck) and client.enabled:
        fields["check"] = TlsCheck(client, check)
    return []


def _admin_groups(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> _Problems:
    """A token is required where others than this machine can reach the admin listener."""
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
