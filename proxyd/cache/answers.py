"""Responses sent from the cache (proxyd.filters.cache): a stored response as an Answer whose
body streams from its store (proxyd.cache.source.Pump), with Age and Cache-Status (RFC 9111
4.2.3, RFC 9211); a client's conditional request answered 304 and a Range answered 206 or
416 from it; a collapsed request answered from the fetch it waited on while that streams.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

from proxyd.cache import entry
from proxyd.cache.fills import Fill
from proxyd.cache.freshness import current_age, freshness_lifetime
from proxyd.cache.instance import Cache
from proxyd.cache.ranges import UNSATISFIABLE, Span, if_range_holds, ranges, unsatisfied_range
from proxyd.cache.source import Pump
from proxyd.cache.status import cache_status
from proxyd.cache.store import Meta, Store
from proxyd.cache.validation import VARY_STAR, Conditional, client_condition, vary_key, vary_names
from proxyd.compress.negotiate import accepted_codings
from proxyd.filters.api import Answer, Headers

_log = Logger(namespace="proxyd.cache")

NOT_MODIFIED_FIELDS: Final = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
    | {b"last-modified", b"age", b"cache-status"}
)
"""The fields of a 304 sent from the cache (RFC 9110 15.4.5)."""


def matching(metas: object, request_headers: Headers) -> Meta | None:
    """The stored response whose variant this request selects (RFC 9111 4.1)."""
    for meta in metas:  # type: ignore[attr-defined]
        names = vary_names(meta.headers)
        if names is VARY_STAR:
            continue
        if not names:
            if not meta.variant:
                return meta  # type: ignore[no-any-return]
            continue
        if variant(names, request_headers) == meta.variant:
            return meta  # type: ignore[no-any-return]
    return None


def variant(names: tuple[bytes, ...], request_headers: Headers) -> bytes:
    """The secondary key of a request, as stored (Meta.variant). Accept-Encoding counts as
    the set of CODINGS it accepts (accepted_codings: q above 0, by name or by `*`), so that
    `gzip, deflate, br` and `gzip, deflate, br, zstd;q=0` share a variant: right for an
    origin (and proxyd's compression) that choose a coding by what the client accepts."""
    if not names:
        return b""
    if b"accept-encoding" in names:
        request_headers = _codings(request_headers)
    return b"\x01".join(vary_key(names, request_headers))


CODINGS: Final = ("br", "deflate", "gzip", "zstd")
"""The content codings Accept-Encoding is keyed on."""


def _codings(request_headers: Headers) -> Headers:
    """`request_headers` with its Accept-Encoding (if any) replaced by the CODINGS it
    accepts, in order (none accepted: an empty field, still distinct from no field)."""
    found = [value for name, value in request_headers if name.lower() == b"accept-encoding"]
    if not found:
        return request_headers
    weights = accepted_codings(b",".join(found).decode("latin-1"))
    anything = weights.get("*", 0.0)
    accepted = ",".join(coding for coding in CODINGS if weights.get(coding, anything) > 0)
    fields = [field for field in request_headers if field[0].lower() != b"accept-encoding"]
    return [*fields, (b"accept-encoding", accepted.encode("ascii"))]


def age_of(meta: Meta, now: float) -> float:
    return current_age(entry.stored(meta), now)


def serve(
    cache: Cache,
    reactor: object,
    method: bytes,
    request_headers: Headers,
    meta: Meta,
    age: float,
    *,
    forwarded: bool = False,
) -> Answer | None:
    """`meta` from the store; None when its body is gone (a miss after all). `forwarded`:
    the request went to the origin first (a revalidation, an origin error): Cache-Status
    says fwd=stale, else hit with the ttl left (negative when stale)."""
    store = cache.store
    fields = sent_fields(cache, meta, age, forwarded)
    condition = client_condition(method, request_headers, meta.headers)
    if condition is Conditional.NOT_MODIFIED and meta.status == 200:
        return Answer(304, headers=[f for f in fields if f[0].lower() in NOT_MODIFIED_FIELDS])
    body = store.open(meta)
    if body is None:
        return None
    status = meta.status
    span = None
    if status == 200 and method == b"GET":
        if entry.first(fields, b"accept-ranges") is None:
            fields.append((b"Accept-Ranges", b"bytes"))
        span = _range(request_headers, meta)
    if span == UNSATISFIABLE:
        body.close()
        fields = [f for f in fields if f[0].lower() != b"content-type"]
        fields.append((b"Content-Range", unsatisfied_range(meta.length)))
        return Answer(416, headers=fields)
    if isinstance(span, Span):
        fields.append((b"Content-Range", span.content_range))
        return Answer(206, headers=fields, source=Pump(reactor, body, span.first, span.size))
    source = Pump(
        reactor,
        body,
        0,
        meta.length,
        checksum=None if body.verified else meta.checksum,
        corrupt=lambda: _drop(store, meta),
    )
    return Answer(status, headers=fields, source=source)


def serve_growing(cache: Cache, reactor: object, fill: Fill, meta: Meta) -> Answer:
    """A collapsed request answered from the fetch it waited on, as it streams in."""
    writer = fill.writer
    assert writer is not None
    fields = [f for f in meta.headers if f[0].lower() not in entry.NOT_STORED]  # Age as received
    fields.append(
        (b"Cache-Status", cache_status(cache.config.status_name, fwd="miss", collapsed=True))
    )
    source = Pump(reactor, writer.body(), 0, fill.length, growing=fill)
    return Answer(meta.status, headers=fields, source=source)


def sent_fields(cache: Cache, meta: Meta, age: float, forwarded: bool) -> Headers:
    fields = [f for f in meta.headers if f[0].lower() not in entry.NOT_SENT]
    fields.append((b"Age", b"%d" % max(0, int(age))))
    name = cache.config.status_name
    if forwarded:
        fields.append((b"Cache-Status", cache_status(name, fwd="stale")))
    else:
        fraction = heuristic_fraction(cache)
        ttl = freshness_lifetime(entry.stored(meta), heuristic_fraction=fraction) - age
        fields.append((b"Cache-Status", cache_status(name, hit=True, ttl=ttl)))
    return fields


def heuristic_fraction(cache: Cache) -> float:
    return 0.1 if cache.config.heuristic else 0.0


def set_status(
    answer: Answer, cache: Cache, *, fwd: str, fwd_status: int, stored: bool = False
) -> None:
    """Cache-Status of a response sent from the cache after the request went forward."""
    value = cache_status(cache.config.status_name, fwd=fwd, fwd_status=fwd_status, stored=stored)
    own = [i for i, field in enumerate(answer.headers) if field[0].lower() == b"cache-status"]
    if own:  # this cache's member is the last one (sent_fields'): the caches' before it stay
        answer.headers[own[-1]] = (b"Cache-Status", value)
    else:
        answer.headers.append((b"Cache-Status", value))


def _range(headers: Headers, meta: Meta) -> Span | str | None:
    wanted = entry.first(headers, b"range")
    if wanted is None:
        return None
    if not if_range_holds(
        entry.first(headers, b"if-range"),
        entry.first(meta.headers, b"etag"),
        entry.first(meta.headers, b"last-modified"),
    ):
        return None
    return ranges(wanted, meta.length)


def _drop(store: Store, meta: Meta) -> None:
    """A stored body failed its check: forget it."""
    _log.warn("cache: {uri}: stored body failed its checksum; dropped", uri=meta.url)
    store.remove(meta.key, meta.variant)
