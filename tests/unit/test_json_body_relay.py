"""A [route]'s JSON body transformations through the relay (docs/gateway.md, "JSON bodies"):
`request_json` on the body sent upstream and `response_json` on the body sent back, each read
whole up to `max_json_body` and sent with its new Content-Length; bodies not labelled JSON
streamed untouched; the policy for bodies too large (413 / 502), not JSON (passed) and
documents the operations cannot go through (400 / 502)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxyd.config.model import HeaderRule, ProxyAction, RouteConfig, RouteMatch
from proxyd.filters import Exchange, Filter, Options
from proxyd.gateway.json_ops import parse_json_ops
from proxyd.gateway.query_ops import parse_query_ops
from tests.unit.test_filters import loaded, options
from tests.unit.test_http_relay import Relay, field, request_lines


def json_route(request: str = "", response: str = "", max_json_body: int = 1 << 20) -> Relay:
    action = ProxyAction(
        "web",
        request_json_ops=parse_json_ops(request.splitlines()),
        response_json_ops=parse_json_ops(response.splitlines()),
        max_json_body=max_json_body,
    )
    return Relay(routes=(RouteConfig("api", RouteMatch(path="/"), action),))


def post(body: bytes, content_type: bytes = b"application/json", method: bytes = b"POST") -> bytes:
    return (
        method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Type: " + content_type + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def reply(body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def sent_body(relay: Relay, request: bytes) -> bytes:
    """The request as the server got it."""
    relay.send(request)
    _, ut = relay.accept_upstream()
    return ut.value()


def answered(relay: Relay, response: bytes, request: bytes = b"") -> bytes:
    """What the client got for `request` (a GET by default) once the server answered."""
    relay.send(request or b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(response)
    return relay.received()


def body_of(message: bytes) -> Any:
    head, _, body = message.partition(b"\r\n\r\n")
    assert field(head, "Content-Length") == [b"%d" % len(body)]
    return json.loads(body)


USER = json.dumps(
    {"user": {"name": "ann", "password": "s3cret"}, "items": [1, 2]}, separators=(",", ":")
).encode()


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        (
            'set /meta/source "gateway"',
            {
                "user": {"name": "ann", "password": "s3cret"},
                "items": [1, 2],
                "meta": {"source": "gateway"},
            },
        ),
        ("set /items/- 3", {"user": {"name": "ann", "password": "s3cret"}, "items": [1, 2, 3]}),
        ("remove /user/password", {"user": {"name": "ann"}, "items": [1, 2]}),
        (
            "rename /user/name /user/login",
            {"user": {"password": "s3cret", "login": "ann"}, "items": [1, 2]},
        ),
        ("wrap data", {"data": {"user": {"name": "ann", "password": "s3cret"}, "items": [1, 2]}}),
        ("unwrap /user", {"name": "ann", "password": "s3cret"}),
    ],
)
def test_each_operation_reaches_the_server_with_the_new_content_length(
    ops: str, expected: dict[str, Any]
) -> None:
    sent = sent_body(json_route(request=ops), post(USER))
    assert request_lines(sent)[0] == b"POST /x HTTP/1.1"
    assert body_of(sent) == expected


def test_each_operation_reaches_the_client_with_the_new_content_length() -> None:
    relay = json_route(response="unwrap /result\nrename /id /key\nremove /secret\nwrap data")
    body = b'{"result": {"id": 7, "secret": "x", "v": [true, null]}, "ok": true}'
    answer = answered(relay, reply(body))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert field(answer, "Transfer-Encoding") == []
    assert body_of(answer) == {"data": {"v": [True, None], "key": 7}}
    [record] = relay.log.records
    assert (record["status"], record["bytes_out"]) == (200, len(answer.partition(b"\r\n\r\n")[2]))


def test_a_chunked_json_request_is_sent_whole_with_a_content_length() -> None:
    relay = json_route(request="remove /a")
    relay.send(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n'
    )
    assert relay.pending_connects() == []  # not until the body is whole
    relay.send(b'8\r\n1,"b":2}\r\n0\r\n\r\n')
    _, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "Transfer-Encoding") == []
    assert body_of(sent) == {"b": 2}


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"Application/JSON; charset=utf-8",
        b"application/problem+json",
        b"application/vnd.api+json ; ext=x",
    ],
)
def test_json_is_told_by_its_content_type_in_any_case_with_parameters(content_type: bytes) -> None:
    sent = sent_body(json_route(request="set /x 1"), post(b"{}", content_type))
    assert body_of(sent) == {"x": 1}


@pytest.mark.parametrize(
    "content_type",
    [b"text/plain", b"application/jsonp", b"application/x-www-form-urlencoded", b"text/json5"],
)
def test_a_body_not_labelled_json_streams_untouched_with_its_length(content_type: bytes) -> None:
    relay = json_route(request="set /x 1", max_json_body=4)
    relay.send(post(b"{}", content_type)[:-2])  # the head, its body to come
    _, ut = relay.accept_upstream()  # a server at once: nothing is held
    relay.send(b"{}")
    sent = ut.value()
    assert field(sent, "Content-Length") == [b"2"]
    assert sent.endswith(b"\r\n\r\n{}")


def test_a_response_not_labelled_json_streams_untouched_piece_by_piece() -> None:
    relay = json_route(response="wrap data", max_json_body=4)
    relay.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 10\r\n\r\n<p>"
    )
    answer = relay.received()
    assert field(answer, "Content-Length") == [b"10"]
    assert answer.endswith(b"\r\n\r\n<p>")
    upstream.dataReceived(b"hello</")
    assert relay.received() == b"hello</"


def test_a_compressed_json_response_is_not_touched() -> None:
    body = b"\x1f\x8b not really gzip"
    answer = answered(
        json_route(response="wrap data"), reply(body, extra=b"Content-Encoding: gzip\r\n")
    )
    assert field(answer, "Content-Length") == [b"%d" % len(body)]
    assert answer.endswith(body)


def test_a_body_labelled_json_that_is_not_json_passes_as_it_was() -> None:
    relay = json_route(request="set /x 1", response="wrap data")
    sent = sent_body(relay, post(b"{not json"))
    assert field(sent, "Content-Length") == [b"9"] and sent.endswith(b"\r\n\r\n{not json")
    relay2 = json_route(response="wrap data")
    answer = answered(relay2, reply(b"NaN"))
    assert answer.endswith(b"\r\n\r\nNaN") and field(answer, "Content-Length") == [b"3"]


def test_operations_that_change_nothing_send_the_body_byte_for_byte() -> None:
    body = b'{ "kept" : 1.50 }'
    sent = sent_body(json_route(request="remove /absent"), post(body))
    assert field(sent, "Content-Length") == [b"%d" % len(body)] and sent.endswith(body)


def test_a_json_request_over_the_bound_by_its_length_is_refused_413_before_any_server() -> None:
    relay = json_route(request="remove /a", max_json_body=8)
    relay.send(post(b'{"a":1,"b":2}')[:-13])  # the head only: refused before the body
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert field(answer, "Connection") == [b"close"]
    assert relay.pending_connects() == []
    [record] = relay.log.records
    assert record["error"] == "a JSON body of 13 bytes, over max_json_body (8)"


def test_a_chunked_json_request_over_the_bound_is_refused_413_as_it_streams() -> None:
    relay = json_route(request="remove /a", max_json_body=8)
    relay.send(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n5\r\n1,"b"\r\n'
    )
    assert relay.received().startswith(b"HTTP/1.1 413 ")
    assert relay.pending_connects() == []
    [record] = relay.log.records
    assert record["error"] == "filter json_body: body over 8 bytes"


def test_a_json_request_at_the_bound_is_transformed() -> None:
    sent = sent_body(json_route(request="wrap d", max_json_body=7), post(b'{"a":1}'))
    assert body_of(sent) == {"d": {"a": 1}}


def test_a_json_response_over_the_bound_is_answered_502() -> None:
    relay = json_route(response="wrap data", max_json_body=8)
    answer = answered(relay, reply(b'{"a":1,"b":2}'))
    assert answer.startswith(b"HTTP/1.1 502 ")
    [record] = relay.log.records
    assert (record["status"], record["error"]) == (502, "filter json_body: body over 8 bytes")


def test_a_request_the_operations_cannot_apply_to_is_answered_400_before_any_server() -> None:
    relay = json_route(request="set /user/name 1")
    relay.send(post(b'{"user": "ann"}'))
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert field(answer, "Connection") == []  # the body was read: the connection goes on
    assert relay.pending_connects() == []
    [record] = relay.log.records
    assert record["error"] == (
        "request_json: cannot set /user/name: /user is a string, not an object or array"
    )


def test_a_response_the_operations_cannot_apply_to_is_answered_502() -> None:
    relay = json_route(response="set /items/5 0")
    answer = answered(relay, reply(b'{"items": [1]}'))
    assert answer.startswith(b"HTTP/1.1 502 ")
    [record] = relay.log.records
    assert record["error"].startswith("response_json: cannot set /items/5: /items is an array")


@pytest.mark.parametrize(
    ("request_line", "response"),
    [
        (
            b"HEAD /x HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n",
        ),
        (b"GET /x HTTP/1.1", b"HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n\r\n"),
        (
            b"GET /x HTTP/1.1",
            b"HTTP/1.1 304 Not Modified\r\nContent-Type: application/json\r\n\r\n",
        ),
    ],
)
def test_responses_without_a_body_are_untouched(request_line: bytes, response: bytes) -> None:
    relay = json_route(response="wrap data")
    answer = answered(relay, response, request_line + b"\r\nHost: a\r\n\r\n")
    assert answer.endswith(b"\r\n\r\n")
    assert field(answer, "Content-Length") == field(response, "Content-Length")


def test_a_get_without_a_body_is_proxied_at_once() -> None:
    relay = json_route(request="set /x 1")
    relay.send(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\r\n")
    _, ut = relay.accept_upstream()
    assert field(ut.value(), "Content-Length") == []


class Seen(Filter):
    """Records the bodies it is given, whole."""

    buffer_request_body = 100
    buffer_response_body = 100

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.bodies: list[bytes] = []

    def request_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        self.bodies.append(data)
        return data

    def response_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        self.bodies.append(data)
        return data


def test_the_row_is_after_transform_so_the_routes_filters_see_the_clients_body() -> None:
    seen = Seen(options())
    action = ProxyAction(
        "web",
        query_ops=parse_query_ops(["remove k"]),
        max_in_flight=1,
        request_json_ops=parse_json_ops(["wrap in"]),
        response_json_ops=parse_json_ops(["wrap out"]),
    )
    route = RouteConfig(
        "api",
        RouteMatch(path="/"),
        action,
        response_headers=(HeaderRule("set", "X-R", "1"),),
        filters=(loaded(seen),),
    )
    relay = Relay(routes=(route,))
    assert relay.factory.chains["api"].names[-7:] == (
        "f",
        "concurrency",
        "transform",
        "json_body",
        "json_body",
        "forwarding",
        "header_rules",
    )
    relay.send(post(b"1"))
    upstream, ut = relay.accept_upstream()
    assert body_of(ut.value()) == {"in": 1}
    upstream.dataReceived(reply(b"2"))
    assert body_of(relay.received()) == {"out": 2}
    assert seen.bodies == [b"1", b'{"out":2}']  # the client's request, the client's response
