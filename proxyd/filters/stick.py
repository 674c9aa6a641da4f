"""A pool's `stick_on` (docs/health.md, "Stick tables across nodes"), beside sticky_cookie at
row 24 of the chain: the filter that sends a client to the server its key is stuck to, and
the tables it asks (proxyd.pool.stick_table has the local table, the record script and the
outage bookkeeping; this module asks Redis and the pool).

A request whose pool has a stick table and that carries the key (the cookie, the header, or
any client by its address) goes to the server the table names while it is available; a key
the table does not hold yet, or whose server is not available, gets the pool's pick, which is
recorded (in Redis, only if the key still holds what this node saw: racing nodes agree). With
`stick_on = cookie NAME`, a response that sets the cookie records its server for the new
value (HAProxy's `stick store-response`), without delaying the response.

A request waits on Redis at most `stick_timeout`; past it, or with Redis down, the node picks
alone (counted, logged once per outage). Routes whose pools have no stick table do not have
this filter (proxyd.relay.http.chains).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.config.model import PoolConfig
from proxyd.config.stick_model import StickConfig
from proxyd.filters.api import header
from proxyd.filters.internal import RelayExchange
from proxyd.filters.sticky import cookie
from proxyd.pool import Pool, Server
from proxyd.pool.stick_table import LOCAL_TTL, RECORD_SCRIPT, LocalTable, Outage, redis_key

log = Logger(namespace="proxyd.stick")

Command = Callable[..., "Deferred[Any]"]
COUNTERS = ("lookups", "recorded", "moved", "alone", "errors")
"""lookups: asked Redis; recorded: new keys written; moved: keys moved off a server not
available; alone: requests decided without Redis (timeouts, outage); errors: Redis calls that
failed or timed out."""


class StickTable:
    """One pool's table in one process."""

    def __init__(
        self, reactor: Any, pool: str, config: StickConfig, command: Command | None
    ) -> None:
        self._reactor = reactor
        self.pool = pool
        self.config = config
        self._command = command
        self._expire = max(1, round(config.expire))
        self.local = LocalTable()
        self.outage = Outage()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._cookie = None if config.name is None else config.name.encode("latin-1")

    def key_of(self, exchange: RelayExchange) -> str | None:
        source = self.config.source
        if source == "client_ip":
            return exchange.client_ip
        if source == "header":
            assert self.config.name is not None
            return header(exchange.request_headers, self.config.name) or None
        assert self._cookie is not None
        found = cookie(exchange.request_headers, self._cookie)
        return found.decode("latin-1") if found else None

    def resolve(self, pool: Pool, key: str) -> Server | Deferred[Server | None] | None:
        """The server for `key`: at once from the local table, else from Redis (a Deferred,
        bounded by stick_timeout), else the pool's pick (None: no server can take it)."""
        now = self._reactor.seconds()
        name = self.local.get(key, now)
        down: Server | None = None
        if name is not None:
            server = pool.find(name)
            if server is not None and server.is_available(now):
                if self._command is None or self.outage.down_since is not None:
                    # The node's own entry: each use makes it live stick_expire again.
                    self.local.put(key, name, now + self.config.expire)
                    if self._command is not None and self.outage.may_ask(now):
                        self._probe()
                return server
            self.local.forget(key)
            down = server
        if self._command is None or not self.outage.may_ask(now):
            return self._alone(pool, key, now, down)
        return self._ask(pool, key)

    def _alone(self, pool: Pool, key: str, now: float, down: Server | None) -> Server | None:
        """This node's pick, kept in its own table for stick_expire."""
        if self._command is not None:
            self.counters["alone"] += 1
            self.outage.decided_alone += 1
        pick = pool.pick(() if down is None else (down,))
        if pick is not None:
            self.local.put(key, pick.name, now + self.config.expire)
        return pick

    def _ask(self, pool: Pool, key: str) -> Deferred[Server | None]:
        assert self._command is not None
        command = self._command
        entry = redis_key(self.pool, key)
        self.counters["lookups"] += 1

        def found(value: Any) -> Any:
            self._answered()
            now = self._reactor.seconds()
            name = _text(value)
            server = None if name is None else pool.find(name)
            if server is not None and server.is_available(now):
                self.local.put(key, server.name, now + LOCAL_TTL)
                return server
            pick = pool.pick(() if server is None else (server,))
            if pick is None:
                return None
            if name is not None and server is None:
                # A server this node's pool does not have (the nodes' configs differ):
                # balanced here, the other nodes' entry left alone.
                self.local.put(key, pick.name, now + LOCAL_TTL)
                return pick
            return command(
                "EVAL", RECORD_SCRIPT, 1, entry, name or "", pick.name, self._expire
            ).addCallback(recorded, pick, name)

        def recorded(value: Any, pick: Server, previous: str | None) -> Server:
            now = self._reactor.seconds()
            name = _text(value)
            if name == pick.name:
                self.counters["moved" if previous else "recorded"] += 1
            server = None if name is None else pool.find(name)
            if server is None or not server.is_available(now):
                server = pick  # another node's choice, not available here: ours, unrecorded
            self.local.put(key, server.name, now + LOCAL_TTL)
            return server

        def failed(failure: Failure) -> Server | None:
            now = self._reactor.seconds()
            self.counters["errors"] += 1
            if self.outage.failed(now):
                log.warn(
                    "pool {pool}: stick table at {store} unreachable ({why}): this node "
                    "picks servers alone until it answers",
                    pool=self.pool,
                    store=self.config.store.display if self.config.store else "-",
                    why=_why(failure, self.config.timeout),
                )
            return self._alone(pool, key, now, None)

        asked: Deferred[Any] = command("GETEX", entry, "EX", self._expire)
        asked.addCallback(found)
        asked.addTimeout(self.config.timeout, self._reactor)
        return asked.addErrback(failed)

    def _probe(self) -> None:
        """Try Redis in the background (in an outage, when every request is answered from
        the node's own table): its answer ends the outage."""
        assert self._command is not None
        called: Deferred[Any] = self._command("PING")

        def failed(failure: Failure) -> None:
            self.counters["errors"] += 1
            self.outage.failed(self._reactor.seconds())

        called.addTimeout(self.config.timeout, self._reactor).addCallbacks(
            lambda _: self._answered(), failed
        )

    def _answered(self) -> None:
        alone = self.outage.answered()
        if alone is not None:
            self.local.clear()
            log.info(
                "pool {pool}: stick table at {store} answers again; {alone} requests were "
                "decided without it",
                pool=self.pool,
                store=self.config.store.display if self.config.store else "-",
                alone=alone,
            )

    def learn(self, key: str, server: Server) -> None:
        """A response set the stick cookie to `key` from `server`: record it, unless the key
        is taken (in the background: the response does not wait)."""
        now = self._reactor.seconds()
        self.local.put(key, server.name, now + (LOCAL_TTL if self._command else self.config.expire))
        if self._command is None or self.outage.down_since is not None:
            return
        entry = redis_key(self.pool, key)
        call: Deferred[Any] = self._command(
            "EVAL", RECORD_SCRIPT, 1, entry, "", server.name, self._expire
        )

        def done(value: Any) -> None:
            if _text(value) == server.name:
                self.counters["recorded"] += 1

        def failed(failure: Failure) -> None:
            self.counters["errors"] += 1

        call.addTimeout(self.config.timeout * 20, self._reactor).addCallbacks(done, failed)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _why(failure: Failure, timeout: float) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    if failure.check(DeferredTimeout):
        return f"no answer within {timeout * 1000:g} ms"
    return failure.getErrorMessage() or repr(failure.value)


class StickTables:
    """The process's stick tables, by pool, kept across reloads while a pool's settings are
    the same; `command` makes the Redis caller of a store (RedisClients.command)."""

    def __init__(self, reactor: Any, command: Callable[[Any], Command] | None) -> None:
        self._reactor = reactor
        self._command = command
        self.tables: dict[str, StickTable] = {}

    def for_pools(self, pools: Mapping[str, PoolConfig]) -> dict[str, StickTable]:
        """The tables of the pools with `stick_on` (made, or the ones open on the same
        settings)."""
        found: dict[str, StickTable] = {}
        for name, pool in pools.items():
            stick = pool.stick
            if stick is None:
                continue
            table = self.tables.get(name)
            if table is None or table.config != stick:
                command = None
                if stick.store is not None and self._command is not None:
                    command = self._command(stick.store)
                table = self.tables[name] = StickTable(self._reactor, name, stick, command)
            found[name] = table
        return found

    def figures(self) -> dict[str, dict[str, int]]:
        return {name: dict(table.counters) for name, table in self.tables.items()}


class StickOn:
    """The filter, on the proxied routes of a listener when a pool has `stick_on`."""

    def __init__(self, tables: Mapping[str, StickTable]) -> None:
        self.tables = tables

    def request_head(self, exchange: RelayExchange) -> Deferred[None] | None:
        pool = exchange.pool
        table = None if pool is None else self.tables.get(pool.name)
        if table is None or pool is None:
            return None
        key = table.key_of(exchange)
        exchange.vars["stick_key"] = key
        if key is None:
            return None
        found = table.resolve(pool, key)
        if isinstance(found, Deferred):
            return found.addCallback(_prefer, exchange)
        _prefer(found, exchange)
        return None

    def response_head(self, exchange: RelayExchange) -> None:
        pool = exchange.pool
        table = None if pool is None else self.tables.get(pool.name)
        server = exchange.upstream_server
        if table is None or server is None or table.config.source != "cookie":
            return
        value = _set_cookie(exchange.response_headers, table.config.name or "")
        if value and value != exchange.vars.get("stick_key"):
            table.learn(value, server)


def _prefer(server: Server | None, exchange: RelayExchange) -> None:
    if server is not None:
        exchange.prefer(server)


def _set_cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in headers:
        if key.lower() == b"set-cookie":
            pair = value.split(b";", 1)[0]
            cookie_name, _, cookie_value = pair.strip().partition(b"=")
            if cookie_name == wanted and cookie_value:
                return cookie_value.decode("latin-1")
    return None
