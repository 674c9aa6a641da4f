"""The routes of an HTTP listener: what a route matches, its action (proxy to a pool,
redirect, respond), its header rules and filters. Frozen attrs values, as the rest of
proxyd.config.model."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from proxyd.access.networks import AccessList
from proxyd.config.auth_model import AuthConfig
from proxyd.config.cache_model import CacheConfig
from proxyd.config.compress_model import RouteCompress
from proxyd.config.ratelimit_model import RateLimitConfig
from proxyd.config.security_model import CorsConfig, Off, RuleConfig, SecurityHeadersConfig

if TYPE_CHECKING:
    from proxyd.gateway.json_ops import JsonOp
    from proxyd.gateway.query_ops import QueryOp

DEFAULT_MAX_JSON_BODY = 1 << 20
"""A route's `max_json_body` by default."""


@attrs.frozen
class HeaderRule:
    """`remove NAME`, `rename NAME NEW_NAME`, `replace NAME VALUE` (when present), `set NAME
    VALUE` (replace or add), `add_if_absent NAME VALUE`, `add NAME VALUE` (append a field);
    a list of them applies in that order (proxyd.config.routes.HEADER_OPS).

    VALUE is a template: `{client_ip}`, `{host}`, `{scheme}`, `{uri}`, `{path}`, `{query}`,
    `{method}`, `{request_id}`, `{route}` are substituted per request; `{{` is a literal `{`.
    For `rename`, `value` is the new name.
    """

    op: str
    """remove | rename | replace | set | add_if_absent | add"""
    name: str
    value: str = ""


@attrs.frozen
class RouteMatch:
    """What a route matches; an absent part matches anything."""

    host: str | None = None
    """Lower case, no port; `*.example.com` matches any name ending in `.example.com`."""
    path: str = "/"
    """A prefix of the normalised request path (dot segments removed)."""
    methods: frozenset[str] | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    """(lower-case name, exact value or None for "present"); all must hold."""


@attrs.frozen
class ProxyAction:
    """Send the request to a pool."""

    pool: str
    strip_prefix: bool = False
    """Remove the matched path prefix before sending (keeping a leading `/`)."""
    rewrite: tuple[re.Pattern[str], str] | None = None
    """(regex, replacement with \\1 groups) applied to the path after strip_prefix."""
    host: str | None = None
    """Host header sent upstream; None passes the client's."""
    query_ops: tuple[QueryOp, ...] = ()
    """`query_params`: operations on the query sent upstream, in Kong's order
    (proxyd.gateway.query_ops)."""
    upstream_method: str | None = None
    """`upstream_method`: the method sent upstream (not for HEAD requests and WebSocket
    handshakes, which keep theirs); None passes the client's."""
    max_in_flight: int = 0
    """At most this many of the route's requests at the servers at once; 0: no limit
    (proxyd.filters.concurrency)."""
    max_queued: int = 0
    """Requests that may wait for a slot beyond max_in_flight; 0: refused at once (503)."""
    queue_timeout: float = 5.0
    """The longest a request waits for a slot."""
    request_json_ops: tuple[JsonOp, ...] = ()
    """`request_json`: operations on a JSON request body, in the order written
    (proxyd.gateway.json_ops)."""
    response_json_ops: tuple[JsonOp, ...] = ()
    """`response_json`: operations on a JSON response body."""
    max_json_body: int = DEFAULT_MAX_JSON_BODY
    """The largest JSON body either transforms: a request's over it is answered 413, a
    response's 502."""


@attrs.frozen
class RedirectAction:
    status: int
    """301 | 302 | 303 | 307 | 308"""
    location: str
    """A template, as header rule values."""


@attrs.frozen
class RespondAction:
    status: int
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


RouteAction = ProxyAction | RedirectAction | RespondAction


@attrs.frozen
class FilterConfig:
    """`[filter NAME]`: an HTTP filter class (proxyd.filters.api) with its options, and the
    instance made of them when the file was loaded (each load makes its own: a reload's new
    requests get new instances). Equal when the class and the options are."""

    name: str
    cls: str
    """`package.module:Name`."""
    options: tuple[tuple[str, str], ...] = ()
    instance: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class RouteSecurity:
    """A [route]'s own security settings (docs/security.md). None (or empty) leaves the
    listener's; `access` and `rules` are checked after the listener's, the others replace
    the listener's value."""

    access: AccessList | None = None
    allowed_methods: frozenset[str] | None = None
    max_body_size: int | None = None
    max_uri_length: int | None = None
    max_query_length: int | None = None
    rules: tuple[RuleConfig, ...] = ()
    auth: AuthConfig | Off | None = None
    """`off`: no authentication, whatever the listener's `auth`."""
    cors: CorsConfig | Off | None = None
    hide_headers: tuple[str, ...] | None = None
    pass_headers: tuple[str, ...] | None = None
    server_header: str | None = None
    intercept_errors: frozenset[int] | None = None
    security_headers: SecurityHeadersConfig | None = None
    ratelimits: tuple[RateLimitConfig, ...] | Off | None = None
    """Checked after the listener's; `off`: none, whatever the listener's `ratelimits`."""
    cache: CacheConfig | Off | None = None
    """The [cache] its responses are kept in; `off`: none, whatever the listener's."""


@attrs.frozen
class RouteConfig:
    """One line of an `[http NAME]` section's `routes`, with its action's options."""

    name: str
    """`[route NAME]`'s name, else the host and path, e.g. `api.example.com/v1/` or `*/`."""
    match: RouteMatch
    action: RouteAction
    request_headers: tuple[HeaderRule, ...] = ()
    response_headers: tuple[HeaderRule, ...] = ()
    filters: tuple[FilterConfig, ...] = ()
    """The route's own filters ([route NAME] `filters`), after the listener's."""
    security: RouteSecurity = RouteSecurity()
    """The [route]'s access control, limits, rules, auth, CORS and response hardening."""
    line: int = 0
    """The line of the routes entry in the config file, for messages."""
    compress: RouteCompress | None = None
    """The [route]'s compression keys (docs/compression.md); None: the listener's."""
