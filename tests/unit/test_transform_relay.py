"""A [route]'s request transformations through the relay (docs/gateway.md,
"Transformations"): `query_params` on the query sent upstream, `upstream_method` on the
method, while the client's answer, the access log and the filters above follow the client's
request."""

from __future__ import annotations

from typing import Any

from proxyd.config.model import ProxyAction, RouteConfig, RouteMatch
from proxyd.gateway.query_ops import parse_query_ops
from tests.unit.test_http_relay import OK, Relay, field, request_lines

BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


def transformed(*, query: str = "", method: str | None = None, **relay: Any) -> Relay:
    action = ProxyAction(
        "web",
        strip_prefix=True,
        query_ops=parse_query_ops(query.splitlines()),
        upstream_method=method,
    )
    route = RouteConfig("gw", RouteMatch(path="/v1/"), action)
    return Relay(routes=(route,), **relay)


def test_query_operations_reach_upstream_and_the_log_keeps_the_clients_query() -> None:
    relay = transformed(query="append tag gw\nrename q search\nremove api_key\nadd page 1")
    relay.send(b"GET /v1/x?api_key=k&q=a%20b&tag=t HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"GET /x?search=a%20b&tag=t&page=1&tag=gw HTTP/1.1"
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"\r\n\r\nhi")
    [record] = relay.log.records
    assert record["uri"] == "/v1/x?api_key=k&q=a%20b&tag=t"


def test_a_query_emptied_by_the_operations_sends_no_question_mark() -> None:
    relay = transformed(query="remove api_key")
    relay.send(b"GET /v1/x?api_key=k HTTP/1.1\r\nHost: a\r\n\r\n")
    _, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"GET /x HTTP/1.1"


def test_a_query_the_operations_leave_alone_is_sent_as_received() -> None:
    relay = transformed(query="remove api_key")
    relay.send(b"GET /v1/x?b=%41&a HTTP/1.1\r\nHost: a\r\n\r\n")
    _, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"GET /x?b=%41&a HTTP/1.1"


def test_get_is_sent_as_post_with_an_empty_body_and_logged_as_get() -> None:
    relay = transformed(method="POST")
    relay.send(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert request_lines(sent)[0] == b"POST /x HTTP/1.1"
    assert field(sent, "Content-Length") == [b"0"]
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"\r\n\r\nhi")
    [record] = relay.log.records
    assert (record["method"], record["status"]) == ("GET", 200)


def test_a_request_body_goes_with_the_new_method() -> None:
    relay = transformed(method="PUT")
    relay.send(b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    _, ut = relay.accept_upstream()
    sent = ut.value()
    assert request_lines(sent)[0] == b"PUT /x HTTP/1.1"
    assert field(sent, "Content-Length") == [b"3"]
    assert sent.endswith(b"\r\n\r\nabc")


def test_head_keeps_its_method_and_its_answer_has_no_body() -> None:
    relay = transformed(method="POST")
    relay.send(b"HEAD /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"HEAD /x HTTP/1.1"
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n")
    assert field(answer, "Content-Length") == [b"2"]


def test_a_get_sent_as_post_is_not_retried_on_another_server() -> None:
    relay = transformed(method="POST", servers=2)
    relay.send(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(BUSY)
    assert relay.received().startswith(b"HTTP/1.1 503")
    assert relay.pending_connects() == []


def test_a_post_sent_as_get_may_be_retried() -> None:
    relay = transformed(method="GET", servers=2)
    relay.send(b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(BUSY)
    second, st = relay.accept_upstream()
    assert request_lines(st.value())[0] == b"GET /x HTTP/1.1"
    second.dataReceived(OK)
    assert relay.received().startswith(b"HTTP/1.1 200")
