"""`check = sip [URI]`: an OPTIONS request over UDP (RFC 3261 11); the server is up when a
final response to it (any status from 200 to 699: the server is alive and answering) comes
back. Provisional responses (1xx) are waited through."""

from __future__ import annotations

import secrets

from twisted.internet.defer import Deferred

from proxyd.config.model import Address, SipCheck
from proxyd.health.checks import CheckFailed, CheckReactor, register, show_bytes
from proxyd.health.datagram import WAIT, DatagramProbe
from proxyd.sip import call_id


def options_request(uri: str, call: str, branch: str, tag: str) -> bytes:
    # rport (RFC 3581): the answer goes back to the port the request came from.
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP proxyd.invalid;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <{uri}>\r\n"
        f"From: <sip:proxyd@proxyd.invalid>;tag={tag}\r\n"
        f"Call-ID: {call}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Accept: application/sdp\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode("ascii")


class SipProbe(DatagramProbe):
    waiting_for = "a final response"

    def __init__(self, check: SipCheck, address: Address) -> None:
        self.uri = check.uri or f"sip:{address}"
        self.call = f"{secrets.token_hex(8)}@proxyd.invalid"

    def request(self) -> bytes:
        return options_request(self.uri, self.call, secrets.token_hex(8), secrets.token_hex(4))

    def judge(self, datagram: bytes) -> CheckFailed | object | None:
        if call_id(datagram) != self.call.encode("ascii"):
            return WAIT
        status_line = datagram.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or status_line[0] != b"SIP/2.0" or not status_line[1].isdigit():
            return CheckFailed(f"not a SIP response: {show_bytes(datagram)}")
        status = int(status_line[1])
        if status < 200:
            return WAIT
        if status > 699:
            return CheckFailed(f"not a SIP response: {show_bytes(datagram)}")
        return None


@register(SipCheck)
def check_sip(
    reactor: CheckReactor, address: Address, check: SipCheck, timeout: float
) -> Deferred[None]:
    return SipProbe(check, address).run(reactor, address, timeout)
