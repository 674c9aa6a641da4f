"""INI file → validated Config tree, reporting every error in the file at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from proxyd.config import values as v
from proxyd.config.errors import ConfigError, ConfigErrors, Invalid, did_you_mean, one_of
from proxyd.config.ini import Section, parse_ini
from proxyd.config.model import (
    BALANCE_ALGORITHMS,
    Config,
    GlobalConfig,
    PoolConfig,
    TcpListenerConfig,
)


@attrs.frozen
class Key:
    parse: Callable[[str], Any]
    required: bool = False


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
        },
    ),
    "tcp": (
        TcpListenerConfig,
        True,
        {
            "listen": Key(v.endpoint, required=True),
            "pool": Key(str.strip, required=True),
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
}


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
    built: dict[str, dict[str, Any]] = {kind: {} for kind in SCHEMAS}
    lines: dict[tuple[str, str], Section] = {}
    for section in sections:
        obj = _build(section, path, errors)
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
        built[section.kind][name] = obj
        lines[(section.kind, name)] = section

    pools: dict[str, PoolConfig] = built["pool"]
    pool_sections = {s.name for s in sections if s.kind == "pool" and s.name}
    for section in sections:  # every listener's reference, even in a section with other errors
        entry = section.entries.get("pool")
        if section.kind != "tcp" or entry is None or entry.value.strip() in pool_sections:
            continue
        wanted = entry.value.strip()
        errors.append(
            ConfigError(
                path,
                entry.line,
                section.title,
                "pool",
                f"the name of a [pool] ({one_of(sorted(pool_sections)) or 'none defined'})",
                repr(wanted),
                did_you_mean(wanted, pool_sections),
            )
        )
    if errors:
        errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(errors)
    global_config = built["proxyd"].get("", GlobalConfig())
    tcp = tuple(
        listener
        if "access_log" in lines[("tcp", n)].entries
        else attrs.evolve(listener, access_log=global_config.access_log)
        for n, listener in built["tcp"].items()
    )
    return Config(path=path, proxyd=global_config, pools=pools, tcp=tcp)


def _build(section: Section, path: str, errors: list[ConfigError]) -> Any:
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
        try:
            fields[key] = keys[key].parse(entry.value)
        except Invalid as e:
            errors.append(
                ConfigError(
                    path,
                    entry.line_of(e.value_line),
                    section.title,
                    key,
                    e.expected,
                    e.found,
                    e.hint,
                )
            )
    for key, spec in keys.items():
        if spec.required and key not in section.entries:
            errors.append(
                ConfigError(path, section.line, section.title, key, f"a '{key}' key", "none")
            )
    if len(errors) > count:
        return None
    return model(**fields)
