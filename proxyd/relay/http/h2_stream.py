"""One HTTP/2 stream as the client side of an exchange (proxyd.relay.http.roles.ExchangeClient):
the request its HEADERS and DATA frames carry goes through the same routing, filter chain
and upstream attempts as an HTTP/1.1 request; the response the exchange hands back goes out
as HEADERS and DATA frames within the stream's flow-control window (proxyd.relay.http.
h2_session writes them).

Backpressure both ways: request DATA is acknowledged (WINDOW_UPDATE) only as the exchange
takes it, so that a slow upstream withholds the client's window; response bytes the
client's window cannot take wait in the stream, and past a bound the exchange is told the
client is not writable, which pauses its upstream.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol

from proxyd.clock import Deadline
from proxyd.relay.http.messages import Body, End, Headers, HttpError, Request
from proxyd.relay.http.response_timer import ResponseTimer

if TYPE_CHECKING:
    from proxyd.relay.http.exchange import Exchange
    from proxyd.relay.http.roles import ResponseWaiter


class Session(Protocol):
    """What a stream uses of its connection's session (proxyd.relay.http.h2_session)."""

    @property
    def connection(self) -> Any:
        """The client connection (proxyd.relay.http.server.ClientConnection)."""

    @property
    def lost(self) -> bool: ...

    def send_headers(self, stream_id: int, headers: Headers) -> None: ...

    def flush_stream(self, stream: H2Stream, write: bool = True) -> None: ...

    def acknowledge(self, stream_id: int, size: int) -> None: ...

    def reset(self, stream_id: int) -> None: ...


NOT_FORWARDED: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
"""Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2)."""


class H2Stream(ResponseTimer):
    """The client side of the exchange of stream `stream_id`."""

    tunnel = None
    closing = False
    reader: Any = None

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

    @property
    def lost(self) -> bool:
        return self.session.lost

    @property
    def channel(self) -> Any:
        return self.session.connection.channel

    @property
    def transport(self) -> Any:
        return self.session.connection.transport

    def start(self, request: Request) -> None:
        from proxyd.relay.http.exchange import Exchange

        self.factory.requests += 1
        exchange = self.exchange = Exchange(self, request)  # type: ignore[arg-type]
        exchange.start()

    # The request body, from the session.

    def request_data(self, data: bytes, flow: int) -> None:
        """DATA of `flow` flow-controlled bytes (padding included)."""
        self._unacknowledged += flow
        if data:
            self._events.append(Body(data))
        self.drive()

    def request_end(self) -> None:
        self.request_ended = True
        self._events.append(End())
        self.drive()

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
        """The session sent some of `pending`."""
        if not self._writable and self.pending_bytes <= self._high_water // 2:
            self._set_writable(True)

    def _set_writable(self, writable: bool) -> None:
        self._writable = writable
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.client_writable(writable)

    def flush(self) -> None:
        """Nothing is held back beyond the window."""

    def set_send_timeout(self, timeout: float) -> None:
        """The connection's send timeout covers its streams."""

    def close_after_response(self) -> None:
        """A stream ends with its response; the connection goes on."""

    def lose_connection(self) -> None:
        self.session.reset(self.stream_id)

    def exchange_done(self, exchange: Any, keep_alive: bool) -> None:
        """The exchange is over: a response cut short resets the stream (keep_alive false
        means truncated here: an HTTP/2 frame never closes the connection); a complete one
        ends it, and a request body still arriving is refused with RST_STREAM NO_ERROR."""
        self.stop_expecting_response()
        self._response_timer.release()
        if not keep_alive:
            self.session.reset(self.stream_id)
            return
        if self.ending is False:
            self.ending = True
        self.session.flush_stream(self)

    # The session's end of it.

    def reset_by_client(self) -> None:
        """RST_STREAM from the client, or the connection lost: the exchange is cut."""
        self.ended = True
        self.pending.clear()
        self.pending_bytes = 0
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.client_lost()
        self._response_timer.release()
