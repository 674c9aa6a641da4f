"""Active check kinds: the registry from a check's config class to its checker, and the
connect/timeout/close machinery every kind shares.

A checker is `(reactor, address, check, timeout) -> Deferred[None]`: it fires None when the
server passed, fails with CheckFailed(reason) when it did not, and is bounded by `timeout` in
all cases. A kind is a module that defines a CheckProtocol (the conversation, its parsing in
plain code) and registers a checker for its config class:

    @register(TcpCheck)
    def check_tcp(reactor, address, check, timeout):
        return connect_and_check(reactor, address, timeout, lambda: TcpCheckProtocol(check))

proxyd.health imports every built-in kind module, so the registry is complete once any part
of the package has been imported.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from proxyd.clock import Clock
from proxyd.config.model import Address
from proxyd.pool.fault import Fault, fault_of


class Transport(typing.Protocol):
    """What the checks use of ITCPTransport."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...


class CheckReactor(Clock, typing.Protocol):
    """IReactorTCP & IReactorTime, as far as the health checks use them."""

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = ...,
        bindAddress: tuple[str, int] | None = ...,
    ) -> Any: ...


class CheckFailed(Exception):
    """A server failed its check; `reason` is short and for humans: `connection refused`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class CheckSkipped(Exception):
    """A check could not run for want of a local resource (proxyd out of file descriptors
    or ports): it says nothing about the server and counts neither way."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def connect_outcome(reason: Failure, timeout: float) -> CheckFailed | CheckSkipped:
    """A failed connect as a check's outcome: the server's failure, or a check skipped when
    proxyd itself could not open the connection (proxyd.pool.fault)."""
    if fault_of(reason) is not Fault.SERVER:
        return CheckSkipped(f"check not run: {reason.getErrorMessage()}")
    return CheckFailed(describe_connect_failure(reason, timeout))


C = TypeVar("C")
Checker = Callable[[CheckReactor, Address, Any, float], "Deferred[None]"]
_checkers: dict[type, Checker] = {}


def register(
    config_type: type[C],
) -> Callable[
    [Callable[[CheckReactor, Address, C, float], Deferred[None]]],
    Callable[[CheckReactor, Address, C, float], Deferred[None]],
]:
    """Decorator: the function is the checker for checks configured as `config_type`."""

    def decorate(
        checker: Callable[[CheckReactor, Address, C, float], Deferred[None]],
    ) -> Callable[[CheckReactor, Address, C, float], Deferred[None]]:
        _checkers[config_type] = checker
        return checker

    return decorate


def checker_for(config_type: type) -> Checker:
    """The registered checker for a check config class; LookupError if there is none."""
    try:
        return _checkers[config_type]
    except KeyError:
        raise LookupError(f"no health checker registered for {config_type.__name__}") from None


def registered() -> tuple[type, ...]:
    """The check config classes that have a checker."""
    return tuple(_checkers)


def run_check(
    reactor: CheckReactor, address: Address, check: object, timeout: float
) -> Deferred[None]:
    """Run the check that `check` configures against `address`, bounded by `timeout`."""
    return checker_for(type(check))(reactor, address, check, timeout)


def format_duration(seconds: float) -> str:
    """`2s`, `1.5s`, `500ms`: the way the configuration writes durations."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def show_bytes(data: bytes, limit: int = 40) -> str:
    """A received reply for a reason: its first line, cut at `limit` bytes."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if len(line) > limit:
        return repr(line[:limit])[:-1] + "...'"
    return repr(line)


def describe_connect_failure(reason: Failure, timeout: float) -> str:
    """A connect attempt's failure as a short reason."""
    if reason.check(error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(error.TimeoutError):
        return f"timeout after {format_duration(timeout)} connecting"
    if reason.check(error.NoRouteError):
        return "no route to host"
    if reason.check(error.DNSLookupError):
        return "DNS lookup failed"
    # ConnectError(errno, strerror) keeps strerror in args[0]; osError may be an OSError.
    value = reason.value
    args = getattr(value, "args", ())
    text = args[0] if args and isinstance(args[0], str) else ""
    os_error = getattr(value, "osError", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        text = os_error.strerror
    if not text:
        text = reason.getErrorMessage()
    return f"connect failed: {text[:1].lower()}{text[1:]}"


class CheckProtocol(Protocol):
    """One check's conversation with a server. Subclasses parse what arrives and call
    succeed() or fail(reason); the attempt then closes the connection and reports."""

    waiting_for = "reply"
    """What the conversation waits for now, for the timeout's reason."""

    _attempt: _Attempt | None = None

    @property
    def connection(self) -> Transport:
        """The transport, typed for what checks do with it."""
        assert self.transport is not None
        return typing.cast(Transport, self.transport)

    @property
    def finished(self) -> bool:
        return self._attempt is None or self._attempt.finished

    def succeed(self) -> None:
        if self._attempt is not None:
            self._attempt.finish(None)

    def fail(self, reason: str) -> None:
        if self._attempt is not None:
            self._attempt.finish(CheckFailed(reason))

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        """The outcome when the server closes before the check is decided; None = passed."""
        if reason.check(error.ConnectionDone):
            what = "connection closed by server"
        else:
            what = "connection reset"
        return CheckFailed(f"{what} while waiting for {self.waiting_for}")

    def timeout_result(self, timeout: str) -> CheckFailed | None:
        """The outcome when the timeout strikes mid-conversation; None = passed."""
        return CheckFailed(f"timeout after {timeout} waiting for {self.waiting_for}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._attempt is not None and not self._attempt.finished:
            self._attempt.finish(self.closed_result(reason))


class _Attempt(ClientFactory):
    """One run of a check: connects, bounds it with a timer, closes, fires `done` once."""

    noisy = False  # no "Starting factory" log line per check

    def __init__(
        self,
        reactor: CheckReactor,
        address: Address,
        timeout: float,
        build: Callable[[], CheckProtocol],
        wrap: Callable[[ClientFactory], Any] | None = None,
    ) -> None:
        self.done: Deferred[None] = Deferred(self._cancel)
        self.finished = False
        self._timeout = timeout
        self._build = build
        self._protocol: CheckProtocol | None = None
        self._connector: Any = None
        self._connecting = True
        self._timer = reactor.callLater(timeout, self._timed_out)
        try:
            # Twisted takes IPv6 literals without brackets, as Address holds them.
            factory = wrap(self) if wrap is not None else self
            self._connector = reactor.connectTCP(
                address.host, address.port, factory, timeout=timeout
            )
        except Exception as e:
            self._connecting = False
            if fault_of(e) is Fault.SERVER:
                self.finish(CheckFailed(f"connect failed: {e}"))
            else:
                self.finish(CheckSkipped(f"check not run: {e}"))

    def buildProtocol(self, addr: IAddress | None) -> CheckProtocol | None:
        if self.finished:
            return None
        self._connecting = False
        protocol = self._build()
        protocol._attempt = self
        protocol.factory = self
        self._protocol = protocol
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connecting = False
        self.finish(connect_outcome(reason, self._timeout))

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        """The protocol's connectionLost has already decided."""

    def finish(self, outcome: CheckFailed | CheckSkipped | None, abort: bool | None = None) -> None:
        """Decide the check once: close the connection (or stop connecting) and report.

        The connection is aborted unless the check passed (then what the protocol last wrote,
        such as QUIT, is flushed before the FIN), or when `abort` says otherwise.
        """
        if self.finished:
            return
        self._close(abort=outcome is not None if abort is None else abort)
        if outcome is None:
            self.done.callback(None)
        else:
            self.done.errback(outcome)

    def _close(self, abort: bool) -> None:
        self.finished = True
        if self._timer.active():
            self._timer.cancel()
        connected = self._protocol is not None and self._protocol.transport is not None
        if connected:
            assert self._protocol is not None
            transport = self._protocol.connection
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()
        elif self._connecting and self._connector is not None:
            # Still connecting. The reactor reports UserError to clientConnectionFailed,
            # which finds the attempt already finished.
            self._connector.stopConnecting()

    def _timed_out(self) -> None:
        if self.finished:
            return
        if self._protocol is None:
            self.finish(CheckFailed(f"timeout after {format_duration(self._timeout)} connecting"))
        else:
            # Aborted even when the protocol counts it a pass: the peer is not reading.
            outcome = self._protocol.timeout_result(format_duration(self._timeout))
            self.finish(outcome, abort=True)

    def _cancel(self, _: Deferred[None]) -> None:
        # Deferred.cancel() errbacks with CancelledError once this returns without firing.
        if not self.finished:
            self._close(abort=True)


def connect_and_check(
    reactor: CheckReactor,
    address: Address,
    timeout: float,
    build: Callable[[], CheckProtocol],
    wrap: Callable[[ClientFactory], Any] | None = None,
) -> Deferred[None]:
    """Connect to `address` and hand the connection to the protocol `build` returns (with
    `wrap`, through the factory it makes of ours: a TLS layer).

    The result fires once: None when the protocol calls succeed(), CheckFailed otherwise
    (connect failure, close, timeout). Whatever the outcome the connection is closed (aborted
    unless passed) or the connect attempt stopped, and the timer cancelled; cancelling the
    Deferred does the same.
    """
    return _Attempt(reactor, address, timeout, build, wrap).done
