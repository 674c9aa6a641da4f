"""`[udp NAME]` with `protocol = dns`: query-level DNS relaying.

Each query is parsed (dnspython); a malformed one, or a response sent to the listener, is
dropped and counted, never relayed. A valid query goes to a server of the pool through one
connected socket per server, shared by every client: proxyd gives it a fresh random ID on that
socket, and restores the client's ID in the answer, whose question must match the query's.
Without an answer within `query_timeout` the server gets a passive failure and the query is
sent to another server (up to `retries` times). Answers are passed on as they are, truncated
ones too (TC: the client retries over TCP, which a `[tcp]` listener on the same pool serves).
"""

from __future__ import annotations

import random
import struct
from typing import Any, cast

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.clock import DelayedCall
from proxyd.config.model import Address, UdpListenerConfig
from proxyd.datagram import ConnectedDatagram
from proxyd.metrics import Cell, ErrorKind, RelayStats
from proxyd.pool import Affinity, Pool, Server
from proxyd.relay.session import Attempts, iso_utc
from proxyd.relay.udp import MAX_PACKET, ClientAddress, DatagramPort, UdpReactor

__all__ = ["DnsListener", "parse_query"]

_log = Logger(namespace="proxyd.relay.dns")

Question = tuple[tuple[str, int, int], ...]
"""(lower-case name, type, class) per question: what an answer must repeat."""


def parse_query(datagram: bytes) -> Question | None:
    """The question of a well-formed DNS query, or None (malformed, or not a query)."""
    try:
        message = dns.message.from_wire(datagram, ignore_trailing=False)
    except (dns.exception.DNSException, ValueError, struct.error):
        return None
    if message.flags & dns.flags.QR or message.opcode() != dns.opcode.QUERY:
        return None
    if len(message.question) != 1:
        return None
    return _question(message)


def _question(message: dns.message.Message) -> Question:
    return tuple(
        (rrset.name.to_text().lower(), int(rrset.rdtype), int(rrset.rdclass))
        for rrset in message.question
    )


def _answer_question(datagram: bytes) -> Question | None:
    try:
        message = dns.message.from_wire(datagram, ignore_trailing=True, question_only=True)
    except (dns.exception.DNSException, ValueError, struct.error):
        return None
    if not message.flags & dns.flags.QR:
        return None
    return _question(message)


@attrs.define(eq=False)
class _Query:
    client: ClientAddress
    client_id: bytes
    datagram: bytes
    question: Question
    attempts: Attempts
    started: float
    server: Server | None = None
    upstream_id: int = -1
    timer: DelayedCall | None = None


class _Upstream(ConnectedDatagram):
    """The shared connected socket to one server, and the queries waiting on it by ID."""

    def __init__(self, relay: DnsListener, server: Server, cell: Cell) -> None:
        self.relay = relay
        self.server = server
        self.cell = cell
        """The metrics of the pool and this server."""
        self.port: DatagramPort | None = None
        self.pending: dict[int, _Query] = {}

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.relay.answer(self, datagram)

    def peer_refused(self) -> None:
        self.relay.refused(self)


class DnsListener(DatagramProtocol):
    """The listening side of a `[udp NAME]` with `protocol = dns`."""

    noisy = False

    def __init__(
        self,
        reactor: UdpReactor,
        config: UdpListenerConfig,
        pool: Pool,
        access_log: AccessLog,
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.access_log = access_log
        self.rng = rng or random.SystemRandom()
        self.upstreams: dict[Server, _Upstream] = {}
        self.malformed = 0
        """Datagrams that were not a well-formed DNS query: dropped."""
        self.dropped_oversized = 0
        self.dropped_no_server = 0
        self.dropped_denied = 0
        """Datagrams from a source the listener's `access` denies."""
        self.gate = Gate.of(config, reactor)
        self.unmatched = 0
        """Answers with no waiting query or a question that does not match: dropped."""
        self.failed = 0
        """Queries no server answered in time (after every retry)."""
        self.stats = RelayStats("udp", config.name)
        """The metrics by pool and server (proxyd.metrics)."""

    def listen(self) -> Any:
        return self.reactor.listenUDP(
            self.config.port, self, interface=self.config.interface, maxPacketSize=MAX_PACKET
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        gate = self.gate
        if gate is not None and gate.admit(addr[0]) is not None:
            self.dropped_denied += 1
            return
        if len(datagram) > self.config.max_datagram_size:
            self.dropped_oversized += 1
            return
        question = parse_query(datagram)
        if question is None:
            self.malformed += 1
            return
        query = _Query(
            (addr[0], addr[1]),
            datagram[:2],
            datagram,
            question,
            Attempts(self.config.retries),
            self.reactor.seconds(),
        )
        self._send(query)

    def _send(self, query: _Query) -> None:
        server = None
        if query.attempts.may_try_another():
            affinity = Affinity(Address(*query.client))
            server = self.pool.pick(exclude=query.attempts.tried, affinity=affinity)
        if server is None:
            if not query.attempts.tried:
                self.dropped_no_server += 1
            else:
                self.failed += 1
                self._log(query, None)
            return
        tried = query.attempts.tried
        if tried:
            self.stats.cell("", self.pool.name, tried[-1].name).retries += 1
        query.attempts.record(server)
        upstream = self._upstream(server)
        if upstream is None or len(upstream.pending) >= 65536:
            self._send(query)
            return
        while True:
            new_id = self.rng.getrandbits(16)
            if new_id not in upstream.pending:
                break
        upstream.pending[new_id] = query
        query.server, query.upstream_id = server, new_id
        query.timer = self.reactor.callLater(self.config.query_timeout, self._timed_out, query)
        assert upstream.port is not None
        upstream.port.write(struct.pack("!H", new_id) + query.datagram[2:])
        upstream.cell.datagrams_in += 1
        upstream.cell.bytes_in += len(query.datagram)

    def _upstream(self, server: Server) -> _Upstream | None:
        upstream = self.upstreams.get(server)
        if upstream is not None:
            return upstream
        host = server.address.host
        if ":" not in host and not host.replace(".", "").isdigit():
            _log.error(
                "udp {listener}: server {server} is not an IP address; UDP pools need addresses",
                listener=self.config.name,
                server=server.name,
            )
            return None
        upstream = _Upstream(self, server, self.stats.cell("", self.pool.name, server.name))
        port = self.reactor.listenUDP(
            0, upstream, interface="::" if ":" in host else "", maxPacketSize=MAX_PACKET
        )
        port.connect(host, server.address.port)
        upstream.port = port
        self.upstreams[server] = upstream
        return upstream

    def answer(self, upstream: _Upstream, datagram: bytes) -> None:
        cell = upstream.cell
        if len(datagram) < 12:
            self.unmatched += 1
            cell.error(ErrorKind.UNMATCHED)
            return
        (upstream_id,) = struct.unpack("!H", datagram[:2])
        query = upstream.pending.get(upstream_id)
        if query is None or _answer_question(datagram) != query.question:
            self.unmatched += 1
            cell.error(ErrorKind.UNMATCHED)
            return
        del upstream.pending[upstream_id]
        self._cancel(query)
        self.pool.report_success(upstream.server)
        cell.datagrams_out += 1
        cell.bytes_out += len(datagram)
        cell.query_duration.observe(self.reactor.seconds() - query.started)
        if self.transport is not None:
            cast(DatagramPort, self.transport).write(query.client_id + datagram[2:], query.client)
        self._log(query, datagram)

    def _timed_out(self, query: _Query) -> None:
        query.timer = None
        server = query.server
        assert server is not None
        upstream = self.upstreams.get(server)
        if upstream is not None:
            upstream.pending.pop(query.upstream_id, None)
        self.stats.cell("", self.pool.name, server.name).error(ErrorKind.QUERY_TIMEOUT)
        self.pool.report_failure(server, f"no DNS answer within {self.config.query_timeout:g}s")
        self._send(query)

    def refused(self, upstream: _Upstream) -> None:
        """ICMP port unreachable on a server's socket: every query on it goes elsewhere."""
        if self.upstreams.get(upstream.server) is not upstream:
            return
        del self.upstreams[upstream.server]
        upstream.cell.error(ErrorKind.PORT_UNREACHABLE)
        upstream.closing = True
        if upstream.port is not None:
            upstream.port.stopListening()
        self.pool.report_failure(upstream.server, "port unreachable (ICMP)")
        waiting, upstream.pending = list(upstream.pending.values()), {}
        for query in waiting:
            self._cancel(query)
            self._send(query)

    def reconfigure(self, config: UdpListenerConfig, pool: Pool, access_log: AccessLog) -> None:
        """A reload kept this listener's address: new queries follow `config` and go to
        `pool`; the queries waiting for an answer get it from their servers."""
        self.config, self.pool, self.access_log = config, pool, access_log
        self.gate = Gate.of(config, self.reactor)

    def stop(self) -> None:
        for upstream in list(self.upstreams.values()):
            upstream.closing = True
            for query in upstream.pending.values():
                self._cancel(query)
            if upstream.port is not None:
                upstream.port.stopListening()
        self.upstreams.clear()

    @staticmethod
    def _cancel(query: _Query) -> None:
        timer, query.timer = query.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _log(self, query: _Query, answer: bytes | None) -> None:
        if not self.access_log.enabled:
            return
        name, rdtype, _ = query.question[0]
        rcode = None
        if answer is not None:
            (flags,) = struct.unpack("!H", answer[2:4])
            rcode = dns.rcode.to_text(dns.rcode.from_flags(flags, 0))
        self.access_log.log(
            {
                "time": iso_utc(query.started),
                "listener": self.config.name,
                "client": str(Address(*query.client)),
                "query": name,
                "type": dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype)),
                "backend": query.server.name if query.server is not None else None,
                "rcode": rcode,
                "attempts": query.attempts.count,
                "duration": round(max(0.0, self.reactor.seconds() - query.started), 3),
                **({"error": "no answer"} if answer is None else {}),
            }
        )
