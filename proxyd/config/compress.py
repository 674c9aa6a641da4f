"""The `compress`, `compress_types`, `compress_min_length`, `compress_codings`,
`compress_levels` and `gunzip` keys of [http], [https] and [route] sections
(docs/compression.md): their parsers, and the value they make together (a listener's
CompressConfig, a route's RouteCompress, whose keys each replace the listener's)."""

from __future__ import annotations

import re
from typing import Any, Final

from proxyd.config import scalars
from proxyd.config.compress_model import CompressConfig, RouteCompress
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.ini import Section
from proxyd.config.keys import Key

CODINGS: Final = ("gzip", "br", "zstd")
"""The content codings proxyd compresses with (proxyd.compress.encoders)."""

_NAME: Final = r"[!#$%&'+.^_`|~0-9a-z-]+"
"""RFC 9110's token, lower case, without '*' (a wildcard here)."""
_MEDIA_RANGE: Final = re.compile(rf"{_NAME}/(?:\*|\*\+{_NAME}|{_NAME})")
_TYPES_EXPECTED: Final = "media types such as text/*, application/json or application/*+json"


def _items(text: str) -> list[str]:
    """Words separated by white space, commas or lines."""
    return text.replace(",", " ").split()


def media_types(text: str) -> tuple[str, ...]:
    """`compress_types`: `type/subtype`, `type/*` or `type/*+suffix`, lower case. Not `*/*`:
    images, audio, video, fonts and archives are compressed already, and a coding on them
    costs CPU to send more bytes; an operator names the types his servers send raw."""
    found: list[str] = []
    for word in _items(text):
        lower = word.lower()
        if lower.startswith("*/"):
            raise Invalid(
                _TYPES_EXPECTED,
                repr(word),
                "a type by name: most other types are compressed already (images, video)",
            )
        if not _MEDIA_RANGE.fullmatch(lower):
            raise Invalid(_TYPES_EXPECTED, repr(word))
        if lower not in found:
            found.append(lower)
    if not found:
        raise Invalid(_TYPES_EXPECTED, "nothing")
    return tuple(found)


def _coding(word: str) -> str:
    coding = word.lower()
    if coding not in CODINGS:
        raise Invalid(f"a coding of {one_of(CODINGS)}", repr(word), did_you_mean(coding, CODINGS))
    return coding


def codings(text: str) -> tuple[str, ...]:
    """`compress_codings`: gzip, br and zstd, in the server's order of preference."""
    found: list[str] = []
    for word in _items(text):
        coding = _coding(word)
        if coding in found:
            raise Invalid("each coding once", f"{coding!r} twice")
        found.append(coding)
    if not found:
        raise Invalid(f"one or more of {one_of(CODINGS)}, the favourite first", "nothing")
    return tuple(found)


def levels(text: str) -> tuple[tuple[str, int], ...]:
    """`compress_levels`: `CODING=LEVEL` words, each level within the coding's range
    (proxyd.compress.encoders.LEVELS)."""
    # Imported here: the encoders import brotli and zstandard, which a process that
    # compresses nothing need not load.
    from proxyd.compress.encoders import LEVELS

    found: dict[str, int] = {}
    for word in _items(text):
        name, equals, number = word.partition("=")
        if not equals:
            raise Invalid("CODING=LEVEL words such as gzip=6 br=4 zstd=3", repr(word))
        coding = _coding(name.strip())
        allowed = LEVELS[coding]
        expected = f"a {coding} level from {allowed[0]} to {allowed[-1]}"
        if not number.strip().isdigit() or int(number) not in allowed:
            raise Invalid(expected, repr(word))
        if coding in found:
            raise Invalid("each coding once", f"{coding!r} twice")
        found[coding] = int(number)
    if not found:
        raise Invalid("CODING=LEVEL words such as gzip=6 br=4 zstd=3", "nothing")
    return tuple(found.items())


def _key(field: str, parse: Any) -> Key:
    return Key(parse, group="compress", field=field)


KEYS: Final = {
    "compress": _key("enabled", scalars.boolean),
    "compress_types": _key("types", media_types),
    "compress_min_length": _key("min_length", scalars.size(0, 1 << 40)),
    "compress_codings": _key("codings", codings),
    "compress_levels": _key("levels", levels),
    "gunzip": _key("gunzip", scalars.boolean),
}
"""[http], [https] and [route] keys; compress_group makes their value."""


def compress_group(section: Section, fields: dict[str, Any], values: dict[str, Any]) -> None:
    """Set fields["compress"] from the keys' values: a listener's CompressConfig, a
    [route]'s RouteCompress (only the keys it has)."""
    if section.kind == "route":
        if values:
            fields["compress"] = RouteCompress(**values)
    elif values:
        fields["compress"] = CompressConfig(**values)
