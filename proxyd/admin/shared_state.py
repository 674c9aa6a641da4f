"""Servers' admin state (ready, drain, maint: the admin API's) shared by the nodes of a cluster
through Redis (`[admin] cluster = redis://...`): a hash `proxyd:admin:CLUSTER` holds each
server's state (field `POOL/SERVER`), and each change is published on
`proxyd:admin:CLUSTER:live`, both by one script.

A node applies the others' changes as they are published, and the whole hash when its link
(re)starts, so that a node that starts or comes back takes the cluster's state. Its own
changes (the admin API's) apply at once and are sent; while Redis is down they wait (the
latest per server) and are sent, before the hash is read again, once it answers. Every Redis
call is bounded by CALL_TIMEOUT; Redis going and coming back are logged once each. Servers
a node does not have are left alone; the master of `workers = N` holds the link and tells
its workers (ProxydService.server_changed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="proxyd.admin")

PREFIX: Final = "proxyd:admin:"
CALL_TIMEOUT: Final = 2.0
RETRY_INTERVAL: Final = 1.0
CONNECT_GRACE: Final = 5.0
SET_SCRIPT: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
"""
"""KEYS: the hash, the channel; ARGV: the field, the state, the message."""

Apply = Callable[[str, str, str], bool]
"""(pool, server, state) → whether this node has that server and changed it."""


def encode(origin: str, pool: str, server: str, state: str) -> str:
    return json.dumps({"o": origin, "pool": pool, "server": server, "state": state})


def decode(payload: str | bytes) -> tuple[str, str, str, str]:
    """(origin, pool, server, state); ValueError for anything else."""
    try:
        fields = json.loads(payload)
        return (str(fields["o"]), str(fields["pool"]), str(fields["server"]), str(fields["state"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not an admin state message: {e}") from None


class SharedAdminState:
    """The link of one process (the master, or the lone process) to the cluster's state."""

    def __init__(
        self,
        reactor: Any,
        store: str,
        cluster: str,
        redis: Callable[..., Deferred[Any]],
        subscribe: Callable[..., Callable[[], None]],
        apply: Apply,
    ) -> None:
        self._reactor = reactor
        self.store = store
        self.cluster = cluster
        self._redis = redis
        self._apply = apply
        self.origin = os.urandom(8).hex()
        self.pending: dict[tuple[str, str], str] = {}
        self.up: bool | None = None
        self.counters = {"sent": 0, "applied": 0, "errors": 0}
        self._sending = False
        self._retry: Any = None
        self._subscribed = False
        self._hash = PREFIX + cluster
        self._channel = PREFIX + cluster + ":live"
        self._stop = subscribe(self._channel, self._ready, self._message, self._lost)
        self._grace: Any = reactor.callLater(CONNECT_GRACE, self._not_yet)

    def announce(self, pool: str, server: str, state: str) -> None:
        """The admin API changed a server here: tell the other nodes."""
        self.pending[(pool, server)] = state
        if not self._sending and self._retry is None:
            self._send()

    def _send(self) -> None:
        self._retry = None
        if not self.pending:
            self._after_flush()
            return
        (pool, server), state = next(iter(self.pending.items()))
        self._sending = True
        message = encode(self.origin, pool, server, state)
        called = self._call(
            "EVAL", SET_SCRIPT, 2, self._hash, self._channel, f"{pool}/{server}", state, message
        )

        def sent(_: Any) -> None:
            self._sending = False
            if self.pending.get((pool, server)) == state:
                del self.pending[(pool, server)]
            self.counters["sent"] += 1
            self._answered()
            self._send()

        def failed(failure: Failure) -> None:
            self._sending = False
            self._failed(failure)
            self._retry = self._reactor.callLater(RETRY_INTERVAL, self._send)

        called.addCallbacks(sent, failed)

    def _ready(self) -> None:
        """Subscribed (again): send what waits, then take the cluster's whole state."""
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None
        self._subscribed = True
        if not self._sending and self._retry is None:
            self._send()

    def _after_flush(self) -> None:
        if not self._subscribed:
            return
        self._subscribed = False  # read once per (re)subscription

        def read(reply: Any) -> None:
            self._answered()
            items = list(reply or [])
            for field, state in zip(items[::2], items[1::2], strict=False):
                field = field.decode() if isinstance(field, bytes) else str(field)
                state = state.decode() if isinstance(state, bytes) else str(state)
                pool, _, server = field.partition("/")
                self._take(pool, server, state)

        def failed(failure: Failure) -> None:
            self._failed(failure)
            self._subscribed = True
            self._retry = self._reactor.callLater(RETRY_INTERVAL, self._send)

        self._call("HGETALL", self._hash).addCallbacks(read, failed)

    def _message(self, payload: Any) -> None:
        try:
            origin, pool, server, state = decode(payload)
        except ValueError as e:
            log.warn("admin state of cluster {cluster}: {why}", cluster=self.cluster, why=str(e))
            return
        if origin != self.origin:
            self._take(pool, server, state)

    def _take(self, pool: str, server: str, state: str) -> None:
        if (pool, server) in self.pending:
            return  # this node's newer change wins: it is being sent
        try:
            changed = self._apply(pool, server, state)
        except ValueError:
            return
        if changed:
            self.counters["applied"] += 1

    def _lost(self) -> None:
        self._subscribed = False
        if self.up:
            self._down("the connection was lost")

    def _call(self, *args: Any) -> Deferred[Any]:
        called: Deferred[Any] = self._redis(*args)
        return called.addTimeout(CALL_TIMEOUT, self._reactor)

    def _answered(self) -> None:
        if self.up is False:
            log.info(
                "admin state of cluster {cluster}: Redis at {store} answers again",
                cluster=self.cluster,
                store=self.store,
            )
        self.up = True

    def _failed(self, failure: Failure) -> None:
        self.counters["errors"] += 1
        if self.up is not False:
            self._down(failure.getErrorMessage() or repr(failure.value))

    def _not_yet(self) -> None:
        self._grace = None
        if self.up is None:
            self._down("no connection yet")

    def _down(self, why: str) -> None:
        self.up = False
        log.warn(
            "admin state of cluster {cluster}: Redis at {store} unreachable ({why}): drain "
            "and maint apply on this node only until it answers",
            cluster=self.cluster,
            store=self.store,
            why=why,
        )

    def close(self) -> None:
        for call in (self._retry, self._grace):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._grace = None
        self._stop()


class AdminCluster:
    """The `[admin] cluster` link of the process that serves the admin API, made, kept or
    closed as each config says; `clients` is the process's RedisClients."""

    def __init__(self, reactor: Any, clients: Any, apply: Apply) -> None:
        self._reactor = reactor
        self._clients = clients
        self._apply = apply
        self._settings: tuple[Any, str] | None = None
        self.link: SharedAdminState | None = None

    def configure(self, admin: Any) -> None:
        """Follow `admin` (an AdminConfig, or None): its cluster and cluster_name."""
        wanted = None
        if admin is not None and admin.cluster is not None:
            wanted = (admin.cluster, admin.cluster_name)
        if wanted == self._settings:
            return
        self.close()
        self._settings = wanted
        if wanted is not None:
            store, name = wanted
            self.link = SharedAdminState(
                self._reactor,
                store.display,
                name,
                self._clients.command(store),
                self._clients.subscriber(store),
                self._apply,
            )

    def announce(self, pool: str, server: str, state: str) -> None:
        if self.link is not None:
            self.link.announce(pool, server, state)

    def figures(self) -> dict[str, int] | None:
        return None if self.link is None else dict(self.link.counters)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        self._settings = None
