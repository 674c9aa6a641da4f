"""`accept_proxy = on` below a listener's relay: the PROXY protocol header (v1 or v2) every
connection begins with, read before anything else, and before TLS ([http], [https],
[websocket], and [tcp] with `certificates`; a plain [tcp] listener reads it in its own
preamble, proxyd.relay.tcp_preamble).

A ProxyHeaderFactory is the factory the listening port accepts with, in front of the relay's
(inside TLS when the listener has TLS). Each connection starts with a HeaderProtocol, which
reads the header (proxyd.relay.proxy_protocol's HeaderReader: at most 107 bytes for v1, 16 +
the length it gives for v2), then hands the same TCP connection over to the protocol the
relay's factory builds (proxyd.twisted_internals.hand_over) and gives it the bytes that
followed the header (a ClientHello, a request). From then on the reactor reads straight into
that protocol, and the connection answers getPeer() with the header's source and getHost()
with its destination: the relay sees the client the balancer saw, for everything (its
access lists, limits, logs, hash key, X-Forwarded-For), and costs nothing more per read. A
v1 `PROXY UNKNOWN` or a v2 LOCAL header (a balancer's health check) keeps the connection's own
addresses. A connection without a valid header, or without a whole one within the timeout, is
closed (a FIN, nothing sent), counted in the relay's errors and logged at most once a second
per listener. Listeners without accept_proxy never see this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import Address
from proxyd.metrics import RelayStats
from proxyd.relay.factory import ProtocolFactory
from proxyd.relay.proxy_protocol import HeaderReader, ProxyHeaderError, ReceivedHeader
from proxyd.twisted_internals import hand_over

__all__ = ["BAD_PROXY_HEADER", "HeaderPolicy", "HeaderProtocol", "ProxyHeaderFactory"]

_log = Logger(namespace="proxyd.relay.proxy_header")

BAD_PROXY_HEADER = "bad_proxy_header"
"""The errors counter's word (and the [tcp] access log's `close`) for a connection that does
not begin with a valid header."""
LOG_INTERVAL = 1.0
"""At most one log line a second per listener; the refusals in between are counted in the
next one."""


@attrs.frozen
class HeaderPolicy:
    """How one listener reads PROXY headers."""

    listener: str
    """The listener as its log lines name it: `https web`."""
    timeout: float
    """How long a connection has to send its whole header (the listener's header_timeout, or
    handshake_timeout)."""
    timeout_word: str
    """What a timeout counts as in the relay's errors (`header_timeout`,
    `handshake_timeout`)."""
    stats: Callable[[], RelayStats]
    """The relay's metrics of now (a reload hands them on): a refused connection is counted
    in its cell of no route, pool or server."""
    record: Callable[[Address | None, str, float], None] | None = None
    """Told of each refused connection instead (the connecting address, the word, when it
    was accepted): a [tcp] relay writes its access-log line and counts it as it counts its
    close reasons."""


class ProxyHeaderFactory(Factory):
    """The listening port's factory with accept_proxy: each connection reads its header
    first, then goes to `inner` (the relay's factory, inside TLS when there is TLS)."""

    noisy = False

    def __init__(self, inner: ProtocolFactory, clock: Clock, policy: HeaderPolicy) -> None:
        self.inner = inner
        self.clock = clock
        self.policy = policy
        self._next_line = 0.0
        self._suppressed = 0

    def startFactory(self) -> None:
        self.inner.doStart()

    def stopFactory(self) -> None:
        self.inner.doStop()

    def logPrefix(self) -> str:
        return self.inner.logPrefix()

    def buildProtocol(self, addr: IAddress | None) -> HeaderProtocol:
        return HeaderProtocol(self)

    def refused(self, peer: Address | None, word: str, why: str, started: float) -> None:
        """A connection closed before its header was read: counted (or recorded), and logged
        unless a line was written less than LOG_INTERVAL ago."""
        policy = self.policy
        if policy.record is not None:
            policy.record(peer, word, started)
        else:
            policy.stats().cell("", "", "").error(word)
        now = self.clock.seconds()
        if now < self._next_line:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next_line = now + LOG_INTERVAL
        text = "{listener}: {client}: {why}"
        if suppressed:
            text += " ({suppressed} more refused since the last such line)"
        _log.warn(
            text,
            listener=policy.listener,
            client="?" if peer is None else str(peer),
            why=why,
            reason=word,
            suppressed=suppressed,
        )


class HeaderProtocol(Protocol):
    """A connection until its PROXY header is read; then `inner`'s (see the module's
    docstring). It passes on what it is still given after that only where the transport
    could not be handed over (test transports)."""

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        self.header_factory = factory
        self.inner: Any = None
        self._reader: HeaderReader | None = HeaderReader()
        self._timer: DelayedCall | None = None
        self._started = 0.0

    def connectionMade(self) -> None:
        factory = self.header_factory
        self._started = factory.clock.seconds()
        self._timer = factory.clock.callLater(factory.policy.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.dataReceived(data)
            return
        reader = self._reader
        if reader is None:
            return  # refused: closing
        try:
            result = reader.feed(data)
        except ProxyHeaderError as e:
            self._refuse(BAD_PROXY_HEADER, str(e))
            return
        if result is not None:
            header, rest = result
            self._reader = None
            self._cancel_timer()
            self._hand_over(header, rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._reader = None
        self._cancel_timer()
        inner = self.inner
        if inner is not None:
            inner.connectionLost(reason)

    def _hand_over(self, header: ReceivedHeader, rest: bytes) -> None:
        transport: Any = self.transport
        peer: IAddress | None = None
        host: IAddress | None = None
        if header.source is not None:
            peer = _twisted(header.source)
            if header.destination is not None:
                host = _twisted(header.destination)
        inner: Any = self.header_factory.inner.buildProtocol(peer or transport.getPeer())
        if inner is None:
            transport.loseConnection()
            return
        if not hand_over(transport, inner, peer, host):
            self.inner = inner
        inner.makeConnection(transport)
        if rest and not transport.disconnecting:
            inner.dataReceived(rest)

    def _timed_out(self) -> None:
        self._timer = None
        if self._reader is not None:
            timeout = self.header_factory.policy.timeout
            word = self.header_factory.policy.timeout_word
            self._refuse(word, f"no PROXY protocol header within {timeout:g}s")

    def _refuse(self, word: str, why: str) -> None:
        self._reader = None
        self._cancel_timer()
        transport: Any = self.transport
        peer = _address(transport.getPeer())
        self.header_factory.refused(peer, word, why, self._started)
        transport.loseConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _twisted(address: Address) -> Any:
    """An Address (normalised by the header's reader) as Twisted's address of a TCP peer."""
    if ":" in address.host:
        return IPv6Address("TCP", address.host, address.port)
    return IPv4Address("TCP", address.host, address.port)


def _address(address: object) -> Address | None:
    host = getattr(address, "host", None)
    return None if host is None else Address(host, getattr(address, "port", 0))
