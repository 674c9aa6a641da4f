"""An upgraded connection on an HTTP listener: once the server answered a WebSocket upgrade
with 101, the client's side and that upstream connection are spliced and bytes flow both
ways untouched, through the same splice as the TCP relay's (proxyd.relay.splice). The
client's side is a ClientPipe: the HTTP/1.1 connection that asked for the upgrade
(ConnectionPipe), or the HTTP/2 stream of an extended CONNECT (proxyd.relay.http.h2_tunnel).

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

from proxyd.clock import Clock
from proxyd.config.model import HttpListenerConfig
from proxyd.metrics import ErrorKind
from proxyd.relay.io import Transport, closes_at_once, no_delay, reset, send_now
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import CloseReason, Side
from proxyd.relay.splice import OnStall, Pipe, Splice

if TYPE_CHECKING:
    from proxyd.relay.http.upstream import UpstreamConnection

_log = Logger(namespace="proxyd.relay.http")


class TunnelClient(Protocol):
    """What ConnectionPipe uses of the client connection (proxyd.relay.http.server's
    ClientConnection), which hands the tunnel the client's bytes and events once `tunnel` is
    set."""

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


class ClientPipe(Pipe, Protocol):
    """The client's side of a tunnel, as the splice and the tunnel use it."""

    @property
    def status(self) -> int:
        """What the client was answered for the switch: 101, or 200 on an HTTP/2 stream."""

    @property
    def writable(self) -> bool: ...

    @property
    def peer_text(self) -> str: ...

    def attach(self, tunnel: Tunnel) -> None:
        """The client's events go to `tunnel` from now on."""

    def started(self, tunnel: Tunnel) -> None:
        """The splice runs: hand `tunnel` what the client sent before, and read on."""


class ConnectionPipe:
    """The HTTP/1.1 client connection as the client side of the splice. It is its
    transport's producer and has its own send timeout (tunnel_timeout from the 101 on), which
    reports to the tunnel (Tunnel.client_stalled). `early`: the bytes the client sent behind
    its upgrade request's head, before the 101."""

    status = 101

    def __init__(self, client: TunnelClient, early: bytes) -> None:
        self.client = client
        self._early = early

    @property
    def writable(self) -> bool:
        return self.client.writable

    @property
    def peer_text(self) -> str:
        return self.client.peer_text

    def attach(self, tunnel: Tunnel) -> None:
        client = self.client
        client.tunnel = tunnel
        client.set_send_timeout(tunnel.timeout)
        # From here bytes are written at once (interactive traffic gains nothing from
        # waiting for the turn's end), after what the relay's batches hold: the 101 first.
        client.flush()
        no_delay(client.transport)

    def started(self, tunnel: Tunnel) -> None:
        early, self._early = self._early, b""
        if early:
            tunnel.client_data(early)
        self.client.resume_reading("upgrade")
        self.client.resume_reading("backlog")

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        """Nothing to wire: the connection reports its write buffer (Tunnel.client_writable)."""

    def send(self, data: bytes) -> None:
        if not self.client.lost:
            send_now(self.client.channel, [data])

    def shut_write(self) -> bool:
        return False  # the HTTP client connection is not half-closeable: never asked

    def close(self) -> None:
        self.client.lose_connection()  # bounded by its send timeout

    def reset(self) -> None:
        reset(self.client.channel)

    def pause_reading(self) -> None:
        self.client.pause_reading("upstream")

    def resume_reading(self) -> None:
        self.client.resume_reading("upstream")

    @property
    def waiting(self) -> bool:
        return False  # its own send timeout bounds a close that waits on it

    def gone(self) -> None:
        pass


class _UpstreamPipe:
    """The upstream connection as the other side. It is its transport's producer (it reports
    its write buffer: Tunnel.upstream_writable); its send timeout is the tunnel's, made when
    its write buffer first fills or a close has to wait."""

    def __init__(self, upstream: UpstreamConnection, clock: Clock, timeout: float) -> None:
        self.upstream = upstream
        self._clock = clock
        self._timeout = timeout
        self._on_stall: OnStall | None = None
        self.sending: SendTimeout | None = None

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        self._on_stall = on_stall

    def writable(self, writable: bool) -> None:
        if writable:
            if self.sending is not None:
                self.sending.resumed()
        else:
            self._watch().paused()

    def send(self, data: bytes) -> None:
        send_now(self.upstream.channel, [data])

    def shut_write(self) -> bool:
        return False

    def close(self) -> None:
        channel = self.upstream.channel
        close(channel)
        if not closes_at_once(channel):
            self._watch().closing()

    def reset(self) -> None:
        reset(self.upstream.channel)

    def pause_reading(self) -> None:
        self.upstream.pause_reading()

    def resume_reading(self) -> None:
        self.upstream.resume_reading()

    @property
    def waiting(self) -> bool:
        return self.sending is not None and self.sending.waiting

    def gone(self) -> None:
        if self.sending is not None:
            self.sending.cancel()

    def _watch(self) -> SendTimeout:
        sending = self.sending
        if sending is None:
            sending = self.sending = SendTimeout(
                self._clock, self.upstream.transport, self._timeout, self._stalled
            )
        return sending

    def _stalled(self) -> None:
        sending = self.sending
        if self._on_stall is not None and sending is not None:
            self._on_stall(sending.held, sending.timeout)


class Tunnel:
    """Bytes between `client` and `upstream` after a 101, for `exchange`: the two sides'
    events handed to one Splice (proxyd.relay.splice)."""

    def __init__(
        self,
        exchange: TunnelOwner,
        client: ClientPipe,
        upstream: UpstreamConnection,
        timeout: float,
    ) -> None:
        self.exchange = exchange
        self.client = client
        self.upstream = upstream
        self.timeout = timeout
        self._upstream_pipe = _UpstreamPipe(upstream, exchange.clock, timeout)
        self._splice = Splice(
            exchange.clock, client, self._upstream_pipe, self, idle_timeout=timeout
        )
        self._client_why = ""

    @property
    def bytes_in(self) -> int:
        """Client to server, after the 101."""
        return self._splice.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._splice.bytes_out

    @property
    def reason(self) -> CloseReason | None:
        return self._splice.reason

    def start(self) -> None:
        """Splice; the bytes each side sent after the upgrade's head go first."""
        client, upstream = self.client, self.upstream
        client.attach(self)
        upstream.splice(self)
        upstream.flush()
        no_delay(upstream.transport)
        self._splice.start()
        from_upstream = upstream.reader.upgraded
        if from_upstream:
            self.upstream_data(from_upstream)
        client.started(self)
        if not client.writable:
            upstream.pause_reading()
        if not upstream.writable:
            client.pause_reading()

    # Events of the client connection (proxyd.relay.http.server) and of the upstream one.

    def client_data(self, data: bytes) -> None:
        self._splice.received(Side.CLIENT, data)

    def upstream_data(self, data: bytes) -> None:
        self._splice.received(Side.SERVER, data)

    def client_read_closed(self) -> None:
        """The client sends nothing more (an HTTP/2 stream's END_STREAM)."""
        self._splice.read_closed(Side.CLIENT)

    def client_writable(self, writable: bool) -> None:
        self._splice.writable(Side.CLIENT, writable)

    def upstream_writable(self, writable: bool) -> None:
        self._upstream_pipe.writable(writable)
        self._splice.writable(Side.SERVER, writable)

    def upstream_readable(self) -> None:
        """Unused: a spliced connection hands over bytes, not parsed events."""

    def client_lost(self, reason: Failure) -> None:
        self._splice.lost(Side.CLIENT, reason)

    def upstream_lost(self, reason: Failure) -> None:
        self._splice.lost(Side.SERVER, reason)

    def client_stalled(self, why: str | None) -> None:
        """The client took nothing for tunnel_timeout (its connection's send timeout, which
        logs it), or with `why` None a close waiting on it did not end: both sides are
        reset."""
        self._client_why = why or ""
        self._splice.stalled(Side.CLIENT, None if why is not None else 0, self.timeout)

    # proxyd.relay.splice's SpliceOwner.

    def splice_stalled(self, side: Side, held: int | None, timeout: float, first: bool) -> None:
        if side is Side.CLIENT:
            why, kind = f"client {self._client_why}", ErrorKind.CLIENT_STALLED
        else:
            took = f"took no bytes for {timeout:g}s"
            _log.info(
                "{kind} {listener}: tunnel of {client}: server {server} {why}"
                " ({held} bytes waiting): reset",
                kind=self.exchange.config.kind,
                listener=self.exchange.config.name,
                client=self.client.peer_text,
                server=self.upstream.server.name,
                why=took,
                held="?" if held is None else held,
            )
            why, kind = f"server {took}", ErrorKind.UPSTREAM_STALLED
        exchange = self.exchange
        if exchange.error_kind is None:
            exchange.error = why
            exchange.error_kind = kind

    def splice_ended(self) -> None:
        self.exchange.tunnel_ended(self)
