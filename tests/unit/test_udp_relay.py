"""The UDP relay's session table on MemoryReactorClock with fake datagram ports (the memory
reactor has no listenUDP): sessions, stickiness, timeouts, limits, refusals."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from proxyd.accesslog import AccessLog
from proxyd.config.load import loads
from proxyd.pool import Pool
from proxyd.relay.udp import MAX_PACKET, UdpListener


class FakePort:
    def __init__(self, protocol: DatagramProtocol, number: int, interface: str) -> None:
        self.protocol = protocol
        self.number = number
        self.interface = interface
        self.connected_to: tuple[str, int] | None = None
        self.sent: list[tuple[bytes, Any]] = []
        self.stopped = False
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self.sent.append((datagram, addr))

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def stopListening(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.protocol.doStop()


class UdpReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []
        self.max_packets: list[int] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakePort:
        self.max_packets.append(maxPacketSize)
        fake = FakePort(protocol, port or 40000 + len(self.ports), interface)
        self.ports.append(fake)
        return fake


CONFIG = """
[pool dns]
servers = 10.0.0.1:53 10.0.0.2:53 [2001:db8::3]:53
balance = {balance}
[udp dns]
listen = udp:5300:interface=127.0.0.1
pool = dns
session_timeout = 30s
max_sessions = {max_sessions}
max_datagram_size = 512
"""


class Harness:
    def __init__(self, balance: str = "hash", max_sessions: int = 100) -> None:
        config = loads(CONFIG.format(balance=balance, max_sessions=max_sessions))
        self.reactor = UdpReactor()
        self.pool = Pool(config.pools["dns"], self.reactor)
        self.stream = io.StringIO()
        self.relay = UdpListener(
            self.reactor, config.udp[0], self.pool, AccessLog(self.stream, "memory")
        )
        self.listener = self.relay.listen()

    def send(self, data: bytes, client: tuple[str, int] = ("192.0.2.7", 5000)) -> None:
        self.relay.datagramReceived(data, client)

    def upstream(self, index: int = -1) -> FakePort:
        return self.reactor.ports[1:][index]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def test_every_socket_reads_datagrams_up_to_64_kib() -> None:
    h = Harness()
    h.send(b"q")
    assert h.reactor.max_packets == [MAX_PACKET, MAX_PACKET]
    assert (h.listener.number, h.listener.interface) == (5300, "127.0.0.1")


def test_a_first_datagram_opens_a_connected_socket_and_the_answer_comes_back() -> None:
    h = Harness()
    h.send(b"query")
    up = h.upstream()
    assert up.connected_to is not None and up.sent == [(b"query", None)]
    up.protocol.datagramReceived(b"answer", up.connected_to)
    assert h.listener.sent == [(b"answer", ("192.0.2.7", 5000))]


def test_a_client_sticks_to_its_server_and_its_socket() -> None:
    h = Harness()
    h.send(b"1")
    h.send(b"2")
    assert len(h.reactor.ports) == 2
    assert h.upstream().sent == [(b"1", None), (b"2", None)]


def test_hash_balancing_sends_a_client_to_the_same_server_in_a_new_session() -> None:
    h = Harness()
    h.send(b"1")
    first = h.upstream().connected_to
    h.reactor.advance(31)
    h.send(b"2")
    assert h.upstream().connected_to == first


def test_an_ipv6_server_gets_an_ipv6_socket() -> None:
    h = Harness(balance="first")
    for server in h.pool.servers[:2]:
        h.pool.set_health(server, False, "test")
    h.send(b"q")
    assert h.upstream().connected_to == ("2001:db8::3", 53)
    assert h.upstream().interface == "::"


def test_an_idle_session_closes_and_is_logged() -> None:
    h = Harness()
    h.send(b"query")
    up = h.upstream()
    up.protocol.datagramReceived(b"answer!", up.connected_to)
    h.reactor.advance(29)
    assert not up.stopped
    h.reactor.advance(1)
    assert up.stopped and h.relay.sessions == {}
    [record] = h.records()
    assert record["close"] == "idle_timeout"
    assert (record["datagrams_in"], record["datagrams_out"]) == (1, 1)
    assert (record["bytes_in"], record["bytes_out"]) == (5, 7)
    assert record["client"] == "192.0.2.7:5000"


def test_activity_keeps_a_session_open() -> None:
    h = Harness()
    h.send(b"q")
    for _ in range(5):
        h.reactor.advance(20)
        h.send(b"q")
    assert not h.upstream().stopped


def test_max_sessions_drops_datagrams_of_further_clients_and_counts_them() -> None:
    h = Harness(max_sessions=2)
    for port in (1, 2, 3, 4):
        h.send(b"q", ("192.0.2.7", port))
    assert len(h.relay.sessions) == 2
    assert h.relay.dropped_sessions == 2
    h.send(b"q", ("192.0.2.7", 1))  # an existing session still flows
    assert h.relay.dropped_sessions == 2


def test_oversized_datagrams_are_dropped_both_ways() -> None:
    h = Harness()
    h.send(b"x" * 513)
    assert len(h.reactor.ports) == 1 and h.relay.dropped_oversized == 1
    h.send(b"q")
    up = h.upstream()
    up.protocol.datagramReceived(b"y" * 513, up.connected_to)
    assert h.listener.sent == [] and h.relay.dropped_oversized == 2


@pytest.mark.parametrize("how", ["refused", "port closed"])
def test_a_refusing_server_is_a_failure_and_the_session_moves_resending(how: str) -> None:
    h = Harness(balance="first")
    h.send(b"query")
    first = h.upstream()
    if how == "refused":
        first.protocol.connectionRefused()
    else:  # epoll's EPOLLERR alone: Twisted's reactor closed the port itself
        first.stopped = True
        first.protocol.doStop()
    assert first.stopped
    second = h.upstream()
    assert second is not first
    assert second.connected_to == ("10.0.0.2", 53)
    assert second.sent == [(b"query", None)]
    assert h.pool.servers[0].consecutive_failures == 1
    second.protocol.datagramReceived(b"answer", second.connected_to)
    assert h.listener.sent == [(b"answer", ("192.0.2.7", 5000))]


def test_a_session_refused_everywhere_ends() -> None:
    h = Harness(balance="first")
    h.send(b"q")
    for _ in range(3):
        h.upstream().protocol.connectionRefused()
    assert h.relay.sessions == {}
    assert h.records()[-1]["close"] == "server_refused"


def test_no_server_up_drops_and_counts() -> None:
    h = Harness()
    for server in h.pool.servers:
        h.pool.set_health(server, False, "test")
    h.send(b"q")
    assert len(h.reactor.ports) == 1 and h.relay.dropped_no_server == 1


def test_a_late_answer_of_a_closed_session_is_dropped() -> None:
    h = Harness()
    h.send(b"q")
    up = h.upstream()
    h.reactor.advance(30)
    up.protocol.datagramReceived(b"late", up.connected_to)
    assert h.listener.sent == []


def test_stop_closes_every_session() -> None:
    h = Harness()
    h.send(b"q", ("192.0.2.7", 1))
    h.send(b"q", ("192.0.2.8", 1))
    h.relay.stop()
    assert all(port.stopped for port in h.reactor.ports[1:])
    assert [r["close"] for r in h.records()] == ["shutdown", "shutdown"]
    assert all(server.active == 0 for server in h.pool.servers)


def test_pools_used_by_udp_balance_by_hash_unless_told_otherwise() -> None:
    text = (
        "[pool a]\nservers = 10.0.0.1:53\n[pool b]\nservers = 10.0.0.2:53\nbalance = first\n"
        "[pool c]\nservers = 10.0.0.3:53\n"
        "[udp a]\nlisten = udp:5300\npool = a\n[udp b]\nlisten = udp:5301\npool = b\n"
    )
    pools = loads(text).pools
    assert (pools["a"].balance, pools["b"].balance, pools["c"].balance) == (
        "hash",
        "first",
        "round_robin",
    )


# Metrics (proxyd.metrics): sessions, datagrams and bytes by server, refusals.


def udp_metrics(h: Harness, server: str) -> Any:
    return h.relay.stats.snapshot()["udp"]["dns"][""]["dns"][server]


def test_sessions_datagrams_and_bytes_count_on_their_server() -> None:
    h = Harness(balance="first")
    h.send(b"query")
    h.send(b"more")
    h.send(b"other", client=("192.0.2.8", 5000))
    up = h.upstream()
    up.protocol.datagramReceived(b"answer", up.connected_to)
    assert udp_metrics(h, "10.0.0.1:53") == {
        "sessions": 2,
        "datagrams_in": 3,
        "datagrams_out": 1,
        "bytes_in": 14,
        "bytes_out": 6,
    }


def test_a_refusal_counts_on_the_server_that_refused_and_the_session_on_the_next() -> None:
    h = Harness(balance="first")
    h.send(b"query")
    h.upstream().protocol.connectionRefused()
    assert udp_metrics(h, "10.0.0.1:53")["errors"] == {"port_unreachable": 1}
    moved = udp_metrics(h, "10.0.0.2:53")
    assert moved["sessions"] == 1
    assert "datagrams_in" not in moved  # the re-sent datagram was counted where it came in
