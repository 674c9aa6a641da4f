"""The HTTP filter interface: what proxyd calls on a filter and what a filter may answer.

A filter is an object with one method per phase it takes part in (a phase it does not define
costs nothing). Each phase gets the exchange (`Exchange` below: the request, the response once
there is one, per-exchange `vars`):

- `request_head(exchange)`: return None to go on, an `Answer` to answer the request without
  a server, or a Deferred / coroutine that fires with one of those (the chain waits for it);
  the request's fields (`exchange.request_headers`), `path` and `query` may be changed here
  and the server sees the change; `exchange.use_pool(name)` sends it to another pool.
- `request_body(exchange, data, end)` and `response_body(exchange, data, end)`: return the
  bytes to pass on in place of `data` (b"" holds nothing back, it passes nothing; a filter
  may keep bytes and pass them with a later call) or a Deferred / coroutine firing with them.
  `request_body` may raise `Rejected(Reject(...))` to refuse the request. A filter that
  passes the bodies on unchanged says so with `keeps_body_length = True`: the request then
  keeps its Content-Length (else it goes to the server chunked), and so does the response.
  `end` is true on the last call, whose `data` may be b"". With `buffer_request_body` or
  `buffer_response_body` set to a size, the filter is called once with the whole body (up to
  that many bytes: a larger request body is answered 413, a larger response 502), and the
  body is read whole before it goes on: a request's before a server is tried, a response's
  before its head goes to the client, each then sent with its new Content-Length.
- `takes_request_body(exchange)` / `takes_response_body(exchange)`: whether the filter takes
  part in this exchange's body, asked once the head's filters are done (the fields are the
  ones sent). False leaves it out of this body: its body phase is not called, nothing is
  buffered for it, and the body keeps its length as far as it is concerned. A filter that
  transforms some bodies only (by their Content-Type, say) streams the others this way.
- `response_head(exchange)`: the response's status and fields may be changed
  (`exchange.status`, `exchange.response_headers`); an `Answer` replaces the response.
- `log(exchange)`: the exchange is over and logged (its outcome is final).

Request phases run in the order of the chain, response phases in the reverse order; a
request answered by a filter (or by proxyd) runs the response phases of the filters before it.
A filter that raises answers its request 500 (or cuts the response if it started), logged
with the traceback and counted; other requests go on.

A `[filter NAME]` section names the class (`class = package.module:Name`); its other keys
are the filter's options, given to the class as `Options`: the class reads each with a typed
getter, so a missing or bad value, or a key it does not read, is a config error with the
file's line, at start, at `proxyd check` and at reload.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from proxyd.config import values as v
from proxyd.config.errors import Invalid, did_you_mean, one_of
from proxyd.relay.http.headers import replace_field

Headers = list[tuple[bytes, bytes]]
"""Header fields as received and sent: (name, value) pairs in order, names as written."""

PHASES = ("request_head", "request_body", "response_head", "response_body", "log")


class BodySink(Protocol):
    """Where a BodySource's bytes go (the exchange)."""

    def source_data(self, data: bytes) -> None: ...

    def source_end(self) -> None:
        """The body is complete."""

    def source_failed(self, why: str) -> None:
        """The body cannot be completed: the response is cut (logged with `why`)."""


class BodySource(Protocol):
    """An answer's body that streams (a cached response read from its store): the exchange
    starts it once the head is sent and pauses it while the client's write buffer is full."""

    @property
    def length(self) -> int | None:
        """The body's length (the answer's Content-Length); None: sent chunked."""

    def start(self, sink: BodySink) -> None:
        """Begin sending the body to `sink` (it may write at once or later)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None:
        """The exchange is over (finished, cut, or the body is not sent: HEAD, 304): send
        nothing more and let go of what it holds; idempotent, and called after a start or
        without one."""


class Answer:
    """A response a filter (or proxyd) makes itself: its body bytes, or a `source` that
    streams it."""

    __slots__ = ("body", "headers", "source", "status")

    def __init__(
        self,
        status: int,
        body: bytes | str = b"",
        headers: Iterable[tuple[bytes | str, bytes | str]] = (),
        *,
        content_type: str | None = None,
        source: BodySource | None = None,
    ) -> None:
        if not 200 <= status <= 599:
            raise ValueError(f"an answer's status is from 200 to 599, not {status}")
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.source = source
        self.headers: Headers = [(_bytes(name), _bytes(value)) for name, value in headers]
        if content_type is None and self.body:
            content_type = "text/plain; charset=utf-8"
        if content_type is not None:
            set_header(self.headers, b"Content-Type", content_type)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {len(self.body)} bytes)"


class Reject(Answer):
    """Refuse the request with proxyd's own error answer for `status`: the listener's error
    page (or a line of text) as the body, `why` in the access log's `error` and in the log,
    counted under `kind` (proxyd.metrics.ErrorKind's words: "refused" unless said)."""

    __slots__ = ("kind", "why")

    def __init__(self, status: int, why: str, kind: str = "refused") -> None:
        super().__init__(status)
        self.why = why
        self.kind = kind

    def __repr__(self) -> str:
        return f"Reject({self.status}, {self.why!r})"


class Rejected(Exception):
    """Raised by `request_body` to refuse the request with `reject` (proxyd's error answer, as
    a head phase's Reject), for what shows only as the body streams (a chunked body over a
    limit). The connection closes after the answer: the rest of the body is not read. Once
    the response has started, the exchange is cut instead."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.why)
        self.reject = reject


Verdict = Answer | None
HeadResult = Verdict | Awaitable[Verdict]
BodyResult = bytes | Awaitable[bytes]


class Exchange(Protocol):
    """What a filter sees of one request and its response."""

    @property
    def reactor(self) -> Any:
        """The reactor (IReactorTime: callLater, seconds), for timers and clients."""

    @property
    def method(self) -> str: ...

    path: str
    """The request's path, normalized (dot segments and escapes resolved, as routes match
    it). Set it in request_head to send another path (the route's strip_prefix and rewrite
    apply to the new one)."""
    query: str
    """The query, without '?'; "" if none. May be set in request_head."""

    @property
    def host(self) -> str:
        """The Host as received (with its port, if any)."""

    @property
    def scheme(self) -> str:
        """ "http" or "https"."""

    @property
    def client_ip(self) -> str: ...

    @property
    def request_id(self) -> str:
        """X-Request-ID, as sent to the server."""

    @property
    def route_name(self) -> str | None:
        """The matched route's name; None when no route matched."""

    @property
    def request_headers(self) -> Headers:
        """The request's fields; changes made in request_head reach the server."""

    status: int
    """The response status (0 before there is a response); may be set in response_head."""

    @property
    def response_headers(self) -> Headers:
        """The response's fields in response_head (the server's, or an Answer's)."""

    @property
    def answer(self) -> Answer | None:
        """The Answer being sent, when proxyd or a filter answers (None for a server's
        response): its body may be changed in response_head."""

    @property
    def server(self) -> str | None:
        """The name of the server that answers; None until one does."""

    @property
    def vars(self) -> dict[str, Any]:
        """Per-exchange state for filters to share (empty at the start)."""

    def use_pool(self, name: str) -> None:
        """In request_head: proxy the request to pool `name` (the listener's config must
        define it) instead of the route's."""


class Filter:
    """The interface of a filter, typed, as a base class: a subclass overrides the phases it
    takes part in (see the module's docstring); the phases it leaves as they are here are
    not called at all. An instance keeps its `name` (the `[filter NAME]`)."""

    buffer_request_body = 0
    """Above 0: request_body is called once, with the whole body up to this many bytes."""
    buffer_response_body = 0
    """Above 0: response_body is called once, with the whole body up to this many bytes."""

    def __init__(self, options: Options) -> None:
        self.name = options.filter_name

    def request_head(self, exchange: Exchange) -> HeadResult:
        """Go on (None), answer (an Answer), or wait (a Deferred or coroutine of either)."""
        return None

    def request_body(self, exchange: Exchange, data: bytes, end: bool) -> BodyResult:
        """The request body bytes to pass on for `data` (or a Deferred or coroutine of them)."""
        return data

    def response_head(self, exchange: Exchange) -> HeadResult:
        """Go on (None), replace the response (an Answer), or wait."""
        return None

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> BodyResult:
        """The response body bytes to pass on for `data` (or a Deferred or coroutine)."""
        return data

    def takes_request_body(self, exchange: Exchange) -> bool:
        """Whether request_body takes part in this request's body (left as it is here, it
        always does)."""
        return True

    def takes_response_body(self, exchange: Exchange) -> bool:
        """Whether response_body takes part in this response's body."""
        return True

    def log(self, exchange: Exchange) -> None:
        """The exchange is over and logged."""


def phases(cls: type) -> list[str]:
    """The phases `cls` takes part in: those it defines, other than Filter's own."""
    return [
        phase
        for phase in PHASES
        if callable(getattr(cls, phase, None)) and getattr(cls, phase) is not getattr(Filter, phase)
    ]


class OptionError(Exception):
    """Raised by a filter's __init__ about one of its options: reported as a config error on
    that key's line."""

    def __init__(self, key: str, expected: str, found: str) -> None:
        super().__init__(f"{key}: expected {expected}; found {found}")
        self.key = key
        self.invalid = Invalid(expected, found)


_T = TypeVar("_T")


class Options:
    """A `[filter NAME]` section's keys (other than `class`), read by the filter's class
    with the getters below. A getter raises OptionError naming the key; a key the class
    never reads is an error too (a typo would otherwise be ignored)."""

    def __init__(
        self,
        filter_name: str,
        values: Mapping[str, str],
        *,
        base_dir: str = "",
        pools: Iterable[str] = (),
    ) -> None:
        self.filter_name = filter_name
        self._values = dict(values)
        self._base_dir = base_dir
        self._pools = frozenset(pools)
        self.read: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def unread(self) -> list[str]:
        return [key for key in self._values if key not in self.read]

    def _get(self, key: str, parse: Callable[[str], _T], default: _T | None) -> _T:
        self.read.add(key)
        text = self._values.get(key)
        if text is None:
            if default is None:
                raise OptionError(key, f"a '{key}' option", "none")
            return default
        try:
            return parse(text)
        except Invalid as e:
            raise OptionError(key, e.expected, e.found) from None

    def text(self, key: str, default: str | None = None) -> str:
        return self._get(key, str.strip, default)

    def integer(
        self, key: str, default: int | None = None, low: int = 0, high: int | None = None
    ) -> int:
        return self._get(key, v.integer(low, high), default)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        return self._get(key, v.boolean, default)

    def duration(self, key: str, default: float | None = None) -> float:
        """`500ms`, `2s`, `1m`…: seconds."""
        return self._get(key, v.duration, default)

    def size(self, key: str, default: int | None = None, low: int = 0, high: int = 1 << 40) -> int:
        """`64KiB`, `1MiB`…: bytes."""
        return self._get(key, v.size(low, high), default)

    def choice(self, key: str, choices: Iterable[str], default: str | None = None) -> str:
        return self._get(key, v.choice(*choices), default)

    def regex(self, key: str, default: str | None = None) -> re.Pattern[str]:
        def parse(text: str) -> re.Pattern[str]:
            try:
                return re.compile(text.strip())
            except re.error as e:
                raise Invalid("a regular expression", f"{text.strip()!r} ({e})") from None

        return self._get(key, parse, None if default is None else re.compile(default))

    def path(self, key: str, default: str | None = None) -> str:
        """A file path; relative to the config file's directory."""
        return self._get(key, lambda text: os.path.join(self._base_dir, text.strip()), default)

    def pool(self, key: str, default: str | None = None) -> str:
        """The name of a [pool] of the configuration."""

        def parse(text: str) -> str:
            name = text.strip()
            if name not in self._pools:
                raise Invalid(
                    f"the name of a [pool] ({one_of(sorted(self._pools)) or 'none defined'})",
                    repr(name),
                    did_you_mean(name, self._pools),
                )
            return name

        return self._get(key, parse, default)

    def lines(self, key: str, default: list[str] | None = None) -> list[str]:
        """A multi-line value: its non-empty lines."""
        return self._get(
            key, lambda text: [line.strip() for line in text.splitlines() if line.strip()], default
        )


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def header(headers: Headers, name: bytes | str) -> str | None:
    """The value of field `name` (case-insensitive; several fields joined with ", "), as
    text; None when absent."""
    lower = _bytes(name).lower()
    values = [value for key, value in headers if key.lower() == lower]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def set_header(headers: Headers, name: bytes | str, value: bytes | str) -> None:
    """Replace every field `name` with one (in the first one's place, else at the end)."""
    key = _bytes(name)
    headers[:] = replace_field(headers, (key, _bytes(value)), key.lower())


def add_header(headers: Headers, name: bytes | str, value: bytes | str) -> None:
    headers.append((_bytes(name), _bytes(value)))


def remove_header(headers: Headers, name: bytes | str) -> None:
    lower = _bytes(name).lower()
    headers[:] = [field for field in headers if field[0].lower() != lower]
