"""A peer that stops reading is reset (nginx's send_timeout, HAProxy's `timeout client` on
the sending side): SendTimeout. What it reads of Twisted's write buffers to see progress
(held, producer_paused, closes_at_once: FileDescriptor's private fields) lives in
proxyd.relay.io, the one module that reads them."""

from __future__ import annotations

from collections.abc import Callable

from proxyd.clock import Clock, DelayedCall
from proxyd.relay.io import held, producer_paused

__all__ = ["SendTimeout"]


class SendTimeout:
    """nginx's send_timeout, HAProxy's `timeout client` on the sending side: a peer that takes
    none of the bytes waiting for it for `timeout` seconds is reported to `on_stall`, which
    resets it. Without it a client that stops reading holds its connection, and what waits
    for it, forever: its connection only ever closes after its buffer drains.

    Bytes wait from the moment the transport's write buffer is full (it paused its producer:
    `paused()`) or a graceful close starts with bytes unsent (`closing()`), until the buffer
    drains (`resumed()`) or the connection is gone (`cancel()`). Taking some of them is
    progress too: the buffer is looked at every quarter of the timeout, and holding fewer
    bytes (`held`) than at the last look starts the time again, so that a stall is reported
    between one and one and a quarter timeouts after the last progress. Holding as many (or a
    transport that cannot tell) for the whole timeout is a stall. A close with nothing left to
    send that still has not ended is one as well (a TLS peer that never answers close_notify):
    `held` is then 0.

    One delayed call serves, as IdleTimer's: a buffer that fills and drains again and again
    (any transfer faster than its reader) costs no callLater each time. `poll` is for
    relays that cannot be told of the transport's pauses (the transports are each other's
    producers): `paused()` after a write that filled the buffer, and the transport is asked
    again when the time is up.
    """

    def __init__(
        self,
        clock: Clock,
        transport: object,
        timeout: float,
        on_stall: Callable[[], None],
        *,
        poll: bool = False,
    ) -> None:
        self._clock = clock
        self._transport = transport
        self._timeout = timeout
        self._on_stall = on_stall
        self._poll = poll
        self._paused = False
        self._closing = False
        self._ended = False
        self._since = 0.0
        """When the peer last took something (or when the bytes started waiting)."""
        self._mark: int | None = None
        """`held` at the last look."""
        self._call: DelayedCall | None = None
        self.held: int | None = None
        """The bytes held at the stall."""

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def waiting(self) -> bool:
        return (self._paused or self._closing) and not self._ended

    def set_timeout(self, timeout: float) -> None:
        """From now on (an HTTP connection whose upgrade made it a tunnel)."""
        self._timeout = timeout
        call = self._call
        if call is not None:
            call.cancel()
            self._call = None
        if self.waiting:
            self._arm(max(0.0, self._since + timeout - self._clock.seconds()))

    def paused(self) -> None:
        if self._paused:
            return
        start = not self.waiting
        self._paused = True
        if start:
            self._start()

    def resumed(self) -> None:
        """The write buffer drained: the peer took everything so far."""
        self._paused = False
        if self._closing:
            self._since = self._clock.seconds()
            self._mark = held(self._transport)

    def closing(self) -> None:
        """A graceful close started (loseConnection): until it ends, the peer must keep
        taking what is left."""
        if self._closing:
            return
        start = not self.waiting
        self._closing = True
        if start:
            self._start()

    def cancel(self) -> None:
        """The connection is gone: the timeout ends for good, and lets go of `on_stall` (a
        bound method of the connection: a reference cycle, else)."""
        self._ended = True
        self._on_stall = _nothing
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _start(self) -> None:
        if self._ended or self._timeout <= 0:
            return
        self._since = self._clock.seconds()
        self._mark = held(self._transport)
        if self._call is None:
            self._arm(self._timeout)

    def _arm(self, remaining: float) -> None:
        if self._timeout > 0 and not self._ended:
            delay = min(remaining, self._timeout / 4)
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        if self._poll and self._paused and not producer_paused(self._transport):
            self._paused = False
        if not self.waiting:
            return
        now = self._clock.seconds()
        left = held(self._transport)
        if left is not None and self._mark is not None and left < self._mark:
            self._since = now  # the peer took some since the last look
        self._mark = left
        remaining = self._since + self._timeout - now
        if remaining > 0:
            self._arm(remaining)
            return
        self._ended = True
        self.held = left
        self._on_stall()


def _nothing() -> None:
    pass
