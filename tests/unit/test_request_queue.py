"""proxyd.gateway.queue.RequestQueue: a concurrency limit with a FIFO queue and a queue
timeout, on a task.Clock."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from proxyd.gateway.queue import QueueTimeout, Refused, RequestQueue, Slot


def make(
    max_in_flight: int = 2, max_queued: int = 3, queue_timeout: float = 5.0
) -> tuple[Clock, RequestQueue]:
    clock = Clock()
    queue = RequestQueue(
        clock, max_in_flight=max_in_flight, max_queued=max_queued, queue_timeout=queue_timeout
    )
    return clock, queue


def slot_now(queue: RequestQueue) -> Slot:
    ticket = queue.enter()
    assert isinstance(ticket, Slot)
    return ticket


def waiter(queue: RequestQueue) -> tuple[Deferred[Slot], list[Slot | Failure]]:
    """A queued ticket and the list its outcome lands in."""
    ticket = queue.enter()
    assert isinstance(ticket, Deferred)
    outcome: list[Slot | Failure] = []

    def note(result: Slot | Failure) -> Slot | None:
        outcome.append(result)  # a failure is consumed here, a slot passed on
        return result if isinstance(result, Slot) else None

    ticket.addBoth(note)
    return ticket, outcome


def test_slots_are_given_at_once_while_there_is_room() -> None:
    _, queue = make(max_in_flight=2)
    first, second = slot_now(queue), slot_now(queue)
    assert first.held and second.held and first.waited == 0.0
    assert queue.in_flight == 2 and queue.queued == 0 and queue.total_queued == 0
    first.release()
    assert queue.in_flight == 1
    slot_now(queue)
    assert queue.in_flight == 2


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    clock, queue = make(max_in_flight=1, max_queued=1, queue_timeout=2.5)
    slot_now(queue)
    waiter(queue)
    refused = queue.enter()
    assert refused == Refused(retry_after=3, status=503)
    assert queue.refused == 1 and queue.queued == 1 and queue.total_queued == 1
    assert len(clock.getDelayedCalls()) == 1


def test_no_queue_refuses_as_soon_as_every_slot_is_held() -> None:
    clock, queue = make(max_in_flight=1, max_queued=0)
    slot_now(queue)
    assert isinstance(queue.enter(), Refused)
    assert queue.refused == 1 and clock.getDelayedCalls() == []


@pytest.mark.parametrize(("timeout", "retry_after"), [(0.2, 1), (1.0, 1), (2.01, 3), (30, 30)])
def test_retry_after_is_the_queue_timeout_rounded_up(timeout: float, retry_after: int) -> None:
    _, queue = make(queue_timeout=timeout)
    assert queue.retry_after() == retry_after


def test_waiters_get_released_slots_in_fifo_order() -> None:
    clock, queue = make(max_in_flight=1, max_queued=3)
    held = slot_now(queue)
    outcomes = [waiter(queue)[1] for _ in range(3)]
    assert queue.queued == 3 and queue.total_queued == 3
    for i in range(3):
        clock.advance(1)
        held.release()
        assert [len(o) for o in outcomes] == [1] * (i + 1) + [0] * (2 - i)
        got = outcomes[i][0]
        assert isinstance(got, Slot) and got.waited == i + 1
        held = got
        assert queue.in_flight == 1
    assert queue.queued == 0 and queue.served_from_queue == 3
    assert clock.getDelayedCalls() == []


def test_a_released_slot_wakes_exactly_one_waiter() -> None:
    _, queue = make(max_in_flight=2, max_queued=3)
    first, _ = slot_now(queue), slot_now(queue)
    outcomes = [waiter(queue)[1] for _ in range(3)]
    first.release()
    first.release()
    assert [len(o) for o in outcomes] == [1, 0, 0]
    assert queue.in_flight == 2 and queue.queued == 2


def test_a_newcomer_never_takes_a_slot_while_someone_waits() -> None:
    _, queue = make(max_in_flight=1, max_queued=2)
    held = slot_now(queue)
    late: list[object] = []

    def release_and_enter(slot: Slot) -> None:
        # The oldest waiter is done at once, and a new request arrives meanwhile.
        slot.release()
        late.append(queue.enter())

    ticket, _ = waiter(queue)
    ticket.addCallback(release_and_enter)
    _, second = waiter(queue)
    held.release()
    got = second[0]
    assert isinstance(got, Slot) and got.held
    assert isinstance(late[0], Deferred), "the newcomer queues behind the second waiter"
    assert queue.in_flight == 1 and queue.queued == 1


def test_a_waiter_times_out_exactly_at_queue_timeout() -> None:
    clock, queue = make(max_in_flight=1, max_queued=2, queue_timeout=5.0)
    held = slot_now(queue)
    clock.advance(1)
    _, outcome = waiter(queue)
    clock.advance(4.999)
    assert outcome == [] and queue.queued == 1
    clock.advance(0.001)
    [failure] = outcome
    assert isinstance(failure, Failure) and failure.check(QueueTimeout)
    error = failure.value
    assert isinstance(error, QueueTimeout)
    assert error.waited == 5.0 and error.retry_after == 5 and error.status == 503
    assert queue.queued == 0 and queue.timed_out == 1 and queue.in_flight == 1
    held.release()
    assert queue.in_flight == 0, "the timed-out waiter takes nothing"


def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_slot() -> None:
    clock, queue = make(max_in_flight=1, max_queued=1)
    held = slot_now(queue)
    ticket, outcome = waiter(queue)
    assert isinstance(queue.enter(), Refused)
    ticket.cancel()
    [failure] = outcome
    assert isinstance(failure, Failure) and failure.check(CancelledError)
    assert queue.queued == 0 and queue.cancelled == 1 and clock.getDelayedCalls() == []
    _, after = waiter(queue)  # the place is free again
    held.release()
    assert isinstance(after[0], Slot) and queue.in_flight == 1
    clock.advance(100)
    assert queue.timed_out == 0


def test_cancelling_after_the_slot_was_given_does_nothing() -> None:
    _, queue = make(max_in_flight=1, max_queued=1)
    held = slot_now(queue)
    ticket, outcome = waiter(queue)
    held.release()
    ticket.cancel()
    got = outcome[0]
    assert isinstance(got, Slot) and got.held
    assert queue.in_flight == 1 and queue.cancelled == 0


def test_release_is_idempotent_and_never_frees_someone_elses_slot() -> None:
    _, queue = make(max_in_flight=1, max_queued=1)
    held = slot_now(queue)
    _, outcome = waiter(queue)
    held.release()
    held.release()
    assert not held.held
    assert isinstance(outcome[0], Slot) and outcome[0].held
    assert queue.in_flight == 1
    assert isinstance(queue.enter(), Deferred)


def test_a_waiter_that_releases_in_its_callback_passes_the_slot_on() -> None:
    clock, queue = make(max_in_flight=1, max_queued=10_000)
    held = slot_now(queue)
    served: list[int] = []

    def use_and_release(slot: Slot, i: int) -> None:
        served.append(i)
        slot.release()

    tickets = [waiter(queue)[0] for _ in range(5_000)]  # deep enough to catch a recursion
    for i, ticket in enumerate(tickets):
        ticket.addCallback(lambda slot, i=i: use_and_release(slot, i))
    _, last = waiter(queue)
    held.release()
    assert served == list(range(5_000))
    assert isinstance(last[0], Slot) and last[0].held
    assert queue.in_flight == 1 and queue.queued == 0
    assert clock.getDelayedCalls() == []


def test_wait_times_go_to_on_wait_and_the_slot() -> None:
    clock = Clock()
    waits: list[float] = []
    queue = RequestQueue(
        clock, max_in_flight=1, max_queued=2, queue_timeout=10, on_wait=waits.append
    )
    held = slot_now(queue)
    _, outcome = waiter(queue)
    clock.advance(2.5)
    held.release()
    assert waits == [2.5] and isinstance(outcome[0], Slot) and outcome[0].waited == 2.5


def test_an_on_wait_that_raises_loses_no_slot() -> None:
    def broken(_: float) -> None:
        raise RuntimeError("metric")

    clock = Clock()
    queue = RequestQueue(clock, max_in_flight=1, max_queued=2, queue_timeout=10, on_wait=broken)
    held = slot_now(queue)
    _, first = waiter(queue)
    _, second = waiter(queue)
    held.release()
    first_slot = first[0]
    assert isinstance(first_slot, Slot)
    first_slot.release()
    assert isinstance(second[0], Slot) and queue.in_flight == 1 and queue.queued == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_in_flight": 0, "max_queued": 1, "queue_timeout": 1.0},
        {"max_in_flight": 1, "max_queued": -1, "queue_timeout": 1.0},
        {"max_in_flight": 1, "max_queued": 1, "queue_timeout": 0.0},
        {"max_in_flight": 1, "max_queued": 1, "queue_timeout": float("nan")},
    ],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RequestQueue(Clock(), **kwargs)  # type: ignore[arg-type]


# Random sequences of enter / release / cancel / advance against a model.


@attrs.define
class Ticket:
    order: int
    entered: float
    release_at_once: bool
    deferred: Deferred[Slot] | None = None
    slot: Slot | None = None
    outcome: str = "waiting"  # waiting, held, released, timed_out, cancelled, refused
    ended: float | None = None


ops = st.one_of(
    st.tuples(st.just("enter"), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 2.0])),
)


@settings(max_examples=300, deadline=None)
@given(
    max_in_flight=st.integers(1, 3),
    max_queued=st.integers(0, 3),
    steps=st.lists(ops, max_size=60),
)
def test_random_sequences_keep_the_invariants(
    max_in_flight: int, max_queued: int, steps: list[tuple[str, object]]
) -> None:
    timeout = 2.0
    clock, queue = make(max_in_flight, max_queued, timeout)
    tickets: list[Ticket] = []
    admitted_from_queue: list[int] = []

    def on_slot(slot: Slot, ticket: Ticket) -> None:
        assert ticket.outcome == "waiting"
        admitted_from_queue.append(ticket.order)
        ticket.slot, ticket.outcome, ticket.ended = slot, "held", clock.seconds()
        assert slot.waited == clock.seconds() - ticket.entered
        if ticket.release_at_once:
            slot.release()
            ticket.outcome = "released"

    def on_failure(failure: Failure, ticket: Ticket) -> None:
        assert ticket.outcome == "waiting"
        ticket.outcome = "timed_out" if failure.check(QueueTimeout) else "cancelled"
        failure.trap(QueueTimeout, CancelledError)
        ticket.ended = clock.seconds()

    def check() -> None:
        held = [t for t in tickets if t.slot is not None and t.slot.held]
        waiting = [t for t in tickets if t.outcome == "waiting"]
        assert len(held) == queue.in_flight <= max_in_flight
        assert len(waiting) == queue.queued <= max_queued
        if waiting:  # no slot lost: nobody waits while a slot is free
            assert queue.in_flight == max_in_flight
        assert admitted_from_queue == sorted(admitted_from_queue), "FIFO"
        for t in waiting:  # exact timeout: nobody still waits at queue_timeout
            assert clock.seconds() - t.entered < timeout
        for t in tickets:
            if t.outcome == "timed_out":
                assert t.ended is not None and t.ended - t.entered >= timeout
        count = {o: sum(t.outcome == o for t in tickets) for o in ("timed_out", "cancelled")}
        assert queue.timed_out == count["timed_out"]
        assert queue.cancelled == count["cancelled"]
        assert queue.refused == sum(t.outcome == "refused" for t in tickets)
        assert queue.total_queued == sum(t.deferred is not None for t in tickets)
        assert queue.total_queued == (
            queue.served_from_queue + queue.timed_out + queue.cancelled + queue.queued
        )
        assert len(clock.getDelayedCalls()) == queue.queued

    for op, arg in steps:
        if op == "enter":
            ticket = Ticket(len(tickets), clock.seconds(), bool(arg))
            tickets.append(ticket)
            got = queue.enter()
            if isinstance(got, Slot):
                ticket.slot, ticket.outcome = got, "held"
            elif isinstance(got, Refused):
                ticket.outcome = "refused"
            else:
                ticket.deferred = got
                got.addCallbacks(on_slot, on_failure, callbackArgs=(ticket,), errbackArgs=(ticket,))
        elif op == "release" and tickets:
            ticket = tickets[int(str(arg)) % len(tickets)]
            if ticket.slot is not None:
                ticket.slot.release()  # a second release must do nothing
                ticket.outcome = "released"
        elif op == "cancel" and tickets:
            ticket = tickets[int(str(arg)) % len(tickets)]
            if ticket.deferred is not None:
                ticket.deferred.cancel()  # does nothing once it fired
        elif op == "advance":
            clock.advance(float(str(arg)))
        check()

    # Releasing every slot and waiting out the timeout empties the queue.
    while any(t.slot is not None and t.slot.held for t in tickets):
        for t in tickets:
            if t.slot is not None:
                t.slot.release()
        check()
    clock.advance(timeout)
    check()
    assert queue.in_flight == 0 and queue.queued == 0
