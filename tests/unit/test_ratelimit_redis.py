"""RedisLimit (proxyd.ratelimit.redis_limit) on a Clock, with a fake store that runs the
GCRA step in Python (Gcra.decide_up_to, what the Lua script does): one call per key at a
time, requests batched, a local allowance spent without asking, and a slow or dead store
followed by on_store_error, logged once per outage."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from proxyd.ratelimit.gcra import Gcra, Verdict
from proxyd.ratelimit.rates import rate
from proxyd.ratelimit.redis_limit import (
    LEASE_LIFE,
    PROBE_INTERVAL,
    STORE_ALLOWED,
    STORE_DENIED,
    RedisLimit,
)


class FakeRedis:
    """Runs the script's arithmetic on its own TATs; each call's answer is held until
    `answer()` (or answered at once with `auto`)."""

    def __init__(self, gcra: Gcra, clock: Clock, auto: bool = False) -> None:
        self.gcra = gcra
        self.clock = clock
        self.auto = auto
        self.tats: dict[str, float] = {}
        self.calls: list[tuple[str, tuple[str, ...], Deferred[Any]]] = []

    def __call__(self, key: str, args: tuple[str, ...]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((key, args, d))
        if self.auto:
            self.answer()
        return d

    def answer(self) -> None:
        key, args, d = self.calls.pop(0)
        assert args[0] == "" and args[4] == "1"  # Redis's clock, up-to mode
        granted, verdict = self.gcra.decide_up_to(
            self.tats.get(key), self.clock.seconds(), int(args[3])
        )
        if verdict.tat is not None:
            self.tats[key] = verdict.tat
        d.callback(
            [granted, verdict.remaining, repr(verdict.retry_after), repr(verdict.reset_after)]
        )


def made(
    text: str = "10/s",
    burst: int = 5,
    *,
    allowance: int = 0,
    on_error: str = "allow",
    auto: bool = False,
    max_keys: int = 1000,
) -> tuple[RedisLimit, FakeRedis, Clock]:
    clock = Clock()
    clock.advance(1000)
    gcra = Gcra(rate(text), burst)
    redis = FakeRedis(gcra, clock, auto)
    limit = RedisLimit(
        gcra,
        "api",
        clock,
        redis,
        store="redis://127.0.0.1:6379/0",
        timeout=0.1,
        on_error=on_error,
        allowance=allowance,
        max_keys=max_keys,
    )
    return limit, redis, clock


def verdicts(hits: list[Verdict | Deferred[Verdict]]) -> list[Verdict]:
    out = []
    for hit in hits:
        if isinstance(hit, Deferred):
            got: list[Verdict] = []
            hit.addBoth(got.append)
            assert got, "not answered yet"
            out.append(got[0])
        else:
            out.append(hit)
    return out


def test_each_request_asks_redis_and_gets_its_verdict() -> None:
    limit, redis, _clock = made(auto=True)
    got = verdicts([limit.hit("10.0.0.1") for _ in range(6)])
    assert [v.allowed for v in got] == [True] * 5 + [False]
    assert [v.remaining for v in got[:5]] == [4, 3, 2, 1, 0]
    assert got[5].retry_after == pytest.approx(0.1)
    assert list(redis.tats) == ['proxyd:rl:api:"10.0.0.1"']
    assert (limit.allowed, limit.limited) == (5, 1)


def test_keys_are_the_limits_name_and_the_key_as_json() -> None:
    limit, redis, _clock = made(auto=True)
    limit.hit(("client", "::1"))
    limit.hit(("route", ("client", "10.0.0.1")))
    assert list(redis.tats) == [
        'proxyd:rl:api:["client","::1"]',
        'proxyd:rl:api:["route",["client","10.0.0.1"]]',
    ]


def test_requests_arriving_during_a_call_wait_and_go_in_one_call() -> None:
    limit, redis, _clock = made()
    first = limit.hit("k")
    waiting = [limit.hit("k") for _ in range(7)]
    assert len(redis.calls) == 1
    redis.answer()
    assert verdicts([first])[0].allowed
    # One call for the seven, up to the burst: four pass (the first took one), three refused.
    assert [args[3] for _, args, _ in redis.calls] == ["5"]
    redis.answer()
    got = verdicts(waiting)
    assert [v.allowed for v in got] == [True] * 4 + [False] * 3
    assert [v.remaining for v in got[:4]] == [3, 2, 1, 0]
    assert all(v.retry_after == pytest.approx(0.1) for v in got[4:])
    assert limit.tracked == 0  # no lease, no call: nothing held


def test_a_local_allowance_spares_redis_the_next_requests() -> None:
    limit, redis, _clock = made("10/s", 10, allowance=4, auto=True)
    got = verdicts([limit.hit("k") for _ in range(5)])
    assert len(redis.tats) == 1
    assert redis.calls == []
    assert all(v.allowed for v in got)
    # One call granted 1 + 4; the next four were spent locally.
    assert redis.tats['proxyd:rl:api:"k"'] == pytest.approx(1000.5)
    assert [v.remaining for v in got] == [9, 8, 7, 6, 5]
    assert limit.tracked == 0
    got = verdicts([limit.hit("k")])  # the lease is spent: Redis again, for 1 + 4
    assert redis.tats['proxyd:rl:api:"k"'] == pytest.approx(1001.0)


def test_a_lease_is_not_spent_after_its_life() -> None:
    limit, redis, clock = made("10/s", 10, allowance=4, auto=True)
    limit.hit("k")
    clock.advance(LEASE_LIFE)
    limit.hit("k")
    # Asked again: 5 more charged (the old lease's 4 are lost, never given back).
    assert redis.tats['proxyd:rl:api:"k"'] == pytest.approx(1001.5)
    clock.advance(LEASE_LIFE + 1)
    limit.sweep()
    assert limit.tracked == 0


def test_nodes_with_allowances_overshoot_by_at_most_an_allowance_each() -> None:
    clock = Clock()
    clock.advance(1000)
    gcra = Gcra(rate("100/s"), 10)
    redis = FakeRedis(gcra, clock, auto=True)
    nodes = [
        RedisLimit(
            gcra,
            "api",
            clock,
            redis,
            store="-",
            timeout=0.1,
            on_error="allow",
            allowance=5,
            max_keys=100,
        )
        for _ in range(3)
    ]
    allowed = 0
    for _tick in range(10_000):  # 10 s, each node a request every millisecond
        for node in nodes:
            allowed += verdicts([node.hit("k")])[0].allowed
        clock.advance(0.001)
    assert 1000 <= allowed <= 10 + 1000 + 3 * 5


def test_a_store_that_does_not_answer_in_time_follows_on_store_error_once_logged() -> None:
    limit, redis, clock = made(on_error="allow")
    with capturedLogs() as events:
        waiting = limit.hit("k")
        clock.advance(0.1)
        assert verdicts([waiting]) == [STORE_ALLOWED]
        assert redis.calls[0][2].called  # cancelled
        # From now on, decided at once, without asking, until the probe is due.
        assert limit.hit("k") is STORE_ALLOWED
        assert limit.hit("other") is STORE_ALLOWED
        assert len(redis.calls) == 1
        clock.advance(PROBE_INTERVAL)
        probe = limit.hit("k")
        assert isinstance(probe, Deferred) and len(redis.calls) == 2
        assert limit.hit("k") is STORE_ALLOWED  # one probe at a time
        redis.calls.pop(0)
        redis.answer()
        assert verdicts([probe])[0].allowed
        assert isinstance(limit.hit("k"), Deferred)  # Redis again
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    infos = [e for e in events if e["log_level"] == LogLevel.info]
    assert len(errors) == 1 and "did not answer within 0.1s" in errors[0]["why"]
    assert errors[0]["store"] == "redis://127.0.0.1:6379/0"
    assert len(infos) == 1 and infos[0]["count"] == 4
    assert (limit.store_errors, limit.unchecked) == (1, 4)


def test_a_store_error_with_deny_refuses_and_a_late_answer_changes_nothing() -> None:
    limit, _redis, clock = made(on_error="deny")
    with capturedLogs():
        waiting = limit.hit("k")
        clock.advance(0.2)
        assert verdicts([waiting]) == [STORE_DENIED]
        assert limit.hit("k") is STORE_DENIED
    assert limit.limited == 2 and limit.allowed == 0


def test_a_failing_call_is_a_store_error_at_once() -> None:
    clock = Clock()
    gcra = Gcra(rate("10/s"), 5)
    limit = RedisLimit(
        gcra,
        "api",
        clock,
        lambda key, args: fail(ConnectionError("Not connected")),
        store="-",
        timeout=0.1,
        on_error="allow",
        allowance=0,
        max_keys=10,
    )
    with capturedLogs() as events:
        assert verdicts([limit.hit("k")]) == [STORE_ALLOWED]
    assert "Not connected" in events[0]["why"]
    assert clock.getDelayedCalls() == []


def test_a_reply_that_makes_no_sense_is_a_store_error() -> None:
    limit, redis, _clock = made()
    with capturedLogs() as events:
        waiting = limit.hit("k")
        redis.calls.pop(0)[2].callback(b"OK")
        assert verdicts([waiting]) == [STORE_ALLOWED]
    assert "answered" in events[0]["why"]


def test_keys_held_are_bounded_and_calls_in_flight_are_never_dropped() -> None:
    limit, redis, _clock = made(max_keys=2)
    limit.hit("a")
    limit.hit("b")
    assert limit.hit("c") is STORE_ALLOWED  # both held keys have a call out
    redis.answer()
    redis.answer()
    assert limit.tracked == 0


def test_a_waiter_whose_client_left_leaves_the_next_call_quietly() -> None:
    limit, redis, _ = made()
    first = limit.hit("k")
    second = limit.hit("k")
    third = limit.hit("k")
    assert isinstance(second, Deferred) and isinstance(third, Deferred)
    second.cancel()  # the chain cancels what it waits on when its client goes
    got: list[Any] = []
    second.addErrback(got.append)
    redis.answer()
    redis.answer()
    assert [args[3] for _, args, _ in redis.calls] == []
    assert verdicts([first, third])[1].allowed
    assert (limit.allowed, limit.limited) == (2, 0)
    assert len(got) == 1


def test_a_waiter_whose_client_left_while_its_call_was_out_leaves_its_grant_to_the_lease() -> None:
    limit, redis, _ = made("10/s", 5)
    first = limit.hit("k")
    waiting = [limit.hit("k") for _ in range(3)]
    redis.answer()  # the first call; the three go out together next
    assert verdicts([first])[0].allowed and len(redis.calls) == 1
    waiting[1].cancel()  # its client leaves while the call is out
    waiting[1].addErrback(lambda failure: None)
    redis.answer()
    got = verdicts([waiting[0], waiting[2]])
    assert all(verdict.allowed for verdict in got)
    assert (limit.allowed, limit.limited) == (3, 0)
    # The grant of the one that left is a lease: the next request spends it, no call.
    assert verdicts([limit.hit("k")])[0].allowed and redis.calls == []


def test_a_waiter_whose_client_left_while_its_call_failed_is_not_answered_again() -> None:
    limit, redis, clock = made()
    limit.hit("k")
    waiting = limit.hit("k")
    redis.answer()
    assert isinstance(waiting, Deferred)
    waiting.cancel()
    waiting.addErrback(lambda failure: None)
    with capturedLogs():
        clock.advance(0.1)  # the call times out
    assert limit.hit("k") is STORE_ALLOWED
