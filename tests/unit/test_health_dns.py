"""The dns check kind on the fake datagram ports of test_udp_relay."""

from __future__ import annotations

import dns.message
import dns.rcode

from proxyd.config.model import Address, DnsCheck
from proxyd.health.checks import run_check
from tests.unit.test_health_helpers import Outcome
from tests.unit.test_udp_relay import UdpReactor

SERVER = Address("192.0.2.53", 53)


def start(check: DnsCheck, timeout: float = 2.0) -> tuple[UdpReactor, Outcome]:
    reactor = UdpReactor()
    return reactor, Outcome(run_check(reactor, SERVER, check, timeout))


def reply(reactor: UdpReactor, rcode: int = dns.rcode.NOERROR, id_delta: int = 0) -> None:
    [port] = reactor.ports
    [(sent, _)] = port.sent
    query = dns.message.from_wire(sent)
    answer = dns.message.make_response(query)
    answer.set_rcode(rcode)
    answer.id = (answer.id + id_delta) % 65536
    port.protocol.datagramReceived(answer.to_wire(), port.connected_to)


def test_the_query_asks_for_the_name_and_type() -> None:
    reactor, _ = start(DnsCheck("example.test", "MX"))
    [port] = reactor.ports
    assert port.connected_to == ("192.0.2.53", 53)
    query = dns.message.from_wire(port.sent[0][0])
    assert str(query.question[0]) == "example.test. IN MX"


def test_noerror_passes_and_closes() -> None:
    reactor, outcome = start(DnsCheck("example.test"))
    reply(reactor)
    assert outcome.passed
    assert reactor.ports[0].stopped and reactor.getDelayedCalls() == []


def test_an_unexpected_rcode_fails_saying_which() -> None:
    reactor, outcome = start(DnsCheck("example.test"))
    reply(reactor, dns.rcode.SERVFAIL)
    assert outcome.reason == "DNS SERVFAIL (expected NOERROR)"


def test_expected_rcodes_can_be_configured() -> None:
    reactor, outcome = start(DnsCheck("nope.test", expect=("NOERROR", "NXDOMAIN")))
    reply(reactor, dns.rcode.NXDOMAIN)
    assert outcome.passed


def test_an_answer_with_another_id_is_ignored_then_the_timeout_strikes() -> None:
    reactor, outcome = start(DnsCheck("example.test"), timeout=2.0)
    reply(reactor, id_delta=1)
    assert not outcome.fired
    reactor.advance(2.0)
    assert outcome.reason == "timeout after 2s waiting for an answer"
    assert reactor.ports[0].stopped


def test_port_unreachable_fails_at_once() -> None:
    reactor, outcome = start(DnsCheck("example.test"))
    reactor.ports[0].protocol.connectionRefused()
    assert outcome.reason == "port unreachable (ICMP)"
