"""Servers' admin states shared through Redis (proxyd.admin.shared_state): changes sent and
applied, own changes skipped, the cluster's state taken when the link (re)starts, Redis down
and back, on a fake Redis and a clock; and the `[admin] cluster` keys."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from proxyd.admin.shared_state import (
    CALL_TIMEOUT,
    CONNECT_GRACE,
    SET_SCRIPT,
    SharedAdminState,
    decode,
    encode,
)
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.config.ratelimit_model import RedisStore


class FakeRedis:
    def __init__(self) -> None:
        self.hash: dict[str, str] = {}
        self.down = False
        self.silent = False
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        if self.silent:
            return Deferred()
        if self.down:
            return fail(ConnectionError("Connection refused"))
        if args[0] == "EVAL":
            self.hash[args[5]] = args[6]
            return succeed(1)
        return succeed([x for pair in self.hash.items() for x in pair])


class Node:
    def __init__(self, redis: FakeRedis | None = None) -> None:
        self.clock = Clock()
        self.redis = redis or FakeRedis()
        self.states: dict[tuple[str, str], str] = {("web", "a:1"): "ready"}
        self.sub: dict[str, Any] = {}

        def subscribe(channel: str, ready: Any, message: Any, lost: Any) -> Any:
            self.sub.update(channel=channel, ready=ready, message=message, lost=lost)
            return self.sub.clear

        def apply(pool: str, server: str, state: str) -> bool:
            if (pool, server) not in self.states or self.states[(pool, server)] == state:
                return False
            self.states[(pool, server)] = state
            return True

        self.link = SharedAdminState(
            self.clock, "redis://127.0.0.1:6390/0", "edge", self.redis, subscribe, apply
        )


def test_messages_round_trip_and_garbage_is_refused() -> None:
    assert decode(encode("o", "web", "a:1", "drain")) == ("o", "web", "a:1", "drain")
    for bad in ("", "{}", "[1]", '{"o": 1}'):
        with pytest.raises(ValueError):
            decode(bad)


def test_a_change_is_sent_to_the_hash_and_the_channel() -> None:
    node = Node()
    node.link.announce("web", "a:1", "drain")
    (call,) = node.redis.calls
    assert call[:5] == ("EVAL", SET_SCRIPT, 2, "proxyd:admin:edge", "proxyd:admin:edge:live")
    assert call[5:7] == ("web/a:1", "drain") and decode(call[7])[1:] == ("web", "a:1", "drain")
    assert node.link.counters["sent"] == 1 and not node.link.pending


def test_others_changes_apply_own_are_skipped_unknown_servers_left_alone() -> None:
    node = Node()
    node.sub["message"](encode(node.link.origin, "web", "a:1", "maint"))
    assert node.states[("web", "a:1")] == "ready"
    node.sub["message"](encode("other", "web", "a:1", "maint").encode())
    node.sub["message"](encode("other", "web", "zzz:9", "drain"))
    assert node.states == {("web", "a:1"): "maint"} and node.link.counters["applied"] == 1


def test_a_new_link_takes_the_clusters_state() -> None:
    redis = FakeRedis()
    redis.hash = {"web/a:1": "drain", "other/b:2": "maint"}
    node = Node(redis)
    node.sub["ready"]()
    assert redis.calls[-1] == ("HGETALL", "proxyd:admin:edge")
    assert node.states[("web", "a:1")] == "drain"


def test_redis_down_changes_wait_are_sent_first_when_it_returns_logged_once_each() -> None:
    node = Node()
    node.sub["ready"]()
    with capturedLogs() as events:
        node.sub["lost"]()
        node.redis.down = True
        node.link.announce("web", "a:1", "drain")
        node.states[("web", "a:1")] = "maint"  # as the admin API does here
        node.link.announce("web", "a:1", "maint")  # the latest wins
        node.clock.advance(1)
        node.clock.advance(1)
        node.redis.down = False
        node.redis.hash = {"web/a:1": "ready"}  # stale: this node's change is newer
        node.sub["ready"]()
        node.clock.advance(1)
    assert node.redis.hash == {"web/a:1": "maint"}
    assert node.states[("web", "a:1")] == "maint"  # not undone by the stale hash
    assert node.link.counters["applied"] == 0
    lines = [e["log_format"] for e in events if e.get("log_namespace") == "proxyd.admin"]
    assert sum("unreachable" in line for line in lines) == 1
    assert sum("answers again" in line for line in lines) == 1


def test_a_silent_redis_is_cut_at_the_timeout_and_no_link_is_logged_after_the_grace() -> None:
    node = Node()
    node.redis.silent = True
    node.link.announce("web", "a:1", "drain")
    node.clock.advance(CALL_TIMEOUT)
    assert node.link.up is False and node.link.counters["errors"] == 1
    quiet = Node()
    quiet.clock.advance(CONNECT_GRACE)
    assert quiet.link.up is False


REST = "[tcp t]\nlisten = tcp:1\npool = p\n[pool p]\nservers = 127.0.0.1:1\n"


def test_admin_cluster_keys() -> None:
    text = "[admin]\nlisten = tcp:9901:interface=127.0.0.1\n"
    assert loads(text + REST, "p.ini").admin.cluster is None  # type: ignore[union-attr]
    admin = loads(
        text + "cluster = redis://:pw@127.0.0.1:6390/0\ncluster_name = eu\n" + REST, "p.ini"
    ).admin
    assert admin is not None and admin.cluster_name == "eu"
    assert admin.cluster == RedisStore("127.0.0.1", 6390, 0, password="pw")
    with pytest.raises(ConfigErrors) as info:
        loads(text + "cluster_name = eu\n" + REST, "p.ini")
    assert "p.ini:3: [admin] cluster_name: expected cluster = redis://...; found no cluster" in (
        str(info.value)
    )


def test_the_link_follows_the_config_across_reloads() -> None:
    from proxyd.admin.shared_state import AdminCluster
    from proxyd.config.model import AdminConfig

    made: list[Any] = []
    stopped: list[str] = []

    class Clients:
        def command(self, store: RedisStore) -> Any:
            made.append(store)
            return FakeRedis()

        def subscriber(self, store: RedisStore) -> Any:
            return lambda channel, *_: lambda: stopped.append(channel)

    cluster = AdminCluster(Clock(), Clients(), lambda *_: False)
    store = RedisStore("127.0.0.1", 6390)
    admin = AdminConfig(listen="tcp:1", cluster=store)
    cluster.configure(admin)
    cluster.configure(admin)  # the same: kept
    assert made == [store] and cluster.figures() == {"sent": 0, "applied": 0, "errors": 0}
    cluster.configure(AdminConfig(listen="tcp:1", cluster=store, cluster_name="eu"))
    assert len(made) == 2 and stopped == ["proxyd:admin:proxyd:live"]
    cluster.configure(None)
    assert cluster.link is None and cluster.figures() is None
