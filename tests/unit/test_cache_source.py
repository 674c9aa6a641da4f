"""proxyd.cache.source.Pump and proxyd.cache.fills: a stored body sent in paced pieces,
paused and resumed, checked against its CRC-32, and followed while it is written; requests
collapsing onto one fetch, on a MemoryReactorClock."""

from __future__ import annotations

import zlib

from twisted.internet.task import Clock

from proxyd.cache.fills import Fill, Fills
from proxyd.cache.source import PIECE, PIECES_A_TURN, Pump


class Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    @property
    def length(self) -> int:
        return len(self.data)

    def read_at(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    def close(self) -> None:
        self.closed = True


class Sink:
    def __init__(self) -> None:
        self.data = b""
        self.ended = False
        self.failed: str | None = None

    def source_data(self, data: bytes) -> None:
        self.data += data

    def source_end(self) -> None:
        self.ended = True

    def source_failed(self, why: str) -> None:
        self.failed = why


def run(clock: Clock, turns: int = 100) -> None:
    for _ in range(turns):
        clock.advance(0)


def test_whole_body_sent_in_bounded_pieces_per_turn_and_checked() -> None:
    clock = Clock()
    data = bytes(range(256)) * 4096  # 1 MiB
    body = Bytes(data)
    pump = Pump(clock, body, 0, len(data), checksum=zlib.crc32(data))
    sink = Sink()
    pump.start(sink)
    assert len(sink.data) == PIECE * PIECES_A_TURN  # one turn's worth, then the reactor
    run(clock)
    assert sink.data == data and sink.ended and body.closed


def test_pause_holds_until_resume() -> None:
    clock = Clock()
    data = b"y" * (PIECE * PIECES_A_TURN * 3)
    pump = Pump(clock, Bytes(data), 0, len(data))
    sink = Sink()
    pump.start(sink)
    pump.pause()
    run(clock)
    assert len(sink.data) == PIECE * PIECES_A_TURN and not sink.ended
    pump.resume()
    run(clock)
    assert sink.data == data and sink.ended


def test_checksum_mismatch_cuts_and_reports_corruption() -> None:
    clock = Clock()
    corrupt: list[bool] = []
    pump = Pump(clock, Bytes(b"abc"), 0, 3, checksum=1, corrupt=lambda: corrupt.append(True))
    sink = Sink()
    pump.start(sink)
    assert sink.failed == "stored body failed its checksum" and corrupt == [True]


def test_a_body_shorter_than_its_length_fails() -> None:
    clock = Clock()
    body = Bytes(b"abc")
    pump = Pump(clock, body, 0, 10, growing=None)
    sink = Sink()
    pump.start(sink)
    run(clock)
    assert sink.data == b"abc" and not sink.ended
    assert sink.failed == "stored body shorter than its index says" and body.closed


def test_range_of_a_body() -> None:
    clock = Clock()
    pump = Pump(clock, Bytes(b"0123456789"), 2, 5)
    sink = Sink()
    pump.start(sink)
    assert sink.data == b"23456" and sink.ended


class Growing(Bytes):
    def append(self, data: bytes) -> None:
        self.data += data


def test_follows_a_fill_as_it_grows_and_ends_when_it_commits() -> None:
    clock = Clock()
    fills = Fills()
    fill = fills.begin(b"k")
    body = Growing(b"ab")
    pump = Pump(clock, body, 0, None, growing=fill, length=None)
    sink = Sink()
    pump.start(sink)
    assert sink.data == b"ab" and not sink.ended
    body.append(b"cd")
    fill.appended()
    run(clock)
    assert sink.data == b"abcd" and not sink.ended
    body.append(b"e")
    fill.committed()
    run(clock)
    assert sink.data == b"abcde" and sink.ended
    assert fills.get(b"k") is None


def test_a_cut_fill_fails_its_readers() -> None:
    clock = Clock()
    fills = Fills()
    fill = fills.begin(b"k")
    pump = Pump(clock, Growing(b"ab"), 0, None, growing=fill)
    sink = Sink()
    pump.start(sink)
    fill.cut()
    run(clock)
    assert sink.failed == "the response being stored was cut"


def test_waiters_get_the_fill_when_stored_none_when_not_or_after_the_lock_timeout() -> None:
    clock = Clock()
    fills = Fills()
    fill = fills.begin(b"k")
    got: list[Fill | None] = []
    fill.wait(clock, 5.0).addCallback(got.append)
    fill.wait(clock, 5.0).addCallback(got.append)
    assert fill.waiting == 2
    fill.not_storing()
    assert got == [None, None] and fills.get(b"k") is None
    other = fills.begin(b"k")
    late: list[Fill | None] = []
    other.wait(clock, 5.0).addCallback(late.append)
    clock.advance(4.999)
    assert late == []
    clock.advance(0.001)
    assert late == [None] and other.waiting == 0
    assert not clock.getDelayedCalls()


def test_a_cancelled_waiter_leaves_no_timer() -> None:
    clock = Clock()
    fill = Fills().begin(b"k")
    waiting = fill.wait(clock, 5.0)
    waiting.addErrback(lambda _: None)
    waiting.cancel()
    assert fill.waiting == 0 and not clock.getDelayedCalls()


def test_a_waiter_arriving_after_the_head_gets_the_fill_at_once() -> None:
    clock = Clock()
    fills = Fills()
    fill = fills.begin(b"k")

    class Writer:
        meta = None

    fill.storing(Writer(), 10)  # type: ignore[arg-type]
    got: list[Fill | None] = []
    fill.wait(clock, 5.0).addCallback(got.append)
    assert got == [fill] and fill.length == 10 and not clock.getDelayedCalls()
