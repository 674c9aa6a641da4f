"""An HTTP/2 stream as the client side of a WebSocket tunnel (RFC 8441 5): once the server
answered the extended CONNECT's handshake with 101 and the client got `:status 200`, the
stream's DATA are the client's bytes and the server's bytes go out as DATA, through the same
Tunnel and splice as an upgraded HTTP/1.1 connection's (proxyd.relay.http.tunnel).

- Backpressure both ways, by flow control: the client's DATA is acknowledged (WINDOW_UPDATE)
  as it is written to the server, and not while the server's connection cannot take more,
  which closes the client's window. The server's bytes wait in the stream for the client's
  windows; past http2_stream_buffer waiting, the server is no longer read.
- END_STREAM from the client closes the server's connection once what it sent is written
  (proxyd does not half-close an HTTP/1.1 connection); the server's close ends the stream
  once what waits for the client is sent (END_STREAM, then RST_STREAM NO_ERROR if the
  client's half is still open: proxyd.relay.http.h2_session). A reset either way is passed
  on as a reset: RST_STREAM CANCEL to the client.
- A client that takes none of what waits for it (opens no window) for tunnel_timeout gets
  both sides reset (`client_stalled`), as an HTTP/1.1 client's send timeout does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import Deadline
from proxyd.relay.http.messages import Headers
from proxyd.relay.splice import OnStall, Pipe

if TYPE_CHECKING:
    from proxyd.relay.http.tunnel import Tunnel

_log = Logger(namespace="proxyd.relay.http")


class TunnelStream(Protocol):
    """What the pipe uses of its stream (proxyd.relay.http.h2_stream.H2Stream)."""

    pipe: StreamPipe | None
    stream_id: int
    pending_bytes: int
    """Bytes waiting for the client's window."""
    ended: bool

    @property
    def factory(self) -> Any:
        """The listener's factory (proxyd.relay.http.roles.ConnectionFactory)."""

    @property
    def peer_text(self) -> str: ...

    @property
    def writable(self) -> bool: ...

    def take_early(self) -> tuple[bytes, bool]: ...

    def drive(self) -> None:
        """Acknowledge the DATA taken, unless reading is paused."""

    def send(self, pieces: list[bytes]) -> None: ...

    def send_end(self, chunked: bool, trailers: Headers | None) -> None: ...

    def cancel(self) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


class StreamPipe:
    """`stream` as the client side of the splice (a proxyd.relay.http.tunnel.ClientPipe). Its
    stall timer runs while bytes wait for the client's window, and starts again whenever the
    client takes some."""

    status = 200
    _tunnel: Tunnel
    """Set by attach(), before the stream hands the pipe any event."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream
        self._timeout = 0.0
        self._stall = Deadline(stream.factory.reactor, self._stalled)
        self._given = 0
        """Bytes handed to the stream to send."""
        self._taken = 0
        """Of those, the ones sent when the stall timer last started."""

    @property
    def writable(self) -> bool:
        return self.stream.writable

    @property
    def peer_text(self) -> str:
        return self.stream.peer_text

    def attach(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._timeout = tunnel.timeout
        self.stream.pipe = self

    def started(self, tunnel: Tunnel) -> None:
        early, ended = self.stream.take_early()
        if early:
            tunnel.client_data(early)
        if ended:
            tunnel.client_read_closed()
        self.stream.drive()

    # The splice's calls (proxyd.relay.splice.Pipe).

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        """Nothing to wire: the stream reports its window (writable_changed) and its stall
        (Tunnel.client_stalled)."""

    def send(self, data: bytes) -> None:
        self._given += len(data)
        self.stream.send([data])

    def shut_write(self) -> bool:
        return False  # the server's HTTP/1.1 connection is not half-closeable: never asked

    def close(self) -> None:
        self.stream.send_end(False, None)

    def reset(self) -> None:
        self.stream.cancel()
        self._tunnel.client_lost(Failure(error.ConnectionLost("stream reset by proxyd")))

    def pause_reading(self) -> None:
        self.stream.pause_reading("upstream")

    def resume_reading(self) -> None:
        self.stream.resume_reading("upstream")

    @property
    def waiting(self) -> bool:
        return self._stall.at is not None

    def gone(self) -> None:
        self._stall.release()

    # The stream's events (proxyd.relay.http.h2_stream.H2Stream).

    def received(self, data: bytes) -> None:
        self._tunnel.client_data(data)

    def read_closed(self) -> None:
        self._tunnel.client_read_closed()

    def writable_changed(self, writable: bool) -> None:
        self._tunnel.client_writable(writable)

    def lost(self, reason: Failure) -> None:
        """RST_STREAM from the client, or its connection lost."""
        self._tunnel.client_lost(reason)

    def sent(self) -> None:
        """The session sent some of what waits, or found the window closed, or ended the
        stream."""
        stream = self.stream
        if stream.ended:
            self._tunnel.client_lost(Failure(error.ConnectionDone()))
            return
        pending = stream.pending_bytes
        if not pending:
            self._stall.clear()
            return
        taken = self._given - pending
        if taken > self._taken or self._stall.at is None:
            self._taken = taken
            self._stall.set_in(self._timeout)

    def _stalled(self) -> None:
        stream = self.stream
        why = f"took no bytes for {self._timeout:g}s"
        config = stream.factory.config
        _log.info(
            "{kind} {listener}: client {client} (HTTP/2 stream {stream}) {why}"
            " ({held} bytes waiting): reset",
            kind=config.kind,
            listener=config.name,
            client=stream.peer_text,
            stream=stream.stream_id,
            why=why,
            held=stream.pending_bytes,
        )
        self._tunnel.client_stalled(why)
