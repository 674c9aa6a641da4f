"""HTTP/2 connections to a pool's servers (`protocol = h2`: over TLS with ALPN h2; `h2c`: in
cleartext with prior knowledge), on the `h2` package's sans-IO client state machine. Each
carries many requests at once, one UpstreamStream each (proxyd.relay.http.h2_upstream_stream);
the multiplexer that hands out streams is proxyd.relay.http.h2_upstreams.

A GOAWAY stops new streams on the connection: the streams the server took (up to its last
stream id) finish, later ones are refused (sent again elsewhere by their Forward), and the
connection closes once its last stream is over. A protocol error or a lost connection cuts
every stream on it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final, Protocol, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from proxyd.clock import Deadline
from proxyd.h2_internals import keep_open_after_goaway
from proxyd.pool import Server
from proxyd.relay.http.h2_upstream_metrics import H2ServerCounts
from proxyd.relay.http.h2_upstream_stream import StreamLost, UpstreamStream
from proxyd.relay.http.h2_window import send_within_window
from proxyd.relay.http.messages import Headers
from proxyd.relay.io import Transport, no_delay

_log = Logger(namespace="proxyd.relay.http")

STREAM_WINDOW: Final = 256 * 1024
"""The receive window of each stream: the most response body a stream holds unread."""
CONNECTION_WINDOW: Final = 1 << 20
ASSUMED_STREAMS: Final = 100
"""Streams opened at once before the server's SETTINGS say how many it allows (RFC 9113
6.5.2 recommends a limit of no less than 100)."""


class Owner(Protocol):
    """What a connection tells its multiplexer (proxyd.relay.http.h2_upstreams)."""

    pool_name: str
    keepalive_timeout: float
    reactor: Any

    def ready(self, conn: H2UpstreamConnection) -> None:
        """Handshake done: streams may be opened."""

    def room(self, conn: H2UpstreamConnection) -> None:
        """A stream slot freed up (or the server allows more)."""

    def gone(self, conn: H2UpstreamConnection, reason: Failure) -> None:
        """The connection closed (or failed before it was ready)."""


@implementer(IPushProducer, IHandshakeListener)
class H2UpstreamConnection(TwistedProtocol):
    """One HTTP/2 connection to `server`, its streams by id; it counts on `counts`, the
    server's."""

    def __init__(self, owner: Owner, server: Server, tls: bool, counts: H2ServerCounts) -> None:
        self.owner = owner
        self.server = server
        self.counts = counts
        self.scheme = b"https" if tls else b"http"
        self._tls = tls
        self.streams: dict[int, UpstreamStream] = {}
        self.reserved = 0
        """Streams handed out whose HEADERS are not sent yet."""
        self.is_ready = False
        self.draining = False
        self.lost = False
        self.writable = True
        self.idle = Deadline(owner.reactor, self._idle_expired)
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = H2Connection(config=config)
        self.h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )

    @property
    def channel(self) -> Transport:
        return cast(Transport, self.transport)

    # Capacity, for the multiplexer.

    @property
    def max_streams(self) -> int:
        if not self._settings_seen:
            return ASSUMED_STREAMS
        return cast(int, self.h2.remote_settings.max_concurrent_streams)

    _settings_seen = False
    """The server's first SETTINGS came (until then ASSUMED_STREAMS bounds the streams)."""

    @property
    def has_room(self) -> bool:
        return (
            self.is_ready
            and not self.draining
            and not self.lost
            and len(self.streams) + self.reserved < self.max_streams
        )

    def reserve(self) -> UpstreamStream:
        self.reserved += 1
        self.idle.clear()
        return UpstreamStream(self)

    # The transport.

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.channel.registerProducer(self, True)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._write()
        if not self._tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "disconnecting", False):
            return  # the certificate's verification failed
        if getattr(self.transport, "negotiatedProtocol", None) != b"h2":
            self.lost_reason = ConnectionError("the server did not choose h2 in ALPN")
            self.channel.abortConnection()
            return
        self._ready()

    lost_reason: BaseException | None = None

    def _ready(self) -> None:
        self.is_ready = True
        self.counts.connections += 1
        self.owner.ready(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self._protocol_error(e)
            return
        for event in events:
            if self.lost:
                return
            self._event(event)
        self._write()

    def _event(self, event: Any) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, ResponseReceived):
            if stream is not None:
                stream.response_head(event.headers, event.stream_ended is not None)
        elif isinstance(event, DataReceived):
            if stream is not None:
                stream.data(event.data, event.flow_controlled_length)
            else:  # a stream proxyd let go of: the connection's window is given back
                self._acknowledge_lost(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, TrailersReceived):
            if stream is not None:
                stream.ended(event.headers)
        elif isinstance(event, StreamEnded):
            if stream is not None:
                stream.ended(None)
        elif isinstance(event, InformationalResponseReceived):
            if stream is not None:
                stream.response_head(event.headers, False)
        elif isinstance(event, StreamReset):
            if stream is not None:
                stream.reset(event.error_code)
        elif isinstance(event, WindowUpdated):
            targets = list(self.streams.values()) if not event.stream_id else [stream]
            for target in targets:
                if target is not None:
                    target.window_opened()
        elif isinstance(event, RemoteSettingsChanged):
            self._settings_seen = True
            if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
                self.owner.room(self)
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                for target in list(self.streams.values()):
                    target.window_opened()
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event.error_code or 0, event.last_stream_id)

    def _goaway(self, code: int, last: int | None) -> None:
        self.draining = True
        last = last if last is not None else 0
        counts = self.counts
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last:
                del self.streams[stream_id]
                counts.streams -= 1
                if not stream.lost:
                    counts.goaway += 1
                stream.connection_lost(StreamLost("upstream sent GOAWAY"), refused=True)
        if code != ErrorCodes.NO_ERROR:
            _log.info(
                "pool {pool}: {server} sent GOAWAY ({code})",
                pool=self.owner.pool_name,
                server=self.server.name,
                code=code,
            )
            self.channel.loseConnection()
            return
        if not self.streams:
            self.channel.loseConnection()
            return
        # h2 closes its state machine on GOAWAY; the streams the server took may finish
        # (RFC 9113 6.8): the state is put back, and proxyd opens no stream on it again.
        keep_open_after_goaway(self.h2)

    def _protocol_error(self, error: Exception) -> None:
        _log.info(
            "pool {pool}: HTTP/2 protocol error from {server}: {error}",
            pool=self.owner.pool_name,
            server=self.server.name,
            error=error,
        )
        self.lost_reason = ConnectionError(f"HTTP/2 protocol error: {error}")
        self.channel.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.idle.release()
        streams, self.streams = self.streams, {}
        counts = self.counts
        if self.is_ready:
            counts.connections -= 1
        counts.streams -= len(streams)
        why = self.lost_reason or ConnectionError("upstream closed the connection")
        for stream in streams.values():
            if not stream.lost and not stream.response_ended:
                counts.connection_lost += 1
            stream.connection_lost(why)
        self.owner.gone(self, Failure(self.lost_reason) if self.lost_reason else reason)

    # IPushProducer: the transport's write buffer.

    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True
        for stream in list(self.streams.values()):
            stream.window_opened()

    def stopProducing(self) -> None:
        pass

    # Link, for the streams.

    def open_stream(self, stream: UpstreamStream, headers: Headers, end: bool) -> None:
        self.reserved -= 1
        if self.lost or self.draining:
            stream.connection_lost(StreamLost("upstream connection closing"), refused=True)
            return
        stream_id = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end)
        except H2Error as e:
            stream.connection_lost(StreamLost(f"cannot open a stream: {e}"), refused=True)
            return
        stream.stream_id = stream_id
        self.streams[stream_id] = stream
        counts = self.counts
        counts.streams += 1
        counts.streams_total += 1
        self._write()

    def flush(self, stream: UpstreamStream) -> None:
        """Send the stream's pending body within its window, then END_STREAM."""
        h2 = self.h2
        sid = stream.stream_id
        if not sid or self.lost or sid not in self.streams:
            return
        try:
            if self.writable:  # (send_data only queues in h2: writing is after the loop)
                send_within_window(h2, sid, stream)
            if not stream.pending and stream.ending:
                h2.end_stream(sid)
                stream.end_sent = True
        except H2Error:
            stream.pending.clear()
            stream.pending_bytes = 0
        stream.sent()
        self._write()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self._acknowledge_lost(stream_id, size)
        self._write()

    def _acknowledge_lost(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            return

    def release(self, stream: UpstreamStream, code: ErrorCodes | None) -> None:
        sid = stream.stream_id
        if not sid:
            self.reserved = max(self.reserved - 1, 0)
        elif self.streams.pop(sid, None) is not None:
            self.counts.streams -= 1
            if code is not None and not self.lost:
                if not stream.response_ended:
                    self.counts.cancelled += 1
                with contextlib.suppress(H2Error):
                    self.h2.reset_stream(sid, code)
                self._write()
        if self.lost:
            return
        if self.draining and not self.streams:
            self.channel.loseConnection()
            return
        if not self.streams and not self.reserved:
            self.idle.set_in(self.owner.keepalive_timeout)
        self.owner.room(self)

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.channel.write(data)

    def _idle_expired(self) -> None:
        if self.streams or self.reserved or self.lost:
            return
        self.draining = True
        with contextlib.suppress(H2Error):
            self.h2.close_connection()
        self._write()
        self.channel.loseConnection()

    def close(self) -> None:
        """proxyd stops: GOAWAY, and the connection closes (its streams cut)."""
        self.draining = True
        if not self.lost:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._write()
            self.channel.loseConnection()
