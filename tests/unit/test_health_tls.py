"""`check = tls [http ...]` against real TLS servers in memory: the checker's connection and
a Twisted TLS server exchange bytes through iosim on the check's MemoryReactorClock, so the
handshake, the certificate verification and the alerts are OpenSSL's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from proxyd.config.load import loads
from proxyd.config.model import Address, HttpCheck, TlsCheck
from proxyd.health import tls as health_tls
from proxyd.health.checks import checker_for, run_check
from proxyd.health.tls import check_tls
from tests.certs import Issued, TestCA, self_signed
from tests.unit.test_health_helpers import Outcome

SERVER = Address("127.0.0.1", 8443)
TIMEOUT = 2.0
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"


@implementer(IHandshakeListener)
class Server(Protocol):
    """The server's application: remembers what it saw; answers `reply` to a request head."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.received = b""
        self.server_name: bytes | None = None
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        tls: Any = self.transport
        self.server_name = tls.getHandle().get_servername()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.reply is not None and b"\r\n\r\n" in self.received:
            transport: Any = self.transport
            transport.write(self.reply)
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


def server_tls(
    issued: Issued,
    *,
    client_ca: TestCA | None = None,
    tls12: bool = False,
) -> CertificateOptions:
    """A server's TLS settings: its certificate; with `client_ca`, a client certificate from
    that CA required; with `tls12`, nothing newer than TLS 1.2."""
    # cryptography's objects: CertificateOptions takes them (pyOpenSSL's are deprecated).
    options: dict[str, Any] = {"privateKey": issued.key, "certificate": issued.cert}
    if client_ca is not None:
        ca_cert = crypto.X509.from_cryptography(client_ca.cert)  # Twisted wants pyOpenSSL's here
        options.update(verify=True, caCerts=[ca_cert], requireCertificate=True)
    if tls12:
        options.update(lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
    return CertificateOptions(**options)


def self_signed_root(name: str) -> Issued:
    """A certificate signed by its own key (tests.certs.self_signed's comes from a one-off CA)."""
    root = TestCA(name)
    return Issued(root.cert, root.key)


def pool_check(tmp_path: Path, check: str = "tls", keys: str = "") -> Any:
    """The check of `[pool p]` as the loader builds it (file names relative to tmp_path)."""
    text = f"[pool p]\nservers = {SERVER}\ncheck = {check}\n{keys}"
    return loads(text, path=str(tmp_path / "proxyd.ini")).pools["p"].check


class Run:
    """One check run on a MemoryReactorClock against a server wired to it through iosim."""

    def __init__(self, check: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.outcome = Outcome(run_check(self.reactor, SERVER, check, TIMEOUT))
        self.server = Server()

    def serve(
        self, tls: CertificateOptions | None, server: Server | None = None, *, flush: bool = True
    ) -> Run:
        """Accept the check's connection with `server` behind `tls` (None: no TLS at all)."""
        if server is not None:
            self.server = server
        # Typed Any: zope interfaces and Twisted's stubs do not meet in mypy.
        host, port, factory, *_ = self.reactor.tcpClients[0]
        peer: Any = IPv4Address("TCP", host, port)
        clock: Any = self.reactor
        server_factory: Any = Factory.forProtocol(lambda: self.server)
        if tls is not None:
            creator: Any = tls
            server_factory = TLSMemoryBIOFactory(creator, False, server_factory, clock)
        client: Any = factory.buildProtocol(peer)
        self.client = client
        self.check_protocol: Any = client.wrappedProtocol  # the checker's own protocol
        server_protocol = server_factory.buildProtocol(peer)
        self.client_io = iosim.makeFakeClient(self.client)
        self.server_io = iosim.makeFakeServer(server_protocol)
        self.pump = iosim.connect(
            server_protocol,
            self.server_io,
            self.client,
            self.client_io,
            greet=False,
            clock=self.reactor,
        )
        if flush:
            self.pump.flush()
        return self

    @property
    def passed(self) -> bool:
        assert self.outcome.fired, "the check has not finished"
        return self.outcome.passed

    @property
    def reason(self) -> str:
        return self.outcome.reason

    def assert_closed(self) -> None:
        """Decided, no timer or buffered write left, and the connection closed."""
        assert self.outcome.fired
        assert self.reactor.getDelayedCalls() == []
        assert self.client_io.disconnecting


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    """The CA that `tls_ca = ca.pem` trusts."""
    ca = TestCA()
    ca.write_ca(tmp_path / "ca.pem")
    return ca


TRUST = "tls_ca = ca.pem\n"


def test_the_tls_kind_is_registered() -> None:
    assert checker_for(TlsCheck) is check_tls


def test_a_certificate_from_tls_ca_for_the_servers_ip_passes_and_closes_with_close_notify(
    tmp_path: Path, ca: TestCA
) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(server_tls(ca.issue(["127.0.0.1"])))
    assert run.passed
    run.assert_closed()
    # The server read proxyd's close_notify: a TCP close without it would be ConnectionLost.
    assert run.server.lost is not None and run.server.lost.check(ConnectionDone)
    assert run.server.server_name is None  # RFC 6066 3: no IP address in SNI


def test_tls_server_name_is_sent_as_sni_and_verified_against_dns_names(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, keys=TRUST + "tls_server_name = api.internal\n")
    run = Run(check).serve(server_tls(ca.issue(["api.internal"])))
    assert run.passed
    assert run.server.server_name == b"api.internal"


def test_a_handshake_under_tls_1_2_passes_too(tmp_path: Path, ca: TestCA) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST))
    run.serve(server_tls(ca.issue(["127.0.0.1"]), tls12=True))
    assert run.passed
    run.assert_closed()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda ca: TestCA("another CA").issue(["127.0.0.1"]),
            "TLS handshake failed: unable to get local issuer certificate",
        ),
        (
            lambda ca: self_signed(["127.0.0.1"]),
            "TLS handshake failed: unable to get local issuer certificate",
        ),
        (lambda ca: self_signed_root("127.0.0.1"), "TLS handshake failed: self-signed certificate"),
        (lambda ca: ca.expired(["127.0.0.1"]), "TLS handshake failed: certificate has expired"),
        (
            lambda ca: ca.not_yet_valid(["127.0.0.1"]),
            "TLS handshake failed: certificate is not yet valid",
        ),
        (
            lambda ca: ca.issue(["api.internal", "10.0.0.5"]),
            "TLS handshake failed: certificate is not for 127.0.0.1"
            " (DNS:api.internal, IP:10.0.0.5)",
        ),
    ],
    ids=["other-ca", "unknown-issuer", "self-signed", "expired", "not-yet-valid", "wrong-name"],
)
def test_a_certificate_that_does_not_verify_fails_with_the_reason_and_closes(
    tmp_path: Path, ca: TestCA, make: Callable[[TestCA], Issued], reason: str
) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(server_tls(make(ca)))
    assert run.reason == reason
    run.assert_closed()


def test_a_common_name_equal_to_the_servers_ip_is_not_enough(tmp_path: Path, ca: TestCA) -> None:
    # Only subjectAltName entries count: the subject's CN is not consulted (RFC 9525).
    issued = ca.issue(["127.0.0.1"], san=False)
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(server_tls(issued))
    assert run.reason.startswith("TLS handshake failed: certificate has an invalid name: ")
    assert "subjectAltName" in run.reason
    run.assert_closed()


def test_tls_verify_off_passes_with_a_self_signed_expired_certificate_for_another_name(
    tmp_path: Path,
) -> None:
    issued = TestCA("nobody").expired(["elsewhere.test"])
    run = Run(pool_check(tmp_path, keys="tls_verify = off\n")).serve(server_tls(issued))
    assert run.passed
    run.assert_closed()


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_server_refusing_the_client_certificate_fails_with_its_alert(
    tmp_path: Path, ca: TestCA, tls12: bool
) -> None:
    # Under TLS 1.3 the alert comes after the client's side of the handshake has ended.
    TestCA("not trusted").issue(["proxyd"], client=True).write(tmp_path / "client.pem")
    check = pool_check(tmp_path, keys=TRUST + "tls_certificate = client.pem\n")
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"]), client_ca=ca, tls12=tls12))
    assert run.reason == "TLS handshake failed: tlsv1 alert unknown ca"
    run.assert_closed()


def test_a_server_requiring_a_client_certificate_fails_a_check_without_one(
    tmp_path: Path, ca: TestCA
) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST))
    run.serve(server_tls(ca.issue(["127.0.0.1"]), client_ca=ca))
    assert run.reason == "TLS handshake failed: tlsv13 alert certificate required"


def test_a_client_certificate_the_server_trusts_passes(tmp_path: Path, ca: TestCA) -> None:
    ca.issue(["proxyd"], client=True).write(tmp_path / "client.pem")
    check = pool_check(tmp_path, keys=TRUST + "tls_certificate = client.pem\n")
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"]), client_ca=ca))
    assert run.passed
    run.assert_closed()


def test_a_server_that_never_answers_the_handshake_times_out_saying_so(
    tmp_path: Path, ca: TestCA
) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(None)  # reads the ClientHello, no TLS
    assert run.server.received.startswith(b"\x16\x03")  # a handshake record was sent
    assert not run.outcome.fired
    run.reactor.advance(TIMEOUT)
    assert run.reason == "timeout after 2s waiting for the TLS handshake"
    run.assert_closed()


def test_a_server_that_is_not_tls_fails_the_handshake(tmp_path: Path, ca: TestCA) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(None, flush=False)
    run.server_io.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # a server that speaks first
    run.pump.flush()
    assert run.reason == "TLS handshake failed: wrong version number"
    run.assert_closed()


def test_a_server_closing_during_the_handshake_fails_saying_so(tmp_path: Path, ca: TestCA) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST)).serve(None, flush=False)
    run.server_io.loseConnection()
    run.pump.flush()
    assert run.reason == "TLS handshake failed: connection closed by server"
    run.assert_closed()


def test_a_server_silent_after_the_handshake_passes_at_the_timeout_and_is_aborted(
    tmp_path: Path, ca: TestCA
) -> None:
    run = Run(pool_check(tmp_path, keys=TRUST))
    run.serve(server_tls(ca.issue(["127.0.0.1"])), flush=False)
    while not run.check_protocol.handshaken:
        run.pump.pump()
    run.reactor.advance(0)  # the close_notify is written, and never delivered
    assert not run.outcome.fired
    run.reactor.advance(TIMEOUT)
    assert run.passed
    run.assert_closed()


def test_an_http_check_over_tls_passes_on_200_with_the_request_sent_inside_tls(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, "tls http GET /healthz expect 200", TRUST)
    assert check == TlsCheck(check.tls, HttpCheck(path="/healthz", expect=((200, 200),)))
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"])), Server(OK))
    assert run.passed
    assert run.server.received.startswith(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n")
    run.assert_closed()


def test_an_http_check_over_tls_fails_on_500(tmp_path: Path, ca: TestCA) -> None:
    check = pool_check(tmp_path, "tls http GET /healthz expect 200", TRUST)
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"])), Server(ERROR))
    assert run.reason == "HTTP 500 (expected 200)"
    run.assert_closed()


def test_an_http_check_over_tls_fails_on_the_certificate_before_sending_the_request(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, "tls http", TRUST)
    run = Run(check).serve(server_tls(ca.expired(["127.0.0.1"])), Server(OK))
    assert run.reason == "TLS handshake failed: certificate has expired"
    assert run.server.received == b""
    run.assert_closed()


def test_an_http_check_over_tls_reports_a_refused_client_certificate_as_such(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, "tls http", TRUST)
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"]), client_ca=ca), Server(OK))
    assert run.reason == "TLS handshake failed: tlsv13 alert certificate required"
    run.assert_closed()


def test_an_http_check_over_tls_that_gets_no_response_times_out_waiting_for_headers(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, "tls http", TRUST)
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"])))
    assert run.server.received.startswith(b"GET / HTTP/1.1\r\n")
    run.reactor.advance(TIMEOUT)
    assert run.reason == "timeout after 2s waiting for response headers"
    run.assert_closed()


def test_an_http_check_over_tls_broken_mid_response_fails_with_the_tls_reason(
    tmp_path: Path, ca: TestCA
) -> None:
    check = pool_check(tmp_path, "tls http", TRUST)
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"])))
    tls: Any = run.server.transport
    tls.write(b"HTTP/1.1 200 OK\r\n")
    run.pump.flush()
    run.server_io.write(b"\x17\x03\x03\x00\x20" + bytes(32))  # a record that does not decrypt
    run.pump.flush()
    assert run.reason.startswith("TLS error: decryption failed or bad record mac")
    run.assert_closed()


def test_the_http_check_of_a_tls_pool_runs_over_tls(tmp_path: Path, ca: TestCA) -> None:
    check = pool_check(tmp_path, "http GET /healthz", TRUST + "tls = on\n")
    assert isinstance(check, TlsCheck) and check.http is not None
    run = Run(check).serve(server_tls(ca.issue(["127.0.0.1"])), Server(OK))
    assert run.passed
    assert run.server.received.startswith(b"GET /healthz HTTP/1.1\r\n")


def test_the_tls_context_is_built_once_per_pool_setting(
    tmp_path: Path, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    real = health_tls.ClientTls

    def counting(*args: Any) -> Any:
        built.append(args)
        return real(*args)

    monkeypatch.setattr(health_tls, "ClientTls", counting)
    check = pool_check(tmp_path, keys=TRUST + "tls_server_name = once.test\n")
    for _ in range(3):
        Run(check).serve(server_tls(ca.issue(["once.test"])))
    assert len(built) == 1
