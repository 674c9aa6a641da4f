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
from proxyd.health.service import HealthService, ServerHealth
from proxyd.pool import Server

INTERVAL = 2.0
TIMEOUT = 1.0
CONNECT_ONLY = TcpCheck()


class FakePool:
    """The part of the Pool API the service uses, recording set_health calls."""

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.config = config
        self.servers = tuple(Server(config=s, pool=config.name) for s in config.servers)
        self.health: list[tuple[str, bool, str]] = []

    def set_health(self, server: Server, up: bool, reason: str) -> None:
        self.health.append((server.name, up, reason))
        server.healthy = up
        server.health_reason = reason


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
