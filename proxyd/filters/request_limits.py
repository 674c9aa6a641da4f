"""Request limits of a listener or route: the methods it serves (405 with Allow), the
length of the request target and of its query (414), the size of the body (413).

The listener's max_uri_length and max_body_size are enforced as the request is read, before
it is routed (proxyd.relay.http.h1); a route's, which may only be smaller, here. A body's
size is judged at once from its Content-Length; a chunked body is counted as it streams and
refused as soon as it goes over (the request is then cut: the connection closes after the
413, as nginx does)."""

from __future__ import annotations

from proxyd.filters.api import Reject, Rejected
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import ErrorKind


class RequestLimits:
    """Built in where the listener or the route has one of allowed_methods,
    max_query_length, or (routes) max_uri_length or max_body_size. Each limit is None when
    off. A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) passes the
    method check on a route with `cors`: the CORS filter answers it."""

    def __init__(
        self,
        *,
        methods: frozenset[str] | None = None,
        max_uri_length: int | None = None,
        max_query_length: int | None = None,
        max_body_size: int | None = None,
        preflight: bool = False,
    ) -> None:
        if methods is not None and "GET" in methods:
            methods = methods | {"HEAD"}  # HEAD is GET without the body (RFC 9110 9.3.2)
        self.methods = methods
        self.allow = b", ".join(m.encode("ascii") for m in sorted(methods or ()))
        self.max_uri_length = max_uri_length or None
        self.max_query_length = max_query_length or None
        self.max_body_size = max_body_size
        self.preflight = preflight

    def request_head(self, exchange: RelayExchange) -> Reject | None:
        methods = self.methods
        if methods is not None and exchange.method not in methods and not self._preflight(exchange):
            reject = Reject(
                405, f"method {exchange.method[:20]} not allowed", ErrorKind.METHOD_NOT_ALLOWED
            )
            reject.headers.append((b"Allow", self.allow))
            return reject
        request = exchange.request
        limit = self.max_uri_length
        if limit is not None and len(request.target) > limit:
            why = f"request target of {len(request.target)} bytes, over {limit}"
            return Reject(414, why, ErrorKind.URI_TOO_LONG)
        limit = self.max_query_length
        if limit is not None and len(exchange.raw_target[1]) > limit:
            why = f"query of {len(exchange.raw_target[1])} bytes, over {limit}"
            return Reject(414, why, ErrorKind.URI_TOO_LONG)
        limit = self.max_body_size
        if limit is not None and (request.content_length or 0) > limit:
            # Answered before the body is read: the connection closes after the answer.
            why = f"body of {request.content_length} bytes, over {limit}"
            return Reject(413, why, ErrorKind.BODY_TOO_LARGE)
        return None

    def _preflight(self, exchange: RelayExchange) -> bool:
        if not self.preflight or exchange.method != "OPTIONS":
            return False
        names = {name.lower() for name, _ in exchange.request_headers}
        return b"origin" in names and b"access-control-request-method" in names


class BodyLimits(RequestLimits):
    """RequestLimits with a max_body_size: a chunked body is counted as it streams."""

    keeps_body_length = True
    """request_body passes the body as it is: the request keeps its Content-Length."""

    def request_body(self, exchange: RelayExchange, data: bytes, end: bool) -> bytes:
        limit = self.max_body_size
        if limit is not None and exchange.request_bytes > limit:
            raise Rejected(Reject(413, f"body over {limit} bytes", ErrorKind.BODY_TOO_LARGE))
        return data


def request_limits(
    *,
    methods: frozenset[str] | None = None,
    max_uri_length: int | None = None,
    max_query_length: int | None = None,
    max_body_size: int | None = None,
    preflight: bool = False,
) -> RequestLimits | None:
    """The filter for these limits (None: no limit is on); with a max_body_size, one that
    also counts the body."""
    if methods is None and not max_uri_length and not max_query_length and max_body_size is None:
        return None
    kind = RequestLimits if max_body_size is None else BodyLimits
    return kind(
        methods=methods,
        max_uri_length=max_uri_length,
        max_query_length=max_query_length,
        max_body_size=max_body_size,
        preflight=preflight,
    )
