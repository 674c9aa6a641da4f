"""Parsers for single configuration values. Each raises Invalid(expected, found, hint).

Here: workers, log targets, origins, bearer tokens, networks and error pages. The basic
parsers are in proxyd.config.scalars, addresses and endpoints in proxyd.config.endpoints, HTTP
values in proxyd.config.http_values, health checks in proxyd.config.checks: they are imported
here too, so that `values.NAME` finds every parser."""

from __future__ import annotations

import ipaddress
import os
import re

from proxyd.config.checks import (
    CHECK_KINDS,
    check,
)
from proxyd.config.endpoints import (
    address,
    endpoint,
    is_local_endpoint,
    servers,
    split_endpoint,
    udp_endpoint,
)
from proxyd.config.errors import Invalid
from proxyd.config.http_values import (
    TCHAR,
    cookie_name,
    header_name,
    host_header,
    is_hostname,
    method,
    methods,
    request_path,
    status,
    status_ranges,
    token,
)
from proxyd.config.scalars import (
    Invalids,
    boolean,
    choice,
    collect,
    duration,
    each_line,
    integer,
    integer_or_unlimited,
    positive_duration,
    raise_all,
    size,
    words,
)

__all__ = [
    "CHECK_KINDS",
    "MAX_WORKERS",
    "MIN_BEARER",
    "TCHAR",
    "Invalid",
    "Invalids",
    "Network",
    "address",
    "bearer_token",
    "boolean",
    "check",
    "choice",
    "collect",
    "cookie_name",
    "duration",
    "each_line",
    "endpoint",
    "error_pages",
    "header_name",
    "host_header",
    "integer",
    "integer_or_unlimited",
    "is_hostname",
    "is_local_endpoint",
    "log_target",
    "method",
    "methods",
    "networks",
    "origins",
    "positive_duration",
    "raise_all",
    "request_path",
    "servers",
    "size",
    "split_endpoint",
    "status",
    "status_ranges",
    "token",
    "udp_endpoint",
    "words",
    "workers",
]

MAX_WORKERS = 256


def workers(text: str) -> int:
    """`auto` (one per CPU this process may run on) or a number of worker processes."""
    if text.strip() == "auto":
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    try:
        return integer(1, MAX_WORKERS)(text)
    except Invalid:
        raise Invalid(f"'auto' or a whole number from 1 to {MAX_WORKERS}", repr(text)) from None


def log_target(text: str) -> str:
    text = text.strip()
    if not text:
        raise Invalid("'-' (stdout), 'off' or a file path", "nothing")
    return text


_ORIGIN = re.compile(r"^(?:null|[a-z][a-z0-9+.-]*://[^/\s?#]+)$")


def origins(text: str) -> tuple[str, ...]:
    """Origin values (RFC 6454 serialisation: `scheme://host[:port]`, or `null`), one or more
    a line; `*` in one matches any characters, as in `https://*.example.com`."""
    result: list[str] = []
    for item in text.split():
        origin = item.lower().rstrip("/")
        if not _ORIGIN.match(origin):
            raise Invalid(
                "origins such as https://chat.example.com or https://*.example.com", repr(item)
            )
        result.append(origin)
    if not result:
        raise Invalid("at least one origin", "nothing")
    return tuple(result)


_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_BEARER = 16


def bearer_token(text: str) -> str:
    """A bearer token (RFC 6750 2.1, b64token) of at least MIN_BEARER characters."""
    word = text.strip()
    if not _BEARER.fullmatch(word) or len(word) < MIN_BEARER:
        raise Invalid(
            f"a token of at least {MIN_BEARER} characters (letters, digits and -._~+/,"
            " then any '=')",
            f"{len(word)} characters" if _BEARER.fullmatch(word) else "other characters",
        )
    return word


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(text: str) -> tuple[Network, ...]:
    """Addresses or CIDR networks, separated by white space or newlines."""
    result: list[Network] = []
    errors: list[Invalid] = []
    for index, line in each_line(text):
        for word in line.split():
            try:
                result.append(ipaddress.ip_network(word, strict=True))
            except ValueError as e:
                collect(
                    errors,
                    index,
                    Invalid("an IP address or network such as 10.0.0.0/8", f"{word!r} ({e})"),
                )
    raise_all(errors)
    return tuple(result)


def error_pages(text: str, base_dir: str) -> tuple[tuple[int, str], ...]:
    """Lines of `STATUS [STATUS...] FILE`; a relative FILE is relative to `base_dir` (the
    config file's directory). Every file must be readable now."""
    result: list[tuple[int, str]] = []
    seen: set[int] = set()
    errors: list[Invalid] = []
    parse_status = status(400, 599, "an error status")
    for index, line in each_line(text):
        try:
            parts = words(line, "an error page line")
            if len(parts) < 2:
                raise Invalid(
                    "STATUS [STATUS...] FILE such as '502 503 errors/5xx.html'", repr(line)
                )
            *codes, file = parts
            statuses = [parse_status(code) for code in codes]
            for code in statuses:
                if code in seen:
                    raise Invalid("each status once", f"{code} twice")
                seen.add(code)
            full = os.path.join(base_dir, file)
            try:
                with open(full, "rb"):
                    pass
            except OSError as e:
                raise Invalid("a readable file", f"{full!r} ({e.strerror or e})") from None
            result.extend((code, full) for code in statuses)
        except Invalid as e:
            collect(errors, index, e)
    raise_all(errors)
    if not result:
        raise Invalid("STATUS [STATUS...] FILE lines", "nothing")
    return tuple(result)
