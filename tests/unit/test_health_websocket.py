"""`check = websocket`: the handshake sent, 101 judged, the ping and its pong, the close, and
every way it fails."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from proxyd.config.model import WebSocketCheck
from proxyd.health.checks import checker_for
from proxyd.health.websocket import accept_for, check_websocket, client_frame, next_frame
from tests.unit.test_health_helpers import Conversation, split

KEY_FIELD = b"Sec-WebSocket-Key: "


def key_of(request: bytes) -> bytes:
    start = request.index(KEY_FIELD) + len(KEY_FIELD)
    return request[start : request.index(b"\r\n", start)]


def switching(request: bytes, accept: bytes | None = None) -> bytes:
    accept = accept_for(key_of(request)) if accept is None else accept
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def server_frame(opcode: int, payload: bytes) -> bytes:
    if len(payload) < 126:
        return bytes([0x80 | opcode, len(payload)]) + payload
    return bytes([0x80 | opcode, 126]) + struct.pack("!H", len(payload)) + payload


def frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while (frame := next_frame(data)) is not None:
        opcode, payload, size = frame
        out.append((opcode, payload))
        data = data[size:]
    assert data == b""
    return out


def test_the_websocket_kind_is_registered() -> None:
    assert checker_for(WebSocketCheck) is check_websocket


def test_the_handshake_asks_for_the_path_with_the_servers_address_as_host() -> None:
    conversation = Conversation(WebSocketCheck(path="/chat?probe=1")).connect()
    request = conversation.sent()
    head = request.split(b"\r\n")
    assert head[0] == b"GET /chat?probe=1 HTTP/1.1"
    assert b"Host: 192.0.2.10:3306" in head
    assert b"Upgrade: websocket" in head and b"Connection: Upgrade" in head
    assert b"Sec-WebSocket-Version: 13" in head
    assert len(key_of(request)) == 24
    conversation = Conversation(WebSocketCheck(host="chat.example")).connect()
    assert b"Host: chat.example\r\n" in conversation.sent()


def test_a_101_with_the_right_accept_passes_and_closes_with_1000() -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    conversation.receive(switching(conversation.sent()))
    assert conversation.passed
    assert frames(conversation.sent()) == [(0x8, struct.pack("!H", 1000))]
    conversation.assert_clean()


def test_the_answer_may_arrive_in_any_pieces() -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    answer = switching(conversation.sent())
    conversation.receive(*split(answer, [1, 9, 40, len(answer) - 2]))
    assert conversation.passed


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "expected 101, got 404"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "expected 101, got 200"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed HTTP response: b'SSH-2.0-OpenSSH'"),
    ],
)
def test_anything_but_101_fails(answer: bytes, reason: str) -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    conversation.receive(answer)
    assert conversation.reason == reason
    conversation.assert_clean()


def test_a_wrong_accept_fails() -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    conversation.receive(switching(conversation.sent(), accept=b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
    assert conversation.reason == "wrong Sec-WebSocket-Accept"


def test_a_101_without_upgrade_websocket_fails() -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    answer = switching(conversation.sent()).replace(b"Upgrade: websocket", b"Upgrade: h2c")
    conversation.receive(answer)
    assert conversation.reason == "101 without Upgrade: websocket"


def test_with_ping_a_matching_pong_passes() -> None:
    conversation = Conversation(WebSocketCheck(ping=True)).connect()
    conversation.receive(switching(conversation.sent()))
    assert not conversation.outcome.fired
    [(opcode, payload)] = frames(conversation.sent())
    assert opcode == 0x9 and len(payload) == 8
    conversation.receive(server_frame(0x1, b"welcome" * 30), server_frame(0xA, b"other"))
    assert not conversation.outcome.fired
    pong = server_frame(0xA, payload)
    conversation.receive(pong[:3], pong[3:])
    assert conversation.passed
    assert frames(conversation.sent()) == [(0x8, struct.pack("!H", 1000))]
    conversation.assert_clean()


def test_with_ping_no_pong_within_the_timeout_fails() -> None:
    conversation = Conversation(WebSocketCheck(ping=True), timeout=2.0).connect()
    conversation.receive(switching(conversation.sent()))
    conversation.reactor.advance(2)
    assert conversation.reason == "no pong within 2s"
    conversation.assert_clean()


def test_with_ping_a_close_instead_of_a_pong_fails() -> None:
    conversation = Conversation(WebSocketCheck(ping=True)).connect()
    conversation.receive(switching(conversation.sent()), server_frame(0x8, b"\x03\xe9"))
    assert conversation.reason == "server closed the WebSocket (1001) instead of a pong"


def test_no_answer_within_the_timeout_fails() -> None:
    conversation = Conversation(WebSocketCheck(), timeout=2.0).connect()
    conversation.reactor.advance(2)
    assert conversation.reason == "timeout after 2s waiting for the 101 response"
    conversation.assert_clean()


def test_a_refused_connect_fails() -> None:
    conversation = Conversation(WebSocketCheck())
    connector = conversation.reactor.connectors[0]
    conversation.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
    assert conversation.reason == "connection refused"


def test_a_close_before_the_answer_fails() -> None:
    conversation = Conversation(WebSocketCheck()).connect()
    conversation.server_closes()
    assert conversation.reason == "connection closed by server while waiting for the 101 response"


def test_frames_are_masked_and_read_back() -> None:
    frame = client_frame(0x9, b"abc", b"\x01\x02\x03\x04")
    assert frame[:2] == b"\x89\x83"
    assert next_frame(frame) == (0x9, b"abc", len(frame))
    assert next_frame(frame[:-1]) is None
    big = server_frame(0x2, b"z" * 300)
    assert next_frame(big) == (0x2, b"z" * 300, len(big))
    long = bytes([0x82, 127]) + struct.pack("!Q", 3) + b"abc"
    assert next_frame(long) == (0x2, b"abc", len(long))
