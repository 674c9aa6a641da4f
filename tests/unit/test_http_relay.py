"""The HTTP relay's client and upstream sides on a MemoryReactorClock, with StringTransports
standing for both sockets: every step, timeout and retry under the test's control."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.accesslog import AccessLog
from proxyd.config.model import (
    Address,
    HeaderRule,
    HttpListenerConfig,
    PoolConfig,
    ProxyAction,
    RedirectAction,
    RespondAction,
    RouteConfig,
    RouteMatch,
    ServerConfig,
)
from proxyd.pool import Pool
from proxyd.relay.http.listener import HttpRelayFactory
from proxyd.relay.http.outcome import seconds_json as _seconds_json
from proxyd.relay.http.server import ClientConnection
from proxyd.relay.http.upstream import ConnectionPool, UpstreamConnection

GET = b"GET /a?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


class _Log:
    """The access log's stream, keeping the record of each line the relay writes (AccessLog
    may be compiled: a test cannot subclass it)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, line: str) -> int:
        self.records.append(json.loads(line))
        return len(line)

    def flush(self) -> None:
        pass


def route(path: str = "/", action: Any = None, **match: Any) -> RouteConfig:
    return RouteConfig(
        name=f"*{path}",
        match=RouteMatch(path=path, **match),
        action=action or ProxyAction(pool="web"),
    )


class Relay:
    """A listener with pool `web` of `servers` servers (one by default), one client
    connection, and the upstream connections it asks for."""

    def __init__(self, routes: tuple[RouteConfig, ...] = (), **config: Any) -> None:
        pool_keys = {k: config.pop(k) for k in ("keepalive", "sticky_cookie") if k in config}
        if "pool_keepalive_timeout" in config:
            pool_keys["keepalive_timeout"] = config.pop("pool_keepalive_timeout")
        servers = config.pop("servers", 1)
        error_pages = config.pop("error_pages", {})
        websocket_only = config.pop("websocket_only", None)
        resources = config.pop("resources", None)
        self.reactor = MemoryReactorClock()
        self.pool_config = PoolConfig(
            name="web",
            servers=tuple(ServerConfig(Address("127.0.0.1", 9001 + i)) for i in range(servers)),
            **pool_keys,
        )
        self.pool = Pool(self.pool_config, self.reactor)
        self.upstreams = ConnectionPool(self.reactor, self.pool_config)
        self.log = _Log()
        self.config = HttpListenerConfig(
            name="front",
            listen="tcp:0",
            routes=routes or (route(),),
            **config,
        )
        self.factory = HttpRelayFactory(
            self.reactor,
            self.config,
            {"web": self.pool},
            {"web": self.upstreams},
            AccessLog(self.log, "test"),
            error_pages,
            websocket_only,
            resources=resources,
        )
        self.client, self.ct = self.connect_client()
        self.used = 0

    def connect_client(self, ip: str = "10.0.0.7") -> tuple[ClientConnection, StringTransport]:
        client = self.factory.buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", ip, 40000),
        )
        client.makeConnection(transport)
        return client, transport

    def send(self, data: bytes, client: ClientConnection | None = None) -> None:
        (client or self.client).dataReceived(data)

    def received(self) -> bytes:
        data = self.ct.value()
        self.ct.clear()
        return data

    def pending_connects(self) -> list[tuple[str, int]]:
        return [(c[0], c[1]) for c in self.reactor.tcpClients[self.used :]]

    def accept_upstream(self) -> tuple[UpstreamConnection, StringTransport]:
        """Complete the oldest connect the relay asked for."""
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.used]
        self.used += 1
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse_upstream(self, reason: Exception | None = None) -> None:
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[self.used]
        self.used += 1
        factory.clientConnectionFailed(None, Failure(reason or error.ConnectionRefusedError()))


def request_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n")[0].split(b"\r\n")


def field(data: bytes, name: str) -> list[bytes]:
    pattern = re.compile(rb"^" + name.encode() + rb": (.*)$", re.I | re.M)
    head = data.split(b"\r\n\r\n")[0]
    return [m.group(1).rstrip(b"\r") for m in pattern.finditer(head)]


def test_get_is_proxied_with_forwarding_fields_and_logged() -> None:
    relay = Relay()
    relay.send(GET)
    assert relay.pending_connects() == [("127.0.0.1", 9001)]
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert request_lines(sent)[0] == b"GET /a?x=1 HTTP/1.1"
    assert field(sent, "Host") == [b"example.test"]
    assert field(sent, "X-Forwarded-For") == [b"10.0.0.7"]
    assert field(sent, "Via") == [b"1.1 proxyd"]
    assert len(field(sent, "X-Request-ID")[0]) == 32
    upstream.dataReceived(OK)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nhi")
    [record] = relay.log.records
    assert record["status"] == 200
    assert record["upstream"] == "127.0.0.1:9001"
    assert record["method"] == "GET" and record["uri"] == "/a?x=1"
    assert record["bytes_out"] == 2
    assert record["route"] == "*/"


def test_listener_header_rules_apply_before_the_routes_both_ways() -> None:
    routed = RouteConfig(
        name="ruled",
        match=RouteMatch(path="/"),
        action=ProxyAction(pool="web"),
        request_headers=(HeaderRule("set", "X-Order", "route"), HeaderRule("add", "X-R", "r")),
        response_headers=(HeaderRule("set", "X-Order", "route"),),
    )
    relay = Relay(
        routes=(routed,),
        request_headers=(HeaderRule("set", "X-Order", "listener"), HeaderRule("add", "X-L", "l")),
        response_headers=(HeaderRule("add", "X-L", "{route}"),),
    )
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "X-Order") == [b"route"]
    assert (field(sent, "X-L"), field(sent, "X-R")) == ([b"l"], [b"r"])
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nX-Order: upstream\r\nContent-Length: 0\r\n\r\n")
    answer = relay.received()
    assert field(answer, "X-Order") == [b"route"]
    assert field(answer, "X-L") == [b"ruled"]


def test_hop_by_hop_fields_are_removed_both_ways() -> None:
    relay = Relay()
    relay.send(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\n\r\n"
    )
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    for name in ("Connection", "X-Secret", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert field(sent, name) == [], name
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: x\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    answer = relay.received()
    assert field(answer, "X-Internal") == []
    assert field(answer, "Keep-Alive") == []


def test_upstream_connection_is_reused_for_the_next_request() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.received()
    ut.clear()
    relay.send(GET)
    assert relay.pending_connects() == []
    assert request_lines(ut.value())[0] == b"GET /a?x=1 HTTP/1.1"
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"hi")
    assert upstream.requests == 2


def test_keepalive_zero_closes_upstream_after_each_response() -> None:
    relay = Relay(keepalive=0)
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert ut.disconnecting


def _concurrent_exchanges(relay: Relay, count: int) -> list[StringTransport]:
    """`count` clients' requests in flight at once, then answered: the upstream transports."""
    for index in range(count):
        client, _ = relay.connect_client(f"10.0.1.{index}")
        relay.send(GET, client)
    upstreams = [relay.accept_upstream() for _ in range(count)]
    for upstream, _ in upstreams:
        upstream.dataReceived(OK)
    return [transport for _, transport in upstreams]


def test_by_default_every_idle_upstream_connection_is_kept() -> None:
    transports = _concurrent_exchanges(Relay(), 100)
    assert not any(transport.disconnecting for transport in transports)


def test_keepalive_bounds_the_idle_upstream_connections_kept() -> None:
    transports = _concurrent_exchanges(Relay(keepalive=3), 5)
    assert [transport.disconnecting for transport in transports] == [False] * 3 + [True] * 2


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    relay = Relay()
    relay.send(GET + GET.replace(b"/a?x=1", b"/b"))
    upstream, ut = relay.accept_upstream()
    assert ut.value().count(b"GET ") == 1
    assert relay.ct.producerState == "paused"  # the second request waits, reading stops
    ut.clear()
    upstream.dataReceived(OK)
    assert request_lines(ut.value())[0] == b"GET /b HTTP/1.1"
    upstream.dataReceived(OK.replace(b"hi", b"yo"))
    answer = relay.received()
    assert answer.index(b"hi") < answer.index(b"yo")
    assert relay.ct.producerState == "producing"


def test_connection_close_request_closes_after_response() -> None:
    relay = Relay()
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert field(relay.ct.value(), "Connection") == [b"close"]
    assert relay.ct.disconnecting


def test_http10_client_gets_close_delimited_body_and_close() -> None:
    relay = Relay()
    relay.send(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert field(answer, "Transfer-Encoding") == []
    assert answer.endswith(b"\r\n\r\nhi")
    assert relay.ct.disconnecting


def test_close_delimited_upstream_body_is_chunked_for_http11_client() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello")
    upstream.connectionLost(Failure(error.ConnectionDone()))
    answer = relay.received()
    assert field(answer, "Transfer-Encoding") == [b"chunked"]
    assert answer.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    assert not relay.ct.disconnecting  # the client keeps its connection


def test_chunked_upload_streams_to_upstream_as_it_arrives() -> None:
    relay = Relay()
    relay.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    _upstream, ut = relay.accept_upstream()
    assert field(ut.value(), "Transfer-Encoding") == [b"chunked"]
    ut.clear()
    relay.send(b"3\r\nabc\r\n")
    assert ut.value() == b"3\r\nabc\r\n"
    ut.clear()
    relay.send(b"0\r\n\r\n")
    assert ut.value() == b"0\r\n\r\n"


def test_content_length_upload_is_passed_through() -> None:
    relay = Relay()
    relay.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    upstream, ut = relay.accept_upstream()
    assert field(ut.value(), "Content-Length") == [b"6"]
    assert ut.value().endswith(b"\r\n\r\nabc")
    relay.send(b"def")
    assert ut.value().endswith(b"abcdef")
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"hi")


def test_expect_continue_is_answered_once_upstream_is_connected() -> None:
    relay = Relay()
    relay.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert relay.ct.value() == b""
    upstream, ut = relay.accept_upstream()
    assert relay.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert field(ut.value(), "Expect") == []
    relay.send(b"abc")
    upstream.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_upstream_write_buffer_full_pauses_client_reading() -> None:
    relay = Relay()
    relay.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.pauseProducing()  # its transport's buffer is full
    assert relay.ct.producerState == "paused"
    upstream.resumeProducing()
    assert relay.ct.producerState == "producing"


def test_client_write_buffer_full_pauses_upstream_reading() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    relay.client.pauseProducing()
    assert ut.producerState == "paused"
    relay.client.resumeProducing()
    assert ut.producerState == "producing"


def test_connect_failure_moves_to_the_next_server() -> None:
    relay = Relay(servers=2)
    relay.send(GET)
    relay.refuse_upstream()
    assert relay.pending_connects() == [("127.0.0.1", 9002)]
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert relay.received().startswith(b"HTTP/1.1 200")
    assert relay.log.records[0]["attempts"] == 2


def test_all_connects_failing_is_502() -> None:
    relay = Relay(servers=2, retries=1)
    relay.send(GET)
    relay.refuse_upstream()
    relay.refuse_upstream()
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert relay.log.records[0]["status"] == 502


def test_connect_timeout_is_504() -> None:
    relay = Relay(retries=0)
    relay.send(GET)
    relay.refuse_upstream(error.TimeoutError())
    assert relay.received().startswith(b"HTTP/1.1 504")


def test_no_server_up_is_503() -> None:
    relay = Relay()
    for server in relay.pool.servers:
        relay.pool.set_health(server, False, "test")
    relay.send(GET)
    assert relay.received().startswith(b"HTTP/1.1 503")
    assert relay.pending_connects() == []


def test_response_timeout_is_504_for_post() -> None:
    relay = Relay(response_timeout=5.0)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    relay.accept_upstream()
    relay.reactor.advance(4.9)
    assert relay.ct.value() == b""
    relay.reactor.advance(0.2)
    assert relay.received().startswith(b"HTTP/1.1 504")
    assert relay.pending_connects() == []


def test_response_timeout_of_a_later_request_counts_from_that_request() -> None:
    relay = Relay(response_timeout=60.0)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    relay.reactor.advance(1)
    upstream.dataReceived(OK)
    relay.received()
    relay.reactor.advance(29)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    relay.reactor.advance(59.9)
    assert relay.ct.value() == b""
    relay.reactor.advance(0.2)
    assert relay.received().startswith(b"HTTP/1.1 504")


def test_response_timeout_retries_idempotent_request_elsewhere() -> None:
    relay = Relay(servers=2, response_timeout=5.0)
    relay.send(GET)
    _, first = relay.accept_upstream()
    relay.reactor.advance(5.1)
    assert first.disconnecting
    assert relay.pending_connects() == [("127.0.0.1", 9002)]


def test_503_from_upstream_is_retried_for_get_not_for_post() -> None:
    busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    relay = Relay(servers=2)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(busy)
    second, _ = relay.accept_upstream()
    second.dataReceived(OK)
    assert relay.received().startswith(b"HTTP/1.1 200")

    relay = Relay(servers=2)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(busy)
    assert relay.received().startswith(b"HTTP/1.1 503")
    assert relay.pending_connects() == []


def test_reused_connection_closed_before_response_is_retried_on_a_fresh_one() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.received()
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    upstream.connectionLost(Failure(error.ConnectionDone()))
    assert relay.pending_connects() == [("127.0.0.1", 9001)]
    fresh, ft = relay.accept_upstream()
    assert request_lines(ft.value())[0] == b"POST / HTTP/1.1"
    fresh.dataReceived(OK)
    assert relay.received().startswith(b"HTTP/1.1 200")


def test_upstream_dying_mid_response_cuts_the_client_and_is_not_retried() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.ct.disconnecting
    assert relay.pending_connects() == []
    assert relay.log.records[0]["error"].startswith("upstream")


def test_reset_before_response_retries_get_and_fails_post_with_502() -> None:
    relay = Relay(servers=2)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.received().startswith(b"HTTP/1.1 502")

    relay = Relay(servers=2)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.pending_connects() == [("127.0.0.1", 9002)]


def test_head_response_has_no_body_and_upstream_is_not_reused() -> None:
    relay = Relay()
    relay.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    answer = relay.received()
    assert field(answer, "Content-Length") == [b"100"]
    assert answer.endswith(b"\r\n\r\n")
    assert ut.disconnecting
    assert not relay.ct.disconnecting


def test_header_timeout_answers_408_and_closes() -> None:
    relay = Relay(header_timeout=10.0)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    relay.reactor.advance(10.1)
    assert relay.received().startswith(b"HTTP/1.1 408")
    assert relay.ct.disconnecting


def test_idle_keepalive_connection_is_closed_silently() -> None:
    relay = Relay(keepalive_timeout=30.0)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.received()
    relay.reactor.advance(29)
    assert not relay.ct.disconnecting
    relay.reactor.advance(2)
    assert relay.ct.disconnecting
    assert relay.ct.value() == b""


def test_access_log_lines_are_what_the_json_encoder_writes() -> None:
    relay = Relay()
    stream = io.StringIO()
    relay.factory.access_log = AccessLog(stream, "memory")
    relay.send(GET.replace(b"/a?x=1", b'/a?q="\\'))
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.send(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhalf")
    upstream.connectionLost(Failure(error.ConnectionDone()))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line == json.dumps(json.loads(line), separators=(",", ":"))
    first, second = map(json.loads, lines)
    assert first["uri"] == '/a?q="\\' and first["status"] == 200
    assert second["error"] == "upstream: upstream closed in the middle of a response"


def test_access_log_fields_come_in_order_with_the_connection_and_method_as_received() -> None:
    relay = Relay()
    stream = io.StringIO()
    relay.factory.access_log = AccessLog(stream, "memory")
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.send(b"PROPFIND /d HTTP/1.1\r\nHost: b\r\n\r\n")
    upstream.dataReceived(OK)
    first, second = map(json.loads, stream.getvalue().splitlines())
    assert list(first) == [
        "time",
        "listener",
        "client",
        "method",
        "uri",
        "status",
        "bytes_in",
        "bytes_out",
        "route",
        "upstream",
        "upstream_status",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_response_time",
        "request_time",
        "attempts",
        "request_id",
    ]
    assert first["listener"] == second["listener"] == "front"
    assert first["client"] == second["client"] == "10.0.0.7:40000"
    assert (first["method"], second["method"]) == ("GET", "PROPFIND")
    assert second["upstream_status"] == 200 and second["upstream_connect_time"] == 0.0


@given(st.one_of(st.none(), st.floats(min_value=-10.0, max_value=1e6, allow_nan=False)))
@example(0.0005)
@example(math.nextafter(0.0005, 0.0))
@example(0.0015)
@example(0.0025)
@example(-0.0)
@example(0.9995)
def test_durations_are_logged_as_the_encoder_writes_them_rounded(value: float | None) -> None:
    expected = None if value is None else round(max(value, 0.0), 3)
    assert _seconds_json(value) == json.dumps(expected)


def test_timeouts_count_from_the_last_request_without_a_delayed_call_per_request() -> None:
    relay = Relay(keepalive_timeout=30.0, header_timeout=10.0)
    scheduled: list[float] = []
    call_later = relay.reactor.callLater
    # Timers only: the access log's flush at the start of the next turn (a delay of 0) aside.
    relay.reactor.callLater = lambda delay, f, *a, **kw: (  # type: ignore[method-assign]
        (delay and scheduled.append(delay)) or call_later(delay, f, *a, **kw)
    )
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    for _ in range(3):
        relay.reactor.advance(10)
        del scheduled[:]
        relay.send(GET)
        upstream.dataReceived(OK)
        assert scheduled == [], "no delayed call per request"
    relay.received()
    relay.reactor.advance(29)
    assert not relay.ct.disconnecting
    relay.send(b"GET / HTTP/1.1\r\n")  # a head begins: the header timeout now
    relay.reactor.advance(9.9)
    assert not relay.ct.disconnecting
    relay.reactor.advance(0.2)
    assert relay.received().startswith(b"HTTP/1.1 408")
    assert relay.ct.disconnecting


def test_an_idle_upstream_connection_expires_keepalive_timeout_after_its_last_use() -> None:
    relay = Relay(pool_keepalive_timeout=30.0)
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    for _ in range(3):
        relay.reactor.advance(20)
        relay.send(GET)
        upstream.dataReceived(OK)
    assert relay.pending_connects() == [], "the same connection every time"
    relay.reactor.advance(29.9)
    assert not ut.disconnecting
    relay.reactor.advance(0.2)
    assert ut.disconnecting


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_are_refused_and_closed(request_bytes: bytes, status: int) -> None:
    relay = Relay()
    relay.send(request_bytes)
    assert relay.received().startswith(b"HTTP/1.1 %d" % status)
    assert relay.ct.disconnecting
    assert relay.pending_connects() == []


def test_body_over_limit_is_413() -> None:
    relay = Relay(max_body_size=10)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert relay.received().startswith(b"HTTP/1.1 413")


def test_routes_choose_by_specificity_and_answer_locally() -> None:
    relay = Relay(
        routes=(
            route("/", ProxyAction(pool="web")),
            route("/old/", RedirectAction(status=301, location="https://{host}/new{path}")),
            route("/health", RespondAction(status=200, body="ok")),
        )
    )
    relay.send(b"GET /old/x HTTP/1.1\r\nHost: ex.test\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 301")
    assert field(answer, "Location") == [b"https://ex.test/new/old/x"]
    relay.send(b"GET /health HTTP/1.1\r\nHost: ex.test\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nok")
    assert relay.pending_connects() == []


def test_no_matching_route_is_404() -> None:
    relay = Relay(routes=(route("/api/"),))
    relay.send(GET)
    assert relay.received().startswith(b"HTTP/1.1 404")
    assert not relay.ct.disconnecting


def test_strip_prefix_rewrites_the_upstream_target() -> None:
    relay = Relay(routes=(route("/api/", ProxyAction(pool="web", strip_prefix=True)),))
    relay.send(b"GET /api/users?id=3 HTTP/1.1\r\nHost: a\r\n\r\n")
    _, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"GET /users?id=3 HTTP/1.1"


def test_dot_segments_are_resolved_before_routing() -> None:
    relay = Relay(
        routes=(
            route("/", RespondAction(status=200, body="public")),
            route("/admin/", RespondAction(status=403, body="no")),
        )
    )
    relay.send(b"GET /public/../admin/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert relay.received().startswith(b"HTTP/1.1 403")


def test_sticky_cookie_pins_a_client_to_its_server() -> None:
    relay = Relay(sticky_cookie="SRV")
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    [cookie] = field(relay.received(), "Set-Cookie")
    value = cookie.split(b";")[0]
    assert value.startswith(b"SRV=")
    for _ in range(3):
        relay.send(GET.replace(b"\r\n\r\n", b"\r\nCookie: a=b; " + value + b"\r\n\r\n"))
        upstream.dataReceived(OK)
        answer = relay.received()
        assert field(answer, "Set-Cookie") == []
    assert relay.pending_connects() == []


def test_client_closing_mid_response_aborts_upstream() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert ut.disconnecting or ut.disconnected
    assert relay.pool.servers[0].active == 0


def test_trusted_proxy_keeps_incoming_forwarded_for() -> None:
    import ipaddress

    relay = Relay(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    relay.send(GET.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"))
    _, ut = relay.accept_upstream()
    assert field(ut.value(), "X-Forwarded-For") == [b"192.0.2.1, 10.0.0.7"]

    other, _ot = relay.connect_client("192.0.2.99")
    relay.send(GET.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"), other)
    _, ut2 = relay.accept_upstream()
    assert field(ut2.value(), "X-Forwarded-For") == [b"192.0.2.99"]


_REQUEST_ID = re.compile(rb"X-Request-ID: [0-9a-f]+\r\n")


def _relay_upstream_bytes(pieces: list[bytes]) -> bytes:
    relay = Relay()
    for piece in pieces:
        relay.send(piece)
    if not relay.pending_connects():
        return b""
    upstream, ut = relay.accept_upstream()
    sent = b""
    for _ in range(3):  # answer each request in turn: the relay sends the next one after
        sent += _REQUEST_ID.sub(b"", ut.value())
        ut.clear()
        upstream.dataReceived(OK)
    return sent


_PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n"
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=0, max_value=len(_PIPELINE)), max_size=12))
def test_any_split_of_a_request_pipeline_reaches_the_upstream_the_same(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [_PIPELINE[a:b] for a, b in zip([0, *points], [*points, len(_PIPELINE)], strict=True)]
    whole = _relay_upstream_bytes([_PIPELINE])
    decoded = re.sub(rb"\r\n[0-9a-f]+\r\n", b"|", whole)
    split = _relay_upstream_bytes([p for p in pieces if p])
    assert re.sub(rb"\r\n[0-9a-f]+\r\n", b"|", split).replace(b"|", b"") == decoded.replace(
        b"|", b""
    )
    assert b"GET /a" in whole and b"hello" in whole and b"world" in whole


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_garbage_from_a_client_never_raises_and_gets_an_answer_or_nothing(
    pieces: list[bytes],
) -> None:
    relay = Relay()
    for piece in pieces:
        relay.send(piece)
    answer = relay.ct.value()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert relay.pool.servers[0].active == 0


def test_error_pages_replace_proxyds_own_answers() -> None:
    relay = Relay(servers=1, retries=0, error_pages={502: b"<h1>down</h1>"})
    relay.send(GET)
    relay.refuse_upstream()
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 502")
    assert field(answer, "Content-Type") == [b"text/html; charset=utf-8"]
    assert answer.endswith(b"\r\n\r\n<h1>down</h1>")


# Draining at a graceful stop.


def drained(relay: Relay) -> list[None]:
    fired: list[None] = []
    relay.factory.drain().addCallback(fired.append)
    return fired


def test_drain_closes_an_idle_keepalive_connection_and_fires_once_it_is_gone() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert not relay.ct.disconnecting
    fired = drained(relay)
    assert relay.ct.disconnecting
    assert fired == []
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert fired == [None]
    assert relay.factory.clients == set()


def test_drain_answers_the_request_in_progress_with_connection_close_then_closes() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    fired = drained(relay)
    assert not relay.ct.disconnecting, "the request in progress is answered first"
    upstream.dataReceived(OK)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hi")
    assert field(answer, "Connection") == [b"close"]
    assert relay.ct.disconnecting
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert fired == [None]


def test_drain_lets_a_request_whose_head_is_arriving_through_as_the_last_one() -> None:
    relay = Relay()
    relay.send(GET[:10])
    fired = drained(relay)
    assert not relay.ct.disconnecting
    relay.send(GET[10:] + GET)  # the rest, and a pipelined request that is not read
    upstream, ut = relay.accept_upstream()
    assert request_lines(ut.value())[0] == b"GET /a?x=1 HTTP/1.1"
    upstream.dataReceived(OK)
    answer = relay.received()
    assert field(answer, "Connection") == [b"close"]
    assert answer.count(b"HTTP/1.1 200 OK") == 1
    assert relay.ct.disconnecting and fired == []
    assert relay.pending_connects() == []


def test_drain_with_no_connection_fires_at_once_and_close_all_closes_what_is_left() -> None:
    relay = Relay()
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert drained(relay) == [None]

    relay = Relay()
    relay.send(GET)
    relay.accept_upstream()
    first, second = drained(relay), drained(relay)
    assert not relay.ct.disconnecting
    relay.factory.close_all()
    assert relay.ct.disconnecting
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert first == second == [None]


def test_a_connection_accepted_while_draining_gets_one_request() -> None:
    relay = Relay()
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    drained(relay)
    client, transport = relay.connect_client()
    assert not transport.disconnecting
    relay.send(GET, client)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert field(transport.value(), "Connection") == [b"close"]
    assert transport.disconnecting


def test_drain_lets_a_connection_not_yet_asked_anything_make_its_one_request() -> None:
    relay = Relay()  # accepted; its request may be on its way
    fired = drained(relay)
    assert not relay.ct.disconnecting
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert field(relay.received(), "Connection") == [b"close"]
    assert relay.ct.disconnecting and fired == []


def retired(relay: Relay) -> list[None]:
    fired: list[None] = []
    relay.factory.retire().addCallback(fired.append)
    return fired


def test_a_reload_leaves_an_idle_keepalive_connection_open_for_one_last_request() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.received()
    fired = retired(relay)
    assert not relay.ct.disconnecting, "not closed under a request that may be on its way"
    relay.send(GET)
    upstream.dataReceived(OK)
    assert field(relay.received(), "Connection") == [b"close"]
    assert relay.ct.disconnecting
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert fired == [None]


def test_a_reload_answers_the_request_in_progress_with_connection_close() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    fired = retired(relay)
    upstream.dataReceived(OK)
    assert field(relay.received(), "Connection") == [b"close"]
    assert relay.ct.disconnecting and fired == []


# Metrics (proxyd.metrics): what each exchange counts, on its route, pool and server.

FIRST = "127.0.0.1:9001"
SECOND = "127.0.0.1:9002"


def metrics(relay: Relay, route_name: str = "*/", pool: str = "web", server: str = FIRST) -> Any:
    return relay.factory.stats.snapshot()["http"]["front"][route_name][pool][server]


def test_a_proxied_request_counts_its_class_bytes_and_latencies_on_its_server() -> None:
    relay = Relay()
    relay.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    relay.reactor.advance(0.002)
    upstream, _ = relay.accept_upstream()
    relay.reactor.advance(0.020)
    upstream.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\n")
    relay.reactor.advance(0.5)
    upstream.dataReceived(b"abc")
    found = metrics(relay)
    assert found["responses"] == {"2xx": 1}
    assert found["bytes_in"] == 5 and found["bytes_out"] == 3
    assert found["request_duration"]["sum"] == pytest.approx(0.522)
    assert found["request_duration"]["buckets"]["0.5"] == 0
    assert found["request_duration"]["buckets"]["1.0"] == 1
    # Upstream: from the request sent (once connected) to the response head.
    assert found["upstream_duration"]["sum"] == pytest.approx(0.020)
    assert found["connect_duration"]["sum"] == pytest.approx(0.002)
    assert "errors" not in found and "retries" not in found


def test_a_reused_connection_counts_no_connect_time() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    relay.send(GET)
    upstream.dataReceived(OK)
    found = metrics(relay)
    assert found["responses"] == {"2xx": 2}
    assert found["connect_duration"]["count"] == 1
    assert found["upstream_duration"]["count"] == 2


def test_a_failed_connect_counts_an_error_and_a_retry_on_the_server_that_failed() -> None:
    relay = Relay(servers=2)
    relay.send(GET)
    relay.refuse_upstream()
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert metrics(relay, server=FIRST) == {"errors": {"connect_failed": 1}, "retries": 1}
    assert metrics(relay, server=SECOND)["responses"] == {"2xx": 1}


def test_proxyds_own_502_after_every_attempt_failed_counts_with_no_server() -> None:
    relay = Relay(servers=2, retries=1)
    relay.send(GET)
    relay.refuse_upstream()
    relay.refuse_upstream(error.TimeoutError())
    assert metrics(relay, server=FIRST)["errors"] == {"connect_failed": 1}
    assert metrics(relay, server=SECOND)["errors"] == {"connect_timeout": 1}
    own = metrics(relay, server="")
    assert own["responses"] == {"5xx": 1}
    assert "errors" not in own  # each failure was counted on its server


def test_a_response_timeout_counts_on_the_server_and_the_504_as_proxyds() -> None:
    relay = Relay(response_timeout=5.0)
    relay.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    relay.accept_upstream()
    relay.reactor.advance(5.1)
    assert metrics(relay)["errors"] == {"upstream_timeout": 1}
    assert metrics(relay, server="")["responses"] == {"5xx": 1}


def test_a_retried_503_is_not_counted_as_a_response() -> None:
    relay = Relay(servers=2)
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    second, _ = relay.accept_upstream()
    second.dataReceived(OK)
    assert metrics(relay, server=FIRST) == {
        "retries": 1,
        "connect_duration": metrics(relay, server=FIRST)["connect_duration"],
    }
    assert metrics(relay, server=SECOND)["responses"] == {"2xx": 1}


def test_errors_of_the_exchange_count_once_by_kind() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert metrics(relay)["errors"] == {"client_aborted": 1}
    assert metrics(relay)["bytes_out"] == 2

    relay = Relay()
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert metrics(relay)["errors"] == {"upstream_reset": 1}


def test_no_route_no_server_and_malformed_requests_count_as_proxyds_answers() -> None:
    relay = Relay(routes=(route("/api/"),))
    relay.send(GET)
    own = metrics(relay, "", "", "")
    assert own["responses"] == {"4xx": 1}
    assert own["errors"] == {"no_route": 1}
    assert own["bytes_out"] == len(b"404 Not Found\n")

    relay = Relay()
    for server in relay.pool.servers:
        relay.pool.set_health(server, False, "test")
    relay.send(GET)
    assert metrics(relay, server="")["errors"] == {"no_server": 1}
    assert metrics(relay, server="")["responses"] == {"5xx": 1}

    relay = Relay()
    relay.send(b"GET / HTTP/1.1\r\n\r\n")
    assert metrics(relay, "", "", "") == {"responses": {"4xx": 1}, "errors": {"bad_request": 1}}


def test_a_header_timeout_counts_as_such() -> None:
    relay = Relay(header_timeout=1.0)
    relay.send(b"GET / HTTP/1.1\r\nHo")
    relay.reactor.advance(1.1)
    assert metrics(relay, "", "", "")["errors"] == {"header_timeout": 1}
