"""Parsers of the security keys of listeners and routes (docs/security.md), and the checks of
`[rule NAME]` and `[cors NAME]` sections and of the security_headers keys across a section.
Each parser raises Invalid (one problem) or Invalids (one per bad line).

The section-level builders (`rule_section`, `cors_section`, `security_headers_group`) are
called by proxyd.config.cross_checks once every key has parsed on its own."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from proxyd.access.networks import AccessList, ListError, parse_rules
from proxyd.config import values as v
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.config.ini import Section
from proxyd.config.security_model import OFF, RULE_MATCHES, Rate, SecurityHeadersConfig
from proxyd.filters import cors as cors_filter
from proxyd.filters import security_headers as hardening

Problems = list[tuple[str | None, Invalid | v.Invalids]]
"""(key, what is wrong): problems found across a section's keys."""


# Access lists.


def access_list(text: str, base_dir: str) -> AccessList:
    """`access`: lines of `allow|deny ADDRESS|CIDR|all` or `allow|deny file PATH` (relative to
    the config file's directory); a file's problems name the file and its line."""
    try:
        found = parse_rules(v.each_line(text), base_dir)
    except ListError as e:
        where = e.found
        if e.path is not None and e.file_line is not None:
            where = f"{e.found} in {e.path} line {e.file_line}"
        raise Invalid(e.expected, where, e.hint, value_line=e.line) from None
    if not found.rules:
        raise Invalid("rules such as 'allow 10.0.0.0/8' and 'deny all', one a line", "none")
    return found


# Request limits.


def allowed_methods(text: str) -> frozenset[str]:
    """`GET HEAD POST` (or separated by commas): the methods served."""
    words = text.replace(",", " ").split()
    if not words:
        raise Invalid("method names such as GET HEAD POST", "nothing")
    return frozenset(v.method(word) for word in words)


# Response hardening.


def header_names(text: str) -> tuple[str, ...]:
    """Header field names separated by spaces or lines, lower case."""
    names = [v.header_name(word).lower() for word in text.split()]
    if not names:
        raise Invalid("header field names such as X-Powered-By", "nothing")
    return tuple(dict.fromkeys(names))


def server_header(text: str) -> str:
    """`off` ("": no Server field) or the Server value proxyd sends."""
    value = text.strip()
    if value == OFF:
        return ""
    if not re.fullmatch(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?", value):
        raise Invalid(
            "a Server value (visible ASCII) or 'off'", repr(value) if value else "nothing"
        )
    return value


_STATUS_CLASS = re.compile(r"([45])xx", re.IGNORECASE)


def intercept_errors(text: str) -> frozenset[int]:
    """`off`, or statuses and classes from 400 to 599: `5xx 404 403`."""
    words = text.replace(",", " ").split()
    if words == [OFF]:
        return frozenset()
    expected = "'off', or statuses and classes from 400 to 599 such as 5xx 404"
    if not words:
        raise Invalid(expected, "nothing")
    statuses: set[int] = set()
    for word in words:
        klass = _STATUS_CLASS.fullmatch(word)
        if klass:
            low = int(klass.group(1)) * 100
            statuses.update(range(low, low + 100))
        elif word.isdigit() and 400 <= int(word) <= 599:
            statuses.add(int(word))
        else:
            raise Invalid(expected, repr(word))
    return frozenset(statuses)


SECURITY_HEADER_KEYS: Mapping[str, str] = {
    "frame_options": "frame_options",
    "referrer_policy": "referrer_policy",
    "content_security_policy": "content_security_policy",
    "frame_ancestors": "frame_ancestors",
    "security_headers_override": "override",
}
"""The keys that go with `security_headers = on`, and their SecurityHeadersConfig fields."""

DEFAULT_HSTS = "max-age=31536000"
"""[https] with security_headers = on and no hsts key: a year."""


def security_headers_group(section: Section, fields: dict[str, Any]) -> Problems:
    """Make fields["security_headers"] a SecurityHeadersConfig from `security_headers` and its
    keys (which go with `security_headers = on` only); on [https], hsts defaults to a year
    with it."""
    problems: Problems = []
    enabled = fields.pop("security_headers", None)
    values = {
        field: fields.pop(key) for key, field in SECURITY_HEADER_KEYS.items() if key in fields
    }
    if not enabled:
        for key in SECURITY_HEADER_KEYS:
            if key in section.entries:
                found = "security_headers = off" if enabled is False else "no security_headers"
                problems.append((key, Invalid(f"'{key}' only with security_headers = on", found)))
        if enabled is False and section.kind == "route":
            fields["security_headers"] = SecurityHeadersConfig(enabled=False)
        return problems
    settings = {
        "frame_options": values.get("frame_options", "SAMEORIGIN"),
        "referrer_policy": values.get("referrer_policy", "strict-origin-when-cross-origin"),
        "content_security_policy": values.get("content_security_policy"),
        "frame_ancestors": values.get("frame_ancestors"),
    }
    try:
        preset = hardening.preset(**settings)
    except Invalid as e:
        return [("frame_ancestors", e)]
    fields["security_headers"] = SecurityHeadersConfig(
        enabled=True, override=bool(values.get("override", False)), fields=preset, **settings
    )
    if section.kind == "https" and "hsts" not in section.entries:
        fields["hsts"] = DEFAULT_HSTS
    return problems


def frame_options(text: str) -> str | None:
    return hardening.parse_frame_options(text)


def referrer_policy(text: str) -> str | None:
    return hardening.parse_referrer_policy(text)


def content_security_policy(text: str) -> str | None:
    return hardening.parse_content_security_policy(" ".join(text.split()))


def frame_ancestors(text: str) -> str | None:
    return hardening.parse_frame_ancestors(text)


# [rule NAME].


def rule_match(text: str) -> tuple[str, str | None]:
    """`path | query | uri | method | user_agent | header NAME`."""
    words = text.split()
    expected = f"one of {one_of(RULE_MATCHES)} ('header NAME': that field's value)"
    if not words:
        raise Invalid(expected, "nothing")
    kind = words[0]
    if kind not in RULE_MATCHES:
        raise Invalid(expected, repr(text.strip()), did_you_mean(kind, RULE_MATCHES))
    if kind == "header":
        if len(words) != 2:
            raise Invalid("'header NAME'", repr(text.strip()))
        return kind, v.header_name(words[1]).lower()
    if len(words) != 1:
        raise Invalid(expected, repr(text.strip()))
    return kind, None


def pattern(text: str) -> re.Pattern[str]:
    """A Python regular expression, searched (not anchored unless it says ^)."""
    value = text.strip()
    if not value:
        raise Invalid("a regular expression", "nothing")
    try:
        return re.compile(value)
    except re.error as e:
        raise Invalid("a valid regular expression", f"{value!r} ({e})") from None


def rule_section(section: Section, fields: dict[str, Any]) -> Problems:
    """`match` gives the rule's `match` and `header` fields."""
    match = fields.pop("match", None)
    if match is not None:
        fields["match"], fields["header"] = match
    return []


# [cors NAME].

_CORS_LISTS = ("methods", "headers", "expose_headers")


def words_list(text: str) -> tuple[str, ...]:
    """Items separated by spaces, commas or lines."""
    items = tuple(text.replace(",", " ").split())
    if not items:
        raise Invalid("one or more names", "nothing")
    return items


def origin_patterns(text: str) -> cors_filter.OriginPatterns:
    """`origins`: one or more a line (proxyd.filters.cors.parse_origin_patterns)."""
    items: list[str] = []
    lines: list[int] = []
    for index, line in v.each_line(text):
        for word in line.split():
            items.append(word)
            lines.append(index)
    try:
        return cors_filter.parse_origin_patterns(items)
    except Invalid as e:
        where = lines[e.value_line] if e.value_line < len(lines) else 0
        raise Invalid(e.expected, e.found, e.hint, value_line=where) from None


def cors_section(section: Section, fields: dict[str, Any]) -> Problems:
    """The section's CorsPolicy; CorsPolicy's own checks (`*` with credentials...) are
    reported on the key they name."""
    name = fields.pop("name")
    origins = fields.pop("origins")
    if "methods" in fields:
        fields["methods"] = frozenset(fields["methods"])
    try:
        policy = cors_filter.CorsPolicy(origins, **fields)
    except Invalid as e:
        key, _, expected = e.expected.partition(": ")
        key = key.removeprefix("cors_")
        if key not in ("origins", *_CORS_LISTS, "credentials", "max_age") or not expected:
            key, expected = "origins", e.expected
        expected = expected.replace("cors_credentials", "credentials")
        return [(key, Invalid(expected, e.found, e.hint))]
    fields.clear()
    fields.update(name=name, policy=policy)
    return []


def cors_max_age(text: str) -> int:
    return int(v.duration(text))


# Per-client limits (L4 listeners).

_RATE = re.compile(r"(\d+)\s*/\s*(s|m)")


def rate(text: str) -> Rate:
    """`N/s` or `N/m`, N from 1."""
    match = _RATE.fullmatch(text.strip())
    if not match or int(match.group(1)) < 1:
        raise Invalid("a rate such as 10/s or 100/m", repr(text.strip()))
    return Rate(int(match.group(1)), 1 if match.group(2) == "s" else 60)


def file_path(text: str, base_dir: str) -> str:
    """A file path, relative to the config file's directory."""
    value = text.strip()
    if not value:
        raise Invalid("a file path", "nothing")
    return os.path.join(base_dir, value)
