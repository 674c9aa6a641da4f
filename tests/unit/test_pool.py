"""The Pool on MemoryReactorClock: who may be picked, passive and active health, events."""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from proxyd.config import values
from proxyd.config.model import Address, PoolConfig, ServerConfig
from proxyd.pool import ADMIN_STATES, MAX_WEIGHT, MIN_WEIGHT, Affinity, Pool, Server, ServerEvent
from proxyd.pool.balance import ALGORITHMS


def server(n: int, **options: Any) -> ServerConfig:
    return ServerConfig(Address(f"192.0.2.{n}", 80), **options)


def make_pool(
    *servers: ServerConfig, clock: MemoryReactorClock | None = None, **options: Any
) -> tuple[Pool, MemoryReactorClock]:
    clock = clock if clock is not None else MemoryReactorClock()
    config = PoolConfig(name="web", servers=servers or (server(1),), **options)
    return Pool(config, clock, random.Random(1)), clock


def keyed(key: bytes | None) -> Affinity:
    """An affinity that balance = hash keys on as `key` itself."""
    return Affinity(dialog=key)


def picks(pool: Pool, n: int, **kwargs: Any) -> set[Server | None]:
    return {pool.pick(**kwargs) for _ in range(n)}


def record(pool: Pool) -> list[ServerEvent]:
    events: list[ServerEvent] = []
    pool.subscribe(events.append)
    return events


def fail(pool: Pool, target: Server, times: int, reason: str = "refused") -> None:
    for _ in range(times):
        pool.report_failure(target, reason)


# the servers


def test_pool_holds_one_server_per_configured_server_in_order() -> None:
    configs = (server(1, weight=2), server(2, backup=True), server(3))
    pool, _ = make_pool(*configs)
    assert pool.name == "web"
    assert [s.config for s in pool.servers] == list(configs)
    assert {s.pool for s in pool.servers} == {"web"}
    assert [s.name for s in pool.servers] == ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"]
    assert all(s.active == 0 and s.healthy for s in pool.servers)


def test_pool_rejects_an_unknown_balance_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown balance algorithm"):
        make_pool(balance="fastest")


def test_pool_without_an_rng_draws_its_own() -> None:
    config = PoolConfig(name="web", servers=(server(1), server(2)), balance="random_two")
    pool = Pool(config, MemoryReactorClock())
    assert picks(pool, 50) == set(pool.servers)


def test_pool_with_no_servers_picks_none() -> None:
    pool = Pool(PoolConfig(name="empty", servers=()), MemoryReactorClock())
    assert pool.pick() is None
    assert not pool.any_up()


# balancing through the pool


@pytest.mark.parametrize("balance", ["round_robin", "least_conn", "random_two"])
@pytest.mark.parametrize("concurrency", [0, 20])
def test_pool_balances_by_weight_with_connections_acquired_and_released(
    balance: str, concurrency: int
) -> None:
    pool, _ = make_pool(server(1, weight=3), server(2), balance=balance)
    held: deque[Server] = deque()
    counts: Counter[Server] = Counter()
    for _ in range(10_000):
        picked = pool.pick()
        assert picked is not None
        pool.acquire(picked)
        counts[picked] += 1
        held.append(picked)
        if len(held) > concurrency:
            pool.release(held.popleft())
    assert counts[pool.servers[0]] / 10_000 == pytest.approx(0.75, abs=0.02)


def test_pool_round_robin_gives_the_nginx_smooth_sequence() -> None:
    pool, _ = make_pool(server(1, weight=5), server(2), server(3))
    a, b, c = pool.servers
    assert [pool.pick() for _ in range(7)] == [a, a, b, a, c, a, a]


@pytest.mark.parametrize("balance", ALGORITHMS)
def test_a_pick_with_one_candidate_returns_it_and_leaves_the_balancing_as_it_was(
    balance: str,
) -> None:
    configs = (server(1, weight=3), server(2), server(3, weight=2))
    pool, _ = make_pool(*configs, balance=balance)
    alone, _ = make_pool(*configs, balance=balance)
    a, b, c = alone.servers
    plain = [pool.pick(affinity=keyed(b"%d" % i)) for i in range(12)]
    interleaved = []
    for i in range(12):
        assert alone.pick(exclude=[a, b]) is c
        interleaved.append(alone.pick(affinity=keyed(b"%d" % i)))
    assert [pool.servers.index(s) for s in plain if s is not None] == [
        alone.servers.index(s) for s in interleaved if s is not None
    ]
    full, _ = make_pool(server(1, max_connections=1), balance=balance)
    [only] = full.servers
    full.acquire(only)
    assert full.pick() is None


def test_pool_least_conn_counts_acquired_connections() -> None:
    pool, _ = make_pool(server(1), server(2), balance="least_conn")
    a, b = pool.servers
    pool.acquire(a)
    assert picks(pool, 10) == {b}
    pool.acquire(b)
    pool.acquire(b)
    assert picks(pool, 10) == {a}
    pool.release(b)
    pool.release(b)
    assert picks(pool, 10) == {b}


def test_pool_hash_sends_a_client_to_the_same_server_until_it_is_unavailable() -> None:
    pool, _ = make_pool(*(server(n) for n in range(1, 6)), balance="hash")
    clients = [bytes([198, 51, 100, n]) for n in range(200)]
    before = {key: pool.pick(affinity=keyed(key)) for key in clients}
    assert before == {key: pool.pick(affinity=keyed(key)) for key in clients}
    gone = pool.servers[1]
    pool.set_health(gone, False, "connection refused")
    after = {key: pool.pick(affinity=keyed(key)) for key in clients}
    assert {k for k in clients if after[k] is not before[k]} == {
        k for k in clients if before[k] is gone
    }
    pool.set_health(gone, True, "2/2 succeeded")
    assert before == {key: pool.pick(affinity=keyed(key)) for key in clients}


def test_pool_hash_a_server_removed_from_the_config_moves_about_one_nth_of_clients() -> None:
    configs = tuple(server(n) for n in range(1, 6))
    old, _ = make_pool(*configs, balance="hash")
    new, _ = make_pool(*(c for c in configs if c is not configs[0]), balance="hash")
    rng = random.Random(9)
    clients = [rng.randbytes(4) for _ in range(10_000)]

    def name(pool: Pool, key: bytes) -> str | None:
        picked = pool.pick(affinity=keyed(key))
        return picked.name if picked is not None else None

    moved = [key for key in clients if name(old, key) != name(new, key)]
    assert all(old.pick(affinity=keyed(key)) is old.servers[0] for key in moved)
    assert len(moved) / len(clients) <= 1 / 5 + 0.03


def test_pool_first_fills_servers_in_config_order() -> None:
    pool, _ = make_pool(server(1, max_connections=2), server(2), balance="first")
    a, b = pool.servers
    order = []
    for _ in range(3):
        picked = pool.pick()
        assert picked is not None
        pool.acquire(picked)
        order.append(picked)
    assert order == [a, a, b]


# who may be picked


@pytest.mark.parametrize("balance", ALGORITHMS)
def test_administratively_down_server_is_never_picked(balance: str) -> None:
    pool, _ = make_pool(server(1, down=True), server(2), server(3, down=True), balance=balance)
    assert picks(pool, 50, affinity=keyed(b"\x01")) == {pool.servers[1]}


def test_administratively_down_servers_leave_nothing_to_pick_even_as_backups() -> None:
    pool, _ = make_pool(server(1, down=True), server(2, backup=True, down=True))
    assert pool.pick() is None
    assert not pool.any_up()


def test_unhealthy_server_is_not_picked_until_checks_bring_it_back() -> None:
    pool, _ = make_pool(server(1), server(2))
    a, b = pool.servers
    pool.set_health(a, False, "connection refused")
    assert picks(pool, 10) == {b}
    pool.set_health(a, True, "2/2 succeeded")
    assert picks(pool, 10) == {a, b}


def test_backup_server_serves_only_when_all_primaries_are_down() -> None:
    pool, _ = make_pool(server(1), server(2), server(3, backup=True))
    a, b, backup = pool.servers
    assert backup not in picks(pool, 20)
    pool.set_health(a, False, "down")
    assert picks(pool, 20) == {b}
    pool.set_health(b, False, "down")
    assert picks(pool, 20) == {backup}


def test_backups_stop_serving_when_a_primary_comes_back() -> None:
    pool, _ = make_pool(server(1), server(2, backup=True), server(3, backup=True))
    primary, *backups = pool.servers
    pool.set_health(primary, False, "down")
    assert picks(pool, 20) == set(backups)
    pool.set_health(primary, True, "up")
    assert picks(pool, 20) == {primary}


def test_backups_are_balanced_among_themselves_by_weight() -> None:
    pool, _ = make_pool(
        server(1, down=True), server(2, backup=True, weight=3), server(3, backup=True)
    )
    _, big, small = pool.servers
    counts = Counter(pool.pick() for _ in range(400))
    assert counts == {big: 300, small: 100}


def test_max_connections_is_respected() -> None:
    pool, _ = make_pool(server(1, max_connections=2), server(2))
    limited, other = pool.servers
    pool.acquire(limited)
    assert limited in picks(pool, 10)
    pool.acquire(limited)
    assert picks(pool, 10) == {other}
    pool.release(limited)
    assert limited in picks(pool, 10)


def test_pick_returns_none_when_every_candidate_is_at_max_connections() -> None:
    pool, _ = make_pool(server(1, max_connections=1), server(2, max_connections=1))
    for s in pool.servers:
        pool.acquire(s)
    assert pool.pick() is None
    assert pool.any_up()  # busy, not down


def test_full_primaries_spill_over_to_backups_and_take_back_what_they_can() -> None:
    pool, _ = make_pool(
        server(1, max_connections=1), server(2, max_connections=1), server(3, backup=True)
    )
    a, b, backup = pool.servers
    pool.acquire(a)
    assert pool.pick() is b  # a primary with room first
    pool.acquire(b)
    assert pool.pick() is backup
    pool.release(a)
    assert pool.pick() is a


def test_full_backups_too_leave_nothing_to_pick() -> None:
    pool, _ = make_pool(server(1, max_connections=1), server(2, backup=True, max_connections=1))
    primary, backup = pool.servers
    pool.acquire(primary)
    pool.acquire(backup)
    assert pool.pick() is None


def test_exclude_skips_the_servers_already_tried() -> None:
    pool, _ = make_pool(server(1), server(2), server(3))
    a, b, c = pool.servers
    assert picks(pool, 10, exclude=[a]) == {b, c}
    assert picks(pool, 10, exclude=(a, c)) == {b}


def test_excluding_every_available_primary_falls_through_to_backups() -> None:
    pool, _ = make_pool(server(1), server(2), server(3, backup=True))
    a, b, backup = pool.servers
    pool.set_health(b, False, "down")
    assert picks(pool, 10, exclude=[a]) == {backup}
    assert pool.pick(exclude=[a, backup]) is None


# passive health: ejection


def test_server_is_ejected_after_max_fails_failures_in_a_row() -> None:
    pool, _ = make_pool(server(1), server(2), max_fails=3)
    a, b = pool.servers
    fail(pool, a, 2)
    assert a in picks(pool, 10)
    fail(pool, a, 1)
    assert picks(pool, 10) == {b}
    assert a.ejections == 1
    assert a.consecutive_failures == 0


def test_a_success_between_failures_starts_the_count_again() -> None:
    pool, _ = make_pool(server(1), max_fails=3)
    (a,) = pool.servers
    fail(pool, a, 2)
    pool.report_success(a)
    fail(pool, a, 2)
    assert pool.pick() is a
    fail(pool, a, 1)
    assert pool.pick() is None


def test_max_fails_zero_never_ejects() -> None:
    pool, _ = make_pool(server(1), max_fails=0)
    (a,) = pool.servers
    fail(pool, a, 100)
    assert pool.pick() is a


def test_ejected_server_is_tried_again_when_its_ejection_ends() -> None:
    pool, clock = make_pool(server(1), server(2), max_fails=1, eject_time=10.0)
    a, b = pool.servers
    fail(pool, a, 1)
    clock.advance(9.9)
    assert picks(pool, 10) == {b}
    clock.advance(0.1)
    assert a in picks(pool, 10)


def test_ejections_in_a_row_double_in_length_up_to_the_cap() -> None:
    pool, clock = make_pool(server(1), max_fails=2, eject_time=10.0, eject_time_max=100.0)
    (a,) = pool.servers
    lengths = []
    for _ in range(6):
        fail(pool, a, 2)
        started = clock.seconds()
        while pool.pick() is None:
            clock.advance(1.0)
        lengths.append(clock.seconds() - started)
    assert lengths == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0]


def test_a_success_resets_the_ejection_backoff() -> None:
    pool, clock = make_pool(server(1), max_fails=1, eject_time=10.0)
    (a,) = pool.servers
    fail(pool, a, 1)
    clock.advance(10.0)
    fail(pool, a, 1)
    assert a.ejected_until == 30.0  # the second in a row: 20s
    clock.advance(20.0)
    pool.report_success(a)
    fail(pool, a, 1)
    assert a.ejected_until == 40.0  # back to 10s


def test_failures_reported_during_an_ejection_neither_extend_nor_repeat_it() -> None:
    # Connects begun before the ejection that fail after it.
    pool, _ = make_pool(server(1), max_fails=2, eject_time=10.0)
    (a,) = pool.servers
    events = record(pool)
    fail(pool, a, 2)
    fail(pool, a, 5)
    assert a.ejected_until == 10.0
    assert (a.ejections, a.consecutive_failures) == (1, 0)
    assert [e.state for e in events] == ["EJECTED"]


def test_ejection_publishes_an_event_and_its_end_is_published_when_it_ends() -> None:
    pool, clock = make_pool(server(1), server(2), max_fails=2, eject_time=10.0)
    a, _ = pool.servers
    events = record(pool)
    fail(pool, a, 2, "connection refused")
    assert events == [
        ServerEvent(
            "web",
            "192.0.2.1:80",
            "EJECTED",
            "2 connect failures in a row (connection refused); ejected for 10s",
        )
    ]
    clock.advance(9.9)
    assert len(events) == 1
    clock.advance(0.1)  # no call into the pool: its own timer publishes the end
    assert events[1:] == [ServerEvent("web", "192.0.2.1:80", "UP", "ejection ended")]
    assert pool.any_up()
    pool.pick()
    assert len(events) == 2
    assert clock.getDelayedCalls() == []


def test_stop_cancels_the_ejection_timers() -> None:
    pool, clock = make_pool(server(1), max_fails=1, eject_time=10.0)
    fail(pool, pool.servers[0], 1)
    assert len(clock.getDelayedCalls()) == 1
    pool.stop()
    assert clock.getDelayedCalls() == []


def test_end_of_ejection_is_noticed_by_pick() -> None:
    pool, clock = make_pool(server(1), max_fails=1, eject_time=10.0)
    (a,) = pool.servers
    events = record(pool)
    fail(pool, a, 1)
    clock.advance(10.0)
    assert pool.pick() is a
    assert [e.state for e in events] == ["EJECTED", "UP"]


def test_end_of_ejection_of_a_server_down_by_checks_publishes_nothing() -> None:
    pool, clock = make_pool(server(1), max_fails=1, eject_time=10.0)
    (a,) = pool.servers
    events = record(pool)
    fail(pool, a, 1)
    pool.set_health(a, False, "connection refused")
    clock.advance(10.0)
    assert pool.pick() is None
    pool.set_health(a, True, "2/2 succeeded")
    assert [(e.state, e.reason) for e in events] == [
        ("EJECTED", events[0].reason),
        ("DOWN", "connection refused"),
        ("UP", "2/2 succeeded"),
    ]
    assert pool.pick() is a


def test_ejection_is_logged() -> None:
    pool, _ = make_pool(server(1), max_fails=1)
    with capturedLogs() as logs:
        fail(pool, pool.servers[0], 1)
    assert [(e["log_level"], e["server"], e["pool"]) for e in logs] == [
        (LogLevel.warn, "192.0.2.1:80", "web")
    ]


# active health and events


def test_set_health_publishes_only_changes() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    events = record(pool)
    pool.set_health(a, True, "1/1 succeeded")
    pool.set_health(a, False, "connection refused")
    pool.set_health(a, False, "timeout")
    pool.set_health(a, True, "2/2 succeeded")
    assert events == [
        ServerEvent("web", "192.0.2.1:80", "DOWN", "connection refused"),
        ServerEvent("web", "192.0.2.1:80", "UP", "2/2 succeeded"),
    ]
    assert (a.healthy, a.health_reason) == (True, "2/2 succeeded")


def test_unsubscribe_stops_the_events_and_may_be_called_twice() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    kept: list[ServerEvent] = []
    dropped: list[ServerEvent] = []
    pool.subscribe(kept.append)
    unsubscribe = pool.subscribe(dropped.append)
    pool.set_health(a, False, "down")
    unsubscribe()
    unsubscribe()
    pool.set_health(a, True, "up")
    assert [e.state for e in kept] == ["DOWN", "UP"]
    assert [e.state for e in dropped] == ["DOWN"]


def test_an_observer_may_unsubscribe_while_an_event_is_published() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    seen: list[str] = []

    def once(event: ServerEvent) -> None:
        seen.append("once")
        unsubscribe()

    unsubscribe = pool.subscribe(once)
    pool.subscribe(lambda event: seen.append("always"))
    pool.set_health(a, False, "down")
    pool.set_health(a, True, "up")
    assert seen == ["once", "always", "always"]


def test_a_failing_observer_is_logged_and_the_others_still_hear() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers

    def broken(event: ServerEvent) -> None:
        raise RuntimeError("bug in observer")

    pool.subscribe(broken)
    events = record(pool)
    with capturedLogs() as logs:
        pool.set_health(a, False, "down")
    assert [e.state for e in events] == ["DOWN"]
    assert not a.healthy
    assert [e["log_level"] for e in logs] == [LogLevel.critical]
    assert "bug in observer" in str(logs[0]["log_failure"].value)


# counting connections


def test_acquire_and_release_count_active_connections() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    pool.acquire(a)
    pool.acquire(a)
    pool.release(a)
    assert a.active == 1


def test_release_never_takes_active_below_zero() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    pool.acquire(a)
    pool.release(a)
    pool.release(a)
    assert a.active == 0
    pool.acquire(a)
    assert a.active == 1


# any_up


def test_any_up_counts_backups_and_ignores_max_connections() -> None:
    pool, _ = make_pool(server(1, max_connections=1), server(2, backup=True))
    primary, backup = pool.servers
    pool.acquire(primary)
    assert pool.any_up()
    pool.set_health(primary, False, "down")
    assert pool.any_up()
    pool.set_health(backup, False, "down")
    assert not pool.any_up()


def test_any_up_is_false_while_every_server_is_ejected() -> None:
    pool, clock = make_pool(server(1), max_fails=1, eject_time=5.0)
    fail(pool, pool.servers[0], 1)
    assert not pool.any_up()
    clock.advance(5.0)
    assert pool.any_up()


# the rules as a property


@attrs.frozen
class _State:
    backup: bool
    down: bool
    healthy: bool
    ejected: bool
    max_connections: int
    active: int
    excluded: bool
    admin: str


_states = st.builds(
    _State,
    backup=st.booleans(),
    down=st.booleans(),
    healthy=st.booleans(),
    ejected=st.booleans(),
    max_connections=st.integers(min_value=0, max_value=3),
    active=st.integers(min_value=0, max_value=4),
    excluded=st.booleans(),
    admin=st.sampled_from(ADMIN_STATES),
)


def _expected_candidates(pool: Pool, states: Sequence[_State]) -> set[Server]:
    def usable(state: _State) -> bool:
        return state.admin == "ready" and not (
            state.down or not state.healthy or state.ejected or state.excluded
        )

    primaries = {
        s for s, st_ in zip(pool.servers, states, strict=True) if usable(st_) and not st_.backup
    }
    backups = {s for s, st_ in zip(pool.servers, states, strict=True) if usable(st_) and st_.backup}
    return {s for s in (primaries or backups) if s.has_capacity()}


@given(
    algorithm=st.sampled_from(ALGORITHMS),
    states=st.lists(_states, min_size=1, max_size=6),
    key=st.none() | st.binary(max_size=8),
)
def test_pick_follows_the_candidate_rules_for_every_algorithm(
    algorithm: str, states: list[_State], key: bytes | None
) -> None:
    clock = MemoryReactorClock()
    clock.advance(100.0)
    configs = tuple(
        server(n, backup=s.backup, down=s.down, max_connections=s.max_connections)
        for n, s in enumerate(states, 1)
    )
    pool, _ = make_pool(*configs, clock=clock, balance=algorithm)
    for target, state in zip(pool.servers, states, strict=True):
        target.healthy = state.healthy
        target.active = state.active
        target.ejected_until = 150.0 if state.ejected else 50.0
        target.admin = state.admin
    exclude = [s for s, state in zip(pool.servers, states, strict=True) if state.excluded]
    expected = _expected_candidates(pool, states)
    for _ in range(3):
        picked = pool.pick(exclude=exclude, affinity=keyed(key))
        if expected:
            assert picked in expected
        else:
            assert picked is None


# admin state: drain and maint


@pytest.mark.parametrize("admin", ["drain", "maint"])
@pytest.mark.parametrize("balance", ALGORITHMS)
def test_a_drained_or_maint_server_is_never_picked_while_the_other_is(
    balance: str, admin: str
) -> None:
    pool, _ = make_pool(server(1, weight=5), server(2), balance=balance)
    a, b = pool.servers
    pool.set_admin(a, admin, "test")
    assert picks(pool, 50) == {b}
    assert {pool.pick(affinity=keyed(bytes([n]))) for n in range(50)} == {b}
    pool.set_admin(a, "ready", "test")
    assert a in picks(pool, 50) | {pool.pick(affinity=keyed(bytes([n]))) for n in range(50)}


def test_a_drained_server_keeps_its_open_connections_until_they_end() -> None:
    pool, _ = make_pool(server(1), server(2))
    a, b = pool.servers
    pool.acquire(a)
    pool.acquire(a)
    pool.set_admin(a, "drain", "test")
    assert a.active == 2
    assert picks(pool, 10) == {b}
    pool.report_success(a)
    pool.release(a)
    pool.release(a)
    assert a.active == 0


def test_backups_serve_when_every_primary_is_drained_and_never_while_drained_themselves() -> None:
    pool, _ = make_pool(server(1), server(2, backup=True), server(3, backup=True))
    a, b, c = pool.servers
    pool.set_admin(a, "drain", "test")
    assert picks(pool, 10) == {b, c}
    pool.set_admin(b, "maint", "test")
    assert picks(pool, 10) == {c}
    pool.set_admin(c, "drain", "test")
    assert pool.pick() is None
    assert not pool.any_up()
    pool.set_admin(b, "ready", "test")
    assert pool.any_up()
    assert picks(pool, 10) == {b}


def test_set_admin_logs_who_asked_and_publishes_changes_only() -> None:
    pool, _ = make_pool(server(1))
    (a,) = pool.servers
    events = record(pool)
    who = "admin API 127.0.0.1 (token)"
    with capturedLogs() as logs:
        pool.set_admin(a, "drain", who)
        pool.set_admin(a, "drain", who)
        pool.set_admin(a, "maint", "SIGHUP")
        pool.set_admin(a, "ready", who)
    assert [e.state for e in events] == ["DRAIN", "MAINT", "READY"]
    assert events[0] == ServerEvent("web", "192.0.2.1:80", "DRAIN", f"set by {who}")
    assert [e["log_level"] for e in logs] == [LogLevel.info] * 4
    assert [formatEvent(e) for e in logs] == [
        f"server 192.0.2.1:80 in pool web set to DRAIN by {who}",
        f"server 192.0.2.1:80 in pool web set to DRAIN by {who}",
        "server 192.0.2.1:80 in pool web set to MAINT by SIGHUP",
        f"server 192.0.2.1:80 in pool web set to READY by {who}",
    ]


def test_set_admin_rejects_an_unknown_state_and_a_server_of_another_pool() -> None:
    pool, _ = make_pool(server(1))
    other, _ = make_pool(server(1))
    events = record(pool)
    with pytest.raises(ValueError, match="'ready', 'drain', 'maint'; found 'disabled'"):
        pool.set_admin(pool.servers[0], "disabled", "test")
    with pytest.raises(ValueError, match="not in pool web"):
        pool.set_admin(other.servers[0], "drain", "test")
    assert pool.servers[0].admin == other.servers[0].admin == "ready"
    assert events == []


def test_state_is_the_admin_state_when_set_else_the_health() -> None:
    pool, clock = make_pool(server(1), server(2, down=True), max_fails=1, eject_time=10.0)
    a, off = pool.servers
    assert (a.state, a.health, a.reason) == ("up", "up", "")
    assert (off.state, off.reason) == ("down", "down in the configuration")
    pool.set_health(a, False, "connection refused")
    assert (a.state, a.health, a.reason) == ("down", "down", "connection refused")
    pool.set_admin(a, "drain", "test")
    assert (a.state, a.health) == ("drain", "down")
    pool.set_admin(a, "maint", "test")
    assert a.state == "maint"
    pool.set_admin(a, "ready", "test")
    pool.set_health(a, True, "2/2 succeeded")
    assert a.state == "up"
    fail(pool, a, 1, "connection refused")
    assert (a.state, a.reason) == (
        "down",
        "1 connect failures in a row (connection refused); ejected for 10s",
    )
    clock.advance(10.0)
    assert (a.state, a.reason) == ("up", "")


def test_find_gives_a_server_by_its_name() -> None:
    pool, _ = make_pool(server(1), ServerConfig(Address("::1", 9001)))
    assert pool.find("192.0.2.1:80") is pool.servers[0]
    assert pool.find("[::1]:9001") is pool.servers[1]
    assert pool.find("192.0.2.9:80") is None


# runtime weight


def test_weight_starts_as_configured() -> None:
    pool, _ = make_pool(server(1, weight=7), server(2))
    assert [s.weight for s in pool.servers] == [7, 1]


def test_the_runtime_weight_bounds_are_the_configs() -> None:
    parse = values.servers
    assert parse(f"192.0.2.1:80 weight={MIN_WEIGHT}")[0].weight == MIN_WEIGHT
    assert parse(f"192.0.2.1:80 weight={MAX_WEIGHT}")[0].weight == MAX_WEIGHT
    for outside in (MIN_WEIGHT - 1, MAX_WEIGHT + 1):
        with pytest.raises(values.Invalid):
            parse(f"192.0.2.1:80 weight={outside}")


@pytest.mark.parametrize("weight", [0, -1, 257, 2.0, True, "3"])
def test_set_weight_rejects_what_the_config_would(weight: Any) -> None:
    pool, _ = make_pool(server(1, weight=2))
    with pytest.raises(ValueError, match="weight must be"):
        pool.set_weight(pool.servers[0], weight, "test")
    assert pool.servers[0].weight == 2


def test_set_weight_is_logged_with_who_asked() -> None:
    pool, _ = make_pool(server(1))
    with capturedLogs() as logs:
        pool.set_weight(pool.servers[0], 256, "admin API 127.0.0.1 (read-write token)")
    assert [formatEvent(e) for e in logs] == [
        "server 192.0.2.1:80 in pool web weight set to 256 by admin API 127.0.0.1 "
        "(read-write token)"
    ]
    assert logs[0]["log_level"] == LogLevel.info
    assert pool.servers[0].weight == 256


def test_round_robin_takes_a_new_weight_on_the_next_pick() -> None:
    pool, _ = make_pool(server(1), server(2), server(3))
    a, b, c = pool.servers
    assert [pool.pick() for _ in range(3)] == [a, b, c]
    pool.set_weight(a, 5, "test")
    assert [pool.pick() for _ in range(7)] == [a, a, b, a, c, a, a]


@pytest.mark.parametrize("balance", ["least_conn", "random_two"])
def test_least_conn_and_random_two_balance_by_the_new_weight(balance: str) -> None:
    pool, _ = make_pool(server(1), server(2), balance=balance)
    a = pool.servers[0]
    pool.set_weight(a, 3, "test")
    held: deque[Server] = deque()
    counts: Counter[Server] = Counter()
    for _ in range(10_000):
        picked = pool.pick()
        assert picked is not None
        pool.acquire(picked)
        counts[picked] += 1
        held.append(picked)
        if len(held) > 20:
            pool.release(held.popleft())
    assert counts[a] / 10_000 == pytest.approx(0.75, abs=0.02)


def test_hash_ring_is_rebuilt_when_a_weight_changes_moving_keys_only_to_or_from_it() -> None:
    pool, _ = make_pool(*(server(n) for n in range(1, 5)), balance="hash")
    a = pool.servers[0]
    rng = random.Random(3)
    clients = [rng.randbytes(4) for _ in range(10_000)]
    before = {key: pool.pick(affinity=keyed(key)) for key in clients}
    pool.set_weight(a, 4, "test")
    heavier = {key: pool.pick(affinity=keyed(key)) for key in clients}
    gained = [key for key in clients if heavier[key] is not before[key]]
    assert all(heavier[key] is a for key in gained)
    # a holds 4 of 7 shares now, instead of 1 of 4.
    share = sum(1 for key in clients if heavier[key] is a) / len(clients)
    assert share == pytest.approx(4 / 7, abs=0.04)
    pool.set_weight(a, 1, "test")
    assert {key: pool.pick(affinity=keyed(key)) for key in clients} == before


def test_a_weight_set_to_the_same_value_leaves_the_ring_alone() -> None:
    pool, _ = make_pool(server(1), server(2), balance="hash")
    ring = pool._balancer._points  # type: ignore[attr-defined]
    pool.set_weight(pool.servers[0], 1, "test")
    assert pool._balancer._points is ring  # type: ignore[attr-defined]


# reload: Pool(previous=...)


def reloaded(old: Pool, clock: MemoryReactorClock, *servers: ServerConfig, **options: Any) -> Pool:
    config = PoolConfig(name="web", servers=servers, **options)
    return Pool(config, clock, random.Random(1), previous=old)


def test_a_reload_carries_a_server_over_as_the_same_object_with_its_state() -> None:
    old, clock = make_pool(server(1), server(2), server(3))
    a, b, gone = old.servers
    old.acquire(a)
    old.acquire(gone)
    old.set_health(b, False, "connection refused")
    old.set_admin(a, "drain", "test")
    new = reloaded(old, clock, server(2), server(1, max_connections=9), server(4))
    assert new.servers[0] is b and new.servers[1] is a
    assert a.active == 1 and a.admin == "drain"
    assert not b.healthy and b.health_reason == "connection refused"
    assert a.config == server(1, max_connections=9)
    fresh = new.servers[2]
    assert fresh.name == "192.0.2.4:80" and fresh.active == 0 and fresh.healthy
    assert gone not in new.servers
    # Connections opened before the reload end on the old pool, counted on the same objects.
    old.release(a)
    old.release(gone)
    assert a.active == gone.active == 0
    assert new.pick() is fresh


def test_a_reload_takes_a_changed_configured_weight_and_keeps_a_runtime_one_otherwise() -> None:
    old, clock = make_pool(server(1, weight=2), server(2, weight=2), server(3))
    a, b, c = old.servers
    old.set_weight(a, 10, "test")
    old.set_weight(b, 10, "test")
    new = reloaded(old, clock, server(1, weight=2), server(2, weight=3), server(3, weight=4))
    assert new.servers == (a, b, c)
    assert (a.weight, b.weight, c.weight) == (10, 3, 4)


def test_a_reloaded_hash_pool_builds_its_ring_with_the_runtime_weights() -> None:
    configs = (server(1), server(2), server(3))
    old, clock = make_pool(*configs, balance="hash")
    old.set_weight(old.servers[0], 5, "test")
    new = reloaded(old, clock, *configs, balance="hash")
    keys = [bytes([n, 7]) for n in range(200)]
    assert [new.pick(affinity=keyed(k)) for k in keys] == [
        old.pick(affinity=keyed(k)) for k in keys
    ]


def test_an_ejection_carried_over_ends_on_time_in_the_new_pool_whatever_the_old_does() -> None:
    old, clock = make_pool(server(1), server(2), max_fails=1, eject_time=10.0)
    a, b = old.servers
    fail(old, a, 1)
    fail(old, b, 1)
    clock.advance(4.0)
    new = reloaded(old, clock, server(1), max_fails=1, eject_time=10.0)
    events = record(new)
    old_events = record(old)
    old.stop()
    assert new.pick() is None
    assert a.state == "down"
    clock.advance(6.0)
    assert events == [ServerEvent("web", a.name, "UP", "ejection ended")]
    assert old_events == []
    assert a.state == "up" and new.pick() is a
    new.stop()
    assert clock.getDelayedCalls() == []


def test_failures_reported_to_the_old_pool_on_a_carried_server_count_in_the_new_one() -> None:
    old, clock = make_pool(server(1), server(2), max_fails=3, eject_time=10.0)
    a, gone = old.servers
    fail(old, a, 1)
    new = reloaded(old, clock, server(1), max_fails=2, eject_time=5.0)
    events = record(new)
    fail(old, a, 1)  # a connection opened before the reload
    assert [(e.pool, e.state) for e in events] == [("web", "EJECTED")]
    assert "ejected for 5s" in events[0].reason
    old.stop()
    clock.advance(5.0)
    assert [e.state for e in events] == ["EJECTED", "UP"]
    old.report_success(a)
    assert a.ejections == 0
    # A server the reload removed stays the old pool's business.
    fail(old, gone, 3)
    assert gone.ejected and len(events) == 2
    assert clock.getDelayedCalls() == []


def test_two_reloads_in_a_row_pass_reports_to_the_newest_pool() -> None:
    first, clock = make_pool(server(1), max_fails=1)
    (a,) = first.servers
    second = reloaded(first, clock, server(1), max_fails=1)
    third = reloaded(second, clock, server(1), max_fails=1)
    events = record(third)
    fail(first, a, 1)
    assert [e.state for e in events] == ["EJECTED"]
    third.stop()
    assert clock.getDelayedCalls() == []
