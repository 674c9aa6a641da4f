"""An upgraded connection on an HTTP listener: once the server answered a WebSocket upgrade
with 101, the client connection and that upstream connection are spliced and bytes flow both
ways untouched, as in the TCP relay.

Each side's full write buffer pauses reading from the other (the client connection and the
upstream connection are their transports' producers already). A close from either side
closes the other once what it sent has been written; a reset is passed on as a reset. A side
that takes none of what waits for it for tunnel_timeout (it stopped reading; a close waiting
on it) gets both sides reset (`client_stalled`, `server_stalled`). The tunnel ends, and its
exchange is logged, when both connections are gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.model import HttpListenerConfig
from proxyd.metrics import ErrorKind
from proxyd.relay.io import Transport, closes_at_once, no_delay, reset, send_now
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import CloseReason, IdleTimer, Side, close_reason

if TYPE_CHECKING:
    from proxyd.relay.http.upstream import UpstreamConnection

_log = Logger(namespace="proxyd.relay.http")


class TunnelClient(Protocol):
    """What the tunnel uses of the client connection (proxyd.relay.http.server's
    ClientConnection), which hands it the client's bytes and events once `tunnel` is set."""

    tunnel: Tunnel | None

    @property
    def channel(self) -> Transport: ...

    @property
    def transport(self) -> object: ...

    @property
    def writable(self) -> bool: ...

    @property
    def lost(self) -> bool: ...

    @property
    def peer_text(self) -> str: ...

    def set_send_timeout(self, timeout: float) -> None: ...

    def flush(self) -> None: ...

    def lose_connection(self) -> None: ...

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


class TunnelOwner(Protocol):
    """What the tunnel uses of the exchange that answered the upgrade
    (proxyd.relay.http.exchange's Exchange), which logs the tunnel once it ended."""

    error: str | None
    error_kind: str | None

    @property
    def clock(self) -> Any:
        """The listener's reactor (IReactorTime)."""

    @property
    def config(self) -> HttpListenerConfig: ...

    def tunnel_ended(self, tunnel: Tunnel) -> None: ...


def close(transport: Transport) -> None:
    """Close once the write buffer is flushed (the connection is its transport's producer:
    unregistered first, as a registered one would keep the transport open)."""
    transport.unregisterProducer()
    transport.loseConnection()


class Tunnel:
    """Bytes between `client` and `upstream` after a 101, for `exchange`."""

    def __init__(
        self,
        exchange: TunnelOwner,
        client: TunnelClient,
        upstream: UpstreamConnection,
        timeout: float,
    ) -> None:
        self.exchange = exchange
        self.client = client
        self.upstream = upstream
        self.bytes_in = 0
        """Client to server, after the 101."""
        self.bytes_out = 0
        self.reason: CloseReason | None = None
        self._client_lost = False
        self._upstream_lost = False
        self._client_closed = False
        """close() or reset() was called on the client's transport."""
        self._upstream_closed = False
        self._closing = False
        self._ended = False
        self.timeout = timeout
        self._idle = IdleTimer(exchange.clock, timeout, self._idle_timed_out)
        self._upstream_sending: SendTimeout | None = None
        """The server's send timeout (the client's is its connection's)."""

    def start(self, from_client: bytes, from_upstream: bytes) -> None:
        """Splice; the bytes each side sent after the upgrade's head go first."""
        self._idle.start()
        self.client.tunnel = self
        self.client.set_send_timeout(self.timeout)
        self.upstream.splice(self)
        # From here bytes are written at once (interactive traffic gains nothing from
        # waiting for the turn's end), after what the relay's batches hold: the 101 first.
        self.client.flush()
        self.upstream.flush()
        no_delay(self.client.transport)
        no_delay(self.upstream.transport)
        if from_upstream:
            self.upstream_data(from_upstream)
        if from_client:
            self.client_data(from_client)
        if not self.client.writable:
            self.upstream.pause_reading()
        if not self.upstream.writable:
            self.client.pause_reading("upstream")
        self.client.resume_reading("upgrade")
        self.client.resume_reading("backlog")

    # Bytes.

    def client_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._idle.touch()
        if not self._upstream_lost:
            send_now(self.upstream.channel, [data])

    def upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._idle.touch()
        if not self.client.lost:
            send_now(self.client.channel, [data])

    # Backpressure.

    def client_writable(self, writable: bool) -> None:
        if writable:
            self.upstream.resume_reading()
        else:
            self.upstream.pause_reading()

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            if self._upstream_sending is not None:
                self._upstream_sending.resumed()
            self.client.resume_reading("upstream")
        else:
            self._upstream_send_watch().paused()
            self.client.pause_reading("upstream")

    def _upstream_send_watch(self) -> SendTimeout:
        sending = self._upstream_sending
        if sending is None:
            sending = self._upstream_sending = SendTimeout(
                self.exchange.clock, self.upstream.transport, self.timeout, self._upstream_stalled
            )
        return sending

    def upstream_readable(self) -> None:
        """Unused: a spliced connection hands over bytes, not parsed events."""

    # Ends.

    def client_lost(self, reason: Failure) -> None:
        self._client_lost = True
        why = close_reason(Side.CLIENT, reason)
        self._close_as(why)
        self._end_upstream(reset_it=why is CloseReason.CLIENT_RESET)
        self._maybe_end()

    def upstream_lost(self, reason: Failure) -> None:
        self._upstream_lost = True
        if self._upstream_sending is not None:
            self._upstream_sending.cancel()
        why = close_reason(Side.SERVER, reason)
        self._close_as(why)
        self._end_client(reset_it=why is CloseReason.SERVER_RESET)
        self._maybe_end()

    def _idle_timed_out(self) -> None:
        if self._closing:
            # A close that moved nothing for a whole timeout: a peer does not read.
            self._end_client(reset_it=True)
            self._end_upstream(reset_it=True)
            return
        self._close_as(CloseReason.IDLE_TIMEOUT)
        self._end_client(reset_it=False)
        self._end_upstream(reset_it=False)
        self._idle.start()

    def client_stalled(self, why: str | None) -> None:
        """The client took nothing for tunnel_timeout (its connection's send timeout, which
        logs it), or with `why` None a close waiting on it did not end: both sides are
        reset."""
        if why is None:
            self._end_client(reset_it=True)
            self._end_upstream(reset_it=True)
            return
        self._stalled(CloseReason.CLIENT_STALLED, ErrorKind.CLIENT_STALLED, f"client {why}")

    def _upstream_stalled(self) -> None:
        sending = self._upstream_sending
        if self._upstream_lost or sending is None:
            return
        if sending.held != 0:
            why = f"took no bytes for {self.timeout:g}s"
            _log.info(
                "{kind} {listener}: tunnel of {client}: server {server} {why}"
                " ({held} bytes waiting): reset",
                kind=self.exchange.config.kind,
                listener=self.exchange.config.name,
                client=self.client.peer_text,
                server=self.upstream.server.name,
                why=why,
                held="?" if sending.held is None else sending.held,
            )
            self._stalled(CloseReason.SERVER_STALLED, ErrorKind.UPSTREAM_STALLED, f"server {why}")
        else:  # a close that did not end
            self._end_client(reset_it=True)
            self._end_upstream(reset_it=True)

    def _stalled(self, reason: CloseReason, kind: ErrorKind, why: str) -> None:
        """Reset both sides. A tunnel already closing keeps its first reason (the access
        log's `close`), as ConnectionRecord does."""
        self._close_as(reason)
        exchange = self.exchange
        if exchange.error_kind is None:
            exchange.error = why
            exchange.error_kind = kind
        self._end_client(reset_it=True)
        self._end_upstream(reset_it=True)

    def _end_client(self, reset_it: bool) -> None:
        if self._client_lost or (self._client_closed and not reset_it):
            return
        self._client_closed = True
        if reset_it:
            reset(self.client.channel)
        else:
            self.client.lose_connection()  # bounded by its send timeout

    def _end_upstream(self, reset_it: bool) -> None:
        if self._upstream_lost or (self._upstream_closed and not reset_it):
            return
        self._upstream_closed = True
        channel = self.upstream.channel
        if reset_it:
            reset(channel)
            return
        close(channel)
        if not closes_at_once(channel):
            self._upstream_send_watch().closing()

    def _close_as(self, reason: CloseReason) -> None:
        self._closing = True
        if self.reason is None:
            self.reason = reason

    def _maybe_end(self) -> None:
        if self._ended or not (self._client_lost and self._upstream_lost):
            return
        self._ended = True
        self._idle.cancel()
        self.exchange.tunnel_ended(self)
