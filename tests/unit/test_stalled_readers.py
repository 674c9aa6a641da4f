"""Peers that stop reading (issue 18, defect 3): proxyd.relay.io.SendTimeout on its own, then
in every relay (HTTP exchanges, closes and tunnels, TCP, WebSocket message mode), on a
MemoryReactorClock; and TCP_NODELAY on the sockets of the relays (defect 5). Where Twisted's
own write buffer matters (partial progress, a close, TLS), a real twisted.internet.tcp.Server
over a loopback socket pair stands for the client's socket, with a peer that reads only when
the test says so."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import error, main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from proxyd.relay.http.upstream import UpstreamConnection
from proxyd.relay.io import closes_at_once, held, producer_paused
from proxyd.relay.send_timeout import SendTimeout
from tests.unit.test_http_relay import GET, Relay
from tests.unit.test_http_tunnel import FRAME, tunnel
from tests.unit.test_tcp_relay import FakeTcpTransport, Harness, SlowReader
from tests.unit.test_websocket_relay import Net, opened

BIG = 4 << 20
"""More than the kernel buffers of a loopback socket pair take with the sizes set below."""


class _Port:
    _realPortNumber = 8080


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Any, socket.socket]]]:
    """`serve(protocol, reactor)`: a tcp.Server for `protocol` over one end of a connected
    loopback pair (small kernel buffers), and the other end, which reads only when told."""
    opened: list[socket.socket] = []

    def make(protocol: Any, reactor: MemoryReactorClock) -> tuple[Any, socket.socket]:
        listener = socket.create_server(("127.0.0.1", 0))
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(listener.getsockname())
        accepted, address = listener.accept()
        listener.close()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        opened.extend([peer, accepted])
        transport = tcp.Server(accepted, protocol, address, _Port(), 1, reactor)  # type: ignore[arg-type]
        protocol.makeConnection(transport)
        peer.settimeout(5)
        return transport, peer

    yield make
    for sock in opened:
        sock.close()


def read_some(peer: socket.socket, size: int) -> int:
    """What the peer takes of what waits for it (at most `size` bytes)."""
    peer.setblocking(False)
    taken = 0
    try:
        while taken < size:
            chunk = peer.recv(min(65536, size - taken))
            if not chunk:
                break
            taken += len(chunk)
    except BlockingIOError:
        pass
    peer.setblocking(True)
    return taken


def pass_time(reactor: MemoryReactorClock, seconds: float) -> None:
    """`seconds` in steps of half a second, so that each delayed call here runs at its time
    (Clock runs the calls due after moving the time by the whole amount)."""
    for _ in range(round(seconds * 2)):
        reactor.advance(0.5)


def tls_factory(factory: Any) -> TLSMemoryBIOFactory:
    """Twisted's server-side TLS wrapper around `factory`, as [https] wraps its relay (no
    certificate: no handshake happens here)."""
    return TLSMemoryBIOFactory(CertificateOptions(), False, factory)


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# SendTimeout and the buffer it watches.


def test_held_counts_the_bytes_in_twisteds_write_buffer_and_below_tls(serve: Any) -> None:
    """Fails when Twisted renames FileDescriptor's private buffer fields, which `held` reads."""
    reactor = MemoryReactorClock()
    tls = tls_factory(Factory.forProtocol(Protocol)).buildProtocol(None)
    transport, _peer = serve(tls, reactor)  # the TCP connection below Twisted's TLS layer
    assert held(transport) == held(tls) == 0
    transport.write(b"x" * BIG)
    assert held(transport) == held(tls) == BIG
    transport.doWrite()  # what the socket takes leaves the buffer
    left = held(tls)
    assert left is not None and 0 < left < BIG
    assert producer_paused(tls) is False  # no producer
    assert held(StringTransport()) is None


def test_a_paused_peer_that_takes_nothing_for_the_timeout_is_reported() -> None:
    clock = MemoryReactorClock()
    stalls: list[int | None] = []
    sending = SendTimeout(clock, StringTransport(), 10.0, lambda: stalls.append(sending.held))
    sending.paused()
    clock.advance(9.9)
    assert stalls == []
    clock.advance(0.1)
    assert stalls == [None]  # a transport that cannot tell what it holds
    assert clock.getDelayedCalls() == []


def test_a_buffer_that_drains_in_time_is_no_stall_and_costs_one_delayed_call() -> None:
    clock = MemoryReactorClock()
    stalls: list[bool] = []
    sending = SendTimeout(clock, StringTransport(), 10.0, lambda: stalls.append(True))
    for _ in range(100):  # a transfer faster than its reader: full, drained, full...
        sending.paused()
        clock.advance(0.05)
        sending.resumed()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(9.9)  # the call fires, finds nothing waiting: done
    assert clock.getDelayedCalls() == []
    sending.paused()
    clock.advance(9.9)
    sending.resumed()
    clock.advance(60)
    assert stalls == []


def test_a_peer_taking_a_little_within_each_timeout_is_not_a_stall(serve: Any) -> None:
    reactor = MemoryReactorClock()
    transport, peer = serve(Protocol(), reactor)
    transport.write(b"x" * BIG)
    transport.doWrite()  # the kernel's buffers are full: the rest waits in Twisted's
    stalls: list[int | None] = []
    sending = SendTimeout(reactor, transport, 10.0, lambda: stalls.append(sending.held))
    sending.paused()
    for _ in range(5):  # 40 s: a slow reader, never a whole timeout without progress
        pass_time(reactor, 8)
        assert read_some(peer, 100_000) > 0
        transport.doWrite()
        assert stalls == []
    pass_time(reactor, 12)  # the look at 42.5 s saw the last progress; by 52.5 s: stalled
    assert stalls == []
    pass_time(reactor, 1)
    assert len(stalls) == 1
    assert stalls[0] is not None and stalls[0] > 0


def test_timeout_zero_watches_nothing() -> None:
    clock = MemoryReactorClock()
    sending = SendTimeout(clock, StringTransport(), 0.0, lambda: pytest.fail("stalled"))
    sending.paused()
    sending.closing()
    assert clock.getDelayedCalls() == []


def test_only_a_close_with_nothing_to_send_on_plain_tcp_closes_at_once(serve: Any) -> None:
    reactor = MemoryReactorClock()
    transport, _peer = serve(Protocol(), reactor)
    assert closes_at_once(transport)
    assert not closes_at_once(StringTransport())
    transport.write(b"x" * BIG)
    assert not closes_at_once(transport)
    tls = tls_factory(Factory.forProtocol(Protocol)).buildProtocol(None)
    serve(tls, reactor)
    assert not closes_at_once(tls)  # it waits for the peer's close_notify


# The HTTP relay.


def streaming(relay: Relay) -> Any:
    """A GET whose (endless) chunked response has started; the upstream connection."""
    relay.send(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n")
    return upstream


def http_errors(relay: Relay, server: str = "127.0.0.1:9001", route: str = "*/") -> Any:
    cells = relay.factory.stats.snapshot()["http"]["front"]
    return cells[route]["web" if server else ""][server].get("errors")


def test_http_client_that_stops_reading_a_response_is_reset_after_idle_timeout() -> None:
    relay = Relay(idle_timeout=5.0)
    upstream = streaming(relay)
    ut = upstream.transport
    relay.client.pauseProducing()  # the client's write buffer is full: it does not read
    assert ut.producerState == "paused"
    with capturedLogs() as events:
        relay.reactor.advance(4.9)
        assert not relay.ct.disconnecting
        relay.reactor.advance(0.2)
    assert relay.ct.disconnected, "reset (abortConnection), not a close waiting on the buffer"
    [said] = [formatEvent(e) for e in events if "took no" in formatEvent(e)]
    assert said == "http front: client 10.0.0.7:40000 took no bytes for 5s (? bytes waiting): reset"
    relay.client.connectionLost(Failure(error.ConnectionAborted()))
    assert ut.disconnected  # the upstream connection is dropped too
    [record] = relay.log.records
    assert record["error"] == "client took no bytes for 5s"
    assert http_errors(relay) == {"client_stalled": 1}  # not upstream_idle: the client's doing


def test_http_client_reading_slowly_is_kept_until_it_stops() -> None:
    relay = Relay(idle_timeout=5.0)
    upstream = streaming(relay)
    for _ in range(10):  # its buffer drains every 4 s: 40 s, never a whole timeout stalled
        upstream.dataReceived(b"4\r\nmore\r\n")
        relay.client.pauseProducing()
        relay.reactor.advance(4)
        relay.client.resumeProducing()
    assert not relay.ct.disconnecting
    assert relay.log.records == []
    upstream.dataReceived(b"4\r\nmore\r\n")
    relay.client.pauseProducing()  # and now it stops
    relay.reactor.advance(5)
    assert relay.ct.disconnected


def test_http_close_waiting_on_a_client_that_does_not_read_is_reset() -> None:
    relay = Relay(idle_timeout=5.0)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nbig...")
    relay.client.pauseProducing()  # what was written fills its buffer
    upstream.dataReceived(b"")
    [record] = relay.log.records  # the response went out whole: logged, then the close
    assert record["status"] == 200 and "error" not in record
    assert relay.ct.disconnecting and not relay.ct.disconnected
    assert relay.ct.producer is None
    relay.reactor.advance(5)
    assert relay.ct.disconnected
    assert http_errors(relay, server="", route="") == {"client_stalled": 1}


def test_http_keepalive_close_of_a_full_buffer_does_not_wait_for_a_resume(serve: Any) -> None:
    """Twisted's transport, closing with a paused producer registered, resumes the producer
    once its buffer drains, and stops writing, instead of closing: the connection stayed
    open for good. The producer now goes before the close."""
    relay = Relay(idle_timeout=600.0, keepalive_timeout=5.0)
    client = relay.factory.buildProtocol(None)
    transport, peer = serve(client, relay.reactor)
    client.dataReceived(GET)
    upstream, _ = relay.accept_upstream()
    upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG)
    relay.reactor.advance(0)  # the batch is written: most of it waits in Twisted's buffer
    assert not client.writable
    relay.reactor.advance(5)  # keep-alive timeout: closed, with the rest still to send
    assert transport.disconnecting
    result = None
    for _ in range(100_000):  # the client reads it all now; the reactor's part is played here
        taken = read_some(peer, 1 << 20)
        if transport in relay.reactor.writers:
            result = transport.doWrite()
        elif taken == 0:
            break
    assert result is main.CONNECTION_DONE


def test_https_client_sockets_get_tcp_nodelay_below_tls(serve: Any) -> None:
    relay = Relay()
    wrapped = tls_factory(relay.factory).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport, _peer = serve(wrapped, relay.reactor)
    assert nodelay(transport.socket) == 1


def test_http_client_and_upstream_sockets_get_tcp_nodelay(serve: Any) -> None:
    relay = Relay()
    client = relay.factory.buildProtocol(None)
    transport, _ = serve(client, relay.reactor)
    assert nodelay(transport.socket) == 1
    upstream = UpstreamConnection(relay.upstreams, relay.pool.servers[0])
    upstream_transport, _ = serve(upstream, relay.reactor)
    assert nodelay(upstream_transport.socket) == 1


# HTTP tunnels (WebSocket upgrades on [http] and [websocket] mode = passthrough).


def test_tunnel_client_that_stops_reading_is_reset_after_tunnel_timeout() -> None:
    relay, upstream, ut = tunnel(tunnel_timeout=30.0, idle_timeout=5.0)
    relay.client.pauseProducing()  # it stops reading, and goes on sending
    for _ in range(5):
        relay.reactor.advance(5)
        relay.send(FRAME)  # activity: the tunnel is not idle
        upstream.dataReceived(b"\x81\x02hi")
    assert not relay.ct.disconnecting
    relay.reactor.advance(5)
    assert relay.ct.disconnected and ut.disconnected  # both reset at 30 s
    relay.client.connectionLost(Failure(error.ConnectionAborted()))
    upstream.connectionLost(Failure(error.ConnectionAborted()))
    [record] = relay.log.records
    assert record["close"] == "client_stalled"
    assert record["error"] == "client took no bytes for 30s"
    assert http_errors(relay) == {"client_stalled": 1}


def test_tunnel_server_that_stops_reading_is_reset_after_tunnel_timeout() -> None:
    relay, upstream, ut = tunnel(tunnel_timeout=30.0)
    upstream.pauseProducing()  # the server's buffer is full; it goes on sending
    for _ in range(6):
        relay.reactor.advance(5)
        upstream.dataReceived(b"\x81\x02hi")
    assert relay.ct.disconnected and ut.disconnected
    relay.client.connectionLost(Failure(error.ConnectionAborted()))
    upstream.connectionLost(Failure(error.ConnectionAborted()))
    [record] = relay.log.records
    assert record["close"] == "server_stalled"
    assert http_errors(relay) == {"upstream_stalled": 1}


# The TCP relay.


class StuckReader(SlowReader):
    """SlowReader (Twisted's real write buffer, a peer that reads only when told) that can be
    aborted."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def test_tcp_client_that_stops_reading_while_still_sending_is_reset() -> None:
    h = Harness(idle_timeout=60.0, buffer_size=1024)
    slow = StuckReader(h.reactor)
    client_end = h.accept(transport=slow)
    server = h.connect_server()
    server.send(b"x" * 3000)  # past the client's buffer: the server is paused
    assert server.paused
    for _ in range(5):  # the client sends on: the connection is never idle
        h.reactor.advance(11)
        client_end.send(b"ping")
    assert not server.transport.aborted
    h.reactor.advance(5)  # 60 s since the client last took a byte
    assert slow.aborted and server.transport.aborted
    client_end.protocol.connectionLost(Failure(error.ConnectionAborted()))
    h.settle()
    record = h.record()
    assert record["close"] == "client_stalled"
    errors = h.factory.stats.snapshot()["tcp"]["db"][""]["db"]["10.0.0.1:3306"]["errors"]
    assert errors == {"client_stalled": 1}


def test_tcp_client_reading_slowly_is_kept_until_it_stops() -> None:
    h = Harness(idle_timeout=60.0, buffer_size=1024)
    slow = StuckReader(h.reactor)
    client_end = h.accept(transport=slow)
    server = h.connect_server()
    for _ in range(10):  # it drains its buffer every 50 s, and gets more at once
        server.send(b"x" * 3000)
        assert server.paused
        h.reactor.advance(50)
        slow.drain()
    assert not server.transport.aborted and not server.transport.disconnecting
    server.send(b"x" * 3000)  # and now it stops reading, and sends on
    for _ in range(4):
        pass_time(h.reactor, 15)
        client_end.send(b"ping")
    assert slow.aborted and server.transport.aborted


def test_tcp_server_that_stops_reading_is_reset() -> None:
    h = Harness(idle_timeout=60.0, buffer_size=1024)
    client = h.accept()
    slow = StuckReader(h.reactor)
    host, port, factory, _, _ = h.attempts[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    protocol.makeConnection(slow)
    client.send(b"y" * 3000)
    assert client.paused
    for _ in range(6):
        h.reactor.advance(10)
        protocol.dataReceived(b"more")  # the server sends on
    assert client.transport.aborted and slow.aborted
    protocol.connectionLost(Failure(error.ConnectionAborted()))
    h.settle()
    assert h.record()["close"] == "server_stalled"


def test_tcp_relay_sockets_get_tcp_nodelay() -> None:
    h = Harness()
    calls: list[tuple[str, bool]] = []
    client_transport = FakeTcpTransport(
        h.reactor, IPv4Address("TCP", "203.0.113.7", 1), IPv4Address("TCP", "127.0.0.1", 2)
    )
    client_transport.setTcpNoDelay = lambda on: calls.append(("client", on))  # type: ignore[attr-defined]
    h.accept(transport=client_transport)
    assert calls == [("client", True)]
    host, port, factory, _, _ = h.attempts[0]
    server_transport = FakeTcpTransport(
        h.reactor, IPv4Address("TCP", host, port), IPv4Address("TCP", "10.9.9.9", 3)
    )
    server_transport.setTcpNoDelay = lambda on: calls.append(("server", on))  # type: ignore[attr-defined]
    protocol = factory.buildProtocol(server_transport.getPeer())
    server_transport.protocol = protocol
    protocol.makeConnection(server_transport)
    assert calls == [("client", True), ("server", True)]


def test_tcp_nodelay_off_leaves_the_tcp_relays_sockets_to_nagle() -> None:
    h = Harness(tcp_nodelay=False)
    calls: list[bool] = []
    client_transport = FakeTcpTransport(
        h.reactor, IPv4Address("TCP", "203.0.113.7", 1), IPv4Address("TCP", "127.0.0.1", 2)
    )
    client_transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
    h.accept(transport=client_transport)
    h.connect_server()
    assert calls == []


def test_tcp_close_lets_a_slow_client_take_the_rest_and_resets_a_stuck_one() -> None:
    h = Harness(idle_timeout=60.0, buffer_size=1024)
    slow = StuckReader(h.reactor)
    client_end = h.accept(transport=slow)
    server = h.connect_server()
    server.send(b"x" * 30_000)
    server.protocol.connectionLost(Failure(error.ConnectionDone()))  # the server has ended
    assert slow.disconnecting and slow.producer is None
    for _ in range(4):  # 200 s of closing, the client taking a few bytes every 50 s
        pass_time(h.reactor, 50)
        slow._can_send = 100
        slow.doWrite()
    assert not slow.aborted
    pass_time(h.reactor, 60)  # then nothing: seen at the next look, 15 s later at most
    assert not slow.aborted
    pass_time(h.reactor, 15)
    assert slow.aborted
    client_end.protocol.connectionLost(Failure(error.ConnectionAborted()))
    h.settle()
    assert h.record()["close"] == "server_closed"  # the first reason stays the log's
    errors = h.factory.stats.snapshot()["tcp"]["db"][""]["db"]["10.0.0.1:3306"]["errors"]
    assert errors == {"client_stalled": 1}  # counted all the same


# The WebSocket relay in message mode.


def test_websocket_message_client_that_stops_reading_is_aborted() -> None:
    net = Net(idle_timeout=60.0, ping_interval=0)
    client = opened(net)
    client_io = net.pumps[0].serverIO
    client_io.producer.pauseProducing()  # proxyd's buffer towards the client is full
    for _ in range(5):  # it sends on: the connection is never idle
        net.advance(11)
        client.sendMessage(b"still here")
        net.flush()
    assert not client_io.disconnecting
    net.advance(5)
    assert client_io.disconnecting and net.pumps[1].clientIO.disconnecting
    net.flush()
    [line] = net.lines()
    assert line["close"] == "client_stalled"
    errors = net.factory.stats.snapshot()["websocket"]["chat"][""]["chat"]["10.0.0.1:9001"]
    assert errors["errors"] == {"client_stalled": 1}
