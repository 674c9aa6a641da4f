"""Parsers for single configuration values. Each raises Invalid(expected, found, hint)."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable

from twisted.internet.endpoints import serverFromString

from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.model import (
    Address,
    CheckConfig,
    MysqlCheck,
    ServerConfig,
    SmtpCheck,
    TcpCheck,
)

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


_SIZE = re.compile(r"^(\d+)\s*(b|k|kib|m|mib|g|gib)?$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def size(low: int, high: int) -> Callable[[str], int]:
    """`64KiB`, `1MiB`, `512` (bytes); k/m/g are taken as KiB/MiB/GiB, as nginx does."""

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
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1024)):
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


def address(text: str) -> Address:
    """`HOST:PORT` or `[IPV6]:PORT`."""
    text = text.strip()
    expected = "an address HOST:PORT or [IPv6]:PORT"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise Invalid(expected, repr(text))
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(expected, repr(text), "not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise Invalid(expected, repr(text))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(expected + " with a port from 1 to 65535", repr(text))
    return Address(host, int(port))


def endpoint(text: str) -> str:
    """A Twisted server endpoint string; checked by building (not listening on) the endpoint."""
    text = text.strip()
    try:
        serverFromString(None, text)
    except Exception as e:  # endpoint parsers raise ValueError, TypeError, KeyError...
        raise Invalid(
            "a Twisted endpoint such as tcp:8080:interface=127.0.0.1",
            f"{text!r} ({e})",
        ) from None
    return text


def log_target(text: str) -> str:
    text = text.strip()
    if not text:
        raise Invalid("'-' (stdout), 'off' or a file path", "nothing")
    return text


_SERVER_FLAGS = ("backup", "down")
_SERVER_OPTIONS = {"weight": integer(1, 256), "max_connections": integer(0)}


def servers(text: str) -> tuple[ServerConfig, ...]:
    """Server specs, one or more a line: `ADDR [weight=N] [max_connections=N] [backup] [down]`."""
    result: list[dict[str, object]] = []
    seen: set[Address] = set()
    for index, line in enumerate(text.splitlines()):
        try:
            for spec in _server_line(line):
                if spec["address"] in seen:
                    raise Invalid("each server once", f"{spec['address']} twice")
                seen.add(spec["address"])  # type: ignore[arg-type]
                result.append(spec)
        except Invalid as e:
            raise Invalid(e.expected, e.found, e.hint, value_line=index) from None
    if not result:
        raise Invalid("at least one server", "none")
    return tuple(ServerConfig(**spec) for spec in result)  # type: ignore[arg-type]


def _server_line(line: str) -> list[dict[str, object]]:
    options = [*_SERVER_OPTIONS, *_SERVER_FLAGS]
    specs: list[dict[str, object]] = []
    for token in line.split():
        name, eq, value = token.partition("=")
        if (eq or token in _SERVER_FLAGS) and not specs:
            raise Invalid("an address before server options", repr(token))
        if eq:
            if name not in _SERVER_OPTIONS:
                raise Invalid(
                    f"a server option ({one_of(options)})",
                    repr(token),
                    did_you_mean(name, options),
                )
            specs[-1][name] = _SERVER_OPTIONS[name](value)
        elif token in _SERVER_FLAGS:
            specs[-1][token] = True
        elif ":" in token:
            specs.append({"address": address(token)})
        else:
            raise Invalid(
                "an address HOST:PORT or a server option",
                repr(token),
                did_you_mean(token, options),
            )
    return specs


CHECK_KINDS = ("tcp", "smtp", "mysql")


def check(text: str) -> CheckConfig | None:
    """`tcp [send STR] [expect STR | expect_regex STR]`, `smtp [DOMAIN]`, `mysql`, `none`."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""  # backslash escapes are read once, by _unescape
    lexer.escapedquotes = ""
    try:
        words = list(lexer)
    except ValueError as e:
        raise Invalid("a check with balanced quotes", f"{text!r} ({e})") from None
    if not words:
        raise Invalid(f"a check kind ({one_of(CHECK_KINDS)})", "nothing")
    kind, args = words[0], words[1:]
    if kind == "none" and not args:
        return None
    if kind == "tcp":
        return _tcp_check(args)
    if kind == "smtp":
        if len(args) > 1:
            raise Invalid("'smtp' or 'smtp DOMAIN'", repr(text))
        return SmtpCheck(args[0]) if args else SmtpCheck()
    if kind == "mysql":
        if args:
            raise Invalid("'mysql' with no arguments", repr(text))
        return MysqlCheck()
    kinds = (*CHECK_KINDS, "none")
    raise Invalid(f"a check kind ({one_of(kinds)})", repr(kind), did_you_mean(kind, kinds))


def _unescape(text: str) -> bytes:
    try:
        return text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError):
        raise Invalid("a string with valid escapes (\\r \\n \\x00)", repr(text)) from None


def _tcp_check(args: list[str]) -> TcpCheck:
    words = ("send", "expect", "expect_regex")
    values: dict[str, str] = {}
    while args:
        word = args.pop(0)
        if word not in words:
            raise Invalid(f"{one_of(words)} after 'tcp'", repr(word), did_you_mean(word, words))
        if not args:
            raise Invalid(f"a quoted string after '{word}'", "nothing")
        if word in values:
            raise Invalid(f"'{word}' once", f"'{word}' twice")
        values[word] = args.pop(0)
    if "expect" in values and "expect_regex" in values:
        raise Invalid("either 'expect' or 'expect_regex'", "both")
    regex = None
    if "expect_regex" in values:
        try:
            regex = re.compile(values["expect_regex"].encode())  # re reads its own escapes
        except re.error as e:
            raise Invalid(
                "a valid regular expression", f"{values['expect_regex']!r} ({e})"
            ) from None
    return TcpCheck(
        send=_unescape(values["send"]) if "send" in values else None,
        expect=_unescape(values["expect"]) if "expect" in values else None,
        expect_regex=regex,
    )
