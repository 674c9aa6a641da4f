"""Bodies a filter gets whole, and filters that sit out a body, through the relay on
StringTransports (docs/filters.md, "Bodies"): a buffered request is read before any server is
tried and sent with its new Content-Length; a buffered response's head waits for its body and
gets its length, and proxyd answers 502 in its place when the body is too long, refused, or
cut; takes_request_body / takes_response_body leave a filter out of one exchange's body."""

from __future__ import annotations

from twisted.internet import defer

from proxyd.filters import Exchange, Filter, Options, Reject, Rejected
from tests.unit.test_filters import loaded, options
from tests.unit.test_http_relay import Relay, field

POST = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabcdef"
CHUNKED_POST = (
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
)


class Reverse(Filter):
    """Gets bodies whole (up to 8 bytes); reverses those whose path is not /pass; refuses
    "refuse"."""

    buffer_request_body = 8
    buffer_response_body = 8

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.calls: list[tuple[bytes, bool]] = []

    def takes_request_body(self, exchange: Exchange) -> bool:
        return exchange.path != "/pass"

    def takes_response_body(self, exchange: Exchange) -> bool:
        return exchange.path != "/pass"

    def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        self.calls.append((data, end))
        return data[::-1]

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        self.calls.append((data, end))
        if data == b"refuse":
            raise Rejected(Reject(502, "refused by the filter"))
        return data[::-1] + b"!"


def relay_with(instance: Filter, **config: object) -> Relay:
    return Relay(filters=(loaded(instance),), **config)


def test_a_chunked_request_body_read_whole_is_sent_with_a_content_length() -> None:
    reverse = Reverse(options())
    relay = relay_with(reverse)
    relay.send(CHUNKED_POST)
    _, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "Content-Length") == [b"6"]
    assert field(sent, "Transfer-Encoding") == []
    assert sent.endswith(b"\r\n\r\nfedcba")
    assert reverse.calls == [(b"abcdef", True)]


def test_a_client_expecting_100_continue_gets_it_before_its_body_is_read() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert relay.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    relay.send(b"abc")
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "Expect") == []  # the body comes with the head
    upstream.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert relay.received().startswith(b"HTTP/1.1 204 ")


def test_a_request_read_whole_is_sent_again_to_the_next_server() -> None:
    relay = relay_with(Reverse(options()), servers=2)
    relay.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    first, _ = relay.accept_upstream()
    first.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    _, second = relay.accept_upstream()
    assert second.value().endswith(b"Content-Length: 3\r\n\r\ncba")


def test_a_client_that_leaves_while_its_body_is_read_ends_the_exchange() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    relay.client.connectionLost()
    assert relay.pending_connects() == []
    [record] = relay.log.records
    assert record["status"] == 499


def test_a_request_body_that_stops_coming_is_answered_408_without_a_server() -> None:
    relay = relay_with(Reverse(options()), body_timeout=5.0)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    relay.reactor.advance(5.1)
    assert relay.received().startswith(b"HTTP/1.1 408 ")
    assert relay.pending_connects() == []


def test_a_response_read_whole_gets_its_new_content_length() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(POST)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n")
    assert relay.received() == b""  # the head waits for the body
    upstream.dataReceived(b"2\r\nuv\r\n0\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert field(answer, "Content-Length") == [b"6"]
    assert field(answer, "Transfer-Encoding") == []
    assert answer.endswith(b"\r\n\r\nvuzyx!")
    [record] = relay.log.records
    assert (record["status"], record["bytes_out"]) == (200, 6)


def test_an_http10_client_keeps_its_connection_with_a_response_read_whole() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    answer = relay.received()
    assert field(answer, "Content-Length") == [b"3"]
    assert field(answer, "Connection") == [b"keep-alive"]
    assert answer.endswith(b"ih!")


def test_a_response_over_the_bound_is_answered_502_and_the_connection_kept() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(POST)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert field(answer, "Connection") == []
    [record] = relay.log.records
    assert record["error"] == "filter f: body over 8 bytes"
    relay.send(b"GET /pass HTTP/1.1\r\nHost: a\r\n\r\n")  # the next request is served
    _, ut = relay.accept_upstream()  # on a new connection: the first was left unread
    assert ut.value().startswith(b"GET /pass HTTP/1.1\r\n")


def test_a_response_the_filter_refuses_gets_its_reject_in_place() -> None:
    relay = relay_with(Reverse(options()))
    relay.send(POST)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nrefuse")
    assert relay.received().startswith(b"HTTP/1.1 502 ")
    [record] = relay.log.records
    assert record["error"] == "refused by the filter"


def test_a_response_cut_while_read_whole_is_answered_502_and_not_retried() -> None:
    relay = relay_with(Reverse(options()), servers=2)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    upstream.connectionLost()
    assert relay.received().startswith(b"HTTP/1.1 502 ")
    assert relay.pending_connects() == []


def test_a_response_that_goes_idle_while_read_whole_is_answered_504() -> None:
    relay = relay_with(Reverse(options()), idle_timeout=5.0)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    relay.reactor.advance(5.1)
    assert relay.received().startswith(b"HTTP/1.1 504 ")


def test_a_filter_that_takes_no_part_leaves_the_bodies_streaming_and_their_length() -> None:
    reverse = Reverse(options())
    relay = relay_with(reverse)
    relay.send(b"POST /pass HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    upstream, ut = relay.accept_upstream()  # a server at once: nothing is held
    relay.send(b"def")
    sent = ut.value()
    assert field(sent, "Content-Length") == [b"6"]
    assert sent.endswith(b"\r\n\r\nabcdef")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n123456")
    answer = relay.received()
    assert field(answer, "Content-Length") == [b"12"]  # over the bound: not this filter's
    upstream.dataReceived(b"789012")
    assert relay.received() == b"789012"
    assert reverse.calls == []


def test_a_takes_method_that_raises_fails_its_request() -> None:
    class Broken(Filter):
        def takes_request_body(self, exchange: Exchange) -> bool:
            raise RuntimeError("no")

        def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
            return data

    relay = relay_with(Broken(options()))
    relay.send(POST)
    assert relay.received().startswith(b"HTTP/1.1 500 ")
    assert relay.pending_connects() == []


def test_a_buffered_request_body_filter_may_wait_on_a_deferred() -> None:
    class Later(Filter):
        buffer_request_body = 100

        def __init__(self, options: Options) -> None:
            super().__init__(options)
            self.waiting: list[defer.Deferred[bytes]] = []

        def request_body(self, exchange: Exchange, data: bytes, end: bool) -> object:
            d: defer.Deferred[bytes] = defer.Deferred()
            self.waiting.append(d)
            return d

    later = Later(options())
    relay = relay_with(later)
    relay.send(POST)
    assert relay.pending_connects() == []
    later.waiting[0].callback(b"checked")
    _, ut = relay.accept_upstream()
    assert ut.value().endswith(b"Content-Length: 7\r\n\r\nchecked")
