"""A route's max_in_flight, max_queued and queue_timeout (proxyd.filters.concurrency) through
the HTTP relay on StringTransports and a MemoryReactorClock: one at the server, the next
waiting its turn, the one after refused 503 with Retry-After; a wait that times out; a client
that leaves its place."""

from __future__ import annotations

from proxyd.config.model import ProxyAction
from tests.unit.test_http_relay import OK, Relay, field, route
from tests.unit.test_security_filters import errors, get, status


def relay(max_queued: int = 1, timeout: float = 2.0) -> Relay:
    action = ProxyAction(pool="web", max_in_flight=1, max_queued=max_queued, queue_timeout=timeout)
    return Relay(routes=(route("/", action),), keepalive=0)


def test_one_at_the_server_the_next_waits_the_one_after_is_refused() -> None:
    r = relay()
    r.send(get("/first"))
    first, _first_transport = r.accept_upstream()
    second, second_transport = r.connect_client("10.0.0.8")
    second.dataReceived(get("/second"))
    assert r.pending_connects() == []  # waiting for the slot
    third, third_transport = r.connect_client("10.0.0.9")
    third.dataReceived(get("/third"))
    refused = third_transport.value()
    assert status(refused) == 503 and field(refused, "Retry-After") == [b"2"]
    first.dataReceived(OK)  # the first exchange ends: its slot goes to the second
    assert status(r.received()) == 200
    assert len(r.pending_connects()) == 1
    upstream, transport = r.accept_upstream()
    assert transport.value().startswith(b"GET /second ")
    upstream.dataReceived(OK)
    assert status(second_transport.value()) == 200
    assert errors(r) == {"queue_full": 1}
    assert [record.get("error") for record in r.log.records] == ["route queue full", None, None]


def test_a_wait_past_queue_timeout_is_answered_503() -> None:
    r = relay(timeout=2.0)
    r.send(get("/first"))
    r.accept_upstream()
    waiting, transport = r.connect_client("10.0.0.8")
    waiting.dataReceived(get("/second"))
    r.reactor.advance(1.9)
    assert transport.value() == b""
    r.reactor.advance(0.1)
    answer = transport.value()
    assert status(answer) == 503 and field(answer, "Retry-After") == [b"2"]
    assert errors(r) == {"queue_timeout": 1}


def test_a_client_that_leaves_gives_up_its_place() -> None:
    r = relay(max_queued=1)
    r.send(get("/first"))
    first, _ = r.accept_upstream()
    waiting, transport = r.connect_client("10.0.0.8")
    waiting.dataReceived(get("/second"))
    transport.loseConnection()
    waiting.connectionLost(None)  # type: ignore[arg-type]
    other, other_transport = r.connect_client("10.0.0.9")
    other.dataReceived(get("/third"))  # the place is free again
    assert other_transport.value() == b""
    first.dataReceived(OK)
    assert len(r.pending_connects()) == 1


def test_without_a_queue_the_request_past_the_limit_is_refused_at_once() -> None:
    r = relay(max_queued=0)
    r.send(get("/first"))
    r.accept_upstream()
    late, transport = r.connect_client("10.0.0.8")
    late.dataReceived(get("/second"))
    assert status(transport.value()) == 503
