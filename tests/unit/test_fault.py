"""Blame only the guilty (proxyd.pool.fault): a connect that proxyd gave up because its client
left, or one that failed for want of proxyd's own file descriptors or ports, never counts
against a server, in any relay or in the health checks."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet import defer, error
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from proxyd.config.model import TcpCheck
from proxyd.pool.fault import Fault, fault_of
from proxyd.relay.http.upstream import ConnectionPool, UpstreamConnection

from .test_health_service import Harness as HealthHarness
from .test_health_service import pool_config
from .test_http_relay import GET, OK, Relay
from .test_tcp_relay import Harness as TcpHarness

EMFILE = error.ConnectBindError(errno.EMFILE, "Too many open files")


@pytest.mark.parametrize(
    ("failure", "fault"),
    [
        (error.ConnectionRefusedError(), Fault.SERVER),
        (error.TimeoutError(), Fault.SERVER),  # a UserError subclass: the SYN went unanswered
        (error.TCPTimedOutError(), Fault.SERVER),
        (error.NoRouteError(), Fault.SERVER),
        (error.ConnectionLost(), Fault.SERVER),
        (error.ConnectError(errno.EHOSTDOWN, "Host is down"), Fault.SERVER),
        (TimeoutError("TLS handshake timed out"), Fault.SERVER),
        (error.UserError(), Fault.CANCELLED),  # connector.stopConnecting()
        (defer.CancelledError(), Fault.CANCELLED),
        (error.ConnectingCancelledError(None), Fault.CANCELLED),
        (EMFILE, Fault.LOCAL),
        (error.ConnectBindError(errno.EADDRINUSE, "bind"), Fault.LOCAL),
        (error.ConnectError(errno.EADDRNOTAVAIL, "no port"), Fault.LOCAL),
        (error.ConnectError(osError=OSError(errno.ENFILE, "table full")), Fault.LOCAL),
        (OSError(errno.ENOBUFS, "no buffer space"), Fault.LOCAL),
        (error.CannotListenError("", 0, OSError(errno.EMFILE, "Too many")), Fault.LOCAL),
    ],
)
def test_whose_fault_a_failed_connect_is(failure: Exception, fault: Fault) -> None:
    assert fault_of(Failure(failure)) is fault
    assert fault_of(failure) is fault


class _StoppingConnector:
    """Like Twisted's tcp.Connector: stopConnecting() reports UserError at once."""

    def __init__(self, factory: object) -> None:
        self.factory = factory

    def stopConnecting(self) -> None:
        self.factory.clientConnectionFailed(self, Failure(error.UserError()))  # type: ignore[attr-defined]


def test_a_cancelled_upstream_connect_fails_with_cancelled_error_not_user_error() -> None:
    relay = Relay()
    pool = ConnectionPool(relay.reactor, relay.pool_config)
    results: list[Failure] = []
    d = pool.connect(relay.pool.servers[0], 5.0)
    factory = relay.reactor.tcpClients[-1][2]
    factory.connector = _StoppingConnector(factory)
    d.addErrback(results.append)
    d.cancel()
    [failure] = results
    assert failure.check(defer.CancelledError)


def _abort_while_connecting(relay: Relay) -> None:
    """The client leaves while proxyd connects for it; Twisted then reports UserError."""
    factory = relay.reactor.tcpClients[-1][2]
    factory.connector = _StoppingConnector(factory)
    relay.client.connectionLost(Failure(error.ConnectionLost()))


def test_clients_leaving_while_proxyd_connects_never_eject_the_server() -> None:
    relay = Relay()
    server = relay.pool.servers[0]
    for n in range(30):
        client, _ = relay.connect_client(f"10.0.1.{n}")
        relay.client = client
        relay.send(GET, client)
        _abort_while_connecting(relay)
    assert server.consecutive_failures == 0
    assert server.is_available(relay.reactor.seconds())
    assert server.active == 0
    statuses = [r["status"] for r in relay.log.records]
    assert statuses == [499] * 30
    errors = relay.factory.stats.snapshot()["http"]["front"]["*/"]["web"]
    assert "connect_failed" not in str(errors)
    # The next client is served by the same server.
    client, ct = relay.connect_client("10.0.2.1")
    relay.send(GET, client)
    upstream, _ = _last_upstream(relay)
    upstream.dataReceived(OK)
    assert ct.value().startswith(b"HTTP/1.1 200 ")


def _last_upstream(relay: Relay) -> tuple[UpstreamConnection, object]:
    relay.used = len(relay.reactor.tcpClients) - 1
    return relay.accept_upstream()


def test_proxyds_own_emfile_is_a_503_and_not_the_servers_failure() -> None:
    relay = Relay(retries=2, servers=2)
    relay.send(GET)
    relay.refuse_upstream(EMFILE)
    answer = relay.received()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert relay.pending_connects() == []  # no other server would fare better
    assert [s.consecutive_failures for s in relay.pool.servers] == [0, 0]
    [record] = relay.log.records
    assert "Too many open files" in record["error"]
    cell = relay.factory.stats.snapshot()["http"]["front"]["*/"]["web"][""]
    assert cell["errors"] == {"local_resource": 1}


def test_a_refused_connect_still_counts_against_the_server() -> None:
    relay = Relay(retries=0)
    relay.send(GET)
    relay.refuse_upstream()
    assert relay.received().startswith(b"HTTP/1.1 502 ")
    assert relay.pool.servers[0].consecutive_failures == 1


def test_tcp_relay_does_not_blame_a_server_for_proxyds_emfile() -> None:
    h = TcpHarness()
    h.accept()
    h.fail_connect(exc=EMFILE)
    assert h.pool.failures == []
    h.fail_connect(exc=error.ConnectionRefusedError())
    assert [server.name for server, _ in h.pool.failures] == ["10.0.0.2:3306"]


def test_tcp_relay_ignores_a_stopped_connect() -> None:
    h = TcpHarness()
    h.accept()
    h.fail_connect(exc=error.UserError())
    assert h.pool.failures == []
    assert len(h.attempts) == 1  # and did not move on to another server


def test_a_health_check_proxyd_could_not_open_is_skipped_not_failed() -> None:
    h = HealthHarness(pool_config(check=TcpCheck(), fall=1))
    h.service.startService()
    with capturedLogs() as events:
        for _ in range(5):  # the first check would mark it down at once, were it counted
            factory = h.next_check()
            connector = h.reactor.connectors[h.connects - 1]
            factory.clientConnectionFailed(connector, Failure(EMFILE))
    assert h.pool.health == []
    assert h.service.history(h.server) == []
    skipped = [formatEvent(e) for e in events if "skipped" in formatEvent(e)]
    assert len(skipped) == 5
    assert "Too many open files" in skipped[0]
    h.refuse()  # a real refusal still counts
    assert h.pool.health == [("192.0.2.1:3306", False, "connection refused")]
    h.service.stopService()


def test_socket_errnos_that_describe_the_host_are_local() -> None:
    for number in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL):
        assert fault_of(OSError(number, socket.errno.errorcode[number])) is Fault.LOCAL
