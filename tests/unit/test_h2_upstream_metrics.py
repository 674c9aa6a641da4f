"""The HTTP/2 upstream metrics (proxyd.relay.http.h2_upstream_metrics) as the connections and
streams of an h2c pool count them, at each step: over StringTransport and MemoryReactorClock
with the `h2` package as the server (tests/unit/test_h2_upstream.py's relay)."""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes

from proxyd.relay.http.h2_upstream_metrics import RESET_REASONS, H2Metrics
from proxyd.relay.http.h2_upstreams import H2Upstreams

from .test_h2_upstream import H2Relay
from .test_http_relay import GET

SERVER = "127.0.0.1:9001"


def counts(relay: H2Relay, server: str = SERVER) -> dict[str, Any]:
    return relay.h2.counts.servers[server].snapshot()


def figures(
    connections: int = 0, streams: int = 0, streams_total: int = 0, **resets: int
) -> dict[str, Any]:
    return {
        "connections": connections,
        "streams": streams,
        "streams_total": streams_total,
        "resets": {reason: resets.get(reason, 0) for reason in RESET_REASONS},
    }


def test_every_server_of_the_pool_has_its_counts_before_any_connection() -> None:
    relay = H2Relay(servers=2)
    assert sorted(relay.h2.counts.servers) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert counts(relay, "127.0.0.1:9002") == figures()


def test_a_request_opens_a_connection_and_a_stream_that_close_in_turn() -> None:
    relay = H2Relay(pool_keepalive_timeout=5.0)
    relay.send(GET)
    assert counts(relay) == figures()  # connecting: not open yet
    server = relay.accept_server()
    assert counts(relay) == figures(connections=1, streams=1, streams_total=1)
    server.respond(1, b"hello")
    assert relay.received().endswith(b"hello\r\n0\r\n\r\n")
    assert counts(relay) == figures(connections=1, streams_total=1)
    relay.reactor.advance(5.0)  # idle for the pool's keepalive_timeout
    assert server.transport.disconnecting
    server.conn.connectionLost(None)  # type: ignore[arg-type]
    assert counts(relay) == figures(streams_total=1)


def test_streams_multiplexed_on_one_connection_each_count() -> None:
    relay = H2Relay()
    other, _ = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server()
    relay.send(GET, other)
    server.pump()
    assert counts(relay) == figures(connections=1, streams=2, streams_total=2)
    server.respond(3, b"second")
    assert counts(relay) == figures(connections=1, streams=1, streams_total=2)
    server.respond(1, b"first")
    assert counts(relay) == figures(connections=1, streams_total=2)


def test_a_refused_stream_counts_and_its_retry_is_a_new_stream() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    server.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    server.pump()
    assert counts(relay) == figures(connections=1, streams=1, streams_total=2, refused=1)
    server.respond(3, b"done")
    assert counts(relay) == figures(connections=1, streams_total=2, refused=1)


def test_streams_above_a_goaway_count_and_their_connection_stays_open_until_done() -> None:
    relay = H2Relay()
    other, _ = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server()
    relay.send(GET, other)
    server.pump()
    server.h2.close_connection(last_stream_id=1)
    server.h2.state_machine.state = server.h2.state_machine.state.SERVER_OPEN  # keep serving 1
    server.pump()
    assert counts(relay) == figures(connections=1, streams=1, streams_total=2, goaway=1)
    second = relay.accept_server()  # stream 3 sent again on a new connection
    assert counts(relay) == figures(connections=2, streams=2, streams_total=3, goaway=1)
    server.respond(1, b"one")
    assert server.transport.disconnecting
    server.conn.connectionLost(None)  # type: ignore[arg-type]
    assert counts(relay) == figures(connections=1, streams=1, streams_total=3, goaway=1)
    second.respond(1, b"two")
    assert counts(relay) == figures(connections=1, streams_total=3, goaway=1)


def test_a_server_reset_before_the_response_end_counts_and_the_connection_stays() -> None:
    relay = H2Relay()
    relay.send(GET)
    server = relay.accept_server()
    server.respond(1, b"part", end=False)
    server.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    server.pump()
    assert counts(relay) == figures(connections=1, streams_total=1, server_reset=1)


def test_a_stream_reset_once_its_response_is_whole_is_no_early_end() -> None:
    relay = H2Relay()
    relay.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    server = relay.accept_server()
    # Answered before the request body's end: the rest is not wanted (RFC 9113 8.1).
    server.h2.send_headers(1, [(b":status", b"200")])
    server.h2.send_data(1, b"early", end_stream=True)
    server.h2.reset_stream(1, ErrorCodes.NO_ERROR)
    server.pump()
    assert relay.received().endswith(b"early\r\n0\r\n\r\n")
    assert counts(relay) == figures(connections=1, streams_total=1)


def test_a_client_gone_cancels_its_stream() -> None:
    relay = H2Relay()
    relay.send(GET)
    relay.accept_server()
    relay.client.connectionLost(None)  # type: ignore[arg-type]
    assert counts(relay) == figures(connections=1, streams_total=1, cancelled=1)


def test_a_lost_connection_counts_its_unfinished_streams() -> None:
    relay = H2Relay(retries=0)
    other, _ = relay.connect_client("10.0.0.8")
    relay.send(GET)
    server = relay.accept_server()
    relay.send(GET, other)
    server.pump()
    server.respond(1, b"first")
    assert counts(relay) == figures(connections=1, streams=1, streams_total=2)
    server.conn.connectionLost(None)  # type: ignore[arg-type]
    assert counts(relay) == figures(streams_total=2, connection_lost=1)


def test_a_pool_rebuilt_by_a_reload_counts_on_where_the_old_one_did() -> None:
    relay = H2Relay()
    metrics = H2Metrics()
    first = H2Upstreams(relay.reactor, relay.h2.config, None, metrics)
    first.counts.server(SERVER).streams_total += 3
    again = H2Upstreams(relay.reactor, relay.h2.config, None, metrics)
    assert again.counts is first.counts
    assert metrics.snapshot() == {"web": {SERVER: figures(streams_total=3)}}
