"""`auth = NAME` on a listener or route: the built-in filter that authenticates requests by
the `[auth NAME]` section's method (basic, api_key, jwt, forward; docs/security.md), and
the run-time context the methods share.

For each request, in this order:

1. The fields that carry identity upstream (the section's user_header, name_header, claims'
   fields or copy_headers) are removed from the client's request: whatever happens next, the
   server never sees a client's forged X-Auth-User.
2. api_key: the key is taken out of the request (its header, its query parameter), from what
   goes upstream and from what is logged.
3. A request with several Authorization fields is refused 400: which one to judge would be
   a guess, and a proxy and a server guessing differently is how checks are bypassed.
4. The method decides, at once or later (a password hash in a thread, a JWKS refresh, a
   subrequest): the chain waits for it.
5. Granted: the method's fields are added to the request, and its identity is
   `exchange.vars["auth_user"]` (the access log's `auth_user`). Denied: proxyd's error answer
   for the status (the listener's error page) with the method's fields (WWW-Authenticate),
   or, for forward auth, the auth service's own answer; counted in the metrics by method and
   reason (`proxyd_auth_failures_total`, and `errors{error="auth_failed"}`), logged at info
   with the reason and never a credential nor the user name (a user name is sometimes a
   password typed in the wrong field).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from proxyd.auth.api_keys import ApiKeyAuth, strip_query
from proxyd.auth.basic import BasicAuth, RunInThread
from proxyd.auth.fetch import HttpClient, fetch_body
from proxyd.auth.forward import ForwardAuth, Original
from proxyd.auth.jwks import MAX_SIZE, Jwks
from proxyd.auth.jwt import JwtAuth
from proxyd.auth.result import Decision, Denied, Granted
from proxyd.config.auth_model import (
    ApiKeyAuthConfig,
    AuthConfig,
    BasicAuthConfig,
    ForwardAuthConfig,
    JwtAuthConfig,
)
from proxyd.filters.api import Answer, Reject
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import Cell, ErrorKind, RelayStats

log = Logger(namespace="proxyd.auth")

JWKS_TIMEOUT = 10.0
"""Seconds a JWKS fetch may take (connect, answer and body) before it counts as failed."""

HeadResult = Answer | None | Deferred[Answer | None]
Method = Callable[[RelayExchange, bytes | None], "Decision | Deferred[Decision]"]
"""A method's check of one request, given its Authorization value (None: it has none)."""


class AuthContext:
    """What authentication needs at run time on one HTTP listener, and the owner of what it
    starts: made by the listener's factory (HttpRelayFactory), one per factory, and handed
    to build_auth() for each route with `auth`.

    - `reactor`: the clock and the network (JWKS fetches, forward auth's subrequests).
    - `run_in_thread`: the process's password-check threads (proxyd.auth.threads.HashThreads
      .run, owned by the service; None where no basic auth may be configured).
    - `stats`: the listener's metrics, read at each count (a reload hands the listener's
      RelayStats over to the factory that replaces it, after that factory is made).
    - `listener`: the listener's name, for the log.
    - `http_client`: makes the HTTP clients (HttpClient; a fake in tests).

    Routes that name the same `[auth NAME]` share one method (one JWKS, one cache of
    passwords checked, one connection pool to the auth service). `start()` starts the JWKS
    refreshes (at the factory's startFactory: the listener accepts); `stop()` ends them and
    closes the auth services' idle connections (once the factory's last connection is over:
    after its drain() or retire()). A context that was never started holds no timer, no
    connection and no thread, so a factory built and dropped (a reload refused) leaks none.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        listener: str,
        stats: Callable[[], RelayStats],
        run_in_thread: RunInThread | None,
        http_client: Callable[..., HttpClient] = HttpClient,
    ) -> None:
        self.reactor = reactor
        self.listener = listener
        self.stats = stats
        self.run_in_thread = run_in_thread
        self._http_client = http_client
        self.filters: dict[str, AuthFilter] = {}
        """The filter of each [auth NAME] built for this listener."""
        self._jwks: list[Jwks] = []
        self._clients: list[HttpClient] = []
        self.state: Literal["new", "started", "stopped"] = "new"

    def __repr__(self) -> str:
        return f"<AuthContext {self.listener} {self.state}: {sorted(self.filters)}>"

    def start(self) -> None:
        """The listener accepts: fetch the JWKS now and then periodically."""
        if self.state != "new":
            return
        self.state = "started"
        for jwks in self._jwks:
            jwks.start()

    def stop(self) -> Deferred[None]:
        """The listener is done: no more fetches, the idle connections to auth services
        closed. Fires once they are."""
        if self.state == "stopped":
            return succeed(None)
        self.state = "stopped"
        for jwks in self._jwks:
            jwks.stop()
        closing = [client.close() for client in self._clients]
        return gatherResults(closing).addCallback(lambda _: None)

    def jwks(self, url: str, refresh: float, min_refresh: float) -> Jwks:
        """A JWKS source for `url`, started with the context."""
        client = self.client(connect_timeout=JWKS_TIMEOUT)
        jwks = Jwks(
            url,
            fetch_body(client, timeout=JWKS_TIMEOUT, max_size=MAX_SIZE),
            self.reactor,
            refresh_interval=refresh,
            min_refresh_interval=min_refresh,
            max_size=MAX_SIZE,
            timeout=JWKS_TIMEOUT,
        )
        self._jwks.append(jwks)
        if self.state == "started":
            jwks.start()
        return jwks

    def client(self, *, connect_timeout: float, persistent: bool = False) -> HttpClient:
        """An HTTP client closed with the context."""
        client = self._http_client(
            self.reactor, connect_timeout=connect_timeout, persistent=persistent
        )
        self._clients.append(client)
        return client

    def cell(self, exchange: RelayExchange) -> Cell:
        """The metrics of the exchange's route and pool, where proxyd's own answer to it is
        counted (proxyd.metrics)."""
        pool = exchange.pool
        return self.stats().cell(exchange.route_name or "", "" if pool is None else pool.name, "")

    def count(self, exchange: RelayExchange, method: str, reason: str) -> None:
        """One failure of `method` for `reason`."""
        self.cell(exchange).auth_failure(method, reason)


def build_auth(config: AuthConfig, context: AuthContext) -> AuthFilter:
    """The filter of `[auth NAME]` for the listener of `context` (the same one for every
    route that names it). Raises ValueError for a method the context cannot run (basic
    without password-check threads)."""
    found = context.filters.get(config.name)
    if found is not None and found.config == config:
        return found
    made = context.filters[config.name] = AuthFilter(config, _method(config, context), context)
    return made


def _method(config: AuthConfig, context: AuthContext) -> Method:
    settings = config.method
    reactor = context.reactor
    if isinstance(settings, BasicAuthConfig):
        return _Basic(config, settings, context)
    if isinstance(settings, ApiKeyAuthConfig):
        api_key = ApiKeyAuth(
            settings.keys,
            header=_field(settings.header),
            query_param=settings.query_param,
            name_header=_field(settings.name_header),
            realm=config.realm,
        )
        return _ApiKey(api_key)
    if isinstance(settings, JwtAuthConfig):
        keys = (
            context.jwks(settings.jwks, settings.jwks_refresh, settings.jwks_min_refresh)
            if settings.jwks is not None
            else settings.keys
        )
        jwt = JwtAuth(
            keys,
            algorithms=settings.algorithms,
            issuer=settings.issuer,
            audience=settings.audience,
            leeway=settings.leeway,
            clock=reactor,
            claims=tuple((claim, field.encode("ascii")) for claim, field in settings.claims),
            identity_claim=settings.identity_claim,
            realm=config.realm,
        )
        return lambda exchange, authorization: jwt.check(authorization)
    assert isinstance(settings, ForwardAuthConfig)
    client = context.client(connect_timeout=settings.timeout, persistent=True)
    forward = ForwardAuth(settings, client, reactor)
    return lambda exchange, authorization: forward.check(original(exchange))


class _Basic:
    """basic: each password hash is counted in the metrics (`password_checks`) of the
    request that caused it, so that a burst sharing one check shows as one."""

    def __init__(self, config: AuthConfig, settings: BasicAuthConfig, context: AuthContext) -> None:
        run_in_thread = context.run_in_thread
        if run_in_thread is None:
            raise ValueError(f"[auth {config.name}]: basic auth needs the password-check threads")
        self._run_in_thread = run_in_thread
        self._context = context
        self.hashes = 0
        """Password checks started (each a hash in a thread)."""
        self.auth = BasicAuth(
            settings.users,
            realm=config.realm,
            cache_ttl=settings.cache_time,
            clock=context.reactor,
            run_in_thread=self._run,
            max_pending=settings.max_pending,
            user_header=_field(settings.user_header),
        )

    def _run(self, work: Callable[[], bool]) -> Deferred[bool]:
        self.hashes += 1
        return self._run_in_thread(work)

    def __call__(
        self, exchange: RelayExchange, authorization: bytes | None
    ) -> Decision | Deferred[Decision]:
        before = self.hashes
        decision = self.auth.check(authorization)
        if self.hashes != before:
            self._context.cell(exchange).password_checks += 1
        return decision


def _field(name: str | None) -> bytes | None:
    return None if name is None else name.encode("ascii")


class _ApiKey:
    """api_key: the key is taken out of the request before it is judged, whatever the
    judgement: out of the fields and the query that go upstream (and that header rules'
    templates read), and out of the target that the logs write (the access log's `uri`, the
    log line of a refusal)."""

    def __init__(self, auth: ApiKeyAuth) -> None:
        self.auth = auth
        self._param = auth.query_param

    def __call__(self, exchange: RelayExchange, authorization: bytes | None) -> Decision:
        decision = self.auth.check(exchange.request_headers, exchange.query)
        self.strip(exchange)
        return decision

    def strip(self, exchange: RelayExchange) -> None:
        """Take the key out of `exchange`'s request (also when it is refused unjudged)."""
        fields = exchange.request_headers
        query = exchange.query
        kept, stripped = self.auth.strip(fields, query)
        if len(kept) != len(fields):
            fields[:] = kept
        if stripped != query:
            exchange.query = stripped
            # The templates of header rules (`{query}`, `{uri}`) read the context: the key
            # must not come back upstream through them.
            ctx = exchange.ctx
            ctx.query = stripped
            ctx.uri = ctx.path + ("?" + stripped if stripped else "")
        param = self._param
        if param is not None:
            request = exchange.request
            path, mark, raw_query = request.target.partition(b"?")
            if mark:
                text = raw_query.decode("latin-1")
                redacted = strip_query(text, param)
                if redacted != text:
                    request.target = path + (b"?" + redacted.encode("latin-1") if redacted else b"")


def original(exchange: RelayExchange) -> Original:
    """What forward auth's subrequest tells of `exchange`'s request."""
    path, query = exchange.raw_target
    ctx = exchange.ctx
    client = ctx.client_ip.encode("ascii")
    forwarded_for = client
    if exchange.client_trusted:
        incoming = [v for n, v in exchange.request_headers if n.lower() == b"x-forwarded-for"]
        if incoming:
            forwarded_for = b", ".join([*incoming, client])
    return Original(
        method=exchange.method,
        uri=path + (b"?" + query if query else b""),
        host=exchange.host,
        proto=exchange.scheme,
        forwarded_for=forwarded_for,
        request_id=exchange.request_id,
        headers=exchange.request_headers,
    )


class AuthFilter:
    """Built in: the `[auth NAME]` of a route (see the module's docstring)."""

    def __init__(self, config: AuthConfig, method: Method, context: AuthContext) -> None:
        self.config = config
        self.name = config.name
        self.type = config.type
        self._method = method
        self._strip = method.strip if isinstance(method, _ApiKey) else None
        self._context = context
        self._identity = frozenset(name.lower().encode("ascii") for name in config.identity_headers)
        self._several = Denied(400, "malformed")
        self._why = f"auth {config.name} ({config.type})"

    def __repr__(self) -> str:
        return f"<AuthFilter {self.name} ({self.type})>"

    def request_head(self, exchange: RelayExchange) -> HeadResult:
        fields = exchange.request_headers
        identity = self._identity
        authorization: bytes | None = None
        several = forged = False
        for name, value in fields:
            # Only a name of Authorization's length is lowered to compare with it, and none
            # for the identity fields when the method sets none (jwt without claims).
            if len(name) == 13 and name.lower() == b"authorization":
                several = several or authorization is not None
                authorization = value
            elif identity and name.lower() in identity:
                forged = True
        if forged:
            fields[:] = [field for field in fields if field[0].lower() not in identity]
        if several:
            if self._strip is not None:
                self._strip(exchange)
            return self._refused(exchange, self._several, "several Authorization fields")
        decision = self._method(exchange, authorization)
        if isinstance(decision, Deferred):
            return decision.addCallback(self._decided, exchange)
        return self._decided(decision, exchange)

    def _decided(self, decision: Decision, exchange: RelayExchange) -> Answer | None:
        if isinstance(decision, Granted):
            if decision.upstream:
                exchange.request_headers.extend(decision.upstream)
            exchange.vars["auth_user"] = decision.identity
            return None
        return self._refused(exchange, decision)

    def _refused(self, exchange: RelayExchange, denied: Denied, detail: str = "") -> Answer:
        self._context.count(exchange, self.type, denied.reason)
        why = f"{self._why}: {detail or denied.reason}"
        if not denied.body:
            # proxyd's error answer for the status, through fail(): the listener's error
            # page, `why` in the access log's error field and the log line.
            reject = Reject(denied.status, why, ErrorKind.AUTH_FAILED)
            reject.headers.extend(denied.fields)
            return reject
        # The auth service's own answer (forward auth), passed on as it made it.
        content_type: str | None = None
        fields = []
        for name, value in denied.fields:
            if name.lower() == b"content-type":
                content_type = value.decode("latin-1")
            else:
                fields.append((name, value))
        answer = Answer(denied.status, denied.body, fields, content_type=content_type)
        exchange.set_error_kind(ErrorKind.AUTH_FAILED)
        log.info(
            "[{listener}] {method} {path} from {client}: {status} ({why})",
            listener=self._context.listener,
            method=exchange.method,
            path=exchange.path[:200],
            client=exchange.client_ip,
            status=denied.status,
            why=why,
        )
        return answer
