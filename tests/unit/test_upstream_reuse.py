"""Which upstream connections go back to the keep-alive pool (design principle 12: reuse only
the clean): a server that sends more than its response declares must never answer the next
request, whoever sends it."""

from __future__ import annotations

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from proxyd.relay.http.forward import MAX_INTERIM_RESPONSES

from .test_http_relay import GET, OK, Relay, field, request_lines

INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"

# A response to GET /a followed by bytes nobody asked for.
OVERRUNS = {
    "content-length overrun": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + INJECTED,
    "overrun with garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiGARBAGE",
    "204 with a body": b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED,
    "304 with a body": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\nINJECTED",
    "1xx after the final response": OK + b"HTTP/1.1 100 Continue\r\n\r\n",
    "a partial head after the response": OK + b"HTTP/1.1 200",
}


@pytest.mark.parametrize("answer", OVERRUNS.values(), ids=OVERRUNS.keys())
def test_upstream_sending_more_than_its_response_is_closed_not_pooled(answer: bytes) -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(answer)
    first = relay.received()
    assert b"INJECTED" not in first
    assert ut.disconnecting  # closed, not checked in
    # Another client's request: a new upstream connection, and its own answer only.
    victim, vt = relay.connect_client("10.0.0.8")
    relay.send(GET.replace(b"/a?x=1", b"/victim"), victim)
    assert relay.pending_connects() == [("127.0.0.1", 9001)]
    fresh, ft = relay.accept_upstream()
    assert request_lines(ft.value())[0] == b"GET /victim HTTP/1.1"
    assert vt.value() == b""  # nothing until its own server answers
    fresh.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nvictim")
    assert vt.value().endswith(b"\r\n\r\nvictim")
    assert b"INJECTED" not in vt.value()


@pytest.mark.parametrize("answer", OVERRUNS.values(), ids=OVERRUNS.keys())
def test_overrun_never_reaches_the_next_request_of_the_same_client(answer: bytes) -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ut = relay.accept_upstream()
    upstream.dataReceived(answer)
    relay.received()
    relay.send(GET.replace(b"/a?x=1", b"/second"))
    fresh, _ = relay.accept_upstream()  # a new connection was asked for
    assert relay.received() == b""
    fresh.dataReceived(OK.replace(b"hi", b"ok"))
    assert relay.received().endswith(b"\r\n\r\nok")
    assert upstream.requests == 1


def test_a_response_that_ends_exactly_at_the_bytes_received_is_reused() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(OK[:10])
    upstream.dataReceived(OK[10:] + b"\r\n")  # a stray CRLF between messages is harmless
    relay.received()
    assert not ut.disconnecting
    relay.send(GET)
    assert relay.pending_connects() == []
    assert upstream.requests == 2


def test_bytes_arriving_on_an_idle_pooled_connection_close_it() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.received()
    assert not ut.disconnecting  # pooled
    upstream.dataReceived(INJECTED)  # out of turn, while idle
    assert ut.disconnecting
    upstream.connectionLost(Failure(error.ConnectionAborted()))
    victim, vt = relay.connect_client("10.0.0.8")
    relay.send(GET, victim)
    fresh, _ = relay.accept_upstream()
    fresh.dataReceived(OK.replace(b"hi", b"ok"))
    assert vt.value().endswith(b"ok")
    assert b"INJECTED" not in vt.value()


def test_interim_responses_are_passed_on_and_the_connection_stays_clean() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert answer.endswith(b"hi")
    assert not ut.disconnecting
    relay.send(GET)
    assert relay.pending_connects() == []


def test_an_interim_response_storm_is_a_bad_response() -> None:
    relay = Relay(retries=0)
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 102 Processing\r\n\r\n" * (MAX_INTERIM_RESPONSES + 50))
    answer = relay.received()
    assert answer.count(b"HTTP/1.1 102") == MAX_INTERIM_RESPONSES
    final = answer.split(b"HTTP/1.1 102 Processing\r\n\r\n")[-1]
    assert final.startswith(b"HTTP/1.1 502 ")
    assert ut.disconnecting
    assert relay.pool.servers[0].consecutive_failures == 1  # the server's doing
    [record] = relay.log.records
    assert "interim" in record["error"]


def test_interim_responses_restart_the_response_timeout_but_do_not_cancel_it() -> None:
    relay = Relay(retries=0, response_timeout=10.0)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    relay.reactor.advance(9)
    upstream.dataReceived(b"HTTP/1.1 102 Processing\r\n\r\n")
    relay.reactor.advance(9)
    assert relay.received() == b"HTTP/1.1 102 Processing\r\n\r\n"
    relay.reactor.advance(1.5)
    assert relay.received().startswith(b"HTTP/1.1 504 ")


def test_a_response_before_the_request_body_ends_closes_the_upstream_connection() -> None:
    relay = Relay()
    relay.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert field(answer, "Connection") == [b"close"]
    assert ut.disconnecting  # the rest of the body would be read as a next request
    victim, _ = relay.connect_client("10.0.0.8")
    relay.send(GET, victim)
    assert relay.pending_connects() == [("127.0.0.1", 9001)]
