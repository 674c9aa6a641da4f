"""protocol = dns on the fake datagram ports of test_udp_relay: IDs rewritten per upstream
socket and restored, many concurrent clients, malformed datagrams, timeouts and refusals."""

from __future__ import annotations

import io
import json
import random
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.accesslog import AccessLog
from proxyd.config.load import loads
from proxyd.pool import Pool
from proxyd.relay.dns import DnsListener, parse_query
from tests.unit.test_udp_relay import FakePort, UdpReactor

CONFIG = """
[pool dns]
servers = 10.0.0.1:53 10.0.0.2:53
balance = {balance}
[udp dns]
listen = udp:5300
pool = dns
protocol = dns
query_timeout = 2s
"""


class Harness:
    def __init__(self, balance: str = "first") -> None:
        config = loads(CONFIG.format(balance=balance))
        self.reactor = UdpReactor()
        self.pool = Pool(config.pools["dns"], self.reactor)
        self.stream = io.StringIO()
        self.relay = DnsListener(
            self.reactor,
            config.udp[0],
            self.pool,
            AccessLog(self.stream, "memory"),
            rng=random.Random(7),
        )
        self.listener = self.relay.listen()

    def ask(self, name: str, client: tuple[str, int] = ("192.0.2.7", 5000)) -> dns.message.Message:
        query = dns.message.make_query(name, "A")
        self.relay.datagramReceived(query.to_wire(), client)
        return query

    def upstream(self, host: str = "10.0.0.1") -> FakePort:
        [port] = [p for p in self.reactor.ports[1:] if p.connected_to == (host, 53)]
        return port

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def answer_to(sent: bytes, address: str = "192.0.2.1") -> bytes:
    query = dns.message.from_wire(sent)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", address))
    return response.to_wire()


def test_a_query_goes_out_with_a_new_id_and_the_answer_comes_back_with_the_clients() -> None:
    h = Harness()
    query = h.ask("a.example.test")
    up = h.upstream()
    [(sent, _)] = up.sent
    assert sent[2:] == query.to_wire()[2:]
    up.protocol.datagramReceived(answer_to(sent), up.connected_to)
    [(back, client)] = h.listener.sent
    assert client == ("192.0.2.7", 5000)
    answer = dns.message.from_wire(back)
    assert answer.id == query.id
    assert str(answer.answer[0][0]) == "192.0.2.1"
    [record] = h.records()
    assert (record["query"], record["type"], record["rcode"]) == ("a.example.test.", "A", "NOERROR")


def test_many_clients_with_the_same_id_share_one_socket_without_collisions() -> None:
    h = Harness()
    queries = []
    for port in range(200):
        query = dns.message.make_query(f"n{port}.test", "A")
        query.id = 4242  # every client picked the same ID
        h.relay.datagramReceived(query.to_wire(), ("192.0.2.7", 10000 + port))
        queries.append(query)
    up = h.upstream()
    assert len(h.reactor.ports) == 2  # one shared upstream socket
    ids = [struct.unpack("!H", sent[:2])[0] for sent, _ in up.sent]
    assert len(set(ids)) == 200
    for sent, _ in reversed(up.sent):
        up.protocol.datagramReceived(answer_to(sent), up.connected_to)
    assert len(h.listener.sent) == 200
    for back, (_, port) in h.listener.sent:
        answer = dns.message.from_wire(back)
        assert answer.id == 4242
        assert answer.question[0].name.to_text() == f"n{port - 10000}.test."


def test_an_answer_whose_question_does_not_match_is_dropped() -> None:
    h = Harness()
    h.ask("a.example.test")
    up = h.upstream()
    [(sent, _)] = up.sent
    forged = dns.message.make_query("evil.test", "A")
    forged.id = struct.unpack("!H", sent[:2])[0]
    forged.flags |= dns.flags.QR
    up.protocol.datagramReceived(forged.to_wire(), up.connected_to)
    assert h.listener.sent == [] and h.relay.unmatched == 1
    up.protocol.datagramReceived(answer_to(sent), up.connected_to)
    assert len(h.listener.sent) == 1


def test_malformed_datagrams_and_responses_are_dropped_and_counted() -> None:
    h = Harness()
    h.relay.datagramReceived(b"garbage", ("192.0.2.7", 1))
    response = dns.message.make_response(dns.message.make_query("a.test", "A"))
    h.relay.datagramReceived(response.to_wire(), ("192.0.2.7", 1))
    assert h.relay.malformed == 2 and len(h.reactor.ports) == 1


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_is_never_relayed_and_never_raises(data: bytes) -> None:
    h = Harness()
    h.relay.datagramReceived(data, ("192.0.2.7", 1))
    if parse_query(data) is None:
        assert len(h.reactor.ports) == 1


def test_a_query_without_answer_is_retried_on_another_server_and_counts_a_failure() -> None:
    h = Harness()
    h.ask("a.example.test")
    h.reactor.advance(2.0)
    assert h.pool.servers[0].consecutive_failures == 1
    second = h.upstream("10.0.0.2")
    [(sent, _)] = second.sent
    second.protocol.datagramReceived(answer_to(sent), second.connected_to)
    assert len(h.listener.sent) == 1
    assert h.records()[0]["attempts"] == 2


def test_a_late_answer_from_the_first_server_is_dropped() -> None:
    h = Harness()
    h.ask("a.example.test")
    first = h.upstream()
    [(sent, _)] = first.sent
    h.reactor.advance(2.0)
    first.protocol.datagramReceived(answer_to(sent), first.connected_to)
    assert h.listener.sent == [] and h.relay.unmatched == 1


def test_a_query_no_server_answers_is_logged_as_failed() -> None:
    h = Harness()
    h.ask("a.example.test")
    h.reactor.advance(2.0)
    h.reactor.advance(2.0)
    assert h.relay.failed == 1
    [record] = h.records()
    assert record["error"] == "no answer" and record["attempts"] == 2


def test_a_refusing_server_sends_its_waiting_queries_elsewhere() -> None:
    h = Harness()
    h.ask("a.test", ("192.0.2.7", 1))
    h.ask("b.test", ("192.0.2.8", 1))
    first = h.upstream()
    first.protocol.connectionRefused()
    assert first.stopped
    second = h.upstream("10.0.0.2")
    assert len(second.sent) == 2
    assert h.reactor.getDelayedCalls()  # their timers run on the new server
    assert h.pool.servers[0].consecutive_failures == 1


def test_truncated_answers_pass_as_they_are() -> None:
    h = Harness()
    h.ask("big.test")
    up = h.upstream()
    [(sent, _)] = up.sent
    response = dns.message.make_response(dns.message.from_wire(sent))
    response.flags |= dns.flags.TC
    up.protocol.datagramReceived(response.to_wire(), up.connected_to)
    [(back, _)] = h.listener.sent
    assert dns.message.from_wire(back).flags & dns.flags.TC


def test_an_error_rcode_is_relayed_and_logged() -> None:
    h = Harness()
    h.ask("nope.test")
    up = h.upstream()
    [(sent, _)] = up.sent
    response = dns.message.make_response(dns.message.from_wire(sent))
    response.set_rcode(dns.rcode.NXDOMAIN)
    up.protocol.datagramReceived(response.to_wire(), up.connected_to)
    assert dns.message.from_wire(h.listener.sent[0][0]).rcode() == dns.rcode.NXDOMAIN
    assert h.records()[0]["rcode"] == "NXDOMAIN"


# Metrics (proxyd.metrics): queries, answers, query time, timeouts and retries by server.


def dns_metrics(h: Harness, server: str) -> Any:
    return h.relay.stats.snapshot()["udp"]["dns"][""]["dns"][server]


def test_an_answered_query_counts_its_datagrams_bytes_and_time() -> None:
    h = Harness()
    query = h.ask("a.example.test")
    up = h.upstream()
    [(sent, _)] = up.sent
    h.reactor.advance(0.004)
    answer = answer_to(sent)
    up.protocol.datagramReceived(answer, up.connected_to)
    found = dns_metrics(h, "10.0.0.1:53")
    assert (found["datagrams_in"], found["datagrams_out"]) == (1, 1)
    assert (found["bytes_in"], found["bytes_out"]) == (len(query.to_wire()), len(answer))
    assert found["query_duration"]["sum"] == pytest.approx(0.004)
    assert found["query_duration"]["buckets"]["0.005"] == 1


def test_a_timed_out_query_counts_an_error_and_a_retry_on_the_first_server() -> None:
    h = Harness()
    h.ask("a.example.test")
    h.reactor.advance(2.0)
    first = dns_metrics(h, "10.0.0.1:53")
    assert first["errors"] == {"query_timeout": 1}
    assert first["retries"] == 1
    assert dns_metrics(h, "10.0.0.2:53")["datagrams_in"] == 1


def test_an_unmatched_answer_counts_on_the_server_that_sent_it() -> None:
    h = Harness()
    h.ask("a.example.test")
    up = h.upstream()
    up.protocol.datagramReceived(b"\x00" * 11, up.connected_to)
    assert dns_metrics(h, "10.0.0.1:53")["errors"] == {"unmatched": 1}
