"""The relays' metrics, without I/O: what each listener's relay counts per route, pool and
server, cheaply enough for the HTTP hot path, and the snapshot that the admin API and
/metrics show.

Each relay factory has a `stats` (RelayStats). It holds one Cell per (route, pool, server)
seen, found by a dict lookup on a tuple of names; a relay that keeps a connection to one server
keeps its cell. Counting is attribute and list arithmetic: no label strings are built and no
prometheus-client object is touched while relaying (proxyd.admin.metrics renders the
snapshot on each scrape). An HTTP request costs about 1 us of counting (Exchange._count:
one lookup, two histogram observations), some 1.5 % of what proxyd spends per keep-alive
request.

The snapshot is JSON-able, nested one level per label, every key a string:

    {KIND: {LISTENER: {ROUTE: {POOL: {SERVER: {field: value}}}}}}

KIND is the listener's kind (tcp, http, https, udp, websocket), ROUTE the HTTP route's name,
POOL and SERVER names from the config; "" stands for none: no route (non-HTTP listeners, a
request no route matched), no pool, no server (proxyd answered or closed by itself). A cell's
fields are numbers, dicts of numbers (`responses` by status class, `errors` by kind) or
histograms ({"buckets": {LE: cumulative count}, "sum": seconds, "count": n}); fields at zero
are left out. Every value is a total since the process started, so that
add_counters, summing two snapshots, gives the snapshot of both
processes.

Label sets are bounded by the config (listeners, routes, pools, servers) and by the fixed
vocabularies below (status classes, ErrorKind): never by a client's address, a path or a
Host value.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "BUCKETS",
    "TRAFFIC_FIELDS",
    "Cell",
    "ErrorKind",
    "Histogram",
    "RelayStats",
    "add_counters",
    "cells",
    "server_traffic",
]

BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds of the latency histograms, in seconds (+Inf comes after): a relay on
loopback answers in a millisecond, a slow upstream in seconds. Typed of any length: a compiled
module cannot read a Final tuple of floats typed with its length (mypyc/mypyc#1183)."""

_LE: Final = (*(repr(bound) for bound in BUCKETS), "+Inf")
"""The bucket keys of a snapshot: Prometheus's `le` values as prometheus-client writes them."""

_CLASSES: Final = ("", "1xx", "2xx", "3xx", "4xx", "5xx")
"""Status classes by status // 100 (a status outside 100-599 is not counted)."""


class ErrorKind(StrEnum):
    """Why a request, connection, session or query went wrong, as `errors` counts it.

    The TCP and WebSocket relays count their close reasons that are not a clean end
    (proxyd.relay.session.CloseReason, proxyd.relay.websocket.WsClose) under the same
    words; the HTTP relay counts these."""

    CONNECT_FAILED = "connect_failed"
    """The server refused or could not be reached (a failed attempt: the request may have
    gone on to another server)."""
    CONNECT_TIMEOUT = "connect_timeout"
    TLS_FAILED = "tls_handshake_failed"
    """The TLS handshake with the server failed (pools with `tls = on`)."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    """No response head within response_timeout."""
    UPSTREAM_RESET = "upstream_reset"
    """The server closed the connection before its response was complete."""
    BAD_RESPONSE = "bad_response"
    """The server's response could not be parsed (or switched protocols unasked)."""
    UPSTREAM_IDLE = "upstream_idle"
    """The response stopped for idle_timeout while it streamed."""
    CLIENT_ABORTED = "client_aborted"
    """The client closed before its response was complete."""
    CLIENT_STALLED = "client_stalled"
    """The client took none of what waited for it (it stopped reading) for the send timeout
    (idle_timeout; a tunnel's tunnel_timeout): reset."""
    UPSTREAM_STALLED = "upstream_stalled"
    """A tunnel's server took none of what waited for it for tunnel_timeout: reset."""
    BAD_REQUEST = "bad_request"
    """The request could not be parsed or was refused as malformed (4xx by proxyd)."""
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    NO_ROUTE = "no_route"
    NO_SERVER = "no_server"
    """No server of the pool was up (or all were at max_connections)."""
    QUEUE_FULL = "queue_full"
    """Every slot taken and the queue full: a route's max_in_flight and max_queued, or every
    server at max_connections and the pool's max_queued (503)."""
    QUEUE_TIMEOUT = "queue_timeout"
    """Waited queue_timeout in a route's or a pool's queue without a slot (503)."""
    REFUSED = "refused"
    """Refused by a policy: Origin, max_tunnels, WebSocket-only port, CONNECT."""
    INTERNAL = "internal_error"
    FILTER_FAILED = "filter_failed"
    """An HTTP filter raised, returned what its phase does not take, did not finish within
    its bound, or could not take a response body it gets whole (over its buffer bound, or
    one it cannot transform): 500 (or 504, 502), or the response cut."""
    LOCAL_RESOURCE = "local_resource"
    """proxyd could not open a connection to a server for want of a resource of its own
    (file descriptors, ephemeral ports, memory): answered 503, never counted against the
    server."""
    HANDSHAKE_FAILED = "upstream_handshake_failed"
    """WebSocket message mode: the server did not answer proxyd's opening handshake 101."""
    PORT_UNREACHABLE = "port_unreachable"
    """UDP: the server answered ICMP port unreachable."""
    QUERY_TIMEOUT = "query_timeout"
    """DNS: no answer from the server within query_timeout."""
    UNMATCHED = "unmatched"
    """DNS: an answer from the server matching no query it was sent."""
    ACCESS_DENIED = "access_denied"
    """The client's address is refused by an `access` list (HTTP: 403; TCP and WebSocket:
    closed at accept; UDP counts its dropped datagrams in the listener's `dropped_denied`,
    proxyd_udp_dropped{reason="access_denied"}, as its other drops)."""
    CLIENT_LIMIT = "client_limit"
    """TCP and WebSocket: the client's address was at max_connections_per_client or over
    max_connection_rate_per_client: closed at accept."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """A method outside `allowed_methods`: 405."""
    URI_TOO_LONG = "uri_too_long"
    """A route's max_uri_length or a max_query_length exceeded: 414."""
    BODY_TOO_LARGE = "body_too_large"
    """A route's max_body_size, or the bound of a filter that gets the request body whole
    (a route's max_json_body), exceeded: 413."""
    RULE_DENIED = "rule_denied"
    """A [rule] in enforce mode refused the request (its `rule_matches` say which)."""
    AUTH_FAILED = "auth_failed"
    """A route's authentication refused the request (its `auth_failures` say by method and
    reason)."""
    RATE_LIMITED = "rate_limited"
    """A [ratelimit] of the route refused the request (429 unless its `status` says
    otherwise; proxyd_ratelimit_requests_total says which limit)."""
    RATELIMIT_STORE = "ratelimit_store"
    """A [ratelimit]'s Redis store was slow or down and its `on_store_error = deny`: 503."""
    ACCEPT_FAILED = "accept_failed"
    """A listener could not accept a connection for want of a resource of proxyd's (EMFILE,
    ENFILE, ENOBUFS, ENOMEM; proxyd.accept_log): counted with no route, pool or server."""


class Histogram:
    """Observations counted per bucket of BUCKETS (not cumulative: one increment each), and
    their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, as Prometheus's `le` (less or equal) wants.
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        buckets: dict[str, int] = {}
        total = 0
        for le, count in zip(_LE, self.counts, strict=True):
            total += count
            buckets[le] = total
        return {"buckets": buckets, "sum": self.sum, "count": total}


class Cell:
    """The counters of one (route, pool, server) of a listener. The relays add to the
    attributes directly; `bytes_in` is what clients sent (relayed towards servers),
    `bytes_out` what was sent to clients."""

    __slots__ = (
        "auth_failures",
        "bytes_in",
        "bytes_out",
        "compression",
        "connect_duration",
        "connections",
        "datagrams_in",
        "datagrams_out",
        "errors",
        "http2_connections",
        "http2_requests",
        "password_checks",
        "query_duration",
        "request_duration",
        "responses",
        "retries",
        "rule_matches",
        "sessions",
        "upstream_duration",
    )

    def __init__(self) -> None:
        self.responses = [0] * len(_CLASSES)
        """HTTP responses by status // 100 (index 1..5)."""
        self.bytes_in = 0
        self.bytes_out = 0
        self.retries = 0
        """HTTP requests moved from this server to another (or tried anew) after a failure."""
        self.connections = 0
        """TCP and WebSocket connections established to the server."""
        self.sessions = 0
        """UDP sessions attached to the server."""
        self.http2_requests = 0
        """HTTP requests that came on HTTP/2 streams (the rest of `responses` came on
        HTTP/1.x)."""
        self.http2_connections = 0
        """Client connections that spoke HTTP/2 (the listener's cell of no route)."""
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.errors: dict[str, int] = {}
        self.password_checks = 0
        """Password hashes computed by basic auth for requests of this cell (a request that
        joins a check in flight, or whose credentials passed recently, costs none)."""
        self.auth_failures: dict[str, dict[str, int]] = {}
        """HTTP requests a route's authentication refused, by method (basic, api_key, jwt,
        forward) and reason (a word of the method's fixed set: proxyd.auth)."""
        self.rule_matches: dict[str, dict[str, int]] = {}
        """HTTP requests a [rule] matched, by rule name and mode (enforce, log_only)."""
        self.compression: dict[str, dict[str, int]] = {}
        """HTTP responses compressed to their end (proxyd.filters.compress), by coding:
        `responses`, `bytes_in` (the server's body), `bytes_out` (the body compressed)."""
        self.request_duration = Histogram()
        """HTTP: from the request head received to the response's end."""
        self.upstream_duration = Histogram()
        """HTTP: from the request sent to the server to its response head."""
        self.connect_duration = Histogram()
        """TCP, WebSocket, and HTTP's new upstream connections: the connect (and TLS and
        WebSocket handshakes) to the server."""
        self.query_duration = Histogram()
        """DNS: from the query received to its answer."""

    def response(self, status: int, seconds: float) -> None:
        """An HTTP response of `status`, `seconds` after its request's head arrived."""
        if 100 <= status < 600:
            self.responses[status // 100] += 1
        self.request_duration.observe(seconds)

    def error(self, kind: str) -> None:
        errors = self.errors
        errors[kind] = errors.get(kind, 0) + 1

    def auth_failure(self, method: str, reason: str) -> None:
        by_reason = self.auth_failures.get(method)
        if by_reason is None:
            by_reason = self.auth_failures[method] = {}
        by_reason[reason] = by_reason.get(reason, 0) + 1

    def rule_match(self, rule: str, mode: str) -> None:
        by_mode = self.rule_matches.get(rule)
        if by_mode is None:
            by_mode = self.rule_matches[rule] = {}
        by_mode[mode] = by_mode.get(mode, 0) + 1

    def compressed(self, coding: str, bytes_in: int, bytes_out: int) -> None:
        figures = self.compression.get(coding)
        if figures is None:
            figures = self.compression[coding] = {"responses": 0, "bytes_in": 0, "bytes_out": 0}
        figures["responses"] += 1
        figures["bytes_in"] += bytes_in
        figures["bytes_out"] += bytes_out

    def snapshot(self) -> dict[str, Any]:
        """The non-zero fields as JSON-able values."""
        found: dict[str, Any] = {}
        responses = {
            name: count for name, count in zip(_CLASSES, self.responses, strict=True) if count
        }
        if responses:
            found["responses"] = responses
        for name in (
            "bytes_in",
            "bytes_out",
            "retries",
            "connections",
            "sessions",
            "http2_requests",
            "http2_connections",
            "datagrams_in",
            "datagrams_out",
            "password_checks",
        ):
            value = getattr(self, name)
            if value:
                found[name] = value
        if self.errors:
            found["errors"] = dict(self.errors)
        if self.auth_failures:
            found["auth_failures"] = {
                method: dict(reasons) for method, reasons in self.auth_failures.items()
            }
        if self.rule_matches:
            found["rule_matches"] = {rule: dict(modes) for rule, modes in self.rule_matches.items()}
        if self.compression:
            found["compression"] = {
                coding: dict(figures) for coding, figures in self.compression.items()
            }
        for name in ("request_duration", "upstream_duration", "connect_duration", "query_duration"):
            histogram: Histogram = getattr(self, name)
            if any(histogram.counts):
                found[name] = histogram.snapshot()
        return found


class RelayStats:
    """One listener's cells, by (route, pool, server) names."""

    def __init__(self, kind: str, listener: str) -> None:
        self.kind = kind
        self.listener = listener
        self._cells: dict[tuple[str, str, str], Cell] = {}
        self.limits: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
        """The listener's rate limits' figures by limit (proxyd.filters.ratelimit), shown
        under the cell of no route, pool or server as `ratelimits`; set by the relay that
        serves with these stats now."""
        self.queues: Callable[[], Mapping[str, Mapping[str, float]]] | None = None
        """The routes' max_in_flight queues' figures by route (proxyd.filters.concurrency),
        shown under the route's cell of no pool or server as `queue`."""

    def cell(self, route: str, pool: str, server: str) -> Cell:
        """The cell of (route, pool, server), made when first asked for ("" for none)."""
        key = (route, pool, server)
        found = self._cells.get(key)
        if found is None:
            found = self._cells[key] = Cell()
        return found

    def snapshot(self) -> dict[str, Any]:
        """{KIND: {LISTENER: {ROUTE: {POOL: {SERVER: fields}}}}}, cells with no count left
        out."""
        routes: dict[str, Any] = {}
        for (route, pool, server), cell in self._cells.items():
            fields = cell.snapshot()
            if fields:
                routes.setdefault(route, {}).setdefault(pool, {})[server] = fields
        limits = self.limits() if self.limits is not None else None
        if limits:
            listener = routes.setdefault("", {}).setdefault("", {}).setdefault("", {})
            listener["ratelimits"] = {name: dict(figures) for name, figures in limits.items()}
        queues = self.queues() if self.queues is not None else None
        for route, figures in (queues or {}).items():
            routes.setdefault(route, {}).setdefault("", {}).setdefault("", {})["queue"] = dict(
                figures
            )
        return {self.kind: {self.listener: routes}}


def cells(snapshot: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str, str, dict[str, Any]]]:
    """Every cell of a snapshot (one process's, or a sum): kind, listener, route, pool,
    server, fields."""
    for kind, listeners in snapshot.items():
        for listener, routes in listeners.items():
            for route, pools in routes.items():
                for pool, servers in pools.items():
                    for server, fields in servers.items():
                        yield kind, listener, route, pool, server, fields


TRAFFIC_FIELDS: Final = (
    "requests",
    "connections",
    "bytes_in",
    "bytes_out",
    "errors",
    "response_time_sum",
    "response_time_count",
)


def server_traffic(snapshot: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each server's traffic totals over every listener and route, keyed "POOL/SERVER", for
    the status document (the stats page derives rates from two polls).

    `requests` counts HTTP responses; `connections` TCP and WebSocket connections and UDP
    sessions; `errors` every error kind. The response time is the HTTP total latency; for a
    server that served no HTTP request, the DNS query time, else the connect time."""
    totals: dict[str, dict[str, Any]] = {}
    times: dict[str, dict[str, list[float]]] = {}
    for _, _, _, pool, server, fields in cells(snapshot):
        if not pool or not server:
            continue
        key = f"{pool}/{server}"
        total = totals.get(key)
        if total is None:
            total = totals[key] = dict.fromkeys(TRAFFIC_FIELDS, 0)
            total["response_time_sum"] = 0.0
            times[key] = {}
        total["requests"] += sum(fields.get("responses", {}).values())
        total["connections"] += fields.get("connections", 0) + fields.get("sessions", 0)
        total["bytes_in"] += fields.get("bytes_in", 0)
        total["bytes_out"] += fields.get("bytes_out", 0)
        total["errors"] += sum(fields.get("errors", {}).values())
        for name in ("request_duration", "query_duration", "connect_duration"):
            histogram = fields.get(name)
            if histogram is not None:
                seen = times[key].setdefault(name, [0.0, 0])
                seen[0] += histogram["sum"]
                seen[1] += histogram["count"]
    for key, total in totals.items():
        for name in ("request_duration", "query_duration", "connect_duration"):
            found = times[key].get(name)
            if found is not None and found[1]:
                total["response_time_sum"], total["response_time_count"] = found[0], int(found[1])
                break
    return totals


def add_counters(total: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Add `more` into `total` key by key: numbers are summed, dicts are added recursively.
    Summing the counters (and `stats` snapshots) of two processes gives those of both."""
    for key, value in more.items():
        if isinstance(value, Mapping):
            add_counters(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total
