"""`[tcp NAME]`: the raw TCP relay over MemoryReactorClock, StringTransport and iosim."""

from __future__ import annotations

import io
import json
import socket
import struct
from collections.abc import Collection
from typing import Any

import attrs
import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import AccumulatingProtocol, MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim

from proxyd.accesslog import AccessLog
from proxyd.config.model import Address, PoolConfig, ServerConfig, TcpListenerConfig
from proxyd.pool import Affinity, Pool, Server, client_hash_key, hash_key
from proxyd.relay.proxy_protocol import encode_v1, encode_v2
from proxyd.relay.session import Attempts, CloseReason, IdleTimer, Side, close_reason
from proxyd.relay.tcp import TcpRelayFactory

CLIENT = ("203.0.113.7", 51000)
LISTENER = ("198.51.100.1", 13306)
SERVERS = ("10.0.0.1:3306", "10.0.0.2:3306", "10.0.0.3:3306")
START = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


# Fakes: a pool with the real Pool's API, a TCP-like transport, a listening port.


class FakePool:
    """Pool API: picks the first up server not excluded; records every call."""

    def __init__(self, servers: Collection[str], balance: str = "hash") -> None:
        self.name = "db"
        self.config = PoolConfig(name="db", servers=(), balance=balance)
        self.servers = [
            Server(ServerConfig(Address(host, int(port))), pool="db")
            for host, port in (s.rsplit(":", 1) for s in servers)
        ]
        self.down: set[Server] = set()
        self.picks: list[tuple[bytes | None, tuple[Server, ...]]] = []
        self.failures: list[tuple[Server, str]] = []
        self.successes: list[Server] = []

    def pick(
        self,
        key: bytes | None = None,
        exclude: Collection[Server] = (),
        *,
        affinity: Affinity | None = None,
    ) -> Server | None:
        """Records the hash key the real pool would make of `affinity` (its hash_key)."""
        if affinity is not None:
            key = hash_key(self.config.balance, affinity)
        self.picks.append((key, tuple(exclude)))
        for server in self.servers:
            if server not in exclude and server not in self.down:
                return server
        return None

    def acquire(self, server: Server) -> None:
        server.active += 1

    def release(self, server: Server) -> None:
        assert server.active > 0
        server.active -= 1

    def report_success(self, server: Server) -> None:
        self.successes.append(server)

    def report_failure(self, server: Server, reason: str) -> None:
        self.failures.append((server, reason))

    waiting = None

    def any_up(self) -> bool:
        return len(self.down) < len(self.servers)

    @property
    def active(self) -> int:
        return sum(s.active for s in self.servers)


@attrs.define
class FakeSocket:
    options: list[tuple[int, int, bytes]] = attrs.Factory(list)

    def setsockopt(self, level: int, name: int, value: bytes) -> None:
        self.options.append((level, name, value))


class FakeTcpTransport(StringTransport):
    """StringTransport with TCP's half-close and abort; losses arrive on the next clock tick,
    as they do from a real reactor."""

    def __init__(self, reactor: MemoryReactorClock, peer: Any, host: Any) -> None:
        super().__init__(hostAddress=host, peerAddress=peer)
        self.reactor = reactor
        self.protocol: Protocol | None = None
        self.socket = FakeSocket()
        self.write_closed = False
        self.aborted = False
        self._lost = False

    def getHandle(self) -> FakeSocket:
        return self.socket

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def loseConnection(self) -> None:
        super().loseConnection()
        self._deliver_loss(ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()
        self._deliver_loss(ConnectionAborted())

    def _deliver_loss(self, exc: Exception) -> None:
        if not self._lost and self.protocol is not None:
            self._lost = True
            self.reactor.callLater(0, self.protocol.connectionLost, Failure(exc))

    def peer_lost(self, exc: Exception) -> None:
        """The far end went away (a reset with ConnectionLost)."""
        assert self.protocol is not None and not self._lost
        self._lost = True
        self.protocol.connectionLost(Failure(exc))

    def reset_by_rst(self) -> bool:
        return self.aborted and self.socket.options == [
            (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ]


class FakePort:
    def __init__(self) -> None:
        self.reading = True
        self.disconnecting = False
        self.calls: list[str] = []

    def stopReading(self) -> None:
        self.reading = False
        self.calls.append("stop")

    def startReading(self) -> None:
        self.reading = True
        self.calls.append("start")


@attrs.define
class End:
    protocol: Protocol
    transport: FakeTcpTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def fin(self) -> None:
        self.protocol.readConnectionLost()  # type: ignore[attr-defined]

    def received(self) -> bytes:
        return self.transport.value()

    @property
    def paused(self) -> bool:
        return self.transport.producerState == "paused"


class Harness:
    def __init__(self, servers: Collection[str] = SERVERS, **config: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(START)
        config.setdefault("pool", "db")
        self.config = TcpListenerConfig(name="db", listen="tcp:13306", **config)
        self.pool = FakePool(servers)
        self.stream = io.StringIO()
        self.factory = TcpRelayFactory(
            self.reactor,
            self.config,
            {"db": self.pool},  # type: ignore[dict-item]
            AccessLog(self.stream, "memory"),
        )

    def accept(self, peer: tuple[str, int] = CLIENT, transport: Any = None) -> End:
        address = IPv6Address if ":" in peer[0] else IPv4Address
        if transport is None:
            transport = FakeTcpTransport(
                self.reactor, address("TCP", *peer), IPv4Address("TCP", *LISTENER)
            )
        protocol = self.factory.buildProtocol(transport.getPeer())
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return End(protocol, transport)

    @property
    def attempts(self) -> list[tuple[str, int, Any, float, Any]]:
        return self.reactor.tcpClients

    def connect_server(self, index: int = -1) -> End:
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        transport = FakeTcpTransport(
            self.reactor, IPv4Address("TCP", host, port), IPv4Address("TCP", "10.9.9.9", 40000)
        )
        protocol = factory.buildProtocol(transport.getPeer())
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return End(protocol, transport)

    def fail_connect(self, index: int = -1, exc: Exception | None = None) -> None:
        factory = self.reactor.tcpClients[index][2]
        connector = self.reactor.connectors[index]
        factory.clientConnectionFailed(connector, Failure(exc or ConnectionRefusedError()))

    def relay(self) -> tuple[End, End]:
        client = self.accept()
        return client, self.connect_server()

    def settle(self) -> None:
        self.reactor.advance(0)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def record(self) -> dict[str, Any]:
        (record,) = self.records()
        return record


# Connecting.


def test_client_is_paused_until_the_server_is_connected_then_resumed() -> None:
    h = Harness()
    client = h.accept()
    assert client.paused
    assert [(host, port) for host, port, *_ in h.attempts] == [("10.0.0.1", 3306)]
    server = h.connect_server()
    assert not client.paused
    assert h.pool.successes == [h.pool.servers[0]]
    assert client.transport.producer is server.transport
    assert server.transport.producer is client.transport


def test_bytes_relay_both_ways() -> None:
    h = Harness()
    client, server = h.relay()
    client.send(b"SELECT 1;")
    server.send(b"1 row")
    client.send(b"SELECT 2;")
    assert server.received() == b"SELECT 1;SELECT 2;"
    assert client.received() == b"1 row"


def test_bytes_received_before_the_server_connects_are_sent_first() -> None:
    h = Harness()
    client = h.accept()
    client.send(b"early ")  # a read already under way when the client was paused
    server = h.connect_server()
    client.send(b"late")
    assert server.received() == b"early late"


def test_hash_key_is_the_client_ip_packed() -> None:
    h = Harness()
    h.accept()
    assert h.pool.picks == [(bytes([203, 0, 113, 7]), ())]
    assert client_hash_key(Address("::ffff:203.0.113.7", 1)) == bytes([203, 0, 113, 7])
    assert client_hash_key(Address("2001:db8::1", 1)) == bytes.fromhex(f"20010db8{'00' * 11}01")
    assert client_hash_key(None) is None


def test_no_hash_key_is_made_for_a_pool_that_does_not_balance_by_hash() -> None:
    h = Harness()
    h.pool.config = attrs.evolve(h.pool.config, balance="round_robin")
    h.accept()
    assert h.pool.picks == [(None, ())]


def test_connect_uses_the_configured_connect_timeout() -> None:
    h = Harness(connect_timeout=1.5)
    h.accept()
    assert h.attempts[0][3] == 1.5


def test_connect_failure_reports_it_and_tries_the_next_server() -> None:
    h = Harness()
    client = h.accept()
    h.fail_connect()
    first, second = h.pool.servers[:2]
    assert h.pool.failures == [(first, "Connection was refused by other side.")]
    assert h.pool.picks[1] == (bytes([203, 0, 113, 7]), (first,))
    assert h.attempts[1][:2] == ("10.0.0.2", 3306)
    assert first.active == 0 and second.active == 1
    server = h.connect_server()
    client.send(b"hi")
    assert server.received() == b"hi"
    assert h.pool.successes == [second]


def test_connect_timeout_counts_as_a_failure_and_tries_the_next_server() -> None:
    h = Harness()
    h.accept()
    h.fail_connect(exc=TimeoutError())
    assert h.pool.failures == [(h.pool.servers[0], "User timeout caused connection failure.")]
    assert len(h.attempts) == 2


def test_exhausted_retries_close_the_client_with_connect_failed() -> None:
    h = Harness(retries=1)
    client = h.accept()
    with capturedLogs() as events:
        h.fail_connect()
        h.fail_connect()
    assert len(h.attempts) == 2  # the first try and one retry; the third server is not tried
    assert len(h.pool.failures) == 2
    assert client.transport.disconnecting
    h.settle()
    record = h.record()
    assert record["close"] == "connect_failed"
    assert record["connect_attempts"] == 2
    assert record["backend"] == "10.0.0.2:3306"
    assert h.pool.active == 0
    assert any("connect failed after 2 attempt(s)" in e.get("why", "") for e in events)


def test_running_out_of_servers_before_retries_is_connect_failed() -> None:
    h = Harness(servers=SERVERS[:1], retries=3)
    h.accept()
    h.fail_connect()
    h.settle()
    assert h.record()["close"] == "connect_failed"
    assert h.record()["connect_attempts"] == 1


def test_no_server_closes_the_client_at_once_and_says_why() -> None:
    h = Harness()
    h.pool.down = set(h.pool.servers)
    with capturedLogs() as events:
        client = h.accept()
    assert client.transport.disconnecting
    assert h.attempts == []
    assert [e["why"] for e in events if "why" in e] == ["no server up"]
    h.settle()
    record = h.record()
    assert record["close"] == "no_server"
    assert (record["backend"], record["connect_attempts"]) == (None, 0)


def test_a_connect_that_succeeds_after_the_relay_gave_up_is_dropped() -> None:
    h = Harness(idle_timeout=2.0, connect_timeout=5.0)
    h.accept()
    h.reactor.advance(2.0)  # idle while connecting
    assert h.reactor.connectors[0].stoppedConnecting
    factory = h.attempts[0][2]
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3306)) is None
    h.fail_connect()  # Twisted reports the stopped attempt: not the server's fault
    assert h.pool.failures == []
    h.settle()
    assert h.record()["close"] == "idle_timeout"
    assert h.pool.active == 0


# Streaming, closing, resetting.


def test_backpressure_pauses_and_resumes_the_other_side() -> None:
    h = Harness()
    client, server = h.relay()
    # The client's transport has a full write buffer: it pauses its producer, the server.
    client.transport.producer.pauseProducing()
    assert server.paused
    client.transport.producer.resumeProducing()
    assert not server.paused
    server.transport.producer.pauseProducing()
    assert client.paused
    server.transport.producer.resumeProducing()
    assert not client.paused


class SlowReader(FileDescriptor):
    """A transport with Twisted's real write buffer and producer logic, whose peer reads only
    when told to (`drain`)."""

    bufferSize = 1024

    def __init__(self, reactor: MemoryReactorClock) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.delivered = b""
        self._can_send = 0

    def writeSomeData(self, data: bytes) -> int:
        sent = bytes(data[: self._can_send])
        self._can_send -= len(sent)
        self.delivered += sent
        return len(sent)

    def drain(self) -> None:
        self._can_send = 1 << 30
        self.doWrite()
        self._can_send = 0

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", *CLIENT)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", *LISTENER)


def test_a_slow_client_pauses_reading_from_the_server_until_it_catches_up() -> None:
    h = Harness(buffer_size=1024)
    slow = SlowReader(h.reactor)
    h.accept(transport=slow)
    assert slow not in h.reactor.getReaders()  # paused until the server is there
    server = h.connect_server()
    assert slow in h.reactor.getReaders()
    server.send(b"x" * 1000)
    assert not server.paused
    server.send(b"x" * 1000)  # past the client's buffer: the server is paused
    assert server.paused
    slow.drain()
    assert not server.paused
    assert slow.delivered == b"x" * 2000


def test_a_slow_server_pauses_reading_from_the_client_until_it_catches_up() -> None:
    h = Harness(buffer_size=1024)
    client = h.accept()
    slow = SlowReader(h.reactor)
    host, port, factory, _, _ = h.attempts[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    protocol.makeConnection(slow)
    client.send(b"y" * 2000)
    assert client.paused
    slow.drain()
    assert not client.paused
    assert slow.delivered == b"y" * 2000


def test_buffer_size_is_set_on_both_legs_once_connected() -> None:
    h = Harness(buffer_size=4096)
    slow = SlowReader(h.reactor)
    h.accept(transport=slow)
    assert slow.bufferSize == 1024
    h.connect_server()
    assert slow.bufferSize == 4096


def test_client_half_close_is_passed_on_and_the_server_can_still_answer() -> None:
    h = Harness()
    client, server = h.relay()
    client.send(b"request")
    client.fin()
    assert server.transport.write_closed
    assert server.transport.producer is None  # the client will produce nothing more
    assert not client.transport.disconnecting and not server.transport.disconnecting
    server.send(b"response")
    assert client.received() == b"response"
    server.fin()
    assert client.transport.disconnecting and server.transport.disconnecting
    h.settle()
    assert h.record()["close"] == "client_closed"


def test_server_half_close_is_passed_on_and_the_client_can_still_send() -> None:
    h = Harness()
    client, server = h.relay()
    server.fin()
    assert client.transport.write_closed
    assert not server.transport.disconnecting
    client.send(b"more")
    assert server.received() == b"more"
    client.fin()
    h.settle()
    assert h.record()["close"] == "server_closed"


def test_client_reset_aborts_the_server_with_an_rst() -> None:
    h = Harness()
    client, server = h.relay()
    client.transport.peer_lost(ConnectionLost())
    assert server.transport.reset_by_rst()
    h.settle()
    assert h.record()["close"] == "client_reset"
    assert h.pool.active == 0


def test_server_reset_aborts_the_client_with_an_rst() -> None:
    h = Harness()
    client, server = h.relay()
    server.transport.peer_lost(ConnectionLost())
    assert client.transport.reset_by_rst()
    h.settle()
    assert h.record()["close"] == "server_reset"


def test_clean_loss_of_one_side_closes_the_other_cleanly() -> None:
    h = Harness()
    client, server = h.relay()
    server.transport.peer_lost(ConnectionDone())
    assert client.transport.disconnecting and not client.transport.aborted
    h.settle()
    assert h.record()["close"] == "server_closed"


def test_reset_after_a_half_close_still_aborts_the_other_side() -> None:
    h = Harness()
    client, server = h.relay()
    client.fin()
    client.transport.peer_lost(ConnectionLost())  # writing to a client that had closed
    assert server.transport.reset_by_rst()
    h.settle()
    assert h.record()["close"] == "client_closed"  # the first thing that happened


# Idle timeout.


def test_idle_timeout_closes_both_sides() -> None:
    h = Harness(idle_timeout=60.0)
    client, server = h.relay()
    h.reactor.advance(59.9)
    assert not client.transport.disconnecting
    h.reactor.advance(0.1)
    assert client.transport.disconnecting and server.transport.disconnecting
    h.settle()
    record = h.record()
    assert record["close"] == "idle_timeout"
    assert record["duration"] == 60.0


def test_activity_postpones_the_idle_timeout_without_rescheduling_per_chunk() -> None:
    h = Harness(idle_timeout=60.0)
    client, server = h.relay()
    h.reactor.advance(50)
    calls = h.reactor.getDelayedCalls()
    for _ in range(100):
        client.send(b"x")
        server.send(b"y")
    assert h.reactor.getDelayedCalls() == calls  # the same single call, untouched
    h.reactor.advance(10)  # fires, sees activity 10s ago, re-arms for 50s
    assert not client.transport.disconnecting
    assert len(h.reactor.getDelayedCalls()) == 1
    h.reactor.advance(49.9)
    assert not client.transport.disconnecting
    h.reactor.advance(0.1)
    assert client.transport.disconnecting


def test_a_close_that_stays_stuck_for_another_idle_timeout_is_aborted() -> None:
    h = Harness(idle_timeout=60.0)
    client, server = h.relay()
    client.transport.protocol = server.transport.protocol = None  # losses never arrive
    h.reactor.advance(60)
    assert client.transport.disconnecting and not client.transport.aborted
    h.reactor.advance(60)
    assert client.transport.aborted and server.transport.aborted


def test_idle_timer_alone() -> None:
    clock = MemoryReactorClock()
    fired: list[float] = []
    timer = IdleTimer(clock, 10.0, lambda: fired.append(clock.seconds()))
    timer.start()
    clock.advance(4)
    timer.touch()
    clock.advance(6)
    assert fired == []
    clock.advance(4)
    assert fired == [14.0]
    IdleTimer(clock, 0, lambda: fired.append(-1)).start()  # 0 disables it
    assert clock.getDelayedCalls() == []


# PROXY protocol.


def test_send_proxy_v1_header_goes_before_any_relayed_byte() -> None:
    h = Harness(send_proxy="v1")
    client = h.accept()
    client.send(b"early")
    server = h.connect_server()
    assert server.received() == b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 13306\r\nearly"


def test_send_proxy_v2_header_for_an_ipv6_client() -> None:
    h = Harness(send_proxy="v2")
    h.accept(peer=("2001:db8::7", 51000))
    server = h.connect_server()
    expected = encode_v2(Address("2001:db8::7", 51000), Address(*LISTENER))
    assert server.received() == expected
    assert expected[13] == 0x21  # mixed families: sent as TCP over IPv6


def test_accept_proxy_header_sets_the_client_address() -> None:
    h = Harness(accept_proxy=True, send_proxy="v1")
    client = h.accept()
    assert not client.paused  # reading the header
    assert h.attempts == []
    client.send(b"PROXY TCP4 192.0.2.10 192.0.2.20 40000 3306\r\nhello")
    assert client.paused
    assert h.pool.picks == [(bytes([192, 0, 2, 10]), ())]
    server = h.connect_server()
    header = encode_v1(Address("192.0.2.10", 40000), Address("192.0.2.20", 3306))
    assert server.received() == header + b"hello"
    client.fin()
    server.fin()
    h.settle()
    record = h.record()
    assert record["client"] == "192.0.2.10:40000"
    assert record["bytes_in"] == 5


def test_accept_proxy_header_in_pieces_and_v2() -> None:
    h = Harness(accept_proxy=True)
    client = h.accept()
    wire = encode_v2(Address("2001:db8::9", 1234), Address("2001:db8::1", 3306)) + b"x"
    for i in range(len(wire) - 2):
        client.send(wire[i : i + 1])
    assert h.attempts == []
    client.send(wire[-2:])
    server = h.connect_server()
    assert server.received() == b"x"
    server.transport.peer_lost(ConnectionDone())
    h.settle()
    assert h.record()["client"] == "[2001:db8::9]:1234"


def test_accept_proxy_unknown_keeps_the_real_address() -> None:
    h = Harness(accept_proxy=True)
    client = h.accept()
    client.send(b"PROXY UNKNOWN\r\n")
    assert h.pool.picks == [(bytes([203, 0, 113, 7]), ())]


def test_accept_proxy_rejects_a_connection_without_a_header() -> None:
    h = Harness(accept_proxy=True)
    client = h.accept()
    client.send(b"GET / HTTP/1.1\r\n")
    assert client.transport.disconnecting
    h.settle()
    record = h.record()
    assert (record["close"], record["client"]) == ("bad_proxy_header", "203.0.113.7:51000")
    assert h.attempts == []


def test_accept_proxy_client_leaving_before_the_header() -> None:
    h = Harness(accept_proxy=True)
    client = h.accept()
    client.send(b"PROXY TCP4")
    client.fin()
    h.settle()
    assert h.record()["close"] == "client_closed"


# max_connections.


def test_max_connections_queue_stops_reading_the_port_and_resumes_it() -> None:
    h = Harness(max_connections=2, on_max_connections="queue")
    port = FakePort()
    h.factory.set_listening_port(port)  # type: ignore[arg-type]
    first, _ = h.relay()
    assert port.calls == []
    h.relay()
    assert port.calls == ["stop"]
    first.transport.peer_lost(ConnectionLost())
    h.settle()
    assert port.calls == ["stop", "start"]
    assert h.factory.active == 1


def test_max_connections_queue_holds_a_burst_paused_until_a_slot_frees() -> None:
    h = Harness(max_connections=1, on_max_connections="queue")
    port = FakePort()
    h.factory.set_listening_port(port)  # type: ignore[arg-type]
    first, _ = h.relay()
    waiting = h.accept()  # accepted in the same accept() loop as the port stopped reading
    assert waiting.paused and len(h.attempts) == 1 and h.factory.waiting == 1
    first.transport.peer_lost(ConnectionDone())
    h.settle()
    assert len(h.attempts) == 2 and h.factory.waiting == 0
    assert port.calls == ["stop"]  # the freed slot went to the waiting client
    server = h.connect_server()
    assert not waiting.paused
    waiting.send(b"now")
    assert server.received() == b"now"


def test_max_connections_queue_leaves_a_stopped_port_stopped() -> None:
    h = Harness(max_connections=1, on_max_connections="queue")
    port = FakePort()
    h.factory.set_listening_port(port)  # type: ignore[arg-type]
    client, _ = h.relay()
    port.disconnecting = True  # stopListening() during a reload
    client.transport.peer_lost(ConnectionLost())
    h.settle()
    assert port.calls == ["stop"]


def test_max_connections_close_closes_the_excess_and_logs_it() -> None:
    h = Harness(max_connections=1, on_max_connections="close")
    port = FakePort()
    h.factory.set_listening_port(port)  # type: ignore[arg-type]
    h.relay()
    with capturedLogs() as events:
        excess = h.accept()
    assert excess.transport.disconnecting
    assert port.calls == [] and len(h.attempts) == 1
    assert any(e.get("limit") == 1 for e in events)
    h.settle()
    record = h.record()
    assert (record["close"], record["backend"]) == ("max_connections", None)


# The access log.


def test_access_log_record_has_every_field() -> None:
    h = Harness()
    client, server = h.relay()
    client.send(b"12345")
    h.reactor.advance(1.2345)
    server.send(b"1234567")
    server.fin()
    client.fin()
    h.settle()
    assert h.record() == {
        "time": "2023-11-14T22:13:20.250Z",
        "listener": "db",
        "client": "203.0.113.7:51000",
        "backend": "10.0.0.1:3306",
        "bytes_in": 5,
        "bytes_out": 7,
        "duration": 1.234,
        "connect_attempts": 1,
        "close": "server_closed",
    }
    assert h.pool.active == 0


def test_one_record_per_connection() -> None:
    h = Harness()
    for _ in range(3):
        client, _ = h.relay()
        client.transport.peer_lost(ConnectionLost())
    h.settle()
    assert [r["close"] for r in h.records()] == ["client_reset"] * 3


@pytest.mark.parametrize(
    ("side", "exc", "expected"),
    [
        (Side.CLIENT, None, CloseReason.CLIENT_CLOSED),
        (Side.CLIENT, ConnectionDone(), CloseReason.CLIENT_CLOSED),
        (Side.CLIENT, ConnectionLost(), CloseReason.CLIENT_RESET),
        (Side.SERVER, None, CloseReason.SERVER_CLOSED),
        (Side.SERVER, ConnectionDone(), CloseReason.SERVER_CLOSED),
        (Side.SERVER, ConnectionLost(), CloseReason.SERVER_RESET),
        (Side.SERVER, OSError("broken pipe"), CloseReason.SERVER_RESET),
    ],
)
def test_close_reason(side: Side, exc: Exception | None, expected: CloseReason) -> None:
    assert close_reason(side, None if exc is None else Failure(exc)) is expected


def test_attempts_allow_the_first_try_then_retries_more() -> None:
    attempts = Attempts(retries=1)
    server = FakePool(SERVERS).servers[0]
    assert attempts.may_try_another()
    attempts.record(server)
    assert attempts.may_try_another()
    attempts.record(server)
    assert not attempts.may_try_another()
    assert attempts.count == 2


# With the real Pool (skipped while proxyd.pool is a stub).


def _with_real_pool(h: Harness, **pool: Any) -> Pool:
    servers = tuple(ServerConfig(s.address, **pool) for s in h.pool.servers)
    try:
        real = Pool(PoolConfig("db", servers, balance="first"), h.reactor)
    except NotImplementedError:
        pytest.skip("proxyd.pool.Pool is not implemented yet")
    h.factory.pools = {"db": real}
    h.factory.default_pool = real
    return real


def test_real_pool_failover_reports_and_releases() -> None:
    h = Harness()
    pool = _with_real_pool(h)
    client = h.accept()
    h.fail_connect()
    first, second = pool.servers[:2]
    assert first.consecutive_failures == 1
    assert (first.active, second.active) == (0, 1)
    server = h.connect_server()
    assert h.attempts[1][:2] == (second.address.host, second.address.port)
    client.send(b"x")
    assert server.received() == b"x"
    client.transport.peer_lost(ConnectionLost())
    h.settle()
    assert [s.active for s in pool.servers] == [0, 0, 0]
    assert h.record()["connect_attempts"] == 2


def test_real_pool_with_every_server_down_is_no_server() -> None:
    h = Harness()
    _with_real_pool(h, down=True)
    client = h.accept()
    assert client.transport.disconnecting
    h.settle()
    assert h.record()["close"] == "no_server"


# End to end over iosim: a client, the relay and an echo server, all in memory.


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def test_end_to_end_over_iosim() -> None:
    h = Harness()
    relay_client_side = h.factory.buildProtocol(None)
    client = AccumulatingProtocol()
    client.closedDeferred = None
    client_pump = iosim.connect(
        relay_client_side,
        iosim.makeFakeServer(relay_client_side),
        client,
        iosim.makeFakeClient(client),
        clock=h.reactor,
    )
    host, port, factory, _, _ = h.attempts[0]
    relay_server_side = factory.buildProtocol(IPv4Address("TCP", host, port))
    echo = Echo()
    server_pump = iosim.connect(
        echo,
        iosim.makeFakeServer(echo),
        relay_server_side,
        iosim.makeFakeClient(relay_server_side),
        clock=h.reactor,
    )
    assert client.transport is not None
    client.transport.write(b"ping")
    for _ in range(3):
        client_pump.flush()
        server_pump.flush()
    assert client.data == b"ping"
    client.transport.loseConnection()
    for _ in range(3):
        client_pump.flush()
        server_pump.flush()
    record = h.record()
    assert (record["bytes_in"], record["bytes_out"], record["close"]) == (4, 4, "client_closed")
    assert record["client"] is None  # iosim's addresses are not IP addresses


# A graceful stop: drain, then close_all.


def fired(d: Any) -> bool:
    results: list[object] = []
    d.addBoth(results.append)
    return bool(results)


def test_drain_with_no_connection_fires_at_once() -> None:
    h = Harness()
    assert fired(h.factory.drain())


def test_drain_fires_only_once_the_open_relays_have_ended() -> None:
    h = Harness()
    client, server = h.relay()
    drained = h.factory.drain()
    h.settle()
    assert not fired(drained)
    client.send(b"still relayed")
    assert server.received() == b"still relayed"
    client.fin()
    server.fin()
    h.settle()
    assert fired(drained)
    assert h.record()["close"] == "client_closed"


def test_drain_lets_a_relay_still_connecting_finish_connecting() -> None:
    h = Harness()
    client = h.accept()
    drained = h.factory.drain()
    server = h.connect_server()
    client.send(b"hello")
    assert server.received() == b"hello" and not fired(drained)
    server.transport.peer_lost(ConnectionDone())
    h.settle()
    assert fired(drained)


def test_drain_closes_the_queued_clients_which_never_connect() -> None:
    h = Harness(max_connections=1, on_max_connections="queue")
    port = FakePort()
    h.factory.set_listening_port(port)  # type: ignore[arg-type]
    first, _ = h.relay()
    waiting = h.accept()
    drained = h.factory.drain()
    assert waiting.transport.disconnecting and not first.transport.disconnecting
    h.settle()
    assert h.factory.waiting == 0 and len(h.attempts) == 1
    assert [r["close"] for r in h.records()] == ["shutdown"]
    assert h.records()[0]["backend"] is None
    first.transport.peer_lost(ConnectionDone())
    h.settle()
    assert len(h.attempts) == 1  # the freed slot goes to nobody
    assert port.calls == ["stop"]  # and the port stays stopped
    assert fired(drained)


def test_a_client_reaching_admission_during_a_drain_is_closed() -> None:
    h = Harness()
    h.factory.drain()
    late = h.accept()  # accepted before the listener stopped
    assert late.transport.disconnecting and h.attempts == []
    h.settle()
    assert h.record()["close"] == "shutdown"


def test_close_all_closes_both_ends_and_logs_shutdown_then_the_drain_fires() -> None:
    h = Harness()
    client, server = h.relay()
    drained = h.factory.drain()
    h.factory.close_all()
    assert client.transport.disconnecting and server.transport.disconnecting
    assert not client.transport.aborted and not server.transport.aborted  # a FIN, no RST
    assert not fired(drained)
    h.settle()
    assert fired(drained)
    record = h.record()
    assert (record["close"], record["backend"]) == ("shutdown", "10.0.0.1:3306")
    assert h.pool.active == 0 and h.factory.active == 0


def test_close_all_cuts_a_half_closed_relay_as_shutdown() -> None:
    h = Harness()
    client, server = h.relay()
    client.fin()
    assert server.transport.write_closed
    h.factory.close_all()
    h.settle()
    assert h.record()["close"] == "shutdown"


def test_close_all_stops_a_connect_under_way() -> None:
    h = Harness()
    h.accept()
    drained = h.factory.drain()
    h.factory.close_all()
    h.settle()
    assert fired(drained)
    assert h.reactor.connectors[0].stoppedConnecting  # type: ignore[attr-defined]
    assert h.pool.active == 0
    record = h.record()
    assert (record["close"], record["connect_attempts"]) == ("shutdown", 1)


def test_a_second_drain_fires_as_well() -> None:
    h = Harness()
    h.relay()
    first, second = h.factory.drain(), h.factory.drain()
    h.factory.close_all()
    h.settle()
    assert fired(first) and fired(second)
    assert fired(h.factory.drain())  # and a third, once nothing is left, at once


def test_close_all_resets_what_is_still_open_after_the_linger() -> None:
    h = Harness()
    client, server = h.relay()
    client.transport.loseConnection = lambda: None  # type: ignore[method-assign]
    drained = h.factory.drain()
    h.factory.close_all()
    h.settle()
    assert server.transport.disconnecting and not client.transport.aborted
    assert not fired(drained)
    h.reactor.advance(5)
    h.settle()
    assert client.transport.reset_by_rst() and fired(drained)
    assert h.record()["close"] == "shutdown"


def test_close_all_bounds_a_close_already_under_way_and_keeps_its_reason() -> None:
    h = Harness()
    client, server = h.relay()
    client.transport.loseConnection = lambda: None  # type: ignore[method-assign]
    server.transport.peer_lost(ConnectionDone())
    drained = h.factory.drain()
    h.factory.close_all()
    h.reactor.advance(5)
    h.settle()
    assert client.transport.reset_by_rst() and fired(drained)
    assert h.record()["close"] == "server_closed"


# Metrics (proxyd.metrics): connections, bytes, connect time and errors by pool and server.


def tcp_metrics(h: Harness, server: str) -> Any:
    return h.factory.stats.snapshot()["tcp"]["db"][""]["db"][server]


def test_a_relayed_connection_counts_its_server_connect_time_and_bytes_as_they_flow() -> None:
    h = Harness()
    client = h.accept()
    client.send(b"early ")
    h.reactor.advance(0.003)
    server = h.connect_server()
    client.send(b"late")
    server.send(b"answer")
    found = tcp_metrics(h, "10.0.0.1:3306")
    assert found["connections"] == 1
    assert (found["bytes_in"], found["bytes_out"]) == (10, 6)  # before the connection ends
    assert found["connect_duration"]["count"] == 1
    assert found["connect_duration"]["sum"] == pytest.approx(0.003, abs=1e-6)  # START is large
    client.transport.peer_lost(ConnectionDone())
    h.settle()
    assert "errors" not in tcp_metrics(h, "10.0.0.1:3306")  # a clean close is no error


def test_failed_attempts_count_on_their_servers_and_a_reset_on_the_one_connected() -> None:
    h = Harness()
    client = h.accept()
    h.fail_connect()
    h.fail_connect(exc=TimeoutError())
    server = h.connect_server()
    server.transport.peer_lost(ConnectionLost())
    h.settle()
    assert tcp_metrics(h, "10.0.0.1:3306") == {"errors": {"connect_failed": 1}}
    assert tcp_metrics(h, "10.0.0.2:3306") == {"errors": {"connect_timeout": 1}}
    third = tcp_metrics(h, "10.0.0.3:3306")
    assert third["connections"] == 1
    assert third["errors"] == {"server_reset": 1}
    assert client.transport.disconnecting


def test_a_client_with_no_server_counts_on_the_pool_with_no_server() -> None:
    h = Harness()
    h.pool.down = set(h.pool.servers)
    h.accept()
    h.settle()
    assert tcp_metrics(h, "") == {"errors": {"no_server": 1}}
