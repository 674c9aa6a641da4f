"""HTTP/1.1 readers, sans-IO: bytes in, message events out, over httptools (llhttp).

`RequestReader` and `ResponseReader` follow h11's shape: `feed()` bytes, then take events with
`next_event()` — a head (`Request` / `Response`), `Body` pieces, an `End` — until it returns
None. A message that cannot be relayed safely becomes an `HttpError` event carrying the status
to answer with; the reader is then finished. llhttp in its strict mode already refuses request
smuggling (Content-Length with Transfer-Encoding, duplicate Content-Length, bad chunk sizes,
obs-fold, bare CR, invalid field names); the readers add the limits and the checks llhttp
leaves to its user (RFC 9112 3.2 Host, 6.1 Transfer-Encoding in HTTP/1.0, versions).

The events, and the writer half (plain functions that build the bytes of heads and chunks),
are in proxyd.relay.http.messages; they are importable from here too.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import httptools

from proxyd.relay.http.messages import (
    Body,
    End,
    Event,
    Headers,
    HttpError,
    Request,
    Response,
)

__all__ = ["RequestReader", "ResponseReader"]


class _Abort(Exception):
    """Raised from a parser callback to stop llhttp; the reason is on the reader."""


_VERSIONS: Final = frozenset({"1.0", "1.1"})
_PER_FIELD: Final = 4  # ": " and CRLF around each field in the head size


def _ends_chunked(transfer_encoding: list[bytes]) -> bool:
    """The final transfer coding is exactly `chunked` (RFC 9112 6.3)."""
    return transfer_encoding[-1].rsplit(b",", 1)[-1].strip().lower() == b"chunked"


class _Reader:
    """The parts shared by both readers: event queue, error state, header-size accounting."""

    malformed_status = 400

    def __init__(self, max_header_size: int, max_headers: int) -> None:
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self._events: deque[Event] = deque()
        self._error: HttpError | None = None
        self._stopped = False
        self.finished = False
        """No more events will come: an error, an upgrade, or (responses) a close."""
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._head_size = 0
        self._in_head = False
        self._head_began_in_feed = False
        self._partial_head = 0
        self._body_size = 0
        self._awaiting_chunk_data = False
        self._body_in_feed = False
        self._framing_only = False
        """A head made up to frame a body is being parsed (RequestReader): its fields are
        no one's."""

    @property
    def in_head(self) -> bool:
        """Part of a message head has arrived but not all of it (the slowloris window)."""
        return self._in_head

    @property
    def pending(self) -> int:
        return len(self._events)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def peek(self) -> Event | None:
        return self._events[0] if self._events else None

    def _fail(self, error: HttpError) -> None:
        if self._error is None:
            self._error = error
        raise _Abort

    def on_chunk_header(self) -> None:
        self._awaiting_chunk_data = True

    def on_chunk_complete(self) -> None:
        self._awaiting_chunk_data = False

    def _body_seen(self) -> None:
        self._body_in_feed = True
        self._awaiting_chunk_data = False
        self._partial_head = 0

    def _begin(self) -> None:
        self._headers = []
        self._trailers = None
        self._head_size = 0
        self._in_head = True
        self._head_began_in_feed = True
        self._partial_head = 0
        self._body_size = 0
        self._awaiting_chunk_data = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._framing_only:
            return
        if not self._in_head:
            if self._trailers is None:
                self._trailers = []
                self._head_size = 0
            fields = self._trailers
        else:
            fields = self._headers
        fields.append((name, value))
        self._head_size += len(name) + len(value) + _PER_FIELD
        if len(fields) > self.max_headers:
            self._fail(HttpError(431, f"more than {self.max_headers} header fields"))
        if self._head_size > self.max_header_size:
            self._fail(HttpError(431, f"header block over {self.max_header_size} bytes"))

    def _feed(
        self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes
    ) -> int | None:
        """Feed llhttp; returns the offset of upgraded data, if the message upgraded."""
        self._head_began_in_feed = False
        self._body_in_feed = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return int(upgrade.args[0])
        except httptools.HttpParserError as e:
            if self._stopped:
                self.finished = True
                return None
            if self._error is None:
                self._error = HttpError(self.malformed_status, f"malformed HTTP: {e}")
        if self._error is not None:
            self._events.append(self._error)
            self.finished = True
            return None
        if (self._in_head and not self._head_began_in_feed) or (
            self._awaiting_chunk_data and not self._body_in_feed
        ):
            # A head (or, after the last chunk, trailers) still unfinished after a whole read
            # that carried no body: llhttp holds the partial field itself, so count what
            # arrived to bound it (a read or two of slack at most).
            self._partial_head += len(data)
            if self._partial_head > self.max_header_size:
                self._events.append(
                    HttpError(431, f"header block over {self.max_header_size} bytes")
                )
                self.finished = True
        return None


_DEAD_REQUESTS: Final = httptools.HttpRequestParser(object())
_DEAD_RESPONSES: Final = httptools.HttpResponseParser(object())
"""What a reader's parser becomes once its connection is gone: parsers with no callbacks.
A live parser holds its reader's bound methods, a reference cycle."""


class RequestReader(_Reader):
    """Client side: parses requests, pipelined or not, into events."""

    def __init__(
        self,
        *,
        max_header_size: int = 32768,
        max_headers: int = 100,
        max_uri_length: int = 8192,
        max_body_size: int = 0,
    ) -> None:
        super().__init__(max_header_size, max_headers)
        self.max_uri_length = max_uri_length
        self.max_body_size = max_body_size
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self.upgraded: bytes | None = None
        """After an upgrade request: the bytes that followed its head."""
        self._framing_after_upgrade: bytes | None = None
        """An upgrade request with a body, which llhttp leaves unread: its framing field."""

    def release(self) -> None:
        """The connection is gone: let go of the parser (it holds this reader's bound
        methods, a reference cycle). Events parsed already stay readable."""
        self._parser = _DEAD_REQUESTS

    def feed(self, data: bytes) -> None:
        if self.finished or not data:
            return
        offset = self._feed(self._parser, data)
        if offset is None:
            return
        framing, self._framing_after_upgrade = self._framing_after_upgrade, None
        if framing is None:
            # Upgrade requests and CONNECT stop llhttp: the relay decides what follows.
            self.upgraded = data[offset:]
            self.finished = True
            return
        # An upgrade with a body is never relayed as one (a WebSocket handshake has none):
        # the body, and whatever follows, is read by a new parser primed with a head that
        # frames it as the request's own did.
        self._parser = httptools.HttpRequestParser(self)
        self._framing_only = True
        self._parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        self.feed(data[offset:])

    def on_message_begin(self) -> None:
        if self._framing_only:
            return
        self._begin()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        if self._framing_only:
            return
        self._url += url
        if len(self._url) > self.max_uri_length:
            self._fail(HttpError(414, f"request target over {self.max_uri_length} bytes"))
        self._head_size += len(url)

    def on_headers_complete(self) -> None:
        if self._framing_only:
            self._framing_only = False
            return
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in _VERSIONS:
            self._fail(HttpError(505, f"HTTP/{version} is not supported"))
        headers = self._headers
        # One pass for the fields that frame or route the request.
        hosts: list[bytes] = []
        transfer_encoding: list[bytes] = []
        lengths: list[bytes] = []
        expect: list[bytes] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                hosts.append(value)
            elif lower == b"content-length":
                lengths.append(value)
            elif lower == b"transfer-encoding":
                transfer_encoding.append(value)
            elif lower == b"expect":
                expect.append(value)
        if len(hosts) > 1:
            self._fail(HttpError(400, "more than one Host field"))
        if not hosts and version == "1.1":
            self._fail(HttpError(400, "HTTP/1.1 request without Host"))
        if transfer_encoding and version == "1.0":
            # RFC 9112 6.1: faulty framing; a proxy must not guess.
            self._fail(HttpError(400, "Transfer-Encoding in an HTTP/1.0 request"))
        if transfer_encoding and not _ends_chunked(transfer_encoding):
            # RFC 9112 6.3: a request body's length is then unknowable.
            self._fail(HttpError(400, "Transfer-Encoding does not end in chunked"))
        content_length = None
        if lengths and not transfer_encoding:
            content_length = int(lengths[0])
            if self.max_body_size and content_length > self.max_body_size:
                self._fail(HttpError(413, f"Content-Length over {self.max_body_size} bytes"))
        upgrade = parser.should_upgrade()
        if upgrade and transfer_encoding:
            self._framing_after_upgrade = b"Transfer-Encoding: chunked"
        elif upgrade and content_length:
            self._framing_after_upgrade = b"Content-Length: %d" % content_length
        # Positional arguments, in Request's order: keywords cost a third more per request.
        self._events.append(
            Request(
                parser.get_method(),
                self._url,
                version,
                headers,
                parser.should_keep_alive(),  # keep_alive
                bool(transfer_encoding),  # chunked
                content_length,
                hosts[0] if hosts else b"",  # host
                bool(expect) and expect[0].lower() == b"100-continue",  # expect_continue
                upgrade,
            )
        )

    def on_body(self, body: bytes) -> None:
        self._body_seen()
        if self.max_body_size:
            self._body_size += len(body)
            if self._body_size > self.max_body_size:
                self._fail(HttpError(413, f"body over {self.max_body_size} bytes"))
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._framing_after_upgrade is not None:
            return  # llhttp ends an upgrade request at its head; its body comes next
        self._awaiting_chunk_data = False
        self._partial_head = 0
        self._events.append(End(self._trailers))


class ResponseReader(_Reader):
    """Upstream side: parses the responses to the requests sent, one at a time.

    Call `expect(method)` before each request's response: answers to HEAD carry no body, a
    fact llhttp cannot be told through httptools, so a HEAD answer ends at its head and the
    reader is finished (the connection is not reused). `eof()` ends a close-delimited body.
    """

    malformed_status = 502

    def __init__(self, *, max_header_size: int = 65536, max_headers: int = 200) -> None:
        super().__init__(max_header_size, max_headers)
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._head_request = False
        self._awaiting = True
        """A request was sent whose final response has not ended yet (a new reader is
        made for a connection's first request)."""
        self._current: Response | None = None
        self.upgraded: bytes | None = None
        self.overrun = False
        """The server sent bytes that answer nothing asked, after a final response ended:
        a body longer than its Content-Length, a 204 or 304 with a body, a response too
        many. Sticky: such a connection is never reused, so that what it sent, parsed or
        not, reaches no one."""

    @property
    def idle(self) -> bool:
        """Between messages: no part of a response is pending."""
        return self._current is None and not self._in_head

    @property
    def clean(self) -> bool:
        """The last final response ended exactly where the bytes received end, and nothing
        else arrived or waits: the connection may carry another request. (llhttp skips
        CR and LF between messages without a callback; they cannot change a message.)"""
        return (
            not self.overrun
            and not self.finished
            and not self._awaiting
            and self._current is None
            and not self._in_head
            and not self._events
        )

    def expect(self, method: bytes) -> None:
        self._head_request = method == b"HEAD"
        self._awaiting = True

    def release(self) -> None:
        """The connection is gone: let go of the parser (see RequestReader.release)."""
        self._parser = _DEAD_RESPONSES

    def feed(self, data: bytes) -> None:
        if self.finished or not data:
            return
        offset = self._feed(self._parser, data)
        if offset is not None:
            self.upgraded = data[offset:]
            self.finished = True

    def eof(self) -> None:
        """The upstream closed: ends a close-delimited body, else the response is cut."""
        if self.finished:
            return
        self.finished = True
        current = self._current
        if current is not None and current.close_delimited:
            self._current = None
            self._events.append(End())
        elif current is not None or self._in_head:
            self._events.append(HttpError(502, "upstream closed in the middle of a response"))

    def on_message_begin(self) -> None:
        if not self._awaiting:
            # RFC 9112 9.3: responses answer requests in order; this one answers none.
            self.overrun = True
        self._begin()
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head_size += len(status)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in _VERSIONS:
            self._fail(HttpError(502, f"upstream answered HTTP/{version}"))
        status = parser.get_status_code()
        headers = self._headers
        transfer_encoding: list[bytes] = []
        lengths: list[bytes] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                lengths.append(value)
            elif lower == b"transfer-encoding":
                transfer_encoding.append(value)
        chunked = bool(transfer_encoding) and _ends_chunked(transfer_encoding)
        if transfer_encoding:
            lengths = []
        content_length = int(lengths[0]) if lengths else None
        no_body = status < 200 or status in (204, 304) or self._head_request
        close_delimited = not no_body and not chunked and content_length is None
        # Positional arguments, in Response's order: keywords cost a third more per response.
        response = Response(
            status,
            self._reason,
            version,
            headers,
            parser.should_keep_alive() and not close_delimited,  # keep_alive
            chunked and not no_body,  # chunked
            None if no_body else content_length,  # content_length
            close_delimited,
            no_body,
        )
        self._events.append(response)
        if self._head_request and status >= 200:
            response.keep_alive = False
            self._events.append(End())
            self._stopped = True
            raise _Abort
        self._current = response

    def on_body(self, body: bytes) -> None:
        self._body_seen()
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._awaiting_chunk_data = False
        self._partial_head = 0
        current, self._current = self._current, None
        if current is None or not current.interim:
            self._awaiting = False  # a final response: what follows answers nothing
        self._events.append(End(self._trailers))
