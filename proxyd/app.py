"""The service tree of a validated Config: the health service, the relays' listeners and the
admin listener, over shared pools; at a reload, the next config applied to it.

A reload is a new tree applied by difference (design.md principle 8): the next generation is
built from the one serving (proxyd.generation: unchanged pools, health state and access logs
carry on, the relays are new), its listeners take over the sockets of the same addresses
(proxyd.reloading), and the relays replaced are retired: their connections finish on them
(proxyd.lifetime, which also drains every relay at a stop). The reload itself, from reading the
file to retiring the relays it replaced, is the service's base class (proxyd.service_reload).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from proxyd import lifetime
from proxyd.acme.service import AcmeService
from proxyd.admin.api import AdminResource, AdminSite
from proxyd.admin.shared_state import AdminCluster
from proxyd.admin.status import status_document
from proxyd.auth.threads import HashThreads
from proxyd.cache.cluster_link import PurgeFanout
from proxyd.cache.instance import Cache, Purge
from proxyd.cache.registry import CacheRegistry
from proxyd.config.model import Config
from proxyd.config.warnings import warnings
from proxyd.discovery.common import server_of
from proxyd.discovery.service import DiscoveryService
from proxyd.filters.ratelimit import TableSource
from proxyd.filters.stick import StickTables
from proxyd.generation import Generation, build
from proxyd.health import HealthService
from proxyd.lifetime import CLOSE_GRACE, Retired
from proxyd.listen_sockets import SharedPort
from proxyd.listeners import ListenerService, RelayListener, StartupError
from proxyd.ocsp_stapling import OcspStapling
from proxyd.otlp import OtlpExport
from proxyd.pool import Pool, Server
from proxyd.ratelimit.redis_client import RedisClients
from proxyd.relay.http.h2_upstream_metrics import H2Metrics
from proxyd.relay.http.routing import unreachable
from proxyd.relay.http.upstream import Upstreams
from proxyd.relay.io import retain_freed_memory
from proxyd.reloading import ReloadOutcome, sighup_reload
from proxyd.resources import ProcessResources
from proxyd.service_reload import ReloadingService
from proxyd.stopping import GracefulStop, on_sigusr1

__all__ = ["CLOSE_GRACE", "ProxydService", "ReloadOutcome", "sighup_reload"]

log = Logger()


class ProxydService(ReloadingService):
    """The whole proxy: the health service, every listener and the admin listener, over
    shared pools."""

    def __init__(
        self,
        reactor: Any,
        config: Config,
        handle_signals: bool = False,
        worker: bool = False,
        source: str | None = None,
        limit_tables: TableSource | None = None,
    ) -> None:
        """With `handle_signals`, SIGHUP reloads the config file (reload()), SIGUSR1 reopens
        the access logs and SIGTERM or SIGINT stop gracefully (proxyd.stopping).
        A `worker` process runs no health checks (its health state comes from the master,
        through set_health()), no admin listener, and leaves the config's warnings to the
        master. `source` is the text `config` was loaded from, for its warnings' lines.
        `limit_tables` makes the rate limits' tables (a worker's are kept for the whole
        machine: proxyd.ratelimit.synced); by default each counts this process alone."""
        super().__init__()
        self._reactor = reactor
        self._handle_signals = handle_signals
        self._worker = worker
        self._source = source
        self.generation = 1
        """Counts the configs served: 1 at start, one more at each reload."""
        self.loaded = reactor.seconds()
        """When the config serving now was loaded."""
        self.hash_threads = HashThreads(reactor)
        """The password-check threads of basic auth, for every generation: started with the
        service, stopped once its connections have drained (proxyd.auth.threads)."""
        self.redis = RedisClients(reactor)
        """The rate limits' Redis connections, for every generation; closed at the end."""
        self.otlp = OtlpExport(reactor)
        """The span export to collectors (otlp_endpoint), for every generation: flushed and
        shut down once the connections have drained (proxyd.otlp)."""
        self.caches = CacheRegistry(reactor)
        """The [cache] sections' storage, for every generation; closed at the end."""
        self.fanout = PurgeFanout(
            reactor,
            self.redis,
            self.caches.find,
            None if worker else lambda name, purge: self.purge_source(name, purge),
        )
        """The purge fan-out of the caches with `cluster` (proxyd.cache.cluster_link): a
        worker sends its purges, the master (or a lone process) listens too."""
        self.caches.announce = self.fanout.announce
        self.shared_admin = AdminCluster(reactor, self.redis, self._apply_shared_admin)
        """The servers' admin states shared with the other nodes ([admin] cluster), in the
        process that has the admin API (proxyd.admin.shared_state)."""
        self.ocsp = OcspStapling(reactor)
        """The OCSP responses the TLS listeners staple, for every generation: fetched once
        the service starts in a process that serves handshakes (not a master of workers,
        whose workers each fetch their own)."""
        self.acme = AcmeService(reactor, config.acme, order=not worker)
        """The [acme] sections' certificates: ordered here unless this is a worker, which
        loads them from storage when the master says (proxyd.acme)."""
        self.h2_upstreams = H2Metrics()
        """The HTTP/2 pools' connections and streams, for every generation
        (proxyd.relay.http.h2_upstream_metrics)."""
        self.sticks = StickTables(reactor, self.redis.command)
        """The pools' stick tables (stick_on), for every generation."""
        self.resources = ProcessResources(
            sticks=self.sticks,
            hash_threads=self.hash_threads,
            limit_tables=limit_tables,
            redis=self.redis.call,
            otlp=self.otlp,
            caches=self.caches,
            ocsp=self.ocsp,
            acme=self.acme,
            h2_upstreams=self.h2_upstreams,
        )
        """What every generation's relays share (proxyd.resources)."""
        self.serving: Generation = build(reactor, config, resources=self.resources)
        self.ocsp.serve(config)
        self._retired = Retired()
        """Relays a reload replaced, until their last connection ends."""
        self.shared_workers = 0
        """In a master: how many workers bind_shared() binds each listener's sockets for."""
        self.acme.setServiceParent(self)
        self.health: HealthService | None = None
        self.discovery: DiscoveryService | None = None
        """The pools' service discovery (proxyd.discovery); a worker's discovered servers
        come from the master, through set_discovered()."""
        if not worker:
            self.health = HealthService(reactor, self.pools)
            self.health.setServiceParent(self)
            self.discovery = DiscoveryService(reactor, self.pools)
            self.discovery.setServiceParent(self)
        for listener in self.listeners:
            listener.setServiceParent(self)

        self.counters_source: Callable[[], Deferred[dict[str, Any]]] = lambda: succeed(
            self.counters()
        )
        """Where status() takes the counters from: this process, or the master's sum over
        its workers (proxyd.workers.master sets it)."""
        self.reload_source: Callable[[bool], Deferred[ReloadOutcome]] = lambda force: succeed(
            self.reload(force)
        )
        """What SIGHUP and the admin API's reload run, with its `force`: reload() here, or the
        master's, which reloads its workers too."""
        self.server_changed: Callable[[Server, str], None] = lambda server, who: None
        """Called after the admin API changed a server (the master tells its workers)."""
        self.purge_source: Callable[[str, Purge], Deferred[int]] = lambda name, purge: succeed(
            self.purge_cache(name, purge)
        )
        """What the admin API's purge runs: purge_cache() here, or the master's, which
        purges the disk tiers itself and every worker's memory tiers (KeyError: no such
        cache)."""
        self.admin: ListenerService | None = None
        self.admin_resource: AdminResource | None = None
        if config.admin is not None and not worker:
            self.admin_resource = AdminResource(self, config.admin)
            self.admin = self._admin_listener(config)
            self.admin.setServiceParent(self)

    @property
    def config(self) -> Config:
        return self.serving.config

    @property
    def pools(self) -> dict[str, Pool]:
        return self.serving.pools

    @property
    def upstreams(self) -> dict[str, Upstreams]:
        """Upstream keep-alive connections, per pool, shared by every HTTP listener."""
        return self.serving.upstreams

    @property
    def listeners(self) -> list[RelayListener]:
        return self.serving.listeners

    def _admin_listener(self, config: Config) -> ListenerService:
        assert config.admin is not None and self.admin_resource is not None
        return ListenerService(
            self._reactor, "admin", config.admin.listen, AdminSite(self.admin_resource)
        )

    def bind(self) -> None:
        """Listen on every listener now; on failure undo what was bound and raise."""
        everything = [*self.listeners, *([self.admin] if self.admin is not None else [])]
        try:
            for listener in everything:
                listener.bind()
        except StartupError:
            for listener in everything:
                listener.close()
            raise

    def bind_shared(self, workers: int) -> dict[str, SharedPort]:
        """As bind(), for `workers` worker processes: the sockets to pass them, by listener."""
        self.shared_workers = workers
        try:
            for listener in self.listeners:
                listener.bind_shared(workers)
            if self.admin is not None:
                self.admin.bind()  # the master's own
        except StartupError:
            for listener in self.listeners:
                listener.close()
            raise
        return self.shared()

    def shared(self) -> dict[str, SharedPort]:
        """In a master, the sockets of every listener for its workers, by listener."""
        return {
            listener.name: listener.shared
            for listener in self.listeners
            if listener.shared is not None
        }

    def status(self) -> Deferred[dict[str, Any]]:
        """The admin API's status document, with the counters of now."""
        return self.counters_source().addCallback(
            lambda counters: status_document(self, counters, self._reactor.seconds())
        )

    def change_server(
        self, pool: str, server: str, admin: str | None, weight: int | None, who: str
    ) -> Server:
        """Set a server's admin state (ready, drain, maint) and/or weight, as `who` asked
        (the admin API). KeyError names what does not exist; ValueError what is refused."""
        found = self._server(pool, server)
        if weight is not None:
            self.pools[pool].set_weight(found, weight, who)
        if admin is not None:
            self.pools[pool].set_admin(found, admin, who)
        self.server_changed(found, who)
        if admin is not None:
            self.shared_admin.announce(pool, server, admin)
        return found

    def _apply_shared_admin(self, pool: str, server: str, state: str) -> bool:
        """Another node set `server` of `pool` to `state`: do it here (if it is ours)."""
        try:
            found = self._server(pool, server)
        except KeyError:
            return False
        if found.admin == state:
            return False
        self.pools[pool].set_admin(found, state, "another node (admin cluster)")
        self.server_changed(found, "another node (admin cluster)")
        return True

    def _server(self, pool: str, server: str) -> Server:
        if pool not in self.pools:
            raise KeyError(f"no pool {pool}")
        for candidate in self.pools[pool].servers:
            if candidate.name == server:
                return candidate
        raise KeyError(f"no server {server} in pool {pool}")

    def cache(self, name: str) -> Cache:
        """The [cache] `name`: the one open in this process, else the config's opened now (a
        section no route uses is still purged: a disk tier outlives its routes). KeyError
        when there is none."""
        found = self.caches.find(name)
        if found is not None:
            return found
        config = self.config.caches.get(name)
        if config is None:
            raise KeyError(f"no cache {name}")
        return self.caches.cache(config)

    def announce_purge(self, name: str, purge: Purge) -> None:
        """Send a purge the admin API made to the other nodes of the cache's cluster."""
        self.fanout.announce(name, purge)

    def purge_cache(self, name: str, purge: Purge, shared: bool = True) -> int:
        """Purge the [cache] `name` in this process: how many responses (Cache.purge; a
        worker, `shared` False, purges its memory tier alone). KeyError: no such cache."""
        return self.cache(name).purge(purge, self._reactor.seconds(), shared)

    def adopt(self, sockets: Mapping[str, tuple[int, int]]) -> None:
        """Accept on the sockets (fd, address family) the master passed, by listener."""
        for listener in self.listeners:
            fd, family = sockets[listener.name]
            listener.adopt(fd, family)
            log.debug("[{listener}] accepting", listener=listener.name)

    def set_health(self, pool: str, server: str, up: bool, reason: str) -> None:
        """The master's health checks' verdict on `server` of `pool` (in a worker)."""
        self.pools[pool].set_health(self._server(pool, server), up, reason)

    def set_discovered(self, pool: str, servers: list[str]) -> None:
        """The master's discovered servers of `pool`, as `servers` lines (in a worker)."""
        found = tuple(server_of(line) for line in servers)
        self.pools[pool].set_discovered(found)

    def set_server(self, pool: str, server: str, admin: str, weight: int, who: str) -> None:
        """The master's admin state and weight of `server` of `pool` (in a worker)."""
        found = self._server(pool, server)
        if found.weight != weight:
            self.pools[pool].set_weight(found, weight, who)
        if found.admin != admin:
            self.pools[pool].set_admin(found, admin, who)

    def counters(self) -> dict[str, Any]:
        """The relays' counters by listener, the connections open to each server, and the
        relays' metrics (proxyd.lifetime.counters), the HTTP/2 pools' connections and
        streams, the caches' figures (a worker's without the disk tiers it shares: its
        master shows them once), OCSP stapling's (in a process that staples) and the [acme]
        sections' (in the process that orders)."""
        found = lifetime.counters(self.listeners, self._retired, self.pools)
        h2_upstreams = self.h2_upstreams.snapshot()
        if h2_upstreams:
            found["http2_upstreams"] = h2_upstreams
        found["caches"] = self.caches.figures(disk=not self._worker)
        shared_admin = self.shared_admin.figures()
        if shared_admin is not None:
            found["admin_cluster"] = shared_admin
        sticks = self.sticks.figures()
        if sticks:
            found["stick_tables"] = sticks
        if self.ocsp.running:
            found["ocsp"] = self.ocsp.figures()
        acme = self.acme.figures()
        if acme:
            found["acme"] = acme
        return found

    def startService(self) -> None:
        # Process-wide: every relay's large reads (HTTP bodies, TCP and WebSocket streams)
        # are relayed without page faults from here on.
        retain_freed_memory()
        self.hash_threads.start()
        self.fanout.configure(self.config.caches)
        self.shared_admin.configure(None if self._worker else self.config.admin)
        if not self.shared_workers:
            self.ocsp.start()
        super().startService()
        self._warn(self.config, self._source)
        if self._handle_signals:
            signal.signal(signal.SIGHUP, self._on_sighup)
            on_sigusr1(self._reactor, self.reopen_logs)
            # After the reactor's own handlers, which it installs as it starts running.
            self._reactor.callWhenRunning(GracefulStop(self._reactor, self.close_now).install)

    def _warn(self, config: Config, source: str | None) -> None:
        for warning in [] if self._worker else warnings(config, source, unreachable):
            log.warn("{warning}", warning=warning)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(sighup_reload, self.reload_source)

    def _new_admin(self, config: Config) -> ListenerService | None:
        """The admin listener for `config`, bound, when its address changed (or it is new);
        None when the one listening now stays (or there is none)."""
        if self._worker or config.admin is None:
            return None
        old = self.config.admin
        if self.admin is not None and old is not None and old.listen == config.admin.listen:
            return None
        if self.admin_resource is None:
            self.admin_resource = AdminResource(self, config.admin)
        admin = self._admin_listener(config)
        admin.bind()
        return admin

    def reopen_logs(self) -> None:
        """Open the access-log files again by their paths (SIGUSR1, after logrotate moved
        them). A file that cannot be opened keeps being written where it was."""
        files = [
            log_file
            for log_file in self.serving.logs.values()
            if log_file.target not in ("-", "off")
        ]
        for log_file in files:
            try:
                log_file.reopen()
            except OSError as e:
                log.error(
                    "access log {path}: cannot open it again ({why}), still writing to the old"
                    " file",
                    path=log_file.target,
                    why=e.strerror or str(e),
                )
        log.info("access logs reopened ({count} files)", count=len(files))

    def close_now(self) -> None:
        """Close every relay's connections at once (a second SIGTERM while draining)."""
        lifetime.close_all(lifetime.relays(self.listeners, self._retired))

    def stopService(self) -> Any:
        """Stop accepting and checking, let the connections in flight finish (up to
        drain_timeout), then stop the pools, close the access logs, join the
        password-check threads (a request in flight may still be waiting on one) and send
        the spans still queued (up to proxyd.otlp.FLUSH_TIMEOUT)."""
        stopped = super().stopService()
        self.ocsp.stop()
        drained = lifetime.drain(
            self._reactor,
            lifetime.relays(self.listeners, self._retired),
            self.config.proxyd.drain_timeout,
        )

        def release(result: Any) -> Any:
            self.serving.abandon()
            self.hash_threads.stop()
            self.fanout.close()
            self.shared_admin.close()
            self.redis.close()
            self.caches.close()
            return self.otlp.stop().addCallback(lambda _: result)

        return DeferredList([maybeDeferred(lambda: stopped), drained]).addBoth(release)
