"""One symmetric byte splice between two connections, for the TCP relay and the HTTP relay's
WebSocket tunnel (design principle 10). As in Twisted's portforward, both sides are handled
by the same code: each event names the side it came from, and the other side is its `peer`.

- Bytes from one side are written to its peer as they come, and counted.
- Backpressure both ways: a side whose write buffer is full pauses reading from its peer,
  either by the transports being each other's producers (`TransportPipe.splice_to`) or by the
  side reporting `writable(side, False)`.
- A FIN from one side is passed on to its peer (half-close), unless the peer cannot
  half-close (TLS: close_notify after what it was sent instead); once both ways are shut,
  both close.
- A side that is lost ends the splice: a reset is passed on to its peer as a reset (RST), a
  clean close as a graceful close (after what waits for it to be written).
- Idle for `idle_timeout` both ways: both close gracefully (`idle_timeout`); a close that
  moves nothing for another timeout is reset, unless a side's send timeout still watches
  bytes leaving.
- A side that takes none of what waits for it for its send timeout (its pipe reports the
  stall) gets both sides reset (`client_stalled`, `server_stalled`).
- The first close reason wins (`reason`); the owner learns of stalls and of the end, once
  both sides are gone.

A side is a `Pipe`: what the splice needs of one connection. `TransportPipe` is a plain
Twisted transport (TCP, or TLS over TCP); proxyd.relay.http.tunnel has its own over the HTTP
relay's connection objects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from proxyd.clock import Clock
from proxyd.relay.io import (
    SendBatch,
    Transport,
    closes_at_once,
    producer_paused,
    reset,
    send_now,
)
from proxyd.relay.send_timeout import SendTimeout
from proxyd.relay.session import CloseReason, IdleTimer, Side, close_reason

__all__ = ["Meter", "Pipe", "Splice", "SpliceOwner", "TransportPipe"]

OnStall = Callable[[int | None, float], None]
"""Called with the bytes held (None: unknown; 0: a close that never ended) and the timeout."""

_RESETS: Final = frozenset({CloseReason.CLIENT_RESET, CloseReason.SERVER_RESET})
_STALLED: Final = {Side.CLIENT: CloseReason.CLIENT_STALLED, Side.SERVER: CloseReason.SERVER_STALLED}
_COUNTED_AS: Final = {Side.CLIENT: "bytes_in", Side.SERVER: "bytes_out"}


class Pipe(Protocol):
    """What the splice needs of one connection."""

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        """Spliced to `peer` from now on: wire the backpressure, and report a send timeout
        run out to `on_stall`."""

    def send(self, data: bytes) -> None:
        """Write `data` now."""

    def shut_write(self) -> bool:
        """Pass a FIN on (half-close); False when this connection cannot (TLS)."""

    def close(self) -> None:
        """Close once what was written is sent (bounded by its send timeout)."""

    def reset(self) -> None:
        """Abort with an RST."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    @property
    def waiting(self) -> bool:
        """Its send timeout watches bytes that wait for the peer."""

    def gone(self) -> None:
        """The connection is lost: stop watching it."""


class SpliceOwner(Protocol):
    """What the splice tells the relay that made it."""

    def splice_stalled(self, side: Side, held: int | None, timeout: float, first: bool) -> None:
        """`side` took none of what waits for it for `timeout` (both sides are being reset):
        log it, count it. `first`: no close reason was set before (the stall is the
        splice's reason); else it counts on its own."""

    def splice_ended(self) -> None:
        """Both sides are gone."""


class Meter(Protocol):
    """Counters of the bytes relayed, as they flow (proxyd.metrics.Cell)."""

    bytes_in: int
    bytes_out: int


class _Leg:
    """One side of the splice. (A plain class: mypyc cannot build an attrs class whose field
    names its own class.)"""

    __deletable__ = ("peer",)
    """mypyc: a native class's attribute may be deleted only when listed (release)."""

    peer: _Leg

    def __init__(self, side: Side, pipe: Pipe) -> None:
        self.side = side
        self.pipe = pipe
        self.received = 0
        self.read_closed = False
        self.lost = False
        self.closed = False
        """close() or reset() was called on it."""

    def close(self) -> None:
        if not (self.lost or self.closed):
            self.closed = True
            self.pipe.close()

    def reset(self) -> None:
        if not self.lost:
            self.closed = True
            self.pipe.reset()


class Splice:
    """Bytes between a client connection and a server connection, both ways, until both are
    gone. `meters` count the bytes as they flow (client to server as bytes_in)."""

    def __init__(
        self,
        clock: IReactorTime,
        client: Pipe,
        server: Pipe,
        owner: SpliceOwner,
        *,
        idle_timeout: float,
        meters: Sequence[Meter] = (),
    ) -> None:
        self._owner = owner
        self._meters = tuple(meters)
        first, second = _Leg(Side.CLIENT, client), _Leg(Side.SERVER, server)
        first.peer, second.peer = second, first
        self._legs = {Side.CLIENT: first, Side.SERVER: second}
        self._idle = IdleTimer(clock, idle_timeout, self._idle_timed_out)
        self.reason: CloseReason | None = None
        self.closing = False
        self.ended = False

    @property
    def bytes_in(self) -> int:
        """Client to server."""
        return self._legs[Side.CLIENT].received

    @property
    def bytes_out(self) -> int:
        return self._legs[Side.SERVER].received

    def start(self) -> None:
        self._idle.start()
        for leg in self._legs.values():
            leg.pipe.splice_to(leg.peer.pipe, functools.partial(self.stalled, leg.side))

    def release(self) -> None:
        """The owner is done with the splice (both sides gone, counted): let go of the owner,
        of the legs' pipes' timers and of the legs' links to each other, so that the
        connection's objects are freed at once by their reference counts, not left in cycles
        for the garbage collector."""
        self._owner = _RELEASED
        self._idle.release()
        for leg in self._legs.values():
            leg.pipe.gone()
            del leg.peer

    def note(self, reason: CloseReason) -> None:
        """A close reason, unless one was set before (the first wins)."""
        if self.reason is None:
            self.reason = reason

    # Events of one side.

    def received(self, side: Side, data: bytes) -> None:
        self._idle.touch()
        leg = self._legs[side]
        size = len(data)
        leg.received += size
        if self._meters:
            name = _COUNTED_AS[side]
            for meter in self._meters:
                setattr(meter, name, getattr(meter, name) + size)
        peer = leg.peer
        if not peer.lost:
            peer.pipe.send(data)

    def read_closed(self, side: Side) -> None:
        """A FIN from `side`: pass it on; once both ways are shut, close."""
        leg = self._legs[side]
        leg.read_closed = True
        self.note(close_reason(side, None))
        if self.closing:
            return
        peer = leg.peer
        if peer.lost:
            self.close()
            return
        if not peer.pipe.shut_write():
            # No half-close over TLS: close_notify after what it was sent. Until its own
            # close_notify (TLS 1.3 peers may still send), it is relayed.
            peer.close()
            return
        if peer.read_closed:
            self.close()

    def lost(self, side: Side, why: Failure) -> None:
        """`side` is gone (`why`: connectionLost's reason)."""
        leg = self._legs[side]
        leg.lost = True
        leg.pipe.gone()
        if not self.closing:
            self.closing = True
            reason = close_reason(side, why)
            self.note(reason)
            if reason in _RESETS:
                leg.peer.reset()
            else:
                leg.peer.close()
        if not self.ended and all(each.lost for each in self._legs.values()):
            self.ended = True
            self._idle.cancel()
            self._owner.splice_ended()

    def writable(self, side: Side, writable: bool) -> None:
        """`side`'s write buffer drained (True) or filled up (False): its peer's reading
        follows, for pipes that are not each other's producers."""
        peer = self._legs[side].peer
        if writable:
            peer.pipe.resume_reading()
        else:
            peer.pipe.pause_reading()

    def stalled(self, side: Side, held: int | None, timeout: float) -> None:
        """`side`'s send timeout ran out: with bytes held (or unknown), a stall; with none, a
        close that did not end. Both sides are reset."""
        if self.ended:
            return
        if held != 0:
            first = self.reason is None
            self.note(_STALLED[side])
            self._owner.splice_stalled(side, held, timeout, first)
        self.reset()

    # Both sides.

    def close(self, reason: CloseReason | None = None) -> None:
        """Close both sides gracefully (a FIN, or close_notify over TLS)."""
        if reason is not None:
            self.note(reason)
        self.closing = True
        for leg in self._legs.values():
            leg.close()

    def reset(self) -> None:
        self.closing = True
        for leg in self._legs.values():
            leg.reset()

    def _idle_timed_out(self) -> None:
        if self.closing:  # a graceful close that moved nothing for a whole timeout
            if any(not leg.lost and leg.pipe.waiting for leg in self._legs.values()):
                # A side still has bytes to take: its send timeout bounds the close, and
                # lets a slow reader take the rest.
                self._idle.start()
                return
            self.reset()
            return
        self.close(CloseReason.IDLE_TIMEOUT)
        self._idle.start()


class TransportPipe:
    """A Twisted transport as one side of a splice: the two transports are each other's
    producers (as in portforward), so a full write buffer pauses the other side's reads
    without a call through the splice. Its send timeout learns of those pauses by looking
    (SendTimeout's poll) and after each write. `tls`: over Twisted's TLS layer, which cannot
    half-close (its loseWriteConnection is the TCP transport's below, which would skip
    close_notify)."""

    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        timeout: float,
        *,
        tls: bool,
        ending: SendBatch | None = None,
    ) -> None:
        self.transport = transport
        self.tls = tls
        self._ending = ending
        """Closes and half-closes plain TCP connections without waiting for a write event."""
        self._clock = clock
        self._timeout = timeout
        self._has_producer = False
        self.sending: SendTimeout | None = None

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        assert isinstance(peer, TransportPipe), "transports are spliced to transports"
        self.transport.registerProducer(peer.transport, True)
        self._has_producer = True
        self.sending = SendTimeout(
            self._clock,
            self.transport,
            self._timeout,
            functools.partial(self._stalled, on_stall),
            poll=True,
        )

    def _stalled(self, on_stall: OnStall) -> None:
        sending = self.sending
        assert sending is not None
        on_stall(sending.held, sending.timeout)

    def send(self, data: bytes) -> None:
        send_now(self.transport, [data])
        # A read from the other side means that this side's buffer drained since it last
        # filled (a full one pauses that side), unless this very write filled it: the send
        # timeout starts again either way.
        sending = self.sending
        if sending is not None and producer_paused(self.transport):
            sending.resumed()
            sending.paused()

    def shut_write(self) -> bool:
        self._unregister_producer()  # the peer will produce nothing more for it
        if self.tls:
            return False
        ending = self._ending
        if ending is None or not ending.shut_write(self.transport):
            self.transport.loseWriteConnection()
        return True

    def close(self) -> None:
        self._unregister_producer()
        ending = self._ending
        if ending is not None and ending.close(self.transport):
            return
        self.transport.loseConnection()
        if self.sending is not None and not closes_at_once(self.transport):
            self.sending.closing()

    def reset(self) -> None:
        reset(self.transport)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    @property
    def waiting(self) -> bool:
        return self.sending is not None and self.sending.waiting

    def gone(self) -> None:
        self._has_producer = False
        if self.sending is not None:
            self.sending.cancel()

    def _unregister_producer(self) -> None:
        if self._has_producer:
            self._has_producer = False
            self.transport.unregisterProducer()


class _Released:
    """The owner of a released splice: it hears nothing more."""

    def splice_stalled(self, side: Side, held: int | None, timeout: float, first: bool) -> None:
        pass

    def splice_ended(self) -> None:
        pass


_RELEASED: Final = _Released()
