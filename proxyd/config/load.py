"""INI file → validated Config tree, reporting every error in the file at once."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from proxyd.config import routes
from proxyd.config import values as v
from proxyd.config.errors import ConfigError, ConfigErrors, Invalid, did_you_mean, one_of
from proxyd.config.ini import Entry, Section, parse_ini
from proxyd.config.model import (
    BALANCE_ALGORITHMS,
    Config,
    GlobalConfig,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RouteConfig,
    TcpListenerConfig,
)
from proxyd.config.routes import RouteSection


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


@attrs.frozen
class Key:
    parse: Callable[..., Any]
    required: bool = False
    context: bool = False
    """parse takes (text, Context)."""


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


def _error_pages(text: str, ctx: Context) -> tuple[tuple[int, str], ...]:
    return v.error_pages(text, ctx.base_dir)


# One schema per section kind: key -> parser. Defaults live on the model classes.
SCHEMAS: Mapping[str, tuple[type, bool, Mapping[str, Key]]] = {
    # kind: (model class, takes a NAME, keys)
    "proxyd": (GlobalConfig, False, {"access_log": Key(v.log_target)}),
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
        },
    ),
    "tcp": (
        TcpListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(_pool_name, required=True, context=True),
            "connect_timeout": Key(v.positive_duration),
            "idle_timeout": Key(v.positive_duration),
            "retries": Key(v.integer(0, 100)),
            "max_connections": Key(v.integer(0)),
            "on_max_connections": Key(v.choice("queue", "close")),
            "send_proxy": Key(v.choice("off", "v1", "v2")),
            "accept_proxy": Key(v.boolean),
            "access_log": Key(v.log_target),
            "buffer_size": Key(v.size(1024, 16 << 20)),
        },
    ),
    "http": (
        HttpListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "routes": Key(_routes, required=True, context=True),
            "trusted_proxies": Key(v.networks),
            "request_headers": Key(routes.header_rules),
            "response_headers": Key(routes.header_rules),
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
        },
    ),
}

_BUILD_ORDER = ("proxyd", "pool", "tcp", "route", "http")
"""[http] sections are built last: their routes take actions from [route] sections."""


def load(path: str) -> Config:
    """Read and validate `path`; raises ConfigErrors listing every problem found."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigErrors(
            [ConfigError(path, None, None, None, "a readable file", e.strerror or str(e))]
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigErrors([ConfigError(path, None, None, None, "UTF-8 text", str(e))]) from None
    return loads(text, path)


def loads(text: str, path: str = "<config>") -> Config:
    sections, errors = parse_ini(text, path)
    ctx = Context(
        base_dir=os.path.dirname(path),
        pools=frozenset(s.name for s in sections if s.kind == "pool" and s.name),
        route_names=frozenset(s.name for s in sections if s.kind == "route" and s.name),
    )
    built: dict[str, dict[str, Any]] = {kind: {} for kind in SCHEMAS}
    lines: dict[tuple[str, str], Section] = {}
    order = {kind: n for n, kind in enumerate(_BUILD_ORDER)}
    for section in sorted(sections, key=lambda s: order.get(s.kind, 0)):  # stable: file order
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

    if errors:
        errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(errors)
    global_config = built["proxyd"].get("", GlobalConfig())

    def inherit(kind: str, listener: Any) -> Any:
        if "access_log" in lines[(kind, listener.name)].entries:
            return listener
        return attrs.evolve(listener, access_log=global_config.access_log)

    tcp = tuple(inherit("tcp", listener) for listener in built["tcp"].values())
    http = tuple(
        attrs.evolve(
            inherit("http", listener),
            routes=_with_lines(listener.routes, lines[("http", listener.name)].entries["routes"]),
        )
        for listener in built["http"].values()
    )
    return Config(path=path, proxyd=global_config, pools=built["pool"], tcp=tcp, http=http)


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
                f"a section kind ({one_of(SCHEMAS)})",
                f"[{section.kind}]",
                did_you_mean(section.kind, SCHEMAS),
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
            fields[key] = spec.parse(entry.value, ctx) if spec.context else spec.parse(entry.value)
        except (Invalid, v.Invalids) as e:
            for error in e.errors if isinstance(e, v.Invalids) else (e,):
                errors.append(
                    ConfigError(
                        path,
                        entry.line_of(error.value_line),
                        section.title,
                        key,
                        error.expected,
                        error.found,
                        error.hint,
                    )
                )
    for key, required in keys.items():
        if required.required and key not in section.entries:
            errors.append(
                ConfigError(path, section.line, section.title, key, f"a '{key}' key", "none")
            )
    if len(errors) > count:
        return None
    return model(**fields)
