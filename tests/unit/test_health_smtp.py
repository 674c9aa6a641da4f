"""`check = smtp`: banner, EHLO, QUIT; single and multi-line replies; refusals; garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.config.model import SmtpCheck
from proxyd.health.smtp import Reply, ReplyError, ReplyReader
from tests.unit.test_health_helpers import Conversation, split

CHECK = SmtpCheck(domain="proxyd.example")
BANNER = b"220 mx.example.org ESMTP Postfix (Debian/GNU)\r\n"
MULTI_BANNER = b"220-mx.example.org ESMTP\r\n220-No UCE\r\n220 Ready\r\n"
EHLO_REPLY = (
    b"250-mx.example.org\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250 8BITMIME\r\n"
)


def through_ehlo(banner: bytes = BANNER, ehlo_reply: bytes = EHLO_REPLY) -> Conversation:
    conversation = Conversation(CHECK).connect()
    assert conversation.sent() == b""
    conversation.receive(banner)
    assert conversation.sent() == b"EHLO proxyd.example\r\n"
    conversation.receive(ehlo_reply)
    return conversation


def test_banner_ehlo_quit_passes_once_the_server_answers_quit() -> None:
    conversation = through_ehlo()
    assert conversation.sent() == b"QUIT\r\n"
    assert not conversation.outcome.fired
    conversation.receive(b"221 2.0.0 Bye\r\n")
    assert conversation.passed
    assert conversation.transport.disconnecting and not conversation.transport.disconnected
    conversation.assert_clean()


def test_single_line_ehlo_reply_passes() -> None:
    conversation = through_ehlo(ehlo_reply=b"250 mx.example.org\r\n")
    assert conversation.sent() == b"QUIT\r\n"
    conversation.receive(b"221 Bye\r\n")
    assert conversation.passed


def test_multi_line_banner_is_read_whole_before_ehlo() -> None:
    conversation = Conversation(CHECK).connect().receive(b"220-mx.example.org ESMTP\r\n")
    assert conversation.sent() == b""
    conversation.receive(b"220-No UCE\r\n220 Ready\r\n")
    assert conversation.sent() == b"EHLO proxyd.example\r\n"


def test_replies_may_arrive_a_byte_at_a_time() -> None:
    conversation = Conversation(CHECK).connect()
    conversation.receive(*(MULTI_BANNER[i : i + 1] for i in range(len(MULTI_BANNER))))
    assert conversation.sent() == b"EHLO proxyd.example\r\n"
    conversation.receive(*(EHLO_REPLY[i : i + 1] for i in range(len(EHLO_REPLY))))
    assert conversation.sent() == b"QUIT\r\n"
    conversation.receive(b"221 Bye\r\n")
    assert conversation.passed


def test_a_server_that_closes_after_quit_without_221_still_passes() -> None:
    conversation = through_ehlo().server_closes()
    assert conversation.passed


def test_a_server_that_ignores_quit_passes_at_the_timeout_and_is_aborted() -> None:
    conversation = through_ehlo()
    conversation.reactor.advance(2.0)
    assert conversation.passed
    assert conversation.transport.disconnected
    conversation.assert_clean()


def test_a_554_banner_fails_with_the_servers_words() -> None:
    conversation = Conversation(CHECK).connect()
    conversation.receive(b"554 5.3.2 mx.example.org Service currently unavailable\r\n")
    assert conversation.reason == "banner 554 5.3.2 mx.example.org Service currently unavailable"
    assert conversation.sent() == b""
    conversation.assert_clean()


def test_a_multi_line_421_banner_fails_with_its_first_line() -> None:
    conversation = Conversation(CHECK).connect()
    conversation.receive(b"421-mx.example.org too busy\r\n421 try again later\r\n")
    assert conversation.reason == "banner 421 mx.example.org too busy"


def test_a_refused_ehlo_fails() -> None:
    conversation = through_ehlo(ehlo_reply=b"550 5.7.1 Access denied\r\n")
    assert conversation.reason == "EHLO answered 550 5.7.1 Access denied"
    assert conversation.sent() == b""


def test_a_long_reason_is_cut() -> None:
    conversation = Conversation(CHECK).connect().receive(b"554 " + b"x" * 200 + b"\r\n")
    assert conversation.reason == "banner 554 " + "x" * 53 + "..."


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (
            b"HTTP/1.1 400 Bad Request\r\n",
            "garbage from server: not an SMTP reply: b'HTTP/1.1 400 Bad Request'",
        ),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            "garbage from server: not an SMTP reply: b'SSH-2.0-OpenSSH_9.2'",
        ),
        (b"220x\r\n", "garbage from server: not an SMTP reply: b'220x'"),
        (b"220-a\r\n250 b\r\n", "garbage from server: reply code changed from 220 to 250"),
        (b"2" * 3000, "garbage from server: line longer than 2048 bytes"),
    ],
)
def test_garbage_fails_cleanly(garbage: bytes, reason: str) -> None:
    conversation = Conversation(CHECK).connect().receive(garbage)
    assert conversation.reason == reason
    conversation.assert_clean()


def test_a_server_that_never_greets_times_out() -> None:
    conversation = Conversation(CHECK, timeout=2.0).connect()
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s waiting for banner"


def test_a_server_that_never_answers_ehlo_times_out() -> None:
    conversation = Conversation(CHECK, timeout=2.0).connect().receive(BANNER)
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s waiting for EHLO reply"


def test_a_close_before_the_ehlo_reply_fails() -> None:
    conversation = Conversation(CHECK).connect().receive(BANNER).server_closes()
    assert conversation.reason == "connection closed by server while waiting for EHLO reply"


def test_the_default_domain_is_sent() -> None:
    conversation = Conversation(SmtpCheck()).connect().receive(BANNER)
    assert conversation.sent() == b"EHLO proxyd.localhost\r\n"


def test_reader_accepts_bare_codes_and_lf_line_ends() -> None:
    reader = ReplyReader()
    assert reader.feed(b"250-a\n250\n") == [Reply(250, (b"a", b""))]


def test_reader_limits_the_lines_of_one_reply() -> None:
    reader = ReplyReader()
    with pytest.raises(ReplyError, match="lines"):
        reader.feed(b"250-x\r\n" * 200)


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(EHLO_REPLY) + len(MULTI_BANNER))))
def test_any_chunking_gives_the_same_replies(cuts: list[int]) -> None:
    data = MULTI_BANNER + EHLO_REPLY
    reader = ReplyReader()
    replies = [reply for piece in split(data, cuts) for reply in reader.feed(piece)]
    assert [r.code for r in replies] == [220, 250]
    assert replies[0].lines == (b"mx.example.org ESMTP", b"No UCE", b"Ready")
    assert len(replies[1].lines) == 6


@given(st.binary(max_size=300))
def test_any_garbage_gives_replies_or_a_clean_reply_error(data: bytes) -> None:
    reader = ReplyReader()
    try:
        for reply in reader.feed(data):
            assert 200 <= reply.code <= 599
    except ReplyError:
        pass
