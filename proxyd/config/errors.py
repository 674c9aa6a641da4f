"""Configuration errors: values that say where (file, line, section, key) and what was wrong."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import attrs


@attrs.frozen
class ConfigError:
    """One problem in a configuration file, rendered as
    `etc/proxyd.ini:12: [pool web] check: expected 'tcp', ...; found 'htp' (did you mean 'http'?)`.
    """

    path: str
    line: int | None
    section: str | None
    key: str | None
    expected: str
    found: str
    hint: str | None = None

    def __str__(self) -> str:
        head = f"{self.path}:{self.line}" if self.line else self.path
        place = " ".join(part for part in (self.section, self.key) if part)
        if place:
            head += f": {place}"
        text = f"{head}: expected {self.expected}; found {self.found}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigErrors(Exception):
    """Every error found in a file; str() is one line per error."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = tuple(errors)


class Invalid(ValueError):
    """Raised by value parsers; the loader adds file, line, section and key."""

    def __init__(
        self, expected: str, found: str, hint: str | None = None, value_line: int = 0
    ) -> None:
        super().__init__(f"expected {expected}; found {found}")
        self.expected = expected
        self.found = found
        self.hint = hint
        self.value_line = value_line
        """Which line of a multi-line value is wrong (0 is the first)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in choices)
