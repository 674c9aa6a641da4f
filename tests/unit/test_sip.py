"""SIP over UDP: the Call-ID reader, dialogs kept on one server by the UDP relay whatever
address their messages come from, and the sip check."""

from __future__ import annotations

import io

from proxyd.accesslog import AccessLog
from proxyd.config.load import loads
from proxyd.config.model import Address, SipCheck
from proxyd.health.checks import run_check
from proxyd.pool import Pool
from proxyd.relay.udp import UdpListener
from proxyd.sip import call_id
from tests.unit.test_health_helpers import Outcome
from tests.unit.test_udp_relay import UdpReactor


def message(
    call: str = "abc@host", header: str = "Call-ID", first: str = "INVITE sip:b@x SIP/2.0"
) -> bytes:
    return (
        f"{first}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n{header}: {call}\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_call_id_is_read_in_full_and_compact_forms() -> None:
    assert call_id(message("abc@host")) == b"abc@host"
    assert call_id(message("xyz", header="i")) == b"xyz"
    assert call_id(message("q", header="call-id")) == b"q"


def test_no_call_id_in_keepalives_or_garbage() -> None:
    assert call_id(b"\r\n\r\n") is None
    assert call_id(b"\x00\xff garbage") is None
    assert call_id(b"INVITE x SIP/2.0\r\nVia: a\r\n\r\nCall-ID: in-body") is None


CONFIG = """
[pool sip]
servers = 10.0.0.1:5060 10.0.0.2:5060 10.0.0.3:5060
balance = {balance}
[udp sip]
listen = udp:5060
pool = sip
protocol = sip
"""


def relay(balance: str = "round_robin") -> tuple[UdpReactor, UdpListener]:
    config = loads(CONFIG.format(balance=balance))
    reactor = UdpReactor()
    pool = Pool(config.pools["sip"], reactor)
    listener = UdpListener(reactor, config.udp[0], pool, AccessLog(io.StringIO(), "memory"))
    listener.listen()
    return reactor, listener


def test_a_dialog_stays_on_its_server_when_the_clients_address_changes() -> None:
    reactor, listener = relay()
    listener.datagramReceived(message("call-1"), ("192.0.2.7", 5060))
    listener.datagramReceived(message("call-2"), ("192.0.2.7", 5060))
    listener.datagramReceived(message("call-1"), ("198.51.100.9", 40000))  # roamed
    ports = reactor.ports[1:]
    assert len(ports) == 2  # one socket per dialog, not per address
    assert [len(p.sent) for p in ports] == [2, 1]
    # The server's next message for call-1 goes to where the dialog was last heard from.
    ports[0].protocol.datagramReceived(message("call-1", first="SIP/2.0 200 OK"), None)
    assert listener.transport.sent[-1][1] == ("198.51.100.9", 40000)  # type: ignore[union-attr]


def test_hash_balancing_sends_a_call_id_to_the_same_server_in_a_new_session() -> None:
    reactor, listener = relay("hash")
    listener.datagramReceived(message("call-9"), ("192.0.2.7", 5060))
    first = reactor.ports[-1].connected_to
    reactor.advance(31)
    listener.datagramReceived(message("call-9"), ("192.0.2.8", 5060))
    assert reactor.ports[-1].connected_to == first


def test_a_datagram_without_call_id_uses_a_session_per_address() -> None:
    reactor, listener = relay()
    listener.datagramReceived(b"\r\n\r\n", ("192.0.2.7", 5060))
    listener.datagramReceived(b"\r\n\r\n", ("192.0.2.7", 5060))
    assert len(reactor.ports) == 2


def run_sip_check(check: SipCheck) -> tuple[UdpReactor, Outcome]:
    reactor = UdpReactor()
    return reactor, Outcome(run_check(reactor, Address("10.0.0.5", 5060), check, 2.0))


def answer(reactor: UdpReactor, status: str) -> None:
    port = reactor.ports[0]
    sent = port.sent[0][0]
    call = call_id(sent)
    assert call is not None
    port.protocol.datagramReceived(
        f"SIP/2.0 {status}\r\nCall-ID: {call.decode()}\r\nCSeq: 1 OPTIONS\r\n\r\n".encode(), None
    )


def test_the_sip_check_sends_options_and_passes_on_a_final_response() -> None:
    reactor, outcome = run_sip_check(SipCheck())
    request = reactor.ports[0].sent[0][0]
    assert request.startswith(b"OPTIONS sip:10.0.0.5:5060 SIP/2.0\r\n")
    assert b";rport" in request
    answer(reactor, "100 Trying")
    assert not outcome.fired
    answer(reactor, "404 Not Found")  # final: the server is alive
    assert outcome.passed


def test_the_sip_check_times_out_without_a_final_response() -> None:
    reactor, outcome = run_sip_check(SipCheck("sip:ping@10.0.0.5"))
    assert reactor.ports[0].sent[0][0].startswith(b"OPTIONS sip:ping@10.0.0.5 SIP/2.0")
    answer(reactor, "180 Ringing")
    reactor.advance(2.0)
    assert outcome.reason == "timeout after 2s waiting for a final response"


def test_the_sip_check_ignores_other_calls_and_fails_on_garbage_for_its_call() -> None:
    reactor, outcome = run_sip_check(SipCheck())
    port = reactor.ports[0]
    port.protocol.datagramReceived(b"SIP/2.0 200 OK\r\nCall-ID: other\r\n\r\n", None)
    assert not outcome.fired
    call = call_id(port.sent[0][0])
    assert call is not None
    port.protocol.datagramReceived(b"HTTP/1.1 200 OK\r\nCall-ID: " + call + b"\r\n\r\n", None)
    assert outcome.reason.startswith("not a SIP response")
