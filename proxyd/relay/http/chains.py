"""The filter chain of each route of an HTTP listener: the built-in filters its config asks
for and the operator's own, in the documented order (docs/http.md, "Filter order"):

    request order            what it does
    1  error_pages           proxyd's error answers get the listener's pages (response)
    2  hsts                  Strict-Transport-Security on every response ([https] hsts)
    3  https_redirect        308 to https (request)
    4  websocket_only        426 / 403 on a [websocket] passthrough port (request)
    5  listener filters      the listener's `filters`, in the order listed
    6  route filters         the [route]'s `filters`, in the order listed
    7  forwarding            hop-by-hop fields out, X-Forwarded-*, Forwarded, Via, X-Request-ID
    8  sticky_cookie         back to the cookie's server; Set-Cookie on the response
    9  header_rules          request_headers / response_headers: the listener's, then the route's
    10 respond / redirect    the route's own answer

Request phases run down the table, response phases up it; a request answered at a row runs
the response phases of the rows above it. Rows a listener's config does not ask for are left
out, so that a feature switched off costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxyd.config.model import (
    FilterConfig,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteConfig,
)
from proxyd.filters.chain import Chain
from proxyd.filters.error_pages import ErrorPages
from proxyd.filters.forwarding import Forwarding
from proxyd.filters.header_rules import RequestRules, ResponseRules
from proxyd.filters.hsts import Hsts
from proxyd.filters.local_answers import HttpsRedirect, OriginCheck, RouteAnswer, WebSocketOnly
from proxyd.filters.sticky import StickyCookie


def _user(filters: Sequence[FilterConfig]) -> list[tuple[str, object]]:
    return [(f.name, f.instance) for f in filters]


def build_chains(
    config: HttpListenerConfig,
    pools: Mapping[str, PoolConfig],
    error_pages: Mapping[int, bytes],
    websocket_only: OriginCheck | None,
) -> dict[str | None, Chain]:
    """The chain of each route by name, and the listener's own under None (requests that
    match no route, and those refused before routing)."""
    head: list[tuple[str, object]] = []
    if error_pages:
        head.append(("error_pages", ErrorPages(error_pages)))
    if config.hsts is not None:
        head.append(("hsts", Hsts(config.hsts)))
    if config.https_redirect is not None:
        head.append(("https_redirect", HttpsRedirect(config.https_redirect)))
    if websocket_only is not None:
        head.append(("websocket_only", WebSocketOnly(websocket_only)))
    head += _user(config.filters)
    forwarding = Forwarding(config.via)
    sticky = (
        StickyCookie() if any(pool.sticky_cookie is not None for pool in pools.values()) else None
    )
    chains: dict[str | None, Chain] = {None: Chain(head)}
    for route in config.routes:
        chains[route.name] = Chain(head + _route(config, route, forwarding, sticky))
    return chains


def _route(
    config: HttpListenerConfig,
    route: RouteConfig,
    forwarding: Forwarding,
    sticky: StickyCookie | None,
) -> list[tuple[str, object]]:
    filters = _user(route.filters)
    action = route.action
    if isinstance(action, ProxyAction):
        filters.append(("forwarding", forwarding))
        if sticky is not None:
            filters.append(("sticky_cookie", sticky))
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
