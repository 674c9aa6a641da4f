"""`cache = NAME`: a shared HTTP cache (RFC 9111) on a route, row 18 of the chain.

Request head: unsafe methods mark the exchange for invalidation (RFC 9111 4.4: the target
URI, Location and Content-Location of a non-error response); `PURGE` (with the [cache]'s
`purge_method`) purges the URL it names; GET and HEAD are looked up by their cache key
(proxyd.cache.keys) and the variant of Vary (4.1). A stored response is served when fresh
(or stale as allowed: max-stale, stale-while-revalidate with a refresh in the background,
`use_stale = updating`), else revalidated with its validators. A miss waits for the same
key's fetch in progress (proxyd.cache.fills) or becomes that fetch.

Response head: a 304 that validates the stored response freshens it (4.3.4) and it is
served; an origin error or timeout may be answered with the stale response
(stale-if-error, `use_stale`); a storable response (proxyd.cache.freshness.storable) begins
its entry, its body stored as it streams to the client (response_body), committed at its
end, while collapsed requests read it as it grows.

Every response says what the cache did in Cache-Status (RFC 9211) and, from the cache, Age.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from proxyd.cache import answers, entry
from proxyd.cache.cache_control import Directives
from proxyd.cache.fills import Fill
from proxyd.cache.freshness import Action, reuse, storable
from proxyd.cache.instance import Cache, Purge
from proxyd.cache.keys import cache_key, effective_uri, holds, same_origin
from proxyd.cache.status import cache_status
from proxyd.cache.store import Meta, Writer
from proxyd.cache.validation import (
    VARY_STAR,
    freshen,
    validates,
    vary_names,
)
from proxyd.filters.api import Answer, Headers, HeadResult, remove_header
from proxyd.filters.internal import RelayExchange

_log = Logger(namespace="proxyd.cache")

STATE: Final = "cache"
"""exchange.vars' key for the cache's state of the exchange."""
LOGGED: Final = "cache_status"
"""exchange.vars' key of what the access log's `cache` says: hit, stale, revalidated,
collapsed, miss, bypass, refresh (a background refresh)."""
REFRESH: Final = "cache.refresh"
"""exchange.vars' key of a background request: (the stored Meta to revalidate, or None for
a GET made for a HEAD that missed; its Fill)."""

_SAFE: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_CONDITIONS: Final = (b"if-none-match", b"if-modified-since", b"range", b"if-range")
_POLL: Final = 0.02
"""How often a request waiting on another process's fetch looks again (seconds)."""
_ERROR_STALE: Final = {502: "error", 503: "error", 504: "timeout"}
"""proxyd's own answers when no server answered, by status: the use_stale word that
allows serving stale instead."""


@attrs.define
class _State:
    key: bytes
    uri: str
    request: Directives
    request_time: float
    conditions: Headers
    """The client's own If-None-Match, If-Modified-Since, Range and If-Range (the request
    sent upstream carries the cache's)."""
    meta: Meta | None = None
    """The stored response being revalidated."""
    stale_if_error: bool = False
    fwd: str = "miss"
    fill: Fill | None = None
    writer: Writer | None = None
    no_store: str | None = None
    collapsed: bool = False
    head_get: bool = False
    """A HEAD waiting on the GET made for it (_get_for_head)."""


class CacheFilter:
    """Built in where a listener or route has `cache`. Not a subclass of
    proxyd.filters.api.Filter, which is not compiled: the chain takes any object with the
    phase methods, and this one compiles as a native class."""

    keeps_body_length = True

    def __init__(self, cache: Cache, reactor: Any) -> None:
        self.name = "cache"
        self.cache = cache
        self.config = cache.config
        self.reactor = reactor

    # Request.

    def request_head(self, exchange: RelayExchange) -> HeadResult:
        method = exchange.request.method
        if method not in (b"GET", b"HEAD"):
            if method == b"PURGE" and self.config.purge_method:
                return self._purge_request(exchange)
            if method not in _SAFE:
                exchange.vars[STATE] = method
            return None
        headers = exchange.request_headers
        key, uri = cache_key(
            exchange.scheme, exchange.host, exchange.path, exchange.query, headers, self.config.key
        )
        request = entry.directives(headers)
        conditions = [field for field in headers if field[0].lower() in _CONDITIONS]
        state = _State(key, uri, request, self.reactor.seconds(), conditions)
        exchange.vars[STATE] = state
        exchange.vars[LOGGED] = "miss"
        refresh = exchange.vars.get(REFRESH)
        if refresh is not None:
            exchange.vars[LOGGED] = "refresh"
            state.meta, state.fill = refresh
            if state.meta is None:
                _strip(headers, _CONDITIONS)
            else:
                state.fwd = "stale"
                self._conditional(exchange, state.meta)
            return None
        counters = self.cache.counters
        bypass = holds(self.config.bypass, headers, exchange.query)
        if bypass is not None:
            counters.bypassed += 1
            state.fwd = "bypass"
            exchange.vars[LOGGED] = "bypass"
            state.no_store = holds(self.config.no_store, headers, exchange.query)
            return None
        state.no_store = holds(self.config.no_store, headers, exchange.query)
        return self._lookup(exchange, state, retry=False)

    def _lookup(self, exchange: RelayExchange, state: _State, *, retry: bool) -> HeadResult:
        cache = self.cache
        store = cache.store
        headers = exchange.request_headers
        metas = store.variants(state.key)
        meta = answers.matching(metas, headers)
        request = state.request
        now = self.reactor.seconds()
        if meta is not None:
            found = reuse(entry.stored(meta), request, now, heuristic_fraction=self._fraction)
            action = found.action
            soft_purged = meta.invalid_after is not None and now >= meta.invalid_after
            if soft_purged and action is Action.SERVE and found.fresh:
                action = Action.REVALIDATE  # stale from the purge on
            if action is not Action.REVALIDATE:
                answer = self._serve(exchange, meta, found.age, fresh=found.fresh)
                if answer is not None:
                    if action is Action.SERVE_AND_REFRESH:
                        self._refresh(exchange, state, meta)
                    return answer
            else:
                state.meta = meta
                state.stale_if_error = found.stale_if_error
                state.fwd = "stale"
                if "updating" in self.config.use_stale and cache.fills.get(state.key):
                    answer = self._serve(exchange, meta, found.age, fresh=False)
                    if answer is not None:
                        return answer
        else:
            state.fwd = "vary-miss" if metas else "uri-miss"
        if request.only_if_cached:
            return Answer(
                504,
                b"504 Gateway Timeout\n",
                [(b"Cache-Status", cache_status(self.config.status_name, fwd="miss"))],
            )
        fill = cache.fills.get(state.key)
        if fill is None and not retry and self._get_for_head(exchange, state):
            fill = cache.fills.get(state.key)
        if fill is not None and not retry:
            waiting = fill.wait(self.reactor, self.config.lock_timeout)
            return waiting.addCallback(self._waited, exchange, state)
        if fill is None:
            if cache.fills.claim(state.key, self.config.lock_timeout):
                state.fill = cache.fills.begin(state.key, claimed=True)
            elif not retry:
                return self._wait_elsewhere(exchange, state)
            cache.counters.misses += 1
        if state.meta is not None:
            self._conditional(exchange, state.meta)
        else:
            _strip(exchange.request_headers, (b"range", b"if-range"))
        return None

    def _wait_elsewhere(self, exchange: RelayExchange, state: _State) -> Deferred[Any]:
        """Another process of the disk tier fetches this key: look again once it has stored
        it, let go of its lock, or lock_timeout passed (then to the origin)."""
        reactor = self.reactor
        fills = self.cache.fills
        store = self.cache.store
        ttl = self.config.lock_timeout
        deadline = reactor.seconds() + ttl
        headers = exchange.request_headers
        call: list[Any] = []
        waiting: Deferred[None] = Deferred(lambda _: call[0].cancel() if call else None)

        def poll() -> None:
            call.clear()
            stored = answers.matching(store.variants(state.key), headers) is not None
            if stored or not fills.elsewhere(state.key, ttl) or reactor.seconds() >= deadline:
                waiting.callback(None)
            else:
                call.append(reactor.callLater(_POLL, poll))

        call.append(reactor.callLater(_POLL, poll))
        return waiting.addCallback(lambda _: self._lookup(exchange, state, retry=True))

    @property
    def _fraction(self) -> float:
        return answers.heuristic_fraction(self.cache)

    def _serve(
        self,
        exchange: RelayExchange,
        meta: Meta,
        age: float,
        *,
        fresh: bool,
        forwarded: bool = False,
    ) -> Answer | None:
        """`meta` answered from the store (proxyd.cache.answers.serve), counted a hit when
        `fresh`, else stale served."""
        answer = answers.serve(
            self.cache,
            self.reactor,
            exchange.request.method,
            exchange.vars[STATE].conditions,
            meta,
            age,
            forwarded=forwarded,
        )
        if answer is not None:
            self._count_hit(fresh)
            if forwarded:
                exchange.vars[LOGGED] = "revalidated" if fresh else "stale"
            else:
                exchange.vars[LOGGED] = "hit" if fresh else "stale"
        return answer

    def _waited(
        self, fill: Fill | None, exchange: RelayExchange, state: _State
    ) -> Answer | Deferred[Any] | None:
        """The fetch this request waited on has its head (or will not be stored)."""
        if fill is not None and fill.writer is not None and fill.meta is not None:
            meta = fill.meta
            if answers.matching([meta], exchange.request_headers) is meta:
                answer = answers.serve_growing(self.cache, self.reactor, fill, meta)
                if state.head_get:
                    answers.set_status(
                        answer, self.cache, fwd=state.fwd, fwd_status=meta.status, stored=True
                    )
                else:
                    self.cache.counters.collapsed += 1
                    state.collapsed = True
                    exchange.vars[LOGGED] = "collapsed"
                return answer
        result = self._lookup(exchange, state, retry=True)
        if isinstance(result, Deferred):
            return result
        return result  # type: ignore[return-value]

    def _conditional(self, exchange: RelayExchange, meta: Meta) -> None:
        """Ask the origin whether `meta` is still good (RFC 9111 4.3.1)."""
        headers = exchange.request_headers
        _strip(headers, _CONDITIONS)
        etag = entry.first(meta.headers, b"etag")
        if etag is not None:
            headers.append((b"If-None-Match", etag))
        modified = entry.first(meta.headers, b"last-modified")
        if modified is not None:
            headers.append((b"If-Modified-Since", modified))

    def _get_for_head(self, exchange: RelayExchange, state: _State) -> bool:
        """A HEAD that the store cannot answer waits on a GET made in the background (as
        nginx's proxy_cache_convert_head), stored, and is answered with its head; when that
        response is not stored, the HEAD goes to the origin itself."""
        if exchange.request.method != b"HEAD" or state.no_store or state.request.no_store:
            return False
        self._refresh(exchange, state, state.meta)
        state.head_get = True
        self.cache.counters.misses += 1
        return True

    def _refresh(self, exchange: RelayExchange, state: _State, meta: Meta | None) -> None:
        """Revalidate `meta` (stale-while-revalidate), or fetch the GET of a HEAD (None), in
        the background, once at a time."""
        fills = self.cache.fills
        if fills.get(state.key) is not None or not fills.claim(state.key, self.config.lock_timeout):
            return  # refreshing already, here or in another process
        fill = fills.begin(state.key, claimed=True)
        headers = [
            field for field in exchange.request_headers if field[0].lower() not in _CONDITIONS
        ]

        def prepare(background: Any) -> None:
            background.vars[REFRESH] = (meta, fill)

        def done(background: Any) -> None:
            if fills.get(state.key) is fill:
                fill.not_storing()

        exchange.background(headers, prepare, done)

    # Answers from the cache.

    def _count_hit(self, hit: bool) -> None:
        counters = self.cache.counters
        if hit:
            counters.hits += 1
        else:
            counters.stale += 1

    # Response.

    def response_head(self, exchange: RelayExchange) -> HeadResult:
        state = exchange.vars.get(STATE)
        if state is None:
            return None
        if isinstance(state, bytes):
            self._invalidate(exchange)
            return None
        fill = state.fill
        answer = exchange.answer
        if answer is not None:
            if fill is not None:
                fill.not_storing()
                state.fill = None
            word = _ERROR_STALE.get(answer.status)
            if state.meta is not None and word is not None and self._stale_on(state, word):
                return self._stale_answer(exchange, state.meta)
            # proxyd's own answer (no server answered): forwarded, nothing from the origin.
            status_name = self.config.status_name
            exchange.response_headers.append(
                (b"Cache-Status", cache_status(status_name, fwd=state.fwd))
            )
            return None
        status = exchange.status
        fields = exchange.response_headers
        now = self.reactor.seconds()
        meta = state.meta
        if meta is not None and status == 304 and validates(meta.headers, fields):
            return self._revalidated(exchange, state, meta, fields, now)
        if meta is not None and status >= 500 and self._stale_on(state, f"http_{status}"):
            if fill is not None:
                fill.not_storing()
                state.fill = None
            return self._stale_answer(exchange, meta)
        why = self._why_not(exchange, state, status, fields)
        stored = False
        if why is None:
            writer = self.cache.store.writer(self._meta(exchange, state, fields, now))
            if writer is not None:
                state.writer = writer
                stored = True
                if fill is not None:
                    fill.storing(writer, _length(fields))
                if status == 204:  # no body phase follows: stored whole now
                    self.response_body(exchange, b"", True)
        if not stored and fill is not None:
            fill.not_storing()
            state.fill = None
        if self.config.strip_tag_headers:
            for name in self.config.tag_headers:
                remove_header(fields, name)
        fields.append(
            (
                b"Cache-Status",
                cache_status(
                    self.config.status_name,
                    fwd=state.fwd,
                    fwd_status=status,
                    stored=stored,
                    detail=None if why is None or stored else why.replace(" ", "-")[:60],
                ),
            )
        )
        return None

    def _stale_on(self, state: _State, word: str) -> bool:
        """Whether the stale response may answer an origin failure `word` (a use_stale
        word): RFC 5861's stale-if-error, or the operator's use_stale."""
        return state.stale_if_error or word in self.config.use_stale

    def _why_not(
        self, exchange: RelayExchange, state: _State, status: int, fields: Headers
    ) -> str | None:
        """Why this response is not stored; None: it is."""
        if state.no_store is not None:
            return "no-store-rule"
        response = entry.directives(fields)
        names = vary_names(fields)
        why = storable(
            exchange.method,
            status,
            response,
            state.request,
            authorization=any(
                name.lower() == b"authorization" for name, _ in exchange.request_headers
            ),
            expires=entry.first(fields, b"expires") is not None,
            vary_star=names is VARY_STAR,
        )
        if why is not None:
            return why.value
        if not self.config.heuristic and _heuristic_only(response, fields):
            return "heuristic-off"
        if not self.config.store_set_cookie and entry.first(fields, b"set-cookie") is not None:
            return "set-cookie"
        length = _length(fields)
        if length is not None and length > self.config.max_object_size:
            return "too-large"
        return None

    def _meta(self, exchange: RelayExchange, state: _State, fields: Headers, now: float) -> Meta:
        response = entry.directives(fields)
        kept = entry.stored_fields(fields, response)
        if self.config.store_set_cookie:
            kept = tuple(f for f in kept if f[0].lower() != b"set-cookie")
        if self.config.strip_tag_headers:  # the tags are in the meta: not sent on hits
            kept = tuple(f for f in kept if f[0].lower() not in self.config.tag_headers)
        names = vary_names(fields) or ()
        variant = answers.variant(names, exchange.request_headers)
        return Meta(
            key=state.key,
            variant=variant,
            url=state.uri,
            status=exchange.status,
            reason=b"",
            headers=kept,
            request_time=state.request_time,
            response_time=now,
            tags=entry.tags(fields, self.config.tag_headers),
        )

    def _revalidated(
        self, exchange: RelayExchange, state: _State, meta: Meta, fields: Headers, now: float
    ) -> HeadResult:
        """The origin said the stored response is still good: freshen it and serve it."""
        cache = self.cache
        # The 304 is a new response: its own Age and Date (none: 0, and its arrival) count
        # from now on, not the stored ones (RFC 9111 4.2.3, 4.3.4).
        renewed = {b"age", b"date"}.difference(name.lower() for name, _ in fields)
        kept = [field for field in meta.headers if field[0].lower() not in renewed]
        updated = attrs.evolve(
            meta,
            headers=tuple(freshen(kept, fields)),
            request_time=state.request_time,
            response_time=now,
            invalid_after=None,
        )
        cache.store.update(updated)
        cache.counters.revalidated += 1
        fill = state.fill
        if fill is not None:
            state.fill = None
            fill.not_storing()  # its waiters look again, and find it fresh
        if exchange.vars.get(REFRESH) is not None:
            return None
        answer = self._serve(
            exchange, updated, answers.age_of(updated, now), fresh=True, forwarded=True
        )
        if answer is None:
            return None
        answers.set_status(answer, self.cache, fwd="stale", fwd_status=304)
        return answer

    def _stale_answer(self, exchange: RelayExchange, meta: Meta) -> HeadResult:
        if exchange.vars.get(REFRESH) is not None:
            return None
        now = self.reactor.seconds()
        answer = self._serve(exchange, meta, answers.age_of(meta, now), fresh=False, forwarded=True)
        if answer is not None:
            answers.set_status(answer, self.cache, fwd="stale", fwd_status=exchange.status)
            _log.info(
                "cache {cache}: {uri} served stale: the origin failed",
                cache=self.config.name,
                uri=meta.url,
            )
        return answer

    def _invalidate(self, exchange: RelayExchange) -> None:
        """RFC 9111 4.4: a non-error response to an unsafe method invalidates the target URI
        and the same-origin URIs of Location and Content-Location."""
        if not 200 <= exchange.status < 400:
            return
        store = self.cache.store
        target = effective_uri(exchange.scheme, exchange.host, exchange.path, exchange.query)
        uris = {target}
        for name in (b"location", b"content-location"):
            value = entry.first(exchange.response_headers, name)
            if value is not None:
                uri = same_origin(target, value.decode("latin-1"))
                if uri is not None:
                    uris.add(uri)
        for uri in uris:
            store.purge(url=uri)

    def response_body(self, exchange: RelayExchange, data: bytes, end: bool) -> bytes:
        state: _State = exchange.vars[STATE]
        writer = state.writer
        if writer is None:
            return data
        fill = state.fill
        if data and not writer.append(data):
            state.writer = None
            if fill is not None:
                state.fill = None
                fill.cut()
            return data
        if end:
            state.writer = None
            stored = writer.commit()
            if stored is not None:
                self.cache.counters.stored += 1
            if fill is not None:
                state.fill = None
                if stored is not None:
                    fill.committed()
                else:
                    fill.cut()
        elif fill is not None and data:
            fill.appended()
        return data

    def takes_response_body(self, exchange: RelayExchange) -> bool:
        state = exchange.vars.get(STATE)
        return isinstance(state, _State) and state.writer is not None

    def log(self, exchange: RelayExchange) -> None:
        state = exchange.vars.get(STATE)
        if not isinstance(state, _State):
            return
        if state.writer is not None:
            state.writer.abort()
            state.writer = None
        if state.fill is not None:
            fill, state.fill = state.fill, None
            if fill.writer is not None:
                fill.cut()
            else:
                fill.not_storing()
        if exchange.answer is not None and exchange.answer.source is not None:
            self.cache.counters.bytes_served += exchange.response_bytes

    # PURGE.

    def _purge_request(self, exchange: RelayExchange) -> Answer:
        uri = effective_uri(exchange.scheme, exchange.host, exchange.path, exchange.query)
        soft = (entry.first(exchange.request_headers, b"x-purge-soft") or b"").strip() in (
            b"1",
            b"on",
        )
        count = self.cache.store.purge(url=uri, soft=soft, now=self.reactor.seconds())
        self.cache.counters.purged += count
        self.cache.announce(Purge(url=uri, soft=soft))
        body = b'{"purged": %d}\n' % count
        return Answer(200 if count else 404, body, content_type="application/json")


def _strip(headers: Headers, names: tuple[bytes, ...]) -> None:
    headers[:] = [field for field in headers if field[0].lower() not in names]


def _heuristic_only(response: Directives, fields: Headers) -> bool:
    return not (
        response.public
        or response.max_age is not None
        or response.s_maxage is not None
        or entry.first(fields, b"expires") is not None
    )


def _length(fields: Headers) -> int | None:
    length = entry.first(fields, b"content-length")
    if length is None or not length.strip().isdigit():
        return None
    return int(length)
