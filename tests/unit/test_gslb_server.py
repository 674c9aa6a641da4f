"""A [gslb]'s view of the pools' health (proxyd.gslb.view), its UDP and TCP protocols
(proxyd.gslb.server) and its UDP listener at a reload (proxyd.gslb.listeners), on
Twisted's in-memory clock and transports."""

from __future__ import annotations

import struct
from typing import Any

import dns.message
import dns.rcode
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from proxyd.config.gslb_model import GslbConfig
from proxyd.config.load import loads
from proxyd.gslb.listeners import GslbUdpListener, gslb_listeners
from proxyd.gslb.server import Gslb, GslbDatagram, GslbStreamFactory, gslb_counts, stream_counts
from proxyd.gslb.view import HealthyView
from proxyd.listeners import StreamRelayListener
from proxyd.pool import Pool

TEXT = """\
[pool web]
servers = 127.0.0.1:80 127.0.0.2:80 weight=3 127.0.0.3:80 backup
max_fails = 1
[gslb demo]
listen = udp:5353:interface=127.0.0.1
zone = demo.test
records = www -> pool web
max_connections = 2
max_queries_per_connection = 3
idle_timeout = 5s
"""


def setup(text: str = TEXT) -> tuple[MemoryReactorClock, dict[str, Pool], GslbConfig]:
    config = loads(text, "proxyd.ini")
    reactor = MemoryReactorClock()
    pools = {name: Pool(pool, reactor) for name, pool in config.pools.items()}
    return reactor, pools, config.gslb[0]


def healthy(view: HealthyView) -> list[str]:
    return sorted(address for address, _ in view.healthy("web"))


def test_the_view_follows_the_health_services_verdicts() -> None:
    reactor, pools, _ = setup()
    view = HealthyView(reactor, pools, ["web"])
    web = pools["web"]
    assert healthy(view) == ["127.0.0.1", "127.0.0.2"]
    assert dict(view.healthy("web"))["127.0.0.2"] == 3
    web.set_health(web.servers[0], False, "connection refused")
    assert healthy(view) == ["127.0.0.2"]
    web.set_health(web.servers[0], True, "ok")
    assert healthy(view) == ["127.0.0.1", "127.0.0.2"]
    assert view.families("web") == frozenset({4})


def test_backups_answer_only_when_no_primary_is_available() -> None:
    reactor, pools, _ = setup()
    view = HealthyView(reactor, pools, ["web"])
    web = pools["web"]
    web.set_health(web.servers[0], False, "down")
    web.set_admin(web.servers[1], "drain", "test")
    assert healthy(view) == ["127.0.0.3"]
    web.set_admin(web.servers[1], "ready", "test")
    assert healthy(view) == ["127.0.0.2"]


def test_an_ejection_leaves_the_view_until_it_ends() -> None:
    reactor, pools, _ = setup()
    view = HealthyView(reactor, pools, ["web"])
    web = pools["web"]
    web.report_failure(web.servers[0], "refused")
    assert healthy(view) == ["127.0.0.2"]
    reactor.advance(web.config.eject_time)
    assert healthy(view) == ["127.0.0.1", "127.0.0.2"]


def test_a_closed_view_no_longer_follows() -> None:
    reactor, pools, _ = setup()
    view = HealthyView(reactor, pools, ["web"])
    view.close()
    web = pools["web"]
    web.set_health(web.servers[0], False, "down")
    assert healthy(view) == ["127.0.0.1", "127.0.0.2"]


def make(text: str = TEXT) -> tuple[MemoryReactorClock, dict[str, Pool], Gslb]:
    reactor, pools, config = setup(text)
    udp, _ = gslb_listeners(reactor, config, pools)
    assert isinstance(udp, GslbUdpListener)
    return reactor, pools, udp.relay.gslb


class Datagrams:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def query(name: str = "www.demo.test", rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def test_a_datagram_is_answered_to_its_source_and_counted() -> None:
    _, pools, gslb = make()
    protocol = GslbDatagram(gslb)
    transport = Datagrams()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    protocol.datagramReceived(query(), ("127.0.0.5", 40000))
    protocol.datagramReceived(query("nope.demo.test"), ("127.0.0.5", 40001))
    protocol.datagramReceived(b"\x00" * 5, ("127.0.0.5", 40002))
    assert [addr for _, addr in transport.sent] == [("127.0.0.5", 40000), ("127.0.0.5", 40001)]
    first = dns.message.from_wire(transport.sent[0][0])
    assert sorted(r.address for r in first.answer[0]) == ["127.0.0.1", "127.0.0.2"]
    totals = gslb_counts(gslb).totals
    assert (totals["gslb_NOERROR"], totals["gslb_NXDOMAIN"], totals["malformed"]) == (1, 1, 1)
    web = pools["web"]
    web.set_health(web.servers[0], False, "down")
    protocol.datagramReceived(query(), ("127.0.0.5", 40003))
    answer = dns.message.from_wire(transport.sent[-1][0])
    assert [r.address for r in answer.answer[0]] == ["127.0.0.2"]


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def answers(data: bytes) -> list[dns.message.Message]:
    found = []
    while data:
        (size,) = struct.unpack("!H", data[:2])
        found.append(dns.message.from_wire(data[2 : 2 + size]))
        data = data[2 + size :]
    return found


def connect(factory: GslbStreamFactory) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 40000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_query_split_byte_by_byte_is_answered_once_whole() -> None:
    _, _, gslb = make()
    factory = GslbStreamFactory(gslb)
    protocol, transport = connect(factory)
    for byte in framed(query()):
        assert transport.value() == b""
        protocol.dataReceived(bytes([byte]))
    (answer,) = answers(transport.value())
    assert answer.rcode() == dns.rcode.NOERROR and len(answer.answer[0]) == 2


def test_pipelined_queries_are_answered_in_order() -> None:
    _, _, gslb = make()
    protocol, transport = connect(GslbStreamFactory(gslb))
    protocol.dataReceived(framed(query("nope.demo.test")) + framed(query()) + framed(query())[:5])
    found = answers(transport.value())
    assert [a.rcode() for a in found] == [dns.rcode.NXDOMAIN, dns.rcode.NOERROR]
    assert not transport.disconnecting


def test_a_connection_is_closed_after_max_queries_per_connection() -> None:
    _, _, gslb = make()
    protocol, transport = connect(GslbStreamFactory(gslb))
    protocol.dataReceived(framed(query()) * 2)
    assert not transport.disconnecting
    protocol.dataReceived(framed(query()) * 2)
    assert len(answers(transport.value())) == 3
    assert transport.disconnecting
    protocol.dataReceived(framed(query()))
    assert len(answers(transport.value())) == 3


def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    reactor, _, gslb = make()
    protocol, transport = connect(GslbStreamFactory(gslb))
    reactor.advance(4)
    protocol.dataReceived(framed(query())[:3])
    reactor.advance(4.9)
    assert not transport.disconnecting
    reactor.advance(0.1)
    assert transport.disconnecting
    protocol.connectionLost()
    assert reactor.getDelayedCalls() == []


def test_connections_beyond_max_connections_are_closed_at_accept() -> None:
    _, _, gslb = make()
    factory = GslbStreamFactory(gslb)
    first, _ = connect(factory)
    connect(factory)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 1)) is None
    assert stream_counts(factory).totals == {"dropped_connections": 1}
    assert stream_counts(factory).gauges == {"active": 2}
    first.connectionLost()
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 2)) is not None


def test_a_message_that_is_no_query_closes_the_connection() -> None:
    _, _, gslb = make()
    protocol, transport = connect(GslbStreamFactory(gslb))
    response = dns.message.make_response(dns.message.make_query("www.demo.test", "A"))
    protocol.dataReceived(framed(response.to_wire()) + framed(query()))
    assert transport.value() == b"" and transport.disconnecting


def test_drain_closes_idle_connections_and_refuses_new_ones() -> None:
    _, _, gslb = make()
    factory = GslbStreamFactory(gslb)
    idle, idle_transport = connect(factory)
    busy, busy_transport = connect(factory)
    busy.dataReceived(framed(query())[:4])
    drained = factory.drain()
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.5", 1)) is None
    idle.connectionLost()
    assert not drained.called
    busy.dataReceived(framed(query())[4:])
    assert busy_transport.disconnecting and len(answers(busy_transport.value())) == 1
    busy.connectionLost()
    assert drained.called


class FakePort:
    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


def test_a_reload_hands_the_udp_socket_over_and_stops_the_old_view() -> None:
    reactor, pools, config = setup()
    old, old_tcp = gslb_listeners(reactor, config, pools)
    assert isinstance(old, GslbUdpListener) and isinstance(old_tcp, StreamRelayListener)
    assert old_tcp.name == "gslb demo/tcp" and old_tcp.description == config.tcp_listen
    port = FakePort()
    old.port = port
    transport = Datagrams()
    old.front.makeConnection(transport)
    new_config = loads(TEXT.replace("zone = demo.test", "zone = other.test"), "proxyd.ini").gslb[0]
    new, _ = gslb_listeners(reactor, new_config, pools)
    assert isinstance(new, GslbUdpListener)
    new.take_over(old)
    assert new.port is port and old.port is None
    new.front.datagramReceived(query("www.other.test"), ("127.0.0.5", 1))
    assert dns.message.from_wire(transport.sent[-1][0]).rcode() == dns.rcode.NOERROR
    new.front.datagramReceived(query("www.demo.test"), ("127.0.0.5", 1))
    assert dns.message.from_wire(transport.sent[-1][0]).rcode() == dns.rcode.REFUSED
    web = pools["web"]
    web.set_health(web.servers[0], False, "down")
    assert healthy(old.relay.gslb.view) == ["127.0.0.1", "127.0.0.2"]  # no longer following
    assert healthy(new.relay.gslb.view) == ["127.0.0.2"]
    new.carry_on(old)
    assert new.counts().totals["gslb_NOERROR"] == 1


@given(st.lists(st.integers(min_value=1, max_value=200), max_size=20))
def test_any_chunking_of_pipelined_queries_gets_the_same_answers(cuts: list[int]) -> None:
    _, _, gslb = make(TEXT.replace("max_queries_per_connection = 3", ""))
    queries = [dns.message.make_query(name, "A") for name in ("www.demo.test", "x.demo.test")]
    stream = b"".join(framed(q.to_wire()) for q in queries * 2)
    protocol, transport = connect(GslbStreamFactory(gslb))
    start = 0
    for cut in sorted(cuts):
        protocol.dataReceived(stream[start:cut])
        start = max(start, cut)
    protocol.dataReceived(stream[start:])
    found = answers(transport.value())
    assert [a.id for a in found] == [q.id for q in queries * 2]
    assert [a.rcode() for a in found] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN] * 2
