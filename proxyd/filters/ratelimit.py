"""`ratelimits` on [http]/[https] listeners and [route] sections: the built-in filter that
counts requests against `[ratelimit NAME]` sections (docs/ratelimits.md), and the run-time
context that owns their tables on one listener.

For each request, right after `auth` in the chain (so that `key = auth` sees the identity):

1. The enforcing limits (the listener's, then the route's) are hit at once
   (proxyd.ratelimit.table.hit_all): every one is charged, or, when one refuses, none. A
   refusal answers the first refusing limit's `status` (429 by default) with proxyd's error
   page, `Retry-After` and the RateLimit fields (proxyd.ratelimit.headers), counted as
   `rate_limited`.
2. Then the dry-run limits, each on its own: one that would refuse only counts it and logs
   (at info, at most a line a second per limit), and the request goes on. A request the
   enforcing limits refused never reaches them.
3. The response (the server's, or proxyd's own error answer further down the chain) gets
   `RateLimit-Policy` and `RateLimit` for the enforcing limits, added to any the server sent
   (both are Structured Field Lists, which several field lines extend). Dry-run limits are
   invisible to clients.

A key is a request's client address (as `access` judges it: through trusted_proxies'
X-Forwarded-For), a header's value, the authenticated identity, the route's name, or a tuple
of several. A request without the header, or without an identity, is counted under its
client address (as Kong does), so that leaving the header out is no way around a limit.
Header values longer than 64 bytes are kept as a 16-byte BLAKE2b digest, so that a key's memory
stays small whatever a client sends; in hex, since keys are strings or tuples of them, which a
worker sends its master as JSON (proxyd.ratelimit.synced).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, Literal, Protocol, cast

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from proxyd.access.networks import Network
from proxyd.config.ratelimit_model import KeyPart, RateLimitConfig, RedisStore
from proxyd.filters.access import client_address
from proxyd.filters.api import HeadResult, Reject, header
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import ErrorKind
from proxyd.ratelimit.gcra import Gcra, Verdict
from proxyd.ratelimit.headers import Field, Policy, policy_field, response_fields
from proxyd.ratelimit.redis_limit import STORE_ALLOWED, STORE_DENIED, RedisLimit, StoreCall
from proxyd.ratelimit.table import LimitTable, hit_all

log = Logger(namespace="proxyd.ratelimit")

SWEEP_INTERVAL: Final = 1.0
"""Seconds between two sweeps of the idle keys of a listener's tables."""
LOG_INTERVAL: Final = 1.0
"""A dry-run limit logs at most one line this often."""
_LONGEST: Final = 64
"""Header values longer than this are counted by their digest."""

Key = Callable[[RelayExchange], Hashable]


RedisCalls = Callable[[RedisStore], StoreCall]
"""The StoreCall of a store's connection pool (proxyd.ratelimit.redis_client)."""


class TableSource(Protocol):
    """What makes the table of a limit on a listener: `local_tables` in one process, a
    worker's proxyd.ratelimit.synced.LimitSync.table with `workers = N`."""

    def __call__(self, listener: str, config: RateLimitConfig) -> LimitTable: ...


def local_tables(reactor: Any) -> TableSource:
    """Tables that count this process's requests alone."""

    def table(listener: str, config: RateLimitConfig) -> LimitTable:
        return LimitTable(Gcra(config.rate, config.burst), reactor, max_keys=config.max_keys)

    return table


class Limit:
    """One `[ratelimit NAME]` on one listener: its table, shared by every route that names
    it, and its policy for the response fields."""

    __slots__ = ("config", "logged_at", "policy", "table", "unlogged")

    def __init__(self, config: RateLimitConfig, table: LimitTable | RedisLimit) -> None:
        self.config = config
        self.table = table
        """Replaced by the table of the listener it succeeds at a reload (take_over)."""
        self.policy = Policy(config.name, table.gcra)
        self.logged_at = float("-inf")
        self.unlogged = 0
        """Dry run: requests it would have refused since its last log line."""

    def figures(self) -> dict[str, int]:
        table = self.table
        figures = {
            "allowed": table.allowed,
            "dry_run_limited" if self.config.dry_run else "limited": table.limited,
            "tracked": table.tracked,
            "evicted": table.evicted,
        }
        if isinstance(table, RedisLimit):
            figures["store_errors"] = table.store_errors
            figures["unchecked"] = table.unchecked
        return figures


class RateLimitContext:
    """The rate limits of one HTTP listener: made by its factory (HttpRelayFactory), one per
    factory, and handed to build_ratelimit() for each chain with limits. `start()` (the
    listener accepts) starts the sweep of idle keys, `stop()` (its last connection is over)
    ends it; a context never started holds no timer, so a factory built and dropped (a
    reload refused) leaks none."""

    def __init__(
        self,
        reactor: Any,
        *,
        listener: str,
        trusted: Sequence[Network],
        tables: TableSource | None = None,
        redis: RedisCalls | None = None,
    ) -> None:
        self.reactor = reactor
        self.listener = listener
        self.tables = tables or local_tables(reactor)
        self.redis = redis
        """The process's Redis clients, for limits with a store (proxyd.ratelimit.redis_client)."""
        self.trusted = tuple(trusted)
        self.limits: dict[str, Limit] = {}
        self._sweep: LoopingCall | None = None
        self.state: Literal["new", "started", "stopped"] = "new"

    def __repr__(self) -> str:
        return f"<RateLimitContext {self.listener} {self.state}: {sorted(self.limits)}>"

    def limit(self, config: RateLimitConfig) -> Limit:
        """The limit of `config` on this listener (one table, whichever routes name it)."""
        found = self.limits.get(config.name)
        if found is None:
            found = self.limits[config.name] = Limit(config, self._table(config))
        return found

    def _table(self, config: RateLimitConfig) -> LimitTable | RedisLimit:
        if config.store is None:
            return self.tables(self.listener, config)
        if self.redis is None:
            raise ValueError(f"ratelimit {config.name}: no Redis clients for its store")
        return RedisLimit(
            Gcra(config.rate, config.burst),
            config.name,
            self.reactor,
            self.redis(config.store),
            store=config.store.display,
            timeout=config.store_timeout,
            on_error=config.on_store_error,
            allowance=config.local_allowance,
            max_keys=config.max_keys,
        )

    def start(self) -> None:
        if self.state != "new":
            return
        self.state = "started"
        if self.limits:
            self._sweep = LoopingCall(self.sweep)
            self._sweep.clock = self.reactor
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def stop(self) -> None:
        self.state = "stopped"
        sweep, self._sweep = self._sweep, None
        if sweep is not None and sweep.running:
            sweep.stop()

    @property
    def sweeping(self) -> bool:
        return self._sweep is not None and self._sweep.running

    def sweep(self) -> None:
        """Forget the keys that owe nothing (a share of each table per call)."""
        for limit in self.limits.values():
            limit.table.sweep()

    def take_over(self, old: RateLimitContext) -> None:
        """A reload: each limit whose rate, burst, key and max_keys are unchanged goes on
        with the table of the listener this one replaces, so that no client gets a fresh
        burst from a reload."""
        for name, limit in self.limits.items():
            theirs = old.limits.get(name)
            if theirs is not None and limit.config.same_table(theirs.config):
                limit.table = theirs.table

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Each limit's counters and keys held, for the metrics (proxyd.metrics)."""
        return {name: limit.figures() for name, limit in self.limits.items()}


def build_ratelimit(limits: Sequence[RateLimitConfig], context: RateLimitContext) -> RateLimit:
    return RateLimit([context.limit(config) for config in limits], context)


class RateLimit:
    """Built in where a listener or its route has `ratelimits`."""

    def __init__(self, limits: Sequence[Limit], context: RateLimitContext) -> None:
        self.limits = tuple(limits)
        self.context = context
        trusted = context.trusted

        def client(exchange: RelayExchange) -> str:
            return client_address(exchange, trusted)

        def keyed(dry_run: bool, remote: bool) -> list[tuple[Limit, Key]]:
            return [
                (limit, key_function(limit.config.key, client))
                for limit in limits
                if limit.config.dry_run == dry_run and (limit.config.store is not None) == remote
            ]

        self._enforcing = keyed(False, False)
        self._remote = keyed(False, True)
        """Enforcing limits counted in Redis (proxyd.ratelimit.redis_limit): judged after
        the local ones, possibly waiting on Redis."""
        self._dry = keyed(True, False) + keyed(True, True)
        self._policy: Field | None = (
            policy_field([limit.policy for limit, _ in self._enforcing + self._remote])
            if self._enforcing or self._remote
            else None
        )

    def request_head(self, exchange: RelayExchange) -> HeadResult:
        enforcing = self._enforcing
        results: list[tuple[Policy, Verdict]] = []
        if len(enforcing) == 1:  # the common case, without hit_all's lists
            limit, key = enforcing[0]
            verdict = cast(LimitTable, limit.table).hit(key(exchange))
            results = [(limit.policy, verdict)]
            if not verdict.allowed:
                return self._refuse(results, [limit.config.name])
        elif enforcing:
            tables = [(cast(LimitTable, limit.table), key(exchange)) for limit, key in enforcing]
            verdicts = hit_all(tables)
            results = [
                (limit.policy, verdict)
                for (limit, _), verdict in zip(enforcing, verdicts, strict=True)
            ]
            refused = [
                limit.config.name
                for (limit, _), verdict in zip(enforcing, verdicts, strict=True)
                if not verdict.allowed
            ]
            if refused:
                return self._refuse(results, refused)
        if self._remote:
            return self._remote_head(exchange, results)
        self._dry_run(exchange)
        if results:
            exchange.add_response_fields(response_fields(results, self._policy))
        return None

    def _dry_run(self, exchange: RelayExchange) -> None:
        for limit, key in self._dry:
            self._dry_hit(limit.table.hit(key(exchange)), limit, exchange)

    def _remote_head(
        self, exchange: RelayExchange, results: list[tuple[Policy, Verdict]]
    ) -> HeadResult:
        pending = [
            (limit, cast(RedisLimit, limit.table).hit(key(exchange))) for limit, key in self._remote
        ]
        if all(isinstance(verdict, tuple) for _, verdict in pending):
            return self._judged(exchange, results, cast(list[tuple[Limit, Verdict]], pending))
        calls = [
            verdict if isinstance(verdict, Deferred) else succeed(verdict) for _, verdict in pending
        ]
        return gatherResults(calls, consumeErrors=True).addCallback(
            lambda verdicts: self._judged(
                exchange,
                results,
                [(limit, v) for (limit, _), v in zip(pending, verdicts, strict=True)],
            )
        )

    def _judged(
        self,
        exchange: RelayExchange,
        results: list[tuple[Policy, Verdict]],
        remote: list[tuple[Limit, Verdict]],
    ) -> Reject | None:
        """The Redis limits' verdicts: a refusal, 503 where the store failed and the limit
        says deny, else the fields of every limit that Redis judged."""
        results = results + [
            (limit.policy, verdict)
            for limit, verdict in remote
            if verdict is not STORE_ALLOWED and verdict is not STORE_DENIED
        ]
        unchecked = [limit.config.name for limit, verdict in remote if verdict is STORE_DENIED]
        if unchecked:
            reject = Reject(
                503,
                f"rate limit store unavailable for {', '.join(unchecked)}",
                ErrorKind.RATELIMIT_STORE,
            )
            reject.headers.append((b"Retry-After", b"1"))
            return reject
        refused = [limit.config.name for limit, verdict in remote if not verdict.allowed]
        if refused:
            return self._refuse(results, refused)
        self._dry_run(exchange)
        if results:
            exchange.add_response_fields(response_fields(results, self._policy))
        return None

    def _refuse(self, results: list[tuple[Policy, Verdict]], refused: list[str]) -> Reject:
        status = self.context.limits[refused[0]].config.status
        reject = Reject(status, f"rate limited by {', '.join(refused)}", ErrorKind.RATE_LIMITED)
        reject.headers.extend(response_fields(results, self._policy))
        return reject

    def _dry_hit(
        self, verdict: Verdict | Deferred[Verdict], limit: Limit, exchange: RelayExchange
    ) -> None:
        """A dry-run limit's verdict, now or when Redis answers (nothing waits on it)."""
        if isinstance(verdict, Deferred):
            verdict.addCallback(self._dry_hit, limit, exchange)
        elif not verdict.allowed and verdict is not STORE_DENIED:
            self._would_refuse(limit, exchange)

    def _would_refuse(self, limit: Limit, exchange: RelayExchange) -> None:
        now = self.context.reactor.seconds()
        if now - limit.logged_at < LOG_INTERVAL:
            limit.unlogged += 1
            return
        log.info(
            "[{listener}] ratelimit {limit} (dry_run) would refuse {method} {path} from"
            " {client} ({more} more since the last line)",
            listener=self.context.listener,
            limit=limit.config.name,
            method=exchange.method,
            path=exchange.path[:200],
            client=exchange.client_ip,
            more=limit.unlogged,
        )
        limit.logged_at = now
        limit.unlogged = 0


def key_function(parts: Sequence[KeyPart], client: Key) -> Key:
    """What a limit counts a request by: one part's value, or a tuple of several."""
    getters = [_part(source, name, client) for source, name in parts]
    if len(getters) == 1:
        return getters[0]
    return lambda exchange: tuple(get(exchange) for get in getters)


def _part(source: str, name: str | None, client: Key) -> Key:
    if source == "client":
        return client
    if source == "route":
        return lambda exchange: exchange.route_name or ""
    if source == "auth":

        def identity(exchange: RelayExchange) -> Hashable:
            user = exchange.vars.get("auth_user")
            return ("client", client(exchange)) if user is None else str(user)

        return identity
    field = (name or "").encode("latin-1")

    def by_header(exchange: RelayExchange) -> Hashable:
        value = header(exchange.request_headers, field)
        if value is None:
            return ("client", client(exchange))
        if len(value) > _LONGEST:
            return hashlib.blake2b(value.encode("latin-1"), digest_size=16).hexdigest()
        return value

    return by_header
