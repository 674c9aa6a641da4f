"""Parsers for the basic configuration values: durations, sizes, integers, booleans, choices,
words, and the collection of several errors of a multi-line value. Each raises
Invalid(expected, found, hint)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Sequence

from proxyd.config.errors import Invalid, did_you_mean, one_of


class Invalids(Exception):
    """Several Invalid at once: every bad line of a multi-line value, each with its value_line."""

    def __init__(self, errors: Sequence[Invalid]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = tuple(errors)


def each_line(text: str) -> Iterator[tuple[int, str]]:
    """The lines of a multi-line value with their index (Invalid.value_line)."""
    return enumerate(text.splitlines())


def collect(errors: list[Invalid], index: int, error: Invalid) -> None:
    """Keep `error`, found on line `index` of a value, to raise with the others at the end."""
    errors.append(Invalid(error.expected, error.found, error.hint, value_line=index))


def raise_all(errors: Sequence[Invalid]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise Invalids(errors)


def words(text: str, what: str) -> list[str]:
    """Split on white space; single or double quotes group words. Backslashes are kept as
    written (each value reads its own escapes)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    lexer.escapedquotes = ""
    try:
        return list(lexer)
    except ValueError as e:
        raise Invalid(f"{what} with balanced quotes", f"{text!r} ({e})") from None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def duration(text: str) -> float:
    """`500ms`, `2s`, `1m`, `1h`, `1d`, or bare seconds; returns seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise Invalid("a duration such as 500ms, 2s, 1m, 1h, 1d", repr(text))
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise Invalid("a duration above zero", repr(text))
    return value


_SIZE = re.compile(r"^(\d+)\s*(b|k|kib|m|mib|g|gib|t|tib)?$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}


def size(low: int, high: int) -> Callable[[str], int]:
    """`64KiB`, `1MiB`, `512` (bytes); k/m/g/t are taken as KiB/MiB/GiB/TiB, as nginx does."""

    def parse(text: str) -> int:
        expected = f"a size from {_show_size(low)} to {_show_size(high)} such as 64KiB or 1MiB"
        match = _SIZE.match(text.strip())
        if not match:
            raise Invalid(expected, repr(text))
        unit = match.group(2).lower() if match.group(2) else None
        value = int(match.group(1)) * _SIZE_UNITS[unit]
        if not low <= value <= high:
            raise Invalid(expected, repr(text))
        return value

    return parse


def _show_size(n: int) -> str:
    if n == 0:
        return "0"
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        expected = f"a whole number from {low}" + (f" to {high}" if high is not None else "")
        try:
            value = int(text.strip())
        except ValueError:
            raise Invalid(expected, repr(text)) from None
        if value < low or (high is not None and value > high):
            raise Invalid(expected, repr(text))
        return value

    return parse


def integer_or_unlimited(low: int) -> Callable[[str], int | None]:
    """A whole number from `low`, or `unlimited` (None)."""

    def parse(text: str) -> int | None:
        if text.strip() == "unlimited":
            return None
        try:
            return integer(low)(text)
        except Invalid:
            raise Invalid(f"a whole number from {low} or unlimited", repr(text)) from None

    return parse


_BOOLS = {
    "on": True,
    "yes": True,
    "true": True,
    "1": True,
    "off": False,
    "no": False,
    "false": False,
    "0": False,
}


def boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _BOOLS:
        raise Invalid("on or off", repr(text))
    return _BOOLS[word]


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip()
        if word not in choices:
            raise Invalid(one_of(choices), repr(word), did_you_mean(word, choices))
        return word

    return parse
