"""What a section kind's schema is made of: a Key (a value's parser and where the value goes)
and the Context the parsers that need more than their text get (proxyd.config.schema)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.route_model import FilterConfig
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
    filter_names: frozenset[str] = frozenset()
    """Every [filter] section's name, valid or not."""
    filters: dict[str, FilterConfig] = attrs.field(factory=dict)
    """The valid [filter] sections, built before the sections that list them."""
    section_names: dict[str, frozenset[str]] = attrs.field(factory=dict)
    """Every [rule], [cors], [auth] and [ratelimit] section's name, valid or not, by kind."""
    sections: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """The valid [rule], [cors] and [auth] sections by kind and name, built before the
    sections that name them."""


@attrs.frozen
class Key:
    parse: Callable[..., Any]
    required: bool = False
    context: bool = False
    """parse takes (text, Context)."""
    group: str | None = None
    """The value belongs to a part of the section's object (`tls`), which
    proxyd.config.cross_checks builds."""
    field: str | None = None
    """Its name in that part (default: the key)."""


def reference(kind: str, name: str, names: frozenset[str]) -> str:
    if name not in names:
        raise Invalid(
            f"the name of a [{kind}] ({one_of(sorted(names)) or 'none defined'})",
            repr(name),
            did_you_mean(name, names),
        )
    return name
