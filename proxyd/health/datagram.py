"""What the UDP check kinds (dns, sip) share: a socket connected to the server (so that an
ICMP port unreachable fails the check at once), one request, a timeout, and a close whatever
the outcome. UDP has no connection, so these kinds do not use connect_and_check."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred

from proxyd.config.model import Address
from proxyd.datagram import ConnectedDatagram
from proxyd.health.checks import CheckFailed, CheckReactor, CheckSkipped, format_duration
from proxyd.pool.fault import Fault, fault_of

WAIT = object()
"""judge()'s answer for a datagram that is not the reply: keep waiting."""


class DatagramProbe(ConnectedDatagram):
    """Sends `request()` and feeds what comes back to `judge()`: None passes, a CheckFailed
    fails, WAIT ignores the datagram."""

    waiting_for = "an answer"

    def request(self) -> bytes:
        raise NotImplementedError

    def judge(self, datagram: bytes) -> CheckFailed | object | None:
        raise NotImplementedError

    def run(self, reactor: CheckReactor, address: Address, timeout: float) -> Deferred[None]:
        self.done: Deferred[None] = Deferred(lambda _: self._close())
        self.finished = False
        self.port: Any = None
        self._timer = reactor.callLater(timeout, self._timed_out, timeout)
        try:
            interface = "::" if ":" in address.host else ""
            self.port = cast(Any, reactor).listenUDP(0, self, interface=interface)
            self.port.connect(address.host, address.port)
            self.port.write(self.request())
        except Exception as e:  # a host name (connect wants an address), no route...
            if fault_of(e) is Fault.SERVER:
                self._finish(CheckFailed(f"cannot send the request: {e}"))
            else:  # out of file descriptors or buffers: not the server's doing
                self._finish(CheckSkipped(f"check not run: {e}"))
        return self.done

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        outcome = self.judge(datagram)
        if outcome is not WAIT:
            self._finish(cast(CheckFailed | None, outcome))

    def peer_refused(self) -> None:
        self._finish(CheckFailed("port unreachable (ICMP)"))

    def _timed_out(self, timeout: float) -> None:
        what = f"timeout after {format_duration(timeout)} waiting for {self.waiting_for}"
        self._finish(CheckFailed(what))

    def _finish(self, outcome: CheckFailed | CheckSkipped | None) -> None:
        if self.finished:
            return
        self._close()
        if outcome is None:
            self.done.callback(None)
        else:
            self.done.errback(outcome)

    def _close(self) -> None:
        self.finished = True
        self.closing = True
        if self._timer.active():
            self._timer.cancel()
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()
