"""A chain of filters and the running of its phases (sans-IO: results are passed to
callbacks; a paused phase is a Deferred the caller may cancel).

A chain is built once per route (the listener's filters, then the route's) when the relay is
made; a request runs the chain of the route it matched. Each phase keeps only the filters
that define it, so that a phase no filter takes part in costs one empty loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.filters.api import PHASES, Answer, Exchange, Filter, Rejected

Step = tuple[int, str, Callable[..., Any]]
"""(the filter's position in the chain, its name, its bound phase method)."""
Takes = Callable[[Exchange], bool]
"""A filter's takes_request_body or takes_response_body."""


class BodyPlan(NamedTuple):
    """How one exchange's body goes through a body phase (Chain.body_plan)."""

    steps: tuple[Step, ...]
    """The steps that take part in this body, in the phase's order."""
    buffers: Mapping[int, int]
    """position -> bound, for the steps that get this body whole. Then the body is read
    whole before it is sent on: a request's before a server is tried, a response's before
    its head goes to the client, either with its new Content-Length."""
    keeps_length: bool
    """Every step passes the body on unchanged (keeps_body_length): a request keeps its
    Content-Length."""


class _Body(NamedTuple):
    """A body phase of a chain: the plan when every step takes part, and what a plan of
    fewer steps is made from."""

    plan: BodyPlan
    takes: dict[int, Takes]
    buffers: dict[int, int]
    keeping: frozenset[int]


class Chain:
    """The filters of one route, in request order, by phase."""

    __slots__ = (
        "_bodies",
        "hidden",
        "log",
        "logs_cache",
        "logs_identity",
        "logs_trace",
        "names",
        "request_body",
        "request_head",
        "response_body",
        "response_head",
        "server",
    )

    def __init__(
        self,
        filters: Sequence[tuple[str, object]],
        hidden: frozenset[bytes] = frozenset(),
        server: bytes | None = None,
    ) -> None:
        self.names = tuple(name for name, _ in filters)
        self.logs_identity = "auth" in self.names or "rules" in self.names
        """The access log's lines of this chain's requests have `rule` and `auth_user`
        (exchange.vars' "rule" and "auth_user", or null)."""
        self.logs_cache = "cache" in self.names
        """The access log's lines of this chain's requests have `cache` (exchange.vars'
        "cache_status": what the cache did, proxyd.filters.cache.LOGGED)."""
        self.logs_trace = "trace_context" in self.names
        """The access log's lines of this chain's requests have `trace_id` (exchange.vars'
        "trace_id", or null)."""
        self.hidden = hidden
        """hide_headers: the server's response fields removed as its head arrives (lower
        case), before any response filter sees it."""
        self.server: tuple[bytes, bytes] | None = None if server is None else (b"Server", server)
        """hide_headers' Server field, sent on every response that has none."""
        steps: dict[str, list[Step]] = {phase: [] for phase in PHASES}
        buffers: dict[str, dict[int, int]] = {"request_body": {}, "response_body": {}}
        takes: dict[str, dict[int, Takes]] = {"request_body": {}, "response_body": {}}
        for index, (name, instance) in enumerate(filters):
            for phase in PHASES:
                if _defines(instance, phase):
                    steps[phase].append((index, name, getattr(instance, phase)))
            for phase, attribute, choice in (
                ("request_body", "buffer_request_body", "takes_request_body"),
                ("response_body", "buffer_response_body", "takes_response_body"),
            ):
                bound = getattr(instance, attribute, 0)
                if bound:
                    buffers[phase][index] = int(bound)
                if _defines(instance, choice):
                    takes[phase][index] = getattr(instance, choice)
        keeping = frozenset(
            index
            for index, (_, instance) in enumerate(filters)
            if getattr(instance, "keeps_body_length", False)
        )
        self.request_head: tuple[Step, ...] = tuple(steps["request_head"])
        self.request_body: tuple[Step, ...] = tuple(steps["request_body"])
        # The response travels back through the chain: the last filter sees it first.
        self.response_head: tuple[Step, ...] = tuple(reversed(steps["response_head"]))
        self.response_body: tuple[Step, ...] = tuple(reversed(steps["response_body"]))
        self.log: tuple[Step, ...] = tuple(reversed(steps["log"]))
        self._bodies = {
            phase: _Body(
                _plan(body_steps, buffers[phase], keeping), takes[phase], buffers[phase], keeping
            )
            for phase, body_steps in (
                ("request_body", self.request_body),
                ("response_body", self.response_body),
            )
        }

    def body_plan(self, phase: str, exchange: Exchange) -> BodyPlan:
        """How this exchange's body goes through `phase` ("request_body" or
        "response_body"), asked once the head's filters are done. A filter whose
        takes_request_body (takes_response_body) says this body is not its own is left out
        of it: not called, nothing buffered for it. Raises FilterFailed for such a method
        that raises."""
        body = self._bodies[phase]
        if not body.takes:
            return body.plan
        steps = []
        for step in body.plan.steps:
            take = body.takes.get(step[0])
            if take is not None:
                try:
                    taken = take(exchange)
                except Exception:
                    raise FilterFailed(step[1], Failure()) from None
                if not taken:
                    continue
            steps.append(step)
        if len(steps) == len(body.plan.steps):
            return body.plan
        return _plan(tuple(steps), body.buffers, body.keeping)

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def before(steps: tuple[Step, ...], position: int) -> tuple[Step, ...]:
        """The steps of filters before `position` (those that saw the request before the
        filter at `position` answered it)."""
        return tuple(step for step in steps if step[0] < position)


def _defines(instance: object, method: str) -> bool:
    """Whether the filter defines `method` (other than as Filter's own, which does
    nothing)."""
    found = getattr(instance, method, None)
    return callable(found) and getattr(type(instance), method, None) is not getattr(
        Filter, method, None
    )


def _plan(steps: tuple[Step, ...], buffers: dict[int, int], keeping: frozenset[int]) -> BodyPlan:
    return BodyPlan(
        steps,
        {position: buffers[position] for position, _, _ in steps if position in buffers},
        all(position in keeping for position, _, _ in steps),
    )


EMPTY: Final = Chain(())


class FilterFailed(Exception):
    """A filter raised, or returned what its phase does not take."""

    def __init__(self, name: str, failure: Failure) -> None:
        super().__init__(f"filter {name}: {failure.getErrorMessage()}")
        self.name = name
        self.failure = failure


def _deferred(result: object) -> Deferred[Any] | None:
    """A Deferred for what a phase returned when it is one or a coroutine, else None."""
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return Deferred.fromCoroutine(result)
    return None


ALL_WENT_ON: Final = 1 << 30
"""The position a head phase reports when no filter answered."""


class HeadRun:
    """Runs a head phase's steps in order until one answers. A step returning a Deferred or a
    coroutine holds the run (`waiting`) until it fires; `cancel()` gives it up.

    `done(position, answer)` gets the answering filter's position and its Answer, or
    (ALL_WENT_ON, None) when every step let the exchange go on; `failed(FilterFailed)` gets what a
    step raised or returned wrongly."""

    __slots__ = ("_done", "_exchange", "_failed", "_index", "_steps", "waiting")

    def __init__(
        self,
        steps: tuple[Step, ...],
        exchange: Exchange,
        done: Callable[[int, Answer | None], None],
        failed: Callable[[FilterFailed], None],
    ) -> None:
        self._steps = steps
        self._exchange = exchange
        self._done = done
        self._failed = failed
        self._index = 0
        self.waiting: Deferred[Any] | None = None
        """The Deferred the run waits on; None while it runs or once it is over."""

    def run(self, index: int = 0, first: object = None) -> None:
        """Run the steps from `index`; `first`, when not None, is what the step at `index`
        returned already (its caller ran it): a Deferred, a coroutine, or a wrong value."""
        steps = self._steps
        self._index = index
        while self._index < len(steps):
            position, name, call = steps[self._index]
            if first is not None:
                result, first = first, None
            else:
                try:
                    result = call(self._exchange)
                except Exception:
                    self._failed(FilterFailed(name, Failure()))
                    return
            if result is None:
                self._index += 1
                continue
            if isinstance(result, Answer):
                self._done(position, result)
                return
            waiting = _deferred(result)
            if waiting is None:
                self._wrong(name, result)
                return
            self.waiting = waiting
            waiting.addCallbacks(self._resumed, self._raised, errbackArgs=(name,))
            return
        self._done(ALL_WENT_ON, None)

    def _resumed(self, result: object) -> None:
        self.waiting = None
        position, name, _ = self._steps[self._index]
        if isinstance(result, Answer):
            self._done(position, result)
        elif result is None:
            self.run(self._index + 1)
        else:
            self._wrong(name, result)

    def _raised(self, failure: Failure, name: str) -> None:
        if self.waiting is None:  # cancelled by us: the exchange is over
            return
        self.waiting = None
        self._failed(FilterFailed(name, failure))

    def _wrong(self, name: str, result: object) -> None:
        why = TypeError(f"returned {type(result).__name__}, not None, an Answer or a Deferred")
        self._failed(FilterFailed(name, Failure(why)))

    def cancel(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.cancel()


class TooLarge(Exception):
    """A buffering filter's body went over its bound."""


class BodyRun:
    """Passes body chunks through a body phase's steps in order, each step's output the next
    one's input, to `emit(data, end)`. A step returning a Deferred or a coroutine holds the
    run: `hold(True)` asks the caller to stop feeding (it may still feed: chunks queue), and
    `hold(False)` once the run is free again. A buffering step gets its whole body at once."""

    __slots__ = (
        "_buffered",
        "_buffers",
        "_emit",
        "_exchange",
        "_failed",
        "_hold",
        "_queue",
        "_sizes",
        "_steps",
        "waiting",
    )

    def __init__(
        self,
        steps: tuple[Step, ...],
        buffers: Mapping[int, int],
        exchange: Exchange,
        emit: Callable[[bytes, bool], None],
        hold: Callable[[bool], None],
        failed: Callable[[Exception], None],
    ) -> None:
        self._steps = steps
        self._buffers = buffers
        self._buffered: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        """The bytes held so far by each buffering step (by its index in `steps`)."""
        self._exchange = exchange
        self._emit = emit
        self._hold = hold
        self._failed = failed
        self._queue: list[tuple[int, bytes, bool]] = []
        self.waiting: Deferred[Any] | None = None

    def feed(self, data: bytes, end: bool) -> None:
        if self.waiting is not None:
            self._queue.append((0, data, end))
            return
        self._run(0, data, end)

    def _run(self, index: int, data: bytes, end: bool) -> None:
        steps = self._steps
        while index < len(steps):
            position, name, call = steps[index]
            bound = self._buffers.get(position)
            if bound is not None:
                parts = self._buffered.setdefault(index, [])
                parts.append(data)
                size = self._sizes[index] = self._sizes.get(index, 0) + len(data)
                if size > bound:
                    self._failed(TooLarge(f"filter {name}: body over {bound} bytes"))
                    return
                if not end:
                    return
                data = b"".join(parts)
                parts.clear()
            try:
                result = call(self._exchange, data, end)
            except Rejected as e:
                self._failed(e)
                return
            except Exception:
                self._failed(FilterFailed(name, Failure()))
                return
            if not isinstance(result, bytes):
                waiting = _deferred(result)
                if waiting is None:
                    why = TypeError(f"returned {type(result).__name__}, not bytes or a Deferred")
                    self._failed(FilterFailed(name, Failure(why)))
                    return
                self.waiting = waiting
                self._hold(True)
                waiting.addCallbacks(
                    self._resumed,
                    self._raised,
                    callbackArgs=(index, name, end),
                    errbackArgs=(name,),
                )
                return
            data = result
            index += 1
        if data or end:
            self._emit(data, end)

    def _resumed(self, result: object, index: int, name: str, end: bool) -> None:
        self.waiting = None
        if not isinstance(result, bytes):
            why = TypeError(f"fired with {type(result).__name__}, not bytes")
            self._failed(FilterFailed(name, Failure(why)))
            return
        self._run(index + 1, result, end)
        while self.waiting is None and self._queue:
            index, data, end = self._queue.pop(0)
            self._run(index, data, end)
        if self.waiting is None:
            self._hold(False)

    def _raised(self, failure: Failure, name: str) -> None:
        if self.waiting is None:
            return
        self.waiting = None
        self._failed(FilterFailed(name, failure))

    def cancel(self) -> None:
        waiting, self.waiting = self.waiting, None
        self._queue.clear()
        if waiting is not None:
            waiting.cancel()
