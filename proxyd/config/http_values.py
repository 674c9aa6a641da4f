"""Parsers for HTTP values in the configuration: tokens (methods, header and cookie names),
request paths, Host values, status codes and ranges. Each raises Invalid(expected, found,
hint)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from proxyd.config.errors import Invalid

TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(rf"^{TCHAR}+$")
"""RFC 9110 5.6.2: header field names, method names and cookie names are tokens."""


def token(what: str) -> Callable[[str], str]:
    """A token (RFC 9110 5.6.2) such as a header field or cookie name, as written."""

    def parse(text: str) -> str:
        word = text.strip()
        if not _TOKEN.match(word):
            raise Invalid(
                f"{what} (letters, digits and !#$%&'*+-.^_`|~)", repr(word) if word else "nothing"
            )
        return word

    return parse


header_name = token("a header field name")
cookie_name = token("a cookie name")


_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")


def method(text: str) -> str:
    """An HTTP method: a token, in upper case (methods are case-sensitive, RFC 9110 9.1)."""
    word = text.strip()
    if not _TOKEN.match(word) or word != word.upper():
        hint = f"did you mean '{word.upper()}'?" if _TOKEN.match(word) else None
        raise Invalid("a method name in upper case such as GET", repr(word), hint)
    return word


def methods(text: str) -> frozenset[str]:
    """`GET` or `GET,HEAD,...`."""
    return frozenset(method(part) for part in text.split(","))


_PATH = re.compile(r"^/[\x21-\x7e]*$")


def request_path(text: str) -> str:
    """An origin-form request target for the upstream: `/` then visible ASCII (a query too)."""
    if not _PATH.match(text):
        raise Invalid("a path starting with '/' (visible ASCII, no spaces)", repr(text))
    return text


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def is_hostname(text: str) -> bool:
    """A DNS name or IPv4 address (letters, digits, '-', '_', dots), or a bracketed IPv6."""
    if text.startswith("[") and text.endswith("]"):
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            return False
        return True
    return len(text) <= 253 and _HOSTNAME.match(text.lower()) is not None


def host_header(text: str) -> str:
    """A Host header value to send: `NAME` or `NAME:PORT`, as written."""
    name, port = text, ""
    if text.startswith("["):
        if "]:" in text:
            name, _, port = text.rpartition(":")
    elif ":" in text:
        name, _, port = text.rpartition(":")
    valid_port = not port or (port.isdigit() and 0 < int(port) < 65536)
    if not is_hostname(name) or not valid_port:
        raise Invalid("a host name such as example.com, with an optional :PORT", repr(text))
    return text


_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)


def status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """`200`, `200,204`, `200-399`, `2xx`: inclusive status ranges."""
    expected = "status codes from 100 to 599 such as 200, 200,204, 200-399 or 2xx"
    ranges: list[tuple[int, int]] = []
    for part in text.strip().split(","):
        klass = _STATUS_CLASS.match(part)
        if klass:
            low = int(klass.group(1)) * 100
            ranges.append((low, low + 99))
            continue
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise Invalid(expected, repr(part) if part else repr(text))
        low, high = int(first), int(last) if dash else int(first)
        if not 100 <= low <= high <= 599:
            raise Invalid(expected, repr(part))
        ranges.append((low, high))
    return tuple(ranges)


def status(low: int, high: int, what: str = "a status code") -> Callable[[str], int]:
    def parse(text: str) -> int:
        word = text.strip()
        if not word.isdigit() or not low <= int(word) <= high:
            raise Invalid(f"{what} from {low} to {high}", repr(word) if word else "nothing")
        return int(word)

    return parse
