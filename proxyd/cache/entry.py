"""Between the messages and the store, sans-IO: what of a response is stored (its fields
without those `private` or `no-cache` name and without the per-connection ones), the facts
freshness needs from a stored response's fields, its purge tags, and the fields of a
response sent from the cache (Age, Cache-Status).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from proxyd.cache import cache_control
from proxyd.cache.cache_control import Directives
from proxyd.cache.freshness import EXPIRED, Stored
from proxyd.cache.store import Fields, Meta

Headers = Sequence[tuple[bytes, bytes]]

NOT_STORED = frozenset({b"content-length", b"transfer-encoding"})
"""Fields the cache writes itself when it sends a stored response: the framing (the stored
body's length). The Age received is stored: the current age starts from it (RFC 9111 4.2.3);
so are the Cache-Status members of the caches before this one (RFC 9211 2: kept, this
cache's member added after them)."""
NOT_SENT = NOT_STORED | {b"age"}
"""Fields of a stored response replaced when it is sent: with them, the Age it has now."""


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


_STORED_MEMO: Final = 4096
"""The parsed facts of this many stored responses are kept (_parsed), so that a hit parses
no Cache-Control nor date: a hit on a small response costs about a third less."""
_parsed: dict[int, tuple[Meta, Stored]] = {}


def stored(meta: Meta) -> Stored:
    """What freshness needs of a stored response. A `no-cache` that names fields asks for
    revalidation only of a response sent with them (RFC 9111 5.2.2.4): they are not stored
    (stored_fields), so the rest is reused as its freshness says. Memoized by the Meta
    object (the stores hand out the same one until it changes)."""
    found = _parsed.get(id(meta))
    if found is not None and found[0] is meta:
        return found[1]
    if len(_parsed) >= _STORED_MEMO:
        _parsed.clear()
    facts = _stored(meta)
    _parsed[id(meta)] = (meta, facts)
    return facts


def _stored(meta: Meta) -> Stored:
    headers = meta.headers
    response = directives(headers)
    if response.no_cache:
        response = attrs.evolve(response, no_cache=None)
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
        directives=response,
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
