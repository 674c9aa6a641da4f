"""The exchange's state machine (proxyd.relay.http.state), table-driven."""

from __future__ import annotations

import pytest

from proxyd.relay.http.state import HEAD_SENT, NEXT, State, check_move

ALLOWED = [
    (State.REQUEST_FILTERS, State.PROXYING),  # no filter answered: to a server
    (State.REQUEST_FILTERS, State.RESPONSE_FILTERS),  # answered (a filter, a redirect, 404)
    (State.REQUEST_FILTERS, State.DONE),  # the client left while a filter waited
    (State.REQUEST_FILTERS, State.BUFFERING_REQUEST),  # a filter gets the body whole
    (State.BUFFERING_REQUEST, State.PROXYING),  # the body read whole: to a server
    (State.BUFFERING_REQUEST, State.RESPONSE_FILTERS),  # refused (413, 400), or a 408
    (State.BUFFERING_REQUEST, State.DONE),  # the client left
    (State.PROXYING, State.RESPONSE_FILTERS),  # a response, or proxyd's error answer
    (State.PROXYING, State.BUFFERING_RESPONSE),  # a filter gets the response body whole
    (State.PROXYING, State.STREAMING),  # a response no filter takes part in
    (State.PROXYING, State.TUNNEL),  # a 101 no filter takes part in
    (State.PROXYING, State.DONE),  # the client left
    (State.RESPONSE_FILTERS, State.RESPONSE_FILTERS),  # a filter replaced the response
    (State.RESPONSE_FILTERS, State.STREAMING),
    (State.RESPONSE_FILTERS, State.TUNNEL),
    (State.RESPONSE_FILTERS, State.DONE),  # the client left while a filter waited
    (State.RESPONSE_FILTERS, State.BUFFERING_RESPONSE),
    (State.BUFFERING_RESPONSE, State.STREAMING),  # the body read whole: head and body
    (State.BUFFERING_RESPONSE, State.RESPONSE_FILTERS),  # proxyd's 502 in its place
    (State.BUFFERING_RESPONSE, State.DONE),  # the client left
    (State.STREAMING, State.DONE),
    (State.TUNNEL, State.DONE),
]


@pytest.mark.parametrize(("now", "then"), ALLOWED)
def test_allowed_moves(now: State, then: State) -> None:
    check_move(now, then)


@pytest.mark.parametrize(
    ("now", "then"),
    [(a, b) for a in State for b in State if (a, b) not in ALLOWED],
)
def test_every_other_move_is_a_bug(now: State, then: State) -> None:
    with pytest.raises(AssertionError, match=f"{now.name} -> {then.name}"):
        check_move(now, then)


def test_the_table_and_the_head_sent_states() -> None:
    assert {(a, b) for a, targets in NEXT.items() for b in targets} == set(ALLOWED)
    assert {State.STREAMING, State.TUNNEL} == HEAD_SENT
    assert NEXT[State.DONE] == frozenset()
