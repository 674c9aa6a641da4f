"""One request to an HTTP/2 server: a stream of an upstream HTTP/2 connection
(proxyd.relay.http.h2_upstream), offered to the Forward as its UpstreamChannel
(proxyd.relay.http.upstream) exactly as an HTTP/1.1 connection is: the request goes out as
HEADERS and DATA frames, the response comes back as the same events an HTTP/1.1 response
reader yields (a Response, Body pieces, an End with the trailers, or an HttpError).

Flow control is the backpressure both ways: request DATA waits for the server's window (past
HIGH_WATER the handler is told the stream is not writable, which pauses the client), and
response DATA is acknowledged (WINDOW_UPDATE) only as the Forward takes it and while the
client reads (pause_reading withholds it), so a slow client holds back its server's stream
and no other.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

from h2.errors import ErrorCodes
from twisted.python.failure import Failure

from proxyd.pool import Server
from proxyd.relay.http.h2_upstream_metrics import H2ServerCounts
from proxyd.relay.http.messages import (
    Body,
    End,
    Event,
    Headers,
    HttpError,
    Response,
    UpstreamHead,
)
from proxyd.relay.http.upstream import UpstreamHandler

HIGH_WATER: Final = 64 * 1024
"""Request body bytes a stream holds for the server's window before the client is paused."""

NOT_SENT: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
        b"expect",
        b"http2-settings",
    }
)
"""Fields an HTTP/2 request does not carry: the connection-specific ones (RFC 9113 8.2.2),
Host (as :authority), Expect (proxyd answers the client's itself)."""


class Link(Protocol):
    """What a stream uses of its connection (proxyd.relay.http.h2_upstream)."""

    @property
    def server(self) -> Server: ...

    @property
    def scheme(self) -> bytes: ...

    @property
    def counts(self) -> H2ServerCounts:
        """The server's HTTP/2 counts, where a stream counts its resets."""

    def open_stream(self, stream: UpstreamStream, headers: Headers, end: bool) -> None: ...

    def flush(self, stream: UpstreamStream) -> None: ...

    def acknowledge(self, stream_id: int, size: int) -> None: ...

    def release(self, stream: UpstreamStream, code: ErrorCodes | None) -> None:
        """The stream is over for proxyd: reset it with `code` (if not None), free its
        slot."""


class StreamLost(Exception):
    """The stream ended without its response: reset by the server, refused, or its
    connection gone."""


class UpstreamStream:
    """One request/response on an HTTP/2 connection; a Forward's UpstreamChannel."""

    __slots__ = (
        "_end_queued",
        "_events",
        "_request_end",
        "_unacknowledged",
        "closed",
        "counts",
        "end_sent",
        "handler",
        "link",
        "lost",
        "method",
        "paused",
        "pending",
        "pending_bytes",
        "refused",
        "response_ended",
        "server",
        "stream_id",
        "writable",
    )

    def __init__(self, link: Link) -> None:
        self.link = link
        self.server = link.server
        self.counts = link.counts
        self.stream_id = 0
        """0 until the HEADERS frame is sent."""
        self.handler: UpstreamHandler | None = None
        self.method = b"GET"
        self._events: deque[tuple[Event, int]] = deque()
        self._unacknowledged = 0
        self._end_queued = False
        self._request_end = False
        self.pending: deque[bytes] = deque()
        """Request body bytes waiting for the server's window."""
        self.pending_bytes = 0
        self.end_sent = False
        self.response_ended = False
        self.writable = True
        self.paused = False
        self.lost = False
        self.refused = False
        self.closed = False

    # UpstreamChannel, for the Forward.

    @property
    def reader(self) -> UpstreamStream:
        return self

    @property
    def retry_fresh(self) -> bool:
        return self.refused

    def begin(self, handler: UpstreamHandler, method: bytes) -> None:
        self.handler = handler
        self.method = method

    def send_request(self, head: UpstreamHead, body: list[bytes], end: bool) -> None:
        headers = request_headers(head, self.link.scheme, self.server.name.encode())
        pieces = [head.body, *body] if head.body else body
        data = any(pieces)
        self._request_end = end
        self.link.open_stream(self, headers, end and not data)
        if end and not data:
            self.end_sent = True
        self.send(pieces)

    def send(self, data: list[bytes]) -> None:
        if self.closed or self.lost:
            return
        for piece in data:
            if piece:
                self.pending.append(piece)
                self.pending_bytes += len(piece)
        self.link.flush(self)

    def end_request(self) -> None:
        if not self._request_end:
            self._request_end = True
            self.link.flush(self)

    @property
    def ending(self) -> bool:
        """All the request body is queued and END_STREAM is still to be sent."""
        return self._request_end and not self.end_sent

    def sent(self) -> None:
        """The connection sent some of `pending` (or found the window closed)."""
        if self.writable and self.pending_bytes > HIGH_WATER:
            self._set_writable(False)
        elif not self.writable and self.pending_bytes <= HIGH_WATER // 2:
            self._set_writable(True)

    def _set_writable(self, writable: bool) -> None:
        self.writable = writable
        if self.handler is not None:
            self.handler.upstream_writable(writable)

    def next_event(self) -> Event | None:
        if not self._events:
            return None
        event, flow = self._events.popleft()
        if flow:
            if self.paused or self.closed:
                self._unacknowledged += flow
            else:
                self.link.acknowledge(self.stream_id, flow)
        return event

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self._unacknowledged and not self.closed:
            size, self._unacknowledged = self._unacknowledged, 0
            self.link.acknowledge(self.stream_id, size)
        if self._events and self.handler is not None:
            self.handler.upstream_readable()

    def close(self) -> None:
        """Done with the stream (its response complete, or not wanted): a stream still open
        either way is reset with CANCEL; the connection stays for other streams."""
        self._release(ErrorCodes.CANCEL)

    abort = close

    def _release(self, code: ErrorCodes) -> None:
        self.handler = None
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0
        complete = self.response_ended and self.end_sent
        self.link.release(self, None if complete or self.lost else code)

    # Frames from the server, from the connection.

    def response_head(self, headers: Headers, ended: bool) -> None:
        status_text = b""
        fields: Headers = []
        for name, value in headers:
            if name == b":status":
                status_text = value
            elif not name.startswith(b":"):
                fields.append((name, value))
        if not status_text.isdigit():
            self._push(HttpError(502, "upstream HTTP/2 response without :status"), 0)
            return
        status = int(status_text)
        length = next((v for n, v in fields if n == b"content-length"), None)
        no_body = ended or self.method == b"HEAD" or status in (204, 304) or status < 200
        response = Response(
            status,
            b"",
            "2",
            fields,
            content_length=int(length) if length is not None and length.isdigit() else None,
            no_body=no_body,
        )
        self._push(response, 0)
        if ended:
            self.ended(None)

    def data(self, data: bytes, flow: int) -> None:
        self._push(Body(data), flow)

    def ended(self, trailers: Headers | None) -> None:
        if self._end_queued:
            return
        self._end_queued = True
        self.response_ended = True
        if trailers is not None:
            trailers = [(n, v) for n, v in trailers if not n.startswith(b":")]
        self._push(End(trailers), 0)

    def reset(self, code: int) -> None:
        """RST_STREAM from the server. After a complete response it only stops the request
        body (RFC 9113 8.1: NO_ERROR); REFUSED_STREAM means the server did nothing with it
        (RFC 9113 8.7): the Forward may send it again."""
        if self.response_ended:
            self.end_sent = True
            self.pending.clear()
            self.pending_bytes = 0
            return
        try:
            name = ErrorCodes(code).name
        except ValueError:
            name = str(code)
        if code == ErrorCodes.REFUSED_STREAM:
            self.counts.refused += 1
            self.connection_lost(StreamLost("upstream refused the stream"), refused=True)
            return
        self.counts.server_reset += 1
        self.lost = True
        self._push(HttpError(502, f"upstream reset the stream ({name})"), 0)

    def connection_lost(self, reason: BaseException, refused: bool = False) -> None:
        """The connection is gone (or went away before this stream: `refused`)."""
        if self.lost:
            return
        self.lost = True
        self.refused = refused and not self._events
        handler = self.handler
        if handler is not None:
            handler.upstream_lost(Failure(reason))

    def window_opened(self) -> None:
        if self.pending or self.ending:
            self.link.flush(self)

    def _push(self, event: Event, flow: int) -> None:
        self._events.append((event, flow))
        if not self.paused and self.handler is not None:
            self.handler.upstream_readable()


def request_headers(head: UpstreamHead, scheme: bytes, default_authority: bytes) -> Headers:
    """The HEADERS of `head` (RFC 9113 8.3.1): the pseudo-headers, :authority from Host, the
    fields lower-cased without the connection-specific ones, and `te: trailers` (proxyd
    passes trailers on; gRPC servers require it)."""
    authority = None
    fields: Headers = []
    for name, value in head.fields:
        lower = name.lower()
        if lower == b"host":
            if authority is None:
                authority = value
        elif lower not in NOT_SENT:
            fields.append((lower, value))
    return [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":authority", authority or default_authority),
        (b":path", head.target),
        *fields,
        (b"te", b"trailers"),
    ]
