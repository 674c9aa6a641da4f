"""SIGTERM and SIGINT as a graceful stop: the reactor stopped once (the services drain), no
signal raised again at exit, and a second signal closing what is left."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.error import ReactorNotRunning
from twisted.logger import LogLevel, capturedLogs

from proxyd.stopping import GracefulStop, on_sigusr1


class Reactor:
    def __init__(self, running: bool = True) -> None:
        self.stops = 0
        self.running = running

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)

    def stop(self) -> None:
        if not self.running:
            raise ReactorNotRunning()
        self.stops += 1


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_the_first_signal_stops_the_reactor_and_the_second_closes_what_is_left(
    handlers: None,
) -> None:
    reactor, closed = Reactor(), []
    GracefulStop(reactor, lambda: closed.append(True)).install()
    with capturedLogs() as events:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
        assert (reactor.stops, closed) == (1, [])
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    assert (reactor.stops, closed) == (1, [True])
    assert [(e["log_level"], e["signal"]) for e in events] == [
        (LogLevel.info, "SIGTERM"),
        (LogLevel.warn, "SIGINT"),
    ]


def test_a_reactor_already_stopping_for_another_reason_is_left_to_it() -> None:
    reactor = Reactor(running=False)
    GracefulStop(reactor, lambda: None).requested("SIGTERM")
    assert reactor.stops == 0


def test_sigusr1_reopens_after_what_handled_it_before() -> None:
    saved = signal.getsignal(signal.SIGUSR1)
    calls: list[str] = []
    try:
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append("twistd rotates"))
        on_sigusr1(Reactor(), lambda: calls.append("reopen"))
        signal.getsignal(signal.SIGUSR1)(signal.SIGUSR1, None)  # type: ignore[operator]
    finally:
        signal.signal(signal.SIGUSR1, saved)
    assert calls == ["twistd rotates", "reopen"]
