"""Stick tables (proxyd.pool.stick_table, proxyd.filters.stick): lookups, records, two nodes
racing, a server down, the local table's TTL and bound, Redis slow or down and back, on a
fake Redis and a clock; and the `stick_*` keys."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.model import Address, PoolConfig, ServerConfig
from proxyd.config.ratelimit_model import RedisStore
from proxyd.config.stick_model import StickConfig
from proxyd.filters.stick import StickOn, StickTable, StickTables
from proxyd.pool import Pool
from proxyd.pool.stick_table import LOCAL_TTL, PROBE_INTERVAL, LocalTable, Outage, redis_key

STORE = RedisStore("127.0.0.1", 6390, password="secret")


class FakeRedis:
    """GETEX and the record script over a dict shared by the nodes; `down` fails every
    call, `silent` never answers."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.expiry: dict[str, int] = {}
        self.down = False
        self.silent = False
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        if self.silent:
            return Deferred()
        if self.down:
            return fail(ConnectionError("Connection refused"))
        if args[0] == "PING":
            return succeed("PONG")
        if args[0] == "GETEX":
            _, key, _, seconds = args
            if key in self.data:
                self.expiry[key] = seconds
            return succeed(self.data.get(key))
        _, _, _, key, seen, pick, seconds = args
        current = self.data.get(key)
        if (current is None and seen == "") or current == seen:
            self.data[key] = pick
        self.expiry[key] = seconds
        return succeed(self.data[key])


def pool(clock: MemoryReactorClock, seed: int = 1) -> Pool:
    servers = tuple(ServerConfig(Address(f"192.0.2.{n}", 80)) for n in (1, 2, 3))
    return Pool(PoolConfig(name="web", servers=servers), clock, random.Random(seed))


def table(clock: MemoryReactorClock, redis: FakeRedis | None, source: str = "header") -> StickTable:
    config = StickConfig(
        source, "x-session" if source == "header" else None, STORE if redis else None, 600, 0.05
    )
    return StickTable(clock, "web", config, redis)


def resolved(found: Any) -> Any:
    if isinstance(found, Deferred):
        results: list[Any] = []
        found.addBoth(results.append)
        assert results, "still waiting"
        return results[0]
    return found


def test_a_new_key_is_picked_recorded_then_found_by_another_node() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    a, b = table(clock, redis), table(clock, redis)
    pool_a, pool_b = pool(clock, 1), pool(clock, 2)
    first = resolved(a.resolve(pool_a, "user-1"))
    assert redis.data[redis_key("web", "user-1")] == first.name
    assert redis.expiry[redis_key("web", "user-1")] == 600
    assert a.counters["recorded"] == 1
    for _ in range(5):  # b's own pool would balance them over all three
        assert resolved(b.resolve(pool_b, "user-1")).name == first.name
        clock.advance(LOCAL_TTL)
    assert b.counters["recorded"] == 0 and b.counters["lookups"] == 5


def test_the_local_table_answers_without_redis_for_its_ttl() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    a = table(clock, redis)
    web = pool(clock)
    server = resolved(a.resolve(web, "k"))
    calls = len(redis.calls)
    assert a.resolve(web, "k") is server  # at once, no Deferred
    assert len(redis.calls) == calls
    clock.advance(LOCAL_TTL)
    assert isinstance(a.resolve(web, "k"), Deferred)  # asks again, refreshing the expiry
    assert redis.calls[-1][0] == "GETEX"


def test_two_nodes_racing_on_a_new_key_agree_on_the_first_record() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    redis.silent = True
    a, b = table(clock, redis), table(clock, redis)
    pool_a, pool_b = pool(clock, 1), pool(clock, 2)
    pool_b.pick()  # b's round robin is one step ahead: it would pick another server
    asked_a, asked_b = a.resolve(pool_a, "k"), b.resolve(pool_b, "k")
    assert isinstance(asked_a, Deferred) and isinstance(asked_b, Deferred)
    # Both lookups found nothing; then both record, a first.
    redis.silent = False
    pick_a, pick_b = pool_a.pick(), pool_b.pick()
    assert pick_a is not None and pick_b is not None and pick_a.name != pick_b.name
    for pick in (pick_a, pick_b):
        redis("EVAL", "", 1, redis_key("web", "k"), "", pick.name, 600)
    assert redis.data[redis_key("web", "k")] == pick_a.name  # b's did not overwrite it
    clock.advance(1)
    c = table(clock, redis)
    assert resolved(c.resolve(pool(clock, 3), "k")).name == pick_a.name


def test_a_recorded_server_that_is_down_is_replaced_for_every_node() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    a, b = table(clock, redis), table(clock, redis)
    pool_a, pool_b = pool(clock, 1), pool(clock, 2)
    first = resolved(a.resolve(pool_a, "k"))
    for web in (pool_a, pool_b):
        down = web.find(first.name)
        assert down is not None
        web.set_health(down, False, "test")
    clock.advance(LOCAL_TTL)
    moved = resolved(a.resolve(pool_a, "k"))
    assert moved.name != first.name and a.counters["moved"] == 1
    assert redis.data[redis_key("web", "k")] == moved.name
    assert resolved(b.resolve(pool_b, "k")).name == moved.name  # b follows, no second move
    assert b.counters["moved"] == 0


def test_a_server_this_node_does_not_have_is_left_to_the_nodes_that_do() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    redis.data[redis_key("web", "k")] = "10.9.9.9:80"
    a = table(clock, redis)
    server = resolved(a.resolve(pool(clock), "k"))
    assert server is not None and redis.data[redis_key("web", "k")] == "10.9.9.9:80"


def test_the_local_table_is_bounded_and_its_entries_expire() -> None:
    local = LocalTable(size=3)
    for n in range(5):
        local.put(f"k{n}", "s", until=10.0)
    assert len(local) == 3 and local.evicted == 2
    assert local.get("k0", 0.0) is None and local.get("k4", 0.0) == "s"
    local.get("k2", 0.0)  # used: the least recently used is now k3
    local.put("k5", "s", until=10.0)
    assert local.get("k3", 0.0) is None and local.get("k2", 0.0) == "s"
    assert local.get("k2", 10.0) is None  # expired


def test_redis_down_the_node_picks_alone_logs_once_and_recovers() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    a = table(clock, redis)
    web = pool(clock)
    redis.down = True
    with capturedLogs() as events:
        first = resolved(a.resolve(web, "k"))
        assert first is not None and a.counters["alone"] == 1
        calls = len(redis.calls)
        for _ in range(10):  # the node's own table: stuck, without asking Redis
            assert resolved(a.resolve(web, "k")) is first
            assert resolved(a.resolve(web, f"other-{_}")) is not None
        assert len(redis.calls) == calls
        clock.advance(PROBE_INTERVAL)
        redis.down = False
        assert resolved(a.resolve(web, "k")) is first  # at once; Redis probed meanwhile
        assert redis.calls[-1] == ("PING",) and a.outage.down_since is None
    lines = [e["log_format"] for e in events if e.get("log_namespace") == "proxyd.stick"]
    assert sum("unreachable" in line for line in lines) == 1
    assert sum("answers again" in line for line in lines) == 1
    assert len(a.local) == 0  # what it decided alone is forgotten
    assert "secret" not in repr(events)


def test_a_slow_redis_costs_a_request_the_timeout_then_the_node_picks_alone() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    a = table(clock, redis)
    web = pool(clock)
    redis.silent = True
    asked = a.resolve(web, "k")
    assert isinstance(asked, Deferred)
    results: list[Any] = []
    asked.addCallback(results.append)
    clock.advance(0.049)
    assert not results
    clock.advance(0.001)
    assert results and results[0] is not None and a.counters["errors"] == 1
    assert a.counters["alone"] == 1


def test_outage_probes_one_request_at_a_time() -> None:
    outage = Outage()
    assert outage.may_ask(0.0)
    assert outage.failed(0.0) and not outage.failed(0.5)
    assert not outage.may_ask(1.0)
    assert outage.may_ask(1.5) and not outage.may_ask(1.5)
    outage.decided_alone = 7
    assert outage.answered() == 7 and outage.answered() is None


def test_a_local_table_without_a_store_sticks_for_the_expiry() -> None:
    clock = MemoryReactorClock()
    a = table(clock, None, "client_ip")
    web = pool(clock)
    first = a.resolve(web, "192.0.2.50")
    clock.advance(599)
    assert a.resolve(web, "192.0.2.50") is first and a.counters["alone"] == 0
    clock.advance(599)  # each use made it live 600 s again
    assert a.resolve(web, "192.0.2.50") is first
    clock.advance(600)
    assert len(a.local) == 1 and a.local.get("192.0.2.50", clock.seconds()) is None


def test_stick_and_admin_cluster_metrics() -> None:
    from proxyd.admin.feature_metrics import admin_cluster_families, stick_families

    tables = {"web": {"lookups": 5, "recorded": 2, "moved": 1, "alone": 0, "errors": 0}}
    found = {
        (sample.name, sample.labels.get("pool")): sample.value
        for family in stick_families(tables)
        for sample in family.samples
    }
    assert found[("proxyd_stick_lookups_total", "web")] == 5
    assert found[("proxyd_stick_moved_total", "web")] == 1
    assert list(stick_families({})) == [] and list(admin_cluster_families(None)) == []
    samples = [s for f in admin_cluster_families({"sent": 1, "applied": 2}) for s in f.samples]
    assert ("proxyd_admin_cluster_applied_total", 2) in [(s.name, s.value) for s in samples]


def test_long_keys_are_stored_as_a_digest() -> None:
    assert redis_key("web", "a") == "proxyd:stick:web:a"
    assert len(redis_key("web", "x" * 4000)) < 80


class Exchange:
    def __init__(self, web: Pool, headers: list[tuple[bytes, bytes]]) -> None:
        self.pool = web
        self.request_headers = headers
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.client_ip = "192.0.2.9"
        self.vars: dict[str, Any] = {}
        self.preferred: Any = None
        self.upstream_server: Any = None

    def prefer(self, server: Any) -> None:
        self.preferred = server


def test_the_filter_prefers_the_tables_server_and_learns_set_cookie() -> None:
    clock, redis = MemoryReactorClock(), FakeRedis()
    config = StickConfig("cookie", "JSESSIONID", STORE, 600, 0.05)
    tables = {"web": StickTable(clock, "web", config, redis)}
    web = pool(clock)
    stick = StickOn(tables)
    first = Exchange(web, [])
    assert stick.request_head(first) is None and first.preferred is None  # no cookie yet
    first.upstream_server = web.servers[2]
    first.response_headers = [(b"Set-Cookie", b"JSESSIONID=abc; Path=/")]
    stick.response_head(first)
    assert redis.data[redis_key("web", "abc")] == web.servers[2].name
    again = Exchange(web, [(b"Cookie", b"a=1; JSESSIONID=abc")])
    assert stick.request_head(again) is None  # known locally: at once
    assert again.preferred is web.servers[2]
    other = Exchange(pool(clock, 5), [(b"Cookie", b"JSESSIONID=abc")])
    other_tables = {"web": StickTable(clock, "web", config, redis)}
    waited = StickOn(other_tables).request_head(other)
    assert isinstance(waited, Deferred) and other.preferred.name == web.servers[2].name


def test_tables_are_kept_across_reloads_while_their_settings_are_the_same() -> None:
    made: list[Any] = []
    sticks = StickTables(MemoryReactorClock(), lambda store: made.append(store) or FakeRedis())
    stick = StickConfig("client_ip", store=STORE)
    pools = {
        "web": PoolConfig(name="web", servers=(), stick=stick),
        "api": PoolConfig(name="api", servers=()),
    }
    first = sticks.for_pools(pools)
    assert list(first) == ["web"] and made == [STORE]
    assert sticks.for_pools(pools)["web"] is first["web"]
    changed = {"web": PoolConfig(name="web", servers=(), stick=StickConfig("client_ip", expire=5))}
    assert sticks.for_pools(changed)["web"] is not first["web"]
    assert set(sticks.figures()["web"]) == {"lookups", "recorded", "moved", "alone", "errors"}


POOL = "[pool web]\nservers = 127.0.0.1:9001\n{keys}\n[tcp t]\nlisten = tcp:1\npool = web\n"


def test_stick_keys_load() -> None:
    keys = "stick_on = cookie JSESSIONID\nstick_store = redis://:pw@127.0.0.1:6390/1\n"
    keys += "stick_expire = 2h\nstick_timeout = 20ms"
    stick = loads(POOL.format(keys=keys), "p.ini").pools["web"].stick
    assert stick == StickConfig(
        "cookie", "JSESSIONID", RedisStore("127.0.0.1", 6390, 1, password="pw"), 7200, 0.02
    )
    plain = loads(POOL.format(keys="stick_on = header X-Session"), "p.ini").pools["web"].stick
    assert plain == StickConfig("header", "x-session", None, 1800, 0.05)
    assert loads(POOL.format(keys=""), "p.ini").pools["web"].stick is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("stick_on = cooky A", "p.ini:3: [pool web] stick_on: expected 'cookie NAME'"),
        ("stick_on = cookie", "expected one name after 'cookie'"),
        ("stick_on = client_ip x", "expected nothing after 'client_ip'"),
        ("stick_expire = 1m", "[pool web] stick_expire: expected 'stick_expire' only with"),
        ("stick_on = client_ip\nstick_timeout = 1s", "stick_timeout: expected 'stick_timeout'"),
        ("stick_on = client_ip\nstick_store = http://h", "[pool web] stick_store: expected"),
        ("stick_on = client_ip\nsticky_cookie = S", "either sticky_cookie or stick_on"),
    ],
)
def test_bad_stick_keys_name_the_file_line_section_and_key(keys: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        loads(POOL.format(keys=keys), "p.ini")
    found = [str(e) for e in info.value.errors]
    assert any(message in error for error in found), found


def test_only_routes_to_a_pool_with_a_stick_table_run_the_step() -> None:
    from proxyd.accesslog import AccessLog
    from proxyd.config.model import HttpListenerConfig, ProxyAction, RouteConfig, RouteMatch
    from proxyd.relay.http.listener import HttpRelayFactory
    from proxyd.relay.http.upstream import ConnectionPool
    from proxyd.resources import ProcessResources

    clock = MemoryReactorClock()
    servers = (ServerConfig(Address("127.0.0.1", 9001)),)
    configs = {
        "web": PoolConfig(name="web", servers=servers, stick=StickConfig("client_ip")),
        "api": PoolConfig(name="api", servers=servers),
    }
    routes = tuple(
        RouteConfig(name=name, match=RouteMatch(path=f"/{name}/"), action=ProxyAction(pool=name))
        for name in configs
    )
    factory = HttpRelayFactory(
        clock,
        HttpListenerConfig(name="front", listen="tcp:0", routes=routes),
        {name: Pool(config, clock) for name, config in configs.items()},
        {name: ConnectionPool(clock, config) for name, config in configs.items()},
        AccessLog(None, "test"),  # type: ignore[arg-type]
        {},
        None,
        resources=ProcessResources(sticks=StickTables(clock, None)),
    )
    assert "stick_on" in factory.chains["web"].names
    assert "stick_on" not in factory.chains["api"].names


CA = "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.skipif(not __import__("os").path.exists(CA), reason="no system CA bundle")
def test_the_ca_keys_of_every_redis_url() -> None:
    tls = f"stick_on = client_ip\nstick_store = rediss://h\nstick_ca = {CA}"
    stick = loads(POOL.format(keys=tls), "p.ini").pools["web"].stick
    assert stick is not None and stick.store is not None and stick.store.ca == CA
    cache = f"[cache c]\ncluster = rediss://h\ncluster_ca = {CA}\n"
    assert loads(POOL.format(keys="") + cache, "p.ini").caches["c"].cluster.ca == CA  # type: ignore[union-attr]
    for text, message in (
        (
            POOL.format(keys=f"stick_on = client_ip\nstick_ca = {CA}"),
            "[pool web] stick_ca: expected stick_store = rediss://",
        ),
        (
            POOL.format(keys="") + f"[cache c]\ncluster = redis://h\ncluster_ca = {CA}\n",
            "found redis://",
        ),
        (
            POOL.format(keys="")
            + f"[admin]\nlisten = tcp:9:interface=127.0.0.1\ncluster_ca = {CA}\n",
            "[admin] cluster_ca: expected cluster = rediss://",
        ),
    ):
        with pytest.raises(ConfigErrors) as info:
            loads(text, "p.ini")
        assert message in str(info.value)
