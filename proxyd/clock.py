"""The reactor's clock as proxyd's modules use it (IReactorTime, IDelayedCall), typed
structurally: mypy cannot type calls through zope interfaces without a plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> DelayedCall: ...


def soon(clock: Clock) -> Callable[[Callable[[], object]], object]:
    """How to call something once the reactor turn under way has handled its events, before
    the reactor waits again (to send what the turn gathered, in one write): proxyd's reactor
    runs it at the end of the turn (proxyd.reactor's at_turn_end), with no delayed call to
    make, order on the heap and run; any other clock (the tests' MemoryReactorClock) with a
    callLater(0)."""
    at_turn_end: Callable[[Callable[[], object]], object] | None = getattr(
        clock, "at_turn_end", None
    )
    if at_turn_end is not None:
        return at_turn_end
    return lambda call: clock.callLater(0, call)


class Deadline:
    """Calls `on_due` once the time set with `set_at()` has passed, with one delayed call
    that is moved only when it would fire too late: a deadline pushed back again and again (a
    keep-alive connection's next request, a stream's next chunk) costs no callLater and no
    cancel, since the call re-arms itself for the rest when it fires early. `clear()` disarms
    it as cheaply, leaving the call to fire and find nothing due; `cancel()` also cancels the
    call (the owner is gone).

    proxyd's re-arming timers (idle, header, keep-alive, response, pooled connections) are
    this one helper."""

    __slots__ = ("_call", "_call_at", "_clock", "_on_due", "at")

    def __init__(self, clock: Clock, on_due: Callable[[], Any]) -> None:
        self._clock = clock
        self._on_due = on_due
        self._call: DelayedCall | None = None
        self._call_at = 0.0
        """When `_call` fires: at or before `at`."""
        self.at: float | None = None
        """When it is due; None while disarmed."""

    def set_at(self, at: float) -> None:
        self.at = at
        call = self._call
        if call is not None:
            if self._call_at <= at:
                return
            call.cancel()
        self._call_at = at
        self._call = self._clock.callLater(max(0.0, at - self._clock.seconds()), self._fire)

    def set_in(self, delay: float) -> None:
        """Due `delay` seconds from now."""
        self.set_at(self._clock.seconds() + delay)

    def clear(self) -> None:
        self.at = None

    def cancel(self) -> None:
        self.at = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def release(self) -> None:
        """Cancel for good (the owner is gone) and let go of `on_due`: a bound method of the
        owner, whose reference cycle would otherwise be left to the garbage collector, once
        per connection."""
        self.cancel()
        self._on_due = _nothing

    def _fire(self) -> None:
        self._call = None
        at = self.at
        if at is None:
            return
        remaining = at - self._clock.seconds()
        if remaining > 0:
            self._call_at = at
            self._call = self._clock.callLater(remaining, self._fire)
            return
        self.at = None
        self._on_due()


def _nothing() -> None:
    """What a released Deadline calls, should it be set again."""
