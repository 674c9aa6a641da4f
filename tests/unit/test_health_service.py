"""The health-check service on MemoryReactorClock: scheduling, transitions, logs, stop."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from proxyd.config.model import (
    Address,
    CheckConfig,
    MysqlCheck,
    PoolConfig,
    ServerConfig,
    TcpCheck,
)
from proxyd.health import checks
from proxyd.health.checks import CheckReactor
from proxyd.health.service import HISTORY, CheckResult, HealthService, ServerHealth
from proxyd.pool import Server, ServerEvent

INTERVAL = 2.0
TIMEOUT = 1.0
CONNECT_ONLY = TcpCheck()


class FakePool:
    """The part of the Pool API the service uses, recording set_health calls; set_admin
    publishes the event the real pool would."""

    def __init__(self, config: PoolConfig, previous: FakePool | None = None) -> None:
        """With `previous`, servers of the same name are carried over, as Pool does."""
        kept = {s.name: s for s in previous.servers} if previous is not None else {}
        self.name = config.name
        self.config = config
        self.servers = tuple(
            kept.get(s.name) or Server(config=s, pool=config.name) for s in config.servers
        )
        for server, server_config in zip(self.servers, config.servers, strict=True):
            server.config = server_config
        self.health: list[tuple[str, bool, str]] = []
        self.observers: list[Callable[[ServerEvent], None]] = []

    def set_health(self, server: Server, up: bool, reason: str) -> None:
        self.health.append((server.name, up, reason))
        server.healthy = up
        server.health_reason = reason

    def set_admin(self, server: Server, state: str, who: str = "test") -> None:
        server.admin = state
        for observer in list(self.observers):
            observer(ServerEvent(self.name, server.name, state.upper(), f"set by {who}"))

    def subscribe(self, observer: Callable[[ServerEvent], None]) -> Callable[[], None]:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)


def pool_config(
    name: str = "mysql",
    servers: tuple[str, ...] = ("192.0.2.1:3306",),
    check: CheckConfig | None = CONNECT_ONLY,
    rise: int = 2,
    fall: int = 3,
    down: tuple[str, ...] = (),
    timeout: float = TIMEOUT,
) -> PoolConfig:
    def server(text: str) -> ServerConfig:
        host, _, port = text.rpartition(":")
        address = Address(host.strip("[]"), int(port))
        return ServerConfig(address=address, down=text in down)

    return PoolConfig(
        name=name,
        servers=tuple(server(s) for s in servers),
        check=check,
        check_interval=INTERVAL,
        check_timeout=timeout,
        rise=rise,
        fall=fall,
    )


class Harness:
    """A started HealthService over fake pools, the test playing every server."""

    def __init__(
        self,
        *configs: PoolConfig,
        seed: int = 1,
        make_pool: Callable[[PoolConfig, MemoryReactorClock], Any] = lambda c, _: FakePool(c),
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.pools = {c.name: make_pool(c, self.reactor) for c in configs}
        self.service = HealthService(self.reactor, self.pools, rng=random.Random(seed))
        self.connects = 0

    @property
    def pool(self) -> Any:
        return next(iter(self.pools.values()))

    @property
    def server(self) -> Server:
        return self.pool.servers[0]

    def next_check(self) -> Any:
        """Advance the clock to the next check's connect; its factory."""
        while len(self.reactor.tcpClients) == self.connects:
            calls: Sequence[Any] = self.reactor.getDelayedCalls()
            assert calls, "no check is scheduled"
            self.reactor.advance(max(0.0, min(c.getTime() for c in calls) - self.reactor.seconds()))
        self.connects += 1
        return self.reactor.tcpClients[self.connects - 1][2]

    def refuse(self) -> None:
        factory = self.next_check()
        connector = self.reactor.connectors[self.connects - 1]
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))

    def accept(self) -> StringTransport:
        factory = self.next_check()
        host, port = self.reactor.tcpClients[self.connects - 1][:2]
        transport = StringTransport()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return transport

    def play(self, results: str) -> None:
        """'+' accepts the next check's connection, '-' refuses it."""
        for r in results:
            self.accept() if r == "+" else self.refuse()


@pytest.fixture
def logs() -> Iterator[list[LogEvent]]:
    with capturedLogs() as events:
        yield events  # type: ignore[misc]


def health_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "proxyd.health.service"]


def test_each_checked_server_gets_its_first_check_within_one_interval() -> None:
    servers = tuple(f"192.0.2.{i}:3306" for i in range(1, 21))
    for seed in range(5):
        harness = Harness(pool_config(servers=servers), seed=seed)
        harness.service.startService()
        calls: Sequence[Any] = harness.reactor.getDelayedCalls()
        assert len(calls) == 20
        assert all(0 <= c.getTime() < INTERVAL for c in calls)
        # Spread out, not all at once.
        assert len({c.getTime() for c in calls}) == 20
        harness.service.stopService()


def test_servers_configured_down_and_pools_without_check_are_not_checked() -> None:
    harness = Harness(
        pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306"), down=("192.0.2.2:3306",)),
        pool_config(name="web", servers=("192.0.2.3:80",), check=None),
    )
    harness.service.startService()
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.next_check()
    assert [c[:2] for c in harness.reactor.tcpClients] == [("192.0.2.1", 3306)]
    assert [s.server for s in harness.service.statuses()] == ["192.0.2.1:3306"]
    assert harness.service.status(harness.pools["mysql"].servers[1]) is None
    harness.service.stopService()


def test_later_checks_come_every_interval_with_ten_percent_jitter() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    gaps = []
    for _ in range(50):
        harness.accept()
        finished = harness.reactor.seconds()
        calls: Sequence[Any] = harness.reactor.getDelayedCalls()
        (call,) = calls
        gaps.append(call.getTime() - finished)
    assert all(0.9 * INTERVAL <= gap <= 1.1 * INTERVAL for gap in gaps)
    assert len(set(gaps)) > 40
    harness.service.stopService()


def test_checks_connect_to_the_server_with_the_pools_timeout() -> None:
    harness = Harness(pool_config(servers=("[2001:db8::1]:3306",)))
    harness.service.startService()
    harness.next_check()
    host, port, _, timeout, _ = harness.reactor.tcpClients[0]
    assert (host, port, timeout) == ("2001:db8::1", 3306, TIMEOUT)
    harness.service.stopService()


def test_a_refused_first_check_marks_the_server_down_at_once(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.refuse()
    assert harness.pool.health == [("192.0.2.1:3306", False, "connection refused")]
    assert health_lines(logs) == [
        "server 192.0.2.1:3306 in pool mysql is DOWN: connection refused (first check failed)"
    ]
    harness.service.stopService()


def test_after_a_passed_check_fall_refusals_mark_it_down(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config(fall=3))
    harness.service.startService()
    harness.play("+--")
    assert harness.pool.health == []
    harness.play("-")
    assert harness.pool.health == [("192.0.2.1:3306", False, "connection refused")]
    down = [e for e in logs if e.get("state") == "DOWN"]
    assert [formatEvent(e) for e in down] == [
        "server 192.0.2.1:3306 in pool mysql is DOWN: connection refused (3/3 failed)"
    ]
    (event,) = down
    assert event["log_level"] == LogLevel.warn
    assert (event["server"], event["pool"], event["reason"]) == (
        "192.0.2.1:3306",
        "mysql",
        "connection refused",
    )
    assert (event["count"], event["threshold"]) == (3, 3)
    harness.service.stopService()


def test_rise_passed_checks_bring_it_back_up(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config(rise=2))
    harness.service.startService()
    harness.play("-+")
    assert harness.pool.health == [("192.0.2.1:3306", False, "connection refused")]
    harness.play("+")
    assert harness.pool.health[-1] == ("192.0.2.1:3306", True, "2/2 succeeded")
    up = [e for e in logs if e.get("state") == "UP"]
    assert [formatEvent(e) for e in up] == [
        "server 192.0.2.1:3306 in pool mysql is UP (2/2 succeeded)"
    ]
    assert up[0]["log_level"] == LogLevel.info
    harness.service.stopService()


def test_passed_checks_log_nothing(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.play("+" * 20)
    assert health_lines(logs) == []
    assert harness.pool.health == []
    harness.service.stopService()


def test_failures_short_of_fall_are_logged_at_debug_only(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config(fall=3))
    harness.service.startService()
    harness.play("+-")
    (event,) = [e for e in logs if e.get("log_namespace") == "proxyd.health.service"]
    assert event["log_level"] == LogLevel.debug
    assert formatEvent(event) == (
        "server 192.0.2.1:3306 in pool mysql failed a check: connection refused (1/3)"
    )
    harness.service.stopService()


def test_a_down_server_failing_again_logs_nothing(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.play("-" * 10)
    assert len(health_lines(logs)) == 1
    assert len(harness.pool.health) == 1
    harness.service.stopService()


def test_a_check_that_hangs_fails_at_the_timeout(logs: list[LogEvent]) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.next_check()
    started = harness.reactor.seconds()
    harness.reactor.advance(TIMEOUT)
    assert harness.pool.health == [("192.0.2.1:3306", False, "timeout after 1s connecting")]
    assert harness.reactor.connectors[0].stoppedConnecting
    status = harness.service.status(harness.server)
    assert status is not None
    assert status.last_check == started + TIMEOUT
    assert status.last_duration == TIMEOUT
    harness.service.stopService()


def test_a_timed_out_conversation_is_aborted() -> None:
    harness = Harness(pool_config(check=MysqlCheck()))
    harness.service.startService()
    transport = harness.accept()
    harness.reactor.advance(TIMEOUT)
    assert harness.pool.health == [
        ("192.0.2.1:3306", False, "timeout after 1s waiting for handshake")
    ]
    assert transport.disconnected
    harness.service.stopService()


def test_status_reports_the_last_result() -> None:
    harness = Harness(pool_config(fall=3))
    harness.service.startService()
    before = harness.service.status(harness.server)
    assert before == ServerHealth(
        pool="mysql",
        server="192.0.2.1:3306",
        up=True,
        probation=True,
        successes=0,
        failures=0,
        last_ok=None,
        last_reason="",
        last_check=None,
        last_duration=None,
    )
    harness.play("+-")
    after = harness.service.status(harness.server)
    assert after is not None
    assert (after.up, after.probation, after.failures) == (True, False, 1)
    assert (after.last_ok, after.last_reason) == (False, "connection refused")
    assert after.last_check == harness.reactor.seconds()
    harness.play("+")
    after = harness.service.status(harness.server)
    assert after is not None and (after.last_ok, after.last_reason, after.failures) == (True, "", 0)
    harness.service.stopService()


def test_stop_cancels_the_timers_of_every_server() -> None:
    servers = tuple(f"192.0.2.{i}:3306" for i in range(1, 6))
    harness = Harness(pool_config(servers=servers))
    harness.service.startService()
    assert len(harness.reactor.getDelayedCalls()) == 5
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []
    assert not harness.service.running


def test_stop_cancels_checks_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Deferred[None]] = []
    real = checks.checker_for(MysqlCheck)

    def recording(reactor: CheckReactor, address: Address, check: Any, t: float) -> Deferred[None]:
        started.append(real(reactor, address, check, t))
        return started[-1]

    monkeypatch.setattr(checks, "_checkers", {**checks._checkers, MysqlCheck: recording})
    # Both checks in flight at once: the timeout is longer than the first delays.
    harness = Harness(
        pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306"), check=MysqlCheck(), timeout=5.0)
    )
    harness.service.startService()
    harness.next_check()  # the first server's check is connecting
    transport = harness.accept()  # the second's is connected, waiting for its handshake
    harness.service.stopService()
    assert len(started) == 2
    assert all(d.called for d in started)
    assert harness.reactor.getDelayedCalls() == []
    assert harness.reactor.connectors[0].stoppedConnecting
    assert transport.disconnected
    assert harness.pool.health == []
    # Late events from the reactor change nothing.
    factory = harness.reactor.tcpClients[0][2]
    factory.clientConnectionFailed(harness.reactor.connectors[0], Failure(error.UserError()))
    assert harness.reactor.getDelayedCalls() == []
    assert harness.pool.health == []


def test_a_checker_that_raises_counts_as_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, logs: list[LogEvent]
) -> None:
    def broken(reactor: CheckReactor, address: Address, check: object, t: float) -> Deferred[None]:
        raise RuntimeError("bug in checker")

    monkeypatch.setattr(checks, "_checkers", {**checks._checkers, TcpCheck: broken})
    harness = Harness(pool_config())
    harness.service.startService()
    harness.reactor.advance(INTERVAL)
    assert harness.pool.health == [("192.0.2.1:3306", False, "check error: bug in checker")]
    assert any(e.get("log_failure") is not None for e in logs)
    # The loop goes on.
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_a_pool_whose_check_kind_has_no_checker_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "_checkers", {})
    harness = Harness(pool_config())
    with pytest.raises(LookupError, match="TcpCheck"):
        harness.service.startService()
    assert harness.reactor.getDelayedCalls() == []
    assert not harness.service.running


def test_a_restart_checks_again() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.service.stopService()
    harness.service.startService()
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.play("+")
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_the_reactor_is_never_imported_by_the_health_package() -> None:
    import pathlib

    import proxyd.health

    package = pathlib.Path(proxyd.health.__file__).parent
    for module in package.glob("*.py"):
        assert "from twisted.internet import reactor" not in module.read_text(), module


def test_a_pool_that_raises_in_set_health_does_not_stop_the_loop(
    logs: list[LogEvent],
) -> None:
    harness = Harness(pool_config())

    def broken(server: Server, up: bool, reason: str) -> None:
        raise RuntimeError("pool bug")

    harness.pool.set_health = broken  # type: ignore[method-assign]
    harness.service.startService()
    harness.play("-")
    assert any(e.get("log_failure") is not None for e in logs)
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.play("++")
    status = harness.service.status(harness.server)
    assert status is not None and status.up
    harness.service.stopService()


def test_with_the_real_pool_transitions_reach_its_servers_and_subscribers() -> None:
    from proxyd.pool import Pool, ServerEvent

    def make_pool(config: PoolConfig, reactor: Any) -> Pool:
        return Pool(config, reactor, random.Random(1))

    try:
        make_pool(pool_config(), MemoryReactorClock())
    except NotImplementedError:
        pytest.skip("proxyd.pool.Pool is not implemented yet")
    harness = Harness(pool_config(rise=2), make_pool=make_pool)
    pool = harness.pool
    events: list[ServerEvent] = []
    pool.subscribe(events.append)
    (server,) = pool.servers
    harness.service.startService()
    harness.play("-")
    assert not server.healthy
    assert pool.pick() is None
    assert events[-1] == ServerEvent("mysql", "192.0.2.1:3306", "DOWN", "connection refused")
    harness.play("++")
    assert server.healthy
    assert pool.pick() is server
    assert (events[-1].state, events[-1].reason) == ("UP", "2/2 succeeded")
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


# check history


def test_history_keeps_the_last_ten_results_oldest_first() -> None:
    harness = Harness(pool_config(fall=100))
    harness.service.startService()
    assert harness.service.history(harness.server) == []
    finished = []
    for r in "+-" * 7:
        harness.play(r)
        finished.append(harness.reactor.seconds())
    history = harness.service.history(harness.server)
    assert len(history) == HISTORY == 10
    assert [h.time for h in history] == finished[-10:]
    assert [h.ok for h in history] == [True, False] * 5
    assert [h.reason for h in history] == ["", "connection refused"] * 5
    assert all(h.duration == 0.0 for h in history)
    harness.service.stopService()


def test_history_records_how_long_a_check_took() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.next_check()
    started = harness.reactor.seconds()
    harness.reactor.advance(TIMEOUT)
    assert harness.service.history(harness.server) == [
        CheckResult(started + TIMEOUT, False, "timeout after 1s connecting", TIMEOUT)
    ]
    harness.service.stopService()


def test_history_of_an_unchecked_server_is_empty() -> None:
    harness = Harness(pool_config(check=None))
    harness.service.startService()
    assert harness.service.history(harness.server) == []
    harness.service.stopService()


# maintenance


def test_maint_pauses_the_checks_and_leaving_it_resumes_them_within_an_interval(
    logs: list[LogEvent],
) -> None:
    harness = Harness(pool_config(rise=1))
    harness.service.startService()
    harness.play("-")
    assert not harness.server.healthy
    harness.pool.set_admin(harness.server, "maint")
    assert harness.reactor.getDelayedCalls() == []
    harness.reactor.advance(100 * INTERVAL)
    assert len(harness.reactor.tcpClients) == 1
    # It kept the health state it had.
    assert not harness.server.healthy
    status = harness.service.status(harness.server)
    assert status is not None and not status.up
    assert "health checks of 192.0.2.1:3306 in pool mysql paused (maint)" in health_lines(logs)
    left = harness.reactor.seconds()
    harness.pool.set_admin(harness.server, "ready")
    (call,) = harness.reactor.getDelayedCalls()
    assert left <= call.getTime() < left + INTERVAL
    harness.play("+")
    assert harness.server.healthy
    assert [h.ok for h in harness.service.history(harness.server)] == [False, True]
    harness.service.stopService()


def test_maint_cancels_the_check_in_flight_without_counting_it() -> None:
    harness = Harness(pool_config(check=MysqlCheck(), timeout=5.0))
    harness.service.startService()
    transport = harness.accept()  # waiting for the handshake
    harness.pool.set_admin(harness.server, "maint")
    assert transport.disconnected
    assert harness.reactor.getDelayedCalls() == []
    assert harness.pool.health == []
    assert harness.service.history(harness.server) == []
    assert harness.server.healthy
    harness.service.stopService()


def test_leaving_maint_for_drain_resumes_the_checks() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.pool.set_admin(harness.server, "maint")
    assert harness.reactor.getDelayedCalls() == []
    harness.pool.set_admin(harness.server, "drain")
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.play("-")
    assert harness.pool.health == [("192.0.2.1:3306", False, "connection refused")]
    harness.service.stopService()


def test_drain_does_not_pause_the_checks() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.pool.set_admin(harness.server, "drain")
    harness.play("+-")
    assert len(harness.service.history(harness.server)) == 2
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()


def test_a_server_in_maint_at_start_is_not_checked_until_it_leaves() -> None:
    harness = Harness(pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306")))
    harness.pool.servers[0].admin = "maint"
    harness.service.startService()
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.next_check()
    assert [c[:2] for c in harness.reactor.tcpClients] == [("192.0.2.2", 3306)]
    harness.pool.set_admin(harness.pool.servers[0], "ready")
    assert len(harness.reactor.getDelayedCalls()) == 2
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_other_events_and_servers_leave_the_loops_alone() -> None:
    harness = Harness(pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306")))
    harness.service.startService()
    first, second = harness.pool.servers
    harness.pool.set_admin(first, "maint")
    for observer in harness.pool.observers:
        observer(ServerEvent("mysql", first.name, "DOWN", "checks"))
        observer(ServerEvent("other", first.name, "READY", "another pool's server"))
    assert len(harness.reactor.getDelayedCalls()) == 1
    assert harness.service.status(second) is not None
    harness.service.stopService()


def test_a_stopped_service_hears_no_more_events() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.service.stopService()
    assert harness.pool.observers == []


# reload


def reload(harness: Harness, *configs: PoolConfig) -> dict[str, FakePool]:
    """Build the pools of `configs` carrying servers over as Pool(previous=...) does, and
    hand them to the running service."""
    old = harness.pools
    pools = {c.name: FakePool(c, old.get(c.name)) for c in configs}
    harness.service.reload(pools)  # type: ignore[arg-type]
    harness.pools = pools
    return pools


def test_reload_keeps_the_loop_of_an_unchanged_check_reporting_to_the_new_pool() -> None:
    harness = Harness(pool_config(rise=2, fall=3))
    harness.service.startService()
    harness.play("+--")
    (before,) = harness.reactor.getDelayedCalls()
    history = harness.service.history(harness.server)
    old_pool = harness.pool
    new_pool = reload(harness, pool_config(rise=2, fall=3))["mysql"]
    assert new_pool.servers[0] is old_pool.servers[0]
    # The same next check, counters and history.
    assert harness.reactor.getDelayedCalls() == [before]
    assert harness.service.history(harness.server) == history
    status = harness.service.status(harness.server)
    assert status is not None and (status.up, status.failures) == (True, 2)
    harness.play("-")
    assert new_pool.health == [("192.0.2.1:3306", False, "connection refused")]
    assert old_pool.health == []
    assert harness.service.pools is harness.pools
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_reload_drops_the_loops_of_servers_no_longer_checked() -> None:
    servers = ("192.0.2.1:3306", "192.0.2.2:3306", "192.0.2.3:3306")
    harness = Harness(pool_config(servers=servers))
    harness.service.startService()
    assert len(harness.reactor.getDelayedCalls()) == 3
    kept = harness.pool.servers[0]
    pools = reload(
        harness,
        pool_config(servers=(servers[0], servers[1]), down=(servers[1],)),
        pool_config(name="web", servers=(servers[2],), check=None),
    )
    assert len(harness.reactor.getDelayedCalls()) == 1
    assert [s.server for s in harness.service.statuses()] == [kept.name]
    assert harness.service.status(pools["mysql"].servers[1]) is None
    harness.reactor.advance(10 * INTERVAL)
    assert {c[:2] for c in harness.reactor.tcpClients} == {("192.0.2.1", 3306)}
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_reload_with_a_changed_check_starts_a_new_loop_from_the_servers_health() -> None:
    harness = Harness(pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306"), rise=2))
    harness.service.startService()
    up, down = harness.pool.servers
    harness.play("++")
    harness.pool.set_health(down, False, "refused")
    assert harness.service.history(up) != []
    pools = reload(
        harness,
        pool_config(servers=("192.0.2.1:3306", "192.0.2.2:3306"), rise=2, check=MysqlCheck()),
    )
    assert harness.service.history(up) == []
    status = harness.service.status(up)
    assert status is not None and (status.up, status.probation) == (True, True)
    status = harness.service.status(down)
    assert status is not None and (status.up, status.probation) == (False, False)
    calls: Sequence[Any] = harness.reactor.getDelayedCalls()
    assert len(calls) == 2
    assert all(c.getTime() < harness.reactor.seconds() + INTERVAL for c in calls)
    assert up.healthy and not down.healthy
    assert pools["mysql"].health == []
    harness.service.stopService()


@pytest.mark.parametrize(
    "changed",
    [
        {"rise": 3},
        {"fall": 1},
        {"timeout": 0.5},
        {"check": TcpCheck(send=b"PING\r\n", expect=b"+PONG")},
    ],
)
def test_reload_with_other_check_settings_starts_a_new_loop(changed: dict[str, Any]) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.play("+")
    reload(harness, pool_config(**changed))
    assert harness.service.history(harness.server) == []
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()
    assert harness.reactor.getDelayedCalls() == []


def test_reload_sets_up_a_server_down_by_checks_that_are_no_longer_run() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.play("-")
    pools = reload(harness, pool_config(check=None))
    assert harness.reactor.getDelayedCalls() == []
    assert pools["mysql"].health == [("192.0.2.1:3306", True, "no longer checked")]
    assert harness.server.healthy
    harness.service.stopService()


def test_reload_leaves_a_server_down_by_checks_and_now_configured_down_as_it_is() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    harness.play("-")
    pools = reload(harness, pool_config(down=("192.0.2.1:3306",)))
    assert harness.reactor.getDelayedCalls() == []
    assert pools["mysql"].health == []
    assert not harness.server.healthy
    # Back in service without a check, nothing would ever set it up but the reload.
    pools = reload(harness, pool_config(check=None))
    assert pools["mysql"].health == [("192.0.2.1:3306", True, "no longer checked")]
    harness.service.stopService()


def test_reload_keeps_a_paused_loop_paused_and_hears_the_new_pools() -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    old_pool = harness.pool
    old_pool.set_admin(harness.server, "maint")
    new_pool = reload(harness, pool_config())["mysql"]
    assert harness.reactor.getDelayedCalls() == []
    assert old_pool.observers == []
    new_pool.set_admin(harness.server, "ready")
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()


def test_reload_with_a_check_kind_without_checker_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(pool_config())
    harness.service.startService()
    pools = harness.pools
    monkeypatch.setattr(checks, "_checkers", {TcpCheck: checks._checkers[TcpCheck]})
    with pytest.raises(LookupError, match="MysqlCheck"):
        reload(harness, pool_config(check=MysqlCheck()))
    assert harness.service.pools is pools
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()


def test_reload_of_a_stopped_service_only_takes_the_pools() -> None:
    harness = Harness(pool_config())
    pools = reload(harness, pool_config(servers=("192.0.2.9:3306",)))
    assert harness.reactor.getDelayedCalls() == []
    harness.service.startService()
    harness.next_check()
    assert [c[:2] for c in harness.reactor.tcpClients] == [("192.0.2.9", 3306)]
    assert harness.service.pools is pools
    harness.service.stopService()


def test_with_the_real_pool_a_reload_keeps_health_and_events_reach_the_new_pool() -> None:
    from proxyd.pool import Pool

    harness = Harness(pool_config(rise=1), make_pool=lambda c, r: Pool(c, r, random.Random(1)))
    harness.service.startService()
    old_pool = harness.pool
    (server,) = old_pool.servers
    harness.play("-")
    new_pool = Pool(pool_config(rise=1), harness.reactor, random.Random(1), previous=old_pool)
    events: list[ServerEvent] = []
    new_pool.subscribe(events.append)
    harness.service.reload({"mysql": new_pool})
    harness.pools = {"mysql": new_pool}
    assert new_pool.servers == (server,) and not server.healthy
    harness.play("+")
    assert server.healthy and new_pool.pick() is server
    assert [(e.state, e.reason) for e in events] == [("UP", "1/1 succeeded")]
    new_pool.set_admin(server, "maint", "test")
    assert harness.reactor.getDelayedCalls() == []
    new_pool.set_admin(server, "ready", "test")
    assert len(harness.reactor.getDelayedCalls()) == 1
    harness.service.stopService()
    old_pool.stop()
    new_pool.stop()
    assert harness.reactor.getDelayedCalls() == []
