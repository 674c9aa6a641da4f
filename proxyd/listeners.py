"""The listening sockets of proxyd's relays and admin listener, as services.

A ListenerService binds at once (so that errors surface before the process daemonizes), or,
with worker processes, binds sockets for the workers (the master) or adopts the one the
master passed (a worker). A reload hands a socket whose address is unchanged over to the
listener that replaces it (take_over): the socket stays open, so no connection is refused.

The port a listener listens on keeps one factory for its life, a Front (a DatagramFront for
UDP): it delegates to the relay serving now, and a reload points it at the new relay. The
relay replaced keeps the connections it has (the service tree retires it, proxyd.app).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger

from proxyd.accept_log import AcceptLog, watch
from proxyd.listen_sockets import (
    NotShareable,
    SharedPort,
    adopt_stream,
    bind_datagram,
    bind_stream,
    with_backlog,
)
from proxyd.relay.dns import DnsListener
from proxyd.relay.factory import (
    Counted,
    Counts,
    Inheriting,
    Listening,
    ProtocolFactory,
    RelayFactory,
    dns_counts,
    udp_counts,
)
from proxyd.relay.proxy_header import HeaderPolicy, ProxyHeaderFactory
from proxyd.relay.udp import MAX_PACKET, UdpListener
from proxyd.tls import ServerTls
from proxyd.twisted_internals import accept_queued

log = Logger()

R = TypeVar("R", bound=RelayFactory)


class StartupError(Exception):
    """Something the operator must fix before proxyd can serve (a port in use, ...)."""


class Front(Factory):
    """The one factory of a listening port, for the port's life: it builds each connection's
    protocol with the factory serving now (`current`: a relay's, inside TLS if it has TLS).
    A reload points it at another one (swap); the connections built go on with theirs."""

    noisy = False

    def __init__(self, current: ProtocolFactory) -> None:
        self.current = current

    def swap(self, current: ProtocolFactory) -> None:
        """From the next connection accepted on, build with `current`: the factory replaced is
        stopped and `current` started, as the port would at its own stop and start."""
        old, self.current = self.current, current
        if self.numPorts:
            old.doStop()
            current.doStart()

    def startFactory(self) -> None:
        self.current.doStart()

    def stopFactory(self) -> None:
        self.current.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        return self.current.buildProtocol(addr)

    def logPrefix(self) -> str:
        return self.current.logPrefix()


class DatagramFront(DatagramProtocol):
    """The one protocol of a UDP listening port, for the port's life: it passes each datagram
    to the relay serving now, whose transport is the port. A reload may point it at a relay
    of another kind (swap)."""

    noisy = False

    def __init__(self, relay: DatagramProtocol) -> None:
        self.relay = relay

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.relay.makeConnection(transport)

    def doStop(self) -> None:
        self.transport = None
        self.relay.doStop()

    def swap(self, relay: DatagramProtocol) -> None:
        """From the next datagram on, deliver to `relay` (given the port as its transport);
        the relay replaced is stopped."""
        old, self.relay = self.relay, relay
        if self.transport is not None:
            old.doStop()
            relay.makeConnection(self.transport)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.relay.datagramReceived(datagram, addr)

    def connectionRefused(self) -> None:
        self.relay.connectionRefused()


class Listener(service.Service):
    """What every listener has: a name, an address (`description`), the port it accepts on
    (or the sockets bound for the workers), and a way to bind, adopt or take over a socket."""

    name: str

    def __init__(self, reactor: Any, name: str, description: str) -> None:
        self.setName(name)
        self._reactor = reactor
        self.description = description
        self.port: Any = None
        self.shared: SharedPort | None = None
        self._kept = False

    def _cannot_listen(self, why: str) -> StartupError:
        return StartupError(f"proxyd: [{self.name}] cannot listen on {self.description}: {why}")

    @property
    def datagram(self) -> bool:
        """A UDP listener: its socket can only be handed to another UDP listener."""
        return False

    def bind(self) -> None:
        """Listen now."""
        raise NotImplementedError

    def bind_shared(self, workers: int) -> SharedPort:
        """Bind the sockets `workers` worker processes will accept on (proxyd.workers)."""
        raise NotImplementedError

    def adopt(self, fd: int, family: int) -> None:
        """Accept on the socket the master passed as `fd` (closed here: Twisted keeps a
        duplicate)."""
        raise NotImplementedError

    def take_over(self, old: Listener) -> None:
        """Serve on `old`'s socket (a reload kept its address)."""
        raise NotImplementedError

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

    def stopService(self) -> Any:
        super().stopService()
        if self.shared is not None:
            shared, self.shared = self.shared, None
            shared.close()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class RelayListener(Listener):
    """A listener with a relay: its metrics (`relay.stats`) and counters (counts())."""

    relay: Counted

    def __init__(self, reactor: Any, name: str, description: str) -> None:
        super().__init__(reactor, name, description)
        self.carried: dict[str, int] = {}
        """The totals of the relays this listener's name had before a reload replaced them."""

    def counts(self) -> Counts:
        """The relay's counters of now (its totals going on from `carried`)."""
        raise NotImplementedError

    def carry_on(self, old: RelayListener) -> None:
        """This listener's relay replaces `old`'s (a listener of the same name): its totals go
        on from `old`'s, and it records its metrics into the same `stats`."""
        before = old.counts().totals
        mine = self.counts().totals
        self.carried = {key: before[key] for key in mine if key in before}
        self.relay.stats = old.relay.stats
        if isinstance(self.relay, Inheriting):
            self.relay.take_over(old.relay)

    def _counted(self, counts: Counts) -> Counts:
        if not self.carried:
            return counts
        carried = self.carried
        return Counts(
            counts.gauges,
            {key: value + carried.get(key, 0) for key, value in counts.totals.items()},
        )


class ListenerService(Listener):
    """One stream listening endpoint (tcp:, ssl:, unix:, ...), accepting with `factory` (inside
    `tls` if given; behind a PROXY header's reading, below TLS, with `proxy_header`). bind()
    listens at once so that errors surface before the process daemonizes; stopService stops
    accepting.

    With worker processes, the master calls bind_shared() instead (it binds but never
    accepts), and each worker adopt()s the socket the master passed it."""

    def __init__(
        self,
        reactor: Any,
        name: str,
        description: str,
        factory: Listening,
        tls: ServerTls | None = None,
        proxy_header: HeaderPolicy | None = None,
    ) -> None:
        super().__init__(reactor, name, description)
        self.factory = factory
        self.tls = tls
        self.proxy_header = proxy_header
        self.front = Front(self._listening())
        """The port's factory: a reload gives it to the listener that takes the port over."""
        self.accept_log: AcceptLog | None = None
        """Counts and logs the port's accept failures (proxyd.accept_log)."""

    def bind_shared(self, workers: int) -> SharedPort:
        try:
            self.shared = bind_stream(self._reactor, self.description, workers)
        except CannotListenError as e:
            raise self._cannot_listen(_why(e)) from None
        except NotShareable as e:
            raise StartupError(f"proxyd: [{self.name}] {e}") from None
        return self.shared

    def adopt(self, fd: int, family: int) -> None:
        try:
            self.port = adopt_stream(self._reactor, fd, family, self.front)
        finally:
            os.close(fd)
        self._listening_on(self.port)

    def bind(self) -> None:
        """Listen now, with proxyd's listen backlog unless the endpoint gives one."""
        endpoint = serverFromString(self._reactor, with_backlog(self.description))
        result: list[Any] = []
        endpoint.listen(self.front).addBoth(result.append)
        outcome = result[0]
        if not IListeningPort.providedBy(outcome):
            raise self._cannot_listen(_why(outcome.value))
        self.port = outcome
        self._listening_on(outcome)

    def _listening_on(self, port: IListeningPort) -> None:
        self.accept_log = watch(port, self._reactor, self.name, self.factory)
        self.factory.set_listening_port(port)

    def take_over(self, old: Listener) -> None:
        """Serve on `old`'s socket (a reload kept its address): from the next connection
        accepted on, this listener's factory builds the protocol (`old`'s Front, now this
        listener's, delegates to it). `old` keeps its connections and no longer has a
        socket."""
        assert isinstance(old, ListenerService)
        self.port, old.port = old.port, None
        self.shared, old.shared = old.shared, None
        self.accept_log, old.accept_log = old.accept_log, None
        self.front = old.front
        self.front.swap(self._listening())
        self._kept = True
        if self.port is not None:  # not the master's shared sockets, nor a worker not serving
            self._listening_on(self.port)

    def _listening(self) -> ProtocolFactory:
        """The factory the port accepts with: this listener's, inside TLS if it has TLS,
        behind the reading of a PROXY header (proxyd.relay.proxy_header) if it accepts one."""
        factory: ProtocolFactory = self.factory
        if self.tls is not None:
            factory = self.tls.wrap(cast(IProtocolFactory, self.factory), self._reactor)
        if self.proxy_header is not None:
            factory = ProxyHeaderFactory(factory, self._reactor, self.proxy_header)
        return factory

    def close(self) -> None:
        super().close()
        self._unwatch()

    def _unwatch(self) -> None:
        if self.accept_log is not None:
            accept_log, self.accept_log = self.accept_log, None
            accept_log.stop()

    def stopService(self) -> Any:
        service.Service.stopService(self)
        if self.shared is not None:
            shared, self.shared = self.shared, None
            shared.close()
        if self.port is not None:
            port, self.port = self.port, None
            # Accept what the kernel has queued: closing the socket would reset those
            # connections, whose clients saw their connect succeed. They get served.
            accept_queued(port)
            self._unwatch()
            return port.stopListening()
        return None


class StreamRelayListener(ListenerService, RelayListener):
    """The listener of a stream relay (`[tcp]`, `[http]`, `[https]`, `[websocket]`)."""

    relay: RelayFactory

    def __init__(
        self,
        reactor: Any,
        name: str,
        description: str,
        relay: R,
        counts: Callable[[R], Counts],
        proxy_header: HeaderPolicy | None = None,
    ) -> None:
        """`counts` reads the counters of a relay of this kind (proxyd.relay.factory);
        `proxy_header`: every connection begins with a PROXY header (accept_proxy)."""
        super().__init__(reactor, name, description, relay, relay.tls, proxy_header)
        self.relay = relay
        self._counts: Callable[[], Counts] = lambda: counts(relay)

    def counts(self) -> Counts:
        return self._counted(self._counts())


class UdpListenerService(RelayListener):
    """A `[udp NAME]`: Twisted has no udp: server endpoint, so it listens with listenUDP."""

    relay: UdpListener | DnsListener

    def __init__(
        self, reactor: Any, name: str, description: str, relay: UdpListener | DnsListener
    ) -> None:
        super().__init__(reactor, name, description)
        self.relay = relay
        self.front = DatagramFront(relay)
        """The port's protocol: a reload gives it to the listener that takes the port over."""

    @property
    def factory(self) -> UdpListener | DnsListener:
        """The relay (as a stream listener's `factory` is its relay)."""
        return self.relay

    def counts(self) -> Counts:
        relay = self.relay
        counts = udp_counts(relay) if isinstance(relay, UdpListener) else dns_counts(relay)
        return self._counted(counts)

    def bind(self) -> None:
        config = self.relay.config
        try:
            self.port = self._reactor.listenUDP(
                config.port, self.front, interface=config.interface, maxPacketSize=MAX_PACKET
            )
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

    def take_over(self, old: Listener) -> None:
        """Serve on `old`'s socket. A relay of the same kind is reconfigured in place, so
        that the client sessions open go on to their servers; one of another kind (dns
        instead of plain udp, or back) replaces it, and the old one's sessions end."""
        assert isinstance(old, UdpListenerService)
        self.port, old.port = old.port, None
        self.shared, old.shared = old.shared, None
        self.front = old.front
        self._kept = True
        if type(old.relay) is type(self.relay):
            old.relay.reconfigure(self.relay.config, self.relay.pool, self.relay.access_log)
            self.relay = old.relay
        elif self.port is not None:
            old.relay.stop()
            self.front.swap(self.relay)
        else:
            self.front.swap(self.relay)

    def adopt(self, fd: int, family: int) -> None:
        try:
            self.port = self._reactor.adoptDatagramPort(fd, family, self.front, MAX_PACKET)
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
