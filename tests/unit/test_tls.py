"""proxyd.tls with real handshakes over memory BIOs: certificates by SNI, protocol versions,
ALPN, client certificates, reload, and the upstream side's verification."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.python.failure import Failure

from proxyd.config.load import loads
from proxyd.config.model import Certificate, TlsClientConfig
from proxyd.config.tls import load_pair
from proxyd.tls import CertificateIndex, CertificateRefused, ClientTls, ServerTls, peer_tls
from tests.certs import TestCA, self_signed


class FakeProtocol:
    """What the creators use of Twisted's TLS protocol."""

    transport = None

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def failVerification(self, reason: Failure) -> None:
        self.failures.append(reason)


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Shuttle bytes until both ends are done; raises the first SSL.Error."""
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for this, other in ((client, server), (server, client)):
            if not done[id(this)]:
                try:
                    this.do_handshake()
                    done[id(this)] = True
                except SSL.WantReadError:
                    pass
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(this.bio_read(65536))
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def plain_client(
    name: bytes | None = None,
    version: int | None = None,
    alpn: list[bytes] | None = None,
    cert: Any = None,
) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if version is not None:
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.set_cipher_list(b"DEFAULT@SECLEVEL=0")
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


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


def server_tls(tmp_path: Path, ca: TestCA, extra: str = "", names: Any = None) -> ServerTls:
    files = []
    for index, group in enumerate(names or [["default.test"], ["a.test"], ["*.w.test"]]):
        ca.issue(group).write(tmp_path / f"{index}.pem")
        files.append(f"    {index}.pem\n")
    config = loads(
        "[pool p]\nservers = 127.0.0.1:1\n[https h]\nlisten = tcp:0\n"
        f"certificates =\n{''.join(files)}routes =\n    path / -> pool p\n{extra}",
        str(tmp_path / "proxyd.ini"),
    )
    return ServerTls("https h", config.http[0].tls, [b"http/1.1"])


def leaf_name(connection: SSL.Connection) -> str:
    cert = connection.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    return str(cert.subject.rfc4514_string())


def certificate(names: tuple[str, ...]) -> Certificate:
    return Certificate("x.pem", "x.pem", (), None, names)


def test_certificate_index_exact_then_one_label_wildcard_then_first() -> None:
    index = CertificateIndex(
        [certificate(("d.test",)), certificate(("a.test",)), certificate(("*.w.test",))]
    )
    assert index.select("a.test") == 1
    assert index.select("A.TEST.") == 1
    assert index.select("x.w.test") == 2
    assert index.select("w.test") == 0
    assert index.select("x.y.w.test") == 0
    assert index.select("other.test") == 0
    assert index.select(None) == 0


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        (b"a.test", "a.test"),
        (b"x.w.test", "*.w.test"),
        (b"nope.test", "default.test"),
        (None, "default.test"),
    ],
)
def test_the_certificate_is_chosen_by_sni(
    tmp_path: Path, ca: TestCA, sni: Any, expected: str
) -> None:
    tls = server_tls(tmp_path, ca)
    client = plain_client(sni)
    handshake(client, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert leaf_name(client) == f"CN={expected},O=proxyd tests"


@pytest.mark.parametrize("version", [SSL.TLS1_VERSION, SSL.TLS1_1_VERSION])
def test_tls_1_0_and_1_1_are_refused(tmp_path: Path, ca: TestCA, version: int) -> None:
    tls = server_tls(tmp_path, ca)
    with pytest.raises(SSL.Error):
        handshake(plain_client(version=version), tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("version", "name"), [(SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")]
)
def test_tls_1_2_and_1_3_are_accepted(tmp_path: Path, ca: TestCA, version: int, name: str) -> None:
    tls = server_tls(tmp_path, ca)
    client = plain_client(version=version)
    handshake(client, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert client.get_protocol_version_name() == name


def test_alpn_selects_http_1_1_when_offered_and_nothing_otherwise(
    tmp_path: Path, ca: TestCA
) -> None:
    tls = server_tls(tmp_path, ca)
    client = plain_client(alpn=[b"h2", b"http/1.1"])
    handshake(client, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert client.get_alpn_proto_negotiated() == b"http/1.1"
    other = plain_client(alpn=[b"h2"])
    handshake(other, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert other.get_alpn_proto_negotiated() == b""


def client_ca_setup(tmp_path: Path, ca: TestCA, mode: str) -> tuple[ServerTls, TestCA]:
    clients = TestCA("clients CA")
    clients.write_ca(tmp_path / "clients.pem")
    extra = f"tls_verify_client = {mode}\ntls_client_ca = clients.pem\n"
    return server_tls(tmp_path, ca, extra), clients


class Handle:
    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def test_required_client_certificates_are_verified_and_described(
    tmp_path: Path, ca: TestCA
) -> None:
    tls, clients = client_ca_setup(tmp_path, ca, "required")
    alice = clients.issue(["alice"], client=True)
    server = tls.serverConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    handshake(plain_client(b"a.test", cert=alice), server)
    facts = peer_tls(Handle(server))
    assert facts is not None
    assert facts.client_subject == "CN=alice,O=proxyd tests"
    assert facts.client_issuer == "CN=clients CA"
    assert facts.client_fingerprint == alice.fingerprint
    assert facts.client_verify == "SUCCESS"
    assert facts.server_name == "a.test"
    with pytest.raises(SSL.Error):
        handshake(plain_client(), tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    mallory = TestCA("another").issue(["mallory"], client=True)
    with pytest.raises(SSL.Error):
        handshake(plain_client(cert=mallory), tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]


def test_optional_client_certificates_may_be_left_out(tmp_path: Path, ca: TestCA) -> None:
    tls, _clients = client_ca_setup(tmp_path, ca, "optional")
    server = tls.serverConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    handshake(plain_client(), server)
    facts = peer_tls(Handle(server))
    assert facts is not None and facts.client_verify == "NONE" and facts.client_subject == ""


def test_reload_swaps_certificates_and_a_failed_one_keeps_the_old(
    tmp_path: Path, ca: TestCA
) -> None:
    tls = server_tls(tmp_path, ca, names=[["old.test"]])
    ca.issue(["new.test"]).write(tmp_path / "0.pem")
    tls.reload()
    client = plain_client()
    handshake(client, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert "new.test" in leaf_name(client)
    (tmp_path / "0.pem").write_text("broken")
    with pytest.raises(ValueError):
        tls.reload()
    again = plain_client()
    handshake(again, tls.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    assert "new.test" in leaf_name(again)


# The upstream side.


def upstream(tmp_path: Path, ca: TestCA, names: list[str], issued: Any = None) -> ServerTls:
    (issued or ca.issue(names)).write(tmp_path / "up.pem")
    return server_tls(tmp_path, ca, names=[names]) if issued is None else _tls_for(tmp_path)


def _tls_for(tmp_path: Path) -> ServerTls:
    config = loads(
        "[pool p]\nservers = 127.0.0.1:1\n[https h]\nlisten = tcp:0\ncertificates = up.pem\n"
        "routes =\n    path / -> pool p\n",
        str(tmp_path / "proxyd.ini"),
    )
    return ServerTls("https h", config.http[0].tls)


def connect_upstream(
    tmp_path: Path, ca: TestCA, server: ServerTls, host: str, **config: Any
) -> FakeProtocol:
    ca.write_ca(tmp_path / "ca.pem")
    client_config = TlsClientConfig(enabled=True, ca=str(tmp_path / "ca.pem"), **config)
    protocol = FakeProtocol()
    client = ClientTls("p", client_config).creator(host).clientConnectionForTLS(protocol)  # type: ignore[arg-type]
    with contextlib.suppress(SSL.Error):
        handshake(client, server.serverConnectionForTLS(FakeProtocol()))  # type: ignore[arg-type]
    return protocol


def test_an_upstream_with_a_good_certificate_passes(tmp_path: Path, ca: TestCA) -> None:
    server = upstream(tmp_path, ca, ["10.0.0.5", "api.internal"])
    assert connect_upstream(tmp_path, ca, server, "10.0.0.5").failures == []
    assert connect_upstream(tmp_path, ca, server, "api.internal").failures == []
    named = connect_upstream(tmp_path, ca, server, "10.9.9.9", server_name="api.internal")
    assert named.failures == []


@pytest.mark.parametrize(
    ("names", "issued", "why"),
    [
        (["other.internal"], None, "certificate is not for 10.0.0.5 (DNS:other.internal)"),
        (["10.0.0.5"], "self_signed", "unable to get local issuer certificate"),
        (["10.0.0.5"], "expired", "certificate has expired"),
    ],
)
def test_an_upstream_with_a_bad_certificate_is_refused_saying_why(
    tmp_path: Path, ca: TestCA, names: list[str], issued: str | None, why: str
) -> None:
    made = {None: None, "self_signed": self_signed(names), "expired": ca.expired(names)}[issued]
    server = upstream(tmp_path, ca, names, made)
    [failure] = connect_upstream(tmp_path, ca, server, "10.0.0.5").failures
    assert failure.check(CertificateRefused)
    assert str(failure.value) == why


def test_tls_verify_off_accepts_any_certificate(tmp_path: Path, ca: TestCA) -> None:
    server = upstream(tmp_path, ca, ["x"], self_signed(["x"]))
    assert connect_upstream(tmp_path, ca, server, "10.0.0.5", verify=False).failures == []


def test_sni_is_sent_for_names_and_not_for_addresses(tmp_path: Path, ca: TestCA) -> None:
    client_tls = ClientTls("p", TlsClientConfig(enabled=True, verify=False))
    named = client_tls.creator("api.internal").clientConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    assert named.get_servername() == b"api.internal"
    address = client_tls.creator("10.0.0.5").clientConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    assert address.get_servername() is None


def test_a_client_certificate_is_presented_to_servers_that_require_one(
    tmp_path: Path, ca: TestCA
) -> None:
    tls, clients = client_ca_setup(tmp_path, ca, "required")
    clients.issue(["proxyd"], client=True).write(tmp_path / "me.pem")
    config = TlsClientConfig(
        enabled=True, verify=False, certificate=load_pair(str(tmp_path / "me.pem"), None)
    )
    client = ClientTls("p", config).creator("10.0.0.5").clientConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    server = tls.serverConnectionForTLS(FakeProtocol())  # type: ignore[arg-type]
    handshake(client, server)
    facts = peer_tls(Handle(server))
    assert facts is not None and facts.client_subject == "CN=proxyd,O=proxyd tests"
