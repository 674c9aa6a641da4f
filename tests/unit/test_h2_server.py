"""HTTP/2 from clients (proxyd.relay.http.h2_session, h2_stream): the `h2` package as the
client, over the relay's StringTransport, each stream an exchange to HTTP/1.1 servers."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.testing import StringTransport

from proxyd.accesslog import AccessLog
from proxyd.config.model import RespondAction
from proxyd.relay.http.h2_limits import IDLE_FRAMES, RESETS, WINDOW_UPDATES_FREE, FloodGuard
from proxyd.relay.http.server import ClientConnection
from proxyd.relay.http.upstream import UpstreamConnection
from tests.unit.test_http_relay import OK, Relay, route


class Client:
    """An HTTP/2 client with prior knowledge on one of the relay's client connections."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.connection: ClientConnection
        self.connection, self.transport = relay.connect_client()
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.events: list[Any] = []
        self.flush()

    def flush(self) -> None:
        """Send what the client has to send, let the relay answer, read its answer."""
        for _ in range(10):
            out = self.h2.data_to_send()
            if out:
                self.relay.send(out, self.connection)
            self.relay.reactor.advance(0)
            data = self.transport.value()
            self.transport.clear()
            if data:
                self.events += self.h2.receive_data(data)
            if not out and not data:
                return

    def request(
        self, path: str = "/a", method: str = "GET", body: bytes = b"", **fields: str
    ) -> int:
        stream = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            *((name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()),
        ]
        self.h2.send_headers(stream, headers, end_stream=not body)
        if body:
            self.h2.send_data(stream, body, end_stream=True)
        self.flush()
        return stream

    def of(self, stream: int, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.stream_id == stream]

    def status(self, stream: int) -> int:
        (response,) = self.of(stream, ResponseReceived)
        return int(dict(response.headers)[b":status"])

    def body(self, stream: int) -> bytes:
        return b"".join(e.data for e in self.of(stream, DataReceived))

    def ended(self, stream: int) -> bool:
        return bool(self.of(stream, StreamEnded))


def h2c_relay(**config: Any) -> Relay:
    relay = Relay(h2c=True, **config)
    relay.factory.access_log = AccessLog(io.StringIO(), "memory")
    return relay


def answer(relay: Relay, response: bytes) -> tuple[bytes, StringTransport]:
    """The next upstream connection: the request it got; it answers `response`."""
    upstream: UpstreamConnection
    upstream, transport = relay.accept_upstream()
    relay.reactor.advance(0)
    request = transport.value()
    upstream.dataReceived(response)
    return request, transport


def test_a_get_over_h2c_goes_to_the_server_as_http_1_1_and_back_on_its_stream() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.request("/a?x=1", user_agent="h2-test")
    request, _ = answer(relay, OK)
    head = request.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"GET /a?x=1 HTTP/1.1"
    assert b"host: example.test" in [line.lower() for line in head]
    assert b"user-agent: h2-test" in head
    client.flush()
    assert client.status(stream) == 200
    assert client.body(stream) == b"hi" and client.ended(stream)


def test_a_request_body_without_length_goes_chunked_and_with_one_as_is() -> None:
    relay = h2c_relay(keepalive=0)
    client = Client(relay)
    client.request("/up", method="POST", body=b"hello")
    request, _ = answer(relay, OK)
    assert b"transfer-encoding: chunked" in request.lower()
    assert request.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    client.request("/up", method="POST", body=b"hello", content_length="5")
    request, _ = answer(relay, OK)
    assert request.lower().count(b"content-length: 5") == 1 and request.endswith(b"\r\n\r\nhello")


def test_concurrent_streams_each_get_their_own_response() -> None:
    relay = h2c_relay(servers=2)
    client = Client(relay)
    first = client.request("/first")
    second = client.request("/second")
    upstreams = [relay.accept_upstream() for _ in range(2)]
    relay.reactor.advance(0)
    for upstream, transport in reversed(upstreams):
        path = transport.value().split(b" ")[1]
        body = b"for " + path
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        upstream.dataReceived(head + body)
    client.flush()
    assert client.body(first) == b"for /first"
    assert client.body(second) == b"for /second"


def test_cookies_split_by_http2_are_joined_for_http_1_1() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        stream,
        [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
        end_stream=True,
    )
    client.flush()
    request, _ = answer(relay, OK)
    assert b"cookie: a=1; b=2" in request.lower()


def test_trailers_of_a_chunked_response_reach_the_client() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.request("/grpc")
    answer(
        relay,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
        b"2\r\nhi\r\n0\r\ngrpc-status: 0\r\n\r\n",
    )
    client.flush()
    assert client.body(stream) == b"hi"
    (trailers,) = client.of(stream, TrailersReceived)
    assert (b"grpc-status", b"0") in trailers.headers
    assert client.ended(stream)


def test_a_response_larger_than_the_window_waits_for_window_updates() -> None:
    relay = h2c_relay()
    client = Client(relay)
    client.h2.update_settings({})
    stream = client.request("/big")
    size = 200_000
    upstream, _ = relay.accept_upstream()
    relay.reactor.advance(0)
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    upstream.dataReceived(b"x" * size)
    # The client acknowledges nothing: no more than its initial window (65535) arrives.
    relay.reactor.advance(0)
    data = client.transport.value()
    client.transport.clear()
    events = client.h2.receive_data(data)
    got = sum(len(e.data) for e in events if isinstance(e, DataReceived))
    assert got == 65535
    for event in events:
        if isinstance(event, DataReceived):
            client.h2.acknowledge_received_data(event.flow_controlled_length, stream)
    client.flush()
    while not client.ended(stream):
        for event in list(client.events):
            if isinstance(event, DataReceived) and not getattr(event, "acked", False):
                event.acked = True
                client.h2.acknowledge_received_data(event.flow_controlled_length, stream)
        client.flush()
    assert got + len(client.body(stream)) == size


def test_a_client_reset_cancels_the_exchange_and_its_upstream_request() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.request("/slow")
    _, transport = answer(relay, b"")
    client.h2.reset_stream(stream)
    client.flush()
    assert transport.disconnecting  # a response half-read cannot be reused: its connection goes
    assert not client.connection.h2.streams  # type: ignore[union-attr]


def test_the_access_log_says_http_2_and_the_stream() -> None:
    relay = h2c_relay()
    stream_log = io.StringIO()
    relay.factory.access_log = AccessLog(stream_log, "memory")
    client = Client(relay)
    stream = client.request("/logged")
    answer(relay, OK)
    client.flush()
    (line,) = [json.loads(x) for x in stream_log.getvalue().splitlines()]
    assert line["protocol"] == "HTTP/2" and line["stream"] == stream and line["status"] == 200


def frames(data: bytes) -> list[Any]:
    """The frames in `data` (the relay's raw output), parsed with hyperframe."""
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def raw_headers(client: Client, stream: int, path: bytes = b"/") -> None:
    """A HEADERS frame the client library would not send (it keeps to the server's limits),
    encoded with its own HPACK state."""
    block = client.h2.encoder.encode(
        [(b":method", b"GET"), (b":path", path), (b":scheme", b"http"), (b":authority", b"e")]
    )
    frame = HeadersFrame(stream, block, flags=["END_HEADERS", "END_STREAM"])
    client.relay.send(frame.serialize(), client.connection)
    client.relay.reactor.advance(0)


def test_the_concurrent_streams_bound_is_advertised_and_enforced() -> None:
    relay = h2c_relay(http2_max_streams=2)
    client = Client(relay)
    assert client.h2.remote_settings.max_concurrent_streams == 2
    for _ in range(2):
        client.request("/held")
    raw_headers(client, 5)
    sent = frames(client.transport.value())
    assert any(isinstance(f, (GoAwayFrame, RstStreamFrame)) for f in sent), sent
    assert len(relay.pending_connects()) == 2  # the third stream reached no server


def test_drain_sends_goaway_and_lets_open_streams_finish() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.request("/during")
    upstream, _ = relay.accept_upstream()
    relay.reactor.advance(0)
    client.connection.drain()
    relay.reactor.advance(0)
    (goaway,) = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == stream and goaway.error_code == 0
    client.transport.clear()
    raw_headers(client, stream + 2)  # a stream after the GOAWAY: refused
    upstream.dataReceived(OK)
    relay.reactor.advance(0)
    sent = frames(client.transport.value())
    refused = [f for f in sent if isinstance(f, RstStreamFrame) and f.stream_id == stream + 2]
    assert refused and refused[0].error_code == 7  # REFUSED_STREAM
    data = [f for f in sent if isinstance(f, DataFrame) and f.stream_id == stream]
    assert b"".join(f.data for f in data) == b"hi" and "END_STREAM" in data[-1].flags
    assert client.transport.disconnecting
    assert relay.pending_connects() == []  # the refused stream reached no server


def test_http_1_1_still_works_on_an_h2c_listener() -> None:
    relay = h2c_relay()
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    answer(relay, OK)
    relay.reactor.advance(0)
    assert relay.received().startswith(b"HTTP/1.1 200 OK")


def test_rapid_reset_past_its_bound_gets_goaway_enhance_your_calm() -> None:
    """CVE-2023-44487: streams opened and cancelled at once cost a request each."""
    relay = h2c_relay(keepalive=0)
    client = Client(relay)
    block = None
    for index in range(RESETS + 1):
        stream = 1 + 2 * (index + 1)
        block = client.h2.encoder.encode(
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"e")]
        )
        out = HeadersFrame(stream, block, flags=["END_HEADERS"]).serialize()
        out += RstStreamFrame(stream, error_code=8).serialize()
        relay.send(out, client.connection)
    relay.reactor.advance(0)
    sent = frames(client.transport.value())
    goaways = [f for f in sent if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code == 11  # ENHANCE_YOUR_CALM
    assert client.transport.disconnecting
    assert client.connection.h2.streams == {}  # type: ignore[union-attr]


def test_a_ping_flood_gets_goaway_and_a_few_pings_do_not() -> None:
    relay = h2c_relay()
    client = Client(relay)
    for _ in range(10):
        client.h2.ping(b"12345678")
    client.flush()
    assert not client.transport.disconnecting
    flood = b"".join(
        PingFrame(0, opaque_data=b"%08d" % n).serialize() for n in range(IDLE_FRAMES + 1)
    )
    relay.send(flood, client.connection)
    relay.reactor.advance(0)
    goaways = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code == 11
    assert client.transport.disconnecting


def _goaway_code(client: Client) -> int | None:
    goaways = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
    return goaways[-1].error_code if goaways else None


def test_a_settings_flood_gets_goaway() -> None:
    relay = h2c_relay()
    client = Client(relay)
    client.transport.clear()
    flood = SettingsFrame(0).serialize() * (IDLE_FRAMES + 1)
    relay.send(flood, client.connection)
    relay.reactor.advance(0)
    assert _goaway_code(client) == 11  # ENHANCE_YOUR_CALM
    assert client.transport.disconnecting


def test_an_empty_data_flood_gets_goaway() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        stream,
        [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"e")],
    )
    client.flush()
    client.transport.clear()
    relay.send(DataFrame(stream, b"").serialize() * (IDLE_FRAMES + 1), client.connection)
    relay.reactor.advance(0)
    assert _goaway_code(client) == 11
    assert client.transport.disconnecting


def test_a_window_update_flood_gets_goaway_and_updates_for_data_received_do_not() -> None:
    relay = h2c_relay()
    client = Client(relay)
    stream = client.request("/big")
    answer(relay, b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60000)
    client.flush()
    assert len(client.body(stream)) == 60000
    # One WINDOW_UPDATE per DATA frame received, as a client acknowledging what it read.
    acknowledgements = b"".join(
        WindowUpdateFrame(0, window_increment=16384).serialize() for _ in range(4)
    )
    relay.send(acknowledgements, client.connection)
    assert not client.transport.disconnecting
    flood = WindowUpdateFrame(0, window_increment=1).serialize()
    relay.send(flood * (WINDOW_UPDATES_FREE + IDLE_FRAMES + 1), client.connection)
    relay.reactor.advance(0)
    assert _goaway_code(client) == 11
    assert client.transport.disconnecting


def test_an_hpack_bomb_is_refused_before_any_server_is_asked() -> None:
    relay = h2c_relay(max_header_size=8192)
    client = Client(relay)
    # 4 KB put in the dynamic table once, then referenced by one byte each: a 100-byte block
    # that decodes to 400 KB.
    head = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"e")]
    block = client.h2.encoder.encode([*head, *[(b"x-bomb", b"a" * 4000)] * 100])
    assert len(block) < 4200
    frame = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
    relay.send(frame.serialize(), client.connection)
    relay.reactor.advance(0)
    assert relay.pending_connects() == []
    sent = frames(client.transport.value())
    assert any(isinstance(f, (GoAwayFrame, RstStreamFrame)) for f in sent), sent


@pytest.mark.parametrize(
    ("stream_ids", "code"),
    [
        pytest.param((2,), 1, id="even, the server's own: PROTOCOL_ERROR"),
        pytest.param((5, 3), 1, id="lower than one already opened: PROTOCOL_ERROR"),
        pytest.param((1, 1), 5, id="a closed stream's: STREAM_CLOSED (RFC 9113 5.1)"),
    ],
)
def test_stream_id_abuse_is_a_connection_error(stream_ids: tuple[int, ...], code: int) -> None:
    relay = h2c_relay(routes=(route("/", RespondAction(200, "ok")),))
    client = Client(relay)
    client.transport.clear()
    for stream in stream_ids:
        raw_headers(client, stream)
    assert _goaway_code(client) == code
    assert client.transport.disconnecting


def test_the_flood_bounds_are_per_window() -> None:
    now = [0.0]
    guard = FloodGuard(lambda: now[0], resets=3)
    assert [guard.count("resets") for _ in range(3)] == [None, None, None]
    assert guard.count("resets") == "more than 3 resets in 10s"
    now[0] = 10.0
    assert guard.count("resets") is None


def test_a_continuation_flood_closes_the_connection() -> None:
    relay = h2c_relay()
    client = Client(relay)
    relay.send(HeadersFrame(1, b"", flags=[]).serialize(), client.connection)
    for _ in range(100):
        relay.send(ContinuationFrame(1, b"").serialize(), client.connection)
        if client.transport.disconnecting:
            break
    relay.reactor.advance(0)
    assert client.transport.disconnecting
    assert relay.pending_connects() == []


def test_a_header_list_over_the_bound_is_refused() -> None:
    relay = h2c_relay(max_header_size=2048)
    client = Client(relay)
    stream = client.request("/big", x_big="y" * 4000)
    relay.reactor.advance(0)
    client.flush()
    assert relay.pending_connects() == []
    assert client.of(stream, StreamReset) or client.transport.disconnecting


def test_http2_connections_and_requests_are_counted() -> None:
    relay = h2c_relay()
    client = Client(relay)
    client.request("/counted")
    answer(relay, OK)
    client.flush()
    snapshot = relay.factory.stats.snapshot()
    cells = snapshot["http"]["front"]
    assert cells[""][""][""]["http2_connections"] == 1
    assert cells["*/"]["web"]["127.0.0.1:9001"]["http2_requests"] == 1


def test_the_stream_buffer_is_the_window_the_client_gets() -> None:
    relay = h2c_relay(http2_stream_buffer=32768)
    client = Client(relay)
    assert client.h2.remote_settings.initial_window_size == 32768


def test_a_client_that_takes_nothing_pauses_the_server_and_resumes_it_as_it_reads() -> None:
    relay = h2c_relay(http2_stream_buffer=32768)
    client = Client(relay)
    stream = client.request("/big")
    upstream, transport = relay.accept_upstream()
    relay.reactor.advance(0)
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")
    upstream.dataReceived(b"x" * 150_000)
    relay.reactor.advance(0)
    assert transport.producerState == "paused"  # 65535 sent, the rest held: over the bound
    for _ in range(5):  # the client reads and acknowledges, in a few rounds
        received = client.transport.value()
        client.transport.clear()
        for event in client.h2.receive_data(received):
            if isinstance(event, DataReceived):
                client.h2.acknowledge_received_data(event.flow_controlled_length, stream)
        relay.send(client.h2.data_to_send(), client.connection)
        relay.reactor.advance(0)
        if transport.producerState == "producing":
            break
    assert transport.producerState == "producing"


def test_an_idle_http2_connection_is_sent_goaway_then_closed_after_keepalive_timeout() -> None:
    relay = h2c_relay(keepalive_timeout=5.0)
    client = Client(relay)
    stream = client.request("/one")
    answer(relay, OK)
    client.flush()
    assert client.ended(stream)
    relay.reactor.advance(4.9)
    assert not client.transport.disconnecting
    relay.reactor.advance(0.2)
    goaways = [f for f in frames(client.transport.value()) if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[0].last_stream_id == stream
    assert client.transport.disconnecting


def test_an_answer_before_the_request_body_ends_resets_the_rest_and_the_connection_goes_on() -> (
    None
):
    relay = h2c_relay(
        routes=(route("/early", RespondAction(200, "early")), route("/")),
    )
    client = Client(relay)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(
        stream,
        [
            (b":method", b"POST"),
            (b":path", b"/early"),
            (b":scheme", b"http"),
            (b":authority", b"e"),
        ],
    )
    client.h2.send_data(stream, b"x" * 1000)
    client.flush()
    assert client.status(stream) == 200 and client.body(stream) == b"early"
    assert client.ended(stream)
    (reset,) = client.of(stream, StreamReset)
    assert reset.error_code == 0  # NO_ERROR: the rest of the body is not wanted
    relay.send(DataFrame(stream, b"late").serialize(), client.connection)  # the client's late data
    relay.reactor.advance(0)
    again = client.request("/")
    answer(relay, OK)
    client.flush()
    assert client.body(again) == b"hi"


def test_request_data_left_unread_by_early_answers_is_handed_back_to_the_connection() -> None:
    relay = h2c_relay(routes=(route("/early", RespondAction(200, "early")), route("/")))
    client = Client(relay)
    window = client.h2.outbound_flow_control_window
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"e")]
    # Twice the connection's window in bodies that proxyd drops, answered early or reset
    # by the client before the server took them: each body's bytes count against that
    # window until proxyd hands them back (RFC 9113 6.9); without that, the client could
    # send no more than one window's worth on the connection, ever.
    for index in range(2 * window // 60000):
        stream = client.h2.get_next_available_stream_id()
        path = b"/early" if index % 2 else b"/"
        client.h2.send_headers(stream, [*headers, (b":path", path)])
        for _ in range(4):
            client.h2.send_data(stream, b"x" * 15000)
        client.flush()
        if path == b"/":
            client.h2.reset_stream(stream)
            client.flush()
        else:
            assert client.status(stream) == 200 and client.ended(stream)
    assert client.h2.outbound_flow_control_window > window // 2
