"""proxyd's build backend: setuptools', asking for mypy (whose mypyc compiles the modules
listed in pyproject.toml's [tool.proxyd] mypyc) only when the build will compile them. A
build compiles unless PROXYD_PURE=1 is set or no C compiler is at hand; setup.py builds the
same decision's package, pure Python or with the C extensions (docs/performance.md)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 and 660 hooks it defines)

MYPY = "mypy~=2.4.0"
"""The mypy whose mypyc the compiled modules are tested with."""


def pure_reason() -> str | None:
    """Why this build is pure Python, or None when it compiles."""
    if os.environ.get("PROXYD_PURE", "") not in ("", "0"):
        return "PROXYD_PURE is set"
    if sys.implementation.name != "cpython":
        return f"mypyc compiles for CPython, not {sys.implementation.name}"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "").split()
    if not compiler or shutil.which(compiler[0]) is None:
        return "no C compiler"
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return "no Python.h (the python3-dev package)"
    return None


def compiled_modules(root: Path) -> list[str]:
    """The source files of the modules to compile, from pyproject.toml."""
    with (root / "pyproject.toml").open("rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["proxyd"]["mypyc"]
    return [m.replace(".", "/") + ".py" for m in modules]


def _with_mypy(requires: list[str]) -> list[str]:
    return requires if pure_reason() is not None else [*requires, MYPY]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _with_mypy(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _with_mypy(_setuptools.get_requires_for_build_editable(config_settings))
