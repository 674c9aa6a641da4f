"""proxyd.tls with real handshakes over pyOpenSSL memory BIOs (no sockets): certificates by
SNI, protocol versions, ALPN, client certificates, reload, the upstream side's verification,
and what a relay reads back from a TLS connection."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from proxyd.config.load import loads
from proxyd.config.model import Certificate, TlsClientConfig, TlsServerConfig
from proxyd.config.tls import load_pair
from proxyd.tls import (
    CertificateIndex,
    CertificateRefused,
    ClientTls,
    ServerTls,
    describe_failure,
    peer_tls,
)
from tests.certs import Issued, TestCA, self_signed


class FakeProtocol:
    """What the connection creators use of Twisted's TLSMemoryBIOProtocol."""

    transport = None

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def failVerification(self, reason: Failure) -> None:
        self.failures.append(reason)


class FakeTransport:
    """A transport over TLS, as peer_tls sees it."""

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: SSL.Error) -> None:
        super().__init__(side, error)
        self.side = side
        self.error = error

    @property
    def reason(self) -> str | None:
        return describe_failure(Failure(self.error))


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Shuttle bytes between the two ends until both handshakes are done; raises
    HandshakeFailed with the first SSL.Error either end raises."""
    server.set_accept_state()
    ends = (("client", client, server), ("server", server, client))
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, this, other in ends:
            if not done[side]:
                try:
                    this.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    raise HandshakeFailed(side, e) from None
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(this.bio_read(65536))
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def plain_client(
    name: bytes | None = None,
    version: int | None = None,
    alpn: list[bytes] | None = None,
    cert: Issued | None = None,
) -> SSL.Connection:
    """A client that verifies nothing: what it is offered is what the server chose."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.set_cipher_list(b"DEFAULT@SECLEVEL=0")  # let the client offer TLS 1.0 and 1.1
    if alpn:
        ctx.set_alpn_protos(alpn)
    if cert is not None:
        ctx.use_certificate(cert.cert)
        ctx.use_privatekey(cert.key)
    connection = SSL.Connection(ctx, None)
    connection.set_connect_state()
    if name:
        connection.set_tlsext_host_name(name)
    return connection


def config_of(tmp_path: Path, certificates: list[str], extra: str = "") -> TlsServerConfig:
    """The [https h] TLS settings of a config file in tmp_path."""
    lines = "".join(f"    {name}\n" for name in certificates)
    config = loads(
        "[pool p]\nservers = 127.0.0.1:1\n[https h]\nlisten = tcp:0\n"
        f"certificates =\n{lines}routes =\n    path / -> pool p\n{extra}",
        str(tmp_path / "proxyd.ini"),
    )
    tls = config.http[0].tls
    assert tls is not None
    return tls


def serve(tmp_path: Path, issued: list[Issued], extra: str = "") -> ServerTls:
    """A ServerTls for `issued`, in that order (the first is the default)."""
    for index, one in enumerate(issued):
        one.write(tmp_path / f"{index}.pem")
    names = [f"{index}.pem" for index in range(len(issued))]
    return ServerTls("https h", config_of(tmp_path, names, extra), [b"http/1.1"])


def accept(tls: ServerTls) -> SSL.Connection:
    return tls.serverConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]


def connect_as_client(client_tls: ClientTls, host: str, protocol: FakeProtocol) -> SSL.Connection:
    """The client connection ClientTls makes for a server at `host`."""
    creator: Any = client_tls.creator(host)
    return creator.clientConnectionForTLS(protocol)  # type: ignore[no-any-return]


def leaf(connection: SSL.Connection) -> Any:
    return connection.get_peer_certificate(as_cryptography=True)


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def site(ca: TestCA) -> dict[str, Issued]:
    """A default certificate, one for a.test and a wildcard for *.w.test, in that order."""
    return {
        "default": ca.issue(["default.test"]),
        "a": ca.issue(["a.test"]),
        "wildcard": ca.issue(["*.w.test"]),
    }


@pytest.fixture
def server(tmp_path: Path, site: dict[str, Issued]) -> ServerTls:
    return serve(tmp_path, list(site.values()))


# Which certificate serves a name.


def certificate(*names: str) -> Certificate:
    return Certificate("x.pem", "x.pem", (), None, names)


def test_certificate_index_prefers_an_exact_name() -> None:
    index = CertificateIndex([certificate("d.test"), certificate("a.test", "10.0.0.1")])
    assert index.select("a.test") == 1
    assert index.select("10.0.0.1") == 1
    assert index.select("d.test") == 0


def test_certificate_index_ignores_case_and_a_trailing_dot() -> None:
    index = CertificateIndex([certificate("d.test"), certificate("a.test")])
    assert index.select("A.Test.") == 1


def test_certificate_index_wildcards_cover_exactly_one_label() -> None:
    index = CertificateIndex([certificate("d.test"), certificate("*.b.test")])
    assert index.select("x.b.test") == 1
    assert index.select("b.test") == 0
    assert index.select("x.y.b.test") == 0


def test_certificate_index_prefers_an_exact_name_to_a_wildcard_whatever_the_order() -> None:
    index = CertificateIndex(
        [certificate("d.test"), certificate("*.b.test"), certificate("x.b.test")]
    )
    assert index.select("x.b.test") == 2
    assert index.select("y.b.test") == 1


def test_certificate_index_gives_a_name_to_the_first_certificate_holding_it() -> None:
    index = CertificateIndex([certificate("d.test"), certificate("a.test"), certificate("a.test")])
    assert index.select("a.test") == 1


@pytest.mark.parametrize("name", ["unknown.test", "a.test.other", "test", "", None])
def test_certificate_index_falls_back_to_the_first_certificate(name: str | None) -> None:
    index = CertificateIndex([certificate("d.test"), certificate("a.test")])
    assert index.select(name) == 0


# Handshakes with the listener's side.


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        (b"a.test", "a"),
        (b"A.TEST", "a"),
        (b"x.w.test", "wildcard"),
        (b"w.test", "default"),
        (b"x.y.w.test", "default"),
        (b"unknown.test", "default"),
        (None, "default"),
    ],
)
def test_a_handshake_gets_the_certificate_for_its_server_name(
    server: ServerTls, site: dict[str, Issued], sni: bytes | None, expected: str
) -> None:
    client = plain_client(sni)
    handshake(client, accept(server))
    assert leaf(client) == site[expected].cert


@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
def test_tls_1_0_and_1_1_clients_are_refused(server: ServerTls, version: int) -> None:
    with pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(version=version), accept(server))
    assert (info.value.side, info.value.reason) == ("server", "unsupported protocol")


@pytest.mark.parametrize(
    ("version", "name"), [(SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")]
)
def test_tls_1_2_and_1_3_clients_are_accepted(server: ServerTls, version: int, name: str) -> None:
    client = plain_client(version=version)
    handshake(client, accept(server))
    assert client.get_protocol_version_name() == name


def test_a_client_without_a_version_limit_gets_tls_1_3(server: ServerTls) -> None:
    client = plain_client()
    handshake(client, accept(server))
    assert client.get_protocol_version_name() == "TLSv1.3"


def test_tls_protocols_tls_1_3_refuses_tls_1_2_clients(tmp_path: Path, ca: TestCA) -> None:
    tls = serve(tmp_path, [ca.issue(["a.test"])], "tls_protocols = TLSv1.3\n")
    with pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(version=SSL.TLS1_2_VERSION), accept(tls))
    assert (info.value.side, info.value.reason) == ("server", "unsupported protocol")


def test_tls_protocols_tls_1_2_keeps_clients_to_tls_1_2(tmp_path: Path, ca: TestCA) -> None:
    tls = serve(tmp_path, [ca.issue(["a.test"])], "tls_protocols = TLSv1.2\n")
    client = plain_client()
    handshake(client, accept(tls))
    assert client.get_protocol_version_name() == "TLSv1.2"


def test_tls_ciphers_limit_what_tls_1_2_negotiates(tmp_path: Path, ca: TestCA) -> None:
    tls = serve(tmp_path, [ca.issue(["a.test"])], "tls_ciphers = ECDHE-ECDSA-CHACHA20-POLY1305\n")
    client = plain_client(version=SSL.TLS1_2_VERSION)
    handshake(client, accept(tls))
    assert client.get_cipher_name() == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_tls_ciphersuites_limit_what_tls_1_3_negotiates(tmp_path: Path, ca: TestCA) -> None:
    tls = serve(tmp_path, [ca.issue(["a.test"])], "tls_ciphersuites = TLS_AES_256_GCM_SHA384\n")
    client = plain_client(version=SSL.TLS1_3_VERSION)
    handshake(client, accept(tls))
    assert client.get_cipher_name() == "TLS_AES_256_GCM_SHA384"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([b"h2", b"http/1.1"], b"http/1.1"),
        ([b"http/1.1"], b"http/1.1"),
        ([b"h2"], b""),
        (None, b""),
    ],
)
def test_alpn_selects_http_1_1_when_the_client_offers_it(
    server: ServerTls, offered: list[bytes] | None, chosen: bytes
) -> None:
    client = plain_client(alpn=offered)
    handshake(client, accept(server))
    assert client.get_alpn_proto_negotiated() == chosen


def test_alpn_of_a_tcp_listener_follows_its_own_preference(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["a.test"]).write(tmp_path / "site.pem")
    config = loads(
        "[pool p]\nservers = 127.0.0.1:1\n[tcp t]\nlisten = tcp:0\npool = p\n"
        "certificates = site.pem\ntls_alpn = h2 http/1.1\n",
        str(tmp_path / "proxyd.ini"),
    )
    assert config.tcp[0].tls is not None
    tls = ServerTls("tcp t", config.tcp[0].tls)
    client = plain_client(alpn=[b"http/1.1", b"h2"])
    handshake(client, accept(tls))
    assert client.get_alpn_proto_negotiated() == b"h2"


# Client certificates.


@pytest.fixture
def clients(tmp_path: Path) -> TestCA:
    """The CA client certificates are verified against, in clients.pem."""
    clients = TestCA("clients CA")
    clients.write_ca(tmp_path / "clients.pem")
    return clients


def verifying(tmp_path: Path, site: dict[str, Issued], mode: str) -> ServerTls:
    extra = f"tls_verify_client = {mode}\ntls_client_ca = clients.pem\n"
    return serve(tmp_path, list(site.values()), extra)


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_a_client_certificate_from_the_client_ca_is_accepted_and_described(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA, mode: str
) -> None:
    tls = verifying(tmp_path, site, mode)
    alice = clients.issue(["alice"], client=True)
    client = plain_client(b"a.test", alpn=[b"http/1.1"], cert=alice)
    server = accept(tls)
    handshake(client, server)
    assert leaf(client) == site["a"].cert
    facts = peer_tls(FakeTransport(server))
    assert facts is not None
    assert facts.client_subject == "CN=alice,O=proxyd tests"
    assert facts.client_issuer == "CN=clients CA"
    assert facts.client_fingerprint == alice.fingerprint
    assert facts.client_verify == "SUCCESS"
    assert (facts.version, facts.server_name, facts.alpn) == ("TLSv1.3", "a.test", "http/1.1")
    assert facts.cipher == client.get_cipher_name()


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_required_client_certificates_refuse_a_client_without_one(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA, version: int
) -> None:
    tls = verifying(tmp_path, site, "required")
    with pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(version=version), accept(tls))
    assert info.value.side == "server"
    assert info.value.reason == "peer did not return a certificate"


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_a_client_certificate_from_another_ca_is_refused_and_logged(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA, mode: str
) -> None:
    tls = verifying(tmp_path, site, mode)
    mallory = TestCA("another CA").issue(["mallory"], client=True)
    with capturedLogs() as events, pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(cert=mallory), accept(tls))
    assert (info.value.side, info.value.reason) == ("server", "certificate verify failed")
    assert [formatEvent(e) for e in events] == [
        "https h: client certificate of ?:0 refused: unable to get local issuer certificate "
        "(CN=mallory,O=proxyd tests)"
    ]


def test_an_expired_client_certificate_is_refused(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA
) -> None:
    tls = verifying(tmp_path, site, "required")
    old = clients.expired(["old"])
    with pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(cert=old), accept(tls))
    assert (info.value.side, info.value.reason) == ("server", "certificate verify failed")


def test_optional_client_certificates_may_be_left_out(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA
) -> None:
    tls = verifying(tmp_path, site, "optional")
    server = accept(tls)
    handshake(plain_client(), server)
    facts = peer_tls(FakeTransport(server))
    assert facts is not None
    assert facts.client_verify == "NONE"
    assert (facts.client_subject, facts.client_issuer, facts.client_fingerprint) == ("", "", "")


def test_without_client_verification_no_certificate_is_asked_for(server: ServerTls) -> None:
    connection = accept(server)
    handshake(plain_client(), connection)
    facts = peer_tls(FakeTransport(connection))
    assert facts is not None and facts.client_verify == "NONE" and facts.server_name == ""


def test_peer_tls_of_a_connection_that_is_not_tls_is_none() -> None:
    assert peer_tls(object()) is None
    assert peer_tls(FakeTransport(None)) is None  # type: ignore[arg-type]


# The upstream side: proxyd as a TLS client of a pool's servers.


@pytest.fixture
def ca_file(tmp_path: Path, ca: TestCA) -> str:
    return str(ca.write_ca(tmp_path / "ca.pem"))


class Upstream:
    """A ServerTls serving one certificate, for ClientTls to connect to."""

    def __init__(self, tmp_path: Path, issued: Issued) -> None:
        directory = tmp_path / "upstream"
        directory.mkdir(exist_ok=True)
        self.server_tls = serve(directory, [issued])

    def connect(
        self, client_tls: ClientTls, host: str
    ) -> tuple[FakeProtocol, SSL.Connection, HandshakeFailed | None]:
        """The client's fake protocol, the server's connection and how the handshake
        failed (None: it did not)."""
        protocol = FakeProtocol()
        client = connect_as_client(client_tls, host, protocol)
        server = accept(self.server_tls)
        try:
            handshake(client, server)
        except HandshakeFailed as e:
            return protocol, server, e
        return protocol, server, None


def verified(ca_file: str, **config: Any) -> ClientTls:
    return ClientTls("p", TlsClientConfig(enabled=True, ca=ca_file, **config))


@pytest.mark.parametrize("host", ["10.0.0.5", "api.internal", "API.internal"])
def test_an_upstream_certificate_for_its_name_or_address_passes(
    tmp_path: Path, ca: TestCA, ca_file: str, host: str
) -> None:
    upstream = Upstream(tmp_path, ca.issue(["api.internal", "10.0.0.5"]))
    protocol, _server, failed = upstream.connect(verified(ca_file), host)
    assert (protocol.failures, failed) == ([], None)


def test_an_upstream_certificate_matching_a_wildcard_passes(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    upstream = Upstream(tmp_path, ca.issue(["*.svc.internal"]))
    protocol, _server, failed = upstream.connect(verified(ca_file), "api.svc.internal")
    assert (protocol.failures, failed) == ([], None)


def refused(tmp_path: Path, issued: Issued, client_tls: ClientTls, host: str) -> str:
    """Why the client refused `issued`: the one CertificateRefused it failed with."""
    return refused_by(Upstream(tmp_path, issued), client_tls, host)


def refused_by(upstream: Upstream, client_tls: ClientTls, host: str) -> str:
    protocol, _server, failed = upstream.connect(client_tls, host)
    assert failed is not None and failed.side == "client"
    assert failed.reason == "certificate verify failed"
    [failure] = protocol.failures
    assert failure.check(CertificateRefused)
    return str(failure.value)


def test_an_upstream_certificate_for_another_name_is_refused(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    issued = ca.issue(["other.internal", "10.0.0.6"])
    assert refused(tmp_path, issued, verified(ca_file), "10.0.0.5") == (
        "certificate is not for 10.0.0.5 (DNS:other.internal, IP:10.0.0.6)"
    )
    assert refused(tmp_path, issued, verified(ca_file), "api.internal") == (
        "certificate is not for api.internal (DNS:other.internal, IP:10.0.0.6)"
    )


def test_an_upstream_wildcard_certificate_covers_one_label_only(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    issued = ca.issue(["*.svc.internal"])
    assert refused(tmp_path, issued, verified(ca_file), "a.b.svc.internal") == (
        "certificate is not for a.b.svc.internal (DNS:*.svc.internal)"
    )
    assert refused(tmp_path, issued, verified(ca_file), "svc.internal") == (
        "certificate is not for svc.internal (DNS:*.svc.internal)"
    )


def test_an_upstream_certificate_from_another_ca_is_refused(tmp_path: Path, ca_file: str) -> None:
    issued = TestCA("another CA").issue(["api.internal"])
    assert refused(tmp_path, issued, verified(ca_file), "api.internal") == (
        "unable to get local issuer certificate"
    )


def test_an_expired_upstream_certificate_is_refused(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    issued = ca.expired(["api.internal"])
    assert refused(tmp_path, issued, verified(ca_file), "api.internal") == (
        "certificate has expired"
    )


def test_a_not_yet_valid_upstream_certificate_is_refused(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    issued = ca.not_yet_valid(["api.internal"])
    # No configuration loads a certificate that is not valid yet: build the server's by hand.
    loaded = Certificate("up.pem", "up.pem", (issued.cert,), issued.key, ("api.internal",))
    upstream = Upstream(tmp_path, ca.issue(["api.internal"]))
    upstream.server_tls = ServerTls("https h", TlsServerConfig((), (loaded,)))
    assert refused_by(upstream, verified(ca_file), "api.internal") == (
        "certificate is not yet valid"
    )


def test_an_upstream_certificate_without_subject_alt_names_is_refused(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    issued = ca.issue(["api.internal"], san=False)
    assert "subjectAltName" in refused(tmp_path, issued, verified(ca_file), "api.internal")


def test_tls_verify_off_accepts_any_certificate(tmp_path: Path, ca: TestCA) -> None:
    unverified = ClientTls("p", TlsClientConfig(enabled=True, verify=False))
    for issued in (
        self_signed(["x.internal"]),
        ca.expired(["api.internal"]),
        ca.issue(["other.internal"]),
    ):
        upstream = Upstream(tmp_path, issued)
        protocol, _server, failed = upstream.connect(unverified, "api.internal")
        assert (protocol.failures, failed) == ([], None)


def test_tls_server_name_is_sent_as_sni_and_verified(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    upstream = Upstream(tmp_path, ca.issue(["api.internal"]))
    client_tls = verified(ca_file, server_name="api.internal")
    protocol, server, failed = upstream.connect(client_tls, "10.0.0.5")
    assert (protocol.failures, failed) == ([], None)
    assert server.get_servername() == b"api.internal"
    other_name = verified(ca_file, server_name="x.internal")
    assert refused_by(upstream, other_name, "10.0.0.5") == (
        "certificate is not for x.internal (DNS:api.internal)"
    )


def test_an_upstream_known_by_name_gets_it_as_sni(tmp_path: Path, ca: TestCA, ca_file: str) -> None:
    upstream = Upstream(tmp_path, ca.issue(["api.internal"]))
    _protocol, server, failed = upstream.connect(verified(ca_file), "api.internal")
    assert failed is None and server.get_servername() == b"api.internal"


@pytest.mark.parametrize("host", ["10.0.0.5", "::1"])
def test_an_upstream_known_by_address_gets_no_sni(
    tmp_path: Path, ca: TestCA, ca_file: str, host: str
) -> None:
    upstream = Upstream(tmp_path, ca.issue([host]))
    protocol, server, failed = upstream.connect(verified(ca_file), host)
    assert (protocol.failures, failed) == ([], None)
    assert server.get_servername() is None


def test_tls_server_name_as_an_address_sends_no_sni(
    tmp_path: Path, ca: TestCA, ca_file: str
) -> None:
    upstream = Upstream(tmp_path, ca.issue(["10.0.0.9"]))
    protocol, server, failed = upstream.connect(verified(ca_file, server_name="10.0.0.9"), "h")
    assert (protocol.failures, failed) == ([], None)
    assert server.get_servername() is None


def test_a_client_certificate_is_presented_to_servers_that_require_one(
    tmp_path: Path, site: dict[str, Issued], clients: TestCA, ca_file: str
) -> None:
    tls = verifying(tmp_path, site, "required")
    clients.issue(["proxyd"], client=True).write(tmp_path / "me.pem")
    config = TlsClientConfig(
        enabled=True, verify=False, certificate=load_pair(str(tmp_path / "me.pem"), None)
    )
    client = connect_as_client(ClientTls("p", config), "a.test", FakeProtocol())
    server = accept(tls)
    handshake(client, server)
    facts = peer_tls(FakeTransport(server))
    assert facts is not None
    assert (facts.client_subject, facts.client_verify) == ("CN=proxyd,O=proxyd tests", "SUCCESS")


def test_upstream_alpn_is_offered(tmp_path: Path, ca: TestCA, ca_file: str) -> None:
    upstream = Upstream(tmp_path, ca.issue(["api.internal"]))
    client_tls = ClientTls("p", TlsClientConfig(enabled=True, ca=ca_file), [b"http/1.1"])
    _protocol, server, failed = upstream.connect(client_tls, "api.internal")
    assert failed is None and server.get_alpn_proto_negotiated() == b"http/1.1"


def test_one_creator_per_upstream_name() -> None:
    client_tls = ClientTls("p", TlsClientConfig(enabled=True, verify=False))
    assert client_tls.creator("a.internal") is client_tls.creator("a.internal")
    assert client_tls.creator("a.internal") is not client_tls.creator("b.internal")
    named = ClientTls("p", TlsClientConfig(enabled=True, verify=False, server_name="x.internal"))
    assert named.creator("10.0.0.1") is named.creator("10.0.0.2")


# Wrapping factories.


def test_a_client_wrapper_declines_when_the_wrapped_factory_does() -> None:
    client_tls = ClientTls("p", TlsClientConfig(enabled=True, verify=False))

    class Declining(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    clock: Any = Clock()
    address = cast(IAddress, IPv4Address("TCP", "10.0.0.5", 443))
    assert client_tls.wrap(Declining(), "a.internal", clock).buildProtocol(address) is None
    accepting = client_tls.wrap(Factory.forProtocol(Protocol), "a.internal", clock)
    assert isinstance(accepting.buildProtocol(address), TLSMemoryBIOProtocol)


def test_a_server_wrapper_terminates_tls_for_the_listener_factory(
    server: ServerTls, site: dict[str, Issued]
) -> None:
    factory: Any = Factory.forProtocol(Protocol)
    clock: Any = Clock()
    wrapped = server.wrap(factory, clock)
    protocol = wrapped.buildProtocol(cast(IAddress, IPv4Address("TCP", "127.0.0.1", 40000)))
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    client = plain_client(b"a.test")
    for _ in range(5):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            protocol.dataReceived(client.bio_read(65536))
        if transport.value():
            client.bio_write(transport.value())
            transport.clear()
    assert leaf(client) == site["a"].cert
    assert isinstance(protocol.wrappedProtocol, Protocol)
    assert protocol.wrappedProtocol.transport is protocol


# How TLS failures are told.


def test_describe_failure_gives_the_openssl_reason_of_a_handshake_error(
    server: ServerTls,
) -> None:
    with pytest.raises(HandshakeFailed) as info:
        handshake(plain_client(version=SSL.TLS1_1_VERSION), accept(server))
    assert describe_failure(Failure(info.value.error)) == "unsupported protocol"


def test_describe_failure_joins_several_openssl_reasons() -> None:
    error = SSL.Error([("SSL routines", "", "first"), ("SSL routines", "", "second")])
    assert describe_failure(Failure(error)) == "first; second"


def test_describe_failure_of_an_ssl_error_without_reasons_gives_its_message() -> None:
    assert describe_failure(Failure(SSL.Error("odd"))) == "odd"


def test_describe_failure_of_an_ssl_error_with_an_empty_queue_says_tls_error() -> None:
    assert describe_failure(Failure(SSL.Error([]))) == "TLS error"


def test_describe_failure_of_a_refused_certificate_says_why() -> None:
    reason = Failure(CertificateRefused("certificate has expired"))
    assert describe_failure(reason) == "certificate has expired"


def test_describe_failure_of_a_name_mismatch() -> None:
    reason = Failure(VerificationError(errors=[]))
    assert describe_failure(reason) == "certificate does not match the server's name"


def test_describe_failure_of_a_failure_that_is_not_about_tls_is_none() -> None:
    assert describe_failure(Failure(ConnectionLost())) is None
    assert describe_failure(Failure(ValueError("x"))) is None
