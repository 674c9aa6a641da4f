"""`check = mysql`: the initial handshake packet, error packets, split packets, garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.model import MysqlCheck
from proxyd.health.mysql import Handshake, HandshakeError, HandshakeReader, parse_handshake
from tests.unit.test_health_helpers import Conversation, split

# The first packet of MariaDB 10.11.19 (Debian 12), as read from a real server.
MARIADB_HANDSHAKE = (
    b"d\x00\x00\x00\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\x03\x00\x00\x00`L=*[k)*\x00"
    b"\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x004e$!uNf8"
    b'"@Z&\x00mysql_native_password\x00'
)
BLOCKED = (
    b"Host '10.0.0.7' is blocked because of many connection errors; "
    b"unblock with 'mariadb-admin flush-hosts'"
)


def packet(payload: bytes, sequence: int = 0) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


def error_packet(code: int, message: bytes, state: bytes = b"") -> bytes:
    return packet(b"\xff" + code.to_bytes(2, "little") + state + message)


def test_the_real_packet_is_framed_as_the_tests_expect() -> None:
    assert packet(MARIADB_HANDSHAKE[4:]) == MARIADB_HANDSHAKE


def test_a_protocol_10_handshake_passes_and_the_connection_is_closed() -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(MARIADB_HANDSHAKE)
    assert conversation.passed
    assert conversation.sent() == b""
    assert conversation.transport.disconnecting
    conversation.assert_clean()


def test_the_handshake_names_the_server_version() -> None:
    assert HandshakeReader().feed(MARIADB_HANDSHAKE) == Handshake(
        10, "5.5.5-10.11.19-MariaDB-0+deb12u1"
    )


def test_a_handshake_split_in_pieces_is_read_whole() -> None:
    conversation = Conversation(MysqlCheck()).connect()
    conversation.receive(MARIADB_HANDSHAKE[:2], MARIADB_HANDSHAKE[2:5], MARIADB_HANDSHAKE[5:40])
    assert not conversation.outcome.fired
    conversation.receive(MARIADB_HANDSHAKE[40:])
    assert conversation.passed


def test_an_error_packet_reports_the_servers_message() -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(error_packet(1129, BLOCKED))
    assert conversation.reason == "server error 1129: " + BLOCKED.decode()
    assert conversation.transport.disconnected
    conversation.assert_clean()


def test_an_error_packet_with_an_sql_state_reports_the_message_only() -> None:
    data = error_packet(1040, b"Too many connections", state=b"#08004")
    conversation = Conversation(MysqlCheck()).connect().receive(data)
    assert conversation.reason == "server error 1040: Too many connections"


def test_an_error_packet_in_pieces_is_read_whole() -> None:
    data = error_packet(1129, BLOCKED)
    conversation = Conversation(MysqlCheck()).connect().receive(data[:10])
    assert not conversation.outcome.fired
    conversation.receive(data[10:])
    assert conversation.reason.startswith("server error 1129: Host '10.0.0.7' is blocked")


def test_a_long_error_message_is_cut() -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(error_packet(1045, b"y" * 500))
    assert conversation.reason == "server error 1045: " + "y" * 157 + "..."


def test_another_protocol_version_fails() -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(packet(b"\x093.23.58\x00rest"))
    assert conversation.reason == "protocol version 9"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "not a MySQL handshake (sequence id 80)"),
        (packet(b"\x0a" * 10, sequence=1), "not a MySQL handshake (sequence id 1)"),
        (b"\xff\xff\xff\x00", "not a MySQL handshake (packet length 16777215)"),
        (packet(b""), "empty handshake packet"),
        (packet(b"\x0a5.7.0 no terminator"), "malformed handshake (no server version)"),
        (packet(b"\xff\x01"), "server error (truncated error packet)"),
        (packet(b"\xff\x15\x04"), "server error 1045"),
    ],
)
def test_garbage_fails_cleanly(data: bytes, reason: str) -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(data)
    assert conversation.reason == reason
    conversation.assert_clean()


def test_a_close_in_the_middle_of_the_packet_fails() -> None:
    conversation = Conversation(MysqlCheck()).connect().receive(MARIADB_HANDSHAKE[:30])
    conversation.server_closes()
    assert conversation.reason == "connection closed by server while waiting for handshake"


def test_half_a_packet_at_the_timeout_fails() -> None:
    conversation = Conversation(MysqlCheck(), timeout=2.0).connect()
    conversation.receive(MARIADB_HANDSHAKE[:30])
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s waiting for handshake"
    conversation.assert_clean()


def test_parse_handshake_of_a_mysql_8_payload() -> None:
    payload = b"\x0a8.0.36\x00\x08\x00\x00\x00" + b"a" * 8 + b"\x00\xff\xff"
    assert parse_handshake(payload) == Handshake(10, "8.0.36")


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(MARIADB_HANDSHAKE))))
def test_any_chunking_of_the_handshake_gives_the_same_result(cuts: list[int]) -> None:
    reader = HandshakeReader()
    results = [reader.feed(piece) for piece in split(MARIADB_HANDSHAKE, cuts)]
    assert results[-1] == Handshake(10, "5.5.5-10.11.19-MariaDB-0+deb12u1")
    assert all(result is None for result in results[:-1])


@given(st.binary(max_size=200))
def test_any_garbage_gives_a_result_or_a_clean_handshake_error(data: bytes) -> None:
    with contextlib.suppress(HandshakeError):
        HandshakeReader().feed(data)
