"""A worker's rate-limit tables kept for the whole machine (proxyd.ratelimit.synced): what a
SyncedTable reports and takes on, when LimitSync reports, and, with the master's Ledger over
JSON on one clock, how close N workers come to one process's count."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from proxyd.config.ratelimit_model import RateLimitConfig
from proxyd.ratelimit.gcra import Gcra
from proxyd.ratelimit.ledger import Ledger
from proxyd.ratelimit.rates import rate
from proxyd.ratelimit.synced import IDLE_INTERVAL, SYNC_INTERVAL, LimitSync, decode_key
from proxyd.ratelimit.table import LimitTable, hit_all

START = 1_700_000_000.0


def limit(text: str = "10/s", burst: int = 3, name: str = "l") -> RateLimitConfig:
    return RateLimitConfig(name, rate(text), burst)


class Recorder:
    """A Send that records the reports and answers with `answer`."""

    def __init__(self) -> None:
        self.reports: list[list[dict[str, Any]]] = []
        self.answer: dict[str, Any] = {}

    def __call__(self, reports: list[dict[str, Any]]) -> Deferred[dict[str, Any]]:
        self.reports.append(json.loads(json.dumps(reports)))
        return succeed(self.answer)


def started(send: Any = None) -> tuple[LimitSync, Clock, Recorder]:
    clock = Clock()
    clock.advance(START)
    recorder = Recorder()
    sync = LimitSync(clock, send or recorder)
    sync.start()
    return sync, clock, recorder


def test_keys_cross_as_json_and_come_back_as_they_were() -> None:
    for key in ("10.0.0.1", ("client", "::1"), ("route", ("client", "10.0.0.1"), "abc")):
        assert decode_key(json.loads(json.dumps(key))) == key


def test_a_report_says_what_was_charged_since_the_last_and_only_that() -> None:
    sync, clock, recorder = started()
    table = sync.table("front", limit())
    table.hit("a")
    clock.advance(0.005)
    table.hit("a")
    table.hit(("client", "::1"))
    for _ in range(3):
        table.hit(("client", "::1"))  # refused past the burst: not charged, not reported
    clock.advance(SYNC_INTERVAL)
    assert recorder.reports == [
        [
            {
                "id": "front/l",
                "shape": [10, 1, 3, 100000],
                "charges": [["a", START, 2], [["client", "::1"], START + 0.005, 3]],
            }
        ]
    ]
    assert table.unsent == {}


def test_limits_hit_together_report_their_charges_and_none_when_refused() -> None:
    sync, clock, recorder = started()
    wide, narrow = (
        sync.table("front", limit("10/s", 3, "wide")),
        sync.table("front", limit("10/s", 1, "narrow")),
    )
    hit_all([(wide, "a"), (narrow, "a")])
    hit_all([(wide, "a"), (narrow, "a")])  # refused by narrow: neither charged
    clock.advance(SYNC_INTERVAL)
    charged = {report["id"]: report["charges"] for report in recorder.reports[0]}
    assert charged == {"front/wide": [["a", START, 1]], "front/narrow": [["a", START, 1]]}


def test_with_nothing_charged_a_worker_asks_once_an_idle_interval() -> None:
    sync, clock, recorder = started()
    table = sync.table("front", limit())
    clock.advance(SYNC_INTERVAL * 5)
    assert recorder.reports == []
    clock.advance(IDLE_INTERVAL)
    assert recorder.reports == [[]]
    assert table.tracked == 0


def test_a_worker_with_no_table_sends_nothing() -> None:
    _sync, clock, recorder = started()
    clock.advance(IDLE_INTERVAL * 3)
    assert recorder.reports == []


def test_a_first_charge_brings_the_report_forward_to_one_interval() -> None:
    sync, clock, recorder = started()
    table = sync.table("front", limit())
    clock.advance(0.5)
    table.hit("a")
    clock.advance(SYNC_INTERVAL)
    assert len(recorder.reports) == 1
    # Still busy: the next report comes an interval later, charged or not.
    clock.advance(SYNC_INTERVAL)
    assert recorder.reports[-1] == []
    # Nothing charged nor learned: back to the idle interval.
    clock.advance(SYNC_INTERVAL)
    assert len(recorder.reports) == 2
    clock.advance(IDLE_INTERVAL)
    assert len(recorder.reports) == 3


def test_the_masters_answer_raises_the_keys_by_what_was_charged_since() -> None:
    sync, clock, _recorder = started()
    table = sync.table("front", limit("10/s", 5))
    table.hit("a")
    # The master says "a" owes 0.4 s (other workers charged it 3 times).
    answer: Deferred[dict[str, Any]] = Deferred()
    sync.send = lambda reports: answer
    clock.advance(SYNC_INTERVAL)
    table.hit("a")  # charged after the report went: added to what the master says
    answer.callback({"front/l": [["a", START + 0.4], [["client", "b"], START + 0.2]]})
    assert table.peek("a").reset_after == pytest.approx(0.5 - SYNC_INTERVAL)
    assert table.peek(("client", "b")).reset_after == pytest.approx(0.2 - SYNC_INTERVAL)
    assert not table.hit("a").allowed  # owes 0.48 s: one more would pass the burst's 0.5
    clock.advance(0.09)
    assert [table.hit("a").allowed for _ in range(2)] == [True, False]


def test_an_answer_below_what_the_worker_knows_lowers_nothing() -> None:
    sync, clock, recorder = started()
    table = sync.table("front", limit("10/s", 5))
    for _ in range(3):
        table.hit("a")
    recorder.answer = {"front/l": [["a", START]]}
    clock.advance(SYNC_INTERVAL)
    assert table.peek("a").reset_after == pytest.approx(0.3 - SYNC_INTERVAL)


def test_a_failed_report_is_logged_once_until_one_succeeds() -> None:
    calls: list[int] = []

    def send(reports: Any) -> Deferred[dict[str, Any]]:
        calls.append(1)
        return fail(ConnectionError("the master is gone"))

    sync, clock, _ = started(send)
    table = sync.table("front", limit())
    with capturedLogs() as events:
        table.hit("a")
        clock.advance(SYNC_INTERVAL)
        table.hit("b")
        clock.advance(IDLE_INTERVAL)
    assert len(calls) == 2
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert "the master is gone" in warnings[0]["why"]
    assert table.hit("c").allowed  # the worker goes on counting alone


def test_stop_cancels_the_next_report() -> None:
    sync, clock, recorder = started()
    sync.table("front", limit()).hit("a")
    sync.stop()
    assert clock.getDelayedCalls() == []
    sync.wake()
    clock.advance(IDLE_INTERVAL)
    assert recorder.reports == []


def test_a_table_no_relay_holds_any_more_is_not_reported() -> None:
    sync, clock, recorder = started()
    sync.table("front", limit()).hit("a")  # dropped at once
    clock.advance(IDLE_INTERVAL)
    assert recorder.reports == []


# N workers and the master's ledger, over JSON, on one clock


def machine(
    workers: int,
    config: RateLimitConfig,
    *,
    latency: float,
    seconds: float,
    step: float,
    sends: Callable[[int, int], bool],
) -> list[int]:
    """Each worker hits one key every `step` seconds when `sends(worker, tick)`; the master
    answers each report `latency` after it is sent and takes `latency` to reach the worker.
    Returns how many each worker allowed."""
    clock = Clock()
    clock.advance(START)
    ledger = Ledger(clock)
    tables = []
    for index in range(workers):

        def send(reports: list[Any], index: int = index) -> Deferred[dict[str, Any]]:
            answer: Deferred[dict[str, Any]] = Deferred()
            wire = json.loads(json.dumps(reports))

            def deliver() -> None:
                states = json.loads(json.dumps(ledger.report(index, wire)))
                clock.callLater(latency, answer.callback, states)

            clock.callLater(latency, deliver)
            return answer

        sync = LimitSync(clock, send)
        sync.start()
        tables.append((sync, sync.table("front", config)))
    allowed = [0] * workers
    for tick in range(round(seconds / step)):
        for index, (_, table) in enumerate(tables):
            if sends(index, tick) and table.hit("client").allowed:
                allowed[index] += 1
        clock.advance(step)
    return allowed


def one_process(workers: int, config: RateLimitConfig, seconds: float, step: float) -> int:
    """What one process's LimitTable allows of the same arrivals."""
    clock = Clock()
    clock.advance(START)
    table = LimitTable(Gcra(config.rate, config.burst), clock, max_keys=10)
    allowed = 0
    for _ in range(round(seconds / step)):
        allowed += sum(table.hit("client").allowed for _ in range(workers))
        clock.advance(step)
    return allowed


@pytest.mark.parametrize(
    ("workers", "text", "burst", "latency", "step"),
    [
        (2, "100/s", 10, 0.0005, 0.001),
        (2, "100/s", 100, 0.0005, 0.001),
        (4, "100/s", 10, 0.0005, 0.001),
        (2, "1000/s", 50, 0.0005, 0.0007),
        (2, "1000/s", 1, 0.005, 0.0007),  # a busy master, requests closer than the rate
        (3, "10/s", 1, 0.0005, 0.001),
    ],
)
def test_workers_flooding_one_key_hold_the_machine_to_the_rate(
    workers: int, text: str, burst: int, latency: float, step: float
) -> None:
    """Never below what one process allows of the same requests, never 2% above the limit
    (a burst, then the rate, over 10 s). With `burst = 1` one process allows less than the
    rate (two requests 0.7 ms apart are refused at 1000/s); the workers, each seeing its own
    requests apart, get up to the rate."""
    config = limit(text, burst)
    allowed = machine(
        workers, config, latency=latency, seconds=10, step=step, sends=lambda i, k: True
    )
    limit_over_10s = burst + 10 * config.rate.per_second
    assert one_process(workers, config, 10, step) <= sum(allowed) <= 1.02 * limit_over_10s
    assert all(allowed)


def test_traffic_moving_between_workers_is_counted_as_one() -> None:
    config = limit("100/s", 10)
    allowed = machine(
        2,
        config,
        latency=0.0005,
        seconds=10,
        step=0.001,
        sends=lambda i, k: (k // 3000) % 2 == i,  # each worker in turn for 3 s
    )
    assert sum(allowed) == pytest.approx(1010, rel=0.02)


def test_a_worker_alone_gets_exactly_what_one_process_would() -> None:
    config = limit("100/s", 10)
    allowed = machine(2, config, latency=0.0005, seconds=10, step=0.001, sends=lambda i, k: i == 0)
    assert allowed == [1009, 0]  # a plain LimitTable's count for these arrivals
