"""The UDP relay `[udp NAME]`: a session per client address (with `protocol = sip`, per
dialog: per Call-ID, whatever address its messages come from).

A client's first datagram picks a server (hash on the client's address by default, so a client
sticks to its server), opens a connected UDP socket to it, and from then on datagrams go both
ways: the client's to the server through that socket, the server's back to the client from the
listener's own address. A session ends after `session_timeout` without a datagram either way.

When the server answers with ICMP port unreachable (ECONNREFUSED on the connected socket), the
server gets a passive failure and the session moves to another one, re-sending the datagram the
server refused (it was never processed). Datagrams beyond `max_sessions` or
`max_datagram_size` are dropped and counted, and so are those from an address the listener's
`access` list refuses (every datagram is judged, before anything else: a SIP dialog's session
does not carry a refused address through).

Twisted has no udp: server endpoint, so `UdpListener.listen()` calls listenUDP itself, with
`maxPacketSize` raised to 65535 (Twisted's 8192 would silently truncate larger datagrams);
so does every socket to a server.
"""

from __future__ import annotations

import ipaddress
import typing
from collections.abc import Hashable
from typing import Any, cast

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, UdpListenerConfig
from proxyd.datagram import ConnectedDatagram
from proxyd.metrics import Cell, ErrorKind, RelayStats
from proxyd.pool import Affinity, Pool, Server, why_no_server
from proxyd.relay.session import Attempts, IdleTimer, iso_utc
from proxyd.sip import call_id

__all__ = ["UdpListener"]

_log = Logger(namespace="proxyd.relay.udp")

MAX_PACKET = 65535

ClientAddress = tuple[str, int]


class DatagramPort(typing.Protocol):
    """What the relay uses of a Twisted UDP port."""

    def write(self, datagram: bytes, addr: Any = None) -> None: ...

    def connect(self, host: str, port: int) -> None: ...

    def stopListening(self) -> Any: ...


class UdpReactor(typing.Protocol):
    """IReactorUDP & IReactorTime, as far as the relay uses them."""

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = ...
    ) -> Any: ...

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any: ...


@attrs.define(eq=False)
class Session:
    """A client (its address, or with protocol = sip a dialog's Call-ID) and the server its
    datagrams go to."""

    key: Hashable
    client: ClientAddress
    """Where the server's datagrams go: the address of the client's latest datagram."""
    affinity: Affinity
    """What `balance = hash` keys on: the first datagram's client, or its dialog."""
    started: float
    attempts: Attempts
    server: Server | None = None
    port: DatagramPort | None = None
    side: _ServerSide | None = None
    cell: Cell | None = None
    """The metrics of the pool and the server the session is attached to."""
    idle: IdleTimer | None = None
    last: bytes = b""
    """The last datagram sent to the server, re-sent to the next one if it is refused."""
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    moves: int = 0


class _ServerSide(ConnectedDatagram):
    """A session's connected socket to its server."""

    def __init__(self, relay: UdpListener, session: Session) -> None:
        self.relay = relay
        self.session = session

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.relay.from_server(self.session, datagram)

    def peer_refused(self) -> None:
        self.relay.refused(self.session)


class UdpListener(DatagramProtocol):
    """The listening side of one `[udp NAME]` and its session table."""

    noisy = False

    def __init__(
        self, reactor: UdpReactor, config: UdpListenerConfig, pool: Pool, access_log: AccessLog
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.access_log = access_log
        self.sessions: dict[Hashable, Session] = {}
        self.dropped_sessions = 0
        """Datagrams dropped because max_sessions sessions were open."""
        self.dropped_oversized = 0
        self.dropped_no_server = 0
        self.dropped_denied = 0
        """Datagrams dropped because the `access` list refused their source."""
        self.stats = RelayStats("udp", config.name)
        """The metrics by pool and server (proxyd.metrics)."""
        self.gate = Gate.of(config, reactor)
        """The `access` list (and the throttled log of refusals); None without one."""

    def listen(self) -> Any:
        return self.reactor.listenUDP(
            self.config.port, self, interface=self.config.interface, maxPacketSize=MAX_PACKET
        )

    # From clients.

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        client = (addr[0], addr[1])
        gate = self.gate
        if gate is not None and gate.admit(client[0]) is not None:
            self.dropped_denied += 1
            return
        if len(datagram) > self.config.max_datagram_size:
            self.dropped_oversized += 1
            return
        key, dialog = self._key(datagram, client)
        session = self.sessions.get(key)
        if session is None:
            limit = self.config.max_sessions
            if limit and len(self.sessions) >= limit:
                self.dropped_sessions += 1
                if self.dropped_sessions == 1 or self.dropped_sessions % 1000 == 0:
                    _log.warn(
                        "udp {listener}: max_sessions {limit} reached, {count} datagram(s) "
                        "dropped so far",
                        listener=self.config.name,
                        limit=limit,
                        count=self.dropped_sessions,
                    )
                return
            session = self._open(key, client, Affinity(Address(*client), dialog))
            if session is None:
                self.dropped_no_server += 1
                return
        session.client = client
        assert session.port is not None and session.idle is not None
        assert session.cell is not None
        session.idle.touch()
        session.datagrams_in += 1
        session.bytes_in += len(datagram)
        session.cell.datagrams_in += 1
        session.cell.bytes_in += len(datagram)
        session.last = datagram
        session.port.write(datagram)

    def _key(self, datagram: bytes, client: ClientAddress) -> tuple[Hashable, bytes | None]:
        """The session a datagram belongs to, and its SIP dialog (which `balance = hash`
        keys on, rather than the client, when there is one)."""
        if self.config.protocol == "sip":
            dialog = call_id(datagram)
            if dialog is not None:
                return ("call-id", dialog), dialog
        return client, None

    # From servers.

    def from_server(self, session: Session, datagram: bytes) -> None:
        if self.sessions.get(session.key) is not session:
            return
        if len(datagram) > self.config.max_datagram_size:
            session.dropped += 1
            self.dropped_oversized += 1
            return
        assert session.idle is not None and session.server is not None
        assert session.cell is not None
        session.idle.touch()
        session.datagrams_out += 1
        session.bytes_out += len(datagram)
        session.cell.datagrams_out += 1
        session.cell.bytes_out += len(datagram)
        if session.datagrams_out == 1:
            self.pool.report_success(session.server)
        if self.transport is not None:
            cast(DatagramPort, self.transport).write(datagram, session.client)

    def refused(self, session: Session) -> None:
        """ICMP port unreachable from the session's server: a failure; move the session."""
        if self.sessions.get(session.key) is not session or session.server is None:
            return
        server = session.server
        if session.cell is not None:
            session.cell.error(ErrorKind.PORT_UNREACHABLE)
        self.pool.report_failure(server, "port unreachable (ICMP)")
        _log.info(
            "udp {listener}: {server} refused datagrams from {client}'s session",
            listener=self.config.name,
            server=server.name,
            client=_show(session.client),
        )
        self._detach(session)
        session.moves += 1
        if not self._attach(session):
            self._close(session, "server_refused")
            return
        assert session.port is not None
        if session.last:
            session.port.write(session.last)

    # Sessions.

    def _open(self, key: Hashable, client: ClientAddress, affinity: Affinity) -> Session | None:
        session = Session(
            key, client, affinity, self.reactor.seconds(), Attempts(self.config.retries)
        )
        if not self._attach(session):
            why = why_no_server(self.pool)
            _log.warn(
                "udp {listener}: pool {pool}: {why}, dropping datagrams from {client}",
                listener=self.config.name,
                pool=self.pool.name,
                why=why,
                client=_show(client),
            )
            return None
        session.idle = IdleTimer(
            cast(IReactorTime, self.reactor),
            self.config.session_timeout,
            lambda: self._close(session, "idle_timeout"),
        )
        session.idle.start()
        self.sessions[key] = session
        return session

    def _attach(self, session: Session) -> bool:
        """Pick a server not tried yet and connect a socket to it."""
        while session.attempts.may_try_another():
            server = self.pool.pick(exclude=session.attempts.tried, affinity=session.affinity)
            if server is None:
                return False
            session.attempts.record(server)
            host = server.address.host
            try:
                family = ipaddress.ip_address(host).version
            except ValueError:
                _log.error(
                    "udp {listener}: server {server} is not an IP address; UDP pools need "
                    "addresses",
                    listener=self.config.name,
                    server=server.name,
                )
                continue
            side = _ServerSide(self, session)
            port = self.reactor.listenUDP(
                0, side, interface="::" if family == 6 else "", maxPacketSize=MAX_PACKET
            )
            port.connect(host, server.address.port)
            self.pool.acquire(server)
            session.server, session.port, session.side = server, port, side
            session.cell = self.stats.cell("", self.pool.name, server.name)
            session.cell.sessions += 1
            return True
        return False

    def _detach(self, session: Session) -> None:
        port, session.port = session.port, None
        side, session.side = session.side, None
        if side is not None:
            side.closing = True
        if port is not None:
            port.stopListening()
        if session.server is not None:
            self.pool.release(session.server)

    def _close(self, session: Session, reason: str) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        if session.idle is not None:
            session.idle.cancel()
        self._detach(session)
        self.access_log.log(self._record(session, reason))

    def reconfigure(self, config: UdpListenerConfig, pool: Pool, access_log: AccessLog) -> None:
        """A reload kept this listener's address: new sessions follow `config` and pick from
        `pool`; the sessions open go on to their servers, as they started, but every
        datagram is judged by the new `access` list."""
        self.config, self.pool, self.access_log = config, pool, access_log
        self.gate = Gate.of(config, self.reactor)

    def stop(self) -> None:
        """Close every session (the listener is stopping)."""
        for session in list(self.sessions.values()):
            self._close(session, "shutdown")

    def _record(self, session: Session, reason: str) -> dict[str, object]:
        now = self.reactor.seconds()
        return {
            "time": iso_utc(session.started),
            "listener": self.config.name,
            "client": _show(session.client),
            "backend": session.server.name if session.server is not None else None,
            "datagrams_in": session.datagrams_in,
            "datagrams_out": session.datagrams_out,
            "bytes_in": session.bytes_in,
            "bytes_out": session.bytes_out,
            "dropped": session.dropped,
            "moves": session.moves,
            "duration": round(max(0.0, now - session.started), 3),
            "close": reason,
        }


def _show(address: ClientAddress) -> str:
    return str(Address(*address))
