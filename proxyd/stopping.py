"""Signals: SIGTERM and SIGINT as a graceful stop that exits 0; SIGUSR1 to reopen log files.

Twisted's own handlers stop the reactor and make twistd raise the same signal again at the
very end, so that a process stopped by SIGTERM reports "killed by SIGTERM". proxyd's stop is
a planned one: the services drain (ProxydService.stopService) and the process exits 0. A
second signal while draining does not wait any more: `close_now` closes what is left.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()


class GracefulStop:
    def __init__(self, reactor: Any, close_now: Callable[[], None]) -> None:
        self._reactor = reactor
        self._close_now = close_now
        self._stopping = False

    def install(self) -> None:
        """Replace the reactor's SIGTERM and SIGINT handlers: call it once the reactor runs
        (callWhenRunning), since the reactor installs its own as it starts."""
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)

    def _signalled(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.requested, signal.Signals(signum).name)

    def requested(self, name: str) -> None:
        if not self._stopping:
            self._stopping = True
            log.info("{signal}: stopping gracefully", signal=name)
            with contextlib.suppress(ReactorNotRunning):  # stopping already, for another reason
                self._reactor.stop()
            return
        log.warn("{signal} again: closing what is still open now", signal=name)
        self._close_now()


def on_sigusr1(reactor: Any, reopen: Callable[[], None]) -> None:
    """SIGUSR1 calls `reopen` (in the reactor's thread), after whatever handled it before:
    twistd rotates its own --logfile on SIGUSR1."""
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        reactor.callFromThread(reopen)

    signal.signal(signal.SIGUSR1, handler)
