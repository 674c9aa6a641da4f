"""The modules mypyc compiles (pyproject.toml's [tool.proxyd] mypyc, built by setup.py): the
build the tests run against is the one asked for (`make test` runs the unit tests against
both), and the compiled modules built into the tree are those listed, built after their sources
last changed."""

from __future__ import annotations

import importlib
import os
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["proxyd"]["mypyc"]


def _loaded_from(name: str) -> Path:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    return Path(module.__file__)


def _is_extension(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


@pytest.mark.skipif("PROXYD_TEST_BUILD" not in os.environ, reason="PROXYD_TEST_BUILD not set")
def test_the_modules_are_compiled_or_pure_as_asked() -> None:
    asked = os.environ["PROXYD_TEST_BUILD"]
    assert asked in ("compiled", "pure")
    loaded = {name: _loaded_from(name) for name in COMPILED}
    wrong = [
        f"{name}: {path}"
        for name, path in loaded.items()
        if _is_extension(path) != (asked == "compiled")
    ]
    assert not wrong, f"asked for the {asked} build; these are not: {wrong}" + (
        " (built without a C compiler, or with PROXYD_PURE set: see setup.py's message;"
        " `make -B venv` builds again)"
        if asked == "compiled"
        else ""
    )


def test_no_module_left_out_of_the_list_is_compiled_in_the_tree() -> None:
    """An extension module of an earlier build would be imported in place of the .py."""
    extensions = [
        path
        for path in (ROOT / "proxyd").rglob("*")
        if _is_extension(path) and not path.name.partition(".")[0].endswith("__mypyc")
    ]
    unlisted = [
        str(path.relative_to(ROOT))
        for path in extensions
        if ".".join((*path.relative_to(ROOT).parent.parts, path.name.partition(".")[0]))
        not in COMPILED
    ]
    assert not unlisted, f"compiled but not listed: {unlisted}; `make venv` builds them again"


def test_compiled_modules_in_the_tree_are_not_older_than_their_sources() -> None:
    stale = []
    for name in COMPILED:
        path = _loaded_from(name)
        source = path.parent / (name.rpartition(".")[2] + ".py")
        if (
            _is_extension(path)
            and source.exists()
            and path.stat().st_mtime < source.stat().st_mtime
        ):
            stale.append(name)
    assert not stale, (
        f"compiled before their source last changed: {stale}; `make venv` builds them again"
    )
