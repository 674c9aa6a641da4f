"""Accept failures of a listening port, counted and logged once per interval.

When accept() fails for want of a resource (EMFILE: the process is at its open-files limit;
ENFILE, ENOBUFS, ENOMEM), Twisted's tcp.Port logs through its `_logger`: at EMFILE it frees a
descriptor it keeps in reserve, accepts and closes every connection queued, and logs three
lines for each ("EMFILE encountered; ...", "EMFILE recovery: Closed socket from ...",
"Re-reserving ..."); for the others it logs "Could not accept new connection (ENOBUFS)"
at each attempt. Under a burst that is thousands of lines a second, when the operator needs
one: this listener is refusing connections, why, how many.

AcceptLog replaces a port's `_logger` (a private attribute of tcp.Port, which unix.Port and
the TLS ports share) with a Logger whose observer it is: it counts those events, adds each
failure to the listener's metrics, and logs one line at the end of the reactor turn of the
first failure, then at most one per INTERVAL while failures go on. Every other event goes on
to the observer the port had. This module is the only one that knows those names and
messages; tests/unit/test_accept_log.py drives the real tcp.Port.doRead and fails when
Twisted changes them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any, Final, cast

from twisted.internet import tcp
from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from proxyd.clock import Clock, DelayedCall
from proxyd.metrics import ErrorKind

log = Logger(namespace="proxyd.listeners")

INTERVAL: Final = 10.0
"""Seconds between two lines about one listener's accept failures."""

# tcp._accept's messages (Twisted 26.10), by log_format.
_EMFILE_REFUSED: Final = "EMFILE recovery: Closed socket from {address}"
"""One connection accepted and closed at once, for want of a descriptor."""
_FAILED: Final = "Could not accept new connection ({acceptError})"
"""One accept() that failed; `acceptError` is the errno's name (errno.errorcode)."""
_EMFILE_QUIET: Final = frozenset(
    {
        "EMFILE encountered; releasing reserved file descriptor.",
        "Re-reserving EMFILE recovery file descriptor.",
    }
)
"""The lines around each recovery: counted by the refusals they surround."""

_HINTS: Final = {
    "EMFILE": "proxyd is at its open-files limit, and closes the connections it cannot "
    "take at once: raise the limit (ulimit -n, systemd LimitNOFILE=)",
    "ENFILE": "the system is at its open-files limit (fs.file-max)",
}


def _describe(name: str) -> str:
    code = getattr(errno, name, None)
    return f"{name} ({os.strerror(code)})" if code is not None else name


@implementer(ILogObserver)
class AcceptLog:
    """The observer of one listening port's accept log (see the module's docstring)."""

    def __init__(
        self,
        clock: Clock,
        listener: str,
        factory: Any,
        forward: Callable[[LogEvent], None],
        interval: float = INTERVAL,
    ) -> None:
        self.clock = clock
        self.listener = listener
        """The listener's name, as its log lines give it (`http public`)."""
        self.factory = factory
        """The relay factory: failures count in its `stats` (proxyd.metrics) if it has one."""
        self.forward = forward
        self.interval = interval
        self.failed: dict[str, int] = {}
        """Failures by errno name since the last line."""
        self.total = 0
        """Failures since the port was watched."""
        self._timer: DelayedCall | None = None

    def __call__(self, event: LogEvent) -> None:
        text = event.get("log_format")
        if text == _EMFILE_REFUSED:
            self._count("EMFILE")
        elif text == _FAILED:
            self._count(str(event.get("acceptError")))
        elif text not in _EMFILE_QUIET:
            self.forward(event)

    def _count(self, name: str) -> None:
        self.failed[name] = self.failed.get(name, 0) + 1
        self.total += 1
        stats = getattr(self.factory, "stats", None)
        if stats is not None:
            stats.cell("", "", "").error(ErrorKind.ACCEPT_FAILED)
        if self._timer is None:
            # The first failure after a quiet interval: reported once this reactor turn is
            # over, with the others of the same read (Twisted accepts up to a hundred a read).
            self._timer = self.clock.callLater(0, self._report)

    def _report(self) -> None:
        self._timer = None
        if not self.failed:
            return  # quiet for an interval: the next failure is reported at once
        self.flush()
        self._timer = self.clock.callLater(self.interval, self._report)

    def flush(self) -> None:
        """Log the failures counted since the last line, if any."""
        if not self.failed:
            return
        failed, self.failed = self.failed, {}
        hints = [_HINTS[name] for name in sorted(failed) if name in _HINTS]
        log.warn(
            "[{listener}] {count} connection(s) could not be accepted: {errors}{hint} "
            "(one line per {interval:g}s at most)",
            listener=self.listener,
            count=sum(failed.values()),
            errors=", ".join(f"{_describe(name)} x{n}" for name, n in sorted(failed.items())),
            hint="; " + "; ".join(hints) if hints else "",
            interval=self.interval,
            failed=failed,
        )

    def stop(self) -> None:
        """The port stops listening: log what is counted, schedule nothing more."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.flush()


def watch(port: Any, clock: Clock, listener: str, factory: Any) -> AcceptLog | None:
    """Make the accept failures of `port` (a Twisted tcp.Port, or a unix.Port) go through an
    AcceptLog for `listener`: the one it has already, re-aimed, after a reload handed the
    port to another listener. None, with a warning, when the port has no `_logger` to
    replace: its failures are then logged as Twisted does it. A port of another kind (a
    test's fake) is left alone."""
    if not isinstance(port, tcp.Port):
        return None
    current = getattr(port, "_logger", None)
    if not isinstance(current, Logger):
        log.warn(
            "[{listener}] accept failures are logged as Twisted does it: {port!r} has no "
            "_logger (Twisted changed?)",
            listener=listener,
            port=type(port),
        )
        return None
    observer = current.observer
    if isinstance(observer, AcceptLog):
        observer.listener = listener
        observer.factory = factory
        return observer
    accept_log = AcceptLog(clock, listener, factory, observer)
    port._logger = Logger(namespace=current.namespace, observer=cast(ILogObserver, accept_log))
    return accept_log
