"""The cache filter through the relay, continued: stale responses (RFC 5861's
stale-while-revalidate and stale-if-error, use_stale), collapsing, ranges, HEAD, PURGE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxyd.cache.locks import FetchLocks
from proxyd.relay.http.upstream import UpstreamConnection
from tests.unit.cache_relay import NOW, CacheRelay, Message, response

MAX_AGE = "Cache-Control: max-age=3600"


# RFC 5861 3: stale-while-revalidate.


def test_stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() -> None:
    relay = CacheRelay()
    relay.store("/a", "Cache-Control: max-age=10, stale-while-revalidate=100", 'ETag: "v1"')
    relay.advance(20)
    first = relay.get("/a")  # answered before the origin is asked
    assert first.hit and first.body == b"body" and first.header("age") == "20"
    assert "ttl=-10" in first.cache_status
    second = relay.get("/a")  # the refresh in progress is not made twice
    assert second.hit
    assert len(relay.relay.pending_connects()) == 1
    sent = relay.answer(
        response(
            304,
            'ETag: "v1"',
            "Cache-Control: max-age=60, stale-while-revalidate=100",
            date=relay.now,
        )
    )
    assert sent.header("if-none-match") == '"v1"'
    relay.advance(30)
    fresh = relay.get("/a")
    assert fresh.hit and "ttl=30" in fresh.cache_status
    assert fresh.header("age") == "30"
    clients = [record["client"] for record in relay.relay.log.records]
    assert clients.count("10.0.0.7:40000 (background)") == 1


def test_a_background_refresh_answered_200_replaces_the_stored_response() -> None:
    relay = CacheRelay()
    relay.store("/a", "Cache-Control: max-age=10, stale-while-revalidate=100", body=b"old")
    relay.advance(20)
    assert relay.get("/a").body == b"old"
    relay.answer(response(200, MAX_AGE, body=b"new", date=relay.now))
    assert relay.get("/a").body == b"new"


def test_past_stale_while_revalidate_the_client_waits_for_the_origin() -> None:
    relay = CacheRelay()
    relay.store("/a", "Cache-Control: max-age=10, stale-while-revalidate=5")
    relay.advance(20)
    answer = relay.get("/a", origin=response(200, MAX_AGE, body=b"new", date=relay.now))
    assert answer.body == b"new" and not answer.hit


# RFC 5861 4: stale-if-error, and use_stale.

ERRORS = [
    # (the stored response's Cache-Control, the request's, use_stale, how the origin fails, stale)
    ("max-age=10, stale-if-error=100", "", "", 500, True),
    ("max-age=10, stale-if-error=100", "", "", 503, True),
    ("max-age=10, stale-if-error=100", "", "", "refused", True),
    ("max-age=10, stale-if-error=5", "", "", 500, False),
    ("max-age=10", "stale-if-error=100", "", 500, True),
    ("max-age=10", "", "", 500, False),
    ("max-age=10", "", "", "refused", False),
    ("max-age=10", "", "error", "refused", True),
    ("max-age=10", "", "http_500", 500, True),
    ("max-age=10", "", "http_503", 500, False),
    ("max-age=10, must-revalidate, stale-if-error=100", "", "", 500, False),
    ("max-age=10, stale-if-error=100", "", "", 404, False),
]


@pytest.mark.parametrize(("stored", "asked", "use_stale", "failure", "stale"), ERRORS)
def test_stale_if_error(
    stored: str, asked: str, use_stale: str, failure: int | str, stale: bool
) -> None:
    relay = CacheRelay(use_stale=frozenset(use_stale.split()))
    relay.store("/a", "Cache-Control: " + stored, body=b"stored")
    relay.advance(20)
    fields = ("Cache-Control: " + asked,) if asked else ()
    transport = relay.request("/a", *fields)
    if failure == "refused":
        relay.relay.refuse_upstream()
        relay.settle()
    else:
        assert isinstance(failure, int)
        relay.answer(response(failure, body=b"error", date=relay.now))
    answer = Message(transport.value())
    if stale:
        assert answer.status == 200 and answer.body == b"stored", answer
        assert answer.cache_status.startswith("proxyd; fwd=stale")
        assert answer.header("age") == "20"
    else:
        assert answer.body != b"stored"


def test_use_stale_updating_serves_stale_while_another_request_refreshes() -> None:
    relay = CacheRelay(use_stale=frozenset({"updating"}))
    relay.store("/a", "Cache-Control: max-age=10", body=b"old")
    relay.advance(20)
    waiting = relay.request("/a")
    assert relay.get("/a").body == b"old"  # while the first request revalidates
    relay.answer(response(200, MAX_AGE, body=b"new", date=relay.now))
    assert Message(waiting.value()).body == b"new"


# Collapsing.


def begin_fetch(relay: CacheRelay, target: str = "/a") -> tuple[object, UpstreamConnection]:
    transport = relay.request(target)
    got = relay.upstream()
    assert got is not None
    return transport, got[0]


def test_waiters_are_answered_from_the_fetch_as_it_streams() -> None:
    relay = CacheRelay()
    first, upstream = begin_fetch(relay)
    waiters = [relay.request("/a") for _ in range(3)]
    assert relay.relay.pending_connects() == []
    head = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\n"
    upstream.dataReceived(head + b"01234")
    relay.settle()
    for waiter in waiters:
        partial = Message(waiter.value())
        assert partial.status == 200 and partial.body == b"01234"
        assert "collapsed" in partial.cache_status
    upstream.dataReceived(b"56789")
    relay.settle()
    for waiter in [first, *waiters]:
        assert Message(waiter.value()).body == b"0123456789"  # type: ignore[attr-defined]
    assert len(relay.sent) == 1
    assert relay.get("/a").hit


def test_waiters_go_to_the_origin_when_the_fetch_is_not_stored() -> None:
    relay = CacheRelay()
    _, upstream = begin_fetch(relay)
    waiter = relay.request("/a")
    upstream.dataReceived(response(200, "Cache-Control: no-store", body=b"one"))
    relay.settle()
    assert relay.relay.pending_connects()
    relay.answer(response(200, "Cache-Control: no-store", body=b"two"))
    assert Message(waiter.value()).body == b"two"


def test_waiters_stop_waiting_after_lock_timeout() -> None:
    relay = CacheRelay(lock_timeout=2.0)
    begin_fetch(relay)
    waiter = relay.request("/a")
    assert relay.relay.pending_connects() == []
    relay.advance(2.1)
    relay.answer(response(200, MAX_AGE, body=b"own", date=relay.now))
    assert Message(waiter.value()).body == b"own"


def test_a_waiter_of_a_fetch_cut_midway_is_cut_not_given_a_partial_body() -> None:
    relay = CacheRelay()
    _, upstream = begin_fetch(relay)
    waiter = relay.request("/a")
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\n01"
    )
    relay.settle()
    upstream.transport.loseConnection()
    upstream.connectionLost(None)  # type: ignore[arg-type]
    relay.settle()
    assert waiter.disconnecting
    assert relay.cache.store.entries == 0


# Ranges, HEAD.

RANGES = [
    ("bytes=0-3", 206, b"0123", "bytes 0-3/10"),
    ("bytes=-3", 206, b"789", "bytes 7-9/10"),
    ("bytes=8-", 206, b"89", "bytes 8-9/10"),
    ("bytes=8-100", 206, b"89", "bytes 8-9/10"),
    ("bytes=10-", 416, b"", "bytes */10"),
    ("bytes=x", 200, b"0123456789", None),
]


@pytest.mark.parametrize(("wanted", "status", "body", "content_range"), RANGES)
def test_ranges_from_the_stored_response(
    wanted: str, status: int, body: bytes, content_range: str | None
) -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE, 'ETag: "v1"', body=b"0123456789")
    answer = relay.get("/a", "Range: " + wanted)
    assert (answer.status, answer.body, answer.header("content-range")) == (
        status,
        body,
        content_range,
    )


def test_if_range_that_does_not_match_gets_the_whole_response() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE, 'ETag: "v1"', body=b"0123456789")
    assert relay.get("/a", "Range: bytes=0-1", 'If-Range: "v1"').status == 206
    assert relay.get("/a", "Range: bytes=0-1", 'If-Range: "v2"').status == 200


def test_a_range_request_that_misses_fetches_and_stores_the_whole_response() -> None:
    relay = CacheRelay()
    relay.get("/a", "Range: bytes=0-1", origin=response(200, MAX_AGE, body=b"0123", date=relay.now))
    assert relay.origin_requests()[0].header("range") is None
    assert relay.get("/a", "Range: bytes=0-1").body == b"01"


def test_head_is_answered_from_the_stored_get() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE, body=b"0123456789")
    answer = relay.get("/a", method="HEAD")
    assert answer.hit and answer.body == b"" and answer.header("content-length") == "10"


def test_a_head_miss_fetches_the_get_stores_it_and_answers_without_a_body() -> None:
    relay = CacheRelay()
    answer = relay.get(
        "/a", method="HEAD", origin=response(200, MAX_AGE, body=b"0123456789", date=relay.now)
    )
    assert relay.origin_requests()[0].method == "GET"
    assert answer.status == 200 and answer.body == b""
    assert answer.header("content-length") == "10"
    again = relay.get("/a")
    assert again.hit and again.body == b"0123456789"


def test_a_head_miss_of_a_response_not_stored_is_sent_as_head() -> None:
    relay = CacheRelay()
    transport = relay.request("/a", method="HEAD")
    relay.answer(response(200, "Cache-Control: no-store", body=b"0123456789", date=relay.now))
    relay.answer(response(200, "Cache-Control: no-store", body=b"", date=relay.now))
    answer = Message(transport.value())
    assert answer.status == 200 and answer.body == b""
    assert [m.method for m in relay.origin_requests()] == ["GET", "HEAD"]


# PURGE, Set-Cookie.


def test_purge_method_purges_the_url() -> None:
    relay = CacheRelay(purge_method=True)
    relay.store("/a", MAX_AGE)
    purged = relay.get("/a", method="PURGE")
    assert purged.status == 200 and purged.body == b'{"purged": 1}\n'
    assert relay.get("/a", method="PURGE").status == 404
    assert not relay.get("/a", origin=response(200, MAX_AGE, date=relay.now)).hit


def test_soft_purge_makes_the_response_stale() -> None:
    relay = CacheRelay(purge_method=True)
    relay.store("/a", MAX_AGE, 'ETag: "v1"')
    relay.get("/a", "X-Purge-Soft: 1", method="PURGE")
    again = relay.get("/a", origin=response(304, 'ETag: "v1"', date=relay.now))
    assert "fwd=stale; fwd-status=304" in again.cache_status
    assert relay.get("/a").hit


def test_purge_without_purge_method_goes_to_the_origin() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE)
    relay.get("/a", method="PURGE", origin=response(405, body=b"no", date=relay.now))
    assert relay.get("/a").hit


def test_proxyds_own_answer_when_no_server_answers_carries_cache_status() -> None:
    relay = CacheRelay()
    transport = relay.request("/a")
    relay.relay.refuse_upstream()
    relay.settle()
    answer = Message(transport.value())
    assert answer.status == 502
    assert answer.cache_status == "proxyd; fwd=uri-miss"


def test_a_miss_another_process_fetches_waits_for_its_lock_then_fetches(tmp_path: Path) -> None:
    relay = CacheRelay(path=str(tmp_path / "cache"), lock_timeout=5.0)
    other = FetchLocks(str(tmp_path / "cache" / "locks"), relay.reactor.seconds)
    key = b"http://example.test/a"
    assert other.claim(key, ttl=1e12)
    os.utime(other._path(key), (NOW, NOW))  # made now, as the disk tier's clock says
    transport = relay.request("/a")
    relay.advance(1.0)
    assert not relay.relay.pending_connects()  # waiting on the other process
    other.release(key)
    relay.advance(0.05)
    relay.answer(response(200, MAX_AGE, date=relay.now))
    assert Message(transport.value()).status == 200


def test_a_miss_waits_on_another_process_at_most_lock_timeout(tmp_path: Path) -> None:
    relay = CacheRelay(path=str(tmp_path / "cache"), lock_timeout=2.0)
    other = FetchLocks(str(tmp_path / "cache" / "locks"), lambda: 0.0)
    assert other.claim(b"http://example.test/a", ttl=1e12)
    os.utime(other._path(b"http://example.test/a"), (NOW, NOW))
    relay.request("/a")
    relay.advance(1.9)
    assert not relay.relay.pending_connects()
    relay.advance(0.2)
    assert relay.relay.pending_connects()
