"""INI file → validated Config tree, reporting every error in the file at once.

Each section is built by its kind's schema (proxyd.config.schema), then checked across its
keys (proxyd.config.cross_checks); this module reads the file, builds the sections in an
order that lets later ones refer to earlier ones, and checks the file as a whole."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from proxyd.config import tier
from proxyd.config import values as v
from proxyd.config.cross_checks import cross_check, route_section_errors
from proxyd.config.errors import ConfigError, ConfigErrors, Invalid, did_you_mean, one_of
from proxyd.config.gslb_section import pool_errors
from proxyd.config.ini import Entry, Section, parse_ini
from proxyd.config.model import Config, GlobalConfig, RouteConfig
from proxyd.config.schema import SCHEMAS, Context
from proxyd.filters.loader import load_filter

__all__ = ["LISTENER_KINDS", "SCHEMAS", "load", "loads", "read"]


_BUILD_ORDER = (
    "proxyd",
    "acme",
    "admin",
    "pool",
    "filter",
    "rule",
    "cors",
    "auth",
    "ratelimit",
    "cache",
    "tcp",
    "udp",
    "websocket",
    "gslb",
    "route",
    "http",
    "https",
)
"""[http] sections are built last: their routes take actions from [route] sections; [filter],
[rule], [cors], [auth], [ratelimit] and [cache] sections before the sections that name
them."""

_NAMED_KINDS = ("rule", "cors", "auth", "ratelimit", "cache", "acme")
"""Sections that listeners and routes name (Context.sections)."""


LISTENER_KINDS = ("http", "https", "tcp", "udp", "websocket", "gslb")
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
        section_names={
            kind: frozenset(s.name for s in sections if s.kind == kind and s.name)
            for kind in _NAMED_KINDS
        },
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
            problems = route_section_errors(section, path)
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
        elif section.kind in _NAMED_KINDS:
            ctx.sections.setdefault(section.kind, {})[name] = obj
        built[section.kind][name] = obj
        lines[(section.kind, name)] = section

    global_config = built["proxyd"].get("", GlobalConfig())
    if global_config.workers > 1:
        errors.extend(_unshareable_listeners(path, built, lines))
    for name, gslb in built["gslb"].items():
        errors.extend(pool_errors(path, gslb, built["pool"], lines[("gslb", name)]))
    for kind in ("tcp", "udp", "websocket"):
        for name, listener in built[kind].items():
            section = lines[(kind, name)]
            errors.extend(tier.listener_pool_errors(path, listener, built["pool"], section))
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
        auth=dict(built["auth"]),
        caches=dict(built["cache"]),
        acme=dict(built["acme"]),
        gslb=tuple(built["gslb"].values()),
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
    problems = cross_check(section, fields, groups)
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
