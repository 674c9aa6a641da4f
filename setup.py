"""The C extensions of the modules mypyc compiles (pyproject.toml's [tool.proxyd] mypyc), or
none for a pure-Python package: everything else about the package is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_backend"))

from proxyd_build import compiled_modules, pure_reason  # noqa: E402


def ext_modules() -> list[Extension]:
    why = pure_reason()
    if why is None:
        try:
            from mypyc.build import mypycify
        except ImportError:
            why = "no mypyc (mypy) in the build environment"
        else:
            return mypycify(compiled_modules(ROOT), opt_level="3")
    print(f"proxyd: building pure Python: {why}", file=sys.stderr)
    return []


setup(ext_modules=ext_modules())
