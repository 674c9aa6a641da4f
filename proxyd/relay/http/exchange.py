"""One request's life on the HTTP relay: route it, answer it locally or proxy it, log it.

A proxied request picks a server from the route's pool, reuses an idle keep-alive connection
or opens one, sends the head, then streams the body as the client sends it; the response
streams back the same way. Each direction pauses the other when its write buffer is full.

Retries (nginx's proxy_next_upstream, with its defaults made explicit):
- a failed connect always moves on to the next server;
- a reused keep-alive connection that closes before any response byte is the race with the
  server's own idle timeout: the request is sent again on a fresh connection, not counted;
- a reset, a response timeout, or a 502/503/504 answer moves on only for idempotent methods
  (RFC 9110 9.2.2), and only while the request body sent so far is still held (up to
  REPLAY_LIMIT bytes);
- never once any of the response was sent to the client; at most `retries` times.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

import httptools
from twisted.internet import defer
from twisted.internet import error as twisted_error
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.model import (
    Address,
    HeaderRule,
    HttpListenerConfig,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteConfig,
)
from proxyd.metrics import Cell, ErrorKind, RelayStats
from proxyd.pool import Pool, Server, why_no_server
from proxyd.pool.fault import Fault, fault_of
from proxyd.relay.http import headers as policy
from proxyd.relay.http.h1 import (
    Body,
    End,
    Headers,
    HttpError,
    Request,
    RequestReader,
    Response,
    chunk,
    last_chunk,
    request_head,
    response_head,
)
from proxyd.relay.http.routing import BadPath, RouteTable, request_path, rewrite_path
from proxyd.relay.http.tunnel import Tunnel, TunnelClient
from proxyd.relay.http.upstream import ConnectionPool, UpstreamConnection
from proxyd.relay.session import Attempts, IdleTimer, client_hash_key
from proxyd.tls import PeerTls, describe_failure

_log = Logger(namespace="proxyd.relay.http")

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REPLAY_LIMIT: Final = 64 * 1024
"""Request body bytes kept so that a failed attempt can be sent again elsewhere."""
RETRY_STATUSES: Final = frozenset({502, 503, 504})
MAX_INTERIM_RESPONSES: Final = 16
"""1xx responses a server may send before its final one (100 Continue, 102, 103 Early
Hints); past that it is answering with a storm, a bad response."""
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_NOT_FORWARDED: Final = frozenset({b"expect"})
"""Request fields proxyd answers itself (Expect: 100-continue) beside the hop-by-hop ones."""
_HOST_RE: Final = re.compile(rb"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?$")


def _tls_fields(tls: PeerTls) -> dict[str, str]:
    return {
        "tls_version": tls.version,
        "tls_cipher": tls.cipher,
        "tls_sni": tls.server_name,
        "tls_client_subject": tls.client_subject,
        "tls_client_issuer": tls.client_issuer,
        "tls_client_fingerprint": tls.client_fingerprint,
        "tls_client_verify": tls.client_verify,
    }


@functools.lru_cache(maxsize=1024)
def split_host(host: bytes) -> str | None:
    """The name of a Host value for routing: lower case, no port, no trailing dot; None when
    the value is not a valid uri-host[:port] (RFC 9110 7.2). Cached: a listener sees the same
    few Host values again and again."""
    match = _HOST_RE.match(host)
    if match is None:
        return None
    return match.group(1).decode("ascii").lower().rstrip(".")


def sticky_id(server: Server) -> str:
    """The cookie value naming `server`: a digest, so that addresses are not disclosed."""
    return hashlib.blake2b(server.name.encode(), digest_size=6).hexdigest()


def _has_token(headers: Headers, name: bytes, token: bytes) -> bool:
    """A comma-separated field `name` lists `token` (case-insensitive)."""
    for key, value in headers:
        if key.lower() == name and any(
            part.strip(b" \t").lower() == token for part in value.split(b",")
        ):
            return True
    return False


def is_websocket_upgrade(request: Request) -> bool:
    """An opening handshake of RFC 6455 4.1: GET, HTTP/1.1, no body, Connection: upgrade,
    Upgrade: websocket. Other upgrades (h2c) are not relayed: their fields are removed."""
    return (
        request.upgrade
        and request.method == b"GET"
        and request.version == "1.1"
        and not request.has_body
        and _has_token(request.headers, b"upgrade", b"websocket")
    )


def _cookie(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            cookie_name, _, cookie_value = pair.strip().partition(b"=")
            if cookie_name == name:
                return cookie_value
    return None


class OriginCheck(Protocol):
    """[websocket] allowed_origins (proxyd.relay.websocket_policy.OriginPolicy)."""

    def allows(self, origin: str | None) -> bool: ...


class Listener(Protocol):
    """What an exchange uses of its listener's factory (proxyd.relay.http.server's
    HttpRelayFactory): the config, the pools, the counters and the access log."""

    @property
    def config(self) -> HttpListenerConfig: ...

    @property
    def reactor(self) -> Any:
        """IReactorTCP and IReactorTime."""

    @property
    def routes(self) -> RouteTable: ...

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def upstreams(self) -> Mapping[str, ConnectionPool]: ...

    @property
    def websocket_only(self) -> OriginCheck | None: ...

    @property
    def hsts(self) -> bytes | None: ...

    @property
    def stats(self) -> RelayStats: ...

    def may_open_tunnel(self) -> bool: ...

    def tunnel_opened(self) -> None: ...

    def tunnel_closed(self) -> None: ...

    def error_body(self, status: int) -> tuple[bytes, bytes]: ...

    def log_exchange(self, exchange: Exchange) -> None: ...


class ExchangeClient(TunnelClient, Protocol):
    """What an exchange uses of its client connection (proxyd.relay.http.server's
    ClientConnection), beside what the tunnel of an upgrade uses of it."""

    @property
    def factory(self) -> Listener: ...

    @property
    def reader(self) -> RequestReader: ...

    @property
    def peer(self) -> Address: ...

    @property
    def local(self) -> Address: ...

    @property
    def tls(self) -> PeerTls | None: ...

    @property
    def trusted(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    @property
    def log_fields(self) -> str: ...

    def send(self, pieces: list[bytes]) -> None: ...

    def drive(self) -> None: ...

    def close_after_response(self) -> None: ...

    def expect_response(self, exchange: Exchange, timeout: float) -> None: ...

    def stop_expecting_response(self) -> None: ...

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None: ...


class Exchange:
    """One request from a client connection, from its head to its access-log line. Slotted:
    one is made per request, with over forty attributes (1.9 -> 1.1 us to make one)."""

    __slots__ = (
        "_attempt_started",
        "_awaiting_response",
        "_body_timer",
        "_client_chunked",
        "_client_keep_alive",
        "_connecting",
        "_head",
        "_idle",
        "_interim",
        "_last_failure",
        "_replay",
        "_replay_size",
        "_replayable",
        "_sent_continue",
        "_sticky_cookie",
        "_upstream_chunked",
        "attempts",
        "client",
        "clock",
        "config",
        "conn",
        "connect_time",
        "ctx",
        "error",
        "error_kind",
        "factory",
        "finished",
        "header_time",
        "pool",
        "request",
        "request_bytes",
        "request_done",
        "response",
        "response_bytes",
        "response_started",
        "route",
        "server",
        "started",
        "status",
        "tunnel",
        "tunnel_close",
        "upstream_status",
        "upstreams",
        "wants_request_events",
        "websocket",
    )

    def __init__(self, client: ExchangeClient, request: Request) -> None:
        self.client = client
        self.factory = factory = client.factory
        self.config = factory.config
        self.request = request
        self.clock = factory.reactor
        self.started = self.clock.seconds()
        self.route: RouteConfig | None = None
        self.ctx: policy.RequestContext | None = None
        self.status = 0
        self.finished = False
        # Request side.
        self.wants_request_events = False
        self.request_done = not request.has_body
        self.request_bytes = 0
        self._replay: list[bytes] = []
        self._replay_size = 0
        self._replayable = True
        self._sent_continue = False
        self._head: list[bytes] = []
        self._upstream_chunked = request.chunked
        # Upstream side.
        self.pool: Pool | None = None
        self.upstreams: ConnectionPool | None = None
        self.attempts = Attempts(retries=self.config.retries)
        self.server: Server | None = None
        self.conn: UpstreamConnection | None = None
        self._connecting: defer.Deferred[UpstreamConnection] | None = None
        self._last_failure = (502, "no attempt")
        self._attempt_started = 0.0
        self.upstream_status: int | None = None
        self.connect_time: float | None = None
        self.header_time: float | None = None
        self._awaiting_response = False
        """The response timeout runs (on the client connection's timer)."""
        self._interim = 0
        """1xx responses received for this request, over all attempts."""
        self._sticky_cookie: bytes | None = None
        # Response side.
        self.response: Response | None = None
        self.response_started = False
        self.response_bytes = 0
        self._client_chunked = False
        self._client_keep_alive = request.keep_alive
        self._idle: IdleTimer | None = None
        """While the response streams: started after the read that brought its head, if that
        read did not end it (a small response needs no timer)."""
        self._body_timer: IdleTimer | None = None
        """While the request body streams."""
        self.error: str | None = None
        self.error_kind: str | None = None
        """What went wrong, for the metrics (proxyd.metrics.ErrorKind), when the exchange
        itself failed; a failed attempt at a server is counted on that server as it fails."""
        # Upgrade.
        self.websocket = is_websocket_upgrade(request)
        self.tunnel: Tunnel | None = None
        self.tunnel_close: str | None = None

    # Start: parse the target, route, act.

    def start(self) -> None:
        request = self.request
        if request.method == b"CONNECT":
            self.fail(405, "CONNECT is not served by a reverse proxy", ErrorKind.REFUSED)
            return
        target = request.target
        host = request.host
        if target.startswith(b"/"):
            raw_path, _, query = target.partition(b"?")
        elif target == b"*" and request.method == b"OPTIONS":
            raw_path, query = b"*", b""
        else:
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                self.fail(400, "invalid request target", ErrorKind.BAD_REQUEST)
                return
            if url.schema not in (b"http", b"https") or not url.host:
                self.fail(400, "invalid request target", ErrorKind.BAD_REQUEST)
                return
            # RFC 9112 3.2.2: an absolute-form target's authority replaces Host.
            host = url.host + (b":%d" % url.port if url.port else b"")
            raw_path, query = url.path or b"/", url.query or b""
            self.request.headers = [(k, v) for k, v in request.headers if k.lower() != b"host"] + [
                (b"Host", host)
            ]
        host_name = split_host(host)
        if host_name is None:
            self.fail(400, "invalid Host", ErrorKind.BAD_REQUEST)
            return
        try:
            path_text = raw_path.decode("ascii")
        except UnicodeDecodeError:
            self.fail(400, "invalid request target", ErrorKind.BAD_REQUEST)
            return
        try:
            path = (
                path_text
                if path_text == "*"
                else request_path(path_text, self.config.escaped_slashes)
            )
        except BadPath as e:
            self.fail(400, str(e), ErrorKind.BAD_REQUEST)
            return
        method = request.method.decode("ascii")
        routes = self.factory.routes
        route = routes.match(
            host_name,
            "/" if path == "*" else path,
            method,
            self._header_map() if routes.uses_headers else {},
        )
        query_text = query.decode("latin-1")
        uri = path + ("?" + query_text if query else "")
        request_id = policy.request_id(request.headers, _new_request_id)
        client = self.client.peer
        local = self.client.local
        tls = self.client.tls
        self.ctx = policy.RequestContext(
            client_ip=client.host,
            client_port=client.port,
            scheme="http" if tls is None else "https",
            host=host.decode("latin-1"),
            method=method,
            path=path,
            query=query_text,
            uri=uri,
            request_id=request_id,
            route=route.name if route is not None else "",
            local_ip=local.host,
            local_port=local.port,
            **(_tls_fields(tls) if tls is not None else {}),
        )
        if self.config.https_redirect is not None:
            self._redirect_to_https(host_name, raw_path, query)
            return
        if route is None:
            self.fail(404, "no route matches", ErrorKind.NO_ROUTE)
            return
        self.route = route
        action = route.action
        if isinstance(action, RedirectAction):
            location = policy.expand(action.location, self.ctx).encode("latin-1")
            self.respond(action.status, b"", [(b"Location", location)], route_rules=True)
        elif isinstance(action, RespondAction):
            self.respond(
                action.status,
                action.body.encode(),
                [(b"Content-Type", action.content_type.encode())],
                route_rules=True,
            )
        else:
            self._proxy(action, path, query)

    def _redirect_to_https(self, host: str, path: bytes, query: bytes) -> None:
        """`https_redirect`: 308 keeps the method and body (RFC 9110 15.4.9)."""
        port = self.config.https_redirect
        authority = host  # an IPv6 literal keeps its brackets
        if port != 443:
            authority += f":{port}"
        location = b"https://" + authority.encode("ascii") + path + (b"?" + query if query else b"")
        self.respond(308, b"", [(b"Location", location)])

    def _header_map(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for name, value in self.request.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            fields[key] = fields[key] + ", " + text if key in fields else text
        return fields

    def _proxy(self, action: ProxyAction, path: str, query: bytes) -> None:
        assert self.route is not None and self.ctx is not None
        self.pool = self.factory.pools[action.pool]
        self.upstreams = self.factory.upstreams[action.pool]
        origins = self.factory.websocket_only
        if origins is not None:
            if not self.websocket:
                self.error_kind = ErrorKind.REFUSED
                self.respond(
                    426,
                    b"This port takes WebSocket connections only.\n",
                    [
                        (b"Content-Type", b"text/plain; charset=utf-8"),
                        (b"Upgrade", b"websocket"),
                        (b"Connection", b"Upgrade"),
                    ],
                )
                return
            origin = next((v for k, v in self.request.headers if k.lower() == b"origin"), None)
            if not origins.allows(None if origin is None else origin.decode("latin-1")):
                self.fail(403, "Origin not allowed", ErrorKind.REFUSED)
                return
        if self.websocket and not self.factory.may_open_tunnel():
            self.fail(503, f"max_tunnels ({self.config.max_tunnels}) reached", ErrorKind.REFUSED)
            return
        upstream_path = path if path == "*" else rewrite_path(self.route, path)
        target = upstream_path.encode("latin-1") + (b"?" + query if query else b"")
        request = self.request
        fields = policy.remove_hop_by_hop(request.headers, _NOT_FORWARDED)
        fields = policy.forward_request_headers(
            fields,
            self.ctx,
            trusted=self.client.trusted,
            via=self.config.via,
            version=request.version,
        )
        fields = self._apply(fields, self.config.request_headers, self.route.request_headers)
        if action.host is not None:
            fields = [(k, v) for k, v in fields if k.lower() != b"host"]
            fields.append((b"Host", action.host.encode("latin-1")))
        if self._upstream_chunked:
            fields.append((b"Transfer-Encoding", b"chunked"))
        if self.websocket:
            fields += [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        sticky = self.pool.config.sticky_cookie
        if sticky is not None:
            self._sticky_cookie = _cookie(request.headers, sticky.encode("latin-1"))
        self._head = [request_head(request.method, target, fields)]
        self._attempt()

    def _apply(
        self,
        fields: Headers,
        listener_rules: tuple[HeaderRule, ...],
        route_rules: tuple[HeaderRule, ...],
    ) -> Headers:
        """The listener's header rules, then the route's."""
        if listener_rules or route_rules:
            assert self.ctx is not None
            if listener_rules:
                fields = policy.apply_rules(fields, listener_rules, self.ctx)
            if route_rules:
                fields = policy.apply_rules(fields, route_rules, self.ctx)
        return fields

    # Attempts.

    def _pick(self) -> Server | None:
        assert self.pool is not None
        pool = self.pool
        if self._sticky_cookie is not None and not self.attempts.tried:
            now = self.clock.seconds()
            wanted = self._sticky_cookie.decode("latin-1")
            for server in pool.servers:
                if sticky_id(server) == wanted and server.is_available(now):
                    if server.has_capacity():
                        return server
                    break
        key = client_hash_key(self.client.peer) if pool.config.balance == "hash" else None
        return pool.pick(key, exclude=self.attempts.tried)

    def _attempt(self) -> None:
        assert self.pool is not None and self.upstreams is not None
        server = self._pick() if self.attempts.may_try_another() else None
        if server is None:
            if not self.attempts.tried:
                reason = why_no_server(self.pool)
                self.fail(503, f"pool {self.pool.name}: {reason}", ErrorKind.NO_SERVER)
            else:
                self.fail(*self._last_failure)
            return
        tried = self.attempts.tried
        if tried:
            self._cell(tried[-1]).retries += 1
        self.pool.acquire(server)
        self.server = server
        self.attempts.record(server)
        self._attempt_started = self.clock.seconds()
        conn = self.upstreams.checkout(server)
        if conn is not None:
            self.connect_time = 0.0
            self._use(conn)
            return
        self._connect(server)

    def _connect(self, server: Server) -> None:
        assert self.upstreams is not None
        d = self.upstreams.connect(server, self.config.connect_timeout)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed, errbackArgs=(server,))
        d.addErrback(self._crashed)

    def _crashed(self, failure: Failure) -> None:
        """A bug of ours: logged with its traceback; the client still gets an answer."""
        _log.failure(
            "{kind} {listener}: internal error",
            failure,
            kind=self.config.kind,
            listener=self.config.name,
        )
        if not self.finished:
            self.client.close_after_response()
            self.fail(500, "internal error", ErrorKind.INTERNAL)

    def _connected(self, conn: UpstreamConnection) -> None:
        self._connecting = None
        assert self.pool is not None
        self.pool.report_success(conn.server)
        if self.finished:
            if self.upstreams is not None:
                self.upstreams.checkin(conn)
            else:
                conn.close()
            return
        self.connect_time = self.clock.seconds() - self._attempt_started
        self._cell(conn.server).connect_duration.observe(self.connect_time)
        self._use(conn)

    def _connect_failed(self, reason: Failure, server: Server) -> None:
        self._connecting = None
        fault = fault_of(reason)
        if fault is Fault.CANCELLED:
            return  # we gave it up: the client left, or a timer of ours
        assert self.pool is not None
        if fault is Fault.LOCAL:
            # proxyd's own resources ran out: not the server's doing, and no other server
            # would fare better now.
            self.pool.release(server)
            self.server = None
            if not self.finished:
                self.fail(
                    503,
                    f"cannot connect to {server.name}: {reason.getErrorMessage()}",
                    ErrorKind.LOCAL_RESOURCE,
                )
            return
        timed_out = reason.check(twisted_error.TimeoutError, TimeoutError) is not None
        tls = describe_failure(reason)
        if tls is not None:
            why = f"TLS handshake failed: {tls}"
            kind = ErrorKind.TLS_FAILED
        elif timed_out:
            why = "connect timed out"
            kind = ErrorKind.CONNECT_TIMEOUT
        else:
            why = f"connect failed: {reason.getErrorMessage()}"
            kind = ErrorKind.CONNECT_FAILED
        self._cell(server).error(kind)
        self.pool.report_failure(server, why)
        self.pool.release(server)
        self.server = None
        if self.finished:
            return
        _log.warn(
            "{kind} {listener}: {server} in pool {pool}: {why}",
            kind=self.config.kind,
            listener=self.config.name,
            server=server.name,
            pool=self.pool.name,
            why=why,
        )
        self._last_failure = (504 if timed_out else 502, f"{server.name}: {why}")
        self._attempt()

    def _use(self, conn: UpstreamConnection) -> None:
        """Send the request on `conn`: the head, the body held so far, then the rest."""
        self.conn = conn
        conn.begin(self, self.request.method)
        if not self.client.writable:
            conn.pause_reading()
        conn.send(self._head + self._replay)
        if self.request.expect_continue and not self._sent_continue and not self.request_done:
            # The body is wanted now; answer the client's Expect ourselves (as nginx does).
            self._sent_continue = True
            if self.request.version == "1.1":
                self.client.send([_CONTINUE])
        if self.request_done:
            self._request_sent()
        else:
            self.wants_request_events = True
            if not conn.writable:
                self.upstream_writable(False)
            if self._body_timer is None:
                self._body_timer = IdleTimer(
                    self.clock, self.config.body_timeout, self._body_timed_out
                )
            self._body_timer.start()
            self.client.drive()

    def _retry(self, why: str, status: int, *, fresh: bool = False) -> None:
        """Drop the current attempt and try again (another server unless `fresh`)."""
        self._drop_connection()
        self._cancel_response_timer()
        self._last_failure = (status, why)
        if fresh and self.server is not None:
            server = self.server
            self._attempt_started = self.clock.seconds()
            self._connect(server)
            return
        self._release_server()
        self._attempt()

    def _may_retry(self) -> bool:
        return (
            not self.response_started
            and self.request.method in IDEMPOTENT
            and self._replayable
            and self.attempts.may_try_another()
        )

    # Request body, driven by the client connection.

    def request_event(self, event: Body | End | HttpError) -> None:
        conn = self.conn
        if isinstance(event, Body):
            data = event.data
            self.request_bytes += len(data)
            if self._body_timer is not None:
                self._body_timer.touch()
            if self._replayable:
                self._replay_size += len(data)
                if self._replay_size > REPLAY_LIMIT:
                    self._replayable = False
                    self._replay = []
            pieces = chunk(data) if self._upstream_chunked else [data]
            if self._replayable:
                self._replay.extend(pieces)
            if conn is not None:
                conn.send(pieces)
        elif isinstance(event, End):
            self.request_done = True
            self.wants_request_events = False
            self._stop_body_timer()
            if self._upstream_chunked:
                tail = last_chunk()
                if self._replayable:
                    self._replay.append(tail)
                if conn is not None:
                    conn.send([tail])
            self._request_sent()
        else:
            self.wants_request_events = False
            self._stop_body_timer()
            self.client.close_after_response()
            self.fail(event.status, event.message, ErrorKind.BAD_REQUEST)

    def _request_sent(self) -> None:
        self.client.resume_reading("upstream")
        if self.response is None and not self._awaiting_response and not self.finished:
            self._awaiting_response = True
            self.client.expect_response(self, self.config.response_timeout)

    def _cancel_response_timer(self) -> None:
        if self._awaiting_response:
            self._awaiting_response = False
            self.client.stop_expecting_response()

    # Upstream events, called by the connection.

    def upstream_readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        reader = conn.reader
        while conn is self.conn and not self.finished:
            event = reader.next_event()
            if event is None:
                if self.response is not None and self._idle is None:
                    self._idle = IdleTimer(
                        self.clock, self.config.idle_timeout, self._idle_timed_out
                    )
                    self._idle.start()
                return
            if isinstance(event, Body):
                self._response_body(event.data)
            elif isinstance(event, Response):
                self._response_head(event)
            elif isinstance(event, End):
                if self.response is not None:
                    self._response_end(event)
            elif isinstance(event, HttpError):
                # After the connection's end, the reader's error is the cut it found.
                kind = ErrorKind.UPSTREAM_RESET if conn.lost else ErrorKind.BAD_RESPONSE
                self._upstream_broken(event.message, kind)

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self.client.resume_reading("upstream")
        elif not self.request_done:
            self.client.pause_reading("upstream")

    def upstream_lost(self, reason: Failure) -> None:
        conn = self.conn
        if conn is None or self.finished:
            return
        self.upstream_readable()  # the reader may hold a close-delimited end, or an error
        if self.conn is not conn or self.finished:
            return
        if self.response is None and conn.requests > 1 and self._replayable:
            self._retry("reused connection closed", 502, fresh=True)
            return
        self._upstream_broken("upstream closed the connection", ErrorKind.UPSTREAM_RESET)

    def _upstream_broken(self, why: str, kind: ErrorKind) -> None:
        """The connection failed or sent garbage: retry or answer 502, or cut the client."""
        self._drop_connection()
        if self.response_started:
            self.error = f"upstream: {why}"
            self.error_kind = kind
            self._finish(keep_alive=False, truncated=True)
            return
        if self.server is not None:
            self._cell(self.server).error(kind)
        if self.server is not None and self.pool is not None and self.response is None:
            self.pool.report_failure(self.server, why)
        if self._may_retry():
            self._retry(why, 502)
        else:
            self.fail(502, f"upstream: {why}")

    def response_timed_out(self) -> None:
        """No response head within response_timeout (called by the client connection)."""
        self._awaiting_response = False
        if self.finished or self.response is not None:
            return
        why = f"no response within {self.config.response_timeout:g}s"
        if self.server is not None:
            self._cell(self.server).error(ErrorKind.UPSTREAM_TIMEOUT)
        if self._may_retry():
            self._retry(why, 504)
        else:
            self._drop_connection()
            self.fail(504, why)

    def _response_head(self, response: Response) -> None:
        if response.status == 101:
            self._switch(response)
            return
        if response.interim:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                self._upstream_broken(
                    f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses",
                    ErrorKind.BAD_RESPONSE,
                )
                return
            if self._awaiting_response:
                # An interim response is progress: the response timeout starts again
                # (nginx's proxy_read_timeout runs between reads), bounded by the count.
                self.client.expect_response(self, self.config.response_timeout)
            if response.status == 100 and self._sent_continue:
                return
            if self.request.version == "1.1":
                fields = policy.remove_hop_by_hop(response.headers)
                self.client.send([response_head(response.status, response.reason, fields)])
            return
        self._cancel_response_timer()
        self.upstream_status = response.status
        self.header_time = self.clock.seconds() - self._attempt_started
        if response.status in RETRY_STATUSES and self._may_retry():
            self._retry(f"upstream answered {response.status}", response.status)
            return
        self.response = response
        assert self.route is not None and self.ctx is not None
        fields = policy.remove_hop_by_hop(response.headers)
        fields = policy.response_headers(fields, via=self.config.via, version=response.version)
        fields = self._apply(fields, self.config.response_headers, self.route.response_headers)
        self._sticky(fields)
        self._hsts(fields)
        if not response.no_body and response.content_length is None:
            if self.request.version == "1.1":
                self._client_chunked = True
                fields.append((b"Transfer-Encoding", b"chunked"))
            else:
                self._client_keep_alive = False
        if response.status >= 200 and not self.request_done:
            # The server answered before the whole body arrived (an early 413, say): the
            # rest of the body cannot be told from a next request without reading it all.
            self._client_keep_alive = False
        self._connection_field(fields)
        self.status = response.status
        self.response_started = True
        self.client.send([response_head(response.status, response.reason, fields)])

    def _switch(self, response: Response) -> None:
        """A 101: to a WebSocket upgrade, pass it on and splice the two connections."""
        conn = self.conn
        assert conn is not None and self.route is not None
        if not self.websocket or not _has_token(response.headers, b"upgrade", b"websocket"):
            self._upstream_broken(
                "upstream switched protocols without a WebSocket upgrade", ErrorKind.BAD_RESPONSE
            )
            return
        self._cancel_response_timer()
        self.upstream_status = 101
        self.header_time = self.clock.seconds() - self._attempt_started
        self.response = response
        fields = policy.remove_hop_by_hop(response.headers)
        fields = policy.response_headers(fields, via=self.config.via, version=response.version)
        fields = self._apply(fields, self.config.response_headers, self.route.response_headers)
        self._sticky(fields)
        self._hsts(fields)
        fields += [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        self.status = 101
        self.response_started = True
        self.client.send([response_head(101, response.reason, fields)])
        self.conn = None
        from_client = self.client.reader.upgraded or b""
        self.client.reader.upgraded = b""
        self.tunnel = Tunnel(self, self.client, conn, self.config.tunnel_timeout)
        self.factory.tunnel_opened()
        self.tunnel.start(from_client, conn.reader.upgraded or b"")

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        self.factory.tunnel_closed()
        self.request_bytes += tunnel.bytes_in
        self.response_bytes += tunnel.bytes_out
        self.tunnel_close = str(tunnel.reason)
        self._finish(keep_alive=False)

    def _sticky(self, fields: Headers) -> None:
        assert self.pool is not None
        name = self.pool.config.sticky_cookie
        if name is None or self.server is None:
            return
        wanted = sticky_id(self.server)
        if self._sticky_cookie != wanted.encode():
            fields.append(
                (b"Set-Cookie", f"{name}={wanted}; Path=/; HttpOnly; SameSite=Lax".encode())
            )

    def _connection_field(self, fields: Headers) -> None:
        keep = self._client_keep_alive and not self.client.closing
        self._client_keep_alive = keep
        if not keep:
            fields.append((b"Connection", b"close"))
        elif self.request.version == "1.0":
            fields.append((b"Connection", b"keep-alive"))

    def _response_body(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self._idle is not None:
            self._idle.touch()
        self.client.send(chunk(data) if self._client_chunked else [data])

    def _response_end(self, end: End) -> None:
        assert self.response is not None
        if self._client_chunked:
            self.client.send([last_chunk(end.trailers)])
        conn = self.conn
        self.conn = None
        if conn is not None and self.upstreams is not None:
            if self.response.keep_alive and self.request_done:
                self.upstreams.checkin(conn)
            else:
                conn.close()
        self._finish(keep_alive=self._client_keep_alive)

    def _idle_timed_out(self) -> None:
        if self.finished:
            return
        if not self.client.writable and self._idle is not None:
            # Not the server's silence: the client stopped reading (its full write buffer
            # paused the upstream). Its send timeout ends the exchange, blaming the client.
            self._idle.start()
            return
        self.error = f"idle for {self.config.idle_timeout:g}s while streaming the response"
        self.error_kind = ErrorKind.UPSTREAM_IDLE
        self._drop_connection()
        self._finish(keep_alive=False, truncated=True)

    def _stop_body_timer(self) -> None:
        timer, self._body_timer = self._body_timer, None
        if timer is not None:
            timer.cancel()

    def _body_timed_out(self) -> None:
        if self.finished or self.request_done:
            return
        self.wants_request_events = False
        self.client.close_after_response()
        self._drop_connection()
        if self.response_started:
            self.error = "request body timed out"
            self.error_kind = ErrorKind.BODY_TIMEOUT
            self._finish(keep_alive=False, truncated=True)
        else:
            self.fail(
                408,
                f"no request body data for {self.config.body_timeout:g}s",
                ErrorKind.BODY_TIMEOUT,
            )

    # Backpressure from the client's write buffer.

    def client_writable(self, writable: bool) -> None:
        if self.conn is not None:
            if writable:
                self.conn.resume_reading()
            else:
                self.conn.pause_reading()

    def client_lost(self) -> None:
        if self.finished:
            return
        if self.error_kind is None:  # else reset by proxyd, which said why (client_stalled)
            self.error = "client closed the connection"
            self.error_kind = ErrorKind.CLIENT_ABORTED
        if not self.response_started:
            self.status = 499  # nginx's "client closed request"
        self._drop_connection()
        self._finish(keep_alive=False, truncated=True)

    # Answers made by proxyd.

    def fail(self, status: int, why: str, kind: ErrorKind | None = None) -> None:
        """Answer an error of our own (with the listener's error page, if any). `kind` is
        the error for the metrics, when no failed attempt at a server counted it already."""
        self.error = why
        if kind is not None:
            self.error_kind = kind
        self._drop_connection()
        if self.response_started:
            self._finish(keep_alive=False, truncated=True)
            return
        body, content_type = self.factory.error_body(status)
        if status >= 400 and status not in (404, 405):
            _log.info(
                "{kind} {listener}: {method} {target} from {client}: {status} ({why})",
                kind=self.config.kind,
                listener=self.config.name,
                method=self.request.method.decode("latin-1"),
                target=self.request.target.decode("latin-1")[:200],
                client=self.client.peer_text,
                status=status,
                why=why,
            )
        self.respond(status, body, [(b"Content-Type", content_type)])

    def respond(
        self, status: int, body: bytes, fields: Headers, *, route_rules: bool = False
    ) -> None:
        if route_rules and self.route is not None:
            fields = self._apply(fields, self.config.response_headers, self.route.response_headers)
        self._hsts(fields)
        head_only = self.request.method == b"HEAD" or status in (204, 304)
        if status not in (204, 304):
            fields.append((b"Content-Length", b"%d" % len(body)))
        if not self.request_done:
            self._client_keep_alive = False  # its body was not read
        self._connection_field(fields)
        self.status = status
        self.response_started = True
        self.response_bytes = 0 if head_only else len(body)
        self.client.send([response_head(status, b"", fields), b"" if head_only else body])
        self._finish(keep_alive=self._client_keep_alive)

    def _hsts(self, fields: Headers) -> None:
        """[https] `hsts`: our Strict-Transport-Security replaces the upstream's."""
        value = self.factory.hsts
        if value is not None:
            fields[:] = [f for f in fields if f[0].lower() != b"strict-transport-security"]
            fields.append((b"Strict-Transport-Security", value))

    # Ending.

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        self._cancel_response_timer()

    def _release_server(self) -> None:
        server, self.server = self.server, None
        if server is not None and self.pool is not None:
            self.pool.release(server)

    def _finish(self, keep_alive: bool, truncated: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self.wants_request_events = False
        self._cancel_response_timer()
        # Dropped, not only cancelled: each holds a bound method of this exchange, a cycle
        # that only the garbage collector would break.
        idle, self._idle = self._idle, None
        if idle is not None:
            idle.cancel()
        self._stop_body_timer()
        self._release_server()
        self._count()
        self.factory.log_exchange(self)
        self.client.exchange_done(self, keep_alive=keep_alive and not truncated)

    # Metrics.

    def _cell(self, server: Server | None) -> Cell:
        """The metrics of this exchange's route and pool at `server` (None: proxyd's own)."""
        route = self.route
        pool = self.pool
        return self.factory.stats.cell(
            "" if route is None else route.name,
            "" if pool is None else pool.name,
            "" if server is None else server.name,
        )

    def _count(self) -> None:
        """The exchange's response, bytes and latencies, on the server that answered (""
        when proxyd answered itself)."""
        tried = self.attempts.tried
        cell = self._cell(tried[-1] if self.response is not None and tried else None)
        cell.bytes_in += self.request_bytes
        cell.bytes_out += self.response_bytes
        if self.tunnel is None:
            cell.response(self.status, self.clock.seconds() - self.started)
        else:  # the tunnel's life is no response time
            cell.responses[1] += 1
        header_time = self.header_time
        if header_time is not None and self.response is not None:
            cell.upstream_duration.observe(header_time - (self.connect_time or 0.0))
        if self.error_kind is not None:
            cell.error(self.error_kind)


_ID_PREFIX: Final = os.urandom(8).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _new_request_id() -> str:
    """32 hex digits: a random per-process prefix and a counter (unique, and cheaper than
    a uuid4 per request)."""
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"
