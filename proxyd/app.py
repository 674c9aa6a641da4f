"""Builds the service tree from a validated Config (pools, the health service, the relays'
listeners, the admin listener) and, at a reload, applies a new Config to it.

A reload is a new tree applied by difference (design.md principle 8): a listener whose address
is unchanged hands its socket to its successor, so no connection is refused; new addresses are
bound, removed ones stop accepting. Pools whose config is unchanged are kept as they are;
changed ones are rebuilt around the same Server objects, so health, passive-failure and admin
state and the connection counts carry on. The relays' factories are always new: each
connection keeps the factory (and so the config) it started on, and the replaced factories
finish what they have: an HTTP connection closes after its next response (Connection: close),
TCP and WebSocket connections go on until they end.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.admin.api import AdminResource, AdminSite
from proxyd.admin.status import status_document
from proxyd.cli import warnings
from proxyd.clock import DelayedCall
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import read
from proxyd.config.model import Config
from proxyd.config.reload import reload_config
from proxyd.health import HealthService
from proxyd.listeners import ListenerService, StartupError, UdpListenerService
from proxyd.pool import Pool, Server
from proxyd.relay.dns import DnsListener
from proxyd.relay.http.server import HttpRelayFactory
from proxyd.relay.http.upstream import ConnectionPool
from proxyd.relay.tcp import TcpRelayFactory
from proxyd.relay.udp import UdpListener
from proxyd.relay.websocket import WebSocketRelayFactory
from proxyd.relay.websocket_policy import OriginPolicy
from proxyd.stopping import GracefulStop, on_sigusr1
from proxyd.tls import ClientTls
from proxyd.workers.commands import add_counters
from proxyd.workers.sockets import SharedPort

log = Logger()

_GAUGES = ("connections", "tunnels", "active")
"""The relays' counters (attributes of their factories) that say how many are open now."""
_CUMULATIVE = (
    "requests",
    "tunnels_total",
    "total",
    "messages_in",
    "messages_out",
    "dropped_sessions",
    "dropped_oversized",
    "dropped_no_server",
    "malformed",
    "unmatched",
    "failed",
)
"""The relays' counters that only grow: a relay that replaces another at a reload carries
them on."""

CLOSE_GRACE = 5.0
"""Seconds the connections closed at drain_timeout have to go (and be logged) before the
stop goes on regardless."""


@attrs.frozen
class ReloadOutcome:
    """What a reload did: the generation serving now, or why the new file was refused."""

    reloaded: bool
    generation: int
    errors: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        return {"reloaded": self.reloaded, "generation": self.generation, "errors": [*self.errors]}


class ProxydService(service.MultiService):
    """The whole proxy: the health service, every listener and the admin listener, over
    shared pools."""

    def __init__(
        self, reactor: Any, config: Config, handle_signals: bool = False, worker: bool = False
    ) -> None:
        """With `handle_signals`, SIGHUP reloads the config file (reload()), SIGUSR1 reopens
        the access logs and SIGTERM or SIGINT stop gracefully (proxyd.stopping).
        A `worker` process runs no health checks (its health state comes from the master,
        through set_health()), no admin listener, and leaves the config's warnings to the
        master."""
        super().__init__()
        self._reactor = reactor
        self._handle_signals = handle_signals
        self._worker = worker
        self.config = config
        self.generation = 1
        """Counts the configs served: 1 at start, one more at each reload."""
        self.loaded = reactor.seconds()
        """When the config serving now was loaded."""
        self.pools: dict[str, Pool] = {}
        self.upstreams: dict[str, ConnectionPool] = {}
        """Upstream keep-alive connections, per pool, shared by every HTTP listener."""
        self._logs: dict[str, AccessLog] = {}
        self.pools = self._pools(config)
        self.upstreams = self._upstreams(config, self.pools)
        self.listeners = self._listeners(config, self.pools, self.upstreams, self._logs)
        self._retired: list[Any] = []
        """Relay factories a reload replaced, until their last connection ends."""
        self.shared_workers = 0
        """In a master: how many workers bind_shared() binds each listener's sockets for."""
        self.health: HealthService | None = None
        if not worker:
            self.health = HealthService(reactor, self.pools)
            self.health.setServiceParent(self)
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
        self.admin: ListenerService | None = None
        self.admin_resource: AdminResource | None = None
        if config.admin is not None and not worker:
            self.admin_resource = AdminResource(self, config.admin)
            self.admin = self._admin_listener(config)
            self.admin.setServiceParent(self)

    def _pools(self, config: Config) -> dict[str, Pool]:
        """The pools of `config`: the same Pool where its config is unchanged, else a new one
        that carries the servers of the old one on (Pool's `previous`)."""
        pools: dict[str, Pool] = {}
        for name, pool_config in config.pools.items():
            old = self.pools.get(name)
            if old is not None and old.config == pool_config:
                pools[name] = old
            else:
                pools[name] = Pool(pool_config, self._reactor, previous=old)
        return pools

    def _upstreams(self, config: Config, pools: Mapping[str, Pool]) -> dict[str, ConnectionPool]:
        """Each pool's upstream connections: kept (idle keep-alive connections and all) for a
        pool kept as it was."""
        upstreams: dict[str, ConnectionPool] = {}
        for name, pool_config in config.pools.items():
            old = self.upstreams.get(name)
            if old is not None and pools[name] is self.pools.get(name):
                upstreams[name] = old
                continue
            tls = pool_config.tls
            upstreams[name] = ConnectionPool(
                self._reactor,
                pool_config,
                ClientTls(name, tls, [b"http/1.1"]) if tls.enabled else None,
            )
        return upstreams

    def _listeners(
        self,
        config: Config,
        pools: Mapping[str, Pool],
        upstreams: Mapping[str, ConnectionPool],
        logs: dict[str, AccessLog],
    ) -> list[ListenerService]:
        """A listener service, not bound yet, with a new relay for each listener of `config`.
        The access logs they write to go into `logs`: those open already, or opened now."""
        reactor = self._reactor

        def access_log(target: str) -> AccessLog:
            if target not in logs:
                logs[target] = self._logs.get(target) or AccessLog.open(target)
            return logs[target]

        listeners: list[ListenerService] = []

        def add(name: str, description: str, factory: Any) -> None:
            listeners.append(ListenerService(reactor, name, description, factory))

        tcp_tls = {
            name: ClientTls(name, pc.tls) for name, pc in config.pools.items() if pc.tls.enabled
        }
        for tcp in config.tcp:
            tcp_factory = TcpRelayFactory(reactor, tcp, pools, access_log(tcp.access_log), tcp_tls)
            add(f"tcp {tcp.name}", tcp.listen, tcp_factory)
        for udp in config.udp:
            kind = DnsListener if udp.protocol == "dns" else UdpListener
            relay = kind(reactor, udp, pools[udp.pool], access_log(udp.access_log))
            listeners.append(UdpListenerService(reactor, f"udp {udp.name}", udp.listen, relay))
        for http in config.http:
            factory = HttpRelayFactory(
                reactor,
                http,
                pools,
                upstreams,
                access_log(http.access_log),
                _read_error_pages(http.error_pages),
            )
            add(f"{http.kind} {http.name}", http.listen, factory)
        for ws in config.websocket:
            if ws.mode == "message":
                pool_tls = config.pools[ws.pool].tls
                ws_factory = WebSocketRelayFactory(
                    reactor,
                    ws,
                    pools,
                    access_log(ws.access_log),
                    ClientTls(ws.pool, pool_tls, [b"http/1.1"]) if pool_tls.enabled else None,
                )
                add(f"websocket {ws.name}", ws.listen, ws_factory)
            else:
                passthrough = HttpRelayFactory(
                    reactor,
                    ws.as_http(),
                    pools,
                    upstreams,
                    access_log(ws.access_log),
                    websocket_only=OriginPolicy(ws.allowed_origins),
                )
                add(f"websocket {ws.name}", ws.listen, passthrough)
        return listeners

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
        return found

    def _server(self, pool: str, server: str) -> Server:
        if pool not in self.pools:
            raise KeyError(f"no pool {pool}")
        for candidate in self.pools[pool].servers:
            if candidate.name == server:
                return candidate
        raise KeyError(f"no server {server} in pool {pool}")

    def adopt(self, sockets: Mapping[str, tuple[int, int]]) -> None:
        """Accept on the sockets (fd, address family) the master passed, by listener."""
        for listener in self.listeners:
            fd, family = sockets[listener.name]
            listener.adopt(fd, family)
            log.debug("[{listener}] accepting", listener=listener.name)

    def set_health(self, pool: str, server: str, up: bool, reason: str) -> None:
        """The master's health checks' verdict on `server` of `pool` (in a worker)."""
        self.pools[pool].set_health(self._server(pool, server), up, reason)

    def set_server(self, pool: str, server: str, admin: str, weight: int, who: str) -> None:
        """The master's admin state and weight of `server` of `pool` (in a worker)."""
        found = self._server(pool, server)
        if found.weight != weight:
            self.pools[pool].set_weight(found, weight, who)
        if found.admin != admin:
            self.pools[pool].set_admin(found, admin, who)

    def counters(self) -> dict[str, Any]:
        """The relays' counters by listener, the connections open to each server, and the
        relays' metrics (their `stats`, proxyd.metrics), as numbers that add up across worker
        processes. Relays a reload replaced count their connections still open."""
        listeners: dict[str, dict[str, int]] = {}
        metrics: dict[str, Any] = {}
        seen: set[int] = set()
        for name, factory, counted in self._factories():
            stats = getattr(factory, "stats", None)
            if stats is not None and id(stats) not in seen:
                seen.add(id(stats))
                add_counters(metrics, stats.snapshot())
            found = {
                key: value
                for key in counted
                if isinstance(value := getattr(factory, key, None), int)
            }
            sessions = getattr(factory, "sessions", None)
            if sessions is not None:
                found["sessions"] = len(sessions)
            add_counters(listeners.setdefault(name, {}), found)
        servers = {
            f"{pool.name}/{server.name}": {"active": server.active}
            for pool in self.pools.values()
            for server in pool.servers
        }
        return {"listeners": listeners, "servers": servers, "metrics": metrics}

    def _factories(self) -> Iterable[tuple[str, Any, tuple[str, ...]]]:
        """(listener name, relay factory, the counters to take from it) for every relay."""
        for listener in self.listeners:
            yield listener.name, listener.factory, (*_GAUGES, *_CUMULATIVE)
        for name, factory in self._retired:
            yield name, factory, _GAUGES

    def startService(self) -> None:
        super().startService()
        for warning in [] if self._worker else warnings(self.config):
            log.warn("{warning}", warning=warning)
        if self._handle_signals:
            signal.signal(signal.SIGHUP, self._on_sighup)
            on_sigusr1(self._reactor, self.reopen_logs)
            # After the reactor's own handlers, which it installs as it starts running.
            self._reactor.callWhenRunning(GracefulStop(self._reactor, self.close_now).install)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(sighup_reload, self.reload_source)

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Read the config file again and serve it (apply()); a file that is not valid, has
        no listener, or (unless `force`) would remove the admin listener is refused with its
        errors (proxyd.config.reload), and the config serving now goes on."""
        path = self.config.path
        log.info("reload: reading {path}", path=path)
        try:
            config = reload_config(self.config, read(path), force)
        except ConfigErrors as e:
            return self.refused([str(error) for error in e.errors])
        return self.apply(config)

    def refused(self, errors: list[str]) -> ReloadOutcome:
        """Log why a reload was refused; the outcome that says so."""
        for error in errors:
            log.error("reload refused: {error}", error=error)
        log.error(
            "reload refused: still serving generation {generation} of {path}",
            generation=self.generation,
            path=self.config.path,
        )
        return ReloadOutcome(False, self.generation, tuple(errors))

    def apply(
        self, config: Config, sockets: dict[str, tuple[int, int]] | None = None
    ) -> ReloadOutcome:
        """Serve `config` from now on (a reload). Every new address is bound first: if one
        cannot be, nothing changes and the outcome says why. In a worker, `sockets` are the
        ones the master bound for the new addresses (fd, family by listener name): those
        adopted are taken out of it (and closed; Twisted keeps a duplicate)."""
        logs: dict[str, AccessLog] = {}
        pools = self._pools(config)
        upstreams = self._upstreams(config, pools)
        opened: list[ListenerService] = []
        try:
            listeners = self._listeners(config, pools, upstreams, logs)
            kept, removed = self._match(listeners)
            kept_new = {id(new) for new, _ in kept}
            for listener in listeners:
                if id(listener) not in kept_new:
                    self._open(listener, sockets)
                    opened.append(listener)
            admin = self._new_admin(config)
        except (StartupError, OSError) as e:
            for listener in opened:
                listener.close()
            self._abandon(pools, upstreams, logs)
            return self.refused([str(e)])

        old_pools, old_upstreams, old_logs = self.pools, self.upstreams, self._logs
        old_workers = self.config.proxyd.workers
        for new, old in kept:
            new.take_over(old)
        by_name = {listener.name: listener for listener in listeners}
        retiring = [old for _, old in kept] + removed
        for old in retiring:
            old.disownServiceParent()
            successor = by_name.get(old.name)
            if successor is not None and successor.factory is not old.factory:
                _carry_counters(old.factory, successor.factory)
        self.config, self.pools, self.upstreams, self._logs = config, pools, upstreams, logs
        self.listeners = listeners
        for listener in listeners:
            listener.setServiceParent(self)
        if self.health is not None:
            self.health.reload(pools)
        self._switch_admin(config, admin)
        self.generation += 1
        self.loaded = self._reactor.seconds()
        self._retire(
            [(old.name, old.factory) for old in retiring if old.factory not in _relays(listeners)],
            [pool for name, pool in old_pools.items() if pools.get(name) is not pool],
            [up for name, up in old_upstreams.items() if upstreams.get(name) is not up],
            [access_log for target, access_log in old_logs.items() if target not in logs],
        )
        log.info(
            "reloaded {path}: generation {generation}; listeners: {kept} kept, {opened} new,"
            " {removed} closed",
            path=config.path,
            generation=self.generation,
            kept=len(kept),
            opened=len(opened),
            removed=len(removed),
        )
        if config.proxyd.workers != old_workers and not self._worker:
            log.warn(
                "reload: workers = {workers} takes effect at the next start; {old} serve now",
                workers=config.proxyd.workers,
                old=old_workers,
            )
        for warning in [] if self._worker else warnings(config):
            log.warn("{warning}", warning=warning)
        return ReloadOutcome(True, self.generation)

    def _match(
        self, listeners: list[ListenerService]
    ) -> tuple[list[tuple[ListenerService, ListenerService]], list[ListenerService]]:
        """(new, old) pairs of listeners on the same address, and the old ones with none.
        A listener of the same name is matched first (two listeners on port 0 have the same
        address text and different sockets), then one renamed."""
        old_ones = list(self.listeners)
        kept: list[tuple[ListenerService, ListenerService]] = []
        for same_name in (True, False):
            for listener in listeners:
                if any(new is listener for new, _ in kept):
                    continue
                for old in old_ones:
                    if (
                        old.datagram == listener.datagram
                        and old.description == listener.description
                        and (old.name == listener.name or not same_name)
                    ):
                        kept.append((listener, old))
                        old_ones.remove(old)
                        break
        return kept, old_ones

    def _open(self, listener: ListenerService, sockets: dict[str, tuple[int, int]] | None) -> None:
        """Bind a listener new at a reload as this process binds: itself, for its workers,
        or (a worker) on the socket the master passed."""
        if self._worker:
            if sockets is None or listener.name not in sockets:
                raise StartupError(f"proxyd: [{listener.name}] the master passed no socket")
            fd, family = sockets.pop(listener.name)
            listener.adopt(fd, family)
        elif self.shared_workers:
            listener.bind_shared(self.shared_workers)
        else:
            listener.bind()

    def _abandon(
        self,
        pools: Mapping[str, Pool],
        upstreams: Mapping[str, ConnectionPool],
        logs: Mapping[str, AccessLog],
    ) -> None:
        """Undo a refused reload's new pools, upstream pools and access logs."""
        for name, pool in pools.items():
            if self.pools.get(name) is not pool:
                pool.stop()
        for name, upstream in upstreams.items():
            if self.upstreams.get(name) is not upstream:
                upstream.stop()
        for target, access_log in logs.items():
            if self._logs.get(target) is not access_log:
                access_log.close()

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

    def _switch_admin(self, config: Config, admin: ListenerService | None) -> None:
        if self.admin_resource is not None and config.admin is not None:
            self.admin_resource.admin_config = config.admin
        if self.admin is not None and config.admin is None:
            log.warn(
                "reload (forced): the new file has no [admin] section; the admin listener on"
                " {listen} closes",
                listen=self.admin.description,
            )
        if self.admin is not None and (admin is not None or config.admin is None):
            self.admin.disownServiceParent()
            self.admin = None
        if admin is not None:
            self.admin = admin
            admin.setServiceParent(self)

    def _retire(
        self,
        factories: list[tuple[str, Any]],
        pools: list[Pool],
        upstreams: list[ConnectionPool],
        logs: list[AccessLog],
    ) -> None:
        """Let the relay factories a reload replaced finish their connections (their retire(),
        or drain() as at a stop); then stop the pools and upstream pools and close the access
        logs only they used."""
        waits: list[Deferred[None]] = []
        for entry in factories:
            factory = entry[1]
            finish = getattr(factory, "retire", None) or getattr(factory, "drain", None)
            if finish is None:
                continue
            self._retired.append(entry)
            waits.append(finish().addCallback(lambda _, e=entry: self._retired.remove(e)))

        def release(_: object) -> None:
            for pool in pools:
                pool.stop()
            for upstream in upstreams:
                upstream.stop()
            for access_log in logs:
                access_log.close()

        DeferredList(waits).addCallback(release)

    def reopen_logs(self) -> None:
        """Open the access-log files again by their paths (SIGUSR1, after logrotate moved
        them). A file that cannot be opened keeps being written where it was."""
        files = [
            log_file for log_file in self._logs.values() if log_file.target not in ("-", "off")
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
        for _name, factory, _counted in list(self._factories()):
            close_all = getattr(factory, "close_all", None)
            if close_all is not None:
                close_all()

    def stopService(self) -> Any:
        """Stop accepting and checking, let the connections in flight finish (up to
        drain_timeout), then stop the pools and close the access logs."""
        stopped = super().stopService()
        drained = self._drain()

        def release(result: Any) -> Any:
            for pool in self.pools.values():
                pool.stop()
            for upstream in self.upstreams.values():
                upstream.stop()
            for access_log in self._logs.values():
                access_log.close()
            return result

        return DeferredList([maybeDeferred(lambda: stopped), drained]).addBoth(release)

    def _drain(self) -> Deferred[None]:
        """Ask every relay that has connections to drain them; after drain_timeout, close
        what is left."""
        factories = [
            factory for _name, factory, _counted in self._factories() if hasattr(factory, "drain")
        ]
        waits = [factory.drain() for factory in factories]
        if all(wait.called for wait in waits):
            return succeed(None)
        timeout = self.config.proxyd.drain_timeout
        log.info(
            "stopping: connections in flight have up to {timeout:g}s to finish", timeout=timeout
        )
        done: Deferred[None] = Deferred()
        timer: DelayedCall  # the drain's, then the closing grace's

        def timed_out() -> None:
            nonlocal timer
            log.warn(
                "stopping: drain_timeout ({timeout:g}s) reached, closing the connections"
                " still open",
                timeout=timeout,
            )
            for factory in factories:
                factory.close_all()
            # The closed connections are logged as they go: wait for them, a little.
            timer = self._reactor.callLater(CLOSE_GRACE, finish)

        def finish() -> None:
            if not done.called:
                done.callback(None)

        def finished(_: object) -> None:
            if done.called:
                return
            if timer.active():
                timer.cancel()
            log.info("stopping: every connection finished")
            done.callback(None)

        timer = self._reactor.callLater(timeout, timed_out)
        DeferredList(waits).addCallback(finished)
        return done


def sighup_reload(reload: Callable[[bool], Deferred[ReloadOutcome]]) -> None:
    """SIGHUP: reload, saying who asked (the outcome is logged by the reload itself). A
    signal carries no flag: a SIGHUP reload is never forced."""
    log.info("reload asked by SIGHUP")
    reload(False)


def _relays(listeners: Iterable[ListenerService]) -> list[Any]:
    return [listener.factory for listener in listeners]


def _carry_counters(old: Any, new: Any) -> None:
    """`new` replaces `old` as the relay of a listener of the same name: it goes on from
    `old`'s totals, and records its metrics into the same `stats`."""
    for key in _CUMULATIVE:
        before = getattr(old, key, None)
        if isinstance(before, int) and isinstance(getattr(new, key, None), int):
            setattr(new, key, getattr(new, key) + before)
    if hasattr(old, "stats") and hasattr(new, "stats"):
        new.stats = old.stats


def _read_error_pages(pages: tuple[tuple[int, str], ...]) -> dict[int, bytes]:
    """The error pages' bodies, read once at start (the config check saw them readable)."""
    bodies: dict[int, bytes] = {}
    for status, path in pages:
        try:
            with open(path, "rb") as f:
                bodies[status] = f.read()
        except OSError as e:
            raise StartupError(f"proxyd: cannot read error page {path}: {e.strerror}") from None
    return bodies
