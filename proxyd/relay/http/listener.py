"""The listening side of `[http NAME]` and `[https NAME]`: the factory that accepts client
connections (proxyd.relay.http.server's ClientConnection), and holds what they share: the
routes and their filter chains, the pools' connections, the send batch, the metrics, the
access log, TLS, and the drain and retire of every connection at a stop or a reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTCP
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.config.model import HttpListenerConfig
from proxyd.filters.auth import AuthContext
from proxyd.filters.concurrency import Concurrency
from proxyd.filters.local_answers import OriginCheck
from proxyd.filters.ratelimit import RateLimitContext
from proxyd.metrics import RelayStats
from proxyd.pool import Pool
from proxyd.relay.http import headers as policy
from proxyd.relay.http.chains import build_chains
from proxyd.relay.http.decide import Place
from proxyd.relay.http.exchange import Exchange
from proxyd.relay.http.forward_attempts import attempt_policy
from proxyd.relay.http.h1 import RequestReader
from proxyd.relay.http.messages import (
    HttpError,
    reason_phrase,
)
from proxyd.relay.http.outcome import (
    count,
    exchange_line,
    refusal_record,
)
from proxyd.relay.http.routing import RouteTable
from proxyd.relay.http.server import ClientConnection
from proxyd.relay.http.upstream import Upstreams
from proxyd.relay.io import (
    OpenConnections,
    SendBatch,
    listening_no_delay,
)
from proxyd.resources import ProcessResources
from proxyd.tls import ServerTls

_log = Logger(namespace="proxyd.relay.http")


class HttpRelayFactory(Factory[Any]):
    """The listening factory of one `[http NAME]`. (Factory[Any]: its ClientConnection is an
    IProtocol of its own, not the Twisted Protocol the type parameter asks for.)"""

    noisy = False

    def __init__(
        self,
        reactor: IReactorTCP,
        config: HttpListenerConfig,
        pools: Mapping[str, Pool],
        upstreams: Mapping[str, Upstreams],
        access_log: AccessLog,
        error_pages: Mapping[int, bytes] | None = None,
        websocket_only: OriginCheck | None = None,
        resources: ProcessResources | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well. With `websocket_only` (a [websocket]
        listener in passthrough mode) requests other than WebSocket upgrades from allowed
        Origins are refused. `resources` are the process's (proxyd.resources, owned by the
        service): password-check threads, what makes the rate limits' tables, the span
        export."""
        self.reactor = cast(Any, reactor)
        self.config = config
        resources = resources or ProcessResources()
        hash_threads = resources.hash_threads
        self.auth = AuthContext(
            self.reactor,
            listener=config.name,
            stats=lambda: self.stats,
            run_in_thread=None if hash_threads is None else hash_threads.run,
        )
        """What the routes' authentication runs with and starts (proxyd.filters.auth): started
        with the factory, stopped once its last connection is over."""
        self.ratelimits = RateLimitContext(
            self.reactor,
            listener=config.name,
            trusted=config.trusted_proxies,
            tables=resources.limit_tables,
            redis=resources.redis,
        )
        """The rate limits' tables and their sweep (proxyd.filters.ratelimit), with the same
        lifetime as `auth`."""
        otlp = resources.otlp
        self.spans = None if config.otlp is None or otlp is None else otlp.sink(config.otlp)
        """Where the exchanges' spans go (otlp_endpoint: proxyd.otlp)."""
        self.pools = pools
        self.upstreams = upstreams
        self.access_log = access_log
        self.error_pages = dict(error_pages or {})
        self.routes = RouteTable(config.routes)
        self.attempts = attempt_policy(config)
        self.queues: dict[str, Concurrency] = {}
        """The routes' max_in_flight queues, by route (proxyd.filters.concurrency)."""
        self.places: dict[tuple[bytes, bytes, bytes], Place] = {}
        """Where requests went, by target, Host and method (proxyd.relay.http.decide)."""
        self.chains = build_chains(
            config,
            {name: pool.config for name, pool in pools.items()},
            self.error_pages,
            websocket_only,
            self.auth,
            lambda: self.stats,
            self.ratelimits,
            self.queues,
            self.spans,
            resources.caches,
            resources.sticks,
        )
        """The filter chain of each route (proxyd.relay.http.chains)."""
        self.sends = SendBatch(self.reactor)
        self.no_delay_inherited = False
        """Accepted connections have TCP_NODELAY from the listening socket (set_listening_port)."""
        self.acme = resources.acme if config.tls is None else None
        """Answers http-01 challenges before routing ([http] listeners; proxyd.acme)."""
        self.tls: ServerTls | None = (
            ServerTls(
                f"https {config.name}",
                config.tls,
                [b"h2", b"http/1.1"] if config.http2 else [b"http/1.1"],
                resources.ocsp,
            )
            if config.tls is not None
            else None
        )
        self._trusted = config.trusted_proxies
        self.connections = 0
        self._clients: OpenConnections[ClientConnection] = OpenConnections()
        self.requests = 0
        self.tunnels = 0
        """Upgraded (WebSocket) connections open now."""
        self.tunnels_total = 0
        self.stats = RelayStats(
            "websocket" if websocket_only is not None else config.kind, config.name
        )

    @property
    def stats(self) -> RelayStats:
        """The metrics by route, pool and server (proxyd.metrics), counted by each exchange;
        a reload hands them to the relay that replaces this one, which then shows its rate
        limits in them."""
        return self._stats

    @stats.setter
    def stats(self, stats: RelayStats) -> None:
        self._stats = stats
        stats.limits = self.ratelimits.snapshot if self.ratelimits.limits else None
        stats.queues = self._queue_figures if self.queues else None

    def _queue_figures(self) -> dict[str, dict[str, float]]:
        return {route: queue.figures() for route, queue in self.queues.items()}

    def take_over(self, old: object) -> None:
        """A reload: this relay replaces `old` (the relay of the listener of the same name):
        its unchanged rate limits go on with `old`'s tables."""
        if isinstance(old, HttpRelayFactory):
            self.ratelimits.take_over(old.ratelimits)

    def may_open_tunnel(self) -> bool:
        limit = self.config.max_tunnels
        return limit == 0 or self.tunnels < limit

    def tunnel_opened(self) -> None:
        self.tunnels += 1
        self.tunnels_total += 1

    def tunnel_closed(self) -> None:
        self.tunnels -= 1

    @property
    def clients(self) -> set[ClientConnection]:
        """The client connections open now."""
        return self._clients.open

    def client_opened(self, client: ClientConnection) -> None:
        self.connections += 1
        self._clients.add(client)
        if self._clients.draining:
            client._last_request = True  # accepted as the listener closed: one request

    def client_closed(self, client: ClientConnection) -> None:
        self.connections -= 1
        self._clients.discard(client)

    def drain(self) -> Deferred[None]:
        """Stopping: let every client connection finish what it is doing (see
        ClientConnection.drain). Fires once none is left."""
        if not self._clients.draining:
            for client in list(self.clients):
                client.drain()
        return self._clients.drain().addCallback(self._over)

    def retire(self) -> Deferred[None]:
        """A reload replaced this listener's relay: every client connection finishes with
        its next response (see ClientConnection.retire). Fires once none is left."""
        for client in list(self.clients):
            client.retire()
        return self._clients.drain().addCallback(self._over)

    def _over(self, _: object) -> None:
        """The last connection is over (a stop, or a reload replaced this relay): what the
        routes' authentication started ends (JWKS refreshes, auth-service connections), and
        the rate limits' sweep."""
        self.auth.stop()
        self.ratelimits.stop()

    def close_all(self) -> None:
        """The drain time is up: close every client connection still open (with what its
        transport has buffered; the process ends soon after anyway)."""
        for client in list(self.clients):
            client.lose_connection()

    def startFactory(self) -> None:
        """Listening: the routes' authentication fetches its JWKS; the rate limits' sweep
        starts."""
        self.auth.start()
        self.ratelimits.start()

    def set_listening_port(self, port: Any) -> None:
        """HTTP listeners do not pause accepting. The connections it accepts get TCP_NODELAY
        from the listening socket where the kernel copies it (Linux), else each its own."""
        self.no_delay_inherited = listening_no_delay(port)

    def error_body(self, status: int) -> tuple[bytes, bytes]:
        """Body and Content-Type of proxyd's own answer `status`: the error page, if any."""
        page = self.error_pages.get(status)
        if page is not None:
            return page, b"text/html; charset=utf-8"
        return b"%d %s\n" % (status, reason_phrase(status)), b"text/plain; charset=utf-8"

    def new_reader(self) -> RequestReader:
        config = self.config
        return RequestReader(
            max_header_size=config.max_header_size,
            max_headers=config.max_headers,
            max_uri_length=config.max_uri_length,
            max_body_size=config.max_body_size,
        )

    def buildProtocol(self, addr: IAddress | None) -> ClientConnection:
        return ClientConnection(self)

    def is_trusted(self, host: str) -> bool:
        return policy.is_trusted(host, self._trusted)

    def exchange_over(self, exchange: Exchange) -> None:
        """Count the exchange in the metrics and write its access-log line
        (proxyd.relay.http.outcome)."""
        count(exchange)
        if self.access_log.enabled:
            now = self.reactor.seconds()
            self.access_log.write(exchange_line(exchange, now), self.reactor)

    def log_refusal(self, client: ClientConnection, error: HttpError) -> None:
        if self.access_log.enabled:
            now = self.reactor.seconds()
            record = refusal_record(self.config.name, client.peer_text, error, now)
            self.access_log.log(record, self.reactor)
