"""Validation and variants for the cache, sans-IO: the secondary key of a response that
varies (RFC 9111 4.1), the headers a 304 freshens (3.2, 4.3.4), whether a 304 validates the
stored response (4.3.4), and the answer to a client's own conditional request from a stored
response (RFC 9110 13.1, 13.2.2).

Headers are (name, value) bytes pairs as the relay keeps them; names match in any case.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Final

from proxyd.cache.cache_control import http_date

Headers = Sequence[tuple[bytes, bytes]]

VARY_STAR: Final = None
"""vary_key()'s answer for `Vary: *`: no request matches (never served from cache)."""

_UNORDERED: Final = frozenset(
    {b"accept", b"accept-encoding", b"accept-language", b"accept-charset"}
)
"""Fields whose list order carries no meaning (the q-values do: RFC 9110 12.4.2), so that
`gzip, br` and `br, gzip` share a variant."""
_CASELESS: Final = frozenset({b"accept-encoding", b"accept-language", b"accept-charset"})
"""Fields whose values are case-insensitive tokens (codings, language tags, charsets)."""

NOT_FRESHENED: Final = frozenset(
    {
        b"content-length",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
"""Fields a 304 does not replace in the stored response (RFC 9111 3.2: Content-Length, the
fields the stored content depends on, and the hop-by-hop fields, which are never stored)."""


def values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of field `name` (lower case), in order."""
    return [value for field, value in headers if field.lower() == name]


def vary_names(response_headers: Headers) -> tuple[bytes, ...] | None:
    """The request fields a response varies on, lower case, sorted and once each; None for
    `Vary: *`."""
    names: set[bytes] = set()
    for value in values(response_headers, b"vary"):
        for part in value.split(b","):
            name = part.strip().lower()
            if name == b"*":
                return VARY_STAR
            if name:
                names.add(name)
    return tuple(sorted(names))


def vary_key(names: Iterable[bytes], request_headers: Headers) -> tuple[bytes, ...]:
    """The secondary key of a request for a response that varies on `names` (vary_names'):
    each field's values, normalised so that equivalent requests share a variant (RFC 9111
    4.1: "normalizing both header values in a way that is known to have identical
    semantics"): lines joined, white space around commas dropped, tokens lower-cased where
    they are case-insensitive, list order ignored where it carries no meaning. An absent
    field is distinct from an empty one."""
    key: list[bytes] = []
    for name in names:
        found = values(request_headers, name)
        if not found:
            key.append(b"\x00")  # absent
            continue
        parts = [part.strip() for value in found for part in value.split(b",")]
        parts = [part for part in parts if part]
        if name in _CASELESS:
            parts = [part.lower() for part in parts]
        if name in _UNORDERED:
            parts = sorted(parts)
        key.append(b",".join(b" ".join(part.split()) for part in parts))
    return tuple(key)


def freshen(stored: Headers, update: Headers) -> list[tuple[bytes, bytes]]:
    """The stored response's fields updated by a 304's (or a HEAD's): each field the update
    carries replaces the stored field of that name, except NOT_FRESHENED (RFC 9111 3.2)."""
    replaced = {field.lower() for field, _ in update if field.lower() not in NOT_FRESHENED}
    kept = [(field, value) for field, value in stored if field.lower() not in replaced]
    return kept + [(field, value) for field, value in update if field.lower() in replaced]


def validates(stored: Headers, not_modified: Headers) -> bool:
    """Whether a 304 is about the stored response (RFC 9111 4.3.4): a strong ETag in the
    304 must be the stored one's; else a Last-Modified must match; a 304 with neither
    validator applies to the one stored response asked about."""
    etag = _first(not_modified, b"etag")
    if etag is not None and not etag.startswith(b"W/"):
        return _first(stored, b"etag") == etag
    if etag is not None:
        stored_etag = _first(stored, b"etag")
        return stored_etag is not None and _opaque(stored_etag) == _opaque(etag)
    modified = _first(not_modified, b"last-modified")
    if modified is not None:
        return http_date(_first(stored, b"last-modified")) == http_date(modified)
    return True


class Conditional(enum.Enum):
    NONE = "no condition"
    NOT_MODIFIED = "304"
    """The client's copy is current: answer 304 (with the validators and caching fields)."""
    FULL = "200"
    """The condition fails: send the stored response."""


def client_condition(method: bytes, request: Headers, stored: Headers) -> Conditional:
    """A client's conditional GET or HEAD against a stored response (RFC 9110 13.2.2's
    order): If-None-Match with the weak comparison, else If-Modified-Since against the
    stored Last-Modified (ignored when If-None-Match is present or the date is invalid)."""
    if method not in (b"GET", b"HEAD"):
        return Conditional.NONE
    none_match = values(request, b"if-none-match")
    if none_match:
        etag = _first(stored, b"etag")
        tags = [tag.strip() for value in none_match for tag in value.split(b",")]
        if b"*" in tags:
            return Conditional.NOT_MODIFIED
        if etag is not None and any(_opaque(tag) == _opaque(etag) for tag in tags if tag):
            return Conditional.NOT_MODIFIED
        return Conditional.FULL
    since = http_date(_first(request, b"if-modified-since"))
    if since is None:
        return Conditional.NONE
    modified = http_date(_first(stored, b"last-modified")) or http_date(_first(stored, b"date"))
    if modified is not None and modified <= since:
        return Conditional.NOT_MODIFIED
    return Conditional.FULL


def _first(headers: Headers, name: bytes) -> bytes | None:
    for field, value in headers:
        if field.lower() == name:
            return value.strip()
    return None


def _opaque(tag: bytes) -> bytes:
    """An entity tag without its weak prefix: the weak comparison (RFC 9110 8.8.3.2)."""
    return tag[2:] if tag.startswith(b"W/") else tag
