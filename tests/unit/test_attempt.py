"""proxyd.relay.attempt: the upstream-attempt driver every relay reaches its servers through,
over a real Pool, Deferreds for connects and a MemoryReactorClock."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from proxyd.config.model import Address, PoolConfig, ServerConfig
from proxyd.metrics import Cell, RelayStats
from proxyd.pool import Affinity, Pool, Server
from proxyd.relay.attempt import (
    AttemptDriver,
    AttemptError,
    AttemptPolicy,
    Failed,
    GiveUp,
    GiveUpReason,
    classify,
)

EMFILE = error.ConnectBindError(errno.EMFILE, "Too many open files")


class Owner:
    """Records what it is told; connects and counts through its harness."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.harness: Harness | None = None
        self.checkout: Callable[[Server], str | None] = lambda server: None

    def attempt_connect(self, server: Server) -> Deferred[str]:
        assert self.harness is not None
        return self.harness.connect(server)

    def attempt_checkout(self, server: Server) -> str | None:
        return self.checkout(server)

    def attempt_cell(self, server: Server) -> Cell:
        assert self.harness is not None
        return self.harness.stats.cell("", "web", server.name)

    def attempt_started(self, server: Server) -> None:
        self.events.append(("started", server.name))

    def attempt_connected(self, connection: str, server: Server, reused: bool) -> None:
        self.events.append(("connected", connection, server.name, reused))

    def attempt_failed(self, server: Server, failed: Failed) -> None:
        self.events.append(("failed", server.name, failed.kind))

    def attempt_gave_up(self, give_up: GiveUp) -> None:
        self.events.append(("gave up", give_up.reason, give_up.why, give_up.status))


class Harness:
    def __init__(self, servers: int = 3, balance: str = "round_robin", **options: Any) -> None:
        self.clock = MemoryReactorClock()
        config = PoolConfig(
            name="web",
            servers=tuple(ServerConfig(Address(f"10.0.0.{i}", 80)) for i in range(servers)),
            balance=balance,
        )
        self.pool = Pool(config, self.clock)
        self.stats = RelayStats("tcp", "t")
        self.owner = Owner()
        self.owner.harness = self
        self.connects: list[tuple[Server, Deferred[str]]] = []
        checkout = options.pop("checkout", None)
        if checkout is not None:
            self.owner.checkout = checkout
        policy = AttemptPolicy(
            options.pop("retries", 2),
            checkout=checkout is not None,
            **{
                k: options.pop(k)
                for k in ("count_retries", "local_gives_up", "classify")
                if k in options
            },
        )
        self.driver: AttemptDriver[str] = AttemptDriver(
            self.clock, self.pool, self.owner, policy, **options
        )

    def connect(self, server: Server) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.connects.append((server, d))
        return d

    def cell(self, server: Server) -> dict[str, Any]:
        found: dict[str, Any] = self.stats.snapshot()["tcp"]["t"][""]["web"][server.name]
        return found

    @property
    def active(self) -> list[int]:
        return [server.active for server in self.pool.servers]


def test_the_first_server_that_connects_is_handed_over_and_stays_acquired() -> None:
    h = Harness()
    h.driver.start()
    [(server, d)] = h.connects
    assert h.active == [1, 0, 0]
    h.clock.advance(0.25)
    d.callback("conn")
    assert h.owner.events == [("started", server.name), ("connected", "conn", server.name, False)]
    assert h.driver.connect_time == 0.25 and h.cell(server)["connect_duration"]["count"] == 1
    h.driver.release()
    h.driver.release()
    assert h.active == [0, 0, 0]


@pytest.mark.parametrize(
    ("exc", "kind", "blamed", "status"),
    [
        (error.ConnectionRefusedError(), "connect_failed", True, 502),
        (error.TimeoutError(), "connect_timeout", True, 504),
        (EMFILE, "local_resource", False, 503),
        (AttemptError(Failed("answered 403", "upstream_handshake_failed")), None, True, 502),
    ],
)
def test_a_failed_connect_is_counted_reported_released_and_the_next_server_tried(
    exc: Exception, kind: str | None, blamed: bool, status: int
) -> None:
    h = Harness()
    h.driver.start()
    first, d = h.connects[0]
    d.errback(Failure(exc))
    failed = classify(Failure(exc))
    assert failed is not None and failed.status == status
    assert h.cell(first)["errors"] == {kind or failed.kind: 1}
    assert (first.consecutive_failures == 1) is blamed
    assert len(h.connects) == 2 and h.connects[1][0] is not first
    assert h.active.count(1) == 1 and first.active == 0


def test_a_cancelled_connect_is_nothing_to_count() -> None:
    assert classify(Failure(error.UserError())) is None
    h = Harness()
    h.driver.start()
    h.connects[0][1].errback(Failure(error.UserError()))  # stopped by someone else
    assert len(h.connects) == 1 and h.owner.events == [("started", "10.0.0.0:80")]


@pytest.mark.parametrize(
    ("down", "full", "reason", "status"),
    [
        (3, 0, GiveUpReason.NO_SERVER_UP, 503),
        (0, 3, GiveUpReason.ALL_SERVERS_BUSY, 503),
    ],
)
def test_no_server_to_try_gives_up_in_the_pool_s_words(
    down: int, full: int, reason: GiveUpReason, status: int
) -> None:
    h = Harness()
    for server in h.pool.servers[:down]:
        h.pool.set_health(server, False, "check failed")
    for server in h.pool.servers[:full]:
        server.config = ServerConfig(server.address, max_connections=1)
        server.active = 1
    h.driver.start()
    assert h.owner.events == [("gave up", reason, str(reason), status)]
    assert h.connects == []


def test_retries_run_out_with_the_last_failure_s_status() -> None:
    h = Harness(retries=1)
    h.driver.start()
    h.connects[0][1].errback(Failure(error.ConnectionRefusedError()))
    h.connects[1][1].errback(Failure(error.TimeoutError()))
    assert h.owner.events[-1] == (
        "gave up",
        GiveUpReason.ATTEMPTS_FAILED,
        "connect failed after 2 attempt(s)",
        504,
    )
    assert h.active == [0, 0, 0]


def test_local_gives_up_ends_at_proxyd_s_own_shortage() -> None:
    h = Harness(local_gives_up=True)
    h.driver.start()
    h.connects[0][1].errback(Failure(EMFILE))
    assert h.owner.events[-1][:2] == ("gave up", GiveUpReason.LOCAL_RESOURCE)
    assert h.owner.events[-1][3] == 503 and len(h.connects) == 1


def test_prefer_is_tried_first_when_available_with_capacity_else_the_pool_picks() -> None:
    h = Harness()
    preferred = h.pool.servers[2]
    h.driver.prefer = preferred
    h.driver.start()
    assert h.connects[0][0] is preferred
    h.driver.failed(Failed("reset", "upstream_reset"))
    assert h.connects[1][0] is not preferred  # only the first attempt
    busy = Harness()
    target = busy.pool.servers[2]
    target.config = ServerConfig(target.address, max_connections=1)
    target.active = 1
    busy.driver.prefer = target
    busy.driver.start()
    assert busy.connects[0][0] is not target


def test_checkout_hands_over_an_idle_connection_without_connecting() -> None:
    h = Harness(checkout=lambda server: "idle")
    h.driver.start()
    assert h.connects == []
    assert h.owner.events[-1] == ("connected", "idle", "10.0.0.0:80", True)
    assert h.driver.connect_time == 0.0


def test_caller_found_failure_retries_elsewhere_counting_a_retry() -> None:
    h = Harness(count_retries=True, checkout=lambda server: "idle")
    h.driver.start()
    first = h.driver.server
    assert first is not None
    h.driver.failed(Failed("upstream answered 503", "bad_response", 503), report=False)
    assert first.consecutive_failures == 0  # not reported
    assert h.cell(first) == {"errors": {"bad_response": 1}, "retries": 1}
    assert h.driver.server is not first and h.driver.count == 2


def test_caller_found_failure_without_retry_only_counts_and_releases() -> None:
    h = Harness()
    h.driver.start()
    h.connects[0][1].callback("conn")
    h.driver.failed(Failed("reset", "upstream_reset"), retry=False)
    assert h.active == [0, 0, 0] and h.pool.servers[0].consecutive_failures == 1
    assert len(h.connects) == 1 and h.owner.events[-1][0] == "connected"


def test_reconnect_tries_the_same_server_afresh_not_counted() -> None:
    h = Harness()
    h.driver.start()
    h.connects[0][1].callback("reused")
    h.driver.reconnect()
    assert [server for server, _ in h.connects] == [h.pool.servers[0]] * 2
    assert h.driver.count == 1 and h.active == [1, 0, 0]


def test_cancel_stops_the_connect_and_releases() -> None:
    h = Harness()
    h.driver.start()
    d = h.connects[0][1]
    h.driver.cancel()
    assert d.called and h.active == [0, 0, 0]
    assert not h.driver.connecting and len(h.connects) == 1


def test_hash_balance_keys_on_the_affinity() -> None:
    h = Harness(balance="hash", affinity=Affinity(Address("203.0.113.7", 1)))
    h.driver.start()
    again = Harness(balance="hash", affinity=Affinity(Address("::ffff:203.0.113.7", 9)))
    again.driver.start()
    assert h.connects[0][0].name == again.connects[0][0].name


def test_a_crash_in_the_owner_gives_up_as_internal() -> None:
    h = Harness()

    def boom(connection: str, server: Server, reused: bool) -> None:
        raise RuntimeError("bug")

    h.owner.attempt_connected = boom  # type: ignore[method-assign]
    h.driver.start()
    h.connects[0][1].callback("conn")
    assert h.owner.events[-1][1:] == (GiveUpReason.INTERNAL, "internal error", 500)
    assert h.active == [0, 0, 0]


def test_a_failure_without_a_kind_is_retried_uncounted() -> None:
    h = Harness(count_retries=True, checkout=lambda server: "idle")
    h.driver.start()
    first = h.driver.server
    assert first is not None
    h.driver.failed(Failed("upstream answered 503", None, 503), report=False)
    assert h.cell(first) == {"retries": 1}
    assert h.driver.last is not None and h.driver.last.status == 503


def test_a_relay_s_own_classify_judges_its_failed_connects() -> None:
    def worded(failure: Failure) -> Failed | None:
        failed = classify(failure)
        return failed and Failed(f"connect failed: {failed.why}", "worded", 504)

    h = Harness(retries=0, classify=worded)
    h.driver.start()
    first, d = h.connects[0]
    d.errback(Failure(error.ConnectionRefusedError()))
    assert h.cell(first)["errors"] == {"worded": 1} and first.consecutive_failures == 1
    assert h.driver.last is not None and h.driver.last.why.startswith("connect failed: ")
    assert h.owner.events[-1][1:] == (
        GiveUpReason.ATTEMPTS_FAILED,
        "connect failed after 1 attempt(s)",
        504,
    )


# The pool's queue (proxyd.pool.waiting): every server up at max_connections


def queued_pool(max_queued: int = 2, timeout: float = 5.0) -> tuple[Pool, MemoryReactorClock]:
    clock = MemoryReactorClock()
    config = PoolConfig(
        name="web",
        servers=(ServerConfig(Address("10.0.0.1", 80), max_connections=1),),
        max_queued=max_queued,
        queue_timeout=timeout,
    )
    return Pool(config, clock), clock


def driver(pool: Pool, clock: MemoryReactorClock) -> tuple[AttemptDriver[str], Owner, list]:
    owner = Owner()
    connects: list[Deferred[str]] = []

    def connect(server: Server) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        connects.append(d)
        return d

    owner.attempt_connect = connect  # type: ignore[method-assign]
    owner.attempt_cell = lambda server: RelayStats("tcp", "t").cell("", "web", server.name)  # type: ignore[method-assign]
    return AttemptDriver(clock, pool, owner, AttemptPolicy(2)), owner, connects


def test_requests_wait_in_the_pools_queue_and_take_the_room_in_turn() -> None:
    pool, clock = queued_pool()
    (server,) = pool.servers
    first, _, _connects = driver(pool, clock)
    first.start()
    second, second_owner, _second_connects = driver(pool, clock)
    third, third_owner, _third_connects = driver(pool, clock)
    second.start()
    clock.advance(1)
    third.start()
    assert second_owner.events == third_owner.events == []
    assert len(pool.waiting) == 2
    first.release()  # the connection is over: the oldest waiter takes the room
    assert second_owner.events == [("started", server.name)] and third_owner.events == []
    assert server.active == 1 and len(pool.waiting) == 1
    second.release()
    assert third_owner.events == [("started", server.name)]
    assert pool.waiting.total == 2 and pool.waiting.wait_seconds == pytest.approx(1.0)


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    pool, clock = queued_pool(max_queued=1, timeout=2.5)
    driver(pool, clock)[0].start()
    driver(pool, clock)[0].start()
    late, owner, _ = driver(pool, clock)
    late.start()
    (event,) = owner.events
    assert event[:2] == ("gave up", GiveUpReason.QUEUE_FULL) and event[3] == 503
    assert pool.waiting.refused == 1


def test_a_waiter_gives_up_after_the_queue_timeout() -> None:
    pool, clock = queued_pool(timeout=2.5)
    driver(pool, clock)[0].start()
    waiter, owner, _ = driver(pool, clock)
    gave_up: list[GiveUp] = []
    owner.attempt_gave_up = gave_up.append  # type: ignore[method-assign]
    waiter.start()
    clock.advance(2.4)
    assert gave_up == []
    clock.advance(0.1)
    assert [(g.reason, g.status, g.retry_after, g.no_server) for g in gave_up] == [
        (GiveUpReason.QUEUE_TIMEOUT, 503, 3, True)
    ]
    assert len(pool.waiting) == 0 and pool.waiting.timed_out == 1
    assert clock.getDelayedCalls() == []


def test_a_client_that_leaves_leaves_the_queue() -> None:
    pool, clock = queued_pool()
    first = driver(pool, clock)[0]
    first.start()
    waiter, owner, _ = driver(pool, clock)
    waiter.start()
    waiter.detach()
    assert len(pool.waiting) == 0 and clock.getDelayedCalls() == []
    first.release()
    assert owner.events == []


def test_a_waiter_woken_without_room_keeps_its_place_at_the_head() -> None:
    clock = MemoryReactorClock()
    config = PoolConfig(
        name="web",
        servers=(
            ServerConfig(Address("10.0.0.1", 80), max_connections=1),
            ServerConfig(Address("10.0.0.2", 80), max_connections=1),
        ),
        max_queued=5,
    )
    pool = Pool(config, clock)
    a, b = pool.servers
    holders = [driver(pool, clock)[0] for _ in range(2)]
    for holder in holders:
        holder.start()
    waiter, owner, _ = driver(pool, clock)
    waiter.start()
    later, later_owner, _ = driver(pool, clock)
    later.start()
    pool.set_admin(a, "drain", "test")
    holders[0].release()  # a lets go, but is draining: no room after all
    assert owner.events == [] and len(pool.waiting) == 2
    holders[1].release()  # b has room: the first waiter still goes first
    assert owner.events == [("started", b.name)] and later_owner.events == []


def test_without_max_queued_busy_servers_refuse_at_once_as_before() -> None:
    h = Harness(servers=1)
    h.pool.servers[0].active = 10**6
    h.pool.servers[0].config = ServerConfig(Address("10.0.0.0", 80), max_connections=1)
    h.driver.start()
    assert h.owner.events[0][:2] == ("gave up", GiveUpReason.ALL_SERVERS_BUSY)
    assert h.pool.waiting is None
