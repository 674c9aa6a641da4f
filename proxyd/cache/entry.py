"""Between the messages and the store, sans-IO: what of a response is stored (its fields
without those `private` or `no-cache` name and without the per-connection ones), the facts
freshness needs from a stored response's fields, its purge tags, and the fields of a
response sent from the cache (Age, Cache-Status).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from proxyd.cache import cache_control
from proxyd.cache.cache_control import Directives
from proxyd.cache.freshness import EXPIRED, Stored
from proxyd.cache.store import Fields, Meta

Headers = Sequence[tuple[bytes, bytes]]

NOT_STORED = frozenset({b"age", b"cache-status", b"content-length", b"transfer-encoding"})
"""Fields the cache writes itself when it sends a stored response: its Age (RFC 9111
4.2.3), Cache-Status, and the framing (the stored body's length)."""


def directives(headers: Headers) -> Directives:
    return cache_control.parse(value for name, value in headers if name.lower() == b"cache-control")


def first(headers: Headers, name: bytes) -> bytes | None:
    for field, value in headers:
        if field.lower() == name:
            return value
    return None


def stored_fields(headers: Headers, response: Directives) -> Fields:
    """The fields to store: without NOT_STORED, and without the fields a qualified `private`
    or `no-cache` names (RFC 9111 5.2.2.4, 5.2.2.7: a shared cache may store the rest)."""
    left_out = set(NOT_STORED)
    for names in (response.private, response.no_cache):
        if names:
            left_out.update(name.encode("latin-1") for name in names)
    return tuple((name, value) for name, value in headers if name.lower() not in left_out)


def stored(meta: Meta) -> Stored:
    """What freshness needs of a stored response. A soft purge makes it stale from its time
    on (as if it had expired then)."""
    headers = meta.headers
    age_text = first(headers, b"age")
    age = 0
    if age_text is not None and age_text.strip().isdigit():
        age = int(age_text.strip())
    expires_text = first(headers, b"expires")
    expires = None
    if expires_text is not None:
        expires = cache_control.http_date(expires_text)
        if expires is None:
            expires = EXPIRED
    found = Stored(
        status=meta.status,
        directives=directives(headers),
        request_time=meta.request_time,
        response_time=meta.response_time,
        date=cache_control.http_date(first(headers, b"date")),
        age=age,
        expires=expires,
        last_modified=cache_control.http_date(first(headers, b"last-modified")),
    )
    return found


def tags(headers: Headers, names: Iterable[bytes]) -> tuple[str, ...]:
    """The purge tags in the fields `names` (Surrogate-Key: space-separated; Cache-Tag:
    comma-separated; either accepted in both)."""
    wanted = set(names)
    found: list[str] = []
    for name, value in headers:
        if name.lower() in wanted:
            text = value.decode("latin-1").replace(",", " ")
            found.extend(tag for tag in text.split() if tag not in found)
    return tuple(found[:256])
