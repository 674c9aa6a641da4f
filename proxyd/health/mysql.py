"""`check = mysql`: read the server's initial handshake packet, expect protocol version 10.

Nothing is sent: the connection is closed after the handshake, as HAProxy's `mysql-check`
does without a user. A server may count such connections as aborted connects and block a host
after `max_connect_errors` of them with no good connection in between (HAProxy documents this;
MariaDB 10.11 checked from loopback did not); this check then reports the server's error packet.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

from proxyd.config.model import Address, MysqlCheck
from proxyd.health.checks import (
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
)

PROTOCOL_VERSION = 10
ERROR_PACKET = 0xFF
MAX_HANDSHAKE = 64 * 1024
"""Longest initial packet accepted; a real handshake is about 80 to 120 bytes."""


@attrs.frozen
class Handshake:
    """The parts of a protocol-10 initial handshake packet worth knowing."""

    protocol_version: int
    server_version: str


class HandshakeError(Exception):
    """The first packet is not a usable handshake; the message is the check's reason."""


class HandshakeReader:
    """Reads the first packet of the MySQL client/server protocol: a 3-byte little-endian
    payload length, a sequence id (0), the payload. Sans-IO: feed() bytes until it returns
    the Handshake; HandshakeError for an error packet, another protocol version, or garbage."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Handshake | None:
        self._buffer += data
        if len(self._buffer) < 4:
            return None
        length = int.from_bytes(self._buffer[:3], "little")
        sequence = self._buffer[3]
        if sequence != 0:
            raise HandshakeError(f"not a MySQL handshake (sequence id {sequence})")
        if length == 0:
            raise HandshakeError("empty handshake packet")
        if length > MAX_HANDSHAKE:
            raise HandshakeError(f"not a MySQL handshake (packet length {length})")
        if len(self._buffer) < 4 + length:
            return None
        return parse_handshake(self._buffer[4 : 4 + length])


def parse_handshake(payload: bytes) -> Handshake:
    """The initial packet's payload as a Handshake; HandshakeError if it is not one."""
    version = payload[0]
    if version == ERROR_PACKET:
        raise HandshakeError(parse_error(payload))
    if version != PROTOCOL_VERSION:
        raise HandshakeError(f"protocol version {version}")
    server_version, nul, _ = payload[1:].partition(b"\0")
    if not nul:
        raise HandshakeError("malformed handshake (no server version)")
    return Handshake(version, server_version.decode("utf-8", "replace"))


def parse_error(payload: bytes, limit: int = 160) -> str:
    """`server error 1129: Host '10.0.0.7' is blocked ...` from an ERR packet's payload:
    0xff, a 2-byte code, an optional `#` and 5-character SQL state, the message."""
    if len(payload) < 3:
        return "server error (truncated error packet)"
    code = int.from_bytes(payload[1:3], "little")
    message = payload[3:]
    if message.startswith(b"#") and len(message) >= 6:
        message = message[6:]
    text = message.decode("utf-8", "replace").strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"server error {code}: {text}" if text else f"server error {code}"


class MysqlCheckProtocol(CheckProtocol):
    """Passes on a protocol-10 handshake, then closes without logging in."""

    waiting_for = "handshake"

    def __init__(self, check: MysqlCheck) -> None:
        self.check = check
        self.reader = HandshakeReader()
        self.handshake: Handshake | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            self.handshake = self.reader.feed(data)
        except HandshakeError as e:
            self.fail(str(e))
            return
        if self.handshake is not None:
            self.succeed()


@register(MysqlCheck)
def check_mysql(
    reactor: CheckReactor, address: Address, check: MysqlCheck, timeout: float
) -> Deferred[None]:
    return connect_and_check(reactor, address, timeout, lambda: MysqlCheckProtocol(check))
