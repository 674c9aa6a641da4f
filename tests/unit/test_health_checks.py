"""The machinery every check kind shares: registry, connect, timeout, close, cancel."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.config.model import Address, HttpCheck, MysqlCheck, SmtpCheck, TcpCheck
from proxyd.health import checks
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    checker_for,
    connect_and_check,
    format_duration,
    register,
    run_check,
    show_bytes,
)
from proxyd.health.http import check_http
from proxyd.health.mysql import check_mysql
from proxyd.health.smtp import check_smtp
from proxyd.health.tcp import check_tcp
from tests.unit.test_health_helpers import ADDRESS, Conversation, Outcome

EXPECT = TcpCheck(expect=b"+PONG")


def test_every_builtin_kind_is_registered() -> None:
    assert checker_for(TcpCheck) is check_tcp
    assert checker_for(SmtpCheck) is check_smtp
    assert checker_for(MysqlCheck) is check_mysql
    assert checker_for(HttpCheck) is check_http
    assert {TcpCheck, SmtpCheck, MysqlCheck, HttpCheck} <= set(checks.registered())


def test_an_unregistered_kind_is_a_lookup_error_naming_it() -> None:
    class GopherCheck:
        pass

    with pytest.raises(LookupError, match="GopherCheck"):
        checker_for(GopherCheck)


def test_a_new_kind_registers_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_checkers", dict(checks._checkers))

    class PingCheck:
        pass

    class PingProtocol(CheckProtocol):
        def connectionMade(self) -> None:
            self.connection.write(b"PING\r\n")
            self.succeed()

    @register(PingCheck)
    def check_ping(
        reactor: CheckReactor, address: Address, check: PingCheck, timeout: float
    ) -> Deferred[None]:
        return connect_and_check(reactor, address, timeout, PingProtocol)

    conversation = Conversation(PingCheck()).connect()
    assert conversation.passed
    assert conversation.sent() == b"PING\r\n"


def test_connects_to_the_address_with_the_timeout() -> None:
    conversation = Conversation(MysqlCheck(), timeout=1.5, address=Address("10.1.2.3", 3307))
    host, port, _, timeout, _ = conversation.reactor.tcpClients[0]
    assert (host, port, timeout) == ("10.1.2.3", 3307, 1.5)


def test_ipv6_hosts_are_connected_to_without_brackets() -> None:
    address = Address("2001:db8::5", 25)
    assert str(address) == "[2001:db8::5]:25"
    conversation = Conversation(MysqlCheck(), address=address)
    assert conversation.reactor.tcpClients[0][:2] == ("2001:db8::5", 25)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (error.ConnectionRefusedError(), "connection refused"),
        (error.TimeoutError(), "timeout after 2s connecting"),
        (error.NoRouteError(), "no route to host"),
        (error.DNSLookupError("db.invalid"), "DNS lookup failed"),
        (
            error.ConnectError(osError=OSError(errno.ENETUNREACH, "Network is unreachable")),
            "connect failed: network is unreachable",
        ),
        (
            error.ConnectError(errno.EHOSTDOWN, "Host is down"),
            "connect failed: host is down",
        ),
        (error.ConnectError(), "connect failed: an error occurred while connecting."),
    ],
)
def test_connect_failures_have_short_reasons(failure: Exception, reason: str) -> None:
    conversation = Conversation(MysqlCheck())
    conversation.factory.clientConnectionFailed(
        conversation.reactor.connectors[0], Failure(failure)
    )
    assert conversation.reason == reason
    assert conversation.reactor.getDelayedCalls() == []
    assert not conversation.reactor.connectors[0].stoppedConnecting


def test_a_connect_that_hangs_times_out_and_is_stopped() -> None:
    conversation = Conversation(MysqlCheck(), timeout=2.0)
    conversation.reactor.advance(1.999)
    assert not conversation.outcome.fired
    conversation.reactor.advance(0.001)
    assert conversation.reason == "timeout after 2s connecting"
    assert conversation.reactor.connectors[0].stoppedConnecting
    # The reactor then reports the stopped connect; the check has already decided.
    conversation.factory.clientConnectionFailed(
        conversation.reactor.connectors[0], Failure(error.UserError())
    )
    assert conversation.reason == "timeout after 2s connecting"
    conversation.assert_clean()


def test_sub_second_timeouts_are_written_in_milliseconds() -> None:
    conversation = Conversation(MysqlCheck(), timeout=0.5)
    conversation.reactor.advance(0.5)
    assert conversation.reason == "timeout after 500ms connecting"


def test_a_server_that_says_nothing_times_out_and_the_connection_is_aborted() -> None:
    conversation = Conversation(MysqlCheck(), timeout=3.0).connect()
    conversation.reactor.advance(3.0)
    assert conversation.reason == "timeout after 3s waiting for handshake"
    assert conversation.transport.disconnected  # aborted, not a graceful close
    conversation.assert_clean()


def test_a_server_that_closes_early_fails_the_check() -> None:
    conversation = Conversation(MysqlCheck()).connect().server_closes()
    assert conversation.reason == "connection closed by server while waiting for handshake"
    conversation.assert_clean()


def test_a_reset_connection_fails_the_check() -> None:
    conversation = Conversation(MysqlCheck()).connect().server_closes(clean=False)
    assert conversation.reason == "connection reset while waiting for handshake"


def test_a_passed_check_closes_gracefully_and_cancels_its_timer() -> None:
    conversation = Conversation(TcpCheck()).connect()
    assert conversation.passed
    assert conversation.transport.disconnecting
    assert not conversation.transport.disconnected
    conversation.assert_clean()
    # The close arrives later; it changes nothing.
    conversation.server_closes()
    assert conversation.passed


def test_cancelling_a_connecting_check_stops_the_connect() -> None:
    reactor = MemoryReactorClock()
    d = run_check(reactor, ADDRESS, MysqlCheck(), 2.0)
    outcome = Outcome(d)
    d.cancel()
    assert outcome.failure is not None and outcome.failure.check(CancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_cancelling_a_connected_check_aborts_the_connection() -> None:
    reactor = MemoryReactorClock()
    d = run_check(reactor, ADDRESS, MysqlCheck(), 2.0)
    outcome = Outcome(d)
    factory: Any = reactor.tcpClients[0][2]
    transport = StringTransport()
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 3306))
    protocol.makeConnection(transport)
    d.cancel()
    assert outcome.failure is not None and outcome.failure.check(CancelledError)
    assert transport.disconnected
    assert reactor.getDelayedCalls() == []
    protocol.connectionLost(Failure(error.ConnectionAborted()))
    assert outcome.failure.check(CancelledError)


def test_no_protocol_is_built_once_the_check_has_decided() -> None:
    conversation = Conversation(MysqlCheck())
    conversation.reactor.advance(2.0)
    assert conversation.factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 3306)) is None


def test_a_connect_call_that_raises_fails_the_check_without_leaving_a_timer() -> None:
    class BrokenReactor(MemoryReactorClock):
        def connectTCP(self, *args: Any, **kw: Any) -> Any:
            raise OSError("too many open files")

    reactor = BrokenReactor()
    outcome = Outcome(run_check(reactor, ADDRESS, MysqlCheck(), 2.0))
    assert outcome.reason == "connect failed: too many open files"
    assert reactor.getDelayedCalls() == []


def test_check_failed_is_its_reason() -> None:
    assert str(CheckFailed("connection refused")) == "connection refused"
    assert CheckFailed("x").reason == "x"


@pytest.mark.parametrize(
    ("seconds", "text"), [(2.0, "2s"), (1.5, "1.5s"), (0.5, "500ms"), (0.25, "250ms"), (60, "60s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_show_bytes_shows_the_first_line_cut_short() -> None:
    assert show_bytes(b"-ERR unknown command 'PING'\r\nmore") == "b\"-ERR unknown command 'PING'\""
    assert show_bytes(b"x" * 100, limit=5) == "b'xxxxx...'"
    assert show_bytes(b"") == "b''"


def test_check_factories_do_not_log_starting_and_stopping() -> None:
    conversation = Conversation(MysqlCheck())
    assert conversation.factory.noisy is False
