"""Purge fan-out (proxyd.cache.cluster and its driver cluster_link): messages, the log's
catch-up, a trimmed log, own purges, Redis down and back, on a fake Redis and a clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from proxyd.cache import cluster
from proxyd.cache.cluster import PurgeLog, PurgeMessage
from proxyd.cache.cluster_link import CALL_TIMEOUT, CONNECT_GRACE, ClusterLink
from proxyd.cache.instance import Counters, Purge
from proxyd.config.cache_model import CacheConfig
from proxyd.config.ratelimit_model import RedisStore

STORE = RedisStore("127.0.0.1", 6390, password="secret")


def message(origin: str = "other", purge: Purge | None = None) -> PurgeMessage:
    return PurgeMessage(origin, "static", purge or Purge(url="http://a/x"))


def test_message_round_trips_every_kind_of_purge() -> None:
    for purge in (
        Purge(url="http://a/b?c=1"),
        Purge(prefix="https://a/img/", soft=True),
        Purge(tag="product-7"),
    ):
        text = PurgeMessage("n1", "static", purge).encode()
        assert PurgeMessage.decode(text) == PurgeMessage("n1", "static", purge)
        ident, seq, decoded = cluster.split_published(f"1700000000000-3 42 {text}".encode())
        assert (ident, seq, decoded.purge) == ("1700000000000-3", 42, purge)


@pytest.mark.parametrize(
    "text",
    ["", "x", "1-0 1 {}", '1-0 1 {"o":"n","c":"s"}', "{} {}", '1-0 {"o":"n","c":"s","tag":"t"}'],
)
def test_garbage_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        cluster.split_published(text)


def test_ids_compare_as_redis_orders_them() -> None:
    assert cluster.entry_id("10-2") > cluster.entry_id("9-15")
    assert cluster.entry_id("10-10") > cluster.entry_id("10-9")


def test_own_purges_are_skipped_and_others_applied_once() -> None:
    log = PurgeLog("me", last="1-0", seq=1)
    assert log.caught_up([], "1-0") == ([], False)
    assert log.published("2-0", 2, message("me")) == []
    assert log.published("3-0", 3, message()) == [message()]
    assert log.published("3-0", 3, message()) == []  # the same id again
    assert (log.last, log.seq) == ("3-0", 3)


def test_catch_up_applies_what_was_missed_then_what_the_channel_held() -> None:
    log = PurgeLog("me", last="5-0", seq=5)
    held = message(purge=Purge(tag="late"))
    assert log.published("9-0", 9, held) == []  # waits for the read of the log
    entries = [("6-0", 6, message()), ("7-0", 7, message("me")), ("8-0", 8, None)]
    found, lost = log.caught_up([*entries, ("9-0", 9, held)], "9-0")
    assert found == [message(), held] and not lost
    assert (log.last, log.seq) == ("9-0", 9) and not log.catching_up


def test_a_log_trimmed_past_the_last_id_says_purges_were_lost() -> None:
    log = PurgeLog("me", last="5-0", seq=5)
    found, lost = log.caught_up([("20-0", 20, message())], "20-0")
    assert lost and found == [message()]
    # Its last purge trimmed, but not the next one: nothing was lost.
    assert PurgeLog("me", "5-0", 5).caught_up([("6-0", 6, message())], "6-0")[1] is False
    # A node that starts from now does not know the number it is at: it lost nothing.
    assert PurgeLog("me", "5-0").caught_up([("20-0", 20, message())], "20-0")[1] is False


def test_a_first_link_starts_at_the_newest_purge() -> None:
    log = PurgeLog("me")
    assert log.caught_up([], "42-0") == ([], False)
    assert log.last == "42-0"
    log = PurgeLog("me")
    log.caught_up([], None)  # no log yet: every purge from now on applies
    assert log.published("1-0", 1, message()) == [message()]


def test_a_node_without_a_remembered_id_starts_from_when_it_started() -> None:
    clock = Clock()
    clock.advance(1700000000.5)
    config = CacheConfig("static", cluster=STORE)
    link = ClusterLink(clock, config, "me", FakeRedis(), lambda: None)
    assert link.log.last == "1699999999500-0"


def test_a_node_started_from_now_learns_its_number_from_the_counter() -> None:
    node = Node()
    node.redis.counter = b"7"
    node.subscription["ready"]()
    assert node.link.log.seq == 7
    node.subscription["lost"]()
    node.redis.entries = [["99-0", ["m", message().encode(), "s", "30"]]]
    node.subscription["ready"]()
    assert node.counters.cluster_gaps == 1  # 8 to 29 were trimmed while it was away


def test_stream_info_and_log_entries_are_read_from_redis_replies() -> None:
    reply = ["length", "3", "last-generated-id", "9-1", "max-deleted-entry-id", "0-0"]
    assert cluster.stream_info(reply) == "9-1"
    entries = [[b"9-1", [b"m", message().encode().encode(), b"s", b"12"]], ["9-2", ["x", "y"]]]
    assert cluster.decode_entries(entries) == [("9-1", 12, message()), ("9-2", None, None)]


class FakeRedis:
    """Answers the commands ClusterLink sends; `down` fails them, `silent` never answers."""

    def __init__(self) -> None:
        self.down = False
        self.silent = False
        self.calls: list[tuple[Any, ...]] = []
        self.info: list[Any] = ["last-generated-id", "10-0"]
        self.entries: list[Any] = []
        self.counter: bytes | None = None

    def __call__(self, *args: Any) -> Deferred[Any]:
        self.calls.append(args)
        if self.silent:
            return Deferred()
        if self.down:
            return fail(ConnectionError("Connection refused"))
        if args[0] == "EVAL":
            return succeed(f"{20 + len(self.calls)}-0")
        if args[0] == "XINFO":
            return succeed(self.info)
        if args[0] == "GET":
            return succeed(self.counter)
        return succeed(self.entries)


class Node:
    def __init__(self, path: str | None = None) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.counters = Counters()
        self.applied: list[Purge] = []
        self.subscription: dict[str, Any] = {}

        def subscribe(channel: str, ready: Any, message: Any, lost: Any) -> Any:
            self.subscription.update(channel=channel, ready=ready, message=message, lost=lost)
            return lambda: self.subscription.clear()

        def apply(name: str, purge: Purge) -> Deferred[int]:
            self.applied.append(purge)
            return succeed(1)

        cache: Any = type("C", (), {"counters": self.counters})()
        config = CacheConfig("static", cluster=STORE, path=path, cluster_log=500)
        self.link = ClusterLink(
            self.clock, config, "me", self.redis, lambda: cache, apply, subscribe
        )


def test_a_purge_is_sent_with_the_log_length_and_counted() -> None:
    node = Node()
    node.link.announce(Purge(tag="t"))
    (call,) = node.redis.calls
    keys = ("proxyd:purge:static", "proxyd:purge:static:live", "proxyd:purge:static:seq")
    assert call[:6] == ("EVAL", cluster.PUBLISH_SCRIPT, 3, *keys)
    assert call[6] == 500
    assert PurgeMessage.decode(call[7]) == PurgeMessage("me", "static", Purge(tag="t"))
    assert node.counters.cluster_sent == 1 and not node.link.pending


def test_redis_down_logs_once_keeps_purges_and_sends_them_when_it_returns(
    caplog: Any,
) -> None:
    node = Node()
    logged: list[str] = []
    from twisted.logger import globalLogPublisher

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "proxyd.cache":
            logged.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    try:
        node.redis.down = True
        node.link.announce(Purge(url="http://a/1"))
        node.link.announce(Purge(url="http://a/2"))
        node.clock.advance(1)
        node.clock.advance(1)
        assert len(node.link.pending) == 2 and node.link.up is False
        assert sum("unreachable" in line for line in logged) == 1
        node.redis.down = False
        node.clock.advance(1)
        assert not node.link.pending and node.counters.cluster_sent == 2
        assert sum("answers again" in line for line in logged) == 1
    finally:
        globalLogPublisher.removeObserver(observe)


def test_a_call_that_hangs_is_cut_at_the_timeout() -> None:
    node = Node()
    node.redis.silent = True
    node.link.announce(Purge(url="http://a/1"))
    node.clock.advance(CALL_TIMEOUT)
    assert node.link.up is False and node.counters.cluster_errors == 1
    assert len(node.link.pending) == 1


def test_no_subscription_within_the_grace_is_logged_as_down() -> None:
    node = Node()
    node.clock.advance(CONNECT_GRACE)
    assert node.link.up is False


def test_subscribed_node_applies_others_purges_not_its_own() -> None:
    node = Node()
    node.clock.advance(5)
    node.subscription["ready"]()
    assert node.redis.calls[-1] == ("XRANGE", "proxyd:purge:static", "(0-0", "+")
    own = message("me").encode()
    node.subscription["message"](f"11-0 1 {own}".encode())
    node.subscription["message"](f"12-0 2 {message().encode()}".encode())
    assert node.applied == [Purge(url="http://a/x")] and node.counters.cluster_applied == 1


def test_a_returning_link_catches_up_and_a_trimmed_log_marks_everything_stale(
    tmp_path: Any,
) -> None:
    node = Node(str(tmp_path))
    node.subscription["ready"]()
    node.subscription["message"](f"11-0 4 {message().encode()}".encode())
    assert (tmp_path / "cluster-last-id").read_text().strip() == "11-0 4"
    node.subscription["lost"]()
    node.redis.info = ["last-generated-id", "30-0"]
    node.redis.entries = [["29-0", ["m", message(purge=Purge(tag="x")).encode(), "s", "9"]]]
    node.applied.clear()
    node.subscription["ready"]()
    assert node.redis.calls[-1] == ("XRANGE", "proxyd:purge:static", "(11-0", "+")
    assert node.applied == [*cluster.GAP_PURGES, Purge(tag="x")]
    assert node.counters.cluster_gaps == 1
    # A restart reads the last id kept in the disk tier's directory.
    restarted = Node(str(tmp_path)).link.log
    assert (restarted.last, restarted.seq) == ("29-0", 9)


REST = "[tcp t]\nlisten = tcp:1\npool = p\n[pool p]\nservers = 127.0.0.1:1\n"


def load_cache(keys: str) -> Any:
    from proxyd.config.load import loads

    return loads(f"[cache main]\n{keys}\n{REST}", "proxyd.ini").caches["main"]


def cache_errors(keys: str) -> list[str]:
    from proxyd.config.errors import ConfigErrors
    from proxyd.config.load import loads

    with pytest.raises(ConfigErrors) as info:
        loads(f"[cache main]\n{keys}\n{REST}", "proxyd.ini")
    return [str(e) for e in info.value.errors]


def test_cluster_keys_load_with_their_defaults() -> None:
    plain = load_cache("")
    assert plain.cluster is None and plain.cluster_log == 10_000
    found = load_cache(
        "cluster = redis://:pw@127.0.0.1:6390/2\ncluster_name = edge\ncluster_log = 50"
    )
    assert found.cluster == RedisStore("127.0.0.1", 6390, 2, password="pw")
    assert (found.cluster_name, found.cluster_log) == ("edge", 50)
    assert load_cache("cluster = off").cluster is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("cluster = http://127.0.0.1", "proxyd.ini:2: [cache main] cluster: expected"),
        ("cluster = local", "found 'local'"),
        ("cluster = redis://:pw@127.0.0.1:0", "expected a port from 1 to 65535"),
        ("cluster_log = 50", "proxyd.ini:2: [cache main] cluster_log: expected cluster ="),
        ("cluster = redis://h\ncluster_log = 5", "[cache main] cluster_log: expected"),
        ("cluster = redis://h\ncluster_name = a b", "[cache main] cluster_name: expected"),
    ],
)
def test_bad_cluster_keys_name_the_file_line_section_and_key(keys: str, message: str) -> None:
    found = cache_errors(keys)
    assert any(message in error for error in found), found
    assert not any("pw" in error for error in found)
