"""User filters on the HTTP relay's chain, through the relay on StringTransports: each phase,
answering, changing heads, transforming bodies, pausing on a Deferred or a coroutine, failing,
and the order of the chain."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from proxyd.config.model import FilterConfig, ProxyAction, RouteConfig, RouteMatch
from proxyd.filters import Answer, Exchange, Filter, Options, Reject, add_header, header
from tests.unit.test_http_relay import GET, OK, Relay, field, request_lines


def loaded(instance: object, name: str = "f") -> FilterConfig:
    return FilterConfig(name, "tests:F", (), instance)


def options(**values: str) -> Options:
    return Options("f", values)


class Local(Filter):
    def request_head(self, exchange: Exchange) -> Answer | None:
        if exchange.path == "/local":
            return Answer(200, "made here\n", [("X-Made", "here")])
        return None


class AddHeader(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.value = options.text("value", "1")

    def request_head(self, exchange: Exchange) -> None:
        add_header(exchange.request_headers, "X-Filtered", self.value)

    def response_head(self, exchange: Exchange) -> None:
        add_header(exchange.response_headers, "X-Seen-By", self.name)


class Upper(Filter):
    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.calls: list[tuple[bytes, bool]] = []

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        self.calls.append((data, end))
        return data.upper()


class Waits(Filter):
    """Pauses the request head on a Deferred the test fires."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.waiting: list[defer.Deferred[Answer | None]] = []

    def request_head(self, exchange: Exchange) -> defer.Deferred[Answer | None]:
        d: defer.Deferred[Answer | None] = defer.Deferred()
        self.waiting.append(d)
        return d


class Boom(Filter):
    def request_head(self, exchange: Exchange) -> None:
        if exchange.path == "/boom":
            raise RuntimeError("kaboom")


def proxied(relay: Relay, response: bytes = OK) -> tuple[bytes, bytes]:
    """What the server got, and what the client got once the server answered `response`."""
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    upstream.dataReceived(response)
    return sent, relay.received()


def test_a_filter_answers_locally_without_a_server() -> None:
    relay = Relay(filters=(loaded(Local(options())),))
    relay.send(b"GET /local HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert field(answer, "X-Made") == [b"here"]
    assert field(answer, "Content-Type") == [b"text/plain; charset=utf-8"]
    assert answer.endswith(b"\r\n\r\nmade here\n")
    assert relay.pending_connects() == []
    assert relay.log.records[-1]["status"] == 200
    relay.send(GET)  # the next request goes on to the server
    assert proxied(relay)[1].endswith(b"hi")


def test_a_request_header_added_by_a_filter_reaches_the_server() -> None:
    relay = Relay(filters=(loaded(AddHeader(Options("adder", {"value": "yes"})), "adder"),))
    relay.send(GET)
    sent, answer = proxied(relay)
    assert field(sent, "X-Filtered") == [b"yes"]
    assert field(sent, "X-Forwarded-For") == [b"10.0.0.7"]  # built-ins still run after it
    assert field(answer, "X-Seen-By") == [b"adder"]


def test_a_response_body_is_transformed_chunk_by_chunk() -> None:
    upper = Upper(options())
    relay = Relay(filters=(loaded(upper),))
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    head = relay.received()
    assert field(head, "Content-Length") == []  # the length may change: chunked
    assert field(head, "Transfer-Encoding") == [b"chunked"]
    assert head.endswith(b"\r\n\r\n5\r\nHELLO\r\n")
    upstream.dataReceived(b"world")
    assert relay.received() == b"5\r\nWORLD\r\n0\r\n\r\n"
    assert upper.calls == [(b"hello", False), (b"world", False), (b"", True)]
    assert relay.log.records[-1]["bytes_out"] == 10


def test_a_filter_pauses_the_chain_until_its_deferred_fires() -> None:
    waits = Waits(options())
    relay = Relay(filters=(loaded(waits), loaded(AddHeader(options()), "after")))
    relay.send(GET)
    assert relay.pending_connects() == [] and len(waits.waiting) == 1
    waits.waiting[0].callback(None)
    sent, answer = proxied(relay)
    assert field(sent, "X-Filtered") == [b"1"]  # the filter after it ran once it fired
    assert answer.endswith(b"hi")


def test_a_deferred_may_fire_with_an_answer() -> None:
    waits = Waits(options())
    relay = Relay(filters=(loaded(waits),))
    relay.send(GET)
    waits.waiting[0].callback(Answer(403, "no"))
    assert relay.received().startswith(b"HTTP/1.1 403 ")
    assert relay.pending_connects() == []


def test_a_coroutine_filter_is_awaited() -> None:
    class Async(Filter):
        async def request_head(self, exchange: Exchange) -> Answer | None:
            await task.deferLater(exchange.reactor, 1.0, lambda: None)
            return Answer(202, "later")

    relay = Relay(filters=(loaded(Async(options())),))
    relay.send(GET)
    assert relay.received() == b""
    relay.reactor.advance(1.0)
    assert relay.received().startswith(b"HTTP/1.1 202 ")


def test_a_filter_that_never_finishes_is_bounded_by_the_response_timeout() -> None:
    waits = Waits(options())
    relay = Relay(filters=(loaded(waits),), response_timeout=5.0)
    relay.send(GET)
    relay.reactor.advance(5.0)
    assert relay.received().startswith(b"HTTP/1.1 504 ")
    assert waits.waiting[0].called  # cancelled
    assert relay.log.records[-1]["error"] == "a filter did not finish within its bound"


def test_a_raising_filter_answers_500_logs_once_and_the_next_request_is_served(
    caplog: Any,
) -> None:
    relay = Relay(filters=(loaded(Boom(options()), "boom"),))
    logged: list[dict[str, Any]] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(logged.append)
    try:
        relay.send(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert field(answer, "Connection") == [b"close"]
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0]["filter"] == "boom"
    assert "kaboom" in relay.log.records[-1]["error"]
    cell = relay.factory.stats.cell("*/", "web", "")
    assert cell.errors["filter_failed"] == 1
    client, ct = relay.connect_client()
    relay.send(GET, client)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert ct.value().endswith(b"hi")


def test_a_filter_returning_the_wrong_type_fails_its_request() -> None:
    class Wrong(Filter):
        def request_head(self, exchange: Exchange) -> Any:
            return "yes"

    relay = Relay(filters=(loaded(Wrong(options())),))
    relay.send(GET)
    assert relay.received().startswith(b"HTTP/1.1 500 ")
    assert "returned str" in relay.log.records[-1]["error"]


def test_a_response_filter_that_raises_cuts_no_started_response_and_answers_500() -> None:
    class BadResponse(Filter):
        def response_head(self, exchange: Exchange) -> None:
            raise ValueError("no")

    relay = Relay(filters=(loaded(BadResponse(options())),))
    relay.send(GET)
    _, answer = proxied(relay)
    assert answer.startswith(b"HTTP/1.1 500 ")


def test_a_body_filter_that_raises_after_the_head_cuts_the_response() -> None:
    class BadBody(Filter):
        def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
            if data == b"bad":
                raise ValueError("bad body")
            return data

    relay = Relay(filters=(loaded(BadBody(options())),))
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nok")
    assert relay.received().endswith(b"2\r\nok\r\n")
    upstream.dataReceived(b"bad")
    assert relay.received() == b""
    assert relay.ct.disconnecting
    assert "bad body" in relay.log.records[-1]["error"]


def test_a_reject_gets_proxyds_error_answer_and_no_header_rules() -> None:
    class Refuse(Filter):
        def request_head(self, exchange: Exchange) -> Reject:
            return Reject(403, "not from here")

    relay = Relay(filters=(loaded(Refuse(options())),), error_pages={403: b"<p>no</p>"})
    relay.send(GET)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert answer.endswith(b"<p>no</p>")
    assert relay.log.records[-1]["error"] == "not from here"


def test_listener_filters_run_before_route_filters_and_responses_come_back_in_reverse() -> None:
    order: list[str] = []

    class Note(Filter):
        def request_head(self, exchange: Exchange) -> None:
            order.append(f"request {self.name}")

        def response_head(self, exchange: Exchange) -> None:
            order.append(f"response {self.name}")

        def log(self, exchange: Exchange) -> None:
            order.append(f"log {self.name}")

    routed = RouteConfig(
        name="r",
        match=RouteMatch(path="/"),
        action=ProxyAction(pool="web"),
        filters=(loaded(Note(Options("route", {})), "route"),),
    )
    relay = Relay(routes=(routed,), filters=(loaded(Note(Options("listener", {})), "listener"),))
    relay.send(GET)
    proxied(relay)
    assert order == [
        "request listener",
        "request route",
        "response route",
        "response listener",
        "log route",
        "log listener",
    ]


def test_a_filter_may_send_the_request_to_another_pool_and_path() -> None:
    class Moves(Filter):
        def request_head(self, exchange: Exchange) -> None:
            exchange.path = "/moved"
            exchange.query = "q=2"
            exchange.vars["seen"] = header(exchange.request_headers, "host")

    relay = Relay(filters=(loaded(Moves(options())),))
    relay.send(GET)
    sent, _ = proxied(relay)
    assert request_lines(sent)[0] == b"GET /moved?q=2 HTTP/1.1"


def test_a_request_body_a_filter_buffers_is_read_whole_then_sent_with_its_length() -> None:
    class Double(Filter):
        buffer_request_body = 1024

        def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
            assert end
            return data[::-1] * 2

    relay = Relay(filters=(loaded(Double(options())),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert relay.pending_connects() == []  # no server until the body is whole
    relay.send(b"def")
    _upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "Content-Length") == [b"12"]
    assert field(sent, "Transfer-Encoding") == []
    assert sent.endswith(b"\r\n\r\nfedcbafedcba")


def test_a_streaming_request_body_filter_sends_the_body_chunked() -> None:
    class Upper(Filter):
        def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
            return data.upper()

    relay = Relay(filters=(loaded(Upper(options())),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    _upstream, ut = relay.accept_upstream()
    relay.send(b"def")
    sent = ut.value()
    assert field(sent, "Content-Length") == []
    assert field(sent, "Transfer-Encoding") == [b"chunked"]
    assert sent.endswith(b"\r\n\r\n3\r\nABC\r\n3\r\nDEF\r\n0\r\n\r\n")


def test_a_buffered_request_body_over_its_bound_is_answered_413() -> None:
    class Small(Filter):
        buffer_request_body = 4

        def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
            return data

    relay = Relay(filters=(loaded(Small(options())),))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabcdef")
    assert relay.received().startswith(b"HTTP/1.1 413 ")
    assert relay.pending_connects() == []  # answered before any server saw it
    [record] = relay.log.records
    assert (record["error"], record["status"]) == ("filter f: body over 4 bytes", 413)


def test_a_response_body_filter_holding_a_deferred_pauses_the_upstream() -> None:
    class Slow(Filter):
        def __init__(self, options: Options) -> None:
            super().__init__(options)
            self.waiting: list[defer.Deferred[bytes]] = []

        def response_body(self, exchange: Exchange, data: bytes, end: bool) -> Any:
            d: defer.Deferred[bytes] = defer.Deferred()
            self.waiting.append(d)
            return d

    slow = Slow(options())
    relay = Relay(filters=(loaded(slow),))
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    assert ut.producerState == "paused"
    upstream.dataReceived(b"cd")  # arrived as the pause took: left in the reader
    assert len(slow.waiting) == 1
    slow.waiting[0].callback(b"AB")
    assert len(slow.waiting) == 2 and ut.producerState == "paused"  # "cd" is in the filter
    slow.waiting[1].callback(b"CD")
    assert ut.producerState == "producing"
    upstream.dataReceived(b"ef")
    slow.waiting[2].callback(b"EF")
    slow.waiting[3].callback(b"")
    assert relay.received().endswith(b"2\r\nAB\r\n2\r\nCD\r\n2\r\nEF\r\n0\r\n\r\n")


@pytest.mark.parametrize("method", ["HEAD"])
def test_no_body_phase_for_a_response_without_a_body(method: str) -> None:
    upper = Upper(options())
    relay = Relay(filters=(loaded(upper),))
    relay.send(method.encode() + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    _, answer = proxied(relay, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert field(answer, "Content-Length") == [b"2"]
    assert upper.calls == []


def test_a_websocket_upgrade_runs_the_response_filters_then_becomes_a_tunnel() -> None:
    from tests.unit.test_http_tunnel import FRAME, SWITCH, UPGRADE

    relay = Relay(filters=(loaded(AddHeader(Options("ws", {})), "ws"),))
    relay.send(UPGRADE)
    upstream, ut = relay.accept_upstream()
    assert field(ut.value(), "X-Filtered") == [b"1"]
    upstream.dataReceived(SWITCH)
    head = relay.received()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert field(head, "X-Seen-By") == [b"ws"]
    ut.clear()
    relay.send(FRAME)
    assert ut.value() == FRAME  # spliced


def test_a_client_that_leaves_while_a_filter_waits_cancels_it_and_frees_the_exchange() -> None:
    waits = Waits(options())
    relay = Relay(filters=(loaded(waits),))
    relay.send(GET)
    from twisted.internet import error
    from twisted.python.failure import Failure

    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert waits.waiting[0].called  # cancelled (its errback swallowed by the chain)
    record = relay.log.records[-1]
    assert record["status"] == 499 and record["error"] == "client closed the connection"
    assert relay.pending_connects() == []


def test_a_response_filter_waiting_holds_the_upstream_until_it_fires() -> None:
    class Later(Filter):
        def __init__(self, options: Options) -> None:
            super().__init__(options)
            self.waiting: list[defer.Deferred[None]] = []

        def response_head(self, exchange: Exchange) -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting.append(d)
            return d

    later = Later(options())
    relay = Relay(filters=(loaded(later),))
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert relay.received() == b"" and ut.producerState == "paused"
    later.waiting[0].callback(None)
    assert relay.received().endswith(b"\r\n\r\nab")
    upstream.dataReceived(b"cd")
    assert relay.received() == b"cd"
    assert relay.log.records[-1]["status"] == 200
