"""The head of a proxied request as its server gets it, a pure function of the client's
request and the route's `pool` action: the target (strip_prefix and rewrite applied, the
query as the filters left it), the method (`upstream_method`) and the fields (`host`, a
WebSocket handshake's). The forwarding fields are the chain's (proxyd.filters.forwarding);
the body's framing the exchange's."""

from __future__ import annotations

from typing import Final

from proxyd.config.model import ProxyAction, RouteConfig
from proxyd.relay.http.extended_connect import handshake_fields
from proxyd.relay.http.headers import RequestContext
from proxyd.relay.http.messages import Headers, Request
from proxyd.relay.http.routing import rewrite_path

WITH_CONTENT: Final = frozenset({b"POST", b"PUT", b"PATCH"})
"""Methods that define a meaning for a request's content (RFC 9110 9.3)."""


def upstream_request(
    request: Request,
    route: RouteConfig,
    path: str,
    query: str,
    websocket: bool,
    ctx: RequestContext | None = None,
) -> tuple[bytes, bytes, Headers]:
    """(method, target, fields) of `request` proxied by `route`, with `path` and `query` the
    exchange's (filters may have changed them), `ctx` its template variables (a rewrite's).

    The route's `upstream_method` replaces the client's, except for HEAD, whose answer has no
    body whatever its fields say (RFC 9110 9.3.2), a WebSocket handshake (GET, RFC 6455 4.1)
    and `OPTIONS *`; a body-less request turned into POST, PUT or PATCH says so with
    `Content-Length: 0` (RFC 9110 8.6: a server may ask for the length with 411). A
    WebSocket handshake keeps `Upgrade: websocket` and `Connection: Upgrade`; over HTTP/2
    (RFC 8441) it gets a Sec-WebSocket-Key of proxyd's (proxyd.relay.http.extended_connect)."""
    action = route.action
    assert isinstance(action, ProxyAction)
    upstream_path = path if path == "*" else rewrite_path(route, path, ctx)
    raw_query = query.encode("latin-1")
    target = upstream_path.encode("latin-1") + (b"?" + raw_query if raw_query else b"")
    fields = request.headers
    if action.host is not None:
        fields = [(k, v) for k, v in fields if k.lower() != b"host"]
        fields.append((b"Host", action.host.encode("latin-1")))
    method = request.method
    changed = action.upstream_method
    if changed is not None and method != b"HEAD" and not websocket and path != "*":
        method = changed.encode("ascii")
        if method in WITH_CONTENT and not request.has_body:
            fields = [(k, v) for k, v in fields if k.lower() != b"content-length"]
            fields.append((b"Content-Length", b"0"))
    if websocket:
        if request.version == "2":
            fields = handshake_fields(fields)
        fields = [*fields, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
    return method, target, fields
