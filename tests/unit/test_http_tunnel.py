"""WebSocket upgrades on the HTTP relay: the upgrade request and its 101 are passed on, then
the two connections are spliced (proxyd.relay.http.tunnel)."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from proxyd.relay.http.upstream import UpstreamConnection
from tests.unit.test_http_relay import OK, Relay, field, request_lines

UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\nOrigin: http://a.test\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
)
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
"""A masked text frame "Hello" (RFC 6455 5.7)."""


def tunnel(**config: Any) -> tuple[Relay, UpstreamConnection, StringTransport]:
    relay = Relay(**config)
    relay.send(UPGRADE)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(SWITCH)
    return relay, upstream, ut


def test_upgrade_request_keeps_its_upgrade_fields_upstream() -> None:
    relay = Relay()
    relay.send(UPGRADE)
    _, ut = relay.accept_upstream()
    sent = ut.value()
    assert request_lines(sent)[0] == b"GET /chat?room=1 HTTP/1.1"
    assert field(sent, "Upgrade") == [b"websocket"]
    assert field(sent, "Connection") == [b"Upgrade"]
    assert field(sent, "Sec-WebSocket-Key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert field(sent, "Sec-WebSocket-Protocol") == [b"chat"]
    assert field(sent, "Origin") == [b"http://a.test"]
    assert field(sent, "X-Forwarded-For") == [b"10.0.0.7"]


def test_101_is_passed_on_and_bytes_flow_both_ways() -> None:
    relay, upstream, ut = tunnel()
    head = relay.received()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert field(head, "Upgrade") == [b"websocket"]
    assert field(head, "Connection") == [b"Upgrade"]
    assert field(head, "Sec-WebSocket-Accept") == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert field(head, "Content-Length") == [] and field(head, "Transfer-Encoding") == []
    ut.clear()
    relay.send(FRAME)
    assert ut.value() == FRAME
    upstream.dataReceived(b"\x81\x02hi")
    assert relay.received() == b"\x81\x02hi"
    assert relay.factory.tunnels == 1


def test_bytes_sent_with_the_heads_are_relayed() -> None:
    relay = Relay()
    relay.send(UPGRADE + FRAME)
    upstream, ut = relay.accept_upstream()
    relay.send(b"\x89\x80\x00\x00\x00\x00")  # a ping sent before the 101 waits too
    assert relay.ct.producerState == "paused"
    ut.clear()
    upstream.dataReceived(SWITCH + b"\x81\x02hi")
    assert ut.value() == FRAME + b"\x89\x80\x00\x00\x00\x00"
    assert relay.received().endswith(b"\r\n\r\n\x81\x02hi")
    assert relay.ct.producerState == "producing"


def test_non_101_answer_is_an_ordinary_response_and_the_connection_goes_on() -> None:
    relay = Relay()
    relay.send(UPGRADE)
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and answer.endswith(b"no")
    assert relay.factory.tunnels == 0
    relay.send(b"GET /next HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert request_lines(ut.value().split(b"\r\n\r\n", 1)[1])[0] == b"GET /next HTTP/1.1"
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"hi")
    assert relay.log.records[0]["status"] == 403


def test_other_upgrades_lose_their_upgrade_fields() -> None:
    relay = Relay()
    relay.send(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    upstream, ut = relay.accept_upstream()
    assert field(ut.value(), "Upgrade") == [] and field(ut.value(), "HTTP2-Settings") == []
    upstream.dataReceived(OK)
    assert relay.received().startswith(b"HTTP/1.1 200 OK")


def test_a_101_to_a_request_that_did_not_ask_is_502() -> None:
    relay = Relay(retries=0)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream, ut = relay.accept_upstream()
    upstream.dataReceived(SWITCH)
    assert relay.received().startswith(b"HTTP/1.1 502 ")
    assert ut.disconnecting


def test_client_close_closes_upstream_and_logs_the_tunnel() -> None:
    relay, upstream, ut = tunnel()
    relay.send(FRAME)
    upstream.dataReceived(b"\x81\x02hi")
    relay.reactor.advance(3)
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert ut.disconnecting
    upstream.connectionLost(Failure(error.ConnectionDone()))
    [record] = relay.log.records
    assert record["status"] == 101 and record["upgrade"] == "websocket"
    assert record["close"] == "client_closed"
    assert record["bytes_in"] == len(FRAME) and record["bytes_out"] == 4
    assert record["request_time"] == 3.0
    assert relay.factory.tunnels == 0
    assert relay.pool.servers[0].active == 0


def test_server_close_closes_client() -> None:
    relay, upstream, _ = tunnel()
    upstream.connectionLost(Failure(error.ConnectionDone()))
    assert relay.ct.disconnecting
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    assert relay.log.records[0]["close"] == "server_closed"


def test_server_reset_resets_client() -> None:
    relay, upstream, _ = tunnel()
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.ct.disconnecting and relay.ct.disconnected  # aborted, not flushed
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert relay.log.records[0]["close"] == "server_reset"


def test_client_reset_resets_server() -> None:
    relay, upstream, ut = tunnel()
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert ut.disconnected
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.log.records[0]["close"] == "client_reset"


def test_tunnel_timeout_closes_both_and_then_resets_a_peer_that_does_not_read() -> None:
    relay, upstream, ut = tunnel(tunnel_timeout=30.0, idle_timeout=5.0)
    relay.reactor.advance(20)
    relay.send(FRAME)  # activity: the timer moves on
    relay.reactor.advance(20)
    assert not relay.ct.disconnecting
    relay.reactor.advance(11)
    assert relay.ct.disconnecting and ut.disconnecting
    upstream.connectionLost(Failure(error.ConnectionDone()))
    relay.reactor.advance(30)
    assert relay.ct.disconnected
    relay.client.connectionLost(Failure(error.ConnectionLost()))
    assert relay.log.records[0]["close"] == "idle_timeout"


def test_backpressure_both_ways() -> None:
    relay, upstream, ut = tunnel()
    relay.client.pauseProducing()  # the client's write buffer is full
    assert ut.producerState == "paused"
    relay.client.resumeProducing()
    assert ut.producerState == "producing"
    upstream.pauseProducing()  # the upstream's write buffer is full
    assert relay.ct.producerState == "paused"
    upstream.resumeProducing()
    assert relay.ct.producerState == "producing"


def test_max_tunnels_answers_503_without_reaching_a_server() -> None:
    relay, _, _ = tunnel(max_tunnels=1)
    second, st = relay.connect_client("10.0.0.8")
    relay.send(UPGRADE, second)
    assert st.value().startswith(b"HTTP/1.1 503 ")
    assert relay.pending_connects() == []


def test_upgraded_connection_is_never_reused() -> None:
    relay, upstream, _ = tunnel(keepalive=8)
    relay.client.connectionLost(Failure(error.ConnectionDone()))
    upstream.connectionLost(Failure(error.ConnectionDone()))
    assert relay.upstreams.checkout(relay.pool.servers[0]) is None


class _Origins:
    def __init__(self, *allowed: str) -> None:
        self.allowed = allowed

    def allows(self, origin: str | None) -> bool:
        return not self.allowed or origin in self.allowed


def test_websocket_only_listener_answers_426_to_plain_requests() -> None:
    relay = Relay(websocket_only=_Origins())
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert field(answer, "Upgrade") == [b"websocket"]
    assert relay.pending_connects() == []


def test_websocket_only_listener_refuses_other_origins_with_403() -> None:
    origins = _Origins("http://b.test")
    relay = Relay(websocket_only=origins)
    relay.send(UPGRADE)
    assert relay.received().startswith(b"HTTP/1.1 403 ")
    origins.allowed = ("http://a.test",)
    relay.send(UPGRADE)
    assert relay.pending_connects() != []


def test_passthrough_websocket_section_becomes_an_http_listener() -> None:
    from proxyd.config.model import WebSocketListenerConfig

    http = WebSocketListenerConfig(
        "raw", "tcp:0", "chat", mode="passthrough", idle_timeout=90.0, max_connections=7
    ).as_http()
    assert http.tunnel_timeout == 90.0 and http.max_tunnels == 7
    assert [r.action.pool for r in http.routes] == ["chat"]  # type: ignore[union-attr]


def test_an_upgrade_request_with_a_body_is_proxied_as_a_plain_one() -> None:
    relay = Relay()
    relay.send(
        b"POST /up HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        b"Content-Length: 3\r\n\r\nabc" + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert sent.endswith(b"\r\n\r\nabc") and field(sent, "Upgrade") == []
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"hi")
    assert request_lines(ut.value()[len(sent) :])[0] == b"GET /next HTTP/1.1"


def test_chunked_body_after_an_upgrade_head_is_read_by_the_next_parser() -> None:
    from proxyd.relay.http.h1 import RequestReader
    from proxyd.relay.http.messages import Body, End, Request

    data = (
        b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: b\r\n\r\n"
    )
    for split in range(1, len(data)):
        reader = RequestReader()
        reader.feed(data[:split])
        reader.feed(data[split:])
        events = []
        while (event := reader.next_event()) is not None:
            events.append(event)
        kinds = [type(e) for e in events if not isinstance(e, Body)]
        assert kinds == [Request, End, Request, End], split
        assert b"".join(e.data for e in events if isinstance(e, Body)) == b"abc"
        assert all(e.trailers is None for e in events if isinstance(e, End))
        assert reader.upgraded is None


def test_spliced_connections_turn_nagle_off() -> None:
    calls: list[bool] = []
    relay = Relay()
    relay.ct.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
    relay.send(UPGRADE)
    upstream, ut = relay.accept_upstream()
    ut.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
    assert calls == []
    upstream.dataReceived(SWITCH)
    assert calls == [True, True]
