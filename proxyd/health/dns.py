"""`check = dns NAME [TYPE] [expect RCODE,...]`: one query over UDP, as the DNS relay sends
them; the server is up when the answer (with the query's ID and question) has an expected
rcode."""

from __future__ import annotations

import random
import struct

import dns.exception
import dns.message
import dns.rcode
from twisted.internet.defer import Deferred

from proxyd.config.model import Address, DnsCheck
from proxyd.health.checks import CheckFailed, CheckReactor, register
from proxyd.health.datagram import WAIT, DatagramProbe

_rng = random.SystemRandom()


class DnsProbe(DatagramProbe):
    def __init__(self, check: DnsCheck) -> None:
        self.check = check
        self.query = dns.message.make_query(check.name, check.rdtype)
        self.query.id = _rng.getrandbits(16)

    def request(self) -> bytes:
        return self.query.to_wire()

    def judge(self, datagram: bytes) -> CheckFailed | object | None:
        try:
            answer = dns.message.from_wire(datagram, question_only=True)
        except (dns.exception.DNSException, ValueError, struct.error):
            return WAIT  # not an answer to us
        if answer.id != self.query.id or not self.query.is_response(answer):
            return WAIT
        rcode = dns.rcode.to_text(answer.rcode())
        if rcode in self.check.expect:
            return None
        return CheckFailed(f"DNS {rcode} (expected {', '.join(self.check.expect)})")


@register(DnsCheck)
def check_dns(
    reactor: CheckReactor, address: Address, check: DnsCheck, timeout: float
) -> Deferred[None]:
    return DnsProbe(check).run(reactor, address, timeout)
