"""etcd discovery: the JSON gateway's messages, the servers under a prefix, and the driver's
read, watch, reconnect from its revision and re-read on compaction, over a fake HTTP client
on MemoryReactorClock."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.config.model import PoolConfig
from proxyd.discovery.etcd import (
    Compacted,
    EtcdError,
    EtcdServers,
    Event,
    Lines,
    WatchMessage,
    parse_range,
    parse_watch,
    range_end,
    range_request,
    watch_request,
)
from proxyd.discovery.etcd_driver import EtcdDriver
from proxyd.discovery.service import Source
from proxyd.pool import Pool

PREFIX = "/proxyd/api/"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kv(key: str, value: str | None = None, revision: int = 2) -> dict[str, Any]:
    found: dict[str, Any] = {"key": b64(key), "mod_revision": str(revision)}
    if value is not None:
        found["value"] = b64(value)
    return found


def range_answer(revision: int, values: dict[str, str]) -> bytes:
    body: dict[str, Any] = {"header": {"revision": str(revision)}}
    if values:
        body["kvs"] = [kv(k, v) for k, v in values.items()]
        body["count"] = str(len(values))
    return json.dumps(body).encode()


def watch_line(revision: int, *events: tuple[str, str | None]) -> bytes:
    result: dict[str, Any] = {"header": {"revision": str(revision)}}
    if events:
        result["events"] = [
            {"kv": kv(k, v, revision)} if v is not None else {"type": "DELETE", "kv": kv(k)}
            for k, v in events
        ]
    else:
        result["created"] = True
    return json.dumps({"result": result}).encode() + b"\n"


def test_the_range_of_a_prefix_is_the_prefix_with_its_last_byte_incremented() -> None:
    assert range_end(b"/p/") == b"/p0"
    assert range_end(b"a\xff") == b"b"
    assert range_end(b"\xff") == b"\0"
    assert json.loads(range_request(b"foo")) == {"key": "Zm9v", "range_end": "Zm9w"}
    create = json.loads(watch_request(b"foo", 7))["create_request"]
    assert create == {"key": "Zm9v", "range_end": "Zm9w", "start_revision": "7"}


def test_a_range_answer_gives_the_revision_and_values() -> None:
    revision, values = parse_range(range_answer(5, {PREFIX + "a": "127.0.0.1:8001 weight=2"}))
    assert revision == 5
    assert values == {PREFIX + "a": "127.0.0.1:8001 weight=2"}
    assert parse_range(range_answer(3, {})) == (3, {})


def test_watch_events_put_and_delete() -> None:
    message = parse_watch(watch_line(9, (PREFIX + "a", "127.0.0.1:8001"), (PREFIX + "b", None)))
    assert message == WatchMessage(
        (Event(PREFIX + "a", "127.0.0.1:8001"), Event(PREFIX + "b", None)), 9
    )
    assert parse_watch(watch_line(3)) == WatchMessage((), 3)


def test_a_compacted_watch_and_errors_are_told_apart() -> None:
    compacted = {"result": {"header": {}, "canceled": True, "compact_revision": "3"}}
    with pytest.raises(Compacted):
        parse_watch(json.dumps(compacted).encode())
    with pytest.raises(EtcdError, match="cancelled"):
        parse_watch(json.dumps({"result": {"canceled": True}}).encode())
    with pytest.raises(EtcdError, match="etcd error: boom"):
        parse_watch(b'{"error": {"message": "boom"}}')
    with pytest.raises(EtcdError):
        parse_watch(b"not json")


def test_lines_are_whole_however_the_stream_is_cut() -> None:
    data = watch_line(2) + watch_line(3, ("k", "127.0.0.1:1"))
    for cut in range(len(data)):
        lines = Lines()
        found = [*lines.feed(data[:cut]), *lines.feed(data[cut:])]
        assert [parse_watch(line).revision for line in found] == [2, 3]


def test_values_that_do_not_parse_are_left_out_and_the_bound_holds() -> None:
    state = EtcdServers(limit=2)
    state.reset(
        4, {"/p/a": "127.0.0.1:8001 weight=2", "/p/b": "nonsense", "/p/c": "127.0.0.1:8003"}
    )
    found = state.found()
    assert [(s.name, s.weight) for s in found.servers] == [
        ("127.0.0.1:8001", 2),
        ("127.0.0.1:8003", 1),
    ]
    assert found.left_out == 0
    assert list(state.invalid) == ["/p/b"]
    assert state.apply(WatchMessage((Event("/p/d", "127.0.0.1:8004 backup"),), 5))
    found = state.found()
    assert [s.name for s in found.servers] == ["127.0.0.1:8001", "127.0.0.1:8003"]
    assert found.left_out == 1
    assert not state.apply(WatchMessage((Event("/p/d", "127.0.0.1:8004 backup"),), 6))
    assert state.revision == 6


class FakeResponse:
    def __init__(self, code: int, body: bytes = b"", end: bool = True) -> None:
        self.code = code
        self.body = body
        self.end = end
        self.phrase = b"OK"
        self.protocol: Any = None
        self.length = len(body)

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(StringTransport())
        if self.body:
            protocol.dataReceived(self.body)
        if self.end:
            protocol.connectionLost(Failure(ResponseDone()))


class FakePost:
    """Records each POST; the test answers them."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, Any], defer.Deferred[Any]]] = []

    def __call__(self, url: bytes, body: bytes) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.requests.append((url, json.loads(body), d))
        return d

    def last(self) -> tuple[bytes, dict[str, Any], defer.Deferred[Any]]:
        return self.requests[-1]


class Harness:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.config = DiscoveryConfig("etcd", PREFIX, endpoint="http://127.0.0.1:2379")
        self.pool = Pool(PoolConfig("api", (), discovery=self.config), self.reactor)
        self.source = Source(self.pool, self.config)
        self.post = FakePost()
        self.driver = EtcdDriver(self.reactor, self.config, self.source, self.post)
        self.source.driver = self.driver

    def discovered(self) -> list[str]:
        return [s.name for s in self.pool.discovered]

    def answer_range(self, revision: int, values: dict[str, str]) -> None:
        url, _, d = self.post.last()
        assert url.endswith(b"/v3/kv/range")
        d.callback(FakeResponse(200, range_answer(revision, values)))

    def answer_watch(self) -> FakeResponse:
        url, _, d = self.post.last()
        assert url.endswith(b"/v3/watch")
        response = FakeResponse(200, watch_line(0), end=False)
        d.callback(response)
        return response


def test_the_driver_reads_then_watches_from_the_revision_after() -> None:
    h = Harness()
    h.driver.start()
    h.answer_range(10, {PREFIX + "a": "127.0.0.1:8001"})
    assert h.discovered() == ["127.0.0.1:8001"]
    url, body, _ = h.post.last()
    assert url == b"http://127.0.0.1:2379/v3/watch"
    assert body["create_request"]["start_revision"] == "11"
    stream = h.answer_watch()
    stream.protocol.dataReceived(watch_line(11, (PREFIX + "b", "127.0.0.1:8002 weight=3")))
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.1:8002"]
    stream.protocol.dataReceived(watch_line(12, (PREFIX + "a", None)))
    assert h.discovered() == ["127.0.0.1:8002"]
    assert h.source.updates == 3


def test_a_broken_watch_reconnects_with_backoff_from_its_revision() -> None:
    h = Harness()
    h.driver.start()
    h.answer_range(10, {PREFIX + "a": "127.0.0.1:8001"})
    stream = h.answer_watch()
    stream.protocol.dataReceived(watch_line(14, (PREFIX + "b", "127.0.0.1:8002")))
    stream.protocol.connectionLost(Failure(ConnectionRefusedError()))
    assert h.source.failing
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.1:8002"]
    count = len(h.post.requests)
    h.reactor.advance(1)
    assert len(h.post.requests) == count + 1
    _, body, d = h.post.last()
    assert body["create_request"]["start_revision"] == "15"
    d.errback(Failure(ConnectionRefusedError()))  # etcd still down: keep the list, back off
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.1:8002"]
    h.reactor.advance(1.9)
    assert len(h.post.requests) == count + 1
    h.reactor.advance(0.1)
    assert len(h.post.requests) == count + 2
    assert h.post.last()[1]["create_request"]["start_revision"] == "15"
    h.answer_watch()
    assert not h.source.failing


def test_a_compacted_revision_reads_everything_again() -> None:
    h = Harness()
    h.driver.start()
    h.answer_range(10, {PREFIX + "a": "127.0.0.1:8001"})
    stream = h.answer_watch()
    compacted = {"result": {"header": {}, "canceled": True, "compact_revision": "20"}}
    stream.protocol.dataReceived(json.dumps(compacted).encode() + b"\n")
    h.reactor.advance(0)
    assert h.post.last()[0].endswith(b"/v3/kv/range")
    h.answer_range(25, {PREFIX + "c": "127.0.0.1:8003"})
    assert h.discovered() == ["127.0.0.1:8003"]
    assert h.post.last()[1]["create_request"]["start_revision"] == "26"


def test_a_read_that_hangs_times_out_and_is_retried() -> None:
    h = Harness()
    h.driver.start()
    _, _, first = h.post.last()
    h.reactor.advance(10)
    assert first.called  # cancelled
    assert h.source.failing
    h.reactor.advance(1)
    assert h.post.last()[0].endswith(b"/v3/kv/range")
    assert len(h.post.requests) == 2


def test_an_http_error_is_a_failure() -> None:
    h = Harness()
    h.driver.start()
    h.post.last()[2].callback(FakeResponse(503, b"{}"))
    assert h.source.failing and h.source.failures == 1


def test_stop_abandons_the_watch() -> None:
    h = Harness()
    h.driver.start()
    h.answer_range(10, {})
    stream = h.answer_watch()
    h.driver.stop()
    stream.protocol.connectionLost(Failure(ResponseDone()))
    assert not h.reactor.getDelayedCalls()
    assert not h.source.failing


def test_a_watch_message_of_another_shape_breaks_the_stream_not_the_client() -> None:
    h = Harness()
    h.driver.start()
    h.answer_range(10, {PREFIX + "a": "127.0.0.1:8001"})
    stream = h.answer_watch()
    stream.protocol.dataReceived(b'{"result": {"events": ["not an object"]}}\n')
    assert h.source.failing and "unexpected watch message" in h.source.outage.reason
    assert h.discovered() == ["127.0.0.1:8001"]
    h.reactor.advance(1)
    assert h.post.last()[1]["create_request"]["start_revision"] == "11"
