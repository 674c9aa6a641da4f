"""The filter chain of each route of an HTTP listener: the built-in filters its config asks
for and the operator's own, in the documented order (docs/http.md, "Filter order"):

    request order            what it does
    1  error_pages           proxyd's error answers get the listener's pages (response)
    2  hsts                  Strict-Transport-Security on every response ([https] hsts)
    3  hide_headers          the server's Server, X-Powered-By... removed, proxyd's Server
                             sent (response; on by default: see _Builder.hiding)
    4  security_headers      the security_headers preset (response)
    5  intercept_errors      a server's error body replaced by proxyd's page (response)
    6  trace_context         W3C traceparent continued or begun, tracestate passed on, the
                             trace id kept for the access log (request; first, so that
                             requests refused below are logged with it); with
                             otlp_endpoint, the exchange's span exported (log)
    7  invalid_headers       request fields with '_' and the like dropped (or 400; on by
                             default)
    7a cdn_loop              this node's pseudonym added to CDN-Loop; a request that
                             carries it more than cdn_loop_max times refused (508)
    8  access                allow/deny by the client's address: the listener's list, then
                             the route's (403)
    9  request_limits        allowed_methods (405), max_uri_length / max_query_length (414),
                             max_body_size (413, at once by Content-Length, else as it streams)
    10 rules                 [rule] sections: the listener's, then the route's (403, log_only)
    11 https_redirect        308 to https (request)
    12 websocket_only        426 / 403 on a [websocket] passthrough port (request)
    13 cors                  preflights answered; CORS fields on every answer below it
    14 auth                  [auth]: basic, api_key, jwt, forward (401, 403...)
    15 ratelimit             [ratelimit] sections: the listener's, then the route's (429 with
                             Retry-After; RateLimit fields on the response)
    16 listener filters      the listener's `filters`, in the order listed
    17 route filters         the [route]'s `filters`, in the order listed
    18 cache                 [cache]: a stored response answers (hit, stale as allowed, 304,
                             206); a miss waits on the same key's fetch or makes it; the
                             response stored as it streams (routes with a pool)
    19 compress              compress / gunzip: the server's response compressed in the
                             client's coding, or a gzip one decompressed (response; routes
                             with a pool)
    20 concurrency           the [route]'s max_in_flight: a slot, or a place in its queue
                             (503 with Retry-After past max_queued or queue_timeout)
    21 transform             the [route]'s query_params on the query sent upstream (request;
                             route only)
    22 json_body             the [route]'s request_json / response_json on JSON bodies, each
                             read whole up to max_json_body (413 / 502 past it; 400 / 502
                             when the operations cannot apply)
    23 forwarding            hop-by-hop fields out, X-Forwarded-*, Forwarded, Via, X-Request-ID
    24 sticky_cookie         back to the cookie's server; Set-Cookie on the response
       stick_on              back to the server the pool's stick table names for the
                             client's key (in Redis with stick_store); the pick recorded
    25 header_rules          request_headers / response_headers: the listener's, then the route's
    26 respond / redirect    the route's own answer

Request phases run down the table, response phases up it; a request answered at a row runs
the response phases of the rows above it. Rows a listener's config does not ask for are left
out, so that a feature switched off costs nothing. A route's setting replaces the listener's
(`access`, `rules` and `ratelimits` add to them); the listener's own chain (requests no route
matches, and those refused before routing) has its rows with the listener's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from proxyd.cache.registry import CacheRegistry
from proxyd.clock import Clock
from proxyd.config.cache_model import CacheConfig
from proxyd.config.compress_model import CompressConfig
from proxyd.config.model import (
    OFF,
    AccessList,
    FilterConfig,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RateLimitConfig,
    RedirectAction,
    RespondAction,
    RouteConfig,
    RouteSecurity,
)
from proxyd.filters.access import AccessControl
from proxyd.filters.auth import AuthContext, build_auth
from proxyd.filters.cache import CacheFilter
from proxyd.filters.cdn_loop import CdnLoop
from proxyd.filters.chain import Chain
from proxyd.filters.concurrency import Concurrency
from proxyd.filters.cors import Cors
from proxyd.filters.error_pages import ErrorPages
from proxyd.filters.forwarding import Forwarding
from proxyd.filters.header_names import InvalidHeaders
from proxyd.filters.header_rules import RequestRules, ResponseRules
from proxyd.filters.hsts import Hsts
from proxyd.filters.intercept_errors import InterceptErrors
from proxyd.filters.json_body import JsonRequestBody, JsonResponseBody
from proxyd.filters.local_answers import HttpsRedirect, OriginCheck, RouteAnswer, WebSocketOnly
from proxyd.filters.ratelimit import RateLimitContext, build_ratelimit
from proxyd.filters.request_limits import request_limits
from proxyd.filters.rules import Rules
from proxyd.filters.security_headers import SecurityHeaders, hidden_names
from proxyd.filters.stick import StickOn, StickTables
from proxyd.filters.sticky import StickyCookie
from proxyd.filters.trace_context import TraceContext
from proxyd.filters.transform import QueryParams
from proxyd.metrics import RelayStats
from proxyd.otlp import SpanSink

Filters = list[tuple[str, object]]

_LISTENER = RouteSecurity()
"""The listener's own chain: no route's settings."""


def _user(filters: Sequence[FilterConfig]) -> Filters:
    return [(f.name, f.instance) for f in filters]


def build_chains(
    config: HttpListenerConfig,
    pools: Mapping[str, PoolConfig],
    error_pages: Mapping[int, bytes],
    websocket_only: OriginCheck | None,
    auth: AuthContext,
    stats: Callable[[], RelayStats],
    ratelimits: RateLimitContext,
    queues: dict[str, Concurrency] | None = None,
    spans: SpanSink | None = None,
    caches: CacheRegistry | None = None,
    sticks: StickTables | None = None,
) -> dict[str | None, Chain]:
    """The chain of each route by name, and the listener's own under None (requests that
    match no route, and those refused before routing). `auth` is what the routes'
    authentication runs with (one per listener), `stats` gives the listener's metrics,
    `ratelimits` holds the listener's rate-limit tables; `queues` gets the routes'
    concurrency limits (their metrics), by route; `spans` is where the listener's spans go
    (with otlp_endpoint; None exports none); `caches` opens the [cache] sections the routes
    name (proxyd.cache.registry); `sticks` the pools' stick tables (proxyd.filters.stick)."""
    if queues is None:
        queues = {}
    build = _Builder(config, error_pages, websocket_only, auth, stats, ratelimits, spans)
    listener = build.head(_LISTENER) + build.middle(None)
    chains: dict[str | None, Chain] = {None: Chain(listener, *build.hiding(_LISTENER))}
    forwarding = Forwarding(config.via)
    sticky: Filters = []
    if any(pool.sticky_cookie is not None for pool in pools.values()):
        sticky.append(("sticky_cookie", StickyCookie()))
    stick_tables = {} if sticks is None else sticks.for_pools(pools)
    stick = StickOn(stick_tables) if stick_tables else None
    for route in config.routes:
        filters = build.head(route.security) + build.middle(route)
        filters += _cache(config, route, caches, ratelimits.reactor)
        tail = sticky
        if stick is not None and _may_stick(config, route, stick_tables):
            tail = [*sticky, ("stick_on", stick)]
        filters += _tail(config, route, forwarding, tail, ratelimits.reactor, queues, stats)
        chains[route.name] = Chain(filters, *build.hiding(route.security))
    return chains


def _may_stick(
    config: HttpListenerConfig, route: RouteConfig, tables: Mapping[str, object]
) -> bool:
    """The route proxies to a pool with a stick table, or has operators' filters, which may
    send it to another pool (use_pool): other routes do without the stick_on step."""
    action = route.action
    if not isinstance(action, ProxyAction):
        return False
    return action.pool in tables or bool(config.filters or route.filters)


class _Builder:
    """Rows 1 to 17 of a route's chain (the listener's when the route is None). Filters
    whose settings are the same for several routes are made once and shared."""

    def __init__(
        self,
        config: HttpListenerConfig,
        error_pages: Mapping[int, bytes],
        websocket_only: OriginCheck | None,
        auth: AuthContext,
        stats: Callable[[], RelayStats],
        ratelimits: RateLimitContext,
        spans: SpanSink | None = None,
    ) -> None:
        self.config = config
        self.error_pages = error_pages
        self.auth = auth
        self.ratelimits = ratelimits
        self.stats = stats
        self.first: Filters = []
        if error_pages:
            self.first.append(("error_pages", ErrorPages(error_pages)))
        if config.hsts is not None:
            self.first.append(("hsts", Hsts(config.hsts)))
        self.local: Filters = []
        if config.https_redirect is not None:
            self.local.append(("https_redirect", HttpsRedirect(config.https_redirect)))
        if websocket_only is not None:
            self.local.append(("websocket_only", WebSocketOnly(websocket_only)))
        self.early: Filters = []
        """Rows 6 to 7a, the same on every route."""
        if config.trace_context != "off":
            self.early.append(("trace_context", _trace_context(config, spans)))
        if config.invalid_headers != "pass":
            self.early.append(("invalid_headers", InvalidHeaders(config.invalid_headers)))
        if config.cdn_loop is not None:
            self.early.append(("cdn_loop", CdnLoop(config.cdn_loop, config.cdn_loop_max)))
        self._made: dict[tuple[object, ...], object] = {}

    def _once(self, key: tuple[object, ...], make: Callable[[], object]) -> object:
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = make()
        return found

    def head(self, route: RouteSecurity) -> Filters:
        """Rows 1 to 13: the response hardening, trace context, the request's checks, the
        local answers and CORS."""
        config = self.config
        filters = list(self.first)
        preset = _pick(route.security_headers, config.security_headers)
        if preset is not None and preset.enabled:
            made = self._once(
                ("security", preset), lambda: SecurityHeaders(preset.fields, preset.override)
            )
            filters.append(("security_headers", made))
        statuses = _pick(route.intercept_errors, config.intercept_errors)
        if statuses:
            made = self._once(
                ("intercept", statuses), lambda: InterceptErrors(statuses, self.error_pages)
            )
            filters.append(("intercept_errors", made))
        filters += self.early
        lists = [rules for rules in (config.access, route.access) if rules is not None]
        if lists:
            filters.append(("access", self._access(lists)))
        cors = _pick(route.cors, config.cors)
        limits = request_limits(
            methods=_pick(route.allowed_methods, config.allowed_methods),
            max_uri_length=route.max_uri_length,
            max_query_length=_pick(route.max_query_length, config.max_query_length),
            max_body_size=route.max_body_size or None,
            preflight=cors is not None and cors != OFF,
        )
        if limits is not None:
            filters.append(("request_limits", limits))
        rules = (*config.rules, *route.rules)
        if rules:
            made = self._once(("rules", rules), lambda: Rules(rules, config.name, self.stats))
            filters.append(("rules", made))
        filters += self.local
        if cors is not None and cors != OFF:
            filters.append(("cors", self._once(("cors", cors), lambda: Cors(cors.policy))))
        return filters

    def hiding(self, route: RouteSecurity) -> tuple[frozenset[bytes], bytes | None]:
        """Row 3, hide_headers: the server's fields removed, and proxyd's Server value. Not a
        step of the chain (it is on by default): the exchange applies it to the server's
        response head as it arrives (with the hop-by-hop fields), and adds the Server field
        to proxyd's and filters' answers."""
        config = self.config
        names = hidden_names(
            _pick(route.hide_headers, config.hide_headers),
            _pick(route.pass_headers, config.pass_headers),
        )
        server = _pick(route.server_header, config.server_header)
        return names, server.encode("ascii") if server else None

    def _limits(self, route: RouteConfig | None) -> tuple[RateLimitConfig, ...]:
        """The listener's limits, then the route's (each once); none for `ratelimits = off`."""
        mine = None if route is None else route.security.ratelimits
        if mine == OFF:
            return ()
        limits = {limit.name: limit for limit in (*self.config.ratelimits, *(mine or ()))}
        return tuple(limits.values())

    def _access(self, lists: list[AccessList]) -> object:
        trusted = self.config.trusted_proxies
        return self._once(("access", *lists), lambda: AccessControl(lists, trusted))

    def middle(self, route: RouteConfig | None) -> Filters:
        """Rows 14 to 17: the authentication, the rate limits, then the listener's and the
        route's filters."""
        filters: Filters = []
        chosen = self.config.auth
        if route is not None and route.security.auth is not None:
            chosen = None if route.security.auth == OFF else route.security.auth
        if chosen is not None and chosen != OFF:
            filters.append(("auth", build_auth(chosen, self.auth)))
        limits = self._limits(route)
        if limits:
            made = self._once(
                ("ratelimit", limits), lambda: build_ratelimit(limits, self.ratelimits)
            )
            filters.append(("ratelimit", made))
        filters += _user(self.config.filters)
        if route is not None:
            filters += _user(route.filters)
        return filters


def _trace_context(config: HttpListenerConfig, spans: SpanSink | None) -> object:
    """Row 6: trace_context, exporting its spans when the listener has otlp_endpoint."""
    restart = config.trace_context == "restart"
    if config.otlp is None or spans is None:
        return TraceContext(restart)
    # Imported here: the OpenTelemetry SDK takes some 70 ms and a few MB to import, which
    # a process that exports no span need not pay.
    from proxyd.filters.trace_export import TraceExport

    return TraceExport(spans, restart, config.otlp.sample)


def _compress(settings: CompressConfig, stats: Callable[[], RelayStats]) -> object:
    """Row 19: compress and gunzip."""
    # Imported here: the encoders import brotli and zstandard (4 ms), which a process that
    # compresses nothing need not load.
    from proxyd.filters.compress import Compress

    return Compress(settings, stats)


_T = TypeVar("_T")


def _pick(mine: _T | None, listeners: _T) -> _T:
    """A route's setting, or the listener's where the route has none."""
    return listeners if mine is None else mine


def _cache(
    config: HttpListenerConfig, route: RouteConfig, caches: CacheRegistry | None, reactor: Clock
) -> Filters:
    """Row 18: the route's [cache] (else the listener's), for a route that proxies."""
    chosen = _pick(route.security.cache, config.cache)
    if chosen is None or chosen == OFF or not isinstance(route.action, ProxyAction):
        return []
    if caches is None:
        raise ValueError(f"route {route.name}: no cache registry for its [cache {chosen.name}]")
    assert isinstance(chosen, CacheConfig)
    return [("cache", CacheFilter(caches.cache(chosen), reactor))]


def _tail(
    config: HttpListenerConfig,
    route: RouteConfig,
    forwarding: Forwarding,
    sticky: Filters,
    clock: Clock,
    queues: dict[str, Concurrency],
    stats: Callable[[], RelayStats],
) -> Filters:
    """Rows 19 to 26; a route's concurrency filter goes into `queues` too."""
    filters: Filters = []
    action = route.action
    if isinstance(action, ProxyAction):
        settings = (
            config.compress if route.compress is None else route.compress.over(config.compress)
        )
        if settings.active:
            filters.append(("compress", _compress(settings, stats)))
        if action.max_in_flight:
            concurrency = Concurrency(
                clock,
                max_in_flight=action.max_in_flight,
                max_queued=action.max_queued,
                queue_timeout=action.queue_timeout,
            )
            filters.append(("concurrency", concurrency))
            queues[route.name] = concurrency
        if action.query_ops:
            filters.append(("transform", QueryParams(action.query_ops)))
        # Both at the same row, as header_rules: each takes part in one direction only.
        if action.request_json_ops:
            request_json = JsonRequestBody(action.request_json_ops, action.max_json_body)
            filters.append(("json_body", request_json))
        if action.response_json_ops:
            response_json = JsonResponseBody(action.response_json_ops, action.max_json_body)
            filters.append(("json_body", response_json))
        filters.append(("forwarding", forwarding))
        filters += sticky
    # Both at the same row of the order: listener's rules, then the route's, each way.
    request_rules = RequestRules((config.request_headers, route.request_headers))
    if request_rules.rules:
        filters.append(("header_rules", request_rules))
    response_rules = ResponseRules((config.response_headers, route.response_headers))
    if response_rules.rules:
        filters.append(("header_rules", response_rules))
    if isinstance(action, RespondAction | RedirectAction):
        filters.append(
            ("respond" if isinstance(action, RespondAction) else "redirect", RouteAnswer(action))
        )
    return filters
