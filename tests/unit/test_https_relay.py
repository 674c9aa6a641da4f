"""The HTTP relay under TLS: what a TLS client connection changes (scheme, tls_* templates,
HSTS, the access log), the https redirect of plain listeners, and upstream connections that
only count once their handshake is done. TLS itself is below the relay (Twisted's wrapper);
here its outcome is simulated on the harness of test_http_relay."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from proxyd.config.load import loads
from proxyd.config.model import HeaderRule, TlsClientConfig
from proxyd.relay.http.upstream import ConnectionPool
from proxyd.tls import CertificateRefused, ClientTls, PeerTls
from tests.certs import TestCA
from tests.unit.test_http_relay import GET, OK, Relay, field, request_lines

TLS = PeerTls(
    version="TLSv1.3",
    cipher="TLS_AES_128_GCM_SHA256",
    server_name="a.example.test",
    client_subject="CN=alice,O=proxyd tests",
    client_issuer="CN=proxyd test CA",
    client_fingerprint="ab" * 32,
    client_verify="SUCCESS",
)


@pytest.fixture(scope="module")
def tls_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("certs")
    TestCA().issue(["a.example.test"]).write(tmp / "a.pem")
    config = loads(
        "[pool web]\nservers = 127.0.0.1:9001\n"
        "[https front]\nlisten = tcp:0\ncertificates = a.pem\nroutes =\n    path / -> pool web\n",
        str(tmp / "proxyd.ini"),
    )
    return config.http[0].tls


def https_relay(tls_config: Any, peer: PeerTls | None = TLS, **config: Any) -> Relay:
    relay = Relay(tls=tls_config, **config)
    relay.client.tls = peer
    return relay


def test_requests_over_tls_are_forwarded_as_https(tls_config: Any) -> None:
    relay = https_relay(tls_config)
    relay.send(GET)
    _upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "X-Forwarded-Proto") == [b"https"]
    assert field(sent, "Forwarded") == [b"for=10.0.0.7;host=example.test;proto=https"]


def test_tls_templates_pass_the_client_certificate_to_the_backend(tls_config: Any) -> None:
    rules = (
        HeaderRule("set", "X-Client-Subject", "{tls_client_subject}"),
        HeaderRule("set", "X-Client-Fingerprint", "{tls_client_fingerprint}"),
        HeaderRule("set", "X-Client-Verify", "{tls_client_verify}"),
        HeaderRule("add", "X-TLS", "{tls_version} {tls_cipher} {tls_sni}"),
    )
    relay = https_relay(tls_config, request_headers=rules)
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Subject: forged\r\n\r\n")
    _upstream, ut = relay.accept_upstream()
    sent = ut.value()
    assert field(sent, "X-Client-Subject") == [b"CN=alice,O=proxyd tests"]
    assert field(sent, "X-Client-Fingerprint") == [b"ab" * 32]
    assert field(sent, "X-Client-Verify") == [b"SUCCESS"]
    assert field(sent, "X-TLS") == [b"TLSv1.3 TLS_AES_128_GCM_SHA256 a.example.test"]


def test_an_empty_template_removes_the_field_a_client_forged(tls_config: Any) -> None:
    """Without a client certificate {tls_client_subject} is "": the client's own field must
    not reach the backend as if proxyd had verified it."""
    rules = (
        HeaderRule("set", "X-Client-Subject", "{tls_client_subject}"),
        HeaderRule("add", "X-Client-Issuer", "{tls_client_issuer}"),
    )
    relay = https_relay(
        tls_config, attrs.evolve(TLS, client_subject="", client_issuer=""), request_headers=rules
    )
    relay.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Subject: CN=admin\r\n\r\n")
    _upstream, ut = relay.accept_upstream()
    assert field(ut.value(), "X-Client-Subject") == []
    assert field(ut.value(), "X-Client-Issuer") == []


def test_hsts_is_added_to_proxied_responses_replacing_the_upstreams(tls_config: Any) -> None:
    relay = https_relay(tls_config, hsts="max-age=31536000; includeSubDomains")
    relay.send(GET)
    upstream, _ut = relay.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\nContent-Length: 0\r\n\r\n"
    )
    assert field(relay.received(), "Strict-Transport-Security") == [
        b"max-age=31536000; includeSubDomains"
    ]


def test_hsts_is_added_to_proxyds_own_answers(tls_config: Any) -> None:
    relay = https_relay(tls_config, hsts="max-age=60")
    relay.send(GET)
    relay.refuse_upstream()
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert field(answer, "Strict-Transport-Security") == [b"max-age=60"]


def test_tls_facts_are_in_the_access_log(tls_config: Any) -> None:
    relay = https_relay(tls_config)
    relay.send(GET)
    upstream, _ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    [record] = relay.log.records
    assert record["tls_version"] == "TLSv1.3"
    assert record["sni"] == "a.example.test"


def test_plain_http_has_no_tls_fields_in_its_log() -> None:
    relay = Relay()
    relay.send(GET)
    upstream, _ut = relay.accept_upstream()
    upstream.dataReceived(OK)
    assert "tls_version" not in relay.log.records[0]


def test_a_client_lost_during_the_handshake_is_logged_and_never_proxied(tls_config: Any) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        relay = https_relay(tls_config, peer=None)
        error = SSL.Error([("SSL routines", "", "unsupported protocol")])
        relay.client.connectionLost(Failure(error))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert relay.pending_connects() == []
    texts = [e.get("why") for e in events if "TLS handshake" in e.get("log_format", "")]
    assert texts == ["unsupported protocol"]


@pytest.mark.parametrize(
    ("port", "request_head", "location"),
    [
        (
            443,
            b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.TEST:8080\r\n\r\n",
            b"https://example.test/a/b?x=1",
        ),
        (8443, b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", b"https://example.test:8443/"),
        (443, b"GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"https://[::1]/x"),
        (443, b"GET http://other.test/p?q HTTP/1.1\r\nHost: a\r\n\r\n", b"https://other.test/p?q"),
    ],
)
def test_https_redirect_answers_308_to_the_same_uri(
    port: int, request_head: bytes, location: bytes
) -> None:
    relay = Relay(https_redirect=port)
    relay.send(request_head)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert field(answer, "Location") == [location]
    assert relay.pending_connects() == []
    assert "Strict-Transport-Security" not in answer.decode("latin-1")


def test_https_redirect_keeps_the_connection_for_the_next_request() -> None:
    relay = Relay(https_redirect=443)
    relay.send(GET + GET)
    answers = relay.received()
    assert answers.count(b"HTTP/1.1 308 ") == 2
    assert not relay.ct.disconnecting


# Upstream TLS: the connection counts only once its handshake is done.


def tls_upstream_relay(**config: Any) -> Relay:
    relay = Relay(**config)
    tls = ClientTls("web", TlsClientConfig(enabled=True, verify=False), [b"http/1.1"])
    relay.upstreams = ConnectionPool(relay.reactor, relay.pool_config, tls)
    relay.factory.upstreams = {"web": relay.upstreams}
    return relay


def connect_tls_upstream(relay: Relay) -> tuple[Any, StringTransport]:
    host, port, factory, _timeout, _bind = relay.reactor.tcpClients[relay.used]
    relay.used += 1
    inner = factory.wrappedFactory.buildProtocol(None)  # the TLS layer is simulated
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    inner.makeConnection(transport)
    return inner, transport


def test_an_upstream_tls_connection_is_used_only_after_its_handshake() -> None:
    relay = tls_upstream_relay()
    relay.send(GET)
    upstream, ut = connect_tls_upstream(relay)
    assert ut.value() == b""
    upstream.handshakeCompleted()
    assert request_lines(ut.value())[0] == b"GET /a?x=1 HTTP/1.1"
    upstream.dataReceived(OK)
    assert relay.received().endswith(b"hi")


def test_an_upstream_certificate_refused_is_a_502_and_a_server_failure() -> None:
    relay = tls_upstream_relay(retries=0)
    relay.send(GET)
    upstream, _ut = connect_tls_upstream(relay)
    upstream.connectionLost(Failure(CertificateRefused("self-signed certificate")))
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 502 ")
    [server] = relay.pool.servers
    assert server.consecutive_failures == 1
    assert relay.log.records[0]["error"].endswith("TLS handshake failed: self-signed certificate")


def test_an_upstream_handshake_that_never_ends_times_out_with_504() -> None:
    relay = tls_upstream_relay(retries=0, connect_timeout=2.0)
    relay.send(GET)
    _upstream, ut = connect_tls_upstream(relay)
    relay.reactor.advance(2.0)
    assert ut.disconnecting or ut.disconnected
    assert relay.received().startswith(b"HTTP/1.1 504 ")


def test_listener_config_knows_its_kind(tls_config: Any) -> None:
    assert Relay().config.kind == "http"
    assert https_relay(tls_config).config.kind == "https"


def test_the_https_factory_builds_its_tls_creator(tls_config: Any) -> None:
    relay = https_relay(tls_config)
    assert relay.factory.tls is not None
    assert relay.factory.tls.certificates[0].names == ("a.example.test",)
