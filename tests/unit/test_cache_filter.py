"""The cache filter (proxyd.filters.cache) through the relay, per RFC 9111 section: what is
stored (3), how freshness and age are computed (4.2), what a request's directives do (5.2.1),
Authorization (3.5), Vary (4.1), validation (4.3), invalidation (4.4), Cache-Status
(RFC 9211) and Age. tests/unit/test_cache_filter_reuse.py has the stale responses (RFC 5861),
collapsing, ranges, HEAD and PURGE."""

from __future__ import annotations

import io
import json

import pytest

from proxyd.accesslog import AccessLog
from tests.unit.cache_relay import CacheRelay, Message, http_date, response

MAX_AGE = "Cache-Control: max-age=3600"


def stored_then_again(
    *fields: str, status: int = 200, later: float = 0, request: tuple[str, ...] = ()
) -> tuple[CacheRelay, Message]:
    """A response with `fields` fetched once, then the same request `later` seconds on: the
    second response, whether from the cache or (answered again by the origin) not."""
    relay = CacheRelay()
    relay.get("/a", *request, origin=response(status, *fields, date=relay.now))
    relay.advance(later)
    transport = relay.request("/a", *request)
    if relay.relay.pending_connects():
        relay.answer(response(status, *fields, body=b"again", date=relay.now))
    return relay, Message(transport.value())


# RFC 9111 3: storing responses.

STORED = [
    ("max-age", (MAX_AGE,), 200),
    ("s-maxage", ("Cache-Control: s-maxage=3600",), 200),
    ("Expires", ("Expires: " + http_date(1_700_000_000 + 3600),), 200),
    (
        "public with Last-Modified",
        ("Cache-Control: public", "Last-Modified: " + http_date(1e9)),
        200,
    ),
    ("heuristic 200", ("Last-Modified: " + http_date(1_600_000_000),), 200),
    ("heuristic 404", ("Last-Modified: " + http_date(1_600_000_000),), 404),
    ("heuristic 410", ("Last-Modified: " + http_date(1_600_000_000),), 410),
    ("private names a field", ('Cache-Control: max-age=3600, private="X-Secret"',), 200),
    ("no-cache names a field", ('Cache-Control: max-age=3600, no-cache="X-Secret"',), 200),
    (
        "must-understand overrides no-store",
        ("Cache-Control: max-age=3600, no-store, must-understand",),
        200,
    ),
    ("302 with max-age", (MAX_AGE,), 302),
    ("307 with max-age", (MAX_AGE,), 307),
    ("500 with max-age", (MAX_AGE,), 500),
    ("204 with max-age", (MAX_AGE,), 204),
    ("299 with max-age", (MAX_AGE,), 299),
]


@pytest.mark.parametrize(("why", "fields", "status"), STORED, ids=[s[0] for s in STORED])
def test_a_storable_response_is_served_from_the_cache(
    why: str, fields: tuple[str, ...], status: int
) -> None:
    relay, again = stored_then_again(*fields, status=status, later=10)
    assert again.hit, again
    assert again.status == status
    assert again.header("age") == "10"
    assert len(relay.sent) == 1


NOT_STORED = [
    ("no-store", ("Cache-Control: max-age=3600, no-store",), 200, "no-store"),
    ("private", ("Cache-Control: max-age=3600, private",), 200, "private"),
    ("Vary: *", (MAX_AGE, "Vary: *"), 200, "Vary:-*"),
    ("Set-Cookie", (MAX_AGE, "Set-Cookie: a=b"), 200, "set-cookie"),
    ("no freshness, status 302", ("Last-Modified: " + http_date(1_600_000_000),), 302, None),
    ("no freshness, status 500", ("Last-Modified: " + http_date(1_600_000_000),), 500, None),
    (
        "must-understand on a status not understood",
        ("Cache-Control: max-age=3600, must-understand",),
        299,
        None,
    ),
    ("206", (MAX_AGE, "Content-Range: bytes 0-3/10"), 206, None),
]


@pytest.mark.parametrize(
    ("why", "fields", "status", "detail"), NOT_STORED, ids=[s[0] for s in NOT_STORED]
)
def test_a_response_not_storable_goes_to_the_origin_again(
    why: str, fields: tuple[str, ...], status: int, detail: str | None
) -> None:
    relay = CacheRelay()
    first = relay.get("/a", origin=response(status, *fields, date=relay.now))
    assert "stored" not in first.cache_status
    if detail is not None:
        assert f"detail={detail}" in first.cache_status, first.cache_status
    again = relay.get("/a", origin=response(status, *fields, date=relay.now))
    assert not again.hit
    assert len(relay.sent) == 2


def test_fields_private_or_no_cache_name_are_not_stored_and_the_rest_is_reused() -> None:
    _, again = stored_then_again(
        'Cache-Control: max-age=3600, private="X-Secret", no-cache="X-Other"',
        "X-Secret: s",
        "X-Other: o",
        "X-Kept: k",
    )
    assert again.hit, again
    assert again.header("x-secret") is None and again.header("x-other") is None
    assert again.header("x-kept") == "k"


def test_a_request_with_no_store_is_not_stored_but_may_be_served_a_stored_response() -> None:
    relay = CacheRelay()
    relay.get("/a", "Cache-Control: no-store", origin=response(200, MAX_AGE, date=relay.now))
    relay.get("/a", origin=response(200, MAX_AGE, date=relay.now))
    assert relay.get("/a", "Cache-Control: no-store").hit
    assert len(relay.sent) == 2


def test_store_set_cookie_stores_the_response_without_its_set_cookie() -> None:
    relay = CacheRelay(store_set_cookie=True)
    relay.store("/a", MAX_AGE, "Set-Cookie: a=b")
    again = relay.get("/a")
    assert again.hit and again.header("set-cookie") is None


def test_no_store_and_bypass_conditions() -> None:
    from proxyd.cache.keys import Condition

    relay = CacheRelay(
        no_store=(Condition("header", "x-nostore"),), bypass=(Condition("cookie", "session"),)
    )
    relay.get("/a", "X-Nostore: 1", origin=response(200, MAX_AGE, date=relay.now))
    assert (
        len(relay.cache.store.variants(relay.cache.store.variants and b"http://example.test/a"))
        == 0
    )
    relay.store("/a", MAX_AGE)
    bypassed = relay.get("/a", "Cookie: session=x", origin=response(200, MAX_AGE, date=relay.now))
    assert "fwd=bypass" in bypassed.cache_status
    assert relay.get("/a", "Cookie: session=0").hit


# RFC 9111 4.2: freshness and age.

FRESHNESS = [
    # (fields, seconds later, served from the cache)
    ((MAX_AGE,), 3599, True),
    ((MAX_AGE,), 3601, False),
    (("Cache-Control: max-age=3600, s-maxage=10",), 11, False),
    (("Cache-Control: max-age=10, s-maxage=3600",), 11, True),
    (("Cache-Control: max-age=3600", "Expires: " + http_date(1_700_000_000 - 10)), 100, True),
    (("Expires: " + http_date(1_700_000_000 + 100),), 99, True),
    (("Expires: " + http_date(1_700_000_000 + 100),), 101, False),
    (("Expires: 0",), 0, False),
    (("Expires: not a date",), 0, False),
    (("Cache-Control: max-age=3600", "Age: 3000"), 599, True),
    (("Cache-Control: max-age=3600", "Age: 3000"), 601, False),
    (("Cache-Control: max-age=3600", "Age: 7200"), 0, False),
    (("Cache-Control: max-age=3600", "Age: 2147483648"), 0, False),
    # Last-Modified 10000 s before Date: fresh for 1000 s by the heuristic.
    (("Last-Modified: " + http_date(1_700_000_000 - 10000),), 999, True),
    (("Last-Modified: " + http_date(1_700_000_000 - 10000),), 1001, False),
    ((), 0, False),
    (("Cache-Control: max-age=-1",), 0, False),
    (("Cache-Control: max-age=3600, max-age=1",), 0, False),
]


@pytest.mark.parametrize(("fields", "later", "hit"), FRESHNESS)
def test_freshness_lifetime_and_current_age(
    fields: tuple[str, ...], later: float, hit: bool
) -> None:
    _, again = stored_then_again(*fields, later=later)
    assert again.hit is hit, again


def test_a_date_in_the_past_counts_in_the_age() -> None:
    relay = CacheRelay()
    relay.get("/a", origin=response(200, MAX_AGE, date=relay.now - 600))
    again = relay.get("/a")
    assert again.hit and again.header("age") == "600"
    assert "ttl=3000" in again.cache_status


def test_the_response_delay_counts_in_the_age() -> None:
    relay = CacheRelay()
    transport = relay.request("/a")
    relay.advance(5)
    relay.answer(response(200, MAX_AGE, "Age: 10", date=relay.now))
    assert Message(transport.value()).header("age") == "10"  # passed on as received
    again = relay.get("/a")
    assert again.header("age") == "15"  # 10 + the 5 s the origin took


def test_heuristic_freshness_is_not_used_for_a_status_not_heuristically_cacheable() -> None:
    _, again = stored_then_again("Last-Modified: " + http_date(1_600_000_000), status=302)
    assert not again.hit


def test_heuristic_off() -> None:
    relay = CacheRelay(heuristic=False)
    first = relay.get(
        "/a", origin=response(200, "Last-Modified: " + http_date(1e9), date=relay.now)
    )
    assert "detail=heuristic-off" in first.cache_status


# RFC 9111 5.2.1: request directives.

REQUESTS = [
    # (the response's fields, seconds later, the request's Cache-Control, served from the cache)
    ((MAX_AGE,), 100, "max-age=200", True),
    ((MAX_AGE,), 100, "max-age=50", False),
    ((MAX_AGE,), 100, "max-age=0", False),
    ((MAX_AGE,), 100, "min-fresh=3000", True),
    ((MAX_AGE,), 100, "min-fresh=3550", False),
    ((MAX_AGE,), 100, "no-cache", False),
    (("Cache-Control: max-age=10",), 100, "max-stale=100", True),
    (("Cache-Control: max-age=10",), 100, "max-stale=80", False),
    (("Cache-Control: max-age=10",), 100, "max-stale", True),
    (("Cache-Control: max-age=10, must-revalidate",), 100, "max-stale", False),
    (("Cache-Control: max-age=10, proxy-revalidate",), 100, "max-stale", False),
    (("Cache-Control: s-maxage=10",), 100, "max-stale", False),
]


@pytest.mark.parametrize(("fields", "later", "directives", "hit"), REQUESTS)
def test_request_directives(
    fields: tuple[str, ...], later: float, directives: str, hit: bool
) -> None:
    _, again = stored_then_again(*fields, later=later, request=("Cache-Control: " + directives,))
    assert again.hit is hit, again


def test_only_if_cached_without_a_stored_response_is_answered_504() -> None:
    relay = CacheRelay()
    answer = relay.get("/a", "Cache-Control: only-if-cached")
    assert answer.status == 504
    assert "fwd=" in answer.cache_status
    relay.store("/a", "Cache-Control: max-age=10")
    relay.advance(20)
    assert relay.get("/a", "Cache-Control: only-if-cached").status == 504
    assert relay.get("/a", "Cache-Control: only-if-cached, max-stale").hit


def test_a_request_no_cache_revalidates_with_the_stored_validators() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE, 'ETag: "v1"', "Last-Modified: " + http_date(1e9))
    again = relay.get(
        "/a", "Cache-Control: no-cache", origin=response(304, 'ETag: "v1"', date=relay.now)
    )
    sent = relay.origin_requests()[1]
    assert sent.header("if-none-match") == '"v1"'
    assert sent.header("if-modified-since") == http_date(1e9)
    assert again.status == 200 and again.body == b"body"
    assert "fwd=stale; fwd-status=304" in again.cache_status


# RFC 9111 3.5: Authorization.

AUTHORIZED = [
    (MAX_AGE, False),
    ("Cache-Control: max-age=3600, public", True),
    ("Cache-Control: s-maxage=3600", True),
    ("Cache-Control: max-age=3600, must-revalidate", True),
]


@pytest.mark.parametrize(("cache_control", "stored"), AUTHORIZED)
def test_a_response_to_a_request_with_authorization(cache_control: str, stored: bool) -> None:
    _, again = stored_then_again(cache_control, request=("Authorization: Basic eDp5",))
    assert again.hit is stored


# RFC 9111 4.1: Vary.


def test_vary_stores_one_response_per_variant() -> None:
    relay = CacheRelay()
    relay.get(
        "/a", "Foo: 1", origin=response(200, MAX_AGE, "Vary: Foo", body=b"one", date=relay.now)
    )
    other = relay.get(
        "/a", "Foo: 2", origin=response(200, MAX_AGE, "Vary: Foo", body=b"two", date=relay.now)
    )
    assert "fwd=vary-miss" in other.cache_status
    assert relay.get("/a", "Foo: 1").body == b"one"
    assert relay.get("/a", "Foo: 2").body == b"two"
    absent = relay.get(
        "/a", origin=response(200, MAX_AGE, "Vary: Foo", body=b"none", date=relay.now)
    )
    assert absent.body == b"none"
    empty = relay.get(
        "/a", "Foo:", origin=response(200, MAX_AGE, "Vary: Foo", body=b"empty", date=relay.now)
    )
    assert empty.body == b"empty"
    assert relay.get("/a").body == b"none"
    assert relay.get("/a", "Foo:").body == b"empty"


def test_vary_on_two_fields_over_two_lines_normalised() -> None:
    relay = CacheRelay()
    relay.get(
        "/a",
        "Accept-Language: en, FR",
        "Foo: 1",
        origin=response(200, MAX_AGE, "Vary: Accept-Language", "Vary: foo", date=relay.now),
    )
    assert relay.get("/a", "Accept-Language: fr,en", "Foo: 1").hit
    assert not relay.get(
        "/a", "Accept-Language: fr,en", "Foo: 2", origin=response(200, date=relay.now)
    ).hit


ENCODINGS = [
    ("gzip, deflate, br", "br, gzip, deflate", True),
    ("gzip, deflate, br", "gzip, deflate, br, zstd", False),
    ("gzip", "gzip;q=1.0", True),
    ("gzip, br;q=0", "gzip", True),
    ("gzip", "identity", False),
    ("gzip, br", "GZIP,BR", True),
]


@pytest.mark.parametrize(("first", "second", "shared"), ENCODINGS)
def test_vary_accept_encoding_keys_on_the_accepted_codings(
    first: str, second: str, shared: bool
) -> None:
    relay = CacheRelay()
    relay.get(
        "/a",
        "Accept-Encoding: " + first,
        origin=response(200, MAX_AGE, "Vary: Accept-Encoding", date=relay.now),
    )
    transport = relay.request("/a", "Accept-Encoding: " + second)
    assert (not relay.relay.pending_connects()) is shared
    if not shared:
        relay.answer(response(200, MAX_AGE, "Vary: Accept-Encoding", date=relay.now))
    assert Message(transport.value()).status == 200


# RFC 9111 4.3: validation.


def test_a_304_freshens_the_stored_fields_but_not_the_content_fields() -> None:
    relay = CacheRelay()
    relay.store(
        "/a",
        "Cache-Control: max-age=10",
        'ETag: "v1"',
        "X-Test: old",
        "Content-Type: text/plain",
        body=b"stored",
    )
    relay.advance(20)
    revalidated = relay.get(
        "/a",
        origin=response(
            304,
            "Cache-Control: max-age=100",
            'ETag: "v1"',
            "X-Test: new",
            "X-New: 1",
            "Content-Type: text/html",
            "Content-Length: 999",
            date=relay.now,
        ),
    )
    assert revalidated.status == 200 and revalidated.body == b"stored"
    assert revalidated.header("x-test") == "new" and revalidated.header("x-new") == "1"
    assert revalidated.header("content-type") == "text/plain"
    assert revalidated.header("content-length") == "6"
    relay.advance(50)
    again = relay.get("/a")
    assert again.hit and again.header("x-test") == "new"
    assert again.header("age") == "50"


def test_a_304_with_another_strong_etag_does_not_freshen() -> None:
    relay = CacheRelay()
    relay.store("/a", "Cache-Control: max-age=10", 'ETag: "v1"')
    relay.advance(20)
    relay.get(
        "/a", origin=response(304, 'ETag: "v2"', "Cache-Control: max-age=100", date=relay.now)
    )
    relay.advance(1)
    assert not relay.get("/a", origin=response(200, MAX_AGE, date=relay.now)).hit


def test_a_200_to_a_revalidation_replaces_the_stored_response() -> None:
    relay = CacheRelay()
    relay.store("/a", "Cache-Control: max-age=10", 'ETag: "v1"', body=b"one")
    relay.advance(20)
    fresh = relay.get(
        "/a", origin=response(200, MAX_AGE, 'ETag: "v2"', body=b"two", date=relay.now)
    )
    assert fresh.body == b"two" and "stored" in fresh.cache_status
    again = relay.get("/a")
    assert again.hit and again.body == b"two"


CLIENT_CONDITIONS = [
    ('If-None-Match: "v1"', 304),
    ('If-None-Match: W/"v1"', 304),
    ('If-None-Match: "v0", "v1"', 304),
    ("If-None-Match: *", 304),
    ('If-None-Match: "v2"', 200),
    ("If-Modified-Since: " + http_date(1_600_000_000), 304),
    ("If-Modified-Since: " + http_date(1_500_000_000), 200),
]


@pytest.mark.parametrize(("condition", "status"), CLIENT_CONDITIONS)
def test_a_client_conditional_is_answered_from_the_cache(condition: str, status: int) -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE, 'ETag: "v1"', "Last-Modified: " + http_date(1_600_000_000))
    answer = relay.get("/a", condition)
    assert answer.status == status and answer.hit
    if status == 304:
        assert answer.body == b""
        assert answer.header("etag") == '"v1"'
        assert answer.header("age") is not None


# RFC 9111 4.4: invalidation.

UNSAFE = ["POST", "PUT", "DELETE", "PATCH", "M-SEARCH"]


@pytest.mark.parametrize("method", UNSAFE)
def test_an_unsafe_method_invalidates_the_target_uri(method: str) -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE)
    relay.get("/a", method=method, origin=response(200, date=relay.now, body=b""))
    assert not relay.get("/a", origin=response(200, MAX_AGE, date=relay.now)).hit


def test_an_error_response_to_an_unsafe_method_does_not_invalidate() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE)
    relay.get("/a", method="POST", origin=response(500, date=relay.now, body=b""))
    assert relay.get("/a").hit


LOCATIONS = [
    ("Location: /b", "/b", True),
    ("Content-Location: /b", "/b", True),
    ("Location: http://example.test/b", "/b", True),
    ("Location: b", "/b", True),
    ("Location: http://other.test/b", "/b", False),
    ("Location: https://example.test/b", "/b", False),
]


@pytest.mark.parametrize(("field", "target", "invalidated"), LOCATIONS)
def test_location_and_content_location_of_the_same_origin_are_invalidated(
    field: str, target: str, invalidated: bool
) -> None:
    relay = CacheRelay()
    relay.store(target, MAX_AGE)
    relay.get("/a", method="POST", origin=response(201, field, date=relay.now, body=b""))
    relay.request(target)
    assert bool(relay.relay.pending_connects()) is invalidated


def test_a_safe_method_invalidates_nothing() -> None:
    relay = CacheRelay()
    relay.store("/a", MAX_AGE)
    relay.get("/a", method="OPTIONS", origin=response(200, date=relay.now, body=b""))
    assert relay.get("/a").hit


# Cache-Status (RFC 9211) and Age.


def test_cache_status_values() -> None:
    relay = CacheRelay()
    first = relay.store("/a", "Cache-Control: max-age=10", 'ETag: "v1"')
    assert first.cache_status == "proxyd; fwd=uri-miss; fwd-status=200; stored"
    assert first.header("age") is None
    hit = relay.get("/a")
    assert hit.cache_status == "proxyd; hit; ttl=10"
    relay.advance(20)
    stale = relay.get("/a", origin=response(304, 'ETag: "v1"', date=relay.now))
    assert stale.cache_status == "proxyd; fwd=stale; fwd-status=304"
    relay.get("/b", origin=response(200, MAX_AGE, "Vary: Foo", date=relay.now))
    vary = relay.get(
        "/b", "Foo: 1", origin=response(200, "Cache-Control: no-store", date=relay.now)
    )
    assert vary.cache_status == "proxyd; fwd=vary-miss; fwd-status=200; detail=no-store"


def test_an_upstream_caches_status_is_kept_before_ours() -> None:
    relay = CacheRelay()
    first = relay.get("/a", origin=response(200, MAX_AGE, "Cache-Status: cdn; hit", date=relay.now))
    assert first.headers("cache-status")[0] == "cdn; hit"
    assert first.headers("cache-status")[-1].startswith("proxyd; fwd=uri-miss")


def test_tag_fields_are_kept_out_of_what_clients_get_miss_and_hit() -> None:
    relay = CacheRelay()
    first = relay.get("/a", origin=response(200, MAX_AGE, "Surrogate-Key: a b", date=relay.now))
    assert first.header("surrogate-key") is None
    again = Message(relay.request("/a").value())
    assert again.hit and again.header("surrogate-key") is None


def test_the_cache_status_members_of_caches_before_this_one_are_kept_ours_last() -> None:
    relay = CacheRelay()
    upstream = "Cache-Status: shield; fwd=uri-miss; stored"
    first = relay.get("/a", origin=response(200, MAX_AGE, upstream, date=relay.now))
    assert first.headers("cache-status")[0] == "shield; fwd=uri-miss; stored"
    assert first.headers("cache-status")[-1].startswith("proxyd; fwd=uri-miss")
    again = Message(relay.request("/a").value())
    assert again.headers("cache-status")[0] == "shield; fwd=uri-miss; stored"
    assert again.headers("cache-status")[-1].startswith("proxyd; hit")


def test_the_access_log_says_what_the_cache_did() -> None:
    relay = CacheRelay()
    stream = io.StringIO()
    relay.relay.factory.access_log = AccessLog(stream, "memory")
    relay.get("/a", origin=response(200, MAX_AGE, date=relay.now))
    relay.request("/a")
    relay.request("/a", method="POST")
    relay.answer(response(500, date=relay.now))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["cache"] for line in lines] == ["miss", "hit", None]
