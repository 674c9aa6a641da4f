"""Range requests answered from a stored full response (RFC 9110 14), sans-IO: which bytes
a `Range: bytes=...` asks of a representation of a known length, and the Content-Range of
the answer.

A cache that holds the whole response can answer ranges itself, as nginx's proxy_cache and
Varnish do; it answers one range (206 with Content-Range) and, for several, the one range
that covers them all (no multipart/byteranges: RFC 9110 14.2 lets a server coalesce ranges,
and a Content-Range that says which bytes came is all a client needs; more than MAX_RANGES is
answered whole, against the "many ranges" amplification of CVE-2011-3192); a range wholly
past the end is 416 with `Content-Range: bytes */N`.
A Range that is not a valid bytes range set is ignored (the full response: 14.2).

If-Range (13.1.5): the range is honoured only when the validator matches the stored one by
the strong comparison (an entity tag) or the Last-Modified date exactly (a date that is a
strong validator); otherwise the full response is sent.
"""

from __future__ import annotations

from typing import Final

import attrs

from proxyd.cache.cache_control import http_date

MAX_RANGES: Final = 16
"""Ranges of one request past which it is answered whole (RFC 9110 14.2: a server may
ignore a Range with many small or overlapping ranges)."""


@attrs.frozen
class Span:
    """Bytes first to last, inclusive, of a representation of `length` bytes."""

    first: int
    last: int
    length: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> bytes:
        return b"bytes %d-%d/%d" % (self.first, self.last, self.length)


UNSATISFIABLE: Final = "unsatisfiable"
"""ranges()' answer when no range overlaps the representation: 416."""


def unsatisfied_range(length: int) -> bytes:
    """The Content-Range of a 416."""
    return b"bytes */%d" % length


def ranges(header: bytes | None, length: int) -> Span | str | None:
    """What `Range` asks of a representation of `length` bytes: a Span (206), UNSATISFIABLE
    (416), or None (no range, an invalid or unsupported one, too many: send it whole)."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition(b"=")
    if unit.strip().lower() != b"bytes" or not spec.strip():
        return None
    parts = [part.strip() for part in spec.split(b",")]
    if len(parts) > MAX_RANGES or not all(parts):
        return None
    spans: list[tuple[int, int]] = []
    for part in parts:
        first_text, dash, last_text = part.partition(b"-")
        if not dash:
            return None
        if not first_text:  # suffix: the last N bytes
            if not last_text.isdigit():
                return None
            suffix = int(last_text)
            if suffix == 0:
                continue
            spans.append((max(length - suffix, 0), length - 1))
            continue
        if not first_text.isdigit() or (last_text and not last_text.isdigit()):
            return None
        first = int(first_text)
        last = int(last_text) if last_text else length - 1
        if last_text and last < first:
            return None
        if first < length:
            spans.append((first, min(last, length - 1)))
    if not spans:
        return UNSATISFIABLE
    # Several ranges: one span covering them all (coalesced), never more bytes than the
    # representation.
    first = min(span[0] for span in spans)
    last = max(span[1] for span in spans)
    return Span(first, last, length)


def if_range_holds(if_range: bytes | None, etag: bytes | None, last_modified: bytes | None) -> bool:
    """Whether a Range may be honoured given If-Range (RFC 9110 13.1.5): absent, or an
    entity tag equal to the stored one by the strong comparison (neither weak), or an
    HTTP-date equal to the stored Last-Modified."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith((b'"', b"W/")):
        return (
            etag is not None
            and not value.startswith(b"W/")
            and not etag.startswith(b"W/")
            and value == etag.strip()
        )
    date = http_date(value)
    return date is not None and last_modified is not None and date == http_date(last_modified)
