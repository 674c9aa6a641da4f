"""Discovered servers in a pool: checked before traffic, drained when removed, kept across a
reload by name, static servers first; the discovery service's sources across a reload; the
config keys."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import status_document
from proxyd.app import ProxydService
from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Address, PoolConfig, ServerConfig, TcpCheck
from proxyd.discovery.common import Found, server_line, server_of
from proxyd.discovery.service import DiscoveryService, Source
from proxyd.health import checks
from proxyd.health.service import HealthService
from proxyd.pool import Pool, ServerEvent

SRV = DiscoveryConfig("srv", "_http._tcp.api.demo.test")


def server(port: int, **kwargs: Any) -> ServerConfig:
    return ServerConfig(Address("127.0.0.1", port), **kwargs)


def pool_config(check: bool = False, discovery: DiscoveryConfig = SRV, **kwargs: Any) -> PoolConfig:
    return PoolConfig(
        "api",
        (server(9000),),
        check=TcpCheck() if check else None,
        check_interval=2.0,
        rise=2,
        discovery=discovery,
        **kwargs,
    )


def test_added_servers_are_events_and_removed_ones_too() -> None:
    pool = Pool(pool_config(), MemoryReactorClock())
    events: list[ServerEvent] = []
    pool.subscribe(events.append)
    added, removed = pool.set_discovered([server(8001), server(8002, weight=3)])
    assert [s.name for s in added] == ["127.0.0.1:8001", "127.0.0.1:8002"] and not removed
    assert [s.name for s in pool.servers] == ["127.0.0.1:9000", "127.0.0.1:8001", "127.0.0.1:8002"]
    pool.set_discovered([server(8002, weight=5)])
    assert [(e.server, e.state) for e in events] == [
        ("127.0.0.1:8001", "ADDED"),
        ("127.0.0.1:8002", "ADDED"),
        ("127.0.0.1:8001", "REMOVED"),
    ]
    assert pool.find("127.0.0.1:8002").weight == 5  # type: ignore[union-attr]


def test_a_static_server_wins_over_a_discovered_one_of_the_same_address() -> None:
    pool = Pool(pool_config(), MemoryReactorClock())
    static = pool.servers[0]
    added, _ = pool.set_discovered([server(9000, weight=7), server(8001)])
    assert [s.name for s in added] == ["127.0.0.1:8001"]
    assert pool.servers[0] is static and static.weight == 1
    assert [s.name for s in pool.discovered] == ["127.0.0.1:8001"]


def test_a_discovered_backup_takes_traffic_only_when_no_primary_is_available() -> None:
    clock = MemoryReactorClock()
    config = PoolConfig("api", (), discovery=SRV)
    pool = Pool(config, clock)
    pool.set_discovered([server(8001), server(8002, backup=True)])
    assert {pool.pick().name for _ in range(4)} == {"127.0.0.1:8001"}  # type: ignore[union-attr]
    primary = pool.find("127.0.0.1:8001")
    assert primary is not None
    pool.set_health(primary, False, "down")
    assert pool.pick().name == "127.0.0.1:8002"  # type: ignore[union-attr]


def test_a_removed_server_takes_no_new_connection_and_its_open_one_finishes() -> None:
    pool = Pool(pool_config(), MemoryReactorClock())
    pool.set_discovered([server(8001)])
    gone = pool.find("127.0.0.1:8001")
    assert gone is not None
    pool.acquire(gone)  # a request in flight on it
    pool.set_discovered([])
    assert all(pool.pick() is not gone for _ in range(10))
    for _ in range(5):
        pool.report_failure(gone, "reset")  # its end is not held against anyone
    assert not gone.ejected
    pool.release(gone)  # the request finished on the server it began on
    assert gone.active == 0
    assert pool.find("127.0.0.1:8001") is None


def test_a_reload_with_the_same_discovery_keeps_discovered_servers_by_name() -> None:
    clock = MemoryReactorClock()
    first = Pool(pool_config(), clock)
    first.set_discovered([server(8001)])
    kept = first.find("127.0.0.1:8001")
    assert kept is not None
    kept.healthy = False
    second = Pool(pool_config(max_fails=5), clock, previous=first)
    assert second.find("127.0.0.1:8001") is kept and not kept.healthy
    other = DiscoveryConfig("srv", "_http._tcp.other.demo.test")
    third = Pool(pool_config(discovery=other), clock, previous=second)
    assert third.find("127.0.0.1:8001") is None and third.discovered == ()


def test_a_reload_that_changes_only_the_resolver_or_bound_keeps_the_servers_found() -> None:
    clock = MemoryReactorClock()
    first = Pool(pool_config(), clock)
    first.set_discovered([server(8001), server(8002), server(8003)])
    kept = first.find("127.0.0.1:8001")
    bounded = DiscoveryConfig(SRV.kind, SRV.name, resolver=("127.0.0.1", 53), max_servers=2)
    second = Pool(pool_config(discovery=bounded), clock, previous=first)
    assert [s.name for s in second.discovered] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert second.find("127.0.0.1:8001") is kept


def test_an_added_server_is_checked_before_it_takes_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Deferred[None]] = []

    def checker(reactor: Any, address: Address, check: Any, timeout: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        answers.append(d)
        return d

    monkeypatch.setattr(checks, "_checkers", {**checks._checkers, TcpCheck: checker})
    clock = MemoryReactorClock()
    pool = Pool(pool_config(check=True), clock)
    health = HealthService(clock, {"api": pool})
    health.startService()
    static = pool.servers[0]
    pool.set_discovered([server(8001)])
    new = pool.find("127.0.0.1:8001")
    assert new is not None and not new.is_available(clock.seconds())
    assert all(pool.pick() is static for _ in range(4))
    clock.advance(0)  # its first check starts at once
    mine = [d for d in answers if not d.called]
    assert mine
    mine[-1].callback(None)
    assert all(pool.pick() is static for _ in range(4))  # one pass of rise = 2
    for _ in range(10):
        clock.advance(2.2)
        for d in answers:
            if not d.called:
                d.callback(None)
        if new.is_available(clock.seconds()):
            break
    assert new.is_available(clock.seconds())
    assert {pool.pick().name for _ in range(4)} == {"127.0.0.1:9000", "127.0.0.1:8001"}  # type: ignore[union-attr]
    pool.set_discovered([])
    assert health.status(new) is None  # no longer checked
    health.stopService()


class FakeDriver:
    def __init__(self, reactor: Any, config: DiscoveryConfig, source: Source) -> None:
        self.config = config
        self.source = source
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


def test_the_service_keeps_a_source_whose_discovery_is_unchanged_across_a_reload() -> None:
    clock = MemoryReactorClock()
    pool = Pool(pool_config(), clock)
    service = DiscoveryService(clock, {"api": pool}, drivers=FakeDriver)
    service.startService()
    source = service.sources["api"]
    source.update(source_found([server(8001)]))
    assert service.figures()["api"]["servers"] == 1
    reloaded = Pool(pool_config(max_fails=9), clock, previous=pool)
    service.reload({"api": reloaded})
    assert service.sources["api"] is source and source.pool is reloaded
    assert source.driver.running
    other = DiscoveryConfig("etcd", "/p/", endpoint="http://127.0.0.1:2379")
    changed = Pool(pool_config(discovery=other), clock, previous=reloaded)
    service.reload({"api": changed})
    assert service.sources["api"] is not source and not source.driver.running
    service.stopService()
    assert not service.sources


def source_found(servers: list[ServerConfig]) -> Found:
    return Found(tuple(servers))


def test_a_server_line_parses_back_to_the_same_server() -> None:
    for config in (server(8001), server(8002, weight=3, backup=True, max_connections=10)):
        assert server_of(server_line(config)) == config


INI = """\
[pool api]
discovery = srv _http._tcp.api.demo.test
resolver = 127.0.0.1:9653
max_discovered = 8

[pool keys]
servers = 127.0.0.1:9000
discovery = etcd http://127.0.0.1:2379 /proxyd/keys/

[tcp t]
listen = tcp:0:interface=127.0.0.1
pool = api
"""


def test_the_discovery_keys_build_the_pools_discovery() -> None:
    config = loads(INI, "proxyd.ini")
    assert config.pools["api"].servers == ()
    assert config.pools["api"].discovery == DiscoveryConfig(
        "srv", "_http._tcp.api.demo.test", resolver=("127.0.0.1", 9653), max_servers=8
    )
    keys = config.pools["keys"].discovery
    assert keys == DiscoveryConfig("etcd", "/proxyd/keys/", endpoint="http://127.0.0.1:2379")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "discovery = dns foo",
            "proxyd.ini:2: [pool api] discovery: expected a discovery kind ('srv', 'etcd');"
            " found 'dns'",
        ),
        (
            "discovery = etcd 127.0.0.1:2379 /p/",
            "proxyd.ini:2: [pool api] discovery: expected an etcd client URL http://HOST:PORT;"
            " found '127.0.0.1:2379'",
        ),
        (
            "discovery = srv _x._tcp.a.test\nresolver = resolver.test",
            "proxyd.ini:3: [pool api] resolver: expected an address HOST:PORT or [IPv6]:PORT;"
            " found 'resolver.test'",
        ),
        (
            "discovery = srv _x._tcp.a.test\nmax_discovered = 0",
            "proxyd.ini:3: [pool api] max_discovered: expected",
        ),
    ],
)
def test_discovery_errors_name_the_file_line_section_and_key(line: str, message: str) -> None:
    text = f"[pool api]\n{line}\n[tcp t]\nlisten = tcp:0\npool = api\n"
    with pytest.raises(ConfigErrors) as e:
        loads(text, "proxyd.ini")
    assert str(e.value.errors[0]).startswith(message)


def test_discovered_servers_show_in_the_status_document_and_metrics() -> None:
    text = INI.replace("[pool keys]", "[admin]\nlisten = tcp:0:interface=127.0.0.1\n[pool keys]")
    service = ProxydService(MemoryReactorClock(), loads(text, "proxyd.ini"))
    assert service.discovery is not None
    service.discovery._make_driver = FakeDriver
    service.discovery.startService()
    service.discovery.sources["api"].update(Found((server(8001, weight=2),)))
    service.discovery.sources["api"].failed("connection refused")
    document = status_document(service, {}, 0.0)
    pool = next(p for p in document["pools"] if p["name"] == "api")
    [found] = pool["servers"]
    assert (found["name"], found["weight"], found["discovered"]) == ("127.0.0.1:8001", 2, True)
    assert pool["discovery"] == {
        "source": "SRV _http._tcp.api.demo.test",
        "servers": 1,
        "updates": 1,
        "failures": 1,
        "failing": True,
        "left_out": 0,
    }
    text = generate_latest(metrics_registry(document)).decode()
    assert 'proxyd_discovery_servers{pool="api"} 1.0' in text
    assert 'proxyd_discovery_failures_total{pool="api"} 1.0' in text
    assert 'proxyd_discovery_failing{pool="api"} 1.0' in text
    service.discovery.stopService()
