"""proxyd.clock.Deadline: one delayed call that re-arms itself, moved only when it would
fire too late."""

from __future__ import annotations

import weakref

from twisted.internet.testing import MemoryReactorClock

from proxyd.clock import Deadline


def deadline() -> tuple[MemoryReactorClock, Deadline, list[float]]:
    clock = MemoryReactorClock()
    fired: list[float] = []
    return clock, Deadline(clock, lambda: fired.append(clock.seconds())), fired


def test_it_fires_once_when_due() -> None:
    clock, timer, fired = deadline()
    timer.set_in(5)
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [5.0]
    assert timer.at is None
    clock.advance(100)
    assert fired == [5.0]
    assert clock.getDelayedCalls() == []


def test_pushing_it_back_costs_no_new_call_until_the_old_one_fires() -> None:
    clock, timer, fired = deadline()
    timer.set_in(5)
    [call] = clock.getDelayedCalls()
    for _ in range(4):
        clock.advance(1)
        timer.set_in(5)  # a kept-alive connection's next request
        assert clock.getDelayedCalls() == [call]
    clock.advance(1)  # the call fires early, and re-arms itself for the rest
    [again] = clock.getDelayedCalls()
    assert again is not call
    assert fired == []
    clock.advance(4)
    assert fired == [9.0]


def test_bringing_it_forward_moves_the_call() -> None:
    clock, timer, fired = deadline()
    timer.set_in(60)
    timer.set_in(2)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    assert fired == [2.0]
    assert clock.getDelayedCalls() == []


def test_clear_leaves_the_call_to_find_nothing_due() -> None:
    clock, timer, fired = deadline()
    timer.set_in(5)
    timer.clear()
    clock.advance(5)
    assert fired == []
    assert clock.getDelayedCalls() == []
    timer.set_in(1)
    clock.advance(1)
    assert fired == [6.0]


def test_clear_then_set_again_reuses_the_call_that_fires_first() -> None:
    clock, timer, fired = deadline()
    timer.set_in(5)
    timer.clear()
    clock.advance(1)
    timer.set_in(10)  # due at 11: the call at 5 fires early and re-arms for the rest
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4)
    assert fired == []
    clock.advance(6)
    assert fired == [11.0]


def test_cancel_cancels_the_call() -> None:
    clock, timer, fired = deadline()
    timer.set_in(5)
    timer.cancel()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert fired == []


def test_release_cancels_and_lets_go_of_the_owner() -> None:
    clock = MemoryReactorClock()
    fired: list[float] = []

    class Owner:
        def due(self) -> None:
            fired.append(clock.seconds())

    owner = Owner()
    timer = Deadline(clock, owner.due)
    owner_ref = weakref.ref(owner)
    timer.set_in(5)
    timer.release()
    assert clock.getDelayedCalls() == []
    del owner
    assert owner_ref() is None  # freed at once, not left to the garbage collector
    timer.set_in(1)  # harmless after release
    clock.advance(1)
    assert fired == []
