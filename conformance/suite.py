"""The Autobahn test suite's own fuzzing client and cases, made to run on Python 3.

PyPI's autobahntestsuite is Python 2.7 code (its wstest pins autobahn 0.10.9). The pinned
sdist is downloaded once into a cache under the repository, checked against its SHA-256, and
the files the fuzzing client needs are converted with lib2to3 and patched
(autobahntestsuite-py3.patch, which says what it changes and why) into a package
`autobahntestsuite` that runs on the autobahn of this virtualenv.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

VERSION = "25.10.1"
SDIST = f"autobahntestsuite-{VERSION}.tar.gz"
SDIST_SHA256 = "b083d6e15330fc16f3e5f0975cce2b15f21bfa0c6db09547316b1852c6dbd6df"

HERE = Path(__file__).resolve().parent
PATCH = HERE / "autobahntestsuite-py3.patch"
CACHE = HERE.parent / ".cache" / "conformance"

# What the fuzzing client needs from the sdist, relative to its autobahntestsuite/ folder.
KEPT_FILES = ("_version.py", "caseset.py", "fuzzing.py")
KEPT_FOLDERS = ("case/", "testdata/")

# The package's own __init__ starts a reactor choice and imports every wstest mode.
PACKAGE_INIT = "from ._version import __version__\n\nversion = __version__\n"


class SuiteError(Exception):
    """The suite could not be fetched or ported; the message says what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache: Path) -> Path:
    """The pinned sdist in `cache`, downloaded with pip if it is not there yet."""
    sdist = cache / SDIST
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        argv += ["--no-binary", ":all:", "--dest", str(cache)]
        argv.append(f"autobahntestsuite=={VERSION}")
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not sdist.exists():
            raise SuiteError(f"pip could not download autobahntestsuite {VERSION}:\n{done.stderr}")
    found = sha256(sdist)
    if found != SDIST_SHA256:
        sdist.unlink()
        raise SuiteError(f"{sdist}: SHA-256 {found}, expected {SDIST_SHA256}; removed it")
    return sdist


def extract(sdist: Path, package: Path) -> None:
    """Copies the kept files of the sdist's package into `package`, with LF line ends."""
    prefix = f"autobahntestsuite-{VERSION}/autobahntestsuite/"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(prefix)
            if name == member.name or not member.isfile():
                continue
            if name not in KEPT_FILES and not name.startswith(KEPT_FOLDERS):
                continue
            source = tar.extractfile(member)
            assert source is not None
            data = source.read()
            if name.endswith(".py"):
                data = data.replace(b"\r\n", b"\n")
            target = package / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def convert(package: Path) -> None:
    """Python 2 to 3 with lib2to3's fixers. The source is read as Latin-1, so a byte string
    keeps one code point per byte (py2str.latin1 turns it back into those bytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from lib2to3.refactor import RefactoringTool, get_fixers_from_package

        tool = RefactoringTool(get_fixers_from_package("lib2to3.fixes"))
    # fix_import makes the implicit relative imports explicit only inside a package.
    (package / "__init__.py").write_text("")
    for path in sorted(package.rglob("*.py")):
        text = path.read_bytes().decode("latin-1")
        if not text.endswith("\n"):
            text += "\n"
        path.write_text(str(tool.refactor_string(text, str(path))), encoding="utf-8")
    (package / "__init__.py").write_text(PACKAGE_INIT)


def apply_patch(root: Path) -> None:
    argv = ["patch", "--batch", "--forward", "--silent", "-p1", "-d", str(root), "-i", str(PATCH)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SuiteError(f"{PATCH.name} did not apply:\n{done.stdout}{done.stderr}")


def prepare(cache: Path = CACHE) -> Path:
    """A folder holding the ported package `autobahntestsuite`, to put on sys.path; built
    once per sdist and patch (the folder's name carries the patch's hash)."""
    root = cache / f"py3-{VERSION}-{sha256(PATCH)[:12]}"
    if (root / "autobahntestsuite" / "__init__.py").exists():
        return root
    sdist = fetch_sdist(cache)
    building = Path(tempfile.mkdtemp(prefix="py3-", dir=cache))
    try:
        extract(sdist, building / "autobahntestsuite")
        convert(building / "autobahntestsuite")
        apply_patch(building)
        # Two runs may build at once: the first rename wins, the other build is dropped.
        try:
            building.rename(root)
        except OSError:
            if not root.exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root
