"""`check = websocket [PATH] [host NAME] [ping]`: a WebSocket opening handshake (RFC 6455 4.1);
up on `101 Switching Protocols` with the right Sec-WebSocket-Accept and, with `ping`, once a
ping is answered by its pong. The check then closes with 1000.

The check needs only the handshake and a few frames, written here by hand: a masked ping and
close (RFC 6455 5.3: a client masks every frame) and a reader for the server's frames.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Final

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.config.model import Address, WebSocketCheck
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
    show_bytes,
)
from proxyd.health.tls import connect_over_tls
from proxyd.tls import describe_failure

MAX_HEAD: Final = 64 * 1024
"""Most bytes accepted before the end of the response's header block."""
MAX_FRAMES: Final = 64 * 1024
"""Most frame bytes read while waiting for the pong (server messages are skipped)."""

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PING: Final = 0x9
_PONG: Final = 0xA
_CLOSE: Final = 0x8
NORMAL_CLOSURE: Final = 1000


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def request_bytes(path: str, host: str, key: bytes) -> bytes:
    host_bytes = host.encode("ascii") if host.isascii() else host.encode("idna")
    return b"".join(
        [
            b"GET ",
            path.encode("ascii"),
            b" HTTP/1.1\r\nHost: ",
            host_bytes,
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
            key,
            b"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: proxyd-health\r\n\r\n",
        ]
    )


def client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """A final, masked frame of a control opcode (payload at most 125 bytes)."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def judge_head(head: bytes, key: bytes) -> str | None:
    """Why a response head (its blank line excluded) is not a valid 101 for `key`; None when
    it is."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return f"malformed HTTP response: {show_bytes(lines[0])}"
    status = int(parts[1])
    if status != 101:
        return f"expected 101, got {status}"
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    upgrade = b",".join(fields.get(b"upgrade", []))
    if b"websocket" not in [token.strip().lower() for token in upgrade.split(b",")]:
        return "101 without Upgrade: websocket"
    accept = fields.get(b"sec-websocket-accept", [])
    if accept != [accept_for(key)]:
        return "wrong Sec-WebSocket-Accept"
    return None


def next_frame(data: bytes) -> tuple[int, bytes, int] | None:
    """The first whole frame of `data`: (opcode, unmasked payload, its length in bytes); None
    until it has all arrived."""
    if len(data) < 2:
        return None
    opcode = data[0] & 0x0F
    masked = data[1] & 0x80
    length = data[1] & 0x7F
    offset = 2
    if length == 126:
        if len(data) < 4:
            return None
        (length,) = struct.unpack("!H", data[2:4])
        offset = 4
    elif length == 127:
        if len(data) < 10:
            return None
        (length,) = struct.unpack("!Q", data[2:10])
        offset = 10
    mask = b""
    if masked:
        mask = data[offset : offset + 4]
        offset += 4
    end = offset + length
    if len(data) < end:
        return None
    payload = data[offset:end]
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload, end


class WebSocketCheckProtocol(CheckProtocol):
    """Sends the opening handshake at connect, judges the 101, then pings when asked."""

    waiting_for = "the 101 response"

    def __init__(self, check: WebSocketCheck, host: str) -> None:
        self.check = check
        self.key = base64.b64encode(os.urandom(16))
        self.request = request_bytes(check.path, host, self.key)
        self._ping = os.urandom(8)
        self._buffer = b""
        self._read = 0
        self._open = False

    def connectionMade(self) -> None:
        self.connection.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        self._buffer += data
        self._read += len(data)
        if not self._open:
            self._read_head()
        if self._open and not self.finished:
            self._read_frames()

    def _read_head(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self.fail(f"HTTP response head over {MAX_HEAD // 1024} KiB")
            return
        why = judge_head(self._buffer[:end], self.key)
        if why is not None:
            self.fail(why)
            return
        self._open = True
        self._buffer = self._buffer[end + 4 :]
        self._read = len(self._buffer)
        if not self.check.ping:
            self._close_and_pass()
            return
        self.waiting_for = "pong"
        self.connection.write(client_frame(_PING, self._ping, os.urandom(4)))

    def _read_frames(self) -> None:
        while not self.finished:
            frame = next_frame(self._buffer)
            if frame is None:
                if self._read > MAX_FRAMES:
                    self.fail(f"no pong in the first {MAX_FRAMES // 1024} KiB")
                return
            opcode, payload, size = frame
            self._buffer = self._buffer[size:]
            if opcode == _PONG and payload == self._ping:
                self._close_and_pass()
            elif opcode == _CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.fail(f"server closed the WebSocket ({code or 'no code'}) instead of a pong")

    def _close_and_pass(self) -> None:
        self.connection.write(
            client_frame(_CLOSE, struct.pack("!H", NORMAL_CLOSURE), os.urandom(4))
        )
        self.succeed()

    def timeout_result(self, timeout: str) -> CheckFailed | None:
        if self._open:
            return CheckFailed(f"no pong within {timeout}")
        return super().timeout_result(timeout)

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        why = describe_failure(reason)
        if why is not None:
            if self.check.tls is not None and not self._read:
                return CheckFailed(f"TLS handshake failed: {why}")
            return CheckFailed(f"TLS error: {why}")
        return super().closed_result(reason)


@register(WebSocketCheck)
def check_websocket(
    reactor: CheckReactor, address: Address, check: WebSocketCheck, timeout: float
) -> Deferred[None]:
    host = check.host if check.host is not None else str(address)

    def build() -> WebSocketCheckProtocol:
        return WebSocketCheckProtocol(check, host)

    if check.tls is None:
        return connect_and_check(reactor, address, timeout, build)
    return connect_over_tls(reactor, address, timeout, build, check.tls)
