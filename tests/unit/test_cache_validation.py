"""proxyd.cache.validation: Vary's secondary keys normalised (RFC 9111 4.1), the fields a 304
freshens (3.2) and whether it validates the stored response (4.3.4), and a client's own
conditional request answered from the stored response (RFC 9110 13.2.2)."""

from __future__ import annotations

import pytest

from proxyd.cache.validation import (
    VARY_STAR,
    Conditional,
    client_condition,
    freshen,
    validates,
    vary_key,
    vary_names,
)


def test_vary_names_are_lower_case_sorted_once_and_star_is_no_match() -> None:
    headers = [(b"Vary", b"Accept-Encoding, User-Agent"), (b"vary", b"accept-encoding , Origin")]
    assert vary_names(headers) == (b"accept-encoding", b"origin", b"user-agent")
    assert vary_names([(b"Vary", b"Origin, *")]) is VARY_STAR
    assert vary_names([]) == ()


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ([(b"Accept-Encoding", b"gzip, br")], [(b"accept-encoding", b"br,gzip")], True),
        ([(b"Accept-Encoding", b"GZIP")], [(b"Accept-Encoding", b"gzip")], True),
        (
            [(b"Accept-Encoding", b"gzip"), (b"Accept-Encoding", b"br")],
            [(b"Accept-Encoding", b"br, gzip")],
            True,
        ),
        ([(b"Accept-Encoding", b"gzip")], [(b"Accept-Encoding", b"br")], False),
        ([(b"Accept-Encoding", b"gzip;q=0")], [(b"Accept-Encoding", b"gzip")], False),
        ([], [(b"Accept-Encoding", b"")], False),  # absent is not empty
        ([(b"Origin", b"https://a.example")], [(b"Origin", b"https://A.example")], False),
        ([(b"Origin", b"https://a.example")], [(b"Origin", b" https://a.example ")], True),
    ],
)
def test_vary_keys_of_equivalent_requests_are_equal(first: list, second: list, same: bool) -> None:
    names = (b"accept-encoding", b"origin")
    assert (vary_key(names, first) == vary_key(names, second)) is same


def test_a_304_freshens_the_stored_fields_but_not_the_contents_own() -> None:
    stored = [
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"120"),
        (b"Cache-Control", b"max-age=60"),
        (b"ETag", b'"v1"'),
        (b"X-Old", b"kept"),
    ]
    update = [
        (b"cache-control", b"max-age=600"),
        (b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
        (b"Content-Length", b"0"),
        (b"Connection", b"close"),
        (b"ETag", b'"v1"'),
    ]
    assert freshen(stored, update) == [
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"120"),
        (b"X-Old", b"kept"),
        (b"cache-control", b"max-age=600"),
        (b"Date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
        (b"ETag", b'"v1"'),
    ]


@pytest.mark.parametrize(
    ("stored", "not_modified", "applies"),
    [
        ([(b"ETag", b'"v1"')], [(b"ETag", b'"v1"')], True),
        ([(b"ETag", b'"v1"')], [(b"ETag", b'"v2"')], False),
        ([(b"ETag", b'W/"v1"')], [(b"ETag", b'"v1"')], False),  # strong needs strong
        ([(b"ETag", b'"v1"')], [(b"ETag", b'W/"v1"')], True),  # weak: weak comparison
        ([], [(b"ETag", b'"v1"')], False),
        (
            [(b"Last-Modified", b"Sun, 06 Nov 1994 08:49:37 GMT")],
            [(b"Last-Modified", b"Sunday, 06-Nov-94 08:49:37 GMT")],
            True,
        ),
        (
            [(b"Last-Modified", b"Sun, 06 Nov 1994 08:49:37 GMT")],
            [(b"Last-Modified", b"Mon, 07 Nov 1994 08:49:37 GMT")],
            False,
        ),
        ([(b"ETag", b'"v1"')], [], True),
    ],
)
def test_a_304_validates_the_stored_response_it_matches(
    stored: list, not_modified: list, applies: bool
) -> None:
    assert validates(stored, not_modified) is applies


STORED = [(b"ETag", b'"v7"'), (b"Last-Modified", b"Sun, 06 Nov 1994 08:49:37 GMT")]


@pytest.mark.parametrize(
    ("method", "request_headers", "answer"),
    [
        (b"GET", [], Conditional.NONE),
        (b"GET", [(b"If-None-Match", b'"v7"')], Conditional.NOT_MODIFIED),
        (b"GET", [(b"If-None-Match", b'W/"v7"')], Conditional.NOT_MODIFIED),
        (b"HEAD", [(b"If-None-Match", b'"a", "v7"')], Conditional.NOT_MODIFIED),
        (b"GET", [(b"If-None-Match", b"*")], Conditional.NOT_MODIFIED),
        (b"GET", [(b"If-None-Match", b'"v6"')], Conditional.FULL),
        # If-None-Match wins over If-Modified-Since (13.2.2).
        (
            b"GET",
            [(b"If-None-Match", b'"v6"'), (b"If-Modified-Since", b"Mon, 07 Nov 1994 08:49:37 GMT")],
            Conditional.FULL,
        ),
        (
            b"GET",
            [(b"If-Modified-Since", b"Sun, 06 Nov 1994 08:49:37 GMT")],
            Conditional.NOT_MODIFIED,
        ),
        (b"GET", [(b"If-Modified-Since", b"Sat, 05 Nov 1994 08:49:37 GMT")], Conditional.FULL),
        (b"GET", [(b"If-Modified-Since", b"not a date")], Conditional.NONE),
        (b"POST", [(b"If-None-Match", b'"v7"')], Conditional.NONE),
    ],
)
def test_a_clients_conditional_request_from_the_stored_response(
    method: bytes, request_headers: list, answer: Conditional
) -> None:
    assert client_condition(method, request_headers, STORED) is answer
