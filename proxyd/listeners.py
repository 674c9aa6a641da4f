"""The listening sockets of proxyd's relays and admin listener, as services.

A ListenerService binds at once (so that errors surface before the process daemonizes), or,
with worker processes, binds sockets for the workers (the master) or adopts the one the
master passed (a worker). A reload hands a socket whose address is unchanged over to the
listener that replaces it (take_over): the socket stays open, so no connection is refused.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from proxyd.accept_log import AcceptLog, watch
from proxyd.relay.dns import DnsListener
from proxyd.relay.udp import MAX_PACKET, UdpListener
from proxyd.tls import ServerTls
from proxyd.twisted_internals import accept_queued, hand_over, hand_over_datagram
from proxyd.workers.sockets import (
    NotShareable,
    SharedPort,
    adopt_stream,
    bind_datagram,
    bind_stream,
    with_backlog,
)

log = Logger()


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
        self._kept = False
        self.accept_log: AcceptLog | None = None
        """Counts and logs the port's accept failures (proxyd.accept_log)."""

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
        try:
            self.port = adopt_stream(self._reactor, fd, family, self._listening())
        finally:
            os.close(fd)
        self._watch()
        self.factory.set_listening_port(self.port)

    def _watch(self) -> None:
        self.accept_log = watch(self.port, self._reactor, self.name, self.factory)

    def bind(self) -> None:
        """Listen now, with proxyd's listen backlog unless the endpoint gives one."""
        endpoint = serverFromString(self._reactor, with_backlog(self.description))
        result: list[Any] = []
        endpoint.listen(self._listening()).addBoth(result.append)
        outcome = result[0]
        if not IListeningPort.providedBy(outcome):
            raise self._cannot_listen(_why(outcome.value))
        self.port = outcome
        self._watch()
        self.factory.set_listening_port(outcome)

    @property
    def datagram(self) -> bool:
        """A UDP listener: its socket can only be handed to another UDP listener."""
        return False

    def take_over(self, old: ListenerService) -> None:
        """Serve on `old`'s socket (a reload kept its address): from the next connection
        accepted on, this listener's factory builds the protocol. `old` keeps its
        connections and no longer has a socket."""
        self.port, old.port = old.port, None
        self.shared, old.shared = old.shared, None
        self.accept_log, old.accept_log = old.accept_log, None
        self._kept = True
        if self.port is None:
            return  # the master's shared sockets, or a worker not serving yet
        hand_over(self.port, self._listening())
        self._watch()
        self.factory.set_listening_port(self.port)

    def _listening(self) -> Any:
        """The factory the port accepts with: this listener's, inside TLS if it has TLS."""
        tls: ServerTls | None = getattr(self.factory, "tls", None)
        return tls.wrap(self.factory, self._reactor) if tls is not None else self.factory

    def startService(self) -> None:
        super().startService()
        if self.port is None and self.shared is None:
            return  # a worker's listener, not adopted yet: the master says where it listens
        if self._kept:
            return  # listening already, since before the reload
        log.info(
            "[{listener}] listening on {endpoint}", listener=self.name, endpoint=self.description
        )

    def close(self) -> None:
        """Close the socket bound (startup or reload failed elsewhere, undone)."""
        if self.shared is not None:
            shared, self.shared = self.shared, None
            shared.close()
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()
        self._unwatch()

    def _unwatch(self) -> None:
        if self.accept_log is not None:
            accept_log, self.accept_log = self.accept_log, None
            accept_log.stop()

    def stopService(self) -> Any:
        super().stopService()
        if self.shared is not None:
            shared, self.shared = self.shared, None
            shared.close()
        if self.port is not None:
            port, self.port = self.port, None
            if not self.datagram:
                # Accept what the kernel has queued: closing the socket would reset those
                # connections, whose clients saw their connect succeed. They get served.
                accept_queued(port)
            self._unwatch()
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

    @property
    def datagram(self) -> bool:
        return True

    def take_over(self, old: ListenerService) -> None:
        """Serve on `old`'s socket. A relay of the same kind is reconfigured in place, so
        that the client sessions open go on to their servers; one of another kind (dns
        instead of plain udp, or back) replaces it, and the old one's sessions end."""
        assert isinstance(old, UdpListenerService)
        self.port, old.port = old.port, None
        self.shared, old.shared = old.shared, None
        self._kept = True
        if type(old.relay) is type(self.relay):
            old.relay.reconfigure(self.relay.config, self.relay.pool, self.relay.access_log)
            self.relay = self.factory = old.relay
        elif self.port is not None:
            old.relay.stop()
            hand_over_datagram(self.port, self.relay)

    def adopt(self, fd: int, family: int) -> None:
        try:
            self.port = self._reactor.adoptDatagramPort(fd, family, self.relay, MAX_PACKET)
        finally:
            os.close(fd)

    def stopService(self) -> Any:
        if self.port is not None:
            self.relay.stop()  # not when a reload handed the socket and the relay on
        return super().stopService()


def _why(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and error.socketError is not None:
        return error.socketError.strerror or str(error.socketError)
    return str(error)
