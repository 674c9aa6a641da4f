"""DNS SRV discovery: records to servers (priorities, weights, the bound), the TTL schedule,
and the driver over a fake resolver on MemoryReactorClock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError

from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.config.model import Address, PoolConfig, ServerConfig
from proxyd.discovery.common import Found
from proxyd.discovery.service import Source
from proxyd.discovery.srv import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    SrvRecord,
    next_interval,
    scaled_weights,
    srv_servers,
)
from proxyd.discovery.srv_driver import SrvDriver
from proxyd.pool import Pool

NAME = "_http._tcp.api.demo.test"


def names(found: Found) -> list[tuple[str, int, bool]]:
    return [(s.name, s.weight, s.backup) for s in found.servers]


def test_the_lowest_priority_is_primary_and_higher_ones_are_backups() -> None:
    records = [
        SrvRecord(20, 5, 8003, "c.demo.test", 30),
        SrvRecord(10, 3, 8001, "a.demo.test", 30),
        SrvRecord(10, 1, 8002, "b.demo.test", 30),
        SrvRecord(30, 1, 8004, "d.demo.test", 30),
    ]
    addresses = {t: ["127.0.0.1"] for t in ("a.demo.test", "b.demo.test", "c.demo.test")}
    addresses["d.demo.test"] = ["127.0.0.2", "::1"]
    found = srv_servers(records, addresses, 64)
    assert names(found) == [
        ("127.0.0.1:8001", 3, False),
        ("127.0.0.1:8002", 1, False),
        ("127.0.0.1:8003", 5, True),
        ("127.0.0.2:8004", 1, True),
        ("[::1]:8004", 1, True),
    ]


def test_weights_zero_is_the_smallest_and_large_ones_keep_their_ratio() -> None:
    assert scaled_weights([0, 10, 60]) == [1, 10, 60]
    assert scaled_weights([1000, 500, 0]) == [256, 128, 1]
    assert scaled_weights([65535, 1]) == [256, 1]


def test_a_target_of_dot_means_no_server_and_a_target_without_address_gives_none() -> None:
    assert srv_servers([SrvRecord(0, 0, 0, ".", 30)], {}, 64) == Found(())
    records = [SrvRecord(0, 1, 80, "gone.demo.test", 30), SrvRecord(0, 1, 81, "a.demo.test", 30)]
    assert names(srv_servers(records, {"a.demo.test": ["127.0.0.1"]}, 64)) == [
        ("127.0.0.1:81", 1, False)
    ]


def test_the_bound_keeps_the_most_wanted_servers_and_counts_the_others() -> None:
    records = [
        SrvRecord(10 if i < 3 else 20, 10 - i, 8000 + i, "a.demo.test", 30) for i in range(6)
    ]
    found = srv_servers(records, {"a.demo.test": ["127.0.0.1"]}, 3)
    assert [s.name for s in found.servers] == ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]
    assert found.left_out == 3
    at_limit = srv_servers(records[:3], {"a.demo.test": ["127.0.0.1"]}, 3)
    assert len(at_limit.servers) == 3 and at_limit.left_out == 0


def test_next_interval_is_the_smallest_ttl_within_bounds() -> None:
    assert next_interval([30, 5, 60]) == 5.0
    assert next_interval([0]) == MIN_INTERVAL
    assert next_interval([86400]) == MAX_INTERVAL
    assert next_interval([]) == MAX_INTERVAL


def _srv(priority: int, weight: int, port: int, target: str, ttl: int) -> dns.RRHeader:
    payload = dns.Record_SRV(priority, weight, port, target, ttl=ttl)
    return dns.RRHeader(NAME, dns.SRV, dns.IN, ttl, payload)


def _a(name: str, address: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


class FakeResolver:
    """Answers SRV and A lookups from tables the test sets; AAAA with no data."""

    def __init__(self) -> None:
        self.srv: list[dns.RRHeader] = []
        self.a: dict[str, list[dns.RRHeader]] = {}
        self.error: Exception | None = None
        self.asked: list[str] = []

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.asked.append(name)
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed((list(self.srv), [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        if name not in self.a:
            return defer.fail(DNSNameError(name))
        return defer.succeed((list(self.a[name]), [], []))

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.succeed(([], [], []))


class Harness:
    def __init__(self, check: bool = False, limit: int = 64) -> None:
        self.reactor = MemoryReactorClock()
        self.config = DiscoveryConfig("srv", NAME, max_servers=limit)
        static = ServerConfig(Address("127.0.0.1", 9000), backup=True)
        self.pool = Pool(PoolConfig("api", (static,), discovery=self.config), self.reactor)
        self.source = Source(self.pool, self.config)
        self.resolver = FakeResolver()
        self.driver = SrvDriver(self.reactor, self.config, self.source, self.resolver)
        self.source.driver = self.driver

    def discovered(self) -> list[str]:
        return [s.name for s in self.pool.discovered]


@pytest.fixture
def logs() -> Iterator[list[LogEvent]]:
    with capturedLogs() as events:
        yield events  # type: ignore[misc]


def discovery_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "proxyd.discovery.service"]


def test_the_driver_applies_the_records_and_asks_again_after_their_ttl() -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 2, 8001, "a.demo.test", 5), _srv(20, 1, 8002, "b.demo.test", 30)]
    h.resolver.a = {
        "a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)],
        "b.demo.test": [_a("b.demo.test", "127.0.0.2", 60)],
    }
    h.driver.start()
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.2:8002"]
    servers = {s.name: s for s in h.pool.servers}
    assert servers["127.0.0.1:8001"].weight == 2 and not servers["127.0.0.1:8001"].backup
    assert servers["127.0.0.2:8002"].backup
    assert len(h.resolver.asked) == 1
    h.resolver.srv = [_srv(10, 1, 8003, "a.demo.test", 5)]
    h.reactor.advance(4.9)
    assert len(h.resolver.asked) == 1
    h.reactor.advance(0.1)  # the smallest TTL, 5 s
    assert len(h.resolver.asked) == 2
    assert h.discovered() == ["127.0.0.1:8003"]


def test_a_failure_keeps_the_last_list_logs_once_and_retries_with_backoff(
    logs: list[LogEvent],
) -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 1, 8001, "a.demo.test", 10)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    h.resolver.error = DNSServerError("SERVFAIL")
    h.reactor.advance(10)
    assert h.discovered() == ["127.0.0.1:8001"]
    assert len(h.resolver.asked) == 2
    h.reactor.advance(1)  # first retry after 1 s
    assert len(h.resolver.asked) == 3
    h.reactor.advance(1.9)  # then 2 s
    assert len(h.resolver.asked) == 3
    h.reactor.advance(0.1)
    assert len(h.resolver.asked) == 4
    assert h.discovered() == ["127.0.0.1:8001"]
    assert h.source.failures == 3
    failed = [line for line in discovery_lines(logs) if "failed" in line]
    assert len(failed) == 1
    assert "keeping the last 1 servers found" in failed[0]
    h.resolver.error = None
    h.reactor.advance(4)
    assert len(h.resolver.asked) == 5
    recovered = [line for line in discovery_lines(logs) if "recovered" in line]
    assert len(recovered) == 1


def test_nxdomain_for_the_srv_name_is_a_failure_that_keeps_the_list() -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 1, 8001, "a.demo.test", 10)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    h.resolver.error = DNSNameError(NAME)
    h.reactor.advance(10)
    assert h.source.failing
    assert h.discovered() == ["127.0.0.1:8001"]


def test_the_bound_at_its_limit_and_past_it(logs: list[LogEvent]) -> None:
    h = Harness(limit=2)
    h.resolver.srv = [_srv(10, 1, 8001 + i, "a.demo.test", 10) for i in range(2)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert not [line for line in discovery_lines(logs) if "max_discovered" in line]
    h.resolver.srv = [_srv(10, 1, 8001 + i, "a.demo.test", 10) for i in range(3)]
    h.reactor.advance(10)
    assert h.discovered() == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert h.source.left_out == 1
    assert len([line for line in discovery_lines(logs) if "max_discovered" in line]) == 1


def test_stop_cancels_the_next_lookup() -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 1, 8001, "a.demo.test", 10)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    h.driver.stop()
    assert not h.reactor.getDelayedCalls()


def test_records_whose_targets_all_fail_to_resolve_keep_the_last_list() -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 1, 8001, "a.demo.test", 10)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    h.resolver.srv = [_srv(10, 1, 8002, "gone.demo.test", 10)]
    h.reactor.advance(10)
    assert h.source.failing
    assert h.discovered() == ["127.0.0.1:8001"]


def test_a_target_of_dot_empties_the_discovered_list() -> None:
    h = Harness()
    h.resolver.srv = [_srv(10, 1, 8001, "a.demo.test", 10)]
    h.resolver.a = {"a.demo.test": [_a("a.demo.test", "127.0.0.1", 60)]}
    h.driver.start()
    h.resolver.srv = [_srv(0, 0, 0, "", 10)]  # the root: "."
    h.reactor.advance(10)
    assert not h.source.failing
    assert h.discovered() == []
    assert [s.name for s in h.pool.servers] == ["127.0.0.1:9000"]  # the config's stays
