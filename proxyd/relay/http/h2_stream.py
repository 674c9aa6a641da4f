"""One HTTP/2 stream as the client side of an exchange (proxyd.relay.http.roles.ExchangeClient):
the request its HEADERS and DATA frames carry goes through the same routing, filter chain
and upstream attempts as an HTTP/1.1 request; the response the exchange hands back goes out
as HEADERS and DATA frames within the stream's flow-control window (proxyd.relay.http.
h2_session writes them).

Backpressure both ways: request DATA is acknowledged (WINDOW_UPDATE) only as the exchange
takes it, so that a slow upstream withholds the client's window; response bytes the
client's window cannot take wait in the stream, and past a bound the exchange is told the
client is not writable, which pauses its upstream.

A WebSocket's extended CONNECT (RFC 8441) whose server switched becomes a tunnel: from then
on the stream's events go to its pipe (proxyd.relay.http.h2_tunnel.StreamPipe), not to the
exchange.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol

from h2.errors import ErrorCodes
from twisted.python.failure import Failure

from proxyd.clock import Deadline
from proxyd.relay.http.extended_connect import answer_fields
from proxyd.relay.http.h2_tunnel import StreamPipe
from proxyd.relay.http.messages import Body, End, Headers, HttpError, Request
from proxyd.relay.http.response_timer import ResponseTimer

if TYPE_CHECKING:
    from proxyd.relay.http.exchange import Exchange
    from proxyd.relay.http.roles import ResponseWaiter
    from proxyd.relay.http.tunnel import ClientPipe


class Session(Protocol):
    """What a stream uses of its connection's session (proxyd.relay.http.h2_session)."""

    @property
    def connection(self) -> Any:
        """The client connection (proxyd.relay.http.server.ClientConnection)."""

    def send_headers(self, stream_id: int, headers: Headers) -> None: ...

    def flush_stream(self, stream: H2Stream, write: bool = True) -> None: ...

    def acknowledge(self, stream_id: int, size: int) -> None: ...

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None: ...


NOT_FORWARDED: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
"""Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2)."""


class H2Stream(ResponseTimer):
    """The client side of the exchange of stream `stream_id`."""

    closing = False
    pipe: StreamPipe | None = None
    """Set once the stream carries a WebSocket tunnel: its events go there from then on."""

    def __init__(self, session: Session, stream_id: int) -> None:
        connection = session.connection
        self.session = session
        self.stream_id = stream_id
        self.factory = connection.factory
        self.peer = connection.peer
        self.peer_text = connection.peer_text
        self.local = connection.local
        self.tls = connection.tls
        self.trusted = connection.trusted
        self.affinity = connection.affinity
        self.log_fields = connection.log_fields
        self.exchange: Exchange | None = None
        self._events: deque[Body | End | HttpError] = deque()
        """Request body events the exchange has not taken yet."""
        self._unacknowledged = 0
        self._paused: set[str] = set()
        self.pending: deque[bytes] = deque()
        """Response bytes waiting for the client's window."""
        self.pending_bytes = 0
        self.ending: Headers | bool | None = False
        """False until the response is complete; then True, or its trailers."""
        self.ended = False
        self.request_ended = False
        self._writable = True
        self._high_water = self.factory.config.http2_stream_buffer
        """Response bytes held for the client's window before the upstream is paused."""
        self._response_timer = Deadline(self.factory.reactor, self._response_due)
        self._awaiting: ResponseWaiter | None = None

    # What the exchange reads.

    @property
    def writable(self) -> bool:
        return self._writable

    def start(self, request: Request) -> None:
        from proxyd.relay.http.exchange import Exchange

        self.factory.requests += 1
        exchange = self.exchange = Exchange(self, request)
        exchange.start()

    # The request body, from the session.

    def request_data(self, data: bytes, flow: int) -> None:
        """DATA of `flow` flow-controlled bytes (padding included)."""
        self._unacknowledged += flow
        pipe = self.pipe
        if pipe is not None:
            if data:
                pipe.received(data)
        elif data:
            self._events.append(Body(data))
        self.drive()

    def request_end(self) -> None:
        self.request_ended = True
        if self.pipe is not None:
            self.pipe.read_closed()
            return
        self._events.append(End())
        self.drive()

    def take_early(self) -> tuple[bytes, bool]:
        """A tunnel opens: the DATA the client sent before it, and whether END_STREAM came."""
        events, self._events = self._events, deque()
        return b"".join(e.data for e in events if isinstance(e, Body)), self.request_ended

    def take_unacknowledged(self) -> int:
        """The stream is dropped: the flow-controlled bytes received and never acknowledged,
        for the session to hand back to the connection."""
        unread, self._unacknowledged = self._unacknowledged, 0
        return unread

    def drive(self) -> None:
        """Hand the exchange the body events it wants; acknowledge what it took."""
        exchange = self.exchange
        taken = 0
        while self._events and exchange is not None and exchange.wants_request_events:
            event = self._events.popleft()
            if isinstance(event, Body):
                taken += len(event.data)
            exchange.request_event(event)
        if not self._events and not self._paused and self._unacknowledged:
            taken, self._unacknowledged = self._unacknowledged, 0
            self.session.acknowledge(self.stream_id, taken)

    def pause_reading(self, reason: str) -> None:
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused:
            self.drive()

    # The response, to the session.

    def switched(self, reason: bytes, fields: Headers) -> ClientPipe:
        """The server switched to WebSocket: the client gets `:status 200` (RFC 8441 5), and
        this stream becomes the client side of the tunnel."""
        self.send_head(200, b"", answer_fields(fields))
        return StreamPipe(self)

    def send_head(self, status: int, reason: bytes, fields: Headers, body: bytes = b"") -> None:
        headers = [(b":status", b"%d" % status)]
        headers += [
            (name.lower(), value) for name, value in fields if name.lower() not in NOT_FORWARDED
        ]
        if not body and any(name == b"grpc-status" for name, _ in headers):
            # gRPC's Trailers-Only response (proxyd.relay.http.grpc): one HEADERS frame with
            # END_STREAM, which gRPC clients require; whatever follows is dropped.
            self.ending = [f for f in headers if f[0] != b"content-length"]
            self.session.flush_stream(self)
            return
        self.session.send_headers(self.stream_id, headers)
        if body:
            self.send([body])

    def send(self, pieces: list[bytes]) -> None:
        if self.ended:
            return
        for piece in pieces:
            if piece:
                self.pending.append(piece)
                self.pending_bytes += len(piece)
        self.session.flush_stream(self)
        if self._writable and self.pending_bytes > self._high_water:
            self._set_writable(False)

    def send_end(self, chunked: bool, trailers: Headers | None) -> None:
        self.ending = [(name.lower(), value) for name, value in trailers] if trailers else True
        self.session.flush_stream(self)

    def sent(self) -> None:
        """The session sent some of `pending`, or found the window closed, or ended the
        stream."""
        if not self._writable and self.pending_bytes <= self._high_water // 2:
            self._set_writable(True)
        if self.pipe is not None:
            self.pipe.sent()

    def _set_writable(self, writable: bool) -> None:
        self._writable = writable
        self.tell_writable(writable)

    def tell_writable(self, writable: bool) -> None:
        """The client takes more (or no more) of what is sent: pause or resume the server
        whose bytes these are, through the exchange or the tunnel."""
        if self.pipe is not None:
            self.pipe.writable_changed(writable)
            return
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.client_writable(writable)

    def close_after_response(self) -> None:
        """A stream ends with its response; the connection goes on."""

    def cancel(self) -> None:
        """A tunnel's reset: RST_STREAM CANCEL (RFC 8441 5)."""
        self.session.reset(self.stream_id, ErrorCodes.CANCEL)

    def exchange_done(self, exchange: Any, keep_alive: bool) -> None:
        """The exchange is over: a response cut short resets the stream (keep_alive false
        means truncated here: an HTTP/2 frame never closes the connection); a complete one
        ends it, and a request body still arriving is refused with RST_STREAM NO_ERROR."""
        self.stop_expecting_response()
        self._response_timer.release()
        if self.ended:  # reset, or a tunnel over
            return
        if not keep_alive:
            self.session.reset(self.stream_id)
            return
        if self.ending is False:
            self.ending = True
        self.session.flush_stream(self)

    # The session's end of it.

    def reset_by_client(self, reason: Failure) -> None:
        """RST_STREAM from the client, or the connection lost (`reason`): the exchange, or
        the tunnel, is cut."""
        self.ended = True
        self.pending.clear()
        self.pending_bytes = 0
        exchange = self.exchange
        if self.pipe is not None:
            self.pipe.lost(reason)
        elif exchange is not None and not exchange.finished:
            exchange.client_lost()
        self._response_timer.release()
