"""Builds the service tree from a validated Config: pools, the health service, listeners."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from proxyd.accesslog import AccessLog
from proxyd.config.model import Config
from proxyd.health import HealthService
from proxyd.pool import Pool
from proxyd.relay.http.server import HttpRelayFactory
from proxyd.relay.http.upstream import ConnectionPool
from proxyd.relay.tcp import TcpRelayFactory

log = Logger()


class StartupError(Exception):
    """Something the operator must fix before proxyd can serve (a port in use, ...)."""


class ListenerService(service.Service):
    """One listening endpoint. bind() listens at once so that errors surface before the
    process daemonizes; stopService stops accepting."""

    def __init__(self, reactor: Any, name: str, description: str, factory: Any) -> None:
        self.setName(name)
        self._reactor = reactor
        self.description = description
        self.factory = factory
        self.port: Any = None

    def bind(self) -> None:
        endpoint = serverFromString(self._reactor, self.description)
        result: list[Any] = []
        endpoint.listen(self.factory).addBoth(result.append)
        outcome = result[0]
        if not IListeningPort.providedBy(outcome):
            error = outcome.value
            if isinstance(error, CannotListenError) and error.socketError is not None:
                why = error.socketError.strerror or str(error.socketError)
            else:
                why = str(error)
            raise StartupError(f"proxyd: [{self.name}] cannot listen on {self.description}: {why}")
        self.port = outcome
        self.factory.set_listening_port(outcome)

    def startService(self) -> None:
        super().startService()
        log.info(
            "[{listener}] listening on {endpoint}", listener=self.name, endpoint=self.description
        )

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class ProxydService(service.MultiService):
    """The whole proxy: the health service and every listener, over shared pools."""

    def __init__(self, reactor: Any, config: Config) -> None:
        super().__init__()
        self.config = config
        self.pools = {name: Pool(pc, reactor) for name, pc in config.pools.items()}
        self.health = HealthService(reactor, self.pools)
        self.health.setServiceParent(self)
        self._logs: dict[str, AccessLog] = {}
        self.listeners: list[ListenerService] = []
        for tcp in config.tcp:
            tcp_factory = TcpRelayFactory(
                reactor, tcp, self.pools[tcp.pool], self._log(tcp.access_log)
            )
            self._add_listener(reactor, f"tcp {tcp.name}", tcp.listen, tcp_factory)
        # Upstream keep-alive connections are per pool, shared by every HTTP listener.
        self.upstreams = {name: ConnectionPool(reactor, pc) for name, pc in config.pools.items()}
        for http in config.http:
            factory = HttpRelayFactory(
                reactor,
                http,
                self.pools,
                self.upstreams,
                self._log(http.access_log),
                _read_error_pages(http.error_pages),
            )
            self._add_listener(reactor, f"http {http.name}", http.listen, factory)

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
        try:
            for listener in self.listeners:
                listener.bind()
        except StartupError:
            for listener in self.listeners:
                if listener.port is not None:
                    listener.port.stopListening()
                    listener.port = None
            raise

    def stopService(self) -> Any:
        result = super().stopService()
        for pool in self.pools.values():
            pool.stop()
        for upstream in self.upstreams.values():
            upstream.stop()
        for access_log in self._logs.values():
            access_log.close()
        return result


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
