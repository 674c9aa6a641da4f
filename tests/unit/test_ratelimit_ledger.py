"""The master's Ledger (proxyd.ratelimit.ledger): every worker's charges summed, and each
worker told what the others charged since its last report."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from proxyd.ratelimit.ledger import FORGET_AFTER, Ledger

SHAPE = [10, 1, 3, 1000]  # 10/s, burst 3, max_keys 1000


def report(*charges: list[object], ident: str = "front/l", shape: list[int] = SHAPE) -> dict:
    return {"id": ident, "shape": shape, "charges": list(charges)}


def ledger() -> tuple[Ledger, Clock]:
    clock = Clock()
    clock.advance(1000)
    return Ledger(clock), clock


def test_a_report_is_answered_with_the_tats_of_its_keys() -> None:
    accounts, _clock = ledger()
    answer = accounts.report(0, [report(["a", 1000.0, 2], [["client", "::1"], 1000.0, 1])])
    assert answer == {
        "front/l": [["a", pytest.approx(1000.2)], [["client", "::1"], pytest.approx(1000.1)]]
    }
    assert accounts.tables["front/l"].tat(("client", "::1")) == pytest.approx(1000.1)


def test_each_worker_learns_what_the_others_charged_since_its_last_report() -> None:
    accounts, _clock = ledger()
    assert accounts.report(1, []) == {}  # worker 1 is known from its first call
    accounts.report(0, [report(["a", 1000.0, 2])])
    accounts.report(0, [report(["b", 1000.0, 1])])
    answer = accounts.report(1, [])
    assert sorted(answer["front/l"]) == [["a", pytest.approx(1000.2)], ["b", pytest.approx(1000.1)]]
    assert accounts.report(1, []) == {}  # told once
    # Worker 0 learns of worker 1's charges to "a", with its own.
    accounts.report(1, [report(["a", 1000.0, 1])])
    assert accounts.report(0, []) == {"front/l": [["a", pytest.approx(1000.3)]]}


def test_keys_that_owe_nothing_any_more_are_not_told() -> None:
    accounts, clock = ledger()
    accounts.report(1, [])
    accounts.report(0, [report(["a", 1000.0, 1])])
    clock.advance(0.2)
    assert accounts.report(1, []) == {}


def test_a_changed_shape_starts_a_new_table() -> None:
    accounts, _clock = ledger()
    accounts.report(0, [report(["a", 1000.0, 3])])
    answer = accounts.report(0, [report(["a", 1000.0, 1], shape=[20, 1, 3, 1000])])
    assert answer == {"front/l": [["a", pytest.approx(1000.05)]]}


def test_a_worker_forgotten_is_told_nothing_more() -> None:
    accounts, _clock = ledger()
    accounts.report(1, [])
    accounts.forget(1)
    accounts.report(0, [report(["a", 1000.0, 1])])
    assert accounts.report(1, []) == {}


def test_what_a_worker_is_told_is_bounded_by_the_tables_max_keys() -> None:
    accounts, _clock = ledger()
    accounts.report(1, [])
    shape = [10, 1, 3, 2]
    accounts.report(0, [report(*[[key, 1000.0, 1] for key in "abc"], shape=shape)])
    accounts.report(0, [report(["d", 1000.0, 1], shape=shape)])
    assert len(accounts._untold[1]["front/l"]) == 2


def test_sweep_drops_tables_long_unreported_once_they_owe_nothing() -> None:
    accounts, clock = ledger()
    accounts.report(0, [report(["a", 1000.0, 1]), report(["a", 1000.0, 1], ident="other/l")])
    clock.advance(FORGET_AFTER / 2)
    accounts.report(0, [report(["b", clock.seconds(), 1])])
    clock.advance(FORGET_AFTER / 2 + 1)
    accounts.sweep()
    assert set(accounts.tables) == {"front/l"}
    clock.advance(FORGET_AFTER)
    accounts.sweep()
    assert accounts.tables == {}
