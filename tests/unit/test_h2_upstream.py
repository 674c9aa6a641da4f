"""HTTP/2 to the servers (proxyd.relay.http.h2_upstreams, h2_upstream, h2_upstream_stream):
HTTP/1.1 clients of the relay, a pool with protocol = h2c, and the `h2` package as the server,
over StringTransport and MemoryReactorClock."""

from __future__ import annotations

from typing import Any

import attrs
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes, Settings
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from proxyd.relay.http.h2_upstream import H2UpstreamConnection
from proxyd.relay.http.h2_upstreams import H2Upstreams

from .test_http_relay import GET, Relay


class Server:
    """The `h2` package as an HTTP/2 server on one upstream connection of the relay."""

    def __init__(
        self,
        conn: H2UpstreamConnection,
        transport: StringTransport,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.conn = conn
        self.transport = transport
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(client=False, initial_values=settings or {})
        self.h2.initiate_connection()
        self.events: list[Any] = []
        self.pump()

    def pump(self) -> None:
        """Exchange bytes both ways until neither side has more to say."""
        while True:
            data = self.transport.value()
            self.transport.clear()
            if data:
                self.events += self.h2.receive_data(data)
            out = self.h2.data_to_send()
            if out:
                self.conn.dataReceived(out)
            if not data and not out:
                return

    def requests(self) -> list[dict[bytes, bytes]]:
        return [dict(e.headers) for e in self.events if isinstance(e, RequestReceived)]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def respond(
        self,
        stream_id: int,
        body: bytes = b"",
        trailers: list[tuple[bytes, bytes]] | None = None,
        status: bytes = b"200",
        end: bool = True,
    ) -> None:
        self.h2.send_headers(
            stream_id, [(b":status", status)], end_stream=end and not body and not trailers
        )
        if body:
            self.h2.send_data(stream_id, body, end_stream=end and not trailers)
        if trailers:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
        self.pump()


class H2Relay(Relay):
    """The test relay with its pool speaking h2c."""

    def __init__(self, h2_connections: int = 1, **config: Any) -> None:
        super().__init__(**config)
        pool_config = attrs.evolve(self.pool_config, protocol="h2c", h2_connections=h2_connections)
        self.h2 = H2Upstreams(self.reactor, pool_config, None)
        self.factory.upstreams["web"] = self.h2  # type: ignore[index]

    def accept_server(self, settings: dict[int, int] | None = None) -> Server:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self.used]
        self.used += 1
        conn = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        conn.makeConnection(transport)
        return Server(conn, transport, settings)


def test_a_request_goes_as_headers_and_the_response_comes_back_to_an_http1_client() -> None:
    relay = H2Relay()
    relay.send(b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n")
    server = relay.accept_server()
    [request] = server.requests()
    assert request[b":method"] == b"GET"
    assert request[b":scheme"] == b"http"
    assert request[b":authority"] == b"example.test"
    assert request[b":path"] == b"/a?b=1"
    assert request[b"te"] == b"trailers"
    assert b"host" not in request
    assert server.of(StreamEnded)  # no body: END_STREAM on the HEADERS
    server.respond(1, b"hello")
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"5\r\nhello\r\n0\r\n\r\n")


def test_streams_are_multiplexed_on_one_connection() -> None:
    relay = H2Relay()
    other, other_transport = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server()
    relay.send(GET, other)
    server.pump()
    assert len(relay.reactor.tcpClients) == 1
    assert [e.stream_id for e in server.of(RequestReceived)] == [1, 3]
    server.respond(3, b"second")
    server.respond(1, b"first")
    assert relay.received().endswith(b"first\r\n0\r\n\r\n")
    assert other_transport.value().endswith(b"second\r\n0\r\n\r\n")


def test_trailers_reach_the_client() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    server.respond(1, b"x", trailers=[(b"grpc-status", b"0")])
    assert relay.received().endswith(b"1\r\nx\r\n0\r\ngrpc-status: 0\r\n\r\n")


def test_request_body_respects_the_server_window_and_pauses_the_client() -> None:
    relay = H2Relay()
    size = 300_000
    relay.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    server = relay.accept_server()
    relay.send(b"x" * 200_000)
    server.pump()
    received = sum(len(e.data) for e in server.of(DataReceived))
    assert received == 65535  # the default window, never acknowledged by this server
    assert relay.ct.producerState == "paused"
    server.h2.increment_flow_control_window(size)
    server.h2.increment_flow_control_window(size, stream_id=1)
    server.pump()
    assert relay.ct.producerState == "producing"
    relay.send(b"x" * 100_000)
    server.pump()
    assert sum(len(e.data) for e in server.of(DataReceived)) == size
    assert server.of(StreamEnded)


def test_a_slow_client_stops_the_acknowledgements_of_its_stream() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    server.respond(1, end=False)
    relay.client.pauseProducing()  # the client's write buffer is full
    for _ in range(14):
        server.h2.send_data(1, b"a" * 15_000)
    server.pump()
    window = server.h2.local_flow_control_window(1)
    relay.client.resumeProducing()
    server.pump()
    assert server.h2.local_flow_control_window(1) > window


def test_a_server_reset_cuts_a_started_response_and_keeps_the_connection() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    server.respond(1, b"part", end=False)
    server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    server.pump()
    assert relay.ct.disconnecting  # the response was cut short
    assert not server.conn.lost
    other, other_transport = relay.connect_client("10.0.0.8")
    relay.send(GET, other)
    server.pump()
    server.respond(3, b"ok")
    assert other_transport.value().endswith(b"ok\r\n0\r\n\r\n")


def test_a_refused_stream_is_sent_again_uncounted() -> None:
    relay = H2Relay()
    relay.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    server = relay.accept_server()
    server.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    server.pump()
    assert [e.stream_id for e in server.of(RequestReceived)] == [1, 3]
    assert b"".join(e.data for e in server.of(DataReceived) if e.stream_id == 3) == b"hi"
    server.respond(3, b"done")
    assert relay.received().startswith(b"HTTP/1.1 200")


def test_goaway_refuses_later_streams_and_lets_earlier_ones_finish() -> None:
    relay = H2Relay()
    other, other_transport = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server()
    relay.send(GET, other)
    server.pump()
    server.h2.close_connection(last_stream_id=1)
    server.h2.state_machine.state = server.h2.state_machine.state.SERVER_OPEN  # keep serving 1
    server.pump()
    # Stream 3 was refused by the GOAWAY: sent again on a new connection.
    second = relay.accept_server()
    assert len(second.of(RequestReceived)) == 1
    server.respond(1, b"one")
    assert relay.received().endswith(b"one\r\n0\r\n\r\n")
    assert server.transport.disconnecting  # its last stream over
    second.respond(1, b"two")
    assert other_transport.value().endswith(b"two\r\n0\r\n\r\n")


def test_max_concurrent_streams_makes_a_request_wait_for_a_stream() -> None:
    relay = H2Relay()
    other, other_transport = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server(settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    relay.send(GET, other)
    server.pump()
    assert len(server.of(RequestReceived)) == 1
    assert len(relay.reactor.tcpClients) == 1  # h2_connections = 1
    server.respond(1, b"first")
    server.pump()
    assert [e.stream_id for e in server.of(RequestReceived)] == [1, 3]
    server.respond(3, b"second")
    assert other_transport.value().endswith(b"second\r\n0\r\n\r\n")


def test_a_second_connection_opens_when_the_first_is_full() -> None:
    relay = H2Relay(h2_connections=2)
    other, _ = relay.connect_client("10.0.0.8")
    relay.send(GET)
    relay.accept_server(settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    relay.send(GET, other)
    second = relay.accept_server()
    assert len(second.requests()) == 1


def test_a_wait_for_a_stream_past_connect_timeout_is_503_and_not_the_servers_fault() -> None:
    relay = H2Relay(connect_timeout=2.0)
    other, other_transport = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server(settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    relay.send(GET, other)
    relay.reactor.advance(2.5)
    assert other_transport.value().startswith(b"HTTP/1.1 503")
    assert relay.pool.servers[0].consecutive_failures == 0
    server.respond(1, b"first")
    assert relay.received().endswith(b"first\r\n0\r\n\r\n")


def test_a_client_gone_resets_its_stream_and_the_connection_stays() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    relay.client.connectionLost(None)  # type: ignore[arg-type]
    server.pump()
    [reset] = server.of(StreamReset)
    assert reset.error_code == ErrorCodes.CANCEL
    assert not server.transport.disconnecting


def test_a_lost_connection_before_the_response_answers_502() -> None:
    relay = H2Relay(retries=0)
    relay.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    server = relay.accept_server()
    server.conn.connectionLost(None)  # type: ignore[arg-type]
    assert relay.received().startswith(b"HTTP/1.1 502")
