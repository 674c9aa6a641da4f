"""proxyd.cache.ranges: Range requests answered from a stored representation (RFC 9110 14),
and If-Range (13.1.5)."""

from __future__ import annotations

import pytest

from proxyd.cache.ranges import UNSATISFIABLE, Span, if_range_holds, ranges, unsatisfied_range


@pytest.mark.parametrize(
    ("header", "answer"),
    [
        (None, None),
        (b"bytes=0-99", Span(0, 99, 1000)),
        (b"bytes=0-", Span(0, 999, 1000)),
        (b"bytes=-100", Span(900, 999, 1000)),
        (b"bytes=-5000", Span(0, 999, 1000)),
        (b"bytes=990-5000", Span(990, 999, 1000)),
        (b"BYTES = 1-2", Span(1, 2, 1000)),
        (b"bytes=0-0,-1", Span(0, 999, 1000)),  # several: one covering range
        (b"bytes=100-199, 50-120", Span(50, 199, 1000)),
        (b"bytes=1000-", UNSATISFIABLE),
        (b"bytes=5000-6000", UNSATISFIABLE),
        (b"bytes=-0", UNSATISFIABLE),
        (b"bytes=5-4", None),  # invalid: the whole response
        (b"bytes=a-b", None),
        (b"bytes=", None),
        (b"items=0-1", None),
        (b"bytes=0-1,,2-3", None),
        (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)), None),  # too many
        (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(16)), Span(0, 15, 1000)),
    ],
)
def test_ranges_of_a_1000_byte_representation(header: bytes | None, answer: object) -> None:
    assert ranges(header, 1000) == answer


def test_content_range_fields() -> None:
    assert Span(0, 99, 1000).content_range == b"bytes 0-99/1000"
    assert Span(0, 99, 1000).size == 100
    assert unsatisfied_range(1000) == b"bytes */1000"
    assert ranges(b"bytes=0-", 0) == UNSATISFIABLE


DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("if_range", "etag", "modified", "holds"),
    [
        (None, None, None, True),
        (b'"v1"', b'"v1"', None, True),
        (b'"v1"', b'"v2"', None, False),
        (b'W/"v1"', b'W/"v1"', None, False),  # weak tags never match for a range
        (b'"v1"', b'W/"v1"', None, False),
        (DATE, None, DATE, True),
        (DATE, None, b"Mon, 07 Nov 1994 08:49:37 GMT", False),
        (b"garbage", b'"v1"', DATE, False),
    ],
)
def test_if_range(
    if_range: bytes | None, etag: bytes | None, modified: bytes | None, holds: bool
) -> None:
    assert if_range_holds(if_range, etag, modified) is holds
