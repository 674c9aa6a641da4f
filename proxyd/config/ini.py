"""An INI reader that keeps line numbers, for error messages that point at the file.

Sections are `[KIND NAME]` or `[KIND]`; `key = value`; a value continues on the following
indented lines (one item a line); `;` and `#` start comments at the start of a line or after
white space.
"""

from __future__ import annotations

import re

import attrs

from proxyd.config.errors import ConfigError

_SECTION = re.compile(r"^\[\s*([^\]]*?)\s*\]\s*$")
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-]*)\s*=\s*(.*)$")
_COMMENT = re.compile(r"(^|\s)[;#].*$")


@attrs.frozen
class Entry:
    key: str
    value: str
    line: int
    value_lines: tuple[int, ...] = ()
    """The file line of each line of `value` (a value continues on indented lines)."""

    def line_of(self, index: int) -> int:
        return self.value_lines[index] if index < len(self.value_lines) else self.line


@attrs.define
class Section:
    kind: str
    name: str | None
    line: int
    entries: dict[str, Entry] = attrs.field(factory=dict)

    @property
    def title(self) -> str:
        return f"[{self.kind} {self.name}]" if self.name else f"[{self.kind}]"


def strip_comment(text: str) -> str:
    """Remove a trailing `;`/`#` comment, but not one inside single or double quotes."""
    out = []
    quote = ""
    for i, ch in enumerate(text):
        if ch in "\"'" and (i == 0 or text[i - 1] != "\\"):
            if not quote:
                quote = ch
            elif quote == ch:
                quote = ""
        if not quote and ch in ";#" and (i == 0 or text[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).rstrip()


def parse_ini(text: str, path: str) -> tuple[list[Section], list[ConfigError]]:
    """Sections in file order, and every syntax error found (not only the first)."""
    sections: list[Section] = []
    errors: list[ConfigError] = []
    current: Section | None = None
    last: Entry | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip()[0] in ";#":
            continue
        if raw[0].isspace() and last is not None and current is not None:
            item = strip_comment(raw.strip())
            if item:
                joined = f"{last.value}\n{item}" if last.value else item
                lines = (*last.value_lines, number) if last.value else (number,)
                last = Entry(last.key, joined, last.line, lines)
                current.entries[last.key] = last
            continue
        line = raw.strip()
        match = _SECTION.match(strip_comment(line))
        if match:
            words = match.group(1).split()
            if len(words) not in (1, 2):
                errors.append(ConfigError(path, number, None, None, "[KIND] or [KIND NAME]", line))
                current, last = None, None
                continue
            current = Section(words[0], words[1] if len(words) == 2 else None, number)
            sections.append(current)
            last = None
            continue
        match = _KEY.match(line)
        if not match:
            errors.append(
                ConfigError(path, number, None, None, "'key = value' or a [section]", line)
            )
            continue
        if current is None:
            errors.append(
                ConfigError(path, number, None, match.group(1), "a [section] first", line)
            )
            continue
        key, value = match.group(1), strip_comment(match.group(2))
        if key in current.entries:
            errors.append(
                ConfigError(
                    path,
                    number,
                    current.title,
                    key,
                    "each key once per section",
                    f"a second '{key}' (first on line {current.entries[key].line})",
                )
            )
            continue
        last = Entry(key, value, number, (number,) if value else ())
        current.entries[key] = last
    return sections, errors
