"""The TCP relay's TLS paths on the fake transports of test_tcp_relay: TLS termination waits
for the client's handshake, upstream TLS counts a server only once its handshake is done, and
route_by = sni reads the ClientHello to pick the pool."""

from __future__ import annotations

from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

from proxyd.config.load import loads
from proxyd.config.model import SniRoute, TlsClientConfig
from proxyd.relay.client_hello import UNRECOGNIZED_NAME, alert
from proxyd.tls import CertificateRefused, ClientTls
from tests.certs import TestCA
from tests.unit.test_client_hello import client_hello
from tests.unit.test_tcp_relay import End, FakePool, FakeTcpTransport, Harness


@pytest.fixture(scope="module")
def tls_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("certs")
    TestCA().issue(["db.example.test"]).write(tmp / "db.pem")
    config = loads(
        "[pool db]\nservers = 127.0.0.1:1\n"
        "[tcp db]\nlisten = tcp:0\ncertificates = db.pem\npool = db\n",
        str(tmp / "proxyd.ini"),
    )
    return config.tcp[0].tls


# TLS termination.


def test_no_backend_is_connected_before_the_clients_handshake(tls_config: Any) -> None:
    h = Harness(tls=tls_config)
    assert h.factory.tls is not None
    client = h.accept()
    assert not client.paused  # the handshake must be able to proceed
    assert h.attempts == []
    client.protocol.handshakeCompleted()
    assert len(h.attempts) == 1
    assert client.paused
    server = h.connect_server()
    assert not client.paused
    client.send(b"EHLO x\r\n")
    assert server.transport.value() == b"EHLO x\r\n"


def test_a_failed_handshake_is_logged_and_never_reaches_a_backend(tls_config: Any) -> None:
    h = Harness(tls=tls_config)
    client = h.accept()
    client.transport.peer_lost(SSL.Error([("SSL routines", "", "unsupported protocol")]))
    h.settle()
    assert h.attempts == []
    record = h.record()
    assert record["close"] == "tls_handshake_failed"
    assert record["backend"] is None


def test_a_handshake_that_does_not_finish_in_time_is_cut(tls_config: Any) -> None:
    h = Harness(tls=tls_config, handshake_timeout=3.0)
    client = h.accept()
    h.reactor.advance(3.0)
    h.settle()
    assert client.transport.aborted
    assert h.attempts == []
    assert h.record()["close"] == "tls_handshake_failed"


class TlsLikeTransport(FakeTcpTransport):
    """Twisted's TLS transport has no loseWriteConnection: TLS cannot half-close."""

    def __getattribute__(self, name: str) -> Any:
        if name == "loseWriteConnection":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_a_fin_from_the_server_closes_a_tls_client_whole(tls_config: Any) -> None:
    h = Harness(tls=tls_config)
    transport = TlsLikeTransport(
        h.reactor, IPv4Address("TCP", "192.0.2.7", 50000), IPv4Address("TCP", "10.0.0.10", 465)
    )
    client = h.accept(transport=transport)
    client.protocol.handshakeCompleted()
    server = h.connect_server()
    server.fin()
    assert client.transport.disconnecting


# Upstream TLS.


def tls_upstream(h: Harness) -> None:
    h.factory.client_tls = {"db": ClientTls("db", TlsClientConfig(enabled=True, verify=False))}


def connect_tls_server(h: Harness, index: int = -1) -> End:
    host, port, factory, _timeout, _bind = h.reactor.tcpClients[index]
    transport = FakeTcpTransport(
        h.reactor, IPv4Address("TCP", host, port), IPv4Address("TCP", "10.9.9.9", 40000)
    )
    protocol = factory.wrappedFactory.buildProtocol(transport.getPeer())  # TLS simulated
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return End(protocol, transport)


def test_an_upstream_counts_as_connected_only_after_its_handshake() -> None:
    h = Harness()
    tls_upstream(h)
    client = h.accept()
    client.send(b"early")
    server = connect_tls_server(h)
    assert h.pool.successes == []
    assert server.transport.value() == b""
    server.protocol.handshakeCompleted()
    assert h.pool.successes == [h.pool.servers[0]]
    assert server.transport.value() == b"early"
    assert not client.paused


def test_an_upstream_certificate_refused_is_a_failure_and_the_next_server_is_tried() -> None:
    h = Harness()
    tls_upstream(h)
    h.accept()
    server = connect_tls_server(h)
    server.protocol.connectionLost(Failure(CertificateRefused("certificate has expired")))
    assert h.pool.failures == [(h.pool.servers[0], "TLS handshake failed: certificate has expired")]
    assert len(h.attempts) == 2
    second = connect_tls_server(h)
    second.protocol.handshakeCompleted()
    assert h.pool.successes == [h.pool.servers[1]]


# route_by = sni.


def sni_harness(default: str | None = "db", **config: Any) -> tuple[Harness, FakePool]:
    h = Harness(
        route_by="sni",
        routes=(SniRoute("api.example.com", "api"), SniRoute("*.web.test", "db")),
        pool=default,
        **config,
    )
    api = FakePool(["10.0.1.1:443"])
    api.name = "api"
    h.factory.pools = {"db": h.pool, "api": api}  # type: ignore[dict-item]
    return h, api


def test_the_server_name_picks_the_pool_and_the_hello_reaches_it_unchanged() -> None:
    h, _api = sni_harness()
    client = h.accept()
    assert not client.paused
    hello = client_hello(b"api.example.com")
    client.send(hello[:10])
    assert h.attempts == []
    client.send(hello[10:])
    assert [(host, port) for host, port, *_ in h.attempts] == [("10.0.1.1", 443)]
    server = h.connect_server()
    assert server.transport.value() == hello
    client.transport.peer_lost(ConnectionError())
    h.settle()
    assert h.record()["sni"] == "api.example.com"


@pytest.mark.parametrize("name", [b"x.web.test", b"other.test", None])
def test_wildcard_unknown_and_missing_names_go_to_the_default_pool(name: bytes | None) -> None:
    h, _api = sni_harness()
    client = h.accept()
    client.send(client_hello(name))
    assert [(host, port) for host, port, *_ in h.attempts] == [("10.0.0.1", 3306)]


def test_no_route_and_no_default_gets_an_unrecognized_name_alert() -> None:
    h, _api = sni_harness(default=None)
    client = h.accept()
    client.send(client_hello(b"other.test"))
    assert h.attempts == []
    assert client.transport.value() == alert(UNRECOGNIZED_NAME)
    h.settle()
    assert h.record()["close"] == "no_route"


def test_something_else_than_a_client_hello_is_closed() -> None:
    h, _api = sni_harness()
    client = h.accept()
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    h.settle()
    assert h.attempts == []
    assert h.record()["close"] == "bad_client_hello"


def test_a_hello_that_never_completes_times_out() -> None:
    h, _api = sni_harness(handshake_timeout=5.0)
    client = h.accept()
    client.send(client_hello(b"api.example.com")[:20])
    h.reactor.advance(5.0)
    h.settle()
    assert h.attempts == []
    assert h.record()["close"] == "handshake_timeout"


def test_a_proxy_header_then_the_hello_are_both_read() -> None:
    h, _api = sni_harness(accept_proxy=True)
    client = h.accept()
    header = b"PROXY TCP4 203.0.113.9 10.0.0.10 51000 443\r\n"
    client.send(header + client_hello(b"api.example.com"))
    assert [(host, port) for host, port, *_ in h.attempts] == [("10.0.1.1", 443)]
