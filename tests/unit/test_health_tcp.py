"""`check = tcp`: connect only, send, expect a prefix, expect a regex."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.model import TcpCheck
from proxyd.health.tcp import ReplyMatcher
from tests.unit.test_health_helpers import Conversation, split

REDIS = TcpCheck(send=b"PING\r\n", expect=b"+PONG")


def test_connect_only_passes_on_connect_and_closes() -> None:
    conversation = Conversation(TcpCheck()).connect()
    assert conversation.passed
    assert conversation.sent() == b""
    conversation.assert_clean()


def test_send_without_expect_writes_then_passes() -> None:
    conversation = Conversation(TcpCheck(send=b"hello\n")).connect()
    assert conversation.passed
    assert conversation.sent() == b"hello\n"
    conversation.assert_clean()


def test_send_then_expected_prefix_passes() -> None:
    conversation = Conversation(REDIS).connect()
    assert conversation.sent() == b"PING\r\n"
    assert not conversation.outcome.fired
    conversation.receive(b"+PONG\r\n")
    assert conversation.passed
    conversation.assert_clean()


def test_expected_prefix_may_arrive_in_pieces() -> None:
    conversation = Conversation(REDIS).connect().receive(b"+P", b"ON")
    assert not conversation.outcome.fired
    conversation.receive(b"G")
    assert conversation.passed


def test_a_different_reply_fails_at_once_with_what_came_back() -> None:
    conversation = Conversation(REDIS).connect().receive(b"-ERR")
    assert conversation.reason == "expected b'+PONG', got b'-ERR'"
    assert conversation.transport.disconnected
    conversation.assert_clean()


def test_a_mismatch_is_seen_from_the_first_wrong_byte() -> None:
    conversation = Conversation(REDIS).connect().receive(b"+X")
    assert conversation.reason == "expected b'+PONG', got b'+X'"


def test_a_short_reply_then_close_fails_with_what_came_back() -> None:
    conversation = Conversation(REDIS).connect().receive(b"+PO").server_closes()
    assert conversation.reason == "expected b'+PONG', got b'+PO'"


def test_close_before_any_reply_says_what_it_waited_for() -> None:
    conversation = Conversation(REDIS).connect().server_closes()
    assert conversation.reason == "connection closed by server while waiting for b'+PONG'"


def test_no_reply_times_out() -> None:
    conversation = Conversation(REDIS, timeout=2.0).connect()
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s waiting for b'+PONG'"
    conversation.assert_clean()


def test_a_partial_reply_at_the_timeout_is_shown() -> None:
    conversation = Conversation(REDIS, timeout=2.0).connect().receive(b"+PO")
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s: expected b'+PONG', got b'+PO'"


def test_expect_without_send_reads_a_banner() -> None:
    conversation = Conversation(TcpCheck(expect=b"SSH-2.0-")).connect()
    assert conversation.sent() == b""
    conversation.receive(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    assert conversation.passed


def test_expect_regex_matches_anywhere_in_the_reply() -> None:
    check = TcpCheck(send=b"INFO\r\n", expect_regex=re.compile(rb"role:master"))
    conversation = Conversation(check).connect()
    conversation.receive(b"$120\r\n# Replication\r\nro", b"le:master\r\nconnected_slaves:0\r\n")
    assert conversation.passed


def test_expect_regex_waits_for_more_until_it_matches() -> None:
    check = TcpCheck(expect_regex=re.compile(rb"^OK \d+\r\n", re.MULTILINE))
    conversation = Conversation(check).connect().receive(b"HELLO\r\nOK 1")
    assert not conversation.outcome.fired
    conversation.receive(b"2\r\n")
    assert conversation.passed


def test_expect_regex_close_without_match_fails() -> None:
    check = TcpCheck(expect_regex=re.compile(rb"role:master"))
    conversation = Conversation(check).connect().receive(b"role:slave\r\n").server_closes()
    assert conversation.reason == "expected a match of b'role:master', got b'role:slave'"


def test_expect_regex_timeout_says_what_it_waited_for() -> None:
    check = TcpCheck(expect_regex=re.compile(rb"role:master"))
    conversation = Conversation(check, timeout=1.0).connect()
    conversation.reactor.advance(1.0)
    assert conversation.reason == "timeout after 1s waiting for a match of b'role:master'"


def test_expect_regex_gives_up_after_the_limit() -> None:
    matcher = ReplyMatcher(expect_regex=re.compile(rb"never"), limit=10)
    matcher.feed(b"0123456789abc")
    assert matcher.mismatch == "no match of b'never' in the first 10 bytes"
    assert len(matcher.received) == 10


def test_data_after_the_decision_is_ignored() -> None:
    conversation = Conversation(REDIS).connect().receive(b"+PONG\r\n", b"-ERR late\r\n")
    assert conversation.passed


def test_matcher_needs_exactly_one_of_expect_and_regex() -> None:
    with pytest.raises(ValueError):
        ReplyMatcher()
    with pytest.raises(ValueError):
        ReplyMatcher(expect=b"a", expect_regex=re.compile(b"a"))


@given(
    expect=st.binary(min_size=1, max_size=20),
    reply=st.binary(max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_prefix_verdict_does_not_depend_on_chunking(
    expect: bytes, reply: bytes, cuts: list[int]
) -> None:
    whole = ReplyMatcher(expect=expect)
    whole.feed(reply)
    pieces = ReplyMatcher(expect=expect)
    for piece in split(reply, cuts):
        pieces.feed(piece)
    assert pieces.matched == whole.matched == reply.startswith(expect)
    assert (pieces.mismatch is None) == (whole.mismatch is None)
    if whole.mismatch is not None:
        assert not reply.startswith(expect)
