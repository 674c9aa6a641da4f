"""proxyd.relay.splice: the one symmetric byte splice, over fake pipes and a MemoryReactorClock
(the TCP relay's and the HTTP tunnel's own tests cover it over their connections)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxyd.relay.session import CloseReason, Side
from proxyd.relay.splice import OnStall, Pipe, Splice

OTHER = {Side.CLIENT: Side.SERVER, Side.SERVER: Side.CLIENT}


class FakePipe:
    def __init__(self, half_close: bool = True) -> None:
        self.half_close = half_close
        self.calls: list[str] = []
        self.sent = b""
        self.waiting = False
        self.on_stall: OnStall | None = None

    def splice_to(self, peer: Pipe, on_stall: OnStall) -> None:
        self.on_stall = on_stall

    def send(self, data: bytes) -> None:
        self.sent += data

    def shut_write(self) -> bool:
        self.calls.append("fin" if self.half_close else "no fin")
        return self.half_close

    def close(self) -> None:
        self.calls.append("close")

    def reset(self) -> None:
        self.calls.append("reset")

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def gone(self) -> None:
        self.calls.append("gone")


class Owner:
    def __init__(self) -> None:
        self.stalls: list[tuple[Side, Any, bool]] = []
        self.ended = 0

    def splice_stalled(self, side: Side, held: int | None, timeout: float, first: bool) -> None:
        self.stalls.append((side, held, first))

    def splice_ended(self) -> None:
        self.ended += 1


class Harness:
    def __init__(self, idle_timeout: float = 60.0, **pipe: Any) -> None:
        self.clock = MemoryReactorClock()
        self.pipes = {Side.CLIENT: FakePipe(**pipe), Side.SERVER: FakePipe(**pipe)}
        self.owner = Owner()
        self.meter = Meter()
        self.splice = Splice(
            self.clock,
            self.pipes[Side.CLIENT],
            self.pipes[Side.SERVER],
            self.owner,
            idle_timeout=idle_timeout,
            meters=(self.meter,),
        )
        self.splice.start()

    def lose(self, side: Side, exc: Exception) -> None:
        self.splice.lost(side, Failure(exc))


class Meter:
    bytes_in = 0
    bytes_out = 0


SIDES = [Side.CLIENT, Side.SERVER]


@pytest.mark.parametrize("side", SIDES)
def test_bytes_go_to_the_peer_and_are_counted_by_direction(side: Side) -> None:
    h = Harness()
    h.splice.received(side, b"abc")
    assert h.pipes[OTHER[side]].sent == b"abc" and h.pipes[side].sent == b""
    inward = side is Side.CLIENT
    assert (h.splice.bytes_in, h.splice.bytes_out) == ((3, 0) if inward else (0, 3))
    assert (h.meter.bytes_in, h.meter.bytes_out) == ((3, 0) if inward else (0, 3))


@pytest.mark.parametrize("side", SIDES)
def test_a_full_write_buffer_pauses_reading_from_the_peer(side: Side) -> None:
    h = Harness()
    h.splice.writable(side, False)
    h.splice.writable(side, True)
    assert h.pipes[OTHER[side]].calls == ["pause", "resume"]


@pytest.mark.parametrize("side", SIDES)
def test_a_fin_is_passed_on_and_both_close_once_both_ways_are_shut(side: Side) -> None:
    h = Harness()
    h.splice.read_closed(side)
    assert h.pipes[OTHER[side]].calls == ["fin"] and not h.splice.closing
    h.splice.read_closed(OTHER[side])
    assert h.pipes[side].calls == ["fin", "close"] and h.pipes[OTHER[side]].calls == [
        "fin",
        "close",
    ]
    expected = CloseReason.CLIENT_CLOSED if side is Side.CLIENT else CloseReason.SERVER_CLOSED
    assert h.splice.reason is expected


@pytest.mark.parametrize("side", SIDES)
def test_a_fin_towards_a_side_that_cannot_half_close_closes_it(side: Side) -> None:
    h = Harness(half_close=False)
    h.splice.read_closed(side)
    assert h.pipes[OTHER[side]].calls == ["no fin", "close"]


@pytest.mark.parametrize(
    ("exc", "peer_gets", "word"),
    [
        (error.ConnectionDone(), "close", "closed"),
        (error.ConnectionLost(), "reset", "reset"),
    ],
)
@pytest.mark.parametrize("side", SIDES)
def test_a_lost_side_closes_or_resets_its_peer_and_the_end_comes_with_both(
    side: Side, exc: Exception, peer_gets: str, word: str
) -> None:
    h = Harness()
    h.lose(side, exc)
    assert h.pipes[OTHER[side]].calls == [peer_gets]
    assert h.splice.reason == f"{side.value}_{word}"
    assert h.owner.ended == 0
    h.lose(OTHER[side], error.ConnectionDone())
    assert h.owner.ended == 1 and h.clock.getDelayedCalls() == []


def test_a_loss_while_closing_changes_nothing_more() -> None:
    h = Harness()
    h.splice.close(CloseReason.SHUTDOWN)
    h.lose(Side.CLIENT, error.ConnectionLost())
    assert h.pipes[Side.SERVER].calls == ["close"]
    assert h.splice.reason is CloseReason.SHUTDOWN


def test_idle_closes_both_then_resets_a_close_that_moves_nothing() -> None:
    h = Harness(idle_timeout=10.0)
    h.clock.advance(5)
    h.splice.received(Side.CLIENT, b"x")
    h.clock.advance(9)
    assert h.pipes[Side.CLIENT].calls == []
    h.clock.advance(1)
    assert [p.calls for p in h.pipes.values()] == [["close"], ["close"]]
    assert h.splice.reason is CloseReason.IDLE_TIMEOUT
    h.pipes[Side.SERVER].waiting = True  # its send timeout watches the close
    h.clock.advance(10)
    assert h.pipes[Side.CLIENT].calls == ["close"]
    h.pipes[Side.SERVER].waiting = False
    h.clock.advance(10)
    assert [p.calls for p in h.pipes.values()] == [["close", "reset"], ["close", "reset"]]


@pytest.mark.parametrize(
    ("side", "held", "reason"),
    [
        (Side.CLIENT, 1000, CloseReason.CLIENT_STALLED),
        (Side.SERVER, None, CloseReason.SERVER_STALLED),
        (Side.SERVER, 0, None),  # a close that never ended: reset, no reason of its own
    ],
)
def test_a_stall_resets_both_sides(side: Side, held: int | None, reason: Any) -> None:
    h = Harness()
    on_stall = h.pipes[side].on_stall
    assert on_stall is not None
    on_stall(held, 60.0)
    assert [p.calls for p in h.pipes.values()] == [["reset"], ["reset"]]
    assert h.splice.reason is reason
    assert h.owner.stalls == ([] if held == 0 else [(side, held, True)])


def test_a_stall_after_another_reason_keeps_the_first() -> None:
    h = Harness()
    h.splice.read_closed(Side.CLIENT)
    h.splice.stalled(Side.SERVER, 5, 60.0)
    assert h.splice.reason is CloseReason.CLIENT_CLOSED
    assert h.owner.stalls == [(Side.SERVER, 5, False)]
