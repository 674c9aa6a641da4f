"""HTTP/1.1 messages in parts, sans-IO: the events the readers of proxyd.relay.http.h1 turn
bytes into (a head, `Request` or `Response`, `Body` pieces, an `End`, or an `HttpError`
carrying the status to answer with), and the plain functions that write heads and chunks
back as bytes."""

from __future__ import annotations

from typing import Final

Headers = list[tuple[bytes, bytes]]


class HttpError:
    """The message cannot be relayed: answer `status` and close the connection."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"HttpError({self.status}, {self.message!r})"


class Request:
    """A request head. `content_length` is None when the body is chunked or absent.
    `upgrade`: HTTP/1.1, it asked to upgrade (Connection: upgrade); HTTP/2, it is an extended
    CONNECT (RFC 8441), made a GET when its `:protocol` is websocket."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        host: bytes = b"",
        expect_continue: bool = False,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.host = host
        self.expect_continue = expect_continue
        self.upgrade = upgrade

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r}, {self.version!r})"


class Response:
    """A response head. The body is chunked, `content_length` long, or runs to the close
    (`close_delimited`); `no_body` for 1xx, 204, 304 and answers to HEAD."""

    __slots__ = (
        "chunked",
        "close_delimited",
        "content_length",
        "headers",
        "keep_alive",
        "no_body",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: Headers,
        keep_alive: bool = True,
        chunked: bool = False,
        content_length: int | None = None,
        close_delimited: bool = False,
        no_body: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.close_delimited = close_delimited
        self.no_body = no_body

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.reason!r})"


class Body:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Body({len(self.data)} bytes)"


class End:
    """The message is complete; `trailers` are the chunked trailer fields, if any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"End({self.trailers!r})"


Event = Request | Response | Body | End | HttpError


class UpstreamHead:
    """A proxied request's head as its server gets it (`body`: the whole body when a filter
    buffered it): an HTTP/1.1 connection writes it as bytes (`request_head`), an HTTP/2 one
    as a HEADERS frame."""

    __slots__ = ("body", "fields", "method", "target")

    def __init__(self, method: bytes, target: bytes, fields: Headers, body: bytes = b"") -> None:
        self.method = method
        self.target = target
        self.fields = fields
        self.body = body

    def __repr__(self) -> str:
        return f"UpstreamHead({self.method!r}, {self.target!r})"


# Writing.

_REASONS: Final = {
    100: b"Continue",
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    508: b"Loop Detected",
}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _fields(headers: Headers) -> bytes:
    if not headers:
        return b""
    return b"\r\n".join([b": ".join(field) for field in headers]) + b"\r\n"


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, _fields(headers))


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason or reason_phrase(status), _fields(headers))


def chunk(data: bytes) -> list[bytes]:
    """A chunk of a chunked body, as pieces for writeSequence (no copy of `data`)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def last_chunk(trailers: Headers | None = None) -> bytes:
    return b"0\r\n" + _fields(trailers or []) + b"\r\n"
