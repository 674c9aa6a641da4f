"""WebSocket over HTTP/2 (RFC 8441): the `h2` package as the client opening extended CONNECT
streams on the relay, HTTP/1.1 servers on StringTransports answering the handshake proxyd
makes of it, and the tunnel over the stream (proxyd.relay.http.extended_connect, h2_tunnel)."""

from __future__ import annotations

import base64
from typing import Any

from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamReset,
    WindowUpdated,
)
from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from proxyd.config.model import RespondAction
from proxyd.h2_internals import keep_open_after_goaway
from proxyd.relay.http.extended_connect import accept_for
from proxyd.relay.http.upstream import UpstreamConnection
from tests.unit.test_h2_server import Client
from tests.unit.test_h2_upstream import H2Relay
from tests.unit.test_http_relay import Relay, field, request_lines, route

FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
"""A masked text frame "Hello" (RFC 6455 5.7)."""


def connect(client: Client, path: bytes = b"/chat?room=1", protocol: bytes = b"websocket",
            *fields: tuple[bytes, bytes]) -> int:  # fmt: skip
    """An extended CONNECT (RFC 8441 4) on a new stream."""
    stream = client.h2.get_next_available_stream_id()
    headers = [
        (b":method", b"CONNECT"),
        (b":protocol", protocol),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"example.test"),
        (b"sec-websocket-version", b"13"),
        *fields,
    ]
    client.h2.send_headers(stream, headers)
    client.flush()
    return stream


def switch(key: bytes, *fields: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n" + b"".join(fields) + b"\r\n"
    )


def handshake(relay: Relay) -> tuple[UpstreamConnection, StringTransport, bytes]:
    """The next upstream connection and the handshake it got, once sent."""
    upstream, transport = relay.accept_upstream()
    relay.reactor.advance(0)
    return upstream, transport, transport.value()


def tunnel(**config: Any) -> tuple[Relay, Client, int, UpstreamConnection, StringTransport]:
    """A WebSocket tunnel over stream 1: switched, the upstream's transport cleared."""
    relay = Relay(h2c=True, **config)
    client = Client(relay)
    stream = connect(client)
    upstream, transport, request = handshake(relay)
    upstream.dataReceived(switch(field(request, "Sec-WebSocket-Key")[0]))
    client.flush()
    transport.clear()
    return relay, client, stream, upstream, transport


def head(client: Client, stream: int) -> dict[bytes, bytes]:
    (response,) = client.of(stream, ResponseReceived)
    return dict(response.headers)


def test_the_listener_advertises_extended_connect() -> None:
    client = Client(Relay(h2c=True))
    assert client.h2.remote_settings.enable_connect_protocol == 1


def test_extended_connect_goes_upstream_as_an_http_1_1_handshake_with_a_key_of_its_own() -> None:
    relay = Relay(h2c=True)
    client = Client(relay)
    connect(
        client,
        b"/chat?room=1",
        b"websocket",
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"sec-websocket-key", b"bm90IHRoZSBjbGllbnQncw=="),
        (b"origin", b"http://a.test"),
    )
    _, _, request = handshake(relay)
    assert request_lines(request)[0] == b"GET /chat?room=1 HTTP/1.1"
    assert field(request, "Upgrade") == [b"websocket"]
    assert field(request, "Connection") == [b"Upgrade"]
    assert field(request, "Sec-WebSocket-Version") == [b"13"]
    assert field(request, "Sec-WebSocket-Protocol") == [b"chat, superchat"]
    assert field(request, "Sec-WebSocket-Extensions") == [b"permessage-deflate"]
    assert field(request, "Origin") == [b"http://a.test"]
    assert field(request, "Host") == [b"example.test"]
    assert field(request, "X-Forwarded-For") == [b"10.0.0.7"]
    (key,) = field(request, "Sec-WebSocket-Key")
    assert key != b"bm90IHRoZSBjbGllbnQncw==" and len(base64.b64decode(key)) == 16


def test_the_101_is_the_client_s_200_and_bytes_flow_both_ways() -> None:
    relay = Relay(h2c=True)
    client = Client(relay)
    stream = connect(client, b"/chat", b"websocket", (b"sec-websocket-protocol", b"chat"))
    upstream, transport, request = handshake(relay)
    key = field(request, "Sec-WebSocket-Key")[0]
    upstream.dataReceived(
        switch(key, b"Sec-WebSocket-Protocol: chat\r\n", b"Sec-WebSocket-Extensions: x-test\r\n")
        + b"\x81\x05first"  # bytes behind the 101, in the same read
    )
    client.flush()
    answer = head(client, stream)
    assert answer[b":status"] == b"200"
    assert answer[b"sec-websocket-protocol"] == b"chat"
    assert answer[b"sec-websocket-extensions"] == b"x-test"
    assert not {b"sec-websocket-accept", b"upgrade", b"connection"} & answer.keys()
    assert client.body(stream) == b"\x81\x05first" and not client.ended(stream)
    transport.clear()
    client.h2.send_data(stream, FRAME)
    client.flush()
    assert transport.value() == FRAME
    upstream.dataReceived(b"\x81\x02hi")
    client.flush()
    assert client.body(stream) == b"\x81\x05first\x81\x02hi"
    assert relay.factory.tunnels == 1


def test_data_the_client_sent_before_the_200_reaches_the_server_after_the_switch() -> None:
    relay = Relay(h2c=True)
    client = Client(relay)
    stream = connect(client)
    client.h2.send_data(stream, FRAME)
    client.flush()
    upstream, transport, request = handshake(relay)
    assert transport.value().endswith(b"\r\n\r\n")  # the handshake alone
    upstream.dataReceived(switch(field(request, "Sec-WebSocket-Key")[0]))
    client.flush()
    assert transport.value().endswith(b"\r\n\r\n" + FRAME)


def test_a_wrong_sec_websocket_accept_is_502_and_the_upstream_connection_goes() -> None:
    relay = Relay(h2c=True, retries=0)
    client = Client(relay)
    stream = connect(client)
    upstream, transport, _ = handshake(relay)
    upstream.dataReceived(switch(b"c29tZW9uZSBlbHNlJ3Mga2V5"))
    client.flush()
    assert client.status(stream) == 502 and client.ended(stream)
    assert transport.disconnecting
    assert "wrong Sec-WebSocket-Accept" in relay.log.records[0]["error"]


def test_a_2xx_to_the_handshake_is_502_since_the_client_would_take_it_for_the_switch() -> None:
    relay = Relay(h2c=True, retries=0)
    client = Client(relay)
    stream = connect(client)
    upstream, _, _ = handshake(relay)
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    client.flush()
    assert client.status(stream) == 502
    assert relay.factory.tunnels == 0


def test_a_refusal_is_the_stream_s_response_and_the_connection_goes_on() -> None:
    relay = Relay(h2c=True)
    client = Client(relay)
    stream = connect(client)
    upstream, _, _ = handshake(relay)
    upstream.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    client.flush()
    assert client.status(stream) == 403 and client.body(stream) == b"no"
    assert client.ended(stream) and relay.factory.tunnels == 0
    again = client.request("/")
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    client.flush()
    assert client.body(again) == b"ok"


def test_the_route_and_its_filters_answer_as_for_an_http_1_1_handshake() -> None:
    relay = Relay(
        h2c=True,
        routes=(
            route("/chat", RespondAction(403, "no chat")),
            route("/", methods=frozenset({"GET"})),
        ),
    )
    client = Client(relay)
    refused = connect(client, b"/chat")
    assert client.status(refused) == 403 and client.body(refused) == b"no chat"
    routed = connect(client, b"/other")  # a route for GET only: the handshake's method
    _, _, request = handshake(relay)
    assert request_lines(request)[0] == b"GET /other HTTP/1.1"
    assert client.of(routed, ResponseReceived) == []
    assert relay.log.records[0]["method"] == "GET"


class Origins:
    """A [websocket] passthrough listener's allowed_origins."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = allowed

    def allows(self, origin: str | None) -> bool:
        return origin in self.allowed


def test_a_websocket_only_listener_takes_http2_websockets_from_allowed_origins() -> None:
    relay = Relay(h2c=True, websocket_only=Origins("http://a.test"))
    client = Client(relay)
    plain = client.request("/")
    assert client.status(plain) == 426
    refused = connect(client, b"/chat", b"websocket", (b"origin", b"http://b.test"))
    assert client.status(refused) == 403
    connect(client, b"/chat", b"websocket", (b"origin", b"http://a.test"))
    assert relay.pending_connects() != []


def test_another_protocol_is_501_and_plain_connect_405_without_reaching_a_server() -> None:
    relay = Relay(h2c=True)
    client = Client(relay)
    other = connect(client, b"/", b"connect-udp")
    assert client.status(other) == 501
    plain = client.h2.get_next_available_stream_id()
    client.h2.send_headers(plain, [(b":method", b"CONNECT"), (b":authority", b"e.test:443")])
    client.flush()
    assert client.status(plain) == 405
    assert relay.pending_connects() == []
    assert [r["status"] for r in relay.log.records] == [501, 405]


def test_a_pool_speaking_http2_is_501() -> None:
    relay = H2Relay(h2c=True)
    client = Client(relay)
    stream = connect(client)
    assert client.status(stream) == 501
    assert relay.pending_connects() == []


def test_max_tunnels_counts_http2_tunnels() -> None:
    _, client, _, _, _ = tunnel(max_tunnels=1)
    second = connect(client)
    assert client.status(second) == 503


def test_a_client_window_exhausted_pauses_the_server_until_it_reads() -> None:
    _, client, stream, upstream, transport = tunnel(http2_stream_buffer=32768)
    upstream.dataReceived(b"x" * 100_000)
    client.flush()
    assert len(client.body(stream)) == 65535  # the client's initial window
    assert transport.producerState == "paused"  # over http2_stream_buffer waiting
    for event in client.of(stream, DataReceived):
        client.h2.acknowledge_received_data(event.flow_controlled_length, stream)
    client.flush()
    assert transport.producerState == "producing"
    assert len(client.body(stream)) == 100_000


def test_a_slow_server_withholds_the_client_s_window() -> None:
    _, client, stream, upstream, transport = tunnel(http2_stream_buffer=32768)
    upstream.pauseProducing()  # its write buffer is full
    for _ in range(2):
        client.h2.send_data(stream, b"y" * 10_000)
    client.flush()
    assert len(transport.value()) == 20_000  # written: the buffer takes what it is given
    assert client.of(stream, WindowUpdated) == []
    upstream.resumeProducing()
    client.flush()
    assert client.of(stream, WindowUpdated)


def test_end_stream_from_the_client_closes_the_server_which_ends_the_stream() -> None:
    relay, client, stream, upstream, transport = tunnel()
    client.h2.send_data(stream, FRAME)
    upstream.dataReceived(b"\x81\x02hi")
    relay.reactor.advance(3)
    client.h2.end_stream(stream)
    client.flush()
    assert transport.disconnecting
    upstream.connectionLost(Failure(error.ConnectionDone()))
    client.flush()
    assert client.ended(stream) and client.of(stream, StreamReset) == []
    [record] = relay.log.records
    assert record["status"] == 200 and record["upstream_status"] == 101
    assert record["protocol"] == "HTTP/2" and record["stream"] == stream
    assert record["upgrade"] == "websocket" and record["close"] == "client_closed"
    assert record["bytes_in"] == len(FRAME) and record["bytes_out"] == 4
    assert record["request_time"] == 3.0
    assert relay.factory.tunnels == 0 and not client.connection.h2.streams  # type: ignore[union-attr]
    assert not client.transport.disconnecting  # the connection goes on


def test_the_server_s_close_ends_the_stream_after_what_waits() -> None:
    relay, client, stream, upstream, _ = tunnel()
    upstream.dataReceived(b"\x88\x02\x03\xe8")  # its close frame
    upstream.connectionLost(Failure(error.ConnectionDone()))
    client.flush()
    assert client.body(stream) == b"\x88\x02\x03\xe8" and client.ended(stream)
    (reset,) = client.of(stream, StreamReset)
    assert reset.error_code == 0  # NO_ERROR: the client's half is not wanted any more
    assert relay.log.records[0]["close"] == "server_closed"


def test_rst_stream_from_the_client_resets_the_server() -> None:
    relay, client, stream, upstream, transport = tunnel()
    client.h2.reset_stream(stream)
    client.flush()
    assert transport.disconnected  # aborted, not flushed
    upstream.connectionLost(Failure(error.ConnectionLost()))
    assert relay.log.records[0]["close"] == "client_reset"


def test_a_server_reset_is_rst_stream_cancel() -> None:
    relay, client, stream, upstream, _ = tunnel()
    upstream.connectionLost(Failure(error.ConnectionLost()))
    client.flush()
    (reset,) = client.of(stream, StreamReset)
    assert reset.error_code == 8  # CANCEL (RFC 8441 5)
    assert relay.log.records[0]["close"] == "server_reset"


def test_a_client_that_opens_no_window_for_tunnel_timeout_is_reset_as_stalled() -> None:
    relay, client, stream, upstream, transport = tunnel(tunnel_timeout=30.0)
    upstream.dataReceived(b"x" * 100_000)  # more than the client's window
    client.flush()
    relay.reactor.advance(20)
    client.h2.send_data(stream, FRAME)  # traffic the other way: the tunnel is not idle
    client.flush()
    relay.reactor.advance(11)
    client.flush()
    (reset,) = client.of(stream, StreamReset)
    assert reset.error_code == 8
    assert transport.disconnected
    upstream.connectionLost(Failure(error.ConnectionLost()))
    record = relay.log.records[0]
    assert record["close"] == "client_stalled"
    assert record["error"] == "client took no bytes for 30s"


def test_a_client_that_reads_slowly_is_not_stalled() -> None:
    relay, client, stream, upstream, transport = tunnel(tunnel_timeout=30.0)
    upstream.dataReceived(b"x" * 100_000)
    client.flush()
    for _ in range(3):  # some every 20 s: progress (and a frame: not idle)
        relay.reactor.advance(20)
        received = client.of(stream, DataReceived)
        client.h2.acknowledge_received_data(received[-1].flow_controlled_length, stream)
        client.h2.send_data(stream, FRAME)
        client.flush()
    assert client.of(stream, StreamReset) == [] and not transport.disconnecting
    assert len(client.body(stream)) == 100_000


def test_the_connection_s_loss_closes_the_server() -> None:
    relay, client, _, upstream, transport = tunnel()
    client.connection.connectionLost(Failure(error.ConnectionDone()))
    assert transport.disconnecting
    upstream.connectionLost(Failure(error.ConnectionDone()))
    assert relay.log.records[0]["close"] == "client_closed"
    assert relay.factory.tunnels == 0


def test_drain_sends_goaway_and_the_tunnel_goes_on_until_it_ends() -> None:
    _, client, stream, upstream, transport = tunnel()
    client.connection.drain()
    client.flush()
    assert any(isinstance(e, ConnectionTerminated) for e in client.events)
    assert not client.transport.disconnecting
    keep_open_after_goaway(client.h2)  # h2 closes a client's side at GOAWAY
    client.h2.send_data(stream, FRAME)
    client.flush()
    assert transport.value() == FRAME
    upstream.connectionLost(Failure(error.ConnectionDone()))
    client.flush()
    assert client.ended(stream) and client.transport.disconnecting


def test_an_http2_tunnel_counts_as_a_2xx_and_an_http2_request() -> None:
    relay, client, _, upstream, _ = tunnel()
    upstream.connectionLost(Failure(error.ConnectionDone()))
    client.flush()
    cell = relay.factory.stats.snapshot()["http"]["front"]["*/"]["web"]["127.0.0.1:9001"]
    assert cell["http2_requests"] == 1
    assert cell["responses"]["2xx"] == 1
