"""accept_proxy below a listener's relay (proxyd.relay.proxy_header): the PROXY header read
before anything else, then the connection handed over, with the header's source as the
client, to the HTTP relay (test_http_relay's harness), under TLS too (a real handshake in
memory), or to a [tcp] relay terminating TLS."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.test import iosim
from zope.interface import implementer

from proxyd.config.load import loads
from proxyd.config.model import Address, TlsClientConfig
from proxyd.generation import build
from proxyd.relay.http.server import ClientConnection
from proxyd.relay.proxy_header import HeaderPolicy, HeaderProtocol, ProxyHeaderFactory
from proxyd.relay.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2
from proxyd.tls import ClientTls
from tests.certs import TestCA
from tests.unit.test_http_relay import GET, OK, Relay, field
from tests.unit.test_tcp_relay import Harness

SOURCE = Address("192.0.2.10", 5555)
DESTINATION = Address("198.51.100.1", 443)
BALANCER = "10.0.0.1"
V1 = encode_v1(SOURCE, DESTINATION)
V2 = encode_v2(SOURCE, DESTINATION)
NAME = "a.example.test"


class Front:
    """An [http] relay (test_http_relay's Relay) behind a ProxyHeaderFactory, as
    proxyd.listeners builds it for accept_proxy = on."""

    def __init__(self, inner: Any = None, **config: Any) -> None:
        self.relay = Relay(accept_proxy=True, **config)
        self.reactor = self.relay.reactor
        self.policy = HeaderPolicy(
            "http front",
            self.relay.config.header_timeout,
            "header_timeout",
            lambda: self.relay.factory.stats,
        )
        self.factory = ProxyHeaderFactory(
            inner if inner is not None else self.relay.factory, self.reactor, self.policy
        )

    def accept(
        self, ip: str = BALANCER, *, handed_over: bool = True
    ) -> tuple[HeaderProtocol, StringTransport]:
        """A connection from the balancer at `ip`. The transport has a `protocol` attribute,
        as Twisted's own have, unless `handed_over` is False (then the header's protocol
        passes the calls on)."""
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", ip, 40000),
        )
        if handed_over:
            transport.protocol = protocol  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        return protocol, transport

    def errors(self) -> dict[str, int]:
        return dict(self.relay.factory.stats.cell("", "", "").errors)

    def records(self) -> list[dict[str, Any]]:
        return self.relay.log.records


def deliver(transport: StringTransport, data: bytes) -> None:
    """What the reactor does with a read: to the transport's protocol of now."""
    transport.protocol.dataReceived(data)  # type: ignore[attr-defined]


def client_of(transport: StringTransport) -> ClientConnection:
    client = transport.protocol  # type: ignore[attr-defined]
    assert isinstance(client, ClientConnection)
    return client


def forwarded_for(front: Front) -> list[bytes]:
    _upstream, ut = front.relay.accept_upstream()
    return field(ut.value(), "X-Forwarded-For")


def test_a_v1_header_makes_its_source_the_client_of_the_request() -> None:
    front = Front()
    _protocol, transport = front.accept()
    deliver(transport, V1 + GET)
    client = client_of(transport)
    assert client.peer == SOURCE and client.local == DESTINATION
    assert transport.getPeer() == IPv4Address("TCP", "192.0.2.10", 5555)
    upstream, ut = front.relay.accept_upstream()
    assert field(ut.value(), "X-Forwarded-For") == [b"192.0.2.10"]
    upstream.dataReceived(OK)
    front.reactor.advance(0)
    assert front.records()[-1]["client"] == "192.0.2.10:5555"
    assert transport.value().startswith(b"HTTP/1.1 200 OK")


def test_a_v2_header_with_tlvs_is_read_and_the_request_after_it_served() -> None:
    front = Front()
    tlv = b"\x04" + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP, skipped
    body = V2[16:] + tlv
    header = V2_SIGNATURE + V2[12:14] + struct.pack("!H", len(body)) + body
    _protocol, transport = front.accept()
    deliver(transport, header + GET)
    assert client_of(transport).peer == SOURCE
    assert forwarded_for(front) == [b"192.0.2.10"]


def test_a_v2_local_header_keeps_the_balancers_address() -> None:
    front = Front()
    _protocol, transport = front.accept()
    deliver(transport, encode_v2(None, None) + GET)
    client = client_of(transport)
    assert client.peer == Address(BALANCER, 40000)
    assert client.local == Address("127.0.0.1", 8080)
    assert forwarded_for(front) == [BALANCER.encode()]


def test_a_v1_unknown_header_keeps_the_balancers_address() -> None:
    front = Front()
    _protocol, transport = front.accept()
    deliver(transport, b"PROXY UNKNOWN\r\n" + GET)
    assert client_of(transport).peer == Address(BALANCER, 40000)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_header_split_across_reads_is_waited_for(header: bytes) -> None:
    front = Front()
    protocol, transport = front.accept()
    for byte in header:
        assert transport.protocol is protocol  # type: ignore[attr-defined]
        deliver(transport, bytes([byte]))
    assert client_of(transport).peer == SOURCE
    assert front.relay.pending_connects() == []
    deliver(transport, GET)
    assert forwarded_for(front) == [b"192.0.2.10"]


@pytest.mark.parametrize(
    "garbage",
    [
        GET,
        b"PROXY TCP4 192.0.2.10 198.51.100.1 5555\r\n",
        b"PROXY TCP4 " + b"1" * 120,
        b"PROXY TCP4 300.0.2.10 198.51.100.1 5555 443\r\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello straight away
    ],
    ids=["http", "v1-short", "v1-long", "v1-bad-address", "v2-version", "tls"],
)
def test_a_connection_without_a_valid_header_is_closed_counted_and_logged(
    garbage: bytes,
) -> None:
    front = Front()
    protocol, transport = front.accept()
    with capturedLogs() as logs:
        deliver(transport, garbage)
    assert transport.disconnecting and transport.value() == b""
    assert transport.protocol is protocol  # type: ignore[attr-defined]
    assert front.relay.factory.connections == 1  # only the harness's own client
    assert front.errors() == {"bad_proxy_header": 1}
    (line,) = [log for log in logs if log["log_namespace"] == "proxyd.relay.proxy_header"]
    assert line["log_format"].format(**line).startswith(f"http front: {BALANCER}:40000: ")
    deliver(transport, GET)  # anything after the refusal is ignored
    assert front.relay.pending_connects() == []


def test_refusals_are_logged_at_most_once_a_second_and_counted_in_between() -> None:
    front = Front()
    with capturedLogs() as logs:
        for _ in range(5):
            deliver(front.accept()[1], b"GARBAGE\r\n")
        front.reactor.advance(1.0)
        deliver(front.accept()[1], b"GARBAGE\r\n")
    lines = [log for log in logs if log["log_namespace"] == "proxyd.relay.proxy_header"]
    assert [line["suppressed"] for line in lines] == [0, 4]
    assert front.errors() == {"bad_proxy_header": 6}


def test_no_header_within_the_timeout_closes_the_connection() -> None:
    front = Front(header_timeout=3.0)
    _protocol, transport = front.accept()
    deliver(transport, V1[:10])
    front.reactor.advance(2.9)
    assert not transport.disconnecting
    front.reactor.advance(0.1)
    assert transport.disconnecting and transport.value() == b""
    assert front.errors() == {"header_timeout": 1}


def test_the_timeout_stops_once_the_header_is_read() -> None:
    front = Front(header_timeout=3.0)
    _protocol, transport = front.accept()
    front.reactor.advance(2.0)
    deliver(transport, V1)
    front.reactor.advance(2.0)  # past the header's 3 s, within the first request's own
    assert not transport.disconnecting
    assert front.errors() == {}


def test_keep_alive_requests_after_the_first_need_no_header() -> None:
    front = Front()
    _protocol, transport = front.accept()
    deliver(transport, V1 + GET)
    upstream, ut = front.relay.accept_upstream()
    upstream.dataReceived(OK)
    front.reactor.advance(0)
    transport.clear()
    ut.clear()
    deliver(transport, GET)
    front.reactor.advance(0)
    assert front.relay.pending_connects() == []  # the upstream connection kept alive
    assert field(ut.value(), "X-Forwarded-For") == [b"192.0.2.10"]
    upstream.dataReceived(OK)
    front.reactor.advance(0)
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert [r["client"] for r in front.records()] == ["192.0.2.10:5555"] * 2


def test_a_second_header_on_a_kept_alive_connection_is_a_bad_request() -> None:
    front = Front()
    _protocol, transport = front.accept()
    deliver(transport, V1 + GET)
    upstream, _ut = front.relay.accept_upstream()
    upstream.dataReceived(OK)
    front.reactor.advance(0)
    transport.clear()
    deliver(transport, V1 + GET)
    assert transport.value().startswith(b"HTTP/1.1 400 ")


def test_a_transport_without_a_protocol_attribute_gets_the_calls_passed_on() -> None:
    front = Front()
    protocol, _transport = front.accept(handed_over=False)
    protocol.dataReceived(V1[:7])
    protocol.dataReceived(V1[7:] + GET)
    assert isinstance(protocol.inner, ClientConnection)
    assert protocol.inner.peer == SOURCE
    assert forwarded_for(front) == [b"192.0.2.10"]
    protocol.connectionLost()
    assert protocol.inner.lost


def test_trusted_proxies_judge_the_headers_source_not_the_balancer() -> None:
    balancer_trusted = Front(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    _protocol, transport = balancer_trusted.accept()
    deliver(transport, V1 + b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    assert not client_of(transport).trusted
    assert forwarded_for(balancer_trusted) == [b"192.0.2.10"]

    source_trusted = Front(trusted_proxies=(ipaddress.ip_network("192.0.2.0/24"),))
    _protocol, transport = source_trusted.accept()
    deliver(transport, V1 + b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
    assert client_of(transport).trusted
    assert forwarded_for(source_trusted) == [b"203.0.113.9, 192.0.2.10"]


def test_h2c_after_the_header() -> None:
    front = Front(h2c=True)
    _protocol, transport = front.accept()
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    h2.initiate_connection()
    stream = h2.get_next_available_stream_id()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]
    h2.send_headers(stream, headers, end_stream=True)
    deliver(transport, V2 + h2.data_to_send())
    assert client_of(transport).h2 is not None
    front.reactor.advance(0)
    assert forwarded_for(front) == [b"192.0.2.10"]


# TLS after the header: a real handshake, in memory.


@implementer(IHandshakeListener)
class Peer(Protocol):
    def __init__(self) -> None:
        self.handshaken = False
        self.data = b""

    def handshakeCompleted(self) -> None:
        self.handshaken = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """An [https] listener's TLS config for NAME, and the CA file that verifies it."""
    tmp = tmp_path_factory.mktemp("certs")
    ca = TestCA()
    ca.issue([NAME]).write(tmp / "a.pem")
    config = loads(
        "[pool web]\nservers = 127.0.0.1:9001\n"
        "[https front]\nlisten = tcp:0\ncertificates = a.pem\naccept_proxy = on\n"
        "routes =\n    path / -> pool web\n",
        str(tmp / "proxyd.ini"),
    )
    assert config.http[0].accept_proxy
    return config.http[0].tls, str(ca.write_ca(tmp / "ca.pem"))


def tls_connection(front: Front, header: bytes, client: Protocol, ca: str) -> iosim.IOPump:
    """A TLS client, in memory, whose connection begins with `header` in the clear."""
    assert front.relay.factory.tls is not None
    listening = front.relay.factory.tls.wrap(front.relay.factory, front.reactor)
    front.factory = ProxyHeaderFactory(listening, front.reactor, front.policy)
    server = front.factory.buildProtocol(None)
    client_tls = ClientTls("test", TlsClientConfig(enabled=True, ca=ca, server_name=NAME))
    connecting = client_tls.wrap(Factory.forProtocol(lambda: client), NAME, front.reactor)
    tls_client = connecting.buildProtocol(None)
    server_transport = iosim.FakeTransport(
        server,
        True,
        IPv4Address("TCP", "127.0.0.1", 8443),
        IPv4Address("TCP", BALANCER, 40000),
    )
    client_transport = iosim.makeFakeClient(tls_client)
    pump = iosim.connect(
        server, server_transport, tls_client, client_transport, greet=False, clock=front.reactor
    )
    server.dataReceived(header)  # before the client's ClientHello
    pump.flush()
    return pump


def test_tls_after_the_header_is_handshaken_and_its_requests_come_from_the_source(
    tls: tuple[Any, str],
) -> None:
    config, ca = tls
    front = Front(tls=config)
    client = Peer()
    pump = tls_connection(front, V1, client, ca)
    assert client.handshaken
    assert client.transport is not None
    client.transport.write(GET)
    pump.flush()
    assert forwarded_for(front) == [b"192.0.2.10"]
    (connection,) = [c for c in front.relay.factory.clients if c.peer == SOURCE]
    assert connection.tls is not None and connection.tls.server_name == NAME


def test_a_tls_client_without_a_header_is_refused_before_any_handshake(
    tls: tuple[Any, str],
) -> None:
    config, ca = tls
    front = Front(tls=config)
    client = Peer()
    tls_connection(front, b"", client, ca)
    assert not client.handshaken
    assert front.errors() == {"bad_proxy_header": 1}


def test_tcp_tls_termination_reads_the_header_before_the_handshake(
    tls: tuple[Any, str],
) -> None:
    config, ca = tls
    h = Harness(accept_proxy=True, tls=config, send_proxy="v1")
    assert h.factory.tls is not None
    listening = h.factory.tls.wrap(h.factory, h.reactor)
    policy = HeaderPolicy(
        "tcp db", 10.0, "handshake_timeout", lambda: h.factory.stats, h.factory.proxy_header_refused
    )
    front = ProxyHeaderFactory(listening, h.reactor, policy)
    server = front.buildProtocol(None)
    client = Peer()
    client_tls = ClientTls("test", TlsClientConfig(enabled=True, ca=ca, server_name=NAME))
    tls_client = client_tls.wrap(Factory.forProtocol(lambda: client), NAME, h.reactor)
    tls_client_protocol = tls_client.buildProtocol(None)
    server_transport = iosim.FakeTransport(
        server, True, IPv4Address("TCP", "127.0.0.1", 465), IPv4Address("TCP", BALANCER, 40000)
    )
    pump = iosim.connect(
        server,
        server_transport,
        tls_client_protocol,
        iosim.makeFakeClient(tls_client_protocol),
        greet=False,
        clock=h.reactor,
    )
    server.dataReceived(V2)
    pump.flush()
    assert client.handshaken
    h.reactor.advance(0)
    backend = h.connect_server()
    assert backend.received() == V1  # send_proxy: the header's addresses, on
    (relay,) = h.factory._relays.open
    assert relay.record.client == SOURCE


def test_tcp_tls_termination_logs_a_refused_header_in_the_access_log() -> None:
    h = Harness(accept_proxy=True)
    policy = HeaderPolicy(
        "tcp db", 10.0, "handshake_timeout", lambda: h.factory.stats, h.factory.proxy_header_refused
    )
    front = ProxyHeaderFactory(h.factory, h.reactor, policy)
    protocol = front.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", BALANCER, 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    record = h.record()
    assert record["client"] == f"{BALANCER}:40000"
    assert record["close"] == "bad_proxy_header" and record["backend"] is None
    assert h.factory.stats.cell("", "db", "").errors == {"bad_proxy_header": 1}


def test_listeners_with_accept_proxy_read_the_header_first_and_others_do_not(
    tmp_path: Path,
) -> None:
    TestCA().issue([NAME]).write(tmp_path / "a.pem")
    routes = "routes =\n    path / -> pool web\n"
    config = loads(
        "[proxyd]\naccess_log = off\n[pool web]\nservers = 127.0.0.1:9001\n"
        f"[http plain]\nlisten = tcp:0\n{routes}"
        f"[http behind]\nlisten = tcp:0\naccept_proxy = on\nheader_timeout = 3s\n{routes}"
        f"[https secure]\nlisten = tcp:0\ncertificates = a.pem\naccept_proxy = on\n{routes}"
        "[websocket chat]\nlisten = tcp:0\npool = web\naccept_proxy = on\n"
        "[websocket pass]\nlisten = tcp:0\npool = web\nmode = passthrough\naccept_proxy = on\n"
        "handshake_timeout = 4s\n"
        "[tcp l4]\nlisten = tcp:0\npool = web\naccept_proxy = on\n"
        "[tcp l4tls]\nlisten = tcp:0\npool = web\ncertificates = a.pem\naccept_proxy = on\n"
        "handshake_timeout = 7s\n",
        str(tmp_path / "proxyd.ini"),
    )
    generation = build(MemoryReactorClock(), config)
    try:
        fronts = {listener.name: listener.front.current for listener in generation.listeners}
        reading = {
            name: (front.policy.timeout, front.policy.timeout_word, type(front.inner).__name__)
            for name, front in fronts.items()
            if isinstance(front, ProxyHeaderFactory)
        }
        assert reading == {
            "http behind": (3.0, "header_timeout", "HttpRelayFactory"),
            "https secure": (10.0, "header_timeout", "_ServerWrapper"),
            "websocket chat": (10.0, "handshake_timeout", "WebSocketRelayFactory"),
            "websocket pass": (4.0, "handshake_timeout", "HttpRelayFactory"),
            "tcp l4tls": (7.0, "handshake_timeout", "_ServerWrapper"),
        }
        assert type(fronts["http plain"]).__name__ == "HttpRelayFactory"
        assert type(fronts["tcp l4"]).__name__ == "TcpRelayFactory"  # its preamble reads it
    finally:
        generation.abandon()
