"""Builds the service tree from a validated Config: pools, the health service, listeners."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.admin.api import AdminResource, AdminSite
from proxyd.admin.status import status_document
from proxyd.cli import expiry_warning, warnings
from proxyd.clock import DelayedCall
from proxyd.config.errors import Invalid
from proxyd.config.model import Config
from proxyd.config.values import Invalids
from proxyd.health import HealthService
from proxyd.pool import Pool
from proxyd.relay.dns import DnsListener
from proxyd.relay.http.server import HttpRelayFactory
from proxyd.relay.http.upstream import ConnectionPool
from proxyd.relay.tcp import TcpRelayFactory
from proxyd.relay.udp import MAX_PACKET, UdpListener
from proxyd.relay.websocket import WebSocketRelayFactory
from proxyd.relay.websocket_policy import OriginPolicy
from proxyd.stopping import GracefulStop, on_sigusr1
from proxyd.tls import ClientTls, ServerTls
from proxyd.workers.commands import add_counters
from proxyd.workers.sockets import (
    NotShareable,
    SharedPort,
    adopt_stream,
    bind_datagram,
    bind_stream,
)

log = Logger()

_COUNTERS = (
    "connections",
    "requests",
    "tunnels",
    "tunnels_total",
    "active",
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
"""The relays' counters (attributes of their factories) that counters() reports."""

CLOSE_GRACE = 5.0
"""Seconds the connections closed at drain_timeout have to go (and be logged) before the
stop goes on regardless."""


class StartupError(Exception):
    """Something the operator must fix before proxyd can serve (a port in use, ...)."""


class ListenerService(service.Service):
    """One listening endpoint. bind() listens at once so that errors surface before the
    process daemonizes; stopService stops accepting.

    With worker processes, the master calls bind_shared() instead (it binds but never
    accepts), and each worker adopt()s the socket the master passed it."""

    name: str

    def __init__(self, reactor: Any, name: str, description: str, factory: Any) -> None:
        self.setName(name)
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None
        self.shared: SharedPort | None = None

    def _cannot_listen(self, why: str) -> StartupError:
        return StartupError(f"proxyd: [{self.name}] cannot listen on {self.description}: {why}")

    def bind_shared(self, workers: int) -> SharedPort:
        """Bind the sockets `workers` worker processes will accept on (proxyd.workers)."""
        try:
            self.shared = bind_stream(self._reactor, self.description, workers)
        except CannotListenError as e:
            raise self._cannot_listen(_why(e)) from None
        except NotShareable as e:
            raise StartupError(f"proxyd: [{self.name}] {e}") from None
        return self.shared

    def adopt(self, fd: int, family: int) -> None:
        """Accept on the socket the master passed as `fd` (closed here: Twisted keeps a
        duplicate)."""
        tls: ServerTls | None = getattr(self.factory, "tls", None)
        listening = tls.wrap(self.factory, self._reactor) if tls is not None else self.factory
        try:
            self.port = adopt_stream(self._reactor, fd, family, listening)
        finally:
            os.close(fd)
        self.factory.set_listening_port(self.port)

    def bind(self) -> None:
        endpoint = serverFromString(self._reactor, self.description)
        result: list[Any] = []
        tls: ServerTls | None = getattr(self.factory, "tls", None)
        listening = tls.wrap(self.factory, self._reactor) if tls is not None else self.factory
        endpoint.listen(listening).addBoth(result.append)
        outcome = result[0]
        if not IListeningPort.providedBy(outcome):
            raise self._cannot_listen(_why(outcome.value))
        self.port = outcome
        self.factory.set_listening_port(outcome)

    def startService(self) -> None:
        super().startService()
        if self.port is None and self.shared is None:
            return  # a worker's listener, not adopted yet: the master says where it listens
        log.info(
            "[{listener}] listening on {endpoint}", listener=self.name, endpoint=self.description
        )

    def stopService(self) -> Any:
        super().stopService()
        if self.shared is not None:
            shared, self.shared = self.shared, None
            shared.close()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class UdpListenerService(ListenerService):
    """A `[udp NAME]`: Twisted has no udp: server endpoint, so the relay listens itself."""

    def __init__(
        self, reactor: Any, name: str, description: str, relay: UdpListener | DnsListener
    ) -> None:
        super().__init__(reactor, name, description, relay)
        self.relay = relay

    def bind(self) -> None:
        try:
            self.port = self.relay.listen()
        except CannotListenError as e:
            raise self._cannot_listen(_why(e)) from None

    def bind_shared(self, workers: int) -> SharedPort:
        config = self.relay.config
        try:
            self.shared = bind_datagram(config.interface, config.port, workers)
        except CannotListenError as e:
            raise self._cannot_listen(_why(e)) from None
        return self.shared

    def adopt(self, fd: int, family: int) -> None:
        try:
            self.port = self._reactor.adoptDatagramPort(fd, family, self.relay, MAX_PACKET)
        finally:
            os.close(fd)

    def stopService(self) -> Any:
        self.relay.stop()
        return super().stopService()


class ProxydService(service.MultiService):
    """The whole proxy: the health service and every listener, over shared pools."""

    def __init__(
        self, reactor: Any, config: Config, handle_signals: bool = False, worker: bool = False
    ) -> None:
        """With `handle_signals`, SIGHUP reloads the certificates (see reload_certificates)
        and SIGTERM or SIGINT stop gracefully (proxyd.stopping).
        A `worker` process runs no health checks (its health state comes from the master,
        through set_health()) and leaves the config's warnings to the master."""
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._handle_signals = handle_signals
        self.pools = {name: Pool(pc, reactor) for name, pc in config.pools.items()}
        self._worker = worker
        self.health: HealthService | None = None
        if not worker:
            self.health = HealthService(reactor, self.pools)
            self.health.setServiceParent(self)
        self._logs: dict[str, AccessLog] = {}
        self.listeners: list[ListenerService] = []
        tcp_tls = {
            name: ClientTls(name, pc.tls) for name, pc in config.pools.items() if pc.tls.enabled
        }
        for tcp in config.tcp:
            tcp_factory = TcpRelayFactory(
                reactor, tcp, self.pools, self._log(tcp.access_log), tcp_tls
            )
            self._add_listener(reactor, f"tcp {tcp.name}", tcp.listen, tcp_factory)
        for udp in config.udp:
            kind = DnsListener if udp.protocol == "dns" else UdpListener
            relay = kind(reactor, udp, self.pools[udp.pool], self._log(udp.access_log))
            listener: ListenerService = UdpListenerService(
                reactor, f"udp {udp.name}", udp.listen, relay
            )
            listener.setServiceParent(self)
            self.listeners.append(listener)
        # Upstream keep-alive connections are per pool, shared by every HTTP listener.
        self.upstreams = {
            name: ConnectionPool(
                reactor,
                pc,
                ClientTls(name, pc.tls, [b"http/1.1"]) if pc.tls.enabled else None,
            )
            for name, pc in config.pools.items()
        }
        for http in config.http:
            factory = HttpRelayFactory(
                reactor,
                http,
                self.pools,
                self.upstreams,
                self._log(http.access_log),
                _read_error_pages(http.error_pages),
            )
            self._add_listener(reactor, f"{http.kind} {http.name}", http.listen, factory)
        for ws in config.websocket:
            if ws.mode == "message":
                pool_tls = config.pools[ws.pool].tls
                ws_factory = WebSocketRelayFactory(
                    reactor,
                    ws,
                    self.pools,
                    self._log(ws.access_log),
                    ClientTls(ws.pool, pool_tls, [b"http/1.1"]) if pool_tls.enabled else None,
                )
                self._add_listener(reactor, f"websocket {ws.name}", ws.listen, ws_factory)
            else:
                self._add_listener(
                    reactor,
                    f"websocket {ws.name}",
                    ws.listen,
                    HttpRelayFactory(
                        reactor,
                        ws.as_http(),
                        self.pools,
                        self.upstreams,
                        self._log(ws.access_log),
                        websocket_only=OriginPolicy(ws.allowed_origins),
                    ),
                )

        self.counters_source: Callable[[], Deferred[dict[str, Any]]] = lambda: succeed(
            self.counters()
        )
        """Where status() takes the counters from: this process, or the master's sum over
        its workers (proxyd.workers.master sets it)."""
        self.admin: ListenerService | None = None
        if config.admin is not None and not worker:
            site = AdminSite(AdminResource(self.status, config.admin.token))
            self.admin = ListenerService(reactor, "admin", config.admin.listen, site)
            self.admin.setServiceParent(self)

    def _add_listener(self, reactor: Any, name: str, description: str, factory: Any) -> None:
        listener = ListenerService(reactor, name, description, factory)
        listener.setServiceParent(self)
        self.listeners.append(listener)

    def _log(self, target: str) -> AccessLog:
        if target not in self._logs:
            self._logs[target] = AccessLog.open(target)
        return self._logs[target]

    def bind(self) -> None:
        """Listen on every listener now; on failure undo what was bound and raise."""
        everything = [*self.listeners, *([self.admin] if self.admin is not None else [])]
        try:
            for listener in everything:
                listener.bind()
        except StartupError:
            for listener in everything:
                if listener.port is not None:
                    listener.port.stopListening()
                    listener.port = None
            raise

    def bind_shared(self, workers: int) -> dict[str, SharedPort]:
        """As bind(), for `workers` worker processes: the sockets to pass them, by listener."""
        shared: dict[str, SharedPort] = {}
        try:
            for listener in self.listeners:
                shared[listener.name] = listener.bind_shared(workers)
            if self.admin is not None:
                self.admin.bind()  # the master's own
        except StartupError:
            for sockets in shared.values():
                sockets.close()
            raise
        return shared

    def status(self) -> Deferred[dict[str, Any]]:
        """The admin API's status document, with the counters of now."""
        return self.counters_source().addCallback(
            lambda counters: status_document(self.config, self.pools, counters)
        )

    def adopt(self, sockets: Mapping[str, tuple[int, int]]) -> None:
        """Accept on the sockets (fd, address family) the master passed, by listener."""
        for listener in self.listeners:
            fd, family = sockets[listener.name]
            listener.adopt(fd, family)
            log.debug("[{listener}] accepting", listener=listener.name)

    def set_health(self, pool: str, server: str, up: bool, reason: str) -> None:
        """The master's health checks' verdict on `server` of `pool` (in a worker)."""
        for candidate in self.pools[pool].servers:
            if candidate.name == server:
                self.pools[pool].set_health(candidate, up, reason)

    def counters(self) -> dict[str, Any]:
        """The relays' counters by listener, the connections open to each server, and the
        relays' metrics (their `stats`, proxyd.metrics), as numbers that add up across worker
        processes."""
        listeners: dict[str, dict[str, int]] = {}
        metrics: dict[str, Any] = {}
        for listener in self.listeners:
            stats = getattr(listener.factory, "stats", None)
            if stats is not None:
                add_counters(metrics, stats.snapshot())
            found = {
                name: value
                for name in _COUNTERS
                if isinstance(value := getattr(listener.factory, name, None), int)
            }
            sessions = getattr(listener.factory, "sessions", None)
            if sessions is not None:
                found["sessions"] = len(sessions)
            listeners[listener.name] = found
        servers = {
            f"{pool.name}/{server.name}": {"active": server.active}
            for pool in self.pools.values()
            for server in pool.servers
        }
        return {"listeners": listeners, "servers": servers, "metrics": metrics}

    def startService(self) -> None:
        super().startService()
        for warning in [] if self._worker else warnings(self.config):
            log.warn("{warning}", warning=warning)
        if self._handle_signals:
            signal.signal(signal.SIGHUP, self._on_sighup)
            on_sigusr1(self._reactor, self.reopen_logs)
            # After the reactor's own handlers, which it installs as it starts running.
            self._reactor.callWhenRunning(GracefulStop(self._reactor, self.close_now).install)

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
        for listener in self.listeners:
            close_all = getattr(listener.factory, "close_all", None)
            if close_all is not None:
                close_all()

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.reload_certificates)

    def reload_certificates(self) -> None:
        """Read every TLS listener's certificates anew. New handshakes use them; open
        connections keep what they have. A listener whose files do not load keeps its
        certificates and says why."""
        for listener in self.listeners:
            tls: ServerTls | None = getattr(listener.factory, "tls", None)
            if tls is None:
                continue
            try:
                loaded = tls.reload()
            except (Invalid, Invalids) as e:
                problems = e.errors if isinstance(e, Invalids) else (e,)
                for problem in problems:
                    log.error(
                        "[{listener}] certificates not reloaded, keeping the old ones: {why}",
                        listener=listener.name,
                        why=str(problem),
                    )
                continue
            log.info(
                "[{listener}] reloaded {count} certificate(s)",
                listener=listener.name,
                count=len(loaded),
            )
            for certificate in loaded:
                warning = expiry_warning(certificate)
                if warning is not None:
                    log.warn(
                        "[{listener}] certificates: {warning}",
                        listener=listener.name,
                        warning=warning,
                    )

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
            listener.factory for listener in self.listeners if hasattr(listener.factory, "drain")
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


def _why(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and error.socketError is not None:
        return error.socketError.strerror or str(error.socketError)
    return str(error)


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
