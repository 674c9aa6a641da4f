"""The process's connections to its Redis stores (the rate limits', the caches' purge fan-out,
the sticky tables): one txredisapi pool per store (URL, credentials, TLS), made when the
first user naming it is built and kept across reloads, closed when the service stops; and
the subscriptions of the purge fan-out, one connection each (proxyd.cache.cluster_link).

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

from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.python.failure import Failure

from proxyd.config.ratelimit_model import RedisStore
from proxyd.config.tls_model import TlsClientConfig
from proxyd.ratelimit.gcra import LUA_SCRIPT, LUA_SHA1
from proxyd.ratelimit.redis_limit import StoreCall
from proxyd.tls import ClientTls

POOL_SIZE: Final = 4
"""Connections per store and process: calls for different keys go out side by side."""
RECONNECT_MAX: Final = 2.0
"""The longest wait between two tries of a subscription's connection."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds a connection attempt may take (the calls themselves are bounded by each limit's
store_timeout)."""


class RedisClients:
    """One connection pool per store, made on first use."""

    def __init__(self, reactor: Any) -> None:
        """`reactor` connects the subscriptions (the pools are txredisapi's, on its own)."""
        self._reactor = reactor
        self._pools: dict[RedisStore, Any] = {}
        self._subscribers: list[Any] = []

    def _pool(self, store: RedisStore) -> Any:
        import txredisapi  # type: ignore[import-untyped]  # only where a store is used

        pool = self._pools.get(store)
        if pool is None:
            pool = self._pools[store] = _connect(txredisapi, store)
        return pool

    def command(self, store: RedisStore) -> Callable[..., Deferred[Any]]:
        """Runs one Redis command (its words) on the store's pool; fires with the reply."""
        pool = self._pool(store)

        def run(*args: Any) -> Deferred[Any]:
            return pool.execute_command(*args)

        return run

    def subscriber(self, store: RedisStore) -> Callable[..., Callable[[], None]]:
        """`subscribe(channel, ready, message, lost)`: keeps one connection subscribed to
        `channel`, reconnecting with a back-off (at most RECONNECT_MAX); `ready()` once
        subscribed (again), `message(payload)` for each message, `lost()` when it drops.
        Answers the function that ends it."""

        def subscribe(
            channel: str,
            ready: Callable[[], None],
            message: Callable[[Any], None],
            lost: Callable[[], None],
        ) -> Callable[[], None]:
            import txredisapi

            factory = _subscriber(txredisapi, self._reactor, store, channel, ready, message, lost)
            self._subscribers.append(factory)

            def stop() -> None:
                if factory in self._subscribers:
                    self._subscribers.remove(factory)
                factory.disconnect()

            return stop

        return subscribe

    def call(self, store: RedisStore) -> StoreCall:
        import txredisapi

        pool = self._pool(store)

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
        subscribers, self._subscribers = self._subscribers, []
        for factory in subscribers:
            factory.disconnect()


def _tls(store: RedisStore) -> Any:
    if not store.tls:
        return False
    tls = ClientTls(f"redis {store.display}", TlsClientConfig(enabled=True, ca=store.ca))
    return tls.creator(store.host)


def _subscriber(
    txredisapi: Any,
    reactor: Any,
    store: RedisStore,
    channel: str,
    ready: Callable[[], None],
    message: Callable[[Any], None],
    lost: Callable[[], None],
) -> Any:
    class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
        def connectionMade(self) -> Any:
            made = super().connectionMade()

            def subscribe(_: Any) -> Any:
                if self.connected:
                    return self.subscribe(channel).addCallback(lambda _: ready())
                return None

            return made.addCallback(subscribe).addErrback(lambda _: self.transport.loseConnection())

        def messageReceived(self, pattern: Any, channel: Any, payload: Any) -> None:
            message(payload)

        def connectionLost(self, why: Any) -> None:
            super().connectionLost(why)
            lost()

    factory = txredisapi.RedisFactory(
        store.display,
        store.db,
        1,
        True,
        txredisapi.ConnectionHandler,
        "utf-8",
        store.password,
        None,
        False,
        store.username,
    )
    factory.protocol = Subscriber
    factory.maxDelay = RECONNECT_MAX
    endpoint: Any = HostnameEndpoint(reactor, store.host, store.port, timeout=CONNECT_TIMEOUT)
    if store.tls:
        endpoint = wrapClientTLS(_tls(store), endpoint)
    factory.startConnecting(endpoint)
    return factory


def _connect(txredisapi: Any, store: RedisStore) -> Any:
    tls = _tls(store)
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
