"""Routing a request, as a pure function: the request head and the connection's facts in, the
route table consulted, a decision out: refuse it (with the status and why), or run the
matched route's chain (None when no route matches: the listener's filters, then 404).

No transport, no clock: tested table-driven (tests/unit/test_decide.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Final, Protocol

import httptools

from proxyd.config.model import Address, RouteConfig
from proxyd.metrics import ErrorKind
from proxyd.relay.http import headers as policy
from proxyd.relay.http.messages import Headers, Request
from proxyd.relay.http.routing import BadPath, RouteTable, request_path
from proxyd.tls import PeerTls

_HOST_RE: Final = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?$")


@functools.lru_cache(maxsize=1024)
def split_host(host: bytes) -> str | None:
    """The name of a Host value for routing: lower case, no port, no trailing dot; None when
    the value is not a valid uri-host[:port] (RFC 9110 7.2). Cached: a listener sees the same
    few Host values again and again."""
    match = _HOST_RE.match(host)
    if match is None:
        return None
    return match.group(1).decode("ascii").lower().rstrip(".")


class _Url(Protocol):
    """httptools.parse_url's result as it is: the parts a target lacks are None, where its
    stubs say bytes and int (a module compiled by mypyc checks what they say)."""

    @property
    def schema(self) -> bytes | None: ...
    @property
    def host(self) -> bytes | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def path(self) -> bytes | None: ...
    @property
    def query(self) -> bytes | None: ...


class Refused:
    """Answer the request with `status` (proxyd's error answer): it cannot be routed."""

    __slots__ = ("kind", "status", "why")

    def __init__(self, status: int, why: str, kind: ErrorKind) -> None:
        self.status = status
        self.why = why
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refused) and (self.status, self.why, self.kind) == (
            other.status,
            other.why,
            other.kind,
        )

    def __repr__(self) -> str:
        return f"Refused({self.status}, {self.why!r})"


class Routed:
    """Run `route`'s chain (the listener's alone when `route` is None) for this request."""

    __slots__ = ("ctx", "headers", "host_name", "raw_path", "raw_query", "route")

    def __init__(
        self,
        route: RouteConfig | None,
        ctx: policy.RequestContext,
        headers: Headers,
        host_name: str,
        raw_path: bytes,
        raw_query: bytes,
    ) -> None:
        self.route = route
        self.ctx = ctx
        """The request's facts for templates, forwarding fields and filters."""
        self.headers = headers
        """The request's fields (Host replaced by an absolute-form target's authority)."""
        self.host_name = host_name
        self.raw_path = raw_path
        """The path as received (for https_redirect)."""
        self.raw_query = raw_query


def has_token(headers: Headers, name: bytes, token: bytes) -> bool:
    """A comma-separated field `name` lists `token` (case-insensitive)."""
    for key, value in headers:
        if key.lower() == name and any(
            part.strip(b" \t").lower() == token for part in value.split(b",")
        ):
            return True
    return False


def is_websocket_upgrade(request: Request) -> bool:
    """An opening handshake of RFC 6455 4.1: GET, HTTP/1.1, no body, Connection: upgrade,
    Upgrade: websocket; or an HTTP/2 extended CONNECT for websocket (RFC 8441), which
    proxyd.relay.http.h2_session made a GET with `upgrade`. Other upgrades (h2c) are not
    relayed: their fields are removed."""
    return (
        request.upgrade
        and request.method == b"GET"
        and not request.has_body
        and (
            request.version == "2"
            or (request.version == "1.1" and has_token(request.headers, b"upgrade", b"websocket"))
        )
    )


Decision = Refused | Routed

_BAD_TARGET: Final = Refused(400, "invalid request target", ErrorKind.BAD_REQUEST)


def _header_map(headers: Headers) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        fields[key] = fields[key] + ", " + text if key in fields else text
    return fields


Place = tuple[str, bytes, bytes, str, str, "RouteConfig | None"]
"""Where a request goes: (host name, raw path, raw query, normalized path, method, route)."""
MEMO_SIZE: Final = 4096
"""Places remembered per listener (decide's `memo`); past that the memo starts again."""


def decide(
    request: Request,
    *,
    peer: Address,
    local: Address,
    tls: PeerTls | None,
    routes: RouteTable,
    escaped_slashes: str,
    new_request_id: Callable[[], str],
    memo: dict[tuple[bytes, bytes, bytes], Place] | None = None,
) -> Decision:
    """Parse the target (origin-form, absolute-form, or `*` for OPTIONS), check the Host,
    normalize the path (routing.request_path), match the route, and gather the context.

    `memo` (one per listener and route table) remembers where origin-form targets went, by
    target, Host and method, when the routes match no header: the same few are asked again
    and again, and their parse, normalization and match are the same every time."""
    if request.method == b"CONNECT":
        if request.upgrade:  # HTTP/2's extended CONNECT for another protocol than websocket
            return Refused(501, "extended CONNECT is served for websocket only", ErrorKind.REFUSED)
        return Refused(405, "CONNECT is not served by a reverse proxy", ErrorKind.REFUSED)
    headers = request.headers
    key = (request.target, request.host, request.method)
    place = memo.get(key) if memo is not None else None
    if place is None:
        found = _place(request, routes, escaped_slashes)
        if isinstance(found, Refused):
            return found
        place, headers = found
        if memo is not None and headers is request.headers and not routes.uses_headers:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = place
    host_name, raw_path, query, path, method, route = place
    query_text = query.decode("latin-1")
    # Positional, in RequestContext's order (keywords cost a third more, every request).
    ctx = policy.RequestContext(
        peer.host,  # client_ip
        peer.port,  # client_port
        "http" if tls is None else "https",  # scheme
        (request.host if headers is request.headers else _host_of(headers)).decode("latin-1"),
        method,
        path,
        query_text,  # query
        path + ("?" + query_text if query else ""),  # uri
        policy.request_id(headers, new_request_id),
        route.name if route is not None else "",  # route
        local.host,  # local_ip
        local.port,  # local_port
        policy.NO_TLS if tls is None else tls,
    )
    return Routed(route, ctx, headers, host_name, raw_path, query)


def _host_of(headers: Headers) -> bytes:
    """The Host an absolute-form target put last in `headers`."""
    return headers[-1][1]


def _place(
    request: Request, routes: RouteTable, escaped_slashes: str
) -> tuple[Place, Headers] | Refused:
    """Where `request` goes, and its fields (Host replaced by an absolute-form target's)."""
    target = request.target
    host = request.host
    headers = request.headers
    if target.startswith(b"/"):
        raw_path, _, query = target.partition(b"?")
    elif target == b"*" and request.method == b"OPTIONS":
        raw_path, query = b"*", b""
    else:
        try:
            url: _Url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return _BAD_TARGET
        if url.schema not in (b"http", b"https") or not url.host:
            return _BAD_TARGET
        # RFC 9112 3.2.2: an absolute-form target's authority replaces Host.
        host = url.host + (b":%d" % url.port if url.port else b"")
        raw_path, query = url.path or b"/", url.query or b""
        headers = [(k, v) for k, v in headers if k.lower() != b"host"] + [(b"Host", host)]
    host_name = split_host(host)
    if host_name is None:
        return Refused(400, "invalid Host", ErrorKind.BAD_REQUEST)
    try:
        path_text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return _BAD_TARGET
    try:
        path = path_text if path_text == "*" else request_path(path_text, escaped_slashes)
    except BadPath as e:
        return Refused(400, str(e), ErrorKind.BAD_REQUEST)
    method = request.method.decode("ascii")
    route = routes.match(
        host_name,
        "/" if path == "*" else path,
        method,
        _header_map(headers) if routes.uses_headers else {},
    )
    return (host_name, raw_path, query, path, method, route), headers
