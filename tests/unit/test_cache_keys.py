"""proxyd.cache.keys: the cache key, the effective URI, bypass conditions."""

from __future__ import annotations

import pytest

from proxyd.cache.keys import Condition, KeyRule, cache_key, effective_uri, holds, keyed_query


@pytest.mark.parametrize(
    ("scheme", "host", "expected"),
    [
        ("http", "Example.COM", "http://example.com/p"),
        ("http", "example.com:80", "http://example.com/p"),
        ("https", "example.com:443", "https://example.com/p"),
        ("http", "example.com:8080", "http://example.com:8080/p"),
        ("https", "example.com:80", "https://example.com:80/p"),
    ],
)
def test_effective_uri_lower_cases_the_host_and_drops_the_default_port(
    scheme: str, host: str, expected: str
) -> None:
    assert effective_uri(scheme, host, "/p", "") == expected


def test_query_params_ignored_by_name_and_prefix_and_sorted() -> None:
    rule = KeyRule(ignore_params=frozenset({"utm_*", "fbclid"}), sort_params=True)
    assert keyed_query("b=2&utm_source=x&a=1&fbclid=9&utm=3", rule) == "a=1&b=2&utm=3"
    assert keyed_query("b=2&a=1", KeyRule()) == "b=2&a=1"


def test_key_shares_entries_across_ignored_params_but_uri_keeps_them() -> None:
    rule = KeyRule(ignore_params=frozenset({"utm_source"}))
    key1, uri1 = cache_key("http", "h", "/p", "a=1&utm_source=x", [], rule)
    key2, uri2 = cache_key("http", "h", "/p", "a=1", [], rule)
    assert key1 == key2 and uri1 != uri2


def test_key_headers_make_distinct_keys() -> None:
    rule = KeyRule(headers=(b"x-tenant",))
    one, _ = cache_key("http", "h", "/p", "", [(b"X-Tenant", b"a")], rule)
    two, _ = cache_key("http", "h", "/p", "", [(b"x-tenant", b"b")], rule)
    none, _ = cache_key("http", "h", "/p", "", [], rule)
    assert len({one, two, none}) == 3


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ([(b"Cookie", b"a=1; session=abc")], "", "cookie:session"),
        ([(b"Cookie", b"session=0")], "", None),
        ([(b"Cookie", b"session=")], "", None),
        ([(b"X-No-Cache", b"1")], "", "header:x-no-cache"),
        ([], "nocache=1", "query:nocache"),
        ([], "nocache=0&x=1", None),
        ([], "", None),
    ],
)
def test_conditions_hold_for_present_nonempty_non_zero_values(
    headers: list[tuple[bytes, bytes]], query: str, expected: str | None
) -> None:
    conditions = (
        Condition("cookie", "session"),
        Condition("header", "x-no-cache"),
        Condition("query", "nocache"),
    )
    assert holds(conditions, headers, query) == expected
