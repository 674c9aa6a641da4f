"""`check = dns NAME [TYPE] [expect RCODE,...]`: one query over UDP, as the DNS relay sends
them; the server is up when the answer (with the query's ID and question) has an expected
rcode. UDP has no connection, so this kind does not use connect_and_check: it opens a connected
datagram socket, which also reports an ICMP port unreachable at once."""

from __future__ import annotations

import random
import struct
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from proxyd.config.model import Address, DnsCheck
from proxyd.health.checks import CheckFailed, CheckReactor, format_duration, register

_rng = random.SystemRandom()


class _DnsProbe(DatagramProtocol):
    noisy = False

    def __init__(self, check: DnsCheck, timeout: float, reactor: Any) -> None:
        query = dns.message.make_query(check.name, check.rdtype)
        query.id = _rng.getrandbits(16)
        self.query = query
        self.check = check
        self.done: Deferred[None] = Deferred(self._cancelled)
        self.port: Any = None
        self.finished = False
        self._timer = reactor.callLater(timeout, self._timed_out, timeout)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            answer = dns.message.from_wire(datagram, question_only=True)
        except (dns.exception.DNSException, ValueError, struct.error):
            return  # not an answer to us: keep waiting
        if answer.id != self.query.id or not self.query.is_response(answer):
            return
        rcode = dns.rcode.to_text(answer.rcode())
        if rcode in self.check.expect:
            self._finish(None)
        else:
            wanted = ", ".join(self.check.expect)
            self._finish(CheckFailed(f"DNS {rcode} (expected {wanted})"))

    def connectionRefused(self) -> None:
        self._finish(CheckFailed("port unreachable (ICMP)"))

    def doStop(self) -> None:
        super().doStop()
        # The epoll reactor closes a connected UDP port on a pending ICMP error.
        self._finish(CheckFailed("port unreachable (ICMP)"))

    def _timed_out(self, timeout: float) -> None:
        self._finish(CheckFailed(f"timeout after {format_duration(timeout)} waiting for an answer"))

    def _cancelled(self, _: Deferred[None]) -> None:
        self._close()

    def _finish(self, outcome: CheckFailed | None) -> None:
        if self.finished:
            return
        self._close()
        if outcome is None:
            self.done.callback(None)
        else:
            self.done.errback(outcome)

    def _close(self) -> None:
        self.finished = True
        if self._timer.active():
            self._timer.cancel()
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()


@register(DnsCheck)
def check_dns(
    reactor: CheckReactor, address: Address, check: DnsCheck, timeout: float
) -> Deferred[None]:
    probe = _DnsProbe(check, timeout, reactor)
    udp = cast(Any, reactor)
    try:
        probe.port = udp.listenUDP(0, probe, interface="::" if ":" in address.host else "")
        probe.port.connect(address.host, address.port)
        probe.port.write(probe.query.to_wire())
    except Exception as e:  # a host name (connect wants an address), no route...
        probe._finish(CheckFailed(f"cannot send the query: {e}"))
    return probe.done
