"""The sans-IO HTTP/1.1 framing layer: request and response readers over llhttp, the limits
they enforce, the smuggling vectors they refuse, and the writer functions that feed them."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd.relay.http.h1 import RequestReader, ResponseReader
from proxyd.relay.http.messages import (
    Body,
    End,
    Headers,
    HttpError,
    Request,
    Response,
    chunk,
    last_chunk,
    request_head,
    response_head,
)

EVENT_TYPES = (Request, Response, Body, End, HttpError)

# An eof() in the middle of a list of pieces given to `run`.
EOF = None


def run(reader: RequestReader | ResponseReader, *pieces: bytes | None) -> list[Any]:
    """Feed each piece (None: eof, responses only), taking every event after each feed."""
    events: list[Any] = []
    for piece in pieces:
        if piece is None:
            assert isinstance(reader, ResponseReader)
            reader.eof()
        else:
            reader.feed(piece)
        while (event := reader.next_event()) is not None:
            events.append(event)
    return events


def requests(*pieces: bytes, **limits: int) -> list[Any]:
    return run(RequestReader(**limits), *pieces)


def body_of(events: list[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def kinds(events: list[Any]) -> list[type]:
    return [type(e) for e in events]


def assert_finished_for_good(reader: RequestReader | ResponseReader) -> None:
    """Once finished, a reader takes no more bytes and produces no more events."""
    assert reader.finished
    reader.feed(b"GET /more HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.next_event() is None
    assert reader.finished


def refused(data: bytes, status: int = 400, **limits: int) -> list[Any]:
    """Feed `data` at once and check it ends in an HttpError(status) and a dead reader."""
    reader = RequestReader(**limits)
    events = run(reader, data)
    assert events, "no event at all"
    error = events[-1]
    assert isinstance(error, HttpError), events
    assert error.status == status, error
    assert [e for e in events if isinstance(e, HttpError)] == [error]
    assert_finished_for_good(reader)
    return events


def targets(events: list[Any]) -> list[bytes]:
    return [e.target for e in events if isinstance(e, Request)]


GOOD = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"


def bad_head(*fields: bytes, request_line: bytes = b"GET /bad HTTP/1.1") -> bytes:
    return request_line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def assert_smuggling_refused(bad: bytes) -> None:
    """The bad message, after a good one in the same pipeline, gets a 400 and no Request."""
    events = refused(GOOD + bad + GOOD)
    assert targets(events) == [b"/ok"]
    assert kinds(events) == [Request, End, HttpError]


# 1. Request framing.


def test_simple_get_gives_head_and_end() -> None:
    events = requests(b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n")
    assert kinds(events) == [Request, End]
    head = events[0]
    assert head.method == b"GET"
    assert head.target == b"/index.html?q=1"
    assert head.version == "1.1"
    assert head.headers == [(b"Host", b"example.test"), (b"Accept", b"*/*")]
    assert head.host == b"example.test"
    assert head.keep_alive
    assert not head.chunked
    assert head.content_length is None
    assert not head.has_body
    assert not head.expect_continue
    assert not head.upgrade
    assert events[1].trailers is None


def test_http11_request_is_keep_alive_by_default() -> None:
    (head, _) = requests(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.keep_alive


def test_http11_request_with_connection_close_is_not_keep_alive() -> None:
    (head, _) = requests(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not head.keep_alive


def test_http10_request_closes_by_default() -> None:
    (head, _) = requests(b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == "1.0"
    assert not head.keep_alive


def test_http10_request_with_connection_keep_alive_is_keep_alive() -> None:
    (head, _) = requests(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert head.keep_alive


def test_content_length_body_is_delivered_then_end() -> None:
    events = requests(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
    head = events[0]
    assert head.content_length == 11
    assert head.has_body
    assert not head.chunked
    assert body_of(events) == b"hello world"
    assert isinstance(events[-1], End)


def test_content_length_body_split_across_feeds_is_delivered_as_it_arrives() -> None:
    reader = RequestReader()
    head_events = run(reader, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert kinds(head_events) == [Request, Body]
    rest = run(reader, b"def")
    assert kinds(rest) == [Body, End]
    assert body_of(head_events + rest) == b"abcdef"


def test_chunked_body_with_extensions_and_trailers() -> None:
    events = requests(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value;flag\r\nhello\r\n"
        b"6\r\n world\r\n"
        b"0;last=1\r\nChecksum: abc\r\nX-Done: yes\r\n\r\n"
    )
    head = events[0]
    assert head.chunked
    assert head.content_length is None
    assert head.has_body
    assert body_of(events) == b"hello world"
    end = events[-1]
    assert isinstance(end, End)
    assert end.trailers == [(b"Checksum", b"abc"), (b"X-Done", b"yes")]
    # Trailers are not mixed into the head's fields.
    assert head.headers == [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]


def test_pipelined_requests_give_their_events_in_order() -> None:
    events = requests(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
        b"DELETE /4 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert kinds(events) == [Request, End, Request, Body, End, Request, Body, End, Request, End]
    assert targets(events) == [b"/1", b"/2", b"/3", b"/4"]
    assert [e.data for e in events if isinstance(e, Body)] == [b"abc", b"de"]


def test_expect_100_continue_sets_the_flag() -> None:
    (head, *_) = requests(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
    )
    assert head.expect_continue


def test_expect_other_than_100_continue_does_not_set_the_flag() -> None:
    (head, *_) = requests(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 0\r\n\r\n"
    )
    assert not head.expect_continue


def test_upgrade_request_finishes_the_reader_with_the_bytes_after_its_head() -> None:
    reader = RequestReader()
    events = run(
        reader,
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello GET / HTTP/1.1\r\n",
    )
    assert kinds(events) == [Request, End]
    assert events[0].upgrade
    assert reader.upgraded == b"\x81\x05hello GET / HTTP/1.1\r\n"
    assert_finished_for_good(reader)


def test_upgrade_request_with_nothing_after_its_head_has_empty_upgraded_bytes() -> None:
    reader = RequestReader()
    run(reader, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert reader.upgraded == b""
    assert reader.finished


def test_connect_finishes_the_reader_with_the_tunnelled_bytes() -> None:
    reader = RequestReader()
    events = run(reader, b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n\x00\x01raw")
    assert kinds(events) == [Request, End]
    assert events[0].method == b"CONNECT"
    assert events[0].target == b"db.test:5432"
    assert events[0].upgrade
    assert reader.upgraded == b"\x00\x01raw"
    assert_finished_for_good(reader)


def test_absolute_form_target_is_passed_through() -> None:
    (head, _) = requests(b"GET http://x.test:8080/p/q?r=s HTTP/1.1\r\nHost: x.test:8080\r\n\r\n")
    assert head.target == b"http://x.test:8080/p/q?r=s"
    assert head.host == b"x.test:8080"


def test_reader_is_in_head_only_while_a_head_is_incomplete() -> None:
    reader = RequestReader()
    assert not reader.in_head
    run(reader, b"GET / HTTP/1.1\r\nHo")
    assert reader.in_head
    run(reader, b"st: a\r\n\r\n")
    assert not reader.in_head


# 2. Limits.


def test_header_block_over_limit_in_one_piece_is_refused_with_431() -> None:
    events = refused(bad_head(b"Host: a", b"X-Big: " + b"a" * 2000), 431, max_header_size=1024)
    assert targets(events) == []


def test_header_block_within_limit_is_accepted() -> None:
    events = requests(bad_head(b"Host: a", b"X: " + b"a" * 900), max_header_size=1024)
    assert kinds(events) == [Request, End]


def test_one_header_field_dribbled_forever_is_refused_with_431_not_buffered() -> None:
    limit = 1024
    reader = RequestReader(max_header_size=limit)
    run(reader, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    sent = 0
    while not reader.finished and sent < 20 * limit:
        reader.feed(b"a")
        sent += 1
    assert reader.finished, "a field growing forever was buffered without bound"
    assert sent <= limit + 1
    error = reader.next_event()
    assert isinstance(error, HttpError)
    assert error.status == 431
    assert reader.next_event() is None
    assert_finished_for_good(reader)


def test_many_small_fields_dribbled_over_the_header_limit_are_refused_with_431() -> None:
    reader = RequestReader(max_header_size=1024, max_headers=1000)
    events = run(reader, b"GET / HTTP/1.1\r\nHost: a\r\n", *[b"X-Field: value\r\n"] * 100)
    assert kinds(events) == [HttpError]
    assert events[0].status == 431
    assert reader.finished


def test_dribbled_status_line_of_a_response_is_bounded() -> None:
    reader = ResponseReader(max_header_size=1024)
    run(reader, b"HTTP/1.1 200 ")
    sent = 0
    while not reader.finished and sent < 20 * 1024:
        reader.feed(b"O")
        sent += 1
    assert reader.finished
    assert isinstance(reader.next_event(), HttpError)


def test_too_many_header_fields_are_refused_with_431() -> None:
    fields = [b"Host: a"] + [b"X-%d: v" % i for i in range(5)]
    events = refused(bad_head(*fields), 431, max_headers=5)
    assert targets(events) == []
    assert kinds(requests(bad_head(*fields[:5]), max_headers=5)) == [Request, End]


def test_request_target_over_limit_is_refused_with_414() -> None:
    events = refused(
        b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, max_uri_length=100
    )
    assert targets(events) == []


def test_request_target_at_limit_is_accepted() -> None:
    events = requests(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\nHost: a\r\n\r\n", max_uri_length=100)
    assert len(events[0].target) == 100


def test_request_target_dribbled_over_limit_is_refused_with_414() -> None:
    reader = RequestReader(max_uri_length=100)
    events = run(reader, b"GET /", *[b"a"] * 200)
    assert kinds(events) == [HttpError]
    assert events[0].status == 414
    assert reader.finished


def test_content_length_over_body_limit_is_refused_with_413_at_the_head() -> None:
    # Only the head is sent: the refusal must not wait for the body.
    events = refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", 413, max_body_size=10
    )
    assert kinds(events) == [HttpError]


def test_content_length_at_body_limit_is_accepted() -> None:
    events = requests(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789", max_body_size=10
    )
    assert kinds(events) == [Request, Body, End]


def test_chunked_body_growing_over_body_limit_is_refused_with_413() -> None:
    reader = RequestReader(max_body_size=10)
    events = run(
        reader,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        *[b"4\r\nabcd\r\n"] * 5,
    )
    assert kinds(events) == [Request, Body, Body, HttpError]
    assert events[-1].status == 413
    assert len(body_of(events)) <= 10
    assert_finished_for_good(reader)


@pytest.mark.parametrize(
    ("version", "status"),
    [
        (b"HTTP/2.0", 505),
        (b"HTTP/0.9", 505),
        (b"HTTP/1.2", 400),
        (b"HTTP/3.0", 400),
        (b"HTTP/9.9", 400),
        (b"HTTP/1.10", 400),
        (b"HTTPS/1.1", 400),
    ],
)
def test_unsupported_versions_are_refused(version: bytes, status: int) -> None:
    events = refused(b"GET / " + version + b"\r\nHost: a\r\n\r\n", status)
    assert kinds(events) == [HttpError]


def test_request_line_without_version_is_refused() -> None:
    assert kinds(refused(b"GET /\r\n\r\n", 505)) == [HttpError]


# 3. Smuggling.


def test_content_length_with_transfer_encoding_is_refused() -> None:
    assert_smuggling_refused(
        bad_head(
            b"Host: a",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            request_line=b"POST /bad HTTP/1.1",
        )
        + b"0\r\n\r\n"
    )


def test_transfer_encoding_with_content_length_after_it_is_refused() -> None:
    assert_smuggling_refused(
        bad_head(
            b"Host: a",
            b"Transfer-Encoding: chunked",
            b"Content-Length: 5",
            request_line=b"POST /bad HTTP/1.1",
        )
        + b"0\r\n\r\n"
    )


@pytest.mark.parametrize(("first", "second"), [(b"3", b"3"), (b"3", b"4"), (b"0", b"3")])
def test_two_content_length_fields_are_refused(first: bytes, second: bytes) -> None:
    assert_smuggling_refused(
        bad_head(
            b"Host: a",
            b"Content-Length: " + first,
            b"Content-Length: " + second,
            request_line=b"POST /bad HTTP/1.1",
        )
        + b"abcd"
    )


@pytest.mark.parametrize(
    "value", [b"3, 3", b"3,3", b"3, 4", b"+3", b"-3", b"0x3", b"3 3", b"", b"9" * 25]
)
def test_invalid_content_length_value_is_refused(value: bytes) -> None:
    assert_smuggling_refused(
        bad_head(b"Host: a", b"Content-Length: " + value, request_line=b"POST /bad HTTP/1.1")
        + b"abc"
    )


CHUNKED_HEAD = b"POST /outer HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


def assert_bad_chunking_refused(chunks: bytes) -> list[Any]:
    """A body error is found after the (valid) head was delivered: what matters is that the
    reader stops there, so nothing hidden in or after the body becomes a request."""
    events = refused(GOOD + CHUNKED_HEAD + chunks + SMUGGLED)
    assert targets(events) == [b"/ok", b"/outer"]
    assert not any(isinstance(e, End) for e in events[2:])
    return events


@pytest.mark.parametrize(
    "size",
    [b"zz", b"-3", b"ffffffffffffffffff", b"3 ", b" 3", b"0x3", b"+3", b""],
    ids=["letters", "negative", "overflow", "space-after", "space-before", "0x", "plus", "empty"],
)
def test_invalid_chunk_size_is_refused(size: bytes) -> None:
    events = assert_bad_chunking_refused(size + b"\r\nabc\r\n0\r\n\r\n")
    assert body_of(events) == b""


def test_missing_crlf_after_chunk_data_is_refused() -> None:
    events = assert_bad_chunking_refused(b"3\r\nabcXX0\r\n\r\n")
    assert body_of(events) == b"abc"


def test_chunk_data_longer_than_its_size_is_refused() -> None:
    assert_bad_chunking_refused(b"3\r\nabcdef\r\n0\r\n\r\n")


def test_bare_lf_after_chunk_size_is_refused() -> None:
    assert_bad_chunking_refused(b"3\nabc\r\n0\r\n\r\n")


@pytest.mark.parametrize("fold", [b" ", b"\t"], ids=["space", "tab"])
def test_obs_fold_is_refused(fold: bytes) -> None:
    assert_smuggling_refused(bad_head(b"Host: a", b"X-Folded: one", fold + b"two"))


@pytest.mark.parametrize("fold", [b" ", b"\t"], ids=["space", "tab"])
def test_whitespace_before_the_first_field_is_refused(fold: bytes) -> None:
    assert_smuggling_refused(bad_head(fold + b"X: a", b"Host: a"))


def test_bare_cr_in_a_field_value_is_refused() -> None:
    assert_smuggling_refused(bad_head(b"Host: a", b"X: one\rTransfer-Encoding: chunked"))


def test_bare_lf_line_endings_are_refused() -> None:
    assert_smuggling_refused(b"GET /bad HTTP/1.1\nHost: a\n\n")


def test_bare_lf_ending_one_field_is_refused() -> None:
    assert_smuggling_refused(b"GET /bad HTTP/1.1\r\nHost: a\nX: b\r\n\r\n")


@pytest.mark.parametrize(
    "field",
    [b"X Y: a", b"X : a", b": a", b"X\x00: a", b"X\x7f: a", b'X"Y: a', b"X(Y): a"],
    ids=["space-inside", "space-before-colon", "empty", "nul", "del", "quote", "parens"],
)
def test_invalid_field_name_is_refused(field: bytes) -> None:
    assert_smuggling_refused(bad_head(b"Host: a", field))


def test_space_before_colon_in_transfer_encoding_is_refused() -> None:
    assert_smuggling_refused(
        bad_head(b"Host: a", b"Transfer-Encoding : chunked", request_line=b"POST /bad HTTP/1.1")
        + b"0\r\n\r\n"
    )


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01b", b"a\x7fb"], ids=["nul", "control", "del"])
def test_control_character_in_a_field_value_is_refused(value: bytes) -> None:
    assert_smuggling_refused(bad_head(b"Host: a", b"X: " + value))


TE_NOT_CHUNKED_LAST = [
    b"gzip",
    b"chunked, gzip",
    b"xchunked",
    b"chunked,",
    b"chunked\r\nTransfer-Encoding: gzip",
    b"chunked\r\nTransfer-Encoding: chunked",
]


@pytest.mark.parametrize("coding", TE_NOT_CHUNKED_LAST)
def test_transfer_encoding_not_ending_in_chunked_is_refused(coding: bytes) -> None:
    events = refused(
        GOOD
        + bad_head(b"Host: a", b"Transfer-Encoding: " + coding, request_line=b"POST /bad HTTP/1.1")
        + b"0\r\n\r\n"
        + GOOD
    )
    # Whatever reached the reader, the bad message is never completed.
    assert kinds(events)[:2] == [Request, End]
    assert not any(isinstance(e, Body | End) for e in events[2:])


@pytest.mark.parametrize(
    "coding",
    [
        b"gzip",
        b"chunked, gzip",
        b"xchunked",
        b"gzip, xchunked",
        b"chunked\r\nTransfer-Encoding: gzip",
    ],
)
def test_transfer_encoding_not_ending_in_chunked_gives_no_request_event(coding: bytes) -> None:
    assert_smuggling_refused(
        bad_head(b"Host: a", b"Transfer-Encoding: " + coding, request_line=b"POST /bad HTTP/1.1")
        + b"0\r\n\r\n"
    )


def test_transfer_encoding_in_http10_request_is_refused() -> None:
    assert_smuggling_refused(
        bad_head(b"Transfer-Encoding: chunked", request_line=b"POST /bad HTTP/1.0") + b"0\r\n\r\n"
    )


def test_http11_request_without_host_is_refused() -> None:
    assert_smuggling_refused(bad_head(b"Accept: */*"))


def test_http10_request_without_host_is_accepted() -> None:
    (head, _) = requests(b"GET / HTTP/1.0\r\n\r\n")
    assert head.host == b""


@pytest.mark.parametrize(("first", "second"), [(b"a", b"b"), (b"a", b"a")])
def test_two_host_fields_are_refused(first: bytes, second: bytes) -> None:
    assert_smuggling_refused(bad_head(b"Host: " + first, b"host: " + second))


@pytest.mark.parametrize(
    "method",
    [b"get", b"Get", b"G@T", b"GE T", b"\x00GET"],
    ids=["lower", "mixed", "at", "sp", "nul"],
)
def test_invalid_method_is_refused(method: bytes) -> None:
    assert_smuggling_refused(bad_head(b"Host: a", request_line=method + b" /bad HTTP/1.1"))


def test_nothing_is_read_after_a_refusal() -> None:
    reader = RequestReader()
    run(reader, b"get / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.finished
    assert run(reader, GOOD, GOOD) == []


def test_trailer_field_growing_forever_is_refused_with_431() -> None:
    reader = RequestReader(max_header_size=1024)
    run(reader, CHUNKED_HEAD + b"0\r\nX-Trailer: ")
    for _ in range(100):
        reader.feed(b"a" * 1000)
        if reader.finished:
            break
    assert reader.finished, "100 kB of one trailer field buffered under a 1 kB limit"
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    assert isinstance(events[-1], HttpError)
    assert events[-1].status == 431


def test_too_many_trailer_fields_are_refused_with_431() -> None:
    events = requests(
        CHUNKED_HEAD + b"0\r\n" + b"X: v\r\n" * 1000 + b"\r\n", max_headers=10, max_header_size=1024
    )
    assert isinstance(events[-1], HttpError)
    assert events[-1].status == 431


# 4. Responses.


def responses(*pieces: bytes | None, head: bool = False, **limits: int) -> list[Any]:
    reader = ResponseReader(**limits)
    if head:
        reader.expect(b"HEAD")
    return run(reader, *pieces)


def test_response_with_content_length() -> None:
    reader = ResponseReader()
    events = run(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello")
    assert kinds(events) == [Response, Body, End]
    head = events[0]
    assert (head.status, head.reason, head.version) == (200, b"OK", "1.1")
    assert head.headers == [(b"Content-Length", b"5"), (b"Server", b"x")]
    assert head.content_length == 5
    assert not head.chunked
    assert not head.close_delimited
    assert not head.no_body
    assert head.keep_alive
    assert body_of(events) == b"hello"
    assert reader.idle
    assert not reader.finished


def test_response_with_chunked_body_and_trailers() -> None:
    events = responses(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nDigest: x\r\n\r\n"
    )
    head = events[0]
    assert head.chunked
    assert head.content_length is None
    assert not head.close_delimited
    assert head.keep_alive
    assert body_of(events) == b"abcde"
    assert events[-1].trailers == [(b"Digest", b"x")]


def test_close_delimited_response_ends_at_eof() -> None:
    reader = ResponseReader()
    events = run(reader, b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nabc", b"def")
    head = events[0]
    assert head.close_delimited
    assert not head.keep_alive
    assert kinds(events) == [Response, Body, Body]
    assert not reader.finished
    tail = run(reader, EOF)
    assert kinds(tail) == [End]
    assert body_of(events) == b"abcdef"
    assert reader.finished


def test_http10_response_without_length_is_close_delimited() -> None:
    events = responses(b"HTTP/1.0 200 OK\r\n\r\nabc", EOF)
    assert events[0].close_delimited
    assert events[0].version == "1.0"
    assert kinds(events) == [Response, Body, End]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_responses_have_no_body(status: int) -> None:
    reader = ResponseReader()
    events = run(
        reader,
        b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    assert kinds(events) == [Response, End, Response, Body, End]
    head = events[0]
    assert head.no_body
    assert head.content_length is None
    assert not head.close_delimited
    assert head.keep_alive
    assert body_of(events) == b"ok"


def test_response_to_head_ends_at_its_head_and_closes() -> None:
    reader = ResponseReader()
    reader.expect(b"HEAD")
    events = run(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert kinds(events) == [Response, End]
    head = events[0]
    assert head.no_body
    assert head.content_length is None
    assert not head.keep_alive
    assert reader.finished
    assert run(reader, b"x" * 1000, EOF) == []


def test_response_to_head_with_chunked_framing_ends_at_its_head() -> None:
    events = responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", EOF, head=True)
    assert kinds(events) == [Response, End]
    assert not events[0].chunked


def test_response_to_head_after_interim_responses_ends_at_the_final_head() -> None:
    events = responses(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head=True
    )
    assert kinds(events) == [Response, End, Response, End]
    assert [e.status for e in events if isinstance(e, Response)] == [100, 200]
    assert not events[2].keep_alive


def test_interim_responses_precede_the_final_response() -> None:
    reader = ResponseReader()
    events = run(
        reader,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    assert kinds(events) == [Response, End, Response, End, Response, Body, End]
    statuses = [(e.status, e.interim, e.no_body) for e in events if isinstance(e, Response)]
    assert statuses == [(100, True, True), (103, True, True), (200, False, False)]
    assert events[2].headers == [(b"Link", b"</s.css>; rel=preload")]
    assert body_of(events) == b"ok"
    assert reader.idle


def test_truncated_response_body_then_eof_is_502() -> None:
    reader = ResponseReader()
    events = run(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", EOF)
    assert kinds(events) == [Response, Body, HttpError]
    assert events[-1].status == 502
    assert reader.finished


def test_truncated_chunked_response_then_eof_is_502() -> None:
    events = responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", EOF)
    assert kinds(events) == [Response, Body, HttpError]
    assert events[-1].status == 502


def test_truncated_response_head_then_eof_is_502() -> None:
    events = responses(b"HTTP/1.1 200 OK\r\nContent-Le", EOF)
    assert kinds(events) == [HttpError]
    assert events[0].status == 502


def test_eof_between_responses_is_quiet() -> None:
    reader = ResponseReader()
    events = run(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", EOF)
    assert kinds(events) == [Response, Body, End]
    assert reader.finished


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"hello\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["status", "garbage", "two-lengths", "cl-te", "obs-fold", "chunk-size", "1.2", "2.0"],
)
def test_malformed_response_is_502(data: bytes) -> None:
    reader = ResponseReader()
    events = run(reader, data)
    assert isinstance(events[-1], HttpError)
    assert events[-1].status == 502
    assert not any(isinstance(e, End) for e in events)
    assert_finished_for_good(reader)


def test_response_with_connection_close_is_not_keep_alive() -> None:
    (head, *_) = responses(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not head.keep_alive


def test_http10_response_is_keep_alive_only_when_it_says_so() -> None:
    (plain, *_) = responses(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    (kept, *_) = responses(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    )
    assert not plain.keep_alive
    assert kept.keep_alive


def test_response_transfer_encoding_not_ending_in_chunked_is_close_delimited() -> None:
    events = responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc", EOF)
    head = events[0]
    assert head.close_delimited
    assert not head.chunked
    assert kinds(events) == [Response, Body, End]
    assert body_of(events) == b"3\r\nabc"


def test_response_transfer_encoding_xchunked_is_close_delimited() -> None:
    events = responses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc", EOF)
    head = events[0]
    assert not head.chunked
    assert head.close_delimited
    assert kinds(events) == [Response, Body, End]


def test_switching_protocols_response_finishes_the_reader() -> None:
    reader = ResponseReader()
    events = run(
        reader,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x00",
    )
    assert kinds(events) == [Response, End]
    assert events[0].status == 101
    assert reader.upgraded == b"\x81\x00"
    assert reader.finished


def test_response_header_block_over_limit_is_an_error() -> None:
    events = responses(
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n",
        max_header_size=1024,
    )
    assert kinds(events) == [HttpError]


# 5. Properties.

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
PATH = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/?"
# Fields whose presence changes framing or connection handling: the generators add their own.
FRAMING = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"proxy-connection",
    b"upgrade",
    b"expect",
}

names = st.text(TOKEN, min_size=1, max_size=12).map(str.encode)
values = st.text(VISIBLE + " ", max_size=20).map(lambda s: s.strip(" ").encode())
fields = st.lists(
    st.tuples(names, values).filter(lambda f: f[0].lower() not in FRAMING), max_size=20
)
trailer_fields = st.lists(
    st.tuples(names, values).filter(lambda f: f[0].lower() not in FRAMING), max_size=3
)
paths = st.text(PATH, max_size=30).map(lambda s: b"/" + s.encode())
methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
# A body: None, bytes sent with Content-Length, or a list of chunks (with trailers).
bodies = st.one_of(
    st.none(),
    st.binary(max_size=60),
    st.tuples(st.lists(st.binary(min_size=1, max_size=20), max_size=5), trailer_fields),
)


def framed(headers: Headers, body: Any) -> tuple[bytes, Headers, bytes, Headers | None]:
    """Add the framing field for `body`: the wire head fields, the body bytes on the wire,
    the body as delivered, and the trailers the End must carry."""
    if body is None:
        return b"", headers, b"", None
    if isinstance(body, bytes):
        return body, [*headers, (b"Content-Length", b"%d" % len(body))], body, None
    chunks, trailers = body
    wire = b"".join(b"".join(chunk(c)) for c in chunks) + last_chunk(trailers)
    return wire, [*headers, (b"Transfer-Encoding", b"chunked")], b"".join(chunks), trailers or None


@st.composite
def request_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[Any, ...]]]:
    """1-4 pipelined valid requests: their bytes, and the normalized events they must give."""
    wire = b""
    expected: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 4))):
        method, target = draw(methods), draw(paths)
        headers: Headers = [(b"Host", b"h.test"), *draw(fields)]
        body_wire, headers, body, trailers = framed(headers, draw(bodies))
        wire += request_head(method, target, headers) + body_wire
        expected.append(("request", method, target, "1.1", headers))
        if body:
            expected.append(("body", body))
        expected.append(("end", trailers))
    return wire, expected


@st.composite
def response_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[Any, ...]]]:
    """1-4 responses on one connection (interim ones included); the last may be
    close-delimited. Their bytes, and the normalized events they must give after eof()."""
    wire = b""
    expected: list[tuple[Any, ...]] = []
    count = draw(st.integers(1, 4))
    for i in range(count):
        for interim in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
            headers = draw(fields)
            wire += response_head(interim, b"", headers)
            expected += [("response", interim, "1.1", headers), ("end", None)]
        status = draw(st.sampled_from([200, 201, 204, 304, 404, 500, 299]))
        headers = draw(fields)
        reason = draw(st.sampled_from([b"", b"Fine", b"Very Fine Indeed"]))
        if status in (204, 304):
            body_wire, body, trailers = b"", b"", None
        elif i == count - 1 and draw(st.booleans()):
            body = body_wire = draw(st.binary(max_size=60))
            trailers = None
        else:
            body_wire, headers, body, trailers = framed(
                headers, draw(st.one_of(st.binary(max_size=60), bodies.filter(bool)))
            )
        wire += response_head(status, reason, headers) + body_wire
        expected.append(("response", status, "1.1", headers))
        if body:
            expected.append(("body", body))
        expected.append(("end", trailers))
    return wire, expected


def normalized(events: list[Any]) -> list[tuple[Any, ...]]:
    """Heads by their parsed parts, adjacent Body events joined, errors by status."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, Request):
            out.append(("request", event.method, event.target, event.version, event.headers))
        elif isinstance(event, Response):
            out.append(("response", event.status, event.version, event.headers))
        elif isinstance(event, Body):
            assert event.data, "an empty Body would be written as a last-chunk"
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + event.data)
            else:
                out.append(("body", event.data))
        elif isinstance(event, End):
            out.append(("end", event.trailers))
        else:
            assert isinstance(event, HttpError)
            out.append(("error", event.status))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut `data` at the given points, each in ten-thousandths of its length."""
    points = sorted({c * len(data) // 10_000 for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


cut_points = st.lists(st.integers(0, 10_000), max_size=40)


def examples(count: int) -> settings:
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


PROPERTY = examples(100)


@examples(150)
@given(message=request_messages(), cuts=cut_points)
def test_any_split_of_valid_requests_gives_the_same_events(
    message: tuple[bytes, list[tuple[Any, ...]]], cuts: list[int]
) -> None:
    wire, expected = message
    whole = normalized(requests(wire))
    assert whole == expected
    reader = RequestReader()
    assert normalized(run(reader, *split(wire, cuts))) == whole
    assert not reader.finished
    assert not reader.in_head


@PROPERTY
@given(message=response_messages(), cuts=cut_points)
def test_any_split_of_valid_responses_gives_the_same_events(
    message: tuple[bytes, list[tuple[Any, ...]]], cuts: list[int]
) -> None:
    wire, expected = message
    whole = normalized(run(ResponseReader(), wire, EOF))
    assert whole == expected
    assert normalized(run(ResponseReader(), *split(wire, cuts), EOF)) == whole


PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n"
    b"GET http://a/4 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"
)


def test_requests_fed_one_byte_at_a_time_give_the_same_events() -> None:
    reader = RequestReader()
    dribbled = run(reader, *[PIPELINE[i : i + 1] for i in range(len(PIPELINE))])
    assert normalized(dribbled) == normalized(requests(PIPELINE))
    assert targets(dribbled) == [b"/1", b"/2", b"/3", b"http://a/4"]
    assert dribbled[-1].trailers is None
    assert not reader.in_head


def test_responses_fed_one_byte_at_a_time_give_the_same_events() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n\r\nto the end"
    )
    dribbled = run(ResponseReader(), *[wire[i : i + 1] for i in range(len(wire))], EOF)
    assert normalized(dribbled) == normalized(run(ResponseReader(), wire, EOF))
    assert [e.status for e in dribbled if isinstance(e, Response)] == [100, 200, 204, 200, 200]
    assert body_of(dribbled) == b"helloabcto the end"


def check_event_stream(reader: RequestReader | ResponseReader, events: list[Any]) -> None:
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, Body):
            assert event.data
    errors = [i for i, e in enumerate(events) if isinstance(e, HttpError)]
    if errors:
        assert errors == [len(events) - 1], events
        assert reader.finished
        assert isinstance(events[-1].status, int)
        assert 400 <= events[-1].status < 600
        assert isinstance(events[-1].message, str)
    if reader.finished:
        assert run(reader, b"HTTP/1.1 200 OK\r\n\r\nGET / HTTP/1.1\r\n\r\n") == []


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(request_messages())[0])
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(wire)))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.one_of(st.sampled_from(b"\x00\t\n\r ,:;\x7f\xff"), st.integers(0, 255)))
        if op == "insert" or at == len(wire):
            wire[at:at] = bytes([byte])
        elif op == "flip":
            wire[at] = byte
        else:
            del wire[at]
    return bytes(wire)


@st.composite
def mutated_responses(draw: st.DrawFn) -> bytes:
    wire = bytearray(draw(response_messages())[0])
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        if wire and draw(st.booleans()):
            wire[at] = draw(st.integers(0, 255))
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(wire)


garbage_requests = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=100).map(lambda b: b"GET / HTTP/1.1\r\n" + b),
    mutated_requests(),
)
garbage_responses = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=100).map(lambda b: b"HTTP/1.1 200 OK\r\n" + b),
    mutated_responses(),
)
SMALL_LIMITS = {"max_header_size": 200, "max_headers": 8, "max_uri_length": 40}


@examples(250)
@given(data=garbage_requests, cuts=cut_points, small=st.booleans())
def test_any_bytes_in_any_split_give_only_events_and_a_final_error(
    data: bytes, cuts: list[int], small: bool
) -> None:
    reader = RequestReader(**SMALL_LIMITS, max_body_size=50) if small else RequestReader()
    events = run(reader, *split(data, cuts))
    check_event_stream(reader, events)
    if not small:
        # How bytes are read, good or bad, must not depend on how TCP cut them. (The
        # partial-head bound has one read of slack, so small limits may differ by split.)
        assert normalized(events) == normalized(requests(data))


@examples(200)
@given(data=garbage_responses, cuts=cut_points, head=st.booleans())
def test_any_response_bytes_in_any_split_give_only_events_and_a_final_error(
    data: bytes, cuts: list[int], head: bool
) -> None:
    reader = ResponseReader()
    if head:
        reader.expect(b"HEAD")
    events = run(reader, *split(data, cuts), EOF)
    check_event_stream(reader, events)
    assert reader.finished
    whole = ResponseReader()
    if head:
        whole.expect(b"HEAD")
    assert normalized(events) == normalized(run(whole, data, EOF))


@examples(100)
@given(data=garbage_responses, cuts=cut_points)
def test_any_response_bytes_under_small_limits_give_only_events_and_a_final_error(
    data: bytes, cuts: list[int]
) -> None:
    reader = ResponseReader(max_header_size=200, max_headers=8)
    events = run(reader, *split(data, cuts), EOF)
    check_event_stream(reader, events)


@PROPERTY
@given(
    method=methods,
    target=paths,
    headers=fields,
    body=bodies,
)
def test_written_request_reads_back_as_the_same_message(
    method: bytes, target: bytes, headers: Headers, body: Any
) -> None:
    body_wire, headers, content, trailers = framed([(b"Host", b"h.test"), *headers], body)
    events = requests(request_head(method, target, headers) + body_wire)
    head = events[0]
    assert (head.method, head.target, head.version, head.headers) == (
        method,
        target,
        "1.1",
        headers,
    )
    assert head.chunked == isinstance(body, tuple)
    assert body_of(events) == content
    assert kinds(events)[-1] is End
    assert events[-1].trailers == trailers


@PROPERTY
@given(
    status=st.sampled_from([200, 201, 202, 299, 301, 404, 418, 500, 502, 599]),
    reason=st.sampled_from([b"", b"OK", b"Some Reason"]),
    headers=fields,
    body=bodies.filter(lambda b: b is not None),
)
def test_written_response_reads_back_as_the_same_message(
    status: int, reason: bytes, headers: Headers, body: Any
) -> None:
    body_wire, headers, content, trailers = framed(headers, body)
    wire = response_head(status, reason, headers)
    events = run(ResponseReader(), wire + body_wire)
    head = events[0]
    assert (head.status, head.version, head.headers) == (status, "1.1", headers)
    if reason:
        assert head.reason == reason
    assert body_of(events) == content
    assert kinds(events)[-1] is End
    assert events[-1].trailers == trailers


def test_writer_output_is_exact() -> None:
    assert request_head(b"GET", b"/x", [(b"Host", b"a"), (b"X", b"1")]) == (
        b"GET /x HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n"
    )
    assert response_head(404, b"", []) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert response_head(200, b"Fine", [(b"A", b"b")]) == b"HTTP/1.1 200 Fine\r\nA: b\r\n\r\n"
    assert chunk(b"x" * 26) == [b"1a\r\n", b"x" * 26, b"\r\n"]
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([(b"T", b"v")]) == b"0\r\nT: v\r\n\r\n"


def test_chunked_body_read_in_large_pieces_ending_at_chunk_headers_is_not_a_431() -> None:
    # Each read carries a whole chunk and the next chunk's size line: body, not a head.
    reader = RequestReader(max_header_size=1024)
    events = run(reader, CHUNKED_HEAD + b"fa0\r\n")
    for _ in range(20):
        events += run(reader, b"a" * 4000 + b"\r\nfa0\r\n")
    assert not any(isinstance(e, HttpError) for e in events)
    assert sum(len(e.data) for e in events if isinstance(e, Body)) == 20 * 4000
