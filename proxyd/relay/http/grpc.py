"""gRPC calls through the HTTP relay: recognised by their Content-Type, their deadline
(`grpc-timeout`) bounding the exchange's response timeout, and proxyd's own error answers
given as gRPC clients expect them, a "Trailers-Only" response: HTTP 200, `content-type:
application/grpc`, no body, `grpc-status` and `grpc-message` (the gRPC over HTTP/2 protocol,
PROTOCOL-HTTP2.md; the HTTP status mapping of http-grpc-status-mapping.md). Over HTTP/2 the
client stream sends such a head as one HEADERS frame with END_STREAM
(proxyd.relay.http.h2_stream)."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from proxyd.filters.api import Reject
from proxyd.relay.http.messages import Request, reason_phrase


class Code(IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md), those proxyd answers with."""

    OK = 0
    UNKNOWN = 2
    DEADLINE_EXCEEDED = 4
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_CODES: Final = {
    400: Code.INTERNAL,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.UNIMPLEMENTED,
    405: Code.UNIMPLEMENTED,
    408: Code.DEADLINE_EXCEEDED,
    413: Code.RESOURCE_EXHAUSTED,
    429: Code.UNAVAILABLE,
    431: Code.RESOURCE_EXHAUSTED,
    500: Code.INTERNAL,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.UNAVAILABLE,
}
"""proxyd's HTTP error status → the gRPC code a client gets instead (gRPC's own mapping,
429 included: UNAVAILABLE tells the client it may retry; 413 and 431 are a size limit)."""

_UNITS: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(request: Request) -> bool:
    """The request is a gRPC call: HTTP/2 with `application/grpc` or `application/grpc+FORMAT`
    (gRPC-Web, which browsers speak over HTTP/1.1 with its own framing, is not). An HTTP/1.1
    request is never one: gRPC needs HTTP/2's trailers, and the check costs an HTTP/1.1
    request nothing."""
    if request.version != "2":
        return False
    for name, value in request.headers:
        if name.lower() == b"content-type":
            value = value.lower()
            return value.startswith(b"application/grpc") and not value.startswith(
                b"application/grpc-web"
            )
    return False


def deadline(request: Request) -> float | None:
    """The call's `grpc-timeout` in seconds (up to 8 digits and a unit: H M S m u n), or
    None when absent or malformed."""
    for name, value in request.headers:
        if name.lower() == b"grpc-timeout":
            digits, unit = value[:-1], value[-1:]
            if not digits.isdigit() or len(digits) > 8 or not unit:
                return None
            scale = _UNITS.get(unit[0])
            return None if scale is None else int(digits) * scale
    return None


def response_timeout(request: Request, configured: float) -> float:
    """The exchange's response timeout for the call: no longer than its deadline."""
    limit = deadline(request)
    return configured if limit is None else max(min(configured, limit), 0.001)


def error_answer(answer: Reject, deadline_bound: bool) -> Reject:
    """`answer` (proxyd's HTTP error) as a gRPC Trailers-Only response. A 504 is
    DEADLINE_EXCEEDED when the call's deadline was what bounded the wait
    (`deadline_bound`), else UNAVAILABLE (a server that did not answer in time)."""
    status = answer.status
    code = _CODES.get(status, Code.UNKNOWN)
    if status == 504 and deadline_bound:
        code = Code.DEADLINE_EXCEEDED
    message = b"proxyd: %d %s" % (status, reason_phrase(status))
    grpc = Reject(200, answer.why, answer.kind)
    grpc.headers = trailers_only(code, message)
    return grpc


def trailers_only(code: int, message: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a Trailers-Only response with `code` and `message`."""
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", percent_encode(message)),
    ]


def percent_encode(message: bytes) -> bytes:
    """grpc-message's encoding: bytes outside printable ASCII, and %, as %XX."""
    return b"".join(
        bytes([c]) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in message
    )
