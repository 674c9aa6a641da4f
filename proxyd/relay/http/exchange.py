"""One request's life on the HTTP relay, from its head to its access-log line: routed (by
proxyd.relay.http.decide, a pure function), run through its route's filter chain
(proxyd.filters), answered by a filter or proxied (proxyd.relay.http.forward), its response
run back through the chain and streamed to the client, then logged.

The exchange's progress is an explicit state (State, moved only along _NEXT): filters run on
the request head, the request is at a server, filters run on the response head, the response
streams, the connection is a tunnel, done. Each direction pauses the other when its write
buffer is full; a filter that waits on a Deferred holds its side the same way.

The Exchange's parts are its base classes, one module each: proxyd.relay.http.filtering (the
exchange as its filters see it, and their running), request_body, answer_body (answers
streamed from a source), own_answers (proxyd's errors, a filter's answers) and
proxied_response (the server's response on its way to the client). This module starts the
exchange, sends it to its pool, and ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from proxyd.config.model import ProxyAction, RouteConfig
from proxyd.filters.api import Answer, Headers, Reject
from proxyd.filters.chain import ALL_WENT_ON, EMPTY, BodyRun, HeadRun, Step
from proxyd.metrics import Cell, ErrorKind
from proxyd.pool import Affinity, Pool, Server
from proxyd.relay.http import grpc, tier
from proxyd.relay.http import headers as policy
from proxyd.relay.http.background import BackgroundClient
from proxyd.relay.http.decide import Refused, decide, is_websocket_upgrade
from proxyd.relay.http.forward import Forward
from proxyd.relay.http.messages import Request, UpstreamHead
from proxyd.relay.http.proxied_response import ProxiedResponse
from proxyd.relay.http.roles import ExchangeClient
from proxyd.relay.http.state import (
    DONE,
    FLAGS,
    NEXT,
    PROXYING,
    REQUEST_FILTERS,
    State,
    check_move,
)
from proxyd.relay.http.upstream_request import upstream_request
from proxyd.relay.session import IdleTimer

_log = Logger(namespace="proxyd.relay.http")


class Exchange(ProxiedResponse):
    """One request from a client connection. Slotted: one is made per request."""

    __slots__ = (
        "_affinity",
        "_upstream_chunked",
        "chain",
        "client",
        "client_trusted",
        "clock",
        "config",
        "ctx",
        "factory",
        "finished",
        "forward",
        "host_name",
        "path",
        "query",
        "raw_target",
        "reading_response",
        "request",
        "response_started",
        "response_timeout",
        "route",
        "started",
        "state",
        "upstream_method",
        "websocket",
    )

    def __init__(self, client: ExchangeClient, request: Request) -> None:
        self.client = client
        self.client_trusted = client.trusted
        """The client is one of the listener's trusted_proxies."""
        self.factory = factory = client.factory
        self.config = factory.config
        self.request = request
        self.upstream_method = request.method
        """The method sent upstream: the route's `upstream_method`, else the client's."""
        self.response_timeout = self.config.response_timeout
        """For this request: less for a gRPC call with a shorter deadline (grpc-timeout)."""
        self.clock = factory.reactor
        self.started = self.clock.seconds()
        self.state = REQUEST_FILTERS
        self.finished = self.response_started = self.reading_response = False
        self.route: RouteConfig | None = None
        self.chain = EMPTY
        self.ctx: policy.RequestContext | None = None
        self.host_name = ""
        self.raw_target = (b"", b"")
        self.path = ""
        self.query = ""
        self.status = 0
        self.error: str | None = None
        self.error_kind: str | None = None  # for the metrics (see proxyd.metrics.ErrorKind)
        self._vars: dict[str, Any] | None = None
        self._added_fields: Headers | None = None
        """Fields for the response from request-phase filters (add_response_fields)."""
        self._head_run: HeadRun | None = None
        self._filter_bound: IdleTimer | None = None
        # Request side.
        self.wants_request_events = False
        self.request_done = not request.has_body
        self.request_bytes = 0
        self._upstream_chunked = request.chunked
        self._request_run: BodyRun | None = None
        self._body_timer = None  # while the request body streams
        # Upstream side.
        self.pool: Pool | None = None
        self.forward: Forward | None = None
        self._preferred: Server | None = None
        self._affinity: Affinity | None = None
        """What the pool keys on for this request, when its pool hashes on the request
        (proxyd.relay.http.tier); else the client connection's."""
        # Response side.
        self.response = None
        self.answer: Answer | None = None
        self.response_fields: Headers = []
        self._response_steps: tuple[Step, ...] = ()
        self._response_run: BodyRun | None = None
        self._source = None
        self._trailers = None
        self.response_bytes = 0
        self._client_chunked = False
        self._client_keep_alive = request.keep_alive
        # Upgrade.
        self.websocket = is_websocket_upgrade(request)
        self.tunnel = None
        self.tunnel_close: str | None = None
        self._tunnel_conn = None

    def _move(self, state: State) -> None:
        """The one place the state changes; the flags the hot paths read follow from it."""
        if state not in NEXT[self.state]:
            check_move(self.state, state)  # raises, saying what moved where
        self.state = state
        # finished; the response head went to the client; response events are wanted (not
        # while filters run on the response head).
        self.finished, self.response_started, self.reading_response = FLAGS[state]

    # Start: route, run the request head's filters, answer or proxy.

    def start(self) -> None:
        client = self.client
        decision = decide(
            self.request,
            peer=client.peer,
            local=client.local,
            tls=client.tls,
            routes=self.factory.routes,
            escaped_slashes=self.config.escaped_slashes,
            new_request_id=policy.new_request_id,
            memo=self.factory.places,
        )
        if isinstance(decision, Refused):
            self.fail(decision.status, decision.why, decision.kind)
            return
        route = self.route = decision.route
        self.ctx = ctx = decision.ctx
        self.request.headers = decision.headers
        self.host_name = decision.host_name
        self.raw_target = (decision.raw_path, decision.raw_query)
        self.path = ctx.path
        self.query = ctx.query
        self.chain = chain = self.factory.chains[None if route is None else route.name]
        if route is not None and isinstance(route.action, ProxyAction):
            self.pool = self.factory.pools[route.action.pool]
        if chain.request_head:
            self._run_head(chain.request_head, self._request_filtered, self.config.response_timeout)
        else:
            self._request_filtered(ALL_WENT_ON, None)

    def _request_filtered(self, position: int, answer: Answer | None) -> None:
        self._head_run = None
        if self._filter_bound is not None:
            self._unbound_filter()
        if answer is not None:
            if isinstance(answer, Reject):
                self.fail(answer.status, answer.why, answer.kind, answer=answer, position=position)
            else:
                self._answer(answer, position)
            return
        if self.route is None:
            self.fail(404, "no route matches", ErrorKind.NO_ROUTE)
            return
        self._proxy()

    def _proxy(self) -> None:
        route = self.route
        pool = self.pool
        assert route is not None and isinstance(route.action, ProxyAction) and pool is not None
        if pool.tier:  # cache peers (docs/cdn.md): the request's key; a peer, or the parent
            pool, self._affinity = tier.route(
                pool,
                self.factory.pools,
                route.security.cache or self.config.cache,
                self.client.affinity.client,
                (self.scheme, self.host, self.path, self.query),
                self.request.headers,
                self._vars is not None and tier.FROM_PEER in self._vars,
            )
            if pool is not self.pool:
                self._preferred = None  # a server of the peers' pool, not of the parent
            self.pool = pool
        if self.websocket and not self.factory.may_open_tunnel():
            self.fail(503, f"max_tunnels ({self.config.max_tunnels}) reached", ErrorKind.REFUSED)
            return
        request = self.request
        method, target, fields = upstream_request(
            request, route, self.path, self.query, self.websocket, self.ctx
        )
        self.upstream_method = method
        upstreams = self.factory.upstreams[pool.name]
        if upstreams.protocol != "http1":
            if self.websocket and request.version == "2":  # a 2xx would open the tunnel
                why = f"pool {pool.name}: WebSocket needs protocol = http1"
                self.fail(501, why, ErrorKind.REFUSED)
                return
            self._upstream_chunked = False  # HTTP/2 frames the body itself
        if grpc.is_grpc(request):
            self.response_timeout = grpc.response_timeout(request, self.response_timeout)
        if request.has_body and self.chain.request_body:
            plan = self._body_plan("request_body")
            if plan is None:
                return
            if plan.buffers:
                self._upstream_chunked = False
                self._buffer_request(plan, target, fields)
                return
            if plan.steps:
                if not plan.keeps_length:
                    # Filters may change the body's length: it goes chunked (over HTTP/1.1).
                    fields = [(k, v) for k, v in fields if k.lower() != b"content-length"]
                    self._upstream_chunked = upstreams.protocol == "http1"
                self._request_run = self._body_run(
                    plan, "request_body", self._request_body_out, self._hold_request
                )
        if self._upstream_chunked:
            fields.append((b"Transfer-Encoding", b"chunked"))
        self._forward(UpstreamHead(self.upstream_method, target, fields))

    def _forward(self, head: UpstreamHead) -> None:
        """Send the request to the route's pool, `head` first."""
        pool = self.pool
        assert pool is not None
        self._move(PROXYING)
        forward = self.forward = Forward(
            self,
            pool,
            self.factory.upstreams[pool.name],
            head,
            self._preferred,
            self.factory.attempts,
            self.client.affinity if self._affinity is None else self._affinity,
        )
        forward.driver.start()

    def response_timed_out(self) -> None:
        """The client connection's response timer: no response head within
        response_timeout."""
        if self.state is PROXYING and self.forward is not None:
            self.forward.response_timed_out()

    # Backpressure from the client's write buffer.

    def client_writable(self, writable: bool) -> None:
        if self.forward is not None:
            self.forward.client_writable(writable)
        if self._source is not None:
            self._source_writable(writable)

    def client_lost(self) -> None:
        if self.finished:
            return
        if self.error_kind is None:  # else reset by proxyd, which said why (client_stalled)
            self.error = "client closed the connection"
            self.error_kind = ErrorKind.CLIENT_ABORTED
        if not self.response_started:
            self.status = 499  # nginx's "client closed request"
        self._stop_forward()
        self._finish(keep_alive=False, truncated=True)

    def _cut(self, why: str, kind: ErrorKind) -> None:
        self.error = why
        self.error_kind = kind
        self._stop_forward()
        self._finish(keep_alive=False, truncated=True)

    # Ending.

    def _stop_forward(self) -> None:
        forward = self.forward
        if forward is not None:
            forward.stop()
        self._stop_runs()

    def _stop_runs(self) -> None:
        """Stop all but the forward: a tunnel's connection, the filters' runs and bound."""
        conn, self._tunnel_conn = self._tunnel_conn, None
        if conn is not None:
            conn.abort()
        if self._head_run is not None:
            self._head_run.cancel()
        if self._request_run is not None:
            self._request_run.cancel()
        if self._response_run is not None:
            self._response_run.cancel()
        if self._filter_bound is not None:
            self._unbound_filter()
        if self._source is not None:
            self._stop_source()

    def _finish(self, keep_alive: bool, truncated: bool = False) -> None:
        if self.finished:
            return
        self._move(DONE)
        self.wants_request_events = False
        forward = self.forward
        if forward is not None:
            forward.stop(for_good=True)  # its driver lets go of the forward and this exchange
        self._stop_runs()
        if self._body_timer is not None:
            self._stop_body_timer()
        self.factory.exchange_over(self)
        if self.chain.log:
            self._run_log_filters()
        # Drop the references back to this exchange (the runs' bound methods), so that it is
        # freed at once, not left to the cycle collector.
        self.forward = None
        self._head_run = self._request_run = self._response_run = None
        self.client.exchange_done(self, keep_alive=keep_alive and not truncated)

    # Requests proxyd makes itself.

    def background(
        self,
        headers: Headers,
        prepare: Callable[[Exchange], None],
        done: Callable[[Exchange], None],
    ) -> None:
        """Make this request again in the background, with `headers` (a cache's refresh):
        through the listener's routes and chain as if the same client sent it; `prepare` gets
        the new exchange before it starts (to set its vars), `done` once it is over."""
        client = self.client
        background = BackgroundClient(client.factory, client.peer, client.local, client.tls, done)
        request = Request(
            b"GET",
            self.request.target,
            "1.1",
            list(headers),
            keep_alive=False,
            host=self.request.host,
        )
        exchange = Exchange(background, request)  # type: ignore[arg-type]
        prepare(exchange)
        exchange.start()

    # Metrics.

    def cell(self, server: Server | None) -> Cell:
        """The metrics of this exchange's route and pool at `server` (None: proxyd's own)."""
        route = self.route
        pool = self.pool
        return self.factory.stats.cell(
            "" if route is None else route.name,
            "" if pool is None else pool.name,
            "" if server is None else server.name,
        )
