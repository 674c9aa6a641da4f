"""proxyd's reactor: Twisted's epoll reactor, without a logging context per socket event.

For every event, Twisted's EPollReactor.doPoll calls `log.callWithLogger(selectable, ...)`:
it asks the selectable for its logPrefix() and pushes a copy of the logging context with it
as "system", for legacy `twisted.python.log` messages emitted while it runs. On a proxy that
is two or three events per request, and was ~8% of the CPU of a keep-alive HTTP request.

Here every event of a TCP connection, and a listening TCP port's accept, is handled as
Twisted handles it, without that context around it; whatever goes wrong is handled exactly as
Twisted does it, in the selectable's context: the exception logged with its log prefix, the
connection then disconnected (connectionLost, or readConnectionLost on a half-close). Other
descriptors (UDP ports, unix sockets, the waker) take Twisted's own path unchanged. The only
difference: a legacy `twisted.python.log` message emitted by a connection's own code during an
event that then succeeds has "-" as its system instead of the connection's log prefix; proxyd
logs through twisted.logger, whose events carry their namespace instead. The events are
dispatched by proxyd.socket_events (compiled), which also reads a TCP connection's bytes
itself (Twisted's doRead, inlined).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import cast

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import log

from proxyd.socket_events import dispatch


class EPollReactor(epollreactor.EPollReactor):
    """EPollReactor whose plain reads and writes on TCP connections skip callWithLogger, and
    which runs the calls given to at_turn_end() once a turn's events are handled."""

    def __init__(self) -> None:
        self._turn_end: list[Callable[[], object]] = []
        super().__init__()

    def at_turn_end(self, call: Callable[[], object]) -> None:
        """Call `call` once, when the events (or the delayed calls) being handled now are
        done, before the reactor waits again: what callLater(0) does, without a DelayedCall
        to make and keep in order on the heap. proxyd sends what a turn gathered with it
        (proxyd.relay.io's SendBatch, the access log's flush: proxyd.clock.soon)."""
        self._turn_end.append(call)

    def _end_turn(self) -> None:
        # A call may add another (a flush that closes a connection): run until none is left.
        while self._turn_end:
            calls, self._turn_end = self._turn_end, []
            for call in calls:
                try:
                    call()
                except BaseException:
                    log.err(None, "proxyd: a call at the end of a reactor turn failed")

    def runUntilCurrent(self) -> None:
        super().runUntilCurrent()
        self._end_turn()

    def timeout(self) -> float | None:
        """No wait while calls are due at the end of the turn (one added before the reactor
        ran, by a startup trigger)."""
        if self._turn_end:
            return 0.0
        return cast(float | None, super().timeout())

    def doPoll(self, timeout: float | None) -> None:
        try:
            self._poll(timeout)
        finally:
            self._end_turn()

    def _poll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except InterruptedError:
            return
        dispatch(self, events)

    doIteration = doPoll


def install() -> bool:
    """Make proxyd's reactor the global one, unless a reactor is installed already (chosen
    with `twistd -r NAME`, or imported by whatever ran first): True when it did. twistd
    installs none before it calls the plugin's makeService, which should call this first."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    installReactor(EPollReactor())
    return True
