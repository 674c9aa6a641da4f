"""The driver of purge fan-out (proxyd.cache.cluster): each `[cache]` with `cluster` has a
ClusterLink per process that sends the purges made here (every process: the admin API's in
the master or the lone process, PURGE requests in whichever process serves them) and, in the
process that owns the disk tiers (the master of `workers = N`, or the lone process), listens
to the cluster's channel, reads the log after the last purge applied and applies what other
nodes purged through `apply` (ProxydService.purge_source: with workers, the master's, which
reaches every worker's memory tier over AMP).

Redis unreachable: purges made here are applied here (they already were) and wait, at most
MAX_PENDING of them, to be sent when Redis answers again (tried every RETRY_INTERVAL); the
subscription is retried by txredisapi (back-off up to RECONNECT_MAX). Both are logged once
when Redis goes and once when it returns. Every Redis call is bounded by CALL_TIMEOUT.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.cache import cluster
from proxyd.cache.instance import Cache, Purge
from proxyd.config.cache_model import CacheConfig

log = Logger(namespace="proxyd.cache")

CALL_TIMEOUT: Final = 2.0
RETRY_INTERVAL: Final = 1.0
MAX_PENDING: Final = 1000
CONNECT_GRACE: Final = 5.0
"""Seconds after start before a subscription not made yet is logged as Redis down."""
START_SKEW_MS: Final = 1000
"""A node without a remembered id applies the purges made from this long before it
started (clocks of nodes and Redis differ; an extra purge of an empty cache is harmless)."""
LAST_FILE: Final = "cluster-last-id"
"""In a disk tier's directory: the id and number of the last purge applied, read at start."""

Apply = Callable[[str, Purge], "Deferred[int]"]


class ClusterLink:
    """One `[cache]`'s fan-out in one process. `redis` runs a command (a txredisapi pool's
    execute_command); `subscribe(channel, ready, message, lost)` keeps a subscription
    (proxyd.ratelimit.redis_client.RedisClients.subscribe); both faked in the tests."""

    def __init__(
        self,
        reactor: Any,
        config: CacheConfig,
        origin: str,
        redis: Callable[..., Deferred[Any]],
        cache: Callable[[], Cache | None],
        apply: Apply | None = None,
        subscribe: Callable[..., Callable[[], None]] | None = None,
    ) -> None:
        assert config.cluster is not None
        self._reactor = reactor
        self.config = config
        self.store = config.cluster.display
        self.cluster = config.cluster_name or config.name
        self._redis = redis
        self._cache = cache
        self._apply = apply
        self.pending: deque[Purge] = deque()
        self.dropped = 0
        self._sending = False
        self._retry: Any = None
        self.up: bool | None = None
        """Redis answered (True), failed (False, logged), not asked yet (None)."""
        # Without a remembered id, the node starts from now (less a second of clock skew):
        # it holds nothing purged before, and applies every purge made since, even those
        # made while Redis was down when it started.
        started = f"{max(0, int(reactor.seconds() * 1000) - START_SKEW_MS)}-0"
        last, seq = self._read_last()
        self.log = cluster.PurgeLog(origin, last or started, seq)
        self._stop_subscription: Callable[[], None] | None = None
        self._grace: Any = None
        self._reading = False
        if apply is not None and subscribe is not None:
            self._stop_subscription = subscribe(
                cluster.channel(self.cluster), self._ready, self._message, self._lost
            )
            self._grace = reactor.callLater(CONNECT_GRACE, self._not_yet)

    # Sending.

    def announce(self, purge: Purge) -> None:
        """A purge made on this node: send it to the others (now, or once Redis answers)."""
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
            self._count("cluster_errors")
        self.pending.append(purge)
        if not self._sending and self._retry is None:
            self._send()

    def _send(self) -> None:
        self._retry = None
        if not self.pending:
            return
        purge = self.pending[0]
        message = cluster.PurgeMessage(self.log.origin, self.config.name, purge).encode()
        self._sending = True
        keys = (
            cluster.stream_key(self.cluster),
            cluster.channel(self.cluster),
            cluster.counter(self.cluster),
        )
        call = self._call(
            "EVAL", cluster.PUBLISH_SCRIPT, 3, *keys, self.config.cluster_log, message
        )

        def sent(ident: Any) -> None:
            self._sending = False
            if self.pending and self.pending[0] is purge:
                self.pending.popleft()
            self._count("cluster_sent")
            self._answered()
            if self.pending:
                self._send()

        def failed(failure: Failure) -> None:
            self._sending = False
            self._failed(failure)
            if self.pending and self._retry is None:
                self._retry = self._reactor.callLater(RETRY_INTERVAL, self._send)

        call.addCallbacks(sent, failed)

    # Receiving.

    def _ready(self) -> None:
        """Subscribed (again): read the log after the last purge applied."""
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        self._read_log()

    def _read_log(self) -> None:
        if self._reading:
            return
        self._reading = True
        key = cluster.stream_key(self.cluster)

        def info_failed(failure: Failure) -> Any:
            if "no such key" in str(failure.value).lower():
                return []
            return failure

        counted: list[int | None] = [None]

        def info(value: Any) -> Deferred[Any]:
            # The counter first: a purge numbered after it is in the log read next.
            text = value.decode() if isinstance(value, bytes) else str(value)
            counted[0] = int(text) if value is not None and text.isdigit() else None
            return self._call("XINFO", "STREAM", key).addErrback(info_failed)

        def read(info: Any) -> Deferred[Any]:
            newest = cluster.stream_info(info) if info else None
            last = self.log.last
            if last is None:
                return succeed(([], newest))
            return self._call("XRANGE", key, f"({last}", "+").addCallback(
                lambda reply: (reply, newest)
            )

        def apply(result: Any) -> Any:
            reply, newest = result
            last = self.log.last
            entries = cluster.decode_entries(reply or [])
            purges, lost = self.log.caught_up(entries, newest, counted[0])
            self._reading = False
            self._answered()
            if lost:
                log.warn(
                    "cache {cache}: the purge log of cluster {cluster} at {store} was trimmed "
                    "after {last}, the last purge applied here: purges were lost, every "
                    "response is marked stale",
                    cache=self.config.name,
                    cluster=self.cluster,
                    store=self.store,
                    last=last,
                )
                self._count("cluster_gaps")
                purges = [*(cluster.PurgeMessage("", "", p) for p in cluster.GAP_PURGES), *purges]
            elif purges:
                log.info(
                    "cache {cache}: {count} purges of cluster {cluster} applied after {last}",
                    cache=self.config.name,
                    count=len(purges),
                    cluster=self.cluster,
                    last=last,
                )
            self._run([m.purge for m in purges])

        def failed(failure: Failure) -> None:
            self._reading = False
            self._failed(failure)
            if self.log.catching_up and self._stop_subscription is not None:
                self._reactor.callLater(RETRY_INTERVAL, self._read_log)

        counter = self._call("GET", cluster.counter(self.cluster)).addCallback(info)
        counter.addCallback(read).addCallbacks(apply, failed)

    def _message(self, payload: Any) -> None:
        try:
            ident, seq, message = cluster.split_published(payload)
        except ValueError as e:
            log.warn("cache {cache}: {why}", cache=self.config.name, why=str(e))
            return
        self._run([m.purge for m in self.log.published(ident, seq, message)])

    def _lost(self) -> None:
        self.log.link_lost()
        self._reading = False
        if self.up:
            self._down("the connection was lost")

    def _run(self, purges: list[Purge]) -> None:
        if not purges or self._apply is None:
            self._save_last()
            return
        calls = []
        for purge in purges:
            try:
                calls.append(self._apply(self.config.name, purge))
            except KeyError:
                continue  # a cache this config no longer has
            except Exception:
                log.failure("cache {cache}: applying {purge}", cache=self.config.name, purge=purge)
                continue
            self._count("cluster_applied")
        DeferredList(calls, consumeErrors=True)
        self._save_last()

    # State.

    def _call(self, *args: Any) -> Deferred[Any]:
        called: Deferred[Any] = self._redis(*args)
        return called.addTimeout(CALL_TIMEOUT, self._reactor)

    def _answered(self) -> None:
        if self.up is False:
            log.info(
                "cache {cache}: purge fan-out of cluster {cluster}: Redis at {store} answers "
                "again ({pending} purges waiting to be sent)",
                cache=self.config.name,
                cluster=self.cluster,
                store=self.store,
                pending=len(self.pending),
            )
        self.up = True

    def _failed(self, failure: Failure) -> None:
        self._count("cluster_errors")
        if self.up is not False:
            self._down(failure.getErrorMessage() or repr(failure.value))

    def _not_yet(self) -> None:
        self._grace = None
        if self.up is None:
            self._down("no connection yet")

    def _down(self, why: str) -> None:
        self.up = False
        log.warn(
            "cache {cache}: purge fan-out of cluster {cluster}: Redis at {store} unreachable "
            "({why}): purges apply on this node only, and are sent once it answers",
            cache=self.config.name,
            cluster=self.cluster,
            store=self.store,
            why=why,
        )

    def _count(self, field: str) -> None:
        cache = self._cache()
        if cache is not None:
            setattr(cache.counters, field, getattr(cache.counters, field) + 1)

    def _last_path(self) -> str | None:
        path = self.config.path
        return None if path is None else os.path.join(path, LAST_FILE)

    def _read_last(self) -> tuple[str | None, int | None]:
        """The id and number of the last purge applied, as kept in the disk tier's
        directory (`ID SEQ`)."""
        path = self._last_path()
        if path is None:
            return None, None
        try:
            with open(path, encoding="ascii") as f:
                ident, _, seq = f.read().strip().partition(" ")
            cluster.entry_id(ident)
        except (OSError, ValueError):
            return None, None
        return ident, int(seq) if seq.isdigit() else None

    def _save_last(self) -> None:
        path, last, seq = self._last_path(), self.log.last, self.log.seq
        if path is None or last is None:
            return
        try:
            with open(path + ".tmp", "w", encoding="ascii") as f:
                f.write(f"{last} {'' if seq is None else seq}".strip() + "\n")
            os.replace(path + ".tmp", path)
        except OSError as e:
            log.warn(
                "cache {cache}: cannot keep {path}: {why}", cache=self.config.name, path=path, why=e
            )

    def close(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        if self._stop_subscription is not None:
            self._stop_subscription()
            self._stop_subscription = None


class PurgeFanout:
    """The ClusterLinks of a process, by cache name, following the config across reloads."""

    def __init__(
        self,
        reactor: Any,
        clients: Any,
        caches: Callable[[str], Cache | None],
        apply: Apply | None,
    ) -> None:
        """`clients` is the process's RedisClients; `apply` is None in a worker (it sends,
        the master listens)."""
        self._reactor = reactor
        self._clients = clients
        self._caches = caches
        self._apply = apply
        self.origin = os.urandom(8).hex()
        self.links: dict[str, ClusterLink] = {}

    def configure(self, configs: Mapping[str, CacheConfig]) -> None:
        """Make the links of the caches with `cluster`, keep those unchanged, close the rest."""
        for name, link in list(self.links.items()):
            config = configs.get(name)
            if config is None or _link_settings(config) != _link_settings(link.config):
                link.close()
                del self.links[name]
        for name, config in configs.items():
            if config.cluster is None or name in self.links:
                continue
            store = config.cluster
            self.links[name] = ClusterLink(
                self._reactor,
                config,
                self.origin,
                self._clients.command(store),
                lambda name=name: self._caches(name),  # type: ignore[misc]
                self._apply,
                None if self._apply is None else self._clients.subscriber(store),
            )

    def announce(self, name: str, purge: Purge) -> None:
        link = self.links.get(name)
        if link is not None:
            link.announce(purge)

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()


def _link_settings(config: CacheConfig) -> tuple[object, ...]:
    return (config.cluster, config.cluster_name, config.cluster_log, config.path)
