"""The process's connections to the Redis stores of its rate limits: one txredisapi pool per
store (URL, credentials, TLS), made when the first limit naming it is built and kept across
reloads, closed when the service stops.

Wiring: ProxydService owns one RedisClients (proxyd.resources); a listener's
RateLimitContext asks it for `call(store)`, the StoreCall its RedisLimits run the GCRA script
with (proxyd.ratelimit.redis_limit).

txredisapi (maintained, Twisted-native) keeps POOL_SIZE connections per store and reconnects
with a back-off of up to 10 s. A call runs gcra.LUA_SCRIPT by EVALSHA, and by EVAL (which
loads it) when Redis answers NOSCRIPT: after a restart, or on a new server. The password
goes to Redis in AUTH and nowhere else: the log and the metrics name a store by
RedisStore.display. With `rediss://`, the server's certificate is verified against the
system's CAs (or `store_ca`) and its name against the URL's host, as a pool's TLS is
(proxyd.tls.ClientTls).
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.config.ratelimit_model import RedisStore
from proxyd.config.tls_model import TlsClientConfig
from proxyd.ratelimit.gcra import LUA_SCRIPT, LUA_SHA1
from proxyd.ratelimit.redis_limit import StoreCall
from proxyd.tls import ClientTls

POOL_SIZE: Final = 4
"""Connections per store and process: calls for different keys go out side by side."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds a connection attempt may take (the calls themselves are bounded by each limit's
store_timeout)."""


class RedisClients:
    """One connection pool per store, made on first use."""

    def __init__(self) -> None:
        self._pools: dict[RedisStore, Any] = {}

    def call(self, store: RedisStore) -> StoreCall:
        import txredisapi  # type: ignore[import-untyped]  # only where a limit has a store

        pool = self._pools.get(store)
        if pool is None:
            pool = self._pools[store] = _connect(txredisapi, store)

        def run(key: str, args: tuple[str, ...]) -> Deferred[Any]:
            keys, argv = [key], list(args)
            called: Deferred[Any] = pool.evalsha(LUA_SHA1, keys, argv)

            def not_loaded(failure: Failure) -> Any:
                failure.trap(txredisapi.ScriptDoesNotExist)
                return pool.eval(LUA_SCRIPT, keys, argv)

            return called.addErrback(not_loaded)

        return run

    def close(self) -> None:
        """Close every pool (the service stops)."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.disconnect()


def _connect(txredisapi: Any, store: RedisStore) -> Any:
    tls: Any = False
    if store.tls:
        tls = ClientTls(f"redis {store.display}", TlsClientConfig(enabled=True, ca=store.ca))
        tls = tls.creator(store.host)
    return txredisapi.lazyConnectionPool(
        host=store.host,
        port=store.port,
        dbid=store.db,
        poolsize=POOL_SIZE,
        username=store.username,
        password=store.password,
        ssl_context_factory=tls,
        connectTimeout=CONNECT_TIMEOUT,
        convertNumbers=False,
    )
