"""`access` and the per-client limits on the L4 listeners: `[tcp]` (on the fakes and iosim of
test_tcp_relay and test_tcp_tls), `[websocket]` in message mode (test_websocket_relay's Net),
`[udp]` (test_udp_relay's fake ports). What is judged, when, what the client sees, the access
log, the metrics, and that every admitted connection is released once."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from prometheus_client.exposition import generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs
from twisted.test import iosim

from proxyd.access.gate import Gate
from proxyd.access.networks import AccessList, parse_rules
from proxyd.accesslog import AccessLog
from proxyd.admin.metrics import metrics_registry
from proxyd.config.load import loads
from proxyd.config.model import Address, TlsClientConfig
from proxyd.config.security_model import Rate
from proxyd.relay.dns import DnsListener
from proxyd.relay.factory import dns_counts, udp_counts
from proxyd.relay.proxy_protocol import encode_v1
from proxyd.relay.tcp import TcpRelayFactory
from proxyd.relay.udp import UdpListener
from proxyd.tls import ClientTls
from tests.certs import TestCA
from tests.unit.test_admin import samples
from tests.unit.test_client_hello import client_hello
from tests.unit.test_dns_relay import Harness as DnsHarness
from tests.unit.test_tcp_relay import CLIENT, LISTENER, Harness, tcp_metrics
from tests.unit.test_tcp_tls import NAME, Certs, Peer, certs, sni_harness
from tests.unit.test_udp_relay import Harness as UdpHarness
from tests.unit.test_websocket_relay import Net, Raw, opened, wire, ws_metrics

__all__ = ["certs"]  # the TLS certificates fixture, used here too

OTHER = ("192.0.2.8", 52000)


def rules(*lines: str) -> AccessList:
    return parse_rules(enumerate(lines, 1), "/")


class SpyGate(Gate):
    """A Gate that records its releases, to see each admitted connection released once."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(
            gate._clock, gate.kind, gate.listener, access=gate.access, limits=gate.limits
        )
        self.released: list[str] = []

    def release(self, ip: str) -> None:
        self.released.append(ip)
        super().release(ip)


def spy(factory: Any) -> SpyGate:
    assert factory.gate is not None
    factory.gate = SpyGate(factory.gate)
    return factory.gate  # type: ignore[no-any-return]


def open_count(factory: Any, ip: str) -> int:
    assert factory.gate is not None and factory.gate.limits is not None
    return int(factory.gate.limits.open_connections(ip))


def log_lines(events: Sequence[dict[str, Any]]) -> list[str]:
    return [
        e["log_format"].format(**e) for e in events if e.get("log_namespace") == "proxyd.access"
    ]


# [tcp]: which listeners pay for a gate.


def test_a_tcp_listener_without_the_keys_has_no_gate() -> None:
    assert Harness().factory.gate is None


# [tcp]: access.


def test_a_denied_tcp_client_is_closed_at_accept_without_a_server_logged_and_counted() -> None:
    h = Harness(access=rules("deny 203.0.113.7"))
    with capturedLogs() as events:
        client = h.accept()
    assert client.transport.disconnecting and not client.transport.aborted  # a FIN
    assert client.received() == b""
    assert h.attempts == [] and h.pool.picks == []
    h.settle()
    record = h.record()
    assert (record["close"], record["backend"], record["client"]) == (
        "access_denied",
        None,
        "203.0.113.7:51000",
    )
    assert tcp_metrics(h, "") == {"errors": {"access_denied": 1}}
    assert log_lines(events) == ["tcp db: 203.0.113.7 refused: access denied"]
    assert h.factory.active == 0


def test_an_allowed_tcp_client_is_relayed() -> None:
    h = Harness(access=rules("deny 192.0.2.0/24", "allow all"))
    client = h.accept()
    server = h.connect_server()
    client.send(b"hi")
    assert server.received() == b"hi"
    denied = h.accept(peer=OTHER)
    assert denied.transport.disconnecting and len(h.attempts) == 1


def test_a_denied_client_is_judged_before_max_connections_and_takes_no_slot() -> None:
    h = Harness(access=rules("deny 192.0.2.8"), max_connections=1, on_max_connections="close")
    h.accept(peer=OTHER)
    h.settle()
    assert h.record()["close"] == "access_denied"
    h.accept()
    assert len(h.attempts) == 1 and h.factory.active == 1


def test_the_proxy_headers_source_is_judged_not_the_peer() -> None:
    h = Harness(accept_proxy=True, access=rules("deny 192.0.2.10", "deny 203.0.113.0/24"))
    denied = h.accept()  # the peer, 203.0.113.7, is a front load balancer: not judged
    assert not denied.transport.disconnecting
    denied.send(b"PROXY TCP4 192.0.2.10 192.0.2.20 40000 3306\r\nhello")
    assert denied.transport.disconnecting and h.attempts == []
    allowed = h.accept()
    allowed.send(b"PROXY TCP4 192.0.2.11 192.0.2.20 40000 3306\r\nhello")
    assert not allowed.transport.disconnecting
    server = h.connect_server()
    assert server.received() == b"hello"
    h.settle()
    record = h.record()
    assert (record["close"], record["client"]) == ("access_denied", "192.0.2.10:40000")


def test_a_proxy_header_of_unknown_source_judges_the_peer() -> None:
    h = Harness(accept_proxy=True, access=rules("deny 203.0.113.7"))
    client = h.accept()
    client.send(b"PROXY UNKNOWN\r\n")
    assert client.transport.disconnecting and h.attempts == []


def test_with_sni_the_proxy_header_is_judged_before_the_client_hello() -> None:
    h, _api, _web = sni_harness(accept_proxy=True, access=rules("deny 192.0.2.9"))
    client = h.accept()
    client.send(encode_v1(*_addresses("192.0.2.9")))
    assert client.transport.disconnecting
    client.send(client_hello(b"api.example.com"))  # a read already under way
    h.settle()
    assert h.attempts == [] and client.received() == b""  # no alert either
    record = h.record()
    assert (record["close"], record.get("sni")) == ("access_denied", None)


def _addresses(source: str) -> tuple[Address, Address]:
    return Address(source, 51000), Address("10.0.0.10", 443)


class RecordingTransport(iosim.FakeTransport):
    """iosim's transport, recording whether it was closed with a FIN or aborted (iosim
    itself treats both alike)."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def tls_to_listener(h: Harness, client: Any) -> tuple[iosim.IOPump, RecordingTransport]:
    """`client` connected in memory to the TLS listener, as app.py wraps it."""
    assert h.factory.tls is not None
    relay_side = h.factory.tls.wrap(h.factory, h.reactor).buildProtocol(None)
    below = RecordingTransport(
        relay_side, True, IPv4Address("TCP", *LISTENER), IPv4Address("TCP", *CLIENT)
    )
    pump = iosim.connect(relay_side, below, client, iosim.makeFakeClient(client), clock=h.reactor)
    return pump, below


def test_a_denied_tls_client_is_closed_with_a_fin_before_its_handshake(certs: Certs) -> None:
    h = Harness(tls=certs.server, access=rules("deny 203.0.113.7"))
    peer = Peer()
    trust = TlsClientConfig(enabled=True, ca=certs.ca, server_name=NAME)
    tls_client = ClientTls("test", trust).wrap(Factory.forProtocol(lambda: peer), NAME, h.reactor)
    pump, below = tls_to_listener(h, tls_client.buildProtocol(None))
    pump.flush()
    h.settle()
    assert below.disconnecting and not below.aborted
    assert not peer.handshaken
    # A FIN with no close_notify, which Twisted's TLS calls ConnectionLost; an alert from
    # proxyd would have been an SSL.Error.
    assert peer.reason is not None and type(peer.reason.value) is ConnectionLost
    assert h.attempts == []
    record = h.record()
    assert (record["close"], "tls_version" in record) == ("access_denied", False)


def test_a_denied_tls_client_is_closed_before_it_sends_a_byte(certs: Certs) -> None:
    h = Harness(tls=certs.server, access=rules("deny all"))
    silent = Raw()
    pump, below = tls_to_listener(h, silent)
    pump.flush()
    h.settle()
    assert below.disconnecting and not below.aborted
    assert silent.received == b""
    assert h.record()["close"] == "access_denied"


# [tcp]: per-client limits.


def test_max_connections_per_client_admits_the_bound_then_one_more_after_a_release() -> None:
    h = Harness(max_connections_per_client=2)
    first = h.accept()
    h.accept()
    assert len(h.attempts) == 2
    with capturedLogs() as events:
        third = h.accept()
    assert third.transport.disconnecting and len(h.attempts) == 2
    other = h.accept(peer=OTHER)  # per address
    assert not other.transport.disconnecting and len(h.attempts) == 3
    h.settle()
    assert h.record()["close"] == "client_limit"
    assert tcp_metrics(h, "") == {"errors": {"client_limit": 1}}
    assert log_lines(events) == [
        "tcp db: 203.0.113.7 refused: max_connections_per_client 2 reached"
    ]
    first.transport.peer_lost(ConnectionDone())  # it ends before its server connected
    h.settle()
    fourth = h.accept()
    assert not fourth.transport.disconnecting and len(h.attempts) == 4
    assert open_count(h.factory, "203.0.113.7") == 2


def test_the_rate_bound_refuses_past_the_burst_and_admits_again_as_it_refills() -> None:
    h = Harness(max_connection_rate_per_client=Rate(2, 1.0))
    h.accept()
    h.accept()
    assert h.accept().transport.disconnecting
    h.reactor.advance(0.5)
    assert not h.accept().transport.disconnecting
    assert h.accept().transport.disconnecting
    assert len(h.attempts) == 3
    h.settle()
    assert tcp_metrics(h, "") == {"errors": {"client_limit": 2}}


def test_refusals_are_logged_at_most_once_a_second() -> None:
    h = Harness(max_connection_rate_per_client=Rate(1, 60.0))
    h.accept()
    with capturedLogs() as events:
        for _ in range(3):
            h.accept()
        h.reactor.advance(1.0)
        h.accept()
    assert log_lines(events) == [
        "tcp db: 203.0.113.7 refused: max_connection_rate_per_client 1/m reached",
        "tcp db: 203.0.113.7 refused: max_connection_rate_per_client 1/m reached"
        " (2 more refused since the last such line)",
    ]


def test_every_admitted_connection_is_released_once_however_it_ends() -> None:
    h = Harness(max_connections_per_client=10, max_connections=1)
    gate = spy(h.factory)
    relayed = h.accept()
    server = h.connect_server()
    queued = h.accept()  # waiting for a max_connections slot
    h.accept(peer=OTHER)  # queued too, behind it
    h.settle()
    assert gate.released == []
    queued.transport.peer_lost(ConnectionLost())
    h.settle()
    assert gate.released == ["203.0.113.7"]
    relayed.fin()
    server.fin()
    h.settle()
    assert gate.released == ["203.0.113.7", "203.0.113.7"]
    h.fail_connect()  # the queued client from OTHER got the slot; its servers all fail
    h.fail_connect()
    h.fail_connect()
    h.settle()
    assert gate.released == ["203.0.113.7", "203.0.113.7", "192.0.2.8"]
    assert [r["close"] for r in h.records()] == [
        "client_reset",
        "client_closed",
        "connect_failed",
    ]
    assert open_count(h.factory, "203.0.113.7") == open_count(h.factory, "192.0.2.8") == 0


def test_a_client_admitted_by_its_proxy_header_is_released_leaving_in_the_preamble() -> None:
    h, _api, _web = sni_harness(accept_proxy=True, max_connections_per_client=1)
    gate = spy(h.factory)
    client = h.accept()
    client.send(encode_v1(*_addresses("192.0.2.9")))
    assert open_count(h.factory, "192.0.2.9") == 1
    client.fin()  # before its ClientHello
    h.settle()
    assert gate.released == ["192.0.2.9"]
    assert h.record()["close"] == "client_closed"


def test_a_client_gone_before_its_proxy_header_was_never_admitted_nor_released() -> None:
    h = Harness(accept_proxy=True, max_connections_per_client=1)
    gate = spy(h.factory)
    client = h.accept()
    client.fin()
    h.settle()
    assert gate.released == []


def test_a_refused_client_is_not_released() -> None:
    h = Harness(max_connections_per_client=1)
    gate = spy(h.factory)
    h.accept()
    h.accept()
    h.settle()
    assert gate.released == []
    assert open_count(h.factory, "203.0.113.7") == 1


def test_a_reload_starts_counts_afresh_and_old_connections_release_into_the_old_gate() -> None:
    h = Harness(max_connections_per_client=1)
    old = h.factory
    client = h.accept()
    server = h.connect_server()
    new = TcpRelayFactory(h.reactor, h.config, {"db": h.pool}, AccessLog(io.StringIO(), "new"))  # type: ignore[dict-item]
    h.factory = new
    h.accept()
    assert len(h.attempts) == 2  # admitted by the new gate
    assert open_count(old, "203.0.113.7") == open_count(new, "203.0.113.7") == 1
    client.fin()
    server.fin()
    h.settle()
    assert open_count(old, "203.0.113.7") == 0 and open_count(new, "203.0.113.7") == 1


# [websocket], message mode.


def test_a_websocket_listener_without_the_keys_has_no_gate() -> None:
    assert Net().factory.gate is None


def test_a_denied_websocket_client_is_closed_before_its_handshake() -> None:
    net = Net(access=rules("deny 203.0.113.7"))
    raw = Raw()
    with capturedLogs() as events:
        net.connect_client(raw)
        wire(raw).write(b"GET /chat HTTP/1.1\r\nHost: chat.example\r\n\r\n")
        net.flush()
    assert raw.received == b""  # no HTTP answer: the connection is closed
    assert net.reactor.tcpClients == []
    net.assert_finished()
    (line,) = net.lines()
    assert (line["close"], line["backend"], line["client"]) == (
        "access_denied",
        None,
        "203.0.113.7:51000",
    )
    assert ws_metrics(net, "") == {"errors": {"access_denied": 1}}
    assert log_lines(events) == ["websocket chat: 203.0.113.7 refused: access denied"]
    assert net.factory.total == 0


def test_a_refused_websocket_client_leaves_nothing_open() -> None:
    net = Net(access=rules("deny all"))
    net.connect_client(Raw())
    net.flush()
    fired: list[object] = []
    net.factory.drain().addCallback(fired.append)
    assert fired == [None]  # no relay left open
    net.advance(60)  # no timer left to fire a second line
    assert len(net.lines()) == 1


def test_an_allowed_websocket_client_is_relayed() -> None:
    net = Net(access=rules("deny 192.0.2.0/24"))
    client = opened(net)
    client.sendMessage(b"hello")
    net.flush()
    assert client.messages == [(b"hello", False)]


def test_max_connections_per_client_on_websocket_then_a_release_lets_the_next_in() -> None:
    net = Net(max_connections_per_client=1)
    gate = spy(net.factory)
    first = opened(net)
    refused = net.client()
    assert not refused.opened
    assert [line["close"] for line in net.lines()] == ["client_limit"]
    assert ws_metrics(net, "") == {"errors": {"client_limit": 1}}
    first.sendClose(1000)
    net.flush()
    assert gate.released == ["203.0.113.7"]
    assert opened(net).opened


def test_a_websocket_client_leaving_before_its_handshake_is_released() -> None:
    net = Net(max_connections_per_client=1)
    gate = spy(net.factory)
    raw = Raw()
    net.connect_client(raw)
    assert open_count(net.factory, "203.0.113.7") == 1
    wire(raw).loseConnection()
    net.flush()
    net.assert_finished()
    assert gate.released == ["203.0.113.7"]
    assert net.lines()[0]["close"] == "client_closed"


def test_the_websocket_rate_bound() -> None:
    net = Net(max_connection_rate_per_client=Rate(1, 1.0))
    opened(net)
    assert not net.client().opened
    net.advance(1.0)
    assert opened(net).opened


def test_a_denied_wss_client_is_closed_with_a_fin_before_its_tls_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = TestCA()
    ca.issue(["chat.example.test"]).write(tmp_path / "chat.pem")
    config = loads(
        "[pool chat]\nservers = 10.0.0.1:9001\n"
        "[websocket chat]\nlisten = tcp:0\npool = chat\ncertificates = chat.pem\n",
        str(tmp_path / "proxyd.ini"),
    )
    net = Net(tls=config.websocket[0].tls, access=rules("deny all"))
    peer = Peer()
    trust = TlsClientConfig(
        enabled=True, ca=str(ca.write_ca(tmp_path / "ca.pem")), server_name="chat.example.test"
    )
    client = ClientTls("test", trust).wrap(
        Factory.forProtocol(lambda: peer), "chat.example.test", net.reactor
    )
    monkeypatch.setattr(iosim, "FakeTransport", RecordingTransport)
    net.connect_client(client.buildProtocol(None))
    net.flush()
    below = net.pumps[0].serverIO
    assert below.disconnecting and not below.aborted
    assert not peer.handshaken
    assert peer.reason is not None and type(peer.reason.value) is ConnectionLost
    net.assert_finished()
    assert net.lines()[0]["close"] == "access_denied"


# [udp].


def udp(access: AccessList) -> UdpHarness:
    h = UdpHarness()
    config = attrs.evolve(h.relay.config, access=access)
    h.reactor.ports.clear()
    h.relay = UdpListener(h.reactor, config, h.pool, AccessLog(h.stream, "memory"))
    h.listener = h.relay.listen()
    return h


def test_a_udp_listener_without_access_has_no_gate() -> None:
    assert UdpHarness().relay.gate is None


def test_datagrams_from_a_denied_source_are_dropped_before_a_session_counted_and_logged() -> None:
    h = udp(rules("deny 192.0.2.7"))
    with capturedLogs() as events:
        h.send(b"q")
        h.send(b"q")
    assert h.relay.sessions == {} and len(h.reactor.ports) == 1  # no socket to a server
    assert h.relay.dropped_denied == 2
    assert h.records() == []
    assert log_lines(events) == ["udp dns: 192.0.2.7 refused: access denied"]
    h.send(b"q", ("192.0.2.8", 5000))
    assert len(h.relay.sessions) == 1 and h.upstream().sent == [(b"q", None)]
    assert h.relay.dropped_denied == 2


def test_the_denied_count_is_in_the_admin_counters_and_prometheus() -> None:
    h = udp(rules("deny all"))
    h.send(b"q")
    counts = udp_counts(h.relay)
    assert counts.totals["dropped_denied"] == 1
    document = {
        "workers": 1,
        "listeners": [
            {"name": "dns", "kind": "udp", "counters": {**counts.gauges, **counts.totals}}
        ],
        "pools": [],
    }
    found = samples(generate_latest(metrics_registry(document)).decode())
    labels = (("kind", "udp"), ("listener", "dns"), ("reason", "access_denied"))
    assert found[("proxyd_udp_dropped_total", labels)] == 1


def test_a_reload_judges_the_open_sessions_datagrams_by_the_new_list() -> None:
    h = udp(rules("deny 198.51.100.0/24"))
    h.send(b"1")
    assert len(h.relay.sessions) == 1
    h.relay.reconfigure(
        attrs.evolve(h.relay.config, access=rules("deny 192.0.2.7")), h.pool, h.relay.access_log
    )
    h.send(b"2")
    assert h.upstream().sent == [(b"1", None)] and h.relay.dropped_denied == 1
    h.relay.reconfigure(attrs.evolve(h.relay.config, access=None), h.pool, h.relay.access_log)
    assert h.relay.gate is None


# [udp] protocol = dns.


def test_dns_queries_from_a_denied_source_are_dropped_counted_and_never_forwarded() -> None:
    h = DnsHarness()
    h.relay = DnsListener(
        h.reactor,
        attrs.evolve(h.relay.config, access=rules("deny 192.0.2.7")),
        h.pool,
        AccessLog(h.stream, "memory"),
    )
    h.ask("a.example.test")
    assert h.relay.dropped_denied == 1
    assert [p for p in h.reactor.ports[1:] if p.sent] == []  # nothing went to a server
    h.ask("a.example.test", ("192.0.2.8", 5000))
    assert h.relay.dropped_denied == 1
    assert dns_counts(h.relay).totals["dropped_denied"] == 1
    h.relay.reconfigure(attrs.evolve(h.relay.config, access=None), h.pool, h.relay.access_log)
    assert h.relay.gate is None
