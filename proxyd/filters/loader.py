"""`[filter NAME]` sections: import the class, make it with its options, and report every
problem (a bad `class` value, an import error, a missing class, a bad or unknown option) as a
config error on the file's line.

    [filter canary]
    class = canary:CanaryRouter      ; module:Name, imported from `path` or the Python path
    python_path = ../examples/filters    ; optional, relative to the config file
    header = X-Canary                ; the filter's own options
    pool = web-canary
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from typing import Final

from proxyd.config.errors import ConfigError, did_you_mean
from proxyd.config.ini import Section
from proxyd.config.model import FilterConfig
from proxyd.filters.api import PHASES, OptionError, Options, phases

RESERVED: Final = ("class", "python_path")
"""Keys of [filter] proxyd reads itself; the rest are the filter's options."""
_CLASS: Final = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


def load_filter(
    section: Section, path: str, pools: Iterable[str], errors: list[ConfigError]
) -> FilterConfig | None:
    """The filter of `section`, or None with its problems added to `errors`."""
    assert section.name is not None
    title = section.title

    def error(key: str | None, expected: str, found: str, hint: str | None = None) -> None:
        entry = section.entries.get(key) if key else None
        line = entry.line if entry is not None else section.line
        errors.append(ConfigError(path, line, title, key, expected, found, hint))

    entry = section.entries.get("class")
    if entry is None:
        error("class", "a 'class' key (package.module:Name)", "none")
        return None
    spec = entry.value.strip()
    match = _CLASS.match(spec)
    if match is None:
        error("class", "package.module:Name", repr(spec))
        return None
    base_dir = os.path.dirname(path)
    search = [base_dir or "."]
    if "python_path" in section.entries:
        written = section.entries["python_path"].value.strip()
        directory = os.path.join(base_dir, written)
        if not os.path.isdir(directory):
            error("python_path", "a directory", repr(written))
            return None
        search.insert(0, directory)
    for directory in reversed(search):
        absolute = os.path.abspath(directory)
        if absolute not in sys.path:
            sys.path.insert(0, absolute)
    module_name, class_name = match.groups()
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        error("class", f"an importable module {module_name!r}", f"{type(e).__name__}: {e}")
        return None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        names = [n for n in vars(module) if isinstance(getattr(module, n), type)]
        found = "not a class" if cls is not None else "no such name"
        error(
            "class",
            f"a class {class_name!r} in {module_name}",
            found,
            did_you_mean(class_name, names),
        )
        return None
    if not phases(cls):
        error("class", f"a filter class (with a method {', '.join(PHASES)})", f"{spec} has none")
        return None
    values = {key: e.value for key, e in section.entries.items() if key not in RESERVED}
    options = Options(section.name, values, base_dir=base_dir, pools=pools)
    try:
        instance = cls(options)
    except OptionError as e:
        error(e.key, e.invalid.expected, e.invalid.found)
        return None
    except Exception as e:
        error(None, f"{spec} made from its options", f"{type(e).__name__}: {e}")
        return None
    unread = options.unread()
    for key in unread:
        read = sorted(options.read)
        error(
            key,
            f"an option of {spec} ({', '.join(read) if read else 'it takes none'})",
            f"'{key}'",
            did_you_mean(key, read),
        )
    if unread:
        return None
    return FilterConfig(section.name, spec, tuple(sorted(values.items())), instance)
