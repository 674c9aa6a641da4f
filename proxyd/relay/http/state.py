"""The progress of an exchange (proxyd.relay.http.exchange), as h11's _state.py models an
HTTP connection: one state at a time, moved only along NEXT, so that an event in the wrong
state is a bug found at once rather than a flag combination nobody thought of. A server's
response that no filter takes part in goes from PROXYING straight to STREAMING (or TUNNEL);
the BUFFERING states are only for the bodies a filter gets whole."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class State(enum.IntEnum):
    """An IntEnum: it hashes and compares as an int, in C (an Enum's __hash__ is Python
    code, run twice for each move of every request)."""

    REQUEST_FILTERS = 1
    """The request head's filters run (or one of them waits)."""
    BUFFERING_REQUEST = 2
    """A filter gets the request body whole: it is read before a server is tried."""
    PROXYING = 3
    """At a server: attempts, the request sent or streaming, the response awaited."""
    RESPONSE_FILTERS = 4
    """The response head's filters run: a server's response, or an answer."""
    BUFFERING_RESPONSE = 5
    """A filter gets the response body whole: it is read before the head goes out."""
    STREAMING = 6
    """The response head is sent; its body streams."""
    TUNNEL = 7
    """Switched protocols (a WebSocket upgrade): bytes flow both ways."""
    DONE = 8
    """Logged; nothing more happens."""


NEXT: Final[Mapping[State, frozenset[State]]] = {
    State.REQUEST_FILTERS: frozenset(
        {State.BUFFERING_REQUEST, State.PROXYING, State.RESPONSE_FILTERS, State.DONE}
    ),
    State.BUFFERING_REQUEST: frozenset({State.PROXYING, State.RESPONSE_FILTERS, State.DONE}),
    State.PROXYING: frozenset(
        {
            State.RESPONSE_FILTERS,
            State.BUFFERING_RESPONSE,
            State.STREAMING,
            State.TUNNEL,
            State.DONE,
        }
    ),
    State.RESPONSE_FILTERS: frozenset(
        {
            State.RESPONSE_FILTERS,
            State.BUFFERING_RESPONSE,
            State.STREAMING,
            State.TUNNEL,
            State.DONE,
        }
    ),
    State.BUFFERING_RESPONSE: frozenset({State.RESPONSE_FILTERS, State.STREAMING, State.DONE}),
    State.STREAMING: frozenset({State.DONE}),
    State.TUNNEL: frozenset({State.DONE}),
    State.DONE: frozenset(),
}
HEAD_SENT: Final = frozenset({State.STREAMING, State.TUNNEL})
FLAGS: Final[Mapping[State, tuple[bool, bool, bool]]] = {
    state: (
        state is State.DONE,
        state in HEAD_SENT,
        state in (State.PROXYING, State.BUFFERING_RESPONSE, State.STREAMING),
    )
    for state in State
}
"""The exchange's flags in each state: (finished, response_started, reading_response)."""

# The members as module constants: reading an Enum member through its class costs ten times
# a global's load (60 ns), on every move of every request.
REQUEST_FILTERS: Final = State.REQUEST_FILTERS
BUFFERING_REQUEST: Final = State.BUFFERING_REQUEST
PROXYING: Final = State.PROXYING
RESPONSE_FILTERS: Final = State.RESPONSE_FILTERS
BUFFERING_RESPONSE: Final = State.BUFFERING_RESPONSE
STREAMING: Final = State.STREAMING
TUNNEL: Final = State.TUNNEL
DONE: Final = State.DONE


def check_move(now: State, then: State) -> None:
    if then not in NEXT[now]:
        raise AssertionError(f"exchange: {now.name} -> {then.name}")
