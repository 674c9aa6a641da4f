"""An HTTP/2 connection from a client (RFC 9113), on the `h2` package's sans-IO state machine
(framing, HPACK, flow control, the protocol's rules): its client connection
(proxyd.relay.http.server.ClientConnection) hands it every byte once ALPN chose `h2` or the
client sent the prior-knowledge preface (h2c), and each stream becomes an exchange
(proxyd.relay.http.h2_stream.H2Stream). SETTINGS_ENABLE_CONNECT_PROTOCOL lets clients open
WebSockets with extended CONNECT (RFC 8441: proxyd.relay.http.extended_connect), each one a
tunnel over its stream once the server switched (proxyd.relay.http.h2_tunnel).

Limits: the listener's `http2_max_concurrent_streams` (SETTINGS_MAX_CONCURRENT_STREAMS; h2
refuses streams past it), a header list bound (SETTINGS_MAX_HEADER_LIST_SIZE, and the
listener's max_header_size), a per-stream receive window that bounds what a request body
holds in memory. A protocol error closes the connection with GOAWAY; a stream's own error
resets that stream.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Final, Protocol

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.relay.http import extended_connect
from proxyd.relay.http.h2_limits import WINDOW_UPDATES_FREE, FloodGuard
from proxyd.relay.http.h2_stream import H2Stream
from proxyd.relay.http.h2_window import send_within_window
from proxyd.relay.http.messages import Headers, Request


class Connection(Protocol):
    """What the session uses of its client connection (proxyd.relay.http.server's
    ClientConnection), beside what its streams read of it (peer, tls, factory...)."""

    @property
    def factory(self) -> Any: ...

    @property
    def peer_text(self) -> str: ...

    @property
    def closing(self) -> bool: ...

    def send(self, pieces: list[bytes]) -> None: ...

    def lose_connection(self) -> None: ...

    def streams_idle(self, idle: bool) -> None: ...


_log = Logger(namespace="proxyd.relay.http")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 3.4): a connection that starts with it speaks
HTTP/2 with prior knowledge."""
CONNECTION_WINDOW: Final = 1 << 20
_IDLE: Final = (PingReceived, RemoteSettingsChanged, PriorityUpdated, UnknownFrameReceived)
"""Events of frames that ask work of proxyd and nothing of a server (h2_limits)."""


class H2Session:
    def __init__(self, connection: Connection, max_streams: int) -> None:
        self.connection = connection
        self.lost = False
        # What proxyd sends it made itself: names lower-cased, no connection-specific field
        # (h2_stream.NOT_FORWARDED), so h2 need not check it again; what it receives, h2
        # checks (pseudo-headers, forbidden fields, upper case).
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = self.h2 = H2Connection(config=config)
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: connection.factory.config.http2_stream_buffer,
                SettingCodes.MAX_HEADER_LIST_SIZE: connection.factory.config.max_header_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        # h2 holds its HPACK decoder to its default bound until settings change: ours now.
        conn.decoder.max_header_list_size = connection.factory.config.max_header_size
        conn.initiate_connection()
        self.draining = False
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, H2Stream] = {}
        self._guard = FloodGuard(connection.factory.reactor.seconds)
        self._updates_allowed = WINDOW_UPDATES_FREE
        """WINDOW_UPDATE frames the client may send before they count as idle frames: a few
        to begin with, then one per DATA frame proxyd sent (a client acknowledging what it
        read sends at most that many); a flood of them, each making proxyd look at every
        stream, is bounded by the idle frames'."""
        self._write()
        connection.streams_idle(True)

    # Bytes from the client.

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            _log.info(
                "{listener}: HTTP/2 protocol error from {client}: {error}",
                listener=self.connection.factory.config.name,
                client=self.connection.peer_text,
                error=e,
            )
            self._write()
            self.connection.lose_connection()
            return
        for event in events:
            if self.lost:
                return
            self._event(event)
        self._write()

    def _event(self, event: Any) -> None:
        if isinstance(event, RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, DataReceived):
            if not event.data and event.stream_ended is None:
                self._count("idle frames")
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.request_data(event.data, event.flow_controlled_length)
            else:  # a stream already answered and ended: its bytes are dropped, and freed
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.request_ended:
                stream.request_end()
        elif isinstance(event, StreamReset):
            stream = self._forget(event.stream_id)
            if stream is not None:
                stream.reset_by_client(Failure(error.ConnectionLost("stream reset by the client")))
            if event.remote_reset:
                self._count("resets")
        elif isinstance(event, _IDLE):
            self._count("idle frames")
            if (
                isinstance(event, RemoteSettingsChanged)
                and SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings
            ):
                # A larger initial window opens every stream's window without a
                # WINDOW_UPDATE (RFC 9113 6.9.2): what waited for it goes now.
                for stream in list(self.streams.values()):
                    self.flush_stream(stream, write=False)
        elif isinstance(event, WindowUpdated):
            if self._updates_allowed > 0:
                self._updates_allowed -= 1
            else:
                self._count("idle frames")
            targets = (
                list(self.streams.values())
                if event.stream_id == 0
                else [self.streams[event.stream_id]]
                if event.stream_id in self.streams
                else []
            )
            for stream in targets:
                self.flush_stream(stream, write=False)
        elif isinstance(event, TrailersReceived):
            pass  # request trailers are not passed upstream (HTTP/1.1 servers rarely take them)
        elif isinstance(event, ConnectionTerminated):
            self.connection.lose_connection()

    def _count(self, kind: str) -> None:
        """A frame that costs proxyd work and asks nothing of a server: past its bound the
        client is told to calm down and the connection closes (proxyd.relay.http.h2_limits)."""
        why = self._guard.count(kind)
        if why is None:
            return
        _log.warn(
            "{listener}: HTTP/2 client {client} sent {why}: GOAWAY, connection closed",
            listener=self.connection.factory.config.name,
            client=self.connection.peer_text,
            why=why,
        )
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        self._write()
        self.connection.lose_connection()
        self.connection_lost(Failure(error.ConnectionAborted(why)))

    def _request(self, stream_id: int, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        pseudo: dict[bytes, bytes] = {}
        headers: Headers = []
        cookies: list[bytes] = []
        for name, value in raw:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value)
            else:
                headers.append((name, value))
        if cookies:  # RFC 9113 8.2.3: one field for the HTTP/1.1 side
            headers.append((b"cookie", b"; ".join(cookies)))
        method = pseudo.get(b":method", b"")
        protocol = pseudo.get(b":protocol")  # h2 takes it on CONNECT only
        if protocol == extended_connect.PROTOCOL:
            method = b"GET"  # the HTTP/1.1 handshake's: its routes, rules and filters
        authority = pseudo.get(b":authority")
        if authority is not None and not any(name == b"host" for name, _ in headers):
            headers.insert(0, (b"host", authority))
        host = next((value for name, value in headers if name == b"host"), b"")
        length = next((value for name, value in headers if name == b"content-length"), None)
        content_length = int(length) if length is not None and length.isdigit() else None
        body = not ended and protocol is None  # an extended CONNECT's DATA is the tunnel's
        request = Request(
            method,
            pseudo.get(b":path", b"/"),
            "2",
            headers,
            keep_alive=True,
            chunked=body and content_length is None,
            content_length=content_length if body else None,
            host=host,
            upgrade=protocol is not None,
        )
        if self.draining:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if not self.streams:
            self.connection.streams_idle(False)
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        if ended:
            stream.request_ended = True
        stream.start(request)

    # Bytes to the client.

    def send_headers(self, stream_id: int, headers: Headers) -> None:
        try:
            self.h2.send_headers(stream_id, headers)
        except (StreamClosedError, ProtocolError):
            return
        self._later()

    def flush_stream(self, stream: H2Stream, write: bool = True) -> None:
        """Send what the stream's window allows; end it once all is sent."""
        conn = self.h2
        sid = stream.stream_id
        if stream.ended:
            return
        try:
            self._updates_allowed += send_within_window(conn, sid, stream)
            if not stream.pending and stream.ending is not False:
                if isinstance(stream.ending, list):
                    conn.send_headers(sid, stream.ending, end_stream=True)
                else:
                    conn.end_stream(sid)
                stream.ended = True
                self._forget(sid)
                if not stream.request_ended:
                    conn.reset_stream(sid, ErrorCodes.NO_ERROR)
        except (StreamClosedError, ProtocolError):
            stream.ended = True
            self._forget(sid)
        stream.sent()
        if write:
            self._later()

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (StreamClosedError, ProtocolError):
            return
        self._later()

    def _forget(self, stream_id: int) -> H2Stream | None:
        """Drop a stream that ended. The DATA it received and did not hand on is handed back
        to the connection's window (RFC 9113 6.9), which it would otherwise shrink for good;
        the caller writes."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None and (unread := stream.take_unacknowledged()):
            with suppress(StreamClosedError, ProtocolError):
                self.h2.acknowledge_received_data(unread, stream_id)
        return stream

    def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        stream = self._forget(stream_id)
        if stream is not None:
            stream.ended = True
        try:
            self.h2.reset_stream(stream_id, code)
        except (StreamClosedError, ProtocolError):
            return
        self._later()

    def _later(self) -> None:
        self._write()
        if not self.streams and not self.lost:
            if self.connection.closing:
                self.connection.lose_connection()  # drained: GOAWAY sent, no stream left
            else:
                self.connection.streams_idle(True)

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.connection.send([data])

    # The connection's end.

    def writable(self, writable: bool) -> None:
        for stream in list(self.streams.values()):
            stream.tell_writable(writable and stream.writable)

    def drain(self) -> None:
        """proxyd stops or reloads: GOAWAY with the last stream taken, the open streams
        finish, later ones are refused. (h2's close_connection would end the open streams
        too: the frame is written here, the state machine left open.)"""
        if self.draining:
            return
        self.draining = True
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._write()
        self.connection.send([goaway.serialize()])
        self._later()

    def connection_lost(self, reason: Failure) -> None:
        self.lost = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.reset_by_client(reason)
