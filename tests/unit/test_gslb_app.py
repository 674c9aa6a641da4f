"""A [gslb] in the service tree (proxyd.app): bound on UDP and TCP, its answers following
the pools' health, a reload applying a changed section on the same sockets, its queries by
rcode in the status document and /metrics."""

from __future__ import annotations

from typing import Any

import dns.message
import dns.rcode
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from proxyd.admin.metrics import metrics_registry
from proxyd.admin.status import status_document
from proxyd.app import ProxydService
from proxyd.config.load import loads
from proxyd.config.reload import reload_config


class Port:
    def __init__(self, protocol: DatagramProtocol) -> None:
        self.protocol = protocol
        self.sent: list[tuple[bytes, Any]] = []
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def write(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def stopListening(self) -> None:
        self.protocol.doStop()


class Reactor(MemoryReactorClock):
    """The memory reactor has no listenUDP: a port that records what is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[Port] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 0
    ) -> Port:
        self.udp.append(Port(protocol))
        return self.udp[-1]


CONFIG = """\
[pool web]
servers = 127.0.0.1:9101 127.0.0.2:9102
[gslb demo]
listen = udp:5353:interface=127.0.0.1
zone = demo.test
records = www -> pool web
"""


def ask(port: Port, name: str) -> dns.message.Message:
    port.protocol.datagramReceived(dns.message.make_query(name, "A").to_wire(), ("127.0.0.9", 4000))
    return dns.message.from_wire(port.sent[-1][0])


def test_the_listener_binds_udp_and_tcp_on_one_address_and_follows_health() -> None:
    reactor = Reactor()
    proxy = ProxydService(reactor, loads(CONFIG, "proxyd.ini"))
    proxy.bind()
    proxy.startService()
    assert [listener.name for listener in proxy.listeners] == ["gslb demo", "gslb demo/tcp"]
    (port,) = reactor.udp
    (tcp,) = reactor.tcpServers
    assert (tcp[0], tcp[3]) == (5353, "127.0.0.1")
    assert len(ask(port, "www.demo.test").answer[0]) == 2
    web = proxy.pools["web"]
    proxy.set_health("web", "127.0.0.1:9101", False, "refused")
    assert [r.address for r in ask(port, "www.demo.test").answer[0]] == ["127.0.0.2"]
    assert web.servers[0].healthy is False


def test_a_reload_applies_a_changed_section_on_the_same_sockets() -> None:
    reactor = Reactor()
    proxy = ProxydService(reactor, loads(CONFIG, "proxyd.ini"))
    proxy.bind()
    proxy.startService()
    (port,) = reactor.udp
    assert ask(port, "www.demo.test").rcode() == dns.rcode.NOERROR
    changed = CONFIG.replace("records = www -> pool web", "records = api -> pool web")
    outcome = proxy.apply(reload_config(proxy.config, changed))
    assert outcome.reloaded
    assert len(reactor.udp) == 1 and len(reactor.tcpServers) == 1  # the same sockets
    assert ask(port, "www.demo.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, "api.demo.test").rcode() == dns.rcode.NOERROR
    proxy.set_health("web", "127.0.0.1:9101", False, "refused")
    assert [r.address for r in ask(port, "api.demo.test").answer[0]] == ["127.0.0.2"]
    counters = proxy.counters()
    assert counters["listeners"]["gslb demo"]["gslb_NOERROR"] == 3
    assert counters["listeners"]["gslb demo"]["gslb_NXDOMAIN"] == 1


def test_queries_by_rcode_are_in_the_status_document_and_metrics() -> None:
    reactor = Reactor()
    proxy = ProxydService(reactor, loads(CONFIG, "proxyd.ini"))
    proxy.bind()
    proxy.startService()
    (port,) = reactor.udp
    ask(port, "www.demo.test")
    ask(port, "nope.demo.test")
    ask(port, "www.example.test")
    document = status_document(proxy, proxy.counters(), reactor.seconds())
    (listener,) = [entry for entry in document["listeners"] if entry["kind"] == "gslb"]
    assert listener["name"] == "demo" and listener["listen"] == "udp:5353:interface=127.0.0.1"
    assert listener["counters"]["gslb_REFUSED"] == 1
    assert listener["counters"]["active"] == 0
    text = generate_latest(metrics_registry(document)).decode()
    samples = {
        (sample.name, sample.labels.get("rcode")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("kind") == "gslb"
    }
    assert samples[("proxyd_gslb_queries_total", "NOERROR")] == 1
    assert samples[("proxyd_gslb_queries_total", "NXDOMAIN")] == 1
    assert samples[("proxyd_gslb_queries_total", "REFUSED")] == 1
    assert samples[("proxyd_gslb_queries_total", "SERVFAIL")] == 0
