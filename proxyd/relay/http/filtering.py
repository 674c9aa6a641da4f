"""The exchange as its filters see it (proxyd.filters.api.Exchange and the built-ins'
proxyd.filters.internal.RelayExchange), and the running of filters: a filter that fails,
one that waits too long, the body runs and the log phase.

A base class of proxyd.relay.http.exchange.Exchange, holding no state of its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.model import HttpListenerConfig, RouteConfig
from proxyd.filters.api import Answer, Headers, Reject, Rejected
from proxyd.filters.chain import (
    ALL_WENT_ON,
    BodyPlan,
    BodyRun,
    Chain,
    FilterFailed,
    HeadRun,
    Step,
    TooLarge,
)
from proxyd.metrics import ErrorKind
from proxyd.pool import Pool, Server
from proxyd.relay.http import headers as policy
from proxyd.relay.http.forward import Forward
from proxyd.relay.http.forward_attempts import CONTINUE
from proxyd.relay.http.messages import Request, UpstreamHead
from proxyd.relay.http.state import BUFFERING_REQUEST, BUFFERING_RESPONSE, State
from proxyd.relay.session import IdleTimer

_log = Logger(namespace="proxyd.relay.http")


class Filtering:
    __slots__ = (
        "_added_fields",
        "_filter_bound",
        "_head_run",
        "_preferred",
        "_request_run",
        "_response_run",
        "_response_steps",
        "_vars",
        "error_kind",
        "pool",
        "response_fields",
    )

    # The exchange's state this class reads (proxyd.relay.http.exchange.Exchange).
    client: Any
    clock: Any
    config: HttpListenerConfig
    request: Request
    route: RouteConfig | None
    chain: Chain
    ctx: policy.RequestContext | None
    pool: Pool | None
    forward: Forward | None
    answer: Answer | None
    response_fields: Headers
    status: int
    error_kind: str | None
    path: str
    query: str
    _vars: dict[str, Any] | None
    _added_fields: Headers | None
    _preferred: Server | None
    _filter_bound: IdleTimer | None
    _head_run: HeadRun | None
    _request_run: BodyRun | None
    _response_run: BodyRun | None
    upstream_method: bytes
    state: State

    finished: bool
    request_done: bool
    client_trusted: bool
    response_started: bool

    def fail(
        self,
        status: int,
        why: str,
        kind: ErrorKind | str | None = None,
        *,
        answer: Any = None,
        position: int = ALL_WENT_ON,
    ) -> None:
        raise NotImplementedError

    def _cut(self, why: str, kind: ErrorKind) -> None:
        raise NotImplementedError

    def _move(self, state: State) -> None:
        raise NotImplementedError

    def _response_ready(self) -> None:
        raise NotImplementedError

    def _stop_forward(self) -> None:
        raise NotImplementedError

    def _start_answer(self, answer: Answer, steps: tuple[Step, ...]) -> None:
        raise NotImplementedError

    def _forward(self, head: UpstreamHead) -> None:
        raise NotImplementedError

    def want_request_body(self) -> None:
        raise NotImplementedError

    def _response_buffered(self, data: bytes, end: bool) -> None:
        raise NotImplementedError

    # proxyd.filters.api.Exchange.

    @property
    def reactor(self) -> Any:
        return self.clock

    @property
    def method(self) -> str:
        return self.request.method.decode("latin-1")

    @property
    def host(self) -> str:
        return "" if self.ctx is None else self.ctx.host

    @property
    def scheme(self) -> str:
        return "http" if self.client.tls is None else "https"

    @property
    def client_ip(self) -> str:
        return str(self.client.peer.host)

    @property
    def request_id(self) -> str:
        return "" if self.ctx is None else self.ctx.request_id

    @property
    def route_name(self) -> str | None:
        return None if self.route is None else self.route.name

    @property
    def request_headers(self) -> Headers:
        return self.request.headers

    @property
    def response_headers(self) -> Headers:
        return self.response_fields

    @property
    def server(self) -> str | None:
        server = self.upstream_server
        return None if server is None else server.name

    @property
    def vars(self) -> dict[str, Any]:
        found = self._vars
        if found is None:
            found = self._vars = {}
        return found

    def use_pool(self, name: str) -> None:
        pools = self.client.factory.pools
        if name not in pools:
            raise KeyError(f"no pool {name!r} in the configuration")
        self.pool = pools[name]

    # proxyd.filters.internal.RelayExchange.

    @property
    def upstream_server(self) -> Server | None:
        forward = self.forward
        if forward is None or self.answer is not None or not forward.driver.tried:
            return None
        server: Server = forward.driver.tried[-1]
        return server

    @property
    def tried(self) -> Sequence[Server]:
        forward = self.forward
        if forward is None:
            return ()
        tried: Sequence[Server] = forward.driver.tried
        return tried

    def prefer(self, server: Server) -> None:
        self._preferred = server

    def set_request_headers(self, headers: Headers) -> None:
        self.request.headers = headers

    def set_response_headers(self, headers: Headers) -> None:
        self.response_fields = headers

    def add_response_fields(self, fields: Headers) -> None:
        added = self._added_fields
        if added is None:
            self._added_fields = list(fields)
        else:
            added.extend(fields)

    def set_error_kind(self, kind: str) -> None:
        self.error_kind = kind

    # Running filters.

    def _filter_failed(self, problem: Exception) -> None:
        """A filter raised (or returned what its phase does not take): 500, or the response
        cut if it started; logged with the traceback, counted; other requests go on."""
        if self.finished:
            return
        if isinstance(problem, Rejected):
            # A body filter refused the request (a body over a limit): proxyd's answer; the
            # connection closes after it if the rest of the body is unread.
            reject = problem.reject
            if self.response_started:
                known = reject.kind in ErrorKind._value2member_map_
                self._cut(reject.why, ErrorKind(reject.kind) if known else ErrorKind.REFUSED)
                return
            if not self.request_done:
                self.client.close_after_response()
            self.fail(reject.status, reject.why, reject.kind, answer=reject)
            return
        if isinstance(problem, FilterFailed):
            _log.failure(
                "{kind} {listener}: filter {filter} failed on {method} {target}",
                problem.failure,
                kind=self.config.kind,
                listener=self.config.name,
                filter=problem.name,
                method=self.method,
                target=self.request.target.decode("latin-1")[:200],
            )
            why = f"filter {problem.name} failed: {problem.failure.getErrorMessage()}"
        else:
            why = str(problem)
        if isinstance(problem, TooLarge) and not self.response_started:
            # A request body too large for a filter that buffers it (a response's is
            # _response_filter_failed's).
            self.client.close_after_response()
            self.fail(413, why, ErrorKind.BODY_TOO_LARGE)
            return
        if self.response_started:
            self._cut(why, ErrorKind.FILTER_FAILED)
            return
        self.client.close_after_response()
        self.fail(500, why, ErrorKind.FILTER_FAILED)

    def _response_filter_failed(self, problem: Exception) -> None:
        """A response body filter failed. While the response is held for a filter that
        buffers it, proxyd answers in its place: 502 for a body over the filter's bound,
        the Reject of a filter that refuses it (the client's connection may stay open: its
        request was read); else as any filter failure."""
        if self.state is BUFFERING_RESPONSE:
            if isinstance(problem, TooLarge):
                self.fail(502, str(problem), ErrorKind.FILTER_FAILED)
                return
            if isinstance(problem, Rejected):
                reject = problem.reject
                self.fail(reject.status, reject.why, reject.kind, answer=reject)
                return
        self._filter_failed(problem)

    def _bound_filter(self, timeout: float) -> None:
        """A filter waits: it has `timeout` to finish."""
        if self._filter_bound is None:
            self._filter_bound = IdleTimer(self.clock, timeout, self._filter_timed_out)
        self._filter_bound.start()

    def _unbound_filter(self) -> None:
        bound = self._filter_bound
        if bound is not None:
            self._filter_bound = None
            bound.cancel()

    def _filter_timed_out(self) -> None:
        if self.finished:
            return
        why = "a filter did not finish within its bound"
        self._filter_bound = None
        if self.response_started:
            self._cut(why, ErrorKind.FILTER_FAILED)
        else:
            self.client.close_after_response()
            self.fail(504, why, ErrorKind.FILTER_FAILED)

    def _run_head(
        self, steps: tuple[Step, ...], done: Callable[[int, Answer | None], None], bound: float
    ) -> None:
        # The common case, every filter deciding at once, makes no HeadRun.
        for step in steps:
            position, name, call = step
            try:
                result = call(self)
            except Exception:
                self._filter_failed(FilterFailed(name, Failure()))
                return
            if result is None:
                continue
            if isinstance(result, Answer):
                done(position, result)
                return
            run = self._head_run = HeadRun(steps, self, done, self._filter_failed)
            run.run(steps.index(step), result)
            if run.waiting is not None:
                self._bound_filter(bound)
            return
        done(ALL_WENT_ON, None)

    def _body_plan(self, phase: str) -> BodyPlan | None:
        """How this exchange's body goes through `phase` (Chain.body_plan); None when a
        filter's takes_* method failed (the exchange is answered)."""
        try:
            return self.chain.body_plan(phase, self)  # type: ignore[arg-type]
        except FilterFailed as e:
            self._filter_failed(e)
            return None

    def _body_run(
        self,
        plan: BodyPlan,
        phase: str,
        emit: Callable[[bytes, bool], None],
        hold: Callable[[bool], None],
    ) -> BodyRun:
        def held(waiting: bool) -> None:
            if waiting:
                self._bound_filter(self.config.idle_timeout)
            else:
                self._unbound_filter()
            hold(waiting)

        failed = self._filter_failed if phase == "request_body" else self._response_filter_failed
        return BodyRun(plan.steps, plan.buffers, self, emit, held, failed)  # type: ignore[arg-type]

    # Bodies a filter gets whole.

    def _buffer_request(self, plan: BodyPlan, target: bytes, fields: Headers) -> None:
        """A filter gets the request body whole: read it before a server is tried, then send
        it with its new Content-Length. A body over the filter's bound, or one the filter
        refuses, is answered before any server sees the request; and as the whole body is
        in the head sent, a failed attempt may be retried whatever its size."""
        self._move(BUFFERING_REQUEST)
        # The body goes with the head: no Expect for the server to answer (proxyd answers
        # the client's below).
        fields = [f for f in fields if f[0].lower() not in (b"content-length", b"expect")]

        def buffered(data: bytes, end: bool) -> None:
            if self.finished:
                return
            self._request_run = None
            fields.append((b"Content-Length", b"%d" % len(data)))
            self._forward(UpstreamHead(self.upstream_method, target, fields, data))

        self._request_run = self._body_run(plan, "request_body", buffered, self._hold_request)
        request = self.request
        if request.expect_continue and request.version == "1.1":
            # As the Forward does when it wants the body (RFC 9110 10.1.1).
            self.client.send([CONTINUE])
        self.want_request_body()

    def _buffer_response(self, plan: BodyPlan) -> None:
        """A filter gets the response body whole: read it before the head goes to the
        client (_response_buffered sends both, with the new Content-Length)."""
        self._move(BUFFERING_RESPONSE)
        self._response_run = self._body_run(
            plan, "response_body", self._response_buffered, self._hold_response
        )
        forward = self.forward
        if forward is not None and forward._held:
            forward.hold(False)

    def _run_log_filters(self) -> None:
        for _, name, call in self.chain.log:
            try:
                call(self)
            except Exception:
                _log.failure(
                    "{kind} {listener}: filter {filter} failed in its log phase",
                    kind=self.config.kind,
                    listener=self.config.name,
                    filter=name,
                )

    # The response head's filters, and holds on either body.

    def _respond(self, steps: tuple[Step, ...]) -> None:
        self._move(State.RESPONSE_FILTERS)
        self._response_steps = steps
        if not steps:
            self._response_ready()
            return
        self._run_head(steps, self._response_filtered, self.config.response_timeout)
        if self._head_run is not None and self._head_run.waiting is not None:
            forward = self.forward
            if forward is not None and self.answer is None:
                forward.hold(True)

    def _response_filtered(self, position: int, answer: Answer | None) -> None:
        self._head_run = None
        self._unbound_filter()
        if answer is not None:
            # A filter replaces the response: the server's, if any, is dropped.
            if isinstance(answer, Reject):
                self.fail(answer.status, answer.why, answer.kind, answer=answer)
                return
            self._stop_forward()
            self._start_answer(answer, Chain.before(self._response_steps, position))
        else:
            self._response_ready()

    def _hold_request(self, held: bool) -> None:
        if self.finished:
            return
        if held:
            self.client.pause_reading("filter")
        else:
            self.client.resume_reading("filter")

    def _hold_response(self, held: bool) -> None:
        forward = self.forward
        if forward is not None and not self.finished:
            forward.hold(held)
