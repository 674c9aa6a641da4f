"""The rise/fall state machine: probation, counting, resets."""

from __future__ import annotations

import pytest

from proxyd.health.state import HealthState, Transition


def feed(state: HealthState, results: str) -> list[Transition | None]:
    """`results` is a string of '+' (passed) and '-' (failed) checks."""
    return [state.record(r == "+", "ok" if r == "+" else "refused") for r in results]


def test_starts_up_on_probation() -> None:
    state = HealthState(rise=2, fall=3)
    assert state.up
    assert state.probation


def test_first_failed_check_on_probation_takes_it_down_at_once() -> None:
    state = HealthState(rise=2, fall=3)
    transition = state.record(False, "connection refused")
    assert transition == Transition(
        up=False, reason="connection refused", count=1, threshold=1, first_check=True
    )
    assert transition.state == "DOWN"
    assert transition.counts == "first check failed"
    assert not state.up
    assert not state.probation


def test_a_passed_check_ends_probation_and_then_fall_failures_are_needed() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "+") == [None]
    assert not state.probation
    assert feed(state, "--") == [None, None]
    assert state.up
    transition = state.record(False, "timeout after 2s")
    assert transition == Transition(up=False, reason="timeout after 2s", count=3, threshold=3)
    assert transition.counts == "3/3 failed"
    assert not state.up


def test_rise_successes_in_a_row_take_a_down_server_up() -> None:
    state = HealthState(rise=2, fall=3)
    feed(state, "-")
    assert not state.up
    assert state.record(True, "") is None
    transition = state.record(True, "")
    assert transition is not None
    assert transition.up and transition.state == "UP"
    assert transition.counts == "2/2 succeeded"
    assert state.up


def test_after_recovery_normal_counting_applies_not_probation() -> None:
    state = HealthState(rise=1, fall=2)
    feed(state, "-+")
    assert state.up and not state.probation
    assert state.record(False, "refused") is None
    assert state.record(False, "refused") is not None


def test_a_success_resets_the_failure_count() -> None:
    state = HealthState(rise=2, fall=3)
    results = feed(state, "+--+--+--")
    assert results == [None] * 9
    assert state.up
    assert state.failures == 2


def test_a_failure_resets_the_success_count() -> None:
    state = HealthState(rise=3, fall=1)
    feed(state, "-")
    results = feed(state, "++-++-++")
    assert results == [None] * 8
    assert not state.up
    assert state.successes == 2
    transition = state.record(True, "")
    assert transition is not None and transition.count == 3 and transition.threshold == 3


def test_alternating_results_never_change_state_past_probation() -> None:
    up = HealthState(rise=2, fall=2)
    assert feed(up, "+-+-+-+-") == [None] * 8
    assert up.up
    down = HealthState(rise=2, fall=2)
    assert feed(down, "-")[0] is not None
    assert feed(down, "+-+-+-+-") == [None] * 8
    assert not down.up


def test_rise_and_fall_of_one_act_on_every_change() -> None:
    state = HealthState(rise=1, fall=1)
    results = feed(state, "+-+-")
    assert [t.state if t else None for t in results] == [None, "DOWN", "UP", "DOWN"]


def test_a_transition_carries_the_reason_of_the_result_that_caused_it() -> None:
    state = HealthState(rise=2, fall=2)
    state.record(True, "")
    state.record(False, "connection refused")
    transition = state.record(False, "timeout after 2s")
    assert transition is not None and transition.reason == "timeout after 2s"


def test_repeated_results_in_the_current_state_change_nothing() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "+" * 10) == [None] * 10
    feed(state, "---")
    assert feed(state, "-" * 10) == [None] * 10
    assert not state.up and state.successes == 0


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0)])
def test_rise_and_fall_must_be_at_least_one(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        HealthState(rise=rise, fall=fall)
