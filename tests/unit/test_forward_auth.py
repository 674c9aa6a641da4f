"""Forward auth without sockets: the subrequest's fields, the decision an answer makes, the
decision cache on a task.Clock, ForwardAuth over a fake requester (bounds, timeouts, an
unreachable service, cancelling, logs), and the HTTP client's timeout, cancel and bounded
body over a fake Agent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as TwistedHeaders

from proxyd.auth.fetch import Fetched, FetchError, FetchTimeout, HttpClient, fetch_body
from proxyd.auth.forward import (
    MAX_ANSWER_BODY,
    DecisionCache,
    ForwardAuth,
    Original,
    decide,
    subrequest_headers,
)
from proxyd.auth.result import Denied, Granted
from proxyd.config.auth_model import ForwardAuthConfig

URL = "http://auth.test:9000/check"


def original(**changes: Any) -> Original:
    settings: dict[str, Any] = {
        "method": "POST",
        "uri": b"/app/page?x=1",
        "host": "www.example.com",
        "proto": "https",
        "forwarded_for": b"192.0.2.7",
        "request_id": "req-1",
        "headers": [
            (b"Host", b"www.example.com"),
            (b"Authorization", b"Bearer abc"),
            (b"Cookie", b"session=s1"),
            (b"X-Other", b"no"),
            (b"cookie", b"theme=dark"),
        ],
    }
    settings.update(changes)
    return Original(**settings)


def fetched(status: int, headers: Iterable[tuple[bytes, bytes]] = (), body: bytes | None = b""):
    return Fetched(status, tuple(headers), body)


# The subrequest.


def test_subrequest_carries_the_original_request_and_the_chosen_fields_only() -> None:
    fields = subrequest_headers(original(), (b"authorization", b"cookie"))
    assert fields == [
        (b"X-Forwarded-Method", b"POST"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"www.example.com"),
        (b"X-Forwarded-Uri", b"/app/page?x=1"),
        (b"X-Original-URI", b"/app/page?x=1"),
        (b"X-Forwarded-For", b"192.0.2.7"),
        (b"X-Request-ID", b"req-1"),
        (b"Authorization", b"Bearer abc"),
        (b"Cookie", b"session=s1"),
        (b"cookie", b"theme=dark"),
    ]


def test_subrequest_without_request_id_or_chosen_fields() -> None:
    fields = subrequest_headers(original(request_id=""), ())
    names = [name for name, _ in fields]
    assert b"X-Request-ID" not in names
    assert b"Authorization" not in names and b"Cookie" not in names


# Decisions.


def test_2xx_grants_with_copied_fields_and_the_first_present_as_identity() -> None:
    answer = fetched(
        204,
        [(b"x-auth-user", b"alice"), (b"X-Auth-Groups", b"a"), (b"X-Auth-Groups", b"b")],
    )
    decision = decide(answer, (b"X-Auth-Email", b"X-Auth-User", b"X-Auth-Groups"))
    assert decision == Granted(
        "alice",
        ((b"X-Auth-User", b"alice"), (b"X-Auth-Groups", b"a"), (b"X-Auth-Groups", b"b")),
    )


def test_2xx_without_copied_fields_grants_an_empty_identity() -> None:
    assert decide(fetched(200, [(b"X-Auth-User", b"bob")]), ()) == Granted("", ())


def test_copied_values_with_control_characters_are_left_out() -> None:
    decision = decide(fetched(200, [(b"X-Auth-User", b"bob\x00")]), (b"X-Auth-User",))
    assert decision == Granted("", ())


def test_401_passes_the_services_status_chosen_fields_and_body() -> None:
    answer = fetched(
        401,
        [
            (b"WWW-Authenticate", b'Bearer realm="sso"'),
            (b"Content-Type", b"application/json"),
            (b"X-Internal", b"secret"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
        b'{"error": "login"}',
    )
    assert decide(answer, ()) == Denied(
        401,
        "unauthorized",
        (
            (b"WWW-Authenticate", b'Bearer realm="sso"'),
            (b"Content-Type", b"application/json"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ),
        b'{"error": "login"}',
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, "forbidden"),
        (302, "denied"),
        (404, "denied"),
        (500, "auth_error"),
        (503, "auth_error"),
    ],
)
def test_other_statuses_are_denials_by_reason(status: int, reason: str) -> None:
    decision = decide(fetched(status, [(b"Location", b"/login")], b"x"), ())
    assert isinstance(decision, Denied)
    assert (decision.status, decision.reason, decision.fields) == (
        status,
        reason,
        ((b"Location", b"/login"),),
    )


def test_a_body_over_the_bound_gives_proxyds_page_without_the_services_content_type() -> None:
    answer = fetched(403, [(b"Content-Type", b"text/html"), (b"Location", b"/x")], None)
    assert decide(answer, ()) == Denied(403, "forbidden", ((b"Location", b"/x"),), b"")


def test_a_status_out_of_range_is_a_bad_answer() -> None:
    assert decide(fetched(700), ()) == Denied(503, "bad_answer")


# The cache.


def test_cache_keys_on_the_chosen_fields_values_case_insensitively() -> None:
    cache = DecisionCache(Clock(), 60, [b"Cookie", b"Authorization"])
    one = cache.key([(b"cookie", b"s=1"), (b"Host", b"a")])
    assert one is not None
    assert cache.key([(b"COOKIE", b"s=1"), (b"Host", b"b")]) == one
    assert cache.key([(b"Cookie", b"s=2")]) != one
    assert cache.key([(b"Cookie", b"s=1"), (b"Authorization", b"x")]) != one
    # The value moved from one field to another is another key.
    assert cache.key([(b"Authorization", b"s=1")]) != one
    assert cache.key([(b"Host", b"a")]) is None


def test_cache_entries_expire_and_are_bounded() -> None:
    clock = Clock()
    cache = DecisionCache(clock, 10, [b"cookie"], max_entries=2)
    keys = [cache.key([(b"Cookie", b"%d" % n)]) for n in range(3)]
    assert None not in keys
    first, second, third = (key for key in keys if key is not None)
    cache.put(first, Granted("a"))
    clock.advance(5)
    cache.put(second, Granted("b"))
    assert cache.get(first) == Granted("a")
    clock.advance(2)
    cache.put(third, Granted("c"))
    assert len(cache) == 2
    assert cache.get(first) is None  # the oldest went first
    clock.advance(7)
    assert cache.get(second) == Granted("b")
    clock.advance(1)
    assert cache.get(second) is None
    assert cache.get(third) == Granted("c")


# ForwardAuth over a fake requester.


class FakeRequester:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[bytes, bytes]], float, int, Deferred[Fetched]]] = []

    def get(
        self,
        url: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        timeout: float,
        max_body: int,
    ) -> Deferred[Fetched]:
        asked: Deferred[Fetched] = Deferred()
        self.calls.append((url, list(headers), timeout, max_body, asked))
        return asked

    @property
    def last(self) -> Deferred[Fetched]:
        return self.calls[-1][4]


def config(**changes: Any) -> ForwardAuthConfig:
    settings: dict[str, Any] = {"url": URL, "copy_headers": ("X-Auth-User",)}
    settings.update(changes)
    return ForwardAuthConfig(**settings)


def results(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_forward_auth_asks_the_service_and_grants() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(timeout=1.5), requester, Clock())
    decision = auth.check(original())
    assert isinstance(decision, Deferred)
    url, headers, timeout, max_body, asked = requester.calls[0]
    assert (url, timeout, max_body) == (URL, 1.5, MAX_ANSWER_BODY)
    assert (b"Authorization", b"Bearer abc") in headers
    assert auth.pending == 1
    seen = results(decision)
    asked.callback(fetched(200, [(b"X-Auth-User", b"alice")]))
    assert seen == [Granted("alice", ((b"X-Auth-User", b"alice"),))]
    assert auth.pending == 0


def test_forward_auth_passes_a_denial_on() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(), requester, Clock())
    seen = results(auth.check(original()))  # type: ignore[arg-type]
    requester.last.callback(fetched(401, [(b"WWW-Authenticate", b"Basic")], b"no"))
    assert seen == [Denied(401, "unauthorized", ((b"WWW-Authenticate", b"Basic"),), b"no")]


def test_an_unreachable_service_is_503_unavailable_logged_once_per_streak() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(), requester, Clock())
    with capturedLogs() as events:
        first = results(auth.check(original()))  # type: ignore[arg-type]
        requester.last.errback(ConnectionRefusedError("refused"))
        second = results(auth.check(original()))  # type: ignore[arg-type]
        requester.last.errback(ConnectionRefusedError("refused"))
        third = results(auth.check(original()))  # type: ignore[arg-type]
        requester.last.callback(fetched(200))
    assert first == second == [Denied(503, "unavailable")]
    assert third == [Granted("")]
    texts = [formatEvent(event) for event in events]
    failed = [t for t in texts if "failed" in t]
    assert len(failed) == 1 and "auth.test:9000/check" in failed[0]
    assert any("answers again" in t for t in texts)
    assert events[0]["log_level"] is LogLevel.warn


def test_a_timeout_is_503_timeout() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(), requester, Clock())
    with capturedLogs():
        seen = results(auth.check(original()))  # type: ignore[arg-type]
        requester.last.errback(FetchTimeout("no answer within 2s"))
    assert seen == [Denied(503, "timeout")]


def test_cancelling_drops_the_subrequest_without_blaming_the_service() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(), requester, Clock())
    with capturedLogs() as events:
        decision = auth.check(original())
        assert isinstance(decision, Deferred)
        seen = results(decision)
        decision.cancel()
    assert len(seen) == 1 and isinstance(seen[0], Failure) and seen[0].check(CancelledError)
    assert auth.pending == 0
    assert events == []


def test_subrequests_in_flight_are_bounded() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(), requester, Clock(), max_pending=2)
    auth.check(original())
    auth.check(original())
    assert auth.check(original()) == Denied(503, "overloaded")
    assert len(requester.calls) == 2
    requester.calls[0][4].callback(fetched(200))
    assert isinstance(auth.check(original()), Deferred)


def test_cached_grants_cost_no_subrequest_until_they_expire() -> None:
    clock = Clock()
    requester = FakeRequester()
    auth = ForwardAuth(
        config(cache_time=30.0, cache_key=("Cookie",)), requester, clock, max_cached=100
    )
    seen = results(auth.check(original()))  # type: ignore[arg-type]
    requester.last.callback(fetched(200, [(b"X-Auth-User", b"alice")]))
    granted = Granted("alice", ((b"X-Auth-User", b"alice"),))
    assert seen == [granted]
    assert auth.check(original(uri=b"/other")) == granted
    assert len(requester.calls) == 1
    # Another cookie is another key.
    assert isinstance(auth.check(original(headers=[(b"Cookie", b"session=s2")])), Deferred)
    clock.advance(30)
    assert isinstance(auth.check(original()), Deferred)
    assert len(requester.calls) == 3


def test_denials_and_requests_without_key_fields_are_not_cached() -> None:
    requester = FakeRequester()
    auth = ForwardAuth(config(cache_time=30.0, cache_key=("Cookie",)), requester, Clock())
    auth.check(original())
    requester.last.callback(fetched(401))
    assert isinstance(auth.check(original()), Deferred)
    requester.last.callback(fetched(200))
    anonymous = original(headers=[(b"Host", b"x")])
    auth.check(anonymous)
    requester.last.callback(fetched(200))
    assert isinstance(auth.check(anonymous), Deferred)
    assert auth.cache is not None and len(auth.cache) == 1


# The HTTP client over a fake Agent.


class FakeResponse:
    def __init__(self, code: int, headers: dict[bytes, list[bytes]]) -> None:
        self.code = code
        self.headers = TwistedHeaders(headers)
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(FakeBodyTransport())


class FakeBodyTransport:
    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeAgent:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes, TwistedHeaders, Deferred[Any]]] = []
        self.cancelled = 0

    def request(self, method: bytes, url: bytes, headers: TwistedHeaders, body: Any) -> Deferred:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1
            # As Agent does for a connect in progress: its own error, not CancelledError.
            d.errback(ConnectingCancelledError(None))

        d: Deferred[Any] = Deferred(cancel)
        self.requests.append((method, url, headers, d))
        return d


def client(clock: Clock) -> tuple[HttpClient, FakeAgent]:
    agent = FakeAgent()
    return HttpClient(clock, connect_timeout=1.0, agent=agent), agent


def test_client_gets_with_the_fields_and_reads_the_body() -> None:
    clock = Clock()
    http, agent = client(clock)
    seen = results(http.get(URL, [(b"X-A", b"1")], timeout=2, max_body=100))
    method, url, headers, answering = agent.requests[0]
    assert (method, url, headers.getRawHeaders(b"X-A")) == (b"GET", URL.encode(), [b"1"])
    response = FakeResponse(200, {b"X-B": [b"2"]})
    answering.callback(response)
    response.protocol.dataReceived(b"hello ")
    response.protocol.dataReceived(b"world")
    assert seen == []
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert seen == [Fetched(200, ((b"X-B", b"2"),), b"hello world")]
    assert clock.getDelayedCalls() == []


def test_client_takes_a_body_ended_by_the_close() -> None:
    http, agent = client(Clock())
    seen = results(http.get(URL, timeout=2, max_body=100))
    response = FakeResponse(200, {})
    agent.requests[0][3].callback(response)
    response.protocol.dataReceived(b"abc")
    response.protocol.connectionLost(Failure(PotentialDataLoss()))
    assert seen == [Fetched(200, (), b"abc")]


def test_client_drops_a_body_over_the_bound() -> None:
    http, agent = client(Clock())
    seen = results(http.get(URL, timeout=2, max_body=5))
    response = FakeResponse(401, {b"Content-Type": [b"text/html"]})
    agent.requests[0][3].callback(response)
    response.protocol.dataReceived(b"12345")
    response.protocol.dataReceived(b"6")
    assert response.protocol.transport.stopped
    assert seen == [Fetched(401, ((b"Content-Type", b"text/html"),), None)]


def test_client_times_out_a_connect_as_a_timeout() -> None:
    clock = Clock()
    http, agent = client(clock)
    seen = results(http.get(URL, timeout=2, max_body=5))
    clock.advance(2)
    assert agent.cancelled == 1
    assert len(seen) == 1 and seen[0].check(FetchTimeout)


def test_client_times_out_a_body_that_does_not_end() -> None:
    clock = Clock()
    http, agent = client(clock)
    seen = results(http.get(URL, timeout=2, max_body=100))
    response = FakeResponse(200, {})
    agent.requests[0][3].callback(response)
    response.protocol.dataReceived(b"slow")
    clock.advance(2)
    assert response.protocol.transport.stopped
    assert len(seen) == 1 and seen[0].check(FetchTimeout)


def test_client_cancelled_by_its_caller_fails_with_cancelled_not_the_agents_error() -> None:
    clock = Clock()
    http, agent = client(clock)
    asked = http.get(URL, timeout=2, max_body=5)
    seen = results(asked)
    asked.cancel()
    assert agent.cancelled == 1
    assert len(seen) == 1 and seen[0].check(CancelledError)
    assert clock.getDelayedCalls() == []


def test_client_passes_connection_errors_on() -> None:
    http, agent = client(Clock())
    seen = results(http.get(URL, timeout=2, max_body=5))
    agent.requests[0][3].errback(ConnectionRefusedError("refused"))
    assert len(seen) == 1 and seen[0].check(ConnectionRefusedError)


def test_fetch_body_wants_a_200_within_the_bound() -> None:
    class Canned:
        def __init__(self, answer: Fetched) -> None:
            self.answer = answer

        def get(self, url: str, headers: Any = (), *, timeout: float, max_body: int) -> Any:
            return succeed(self.answer)

    def fetch(answer: Fetched) -> list[Any]:
        return results(fetch_body(Canned(answer), timeout=1, max_size=10)(URL))  # type: ignore[arg-type]

    assert fetch(fetched(200, (), b"{}")) == [b"{}"]
    refused = fetch(fetched(404, (), b""))
    assert refused[0].check(FetchError) and "404" in refused[0].getErrorMessage()
    assert fetch(fetched(200, (), None))[0].check(FetchError)
