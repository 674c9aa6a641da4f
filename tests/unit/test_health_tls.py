"""The tls check kind on MemoryReactorClock: the TLS layer's outcome (handshake done, or the
connection lost with OpenSSL's or the verifier's reason) is simulated below the protocol."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from proxyd.config.model import HttpCheck, TlsCheck, TlsClientConfig
from proxyd.health.checks import checker_for
from proxyd.tls import CertificateRefused
from tests.unit.test_health_helpers import Conversation

TLS = TlsClientConfig(enabled=True, verify=False)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class TlsConversation(Conversation):
    @property
    def factory(self) -> Any:
        wrapper = self.reactor.tcpClients[0][2]
        assert isinstance(wrapper, TLSMemoryBIOFactory)
        return wrapper.wrappedFactory

    def handshake(self) -> TlsConversation:
        assert self.protocol is not None
        self.protocol.handshakeCompleted()  # type: ignore[attr-defined]
        return self

    def lost(self, exc: Exception) -> TlsConversation:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(exc))
        return self


def test_the_tls_kind_is_registered() -> None:
    assert checker_for(TlsCheck) is not None


def test_a_completed_handshake_passes_and_closes() -> None:
    run = TlsConversation(TlsCheck(TLS)).connect().handshake()
    assert run.passed
    run.assert_clean()


def test_a_refused_certificate_fails_with_the_verifiers_reason() -> None:
    run = TlsConversation(TlsCheck(TLS)).connect()
    run.lost(CertificateRefused("certificate is not for 192.0.2.10 (DNS:other.test)"))
    assert run.reason == (
        "TLS handshake failed: certificate is not for 192.0.2.10 (DNS:other.test)"
    )
    run.assert_clean()


def test_an_openssl_error_fails_with_its_reason() -> None:
    run = TlsConversation(TlsCheck(TLS)).connect()
    run.lost(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
    assert run.reason == "TLS handshake failed: tlsv1 alert unknown ca"


def test_a_handshake_that_never_ends_times_out_saying_so() -> None:
    run = TlsConversation(TlsCheck(TLS), timeout=2.0).connect()
    run.reactor.advance(2.0)
    assert run.reason == "timeout after 2s waiting for the TLS handshake"
    run.assert_clean()


def test_an_http_check_over_tls_judges_the_response() -> None:
    check = TlsCheck(TLS, HttpCheck(path="/healthz", expect=((200, 200),)))
    run = TlsConversation(check).connect()
    assert run.sent().startswith(b"GET /healthz HTTP/1.1\r\n")  # held by TLS until handshaken
    run.handshake().receive(OK)
    assert run.passed
    failing = TlsConversation(check).connect().handshake()
    failing.receive(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    assert "500" in failing.reason


def test_an_http_check_over_tls_reports_a_handshake_failure_as_such() -> None:
    run = TlsConversation(TlsCheck(TLS, HttpCheck())).connect()
    run.lost(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    assert run.reason == "TLS handshake failed: certificate verify failed"
