"""The TCP relay's TLS paths: TLS termination waits for the client's handshake, upstream TLS
counts a server only once its handshake is done, and route_by = sni reads the ClientHello to
pick the pool. Real handshakes run in memory over iosim; the rest uses the fake transports of
test_tcp_relay, calling the TLS callbacks directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from proxyd.config.load import loads
from proxyd.config.model import Address, SniRoute, TlsClientConfig, TlsServerConfig
from proxyd.relay.client_hello import UNRECOGNIZED_NAME, alert
from proxyd.relay.proxy_protocol import ReceivedHeader, encode_v1
from proxyd.relay.session import CloseReason
from proxyd.relay.sni import SniRoutes
from proxyd.relay.tcp_preamble import Preamble, Ready, Refused
from proxyd.tls import CertificateRefused, ClientTls, ServerTls
from tests.certs import TestCA
from tests.unit.test_client_hello import client_hello
from tests.unit.test_tcp_relay import CLIENT, LISTENER, End, FakePool, FakeTcpTransport, Harness

NAME = "db.example.test"


@attrs.frozen
class Certs:
    dir: Path
    ca: str
    """The CA bundle that verifies `server`."""
    server: TlsServerConfig
    """A listener's TLS with a certificate for NAME."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    tmp = tmp_path_factory.mktemp("certs")
    ca = TestCA()
    ca.issue([NAME]).write(tmp / "db.pem")
    config = loads(
        "[pool db]\nservers = 127.0.0.1:1\n"
        "[tcp db]\nlisten = tcp:0\ncertificates = db.pem\npool = db\n",
        str(tmp / "proxyd.ini"),
    )
    assert config.tcp[0].tls is not None
    return Certs(tmp, str(ca.write_ca(tmp / "ca.pem")), config.tcp[0].tls)


def messages(logs: Sequence[dict[str, Any]]) -> list[str]:
    return [
        log["log_format"].format(**log) for log in logs if log["log_namespace"].startswith("proxyd")
    ]


@implementer(IHandshakeListener)
class Peer(Protocol):
    """A TLS client or server in memory: what it received, and how it ended."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.handshaken = False
        self.data = b""
        self.reason: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshaken = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


def tls_client_of(h: Harness, certs: Certs, peer: Protocol) -> iosim.IOPump:
    """A real TLS client connected, in memory, to the listener as app.py wraps it."""
    assert h.factory.tls is not None
    listening = h.factory.tls.wrap(h.factory, h.reactor)
    client_tls = ClientTls("test", TlsClientConfig(enabled=True, ca=certs.ca, server_name=NAME))
    connecting = client_tls.wrap(Factory.forProtocol(lambda: peer), NAME, h.reactor)
    _client, _server, pump = iosim.connectedServerAndClient(
        lambda: listening.buildProtocol(None),
        lambda: connecting.buildProtocol(None),
        serverTransportFactory=lambda protocol: iosim.FakeTransport(
            protocol, True, IPv4Address("TCP", *LISTENER), IPv4Address("TCP", *CLIENT)
        ),
        clock=h.reactor,
    )
    return pump


# TLS termination, with real handshakes.


def test_a_terminated_client_is_relayed_in_plaintext_and_logged_with_its_tls(
    certs: Certs,
) -> None:
    h = Harness(tls=certs.server)
    peer = Peer()
    pump = tls_client_of(h, certs, peer)
    assert peer.handshaken
    server = h.connect_server()
    assert peer.transport is not None
    peer.transport.write(b"EHLO x\r\n")
    pump.flush()
    assert server.received() == b"EHLO x\r\n"
    server.send(b"250 ok\r\n")
    pump.flush()
    assert peer.data == b"250 ok\r\n"
    peer.transport.loseConnection()  # close_notify
    pump.flush()
    h.settle()
    assert server.transport.disconnecting
    record = h.record()
    assert (record["close"], record["tls_version"], record["sni"]) == (
        "client_closed",
        "TLSv1.3",
        NAME,
    )
    assert (record["bytes_in"], record["bytes_out"]) == (8, 8)


def test_a_fin_from_the_server_closes_the_tls_client_with_close_notify_after_the_data(
    certs: Certs,
) -> None:
    h = Harness(tls=certs.server)
    peer = Peer()
    pump = tls_client_of(h, certs, peer)
    server = h.connect_server()
    server.send(b"221 bye\r\n")
    server.fin()  # TLS has no half-close: the client is closed instead
    pump.flush()
    assert peer.data == b"221 bye\r\n"
    assert peer.reason is not None and peer.reason.check(ConnectionDone)  # a clean close
    h.settle()
    assert h.record()["close"] == "server_closed"


def test_plain_text_to_a_tls_listener_fails_the_handshake_and_never_reaches_a_backend(
    certs: Certs,
) -> None:
    h = Harness(tls=certs.server)
    assert h.factory.tls is not None
    listening = h.factory.tls.wrap(h.factory, h.reactor)
    relay_side = listening.buildProtocol(None)
    client = Peer()
    with capturedLogs() as logs:
        pump = iosim.connect(
            relay_side,
            iosim.FakeTransport(
                relay_side, True, IPv4Address("TCP", *LISTENER), IPv4Address("TCP", *CLIENT)
            ),
            client,
            iosim.makeFakeClient(client),
            clock=h.reactor,
        )
        assert client.transport is not None
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        pump.flush()
        h.settle()
    assert h.attempts == []
    record = h.record()
    assert (record["close"], record["backend"]) == ("tls_handshake_failed", None)
    (line,) = messages(logs)
    assert line.startswith("tcp db: TLS handshake with 203.0.113.7:51000 failed: ")
    assert "connection closed" not in line  # OpenSSL's own reason


# TLS termination, the callbacks called directly.


def test_no_backend_is_connected_before_the_clients_handshake(certs: Certs) -> None:
    h = Harness(tls=certs.server)
    client = h.accept()
    assert not client.paused  # the handshake must be able to proceed
    assert h.attempts == []
    client.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert len(h.attempts) == 1
    assert client.paused
    server = h.connect_server()
    assert not client.paused
    client.send(b"EHLO x\r\n")
    assert server.transport.value() == b"EHLO x\r\n"


def test_a_handshake_completed_while_closing_is_ignored(certs: Certs) -> None:
    h = Harness(tls=certs.server)
    client = h.accept()
    client.transport.loseConnection()
    client.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert h.attempts == []


def test_a_failed_handshake_is_logged_with_openssls_reason(certs: Certs) -> None:
    h = Harness(tls=certs.server)
    client = h.accept()
    with capturedLogs() as logs:
        client.transport.peer_lost(SSL.Error([("SSL routines", "", "unsupported protocol")]))
        h.settle()
    assert h.attempts == []
    assert messages(logs) == [
        "tcp db: TLS handshake with 203.0.113.7:51000 failed: unsupported protocol"
    ]
    assert h.record()["close"] == "tls_handshake_failed"


def test_a_client_gone_during_the_handshake_is_a_failed_handshake(certs: Certs) -> None:
    h = Harness(tls=certs.server)
    client = h.accept()
    with capturedLogs() as logs:
        client.transport.peer_lost(ConnectionDone())
        h.settle()
    assert messages(logs) == [
        "tcp db: TLS handshake with 203.0.113.7:51000 failed:"
        " connection closed during the handshake"
    ]
    assert h.record()["close"] == "tls_handshake_failed"


def test_a_handshake_that_does_not_finish_in_time_is_cut(certs: Certs) -> None:
    h = Harness(tls=certs.server, handshake_timeout=3.0)
    client = h.accept()
    h.reactor.advance(2.9)
    assert not client.transport.disconnecting
    with capturedLogs() as logs:
        h.reactor.advance(0.1)
        h.settle()
    assert client.transport.aborted
    assert h.attempts == []
    assert messages(logs) == ["tcp db: 203.0.113.7:51000: no TLS handshake within 3.0s"]
    assert h.record()["close"] == "tls_handshake_failed"


def test_the_handshake_timer_stops_once_the_handshake_is_done(certs: Certs) -> None:
    h = Harness(tls=certs.server, handshake_timeout=3.0)
    client = h.accept()
    client.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    h.connect_server()
    h.reactor.advance(10.0)
    assert not client.transport.disconnecting


def test_a_queued_client_that_leaves_after_its_handshake_closed_normally(
    certs: Certs,
) -> None:
    h = Harness(tls=certs.server, max_connections=1)
    first = h.accept()
    first.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    second = h.accept(peer=("192.0.2.8", 52000))
    second.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert h.factory.waiting == 1
    with capturedLogs() as logs:
        second.transport.peer_lost(ConnectionDone())
        h.settle()
    assert messages(logs) == []
    assert h.record()["close"] == "client_closed"
    assert h.factory.waiting == 0


# Upstream TLS.


def tls_upstream(h: Harness, config: TlsClientConfig) -> None:
    h.factory.client_tls = {"db": ClientTls("db", config)}


def connect_tls_server(h: Harness, index: int = -1) -> End:
    """The TCP connection of an upstream TLS attempt, with the TLS layer left out: the test
    calls handshakeCompleted and connectionLost itself."""
    host, port, factory, _timeout, _bind = h.reactor.tcpClients[index]
    transport = FakeTcpTransport(
        h.reactor, IPv4Address("TCP", host, port), IPv4Address("TCP", "10.9.9.9", 40000)
    )
    protocol = factory.wrappedFactory.buildProtocol(transport.getPeer())
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return End(protocol, transport)


def tls_server_of(h: Harness, certs: Certs, backend: Protocol, index: int = -1) -> iosim.IOPump:
    """A real TLS server behind the relay's connect attempt `index`, in memory."""
    host, port, factory, _timeout, _bind = h.reactor.tcpClients[index]
    relay_side = factory.buildProtocol(IPv4Address("TCP", host, port))
    listening = ServerTls("backend", certs.server).wrap(
        Factory.forProtocol(lambda: backend), h.reactor
    )
    backend_side = listening.buildProtocol(None)
    return iosim.connect(
        backend_side,
        iosim.makeFakeServer(backend_side),
        relay_side,
        iosim.makeFakeClient(relay_side),
        clock=h.reactor,
    )


def test_the_relay_speaks_verified_tls_to_the_upstream(certs: Certs) -> None:
    h = Harness()
    tls_upstream(h, TlsClientConfig(enabled=True, ca=certs.ca, server_name=NAME))
    client = h.accept()
    client.send(b"early")
    backend = Peer(echo=True)
    tls_server_of(h, certs, backend)
    assert backend.handshaken
    assert h.pool.successes == [h.pool.servers[0]]
    assert backend.data == b"early"
    assert client.received() == b"early"
    assert not client.paused


def test_an_upstream_certificate_for_another_name_fails_and_the_next_server_is_tried(
    certs: Certs,
) -> None:
    h = Harness()
    tls_upstream(h, TlsClientConfig(enabled=True, ca=certs.ca, server_name="other.example.test"))
    h.accept()
    backend = Peer()
    tls_server_of(h, certs, backend)
    h.settle()
    assert h.pool.failures == [
        (
            h.pool.servers[0],
            "TLS handshake failed: certificate is not for other.example.test (DNS:db.example.test)",
        )
    ]
    assert h.pool.successes == []
    assert len(h.attempts) == 2
    assert backend.data == b""


def test_an_upstream_counts_as_connected_only_after_its_handshake() -> None:
    h = Harness()
    tls_upstream(h, TlsClientConfig(enabled=True, verify=False))
    client = h.accept()
    client.send(b"early")
    server = connect_tls_server(h)
    assert h.pool.successes == []
    assert server.transport.value() == b""
    assert client.paused
    server.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert h.pool.successes == [h.pool.servers[0]]
    assert server.transport.value() == b"early"
    assert not client.paused


def test_an_upstream_certificate_refused_is_a_failure_and_the_next_server_is_tried() -> None:
    h = Harness()
    tls_upstream(h, TlsClientConfig(enabled=True, verify=False))
    h.accept()
    server = connect_tls_server(h)
    server.protocol.connectionLost(Failure(CertificateRefused("certificate has expired")))
    assert h.pool.failures == [(h.pool.servers[0], "TLS handshake failed: certificate has expired")]
    assert len(h.attempts) == 2
    second = connect_tls_server(h)
    second.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert h.pool.successes == [h.pool.servers[1]]


def test_an_upstream_handshake_is_bounded_by_connect_timeout() -> None:
    h = Harness(connect_timeout=2.0)
    tls_upstream(h, TlsClientConfig(enabled=True, verify=False))
    h.accept()
    h.reactor.advance(1.5)
    first = connect_tls_server(h)  # TCP took 1.5s; the handshake gets the other 0.5s
    h.reactor.advance(0.5)
    assert h.pool.failures == [
        (h.pool.servers[0], "TLS handshake not done within connect_timeout 2s")
    ]
    assert first.transport.aborted
    assert len(h.attempts) == 2
    h.settle()  # the aborted attempt's own loss changes nothing
    assert len(h.pool.failures) == 1
    second = connect_tls_server(h)
    second.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    assert h.pool.successes == [h.pool.servers[1]]
    h.reactor.advance(10.0)
    assert not second.transport.disconnecting


def test_a_fin_from_the_client_closes_a_tls_upstream_which_may_still_answer() -> None:
    h = Harness()
    tls_upstream(h, TlsClientConfig(enabled=True, verify=False))
    client = h.accept()
    server = connect_tls_server(h)
    server.protocol.handshakeCompleted()  # type: ignore[attr-defined]
    client.fin()
    assert server.transport.disconnecting  # close_notify, not a TCP FIN under TLS
    assert not client.transport.disconnecting
    h.settle()
    assert client.transport.disconnecting  # once the upstream is gone
    assert h.record()["close"] == "client_closed"


# route_by = sni.


def sni_harness(default: str | None = "db", **config: Any) -> tuple[Harness, FakePool, FakePool]:
    h = Harness(
        route_by="sni",
        routes=(SniRoute("api.example.com", "api"), SniRoute("*.web.test", "web")),
        pool=default,
        **config,
    )
    api = FakePool(["10.0.1.1:443"])
    web = FakePool(["10.0.2.1:443"])
    api.name, web.name = "api", "web"
    h.factory.pools = {"db": h.pool, "api": api, "web": web}  # type: ignore[dict-item]
    return h, api, web


def hosts(h: Harness) -> list[tuple[str, int]]:
    return [(host, port) for host, port, *_ in h.attempts]


@pytest.mark.parametrize(
    ("name", "server"),
    [
        (b"api.example.com", ("10.0.1.1", 443)),
        (b"API.Example.com", ("10.0.1.1", 443)),
        (b"www.web.test", ("10.0.2.1", 443)),
        (b"a.www.web.test", ("10.0.0.1", 3306)),  # a wildcard covers one label only
        (b"other.test", ("10.0.0.1", 3306)),
        (None, ("10.0.0.1", 3306)),
    ],
)
def test_the_server_name_picks_the_pool_exact_then_wildcard_then_default(
    name: bytes | None, server: tuple[str, int]
) -> None:
    h, _api, _web = sni_harness()
    client = h.accept()
    client.send(client_hello(name))
    assert hosts(h) == [server]
    assert client.paused


def test_the_hello_split_over_reads_reaches_the_backend_unchanged_then_the_rest() -> None:
    h, _api, _web = sni_harness()
    client = h.accept()
    assert not client.paused  # reading the hello
    hello = client_hello(b"api.example.com")
    for i in range(0, len(hello) - 1, 7):
        client.send(hello[i : min(i + 7, len(hello) - 1)])
    assert h.attempts == []
    client.send(hello[-1:] + b"\x17more")
    assert hosts(h) == [("10.0.1.1", 443)]
    server = h.connect_server()
    assert server.received() == hello + b"\x17more"
    client.send(b"\x17after")
    assert server.received() == hello + b"\x17more\x17after"
    client.transport.peer_lost(ConnectionDone())
    h.settle()
    record = h.record()
    assert (record["sni"], record["bytes_in"]) == ("api.example.com", len(hello) + 11)
    assert "tls_version" not in record  # nothing was decrypted


def test_no_route_and_no_default_gets_an_unrecognized_name_alert() -> None:
    h, _api, _web = sni_harness(default=None)
    client = h.accept()
    with capturedLogs() as logs:
        client.send(client_hello(b"other.test"))
    assert h.attempts == []
    assert client.transport.value() == alert(UNRECOGNIZED_NAME)
    assert client.transport.disconnecting
    assert messages(logs) == ["tcp db: 203.0.113.7:51000: no route for server name other.test"]
    h.settle()
    record = h.record()
    assert (record["close"], record["sni"]) == ("no_route", "other.test")


def test_no_server_name_and_no_default_is_refused_the_same_way() -> None:
    h, _api, _web = sni_harness(default=None)
    client = h.accept()
    client.send(client_hello(None))
    assert h.attempts == []
    assert client.transport.value() == alert(UNRECOGNIZED_NAME)
    h.settle()
    assert h.record()["close"] == "no_route"


def test_plain_http_to_an_sni_port_is_logged_and_closed_without_an_alert() -> None:
    h, _api, _web = sni_harness()
    client = h.accept()
    with capturedLogs() as logs:
        client.send(b"GET / HTTP/1.1\r\n\r\n")
    assert client.transport.disconnecting
    assert client.transport.value() == b""
    (line,) = messages(logs)
    assert line.startswith("tcp db: 203.0.113.7:51000: plain text, not TLS")
    assert [log["log_level"].name for log in logs] == ["info"]
    h.settle()
    assert h.attempts == []
    assert h.record()["close"] == "bad_client_hello"


def test_a_hello_that_never_completes_times_out() -> None:
    h, _api, _web = sni_harness(handshake_timeout=5.0)
    client = h.accept()
    client.send(client_hello(b"api.example.com")[:20])
    with capturedLogs() as logs:
        h.reactor.advance(5.0)
    assert messages(logs) == ["tcp db: 203.0.113.7:51000: no ClientHello within 5.0s"]
    h.settle()
    assert h.attempts == []
    assert h.record()["close"] == "handshake_timeout"


def test_a_proxy_header_then_the_hello_are_both_read() -> None:
    h, _api, _web = sni_harness(accept_proxy=True)
    client = h.accept()
    header = b"PROXY TCP4 192.0.2.9 10.0.0.10 51000 443\r\n"
    client.send(header)
    assert h.attempts == []
    hello = client_hello(b"api.example.com")
    client.send(hello)
    assert hosts(h) == [("10.0.1.1", 443)]
    assert h.pool.picks == []
    server = h.connect_server()
    assert server.received() == hello  # the header is not relayed
    server.transport.peer_lost(ConnectionDone())
    h.settle()
    assert h.record()["client"] == "192.0.2.9:51000"


# The preamble core alone.


ROUTES = (SniRoute("api.example.com", "api"),)
SOURCE, DESTINATION = Address("192.0.2.9", 51000), Address("10.0.0.10", 443)


def test_preamble_header_then_the_bytes_after_it_without_sni() -> None:
    preamble = Preamble(accept_proxy=True, routes=None, default_pool="db")
    header = encode_v1(SOURCE, DESTINATION)
    assert preamble.feed(header[:10]) is None
    assert preamble.feed(header[10:] + b"rest") == Ready("db", b"rest")
    assert preamble.header == ReceivedHeader(SOURCE, DESTINATION)


def test_preamble_refuses_a_bad_proxy_header_as_a_warning() -> None:
    preamble = Preamble(accept_proxy=True, routes=SniRoutes(ROUTES, None), default_pool=None)
    assert preamble.feed(b"HELLO\r\n") == Refused(
        CloseReason.BAD_PROXY_HEADER,
        "connection does not start with a PROXY protocol header",
        warn=True,
    )


def test_preamble_any_split_of_the_hello_gives_the_whole_hello_to_relay() -> None:
    hello = client_hello(b"api.example.com")
    for cut in range(1, len(hello), 37):
        preamble = Preamble(accept_proxy=False, routes=SniRoutes(ROUTES, "db"), default_pool="db")
        assert preamble.feed(hello[:cut]) is None
        assert preamble.feed(hello[cut:]) == Ready("api", hello)
        assert preamble.hello is not None and preamble.hello.server_name == "api.example.com"


def test_preamble_unknown_name_without_default_is_refused_with_an_alert() -> None:
    preamble = Preamble(accept_proxy=False, routes=SniRoutes(ROUTES, None), default_pool=None)
    assert preamble.feed(client_hello(b"x.test")) == Refused(
        CloseReason.NO_ROUTE, "no route for server name x.test", reply=alert(UNRECOGNIZED_NAME)
    )
