"""`check = http`: the request sent, statuses in and out of range, body matching, HEAD,
malformed and cut responses, timeouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from proxyd.config.model import Address, HttpCheck
from proxyd.health.checks import checker_for
from proxyd.health.http import ResponseJudge, check_http, describe_ranges
from tests.unit.test_health_helpers import Conversation, split

DEFAULT = HttpCheck()
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def request(method: str = "GET", path: str = "/", host: str = "192.0.2.10:3306") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: proxyd-health\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()


def test_the_http_kind_is_registered() -> None:
    assert checker_for(HttpCheck) is check_http


def test_the_default_request_is_get_slash_with_the_servers_address_as_host() -> None:
    conversation = Conversation(DEFAULT).connect()
    assert conversation.sent() == request()
    assert not conversation.outcome.fired


def test_method_path_and_host_are_sent_as_configured() -> None:
    check = HttpCheck(method="OPTIONS", path="/healthz?full=1", host="app.example:8080")
    conversation = Conversation(check).connect()
    assert conversation.sent() == request("OPTIONS", "/healthz?full=1", "app.example:8080")


def test_an_ipv6_server_is_bracketed_in_host() -> None:
    conversation = Conversation(DEFAULT, address=Address("2001:db8::5", 8080)).connect()
    assert conversation.sent() == request(host="[2001:db8::5]:8080")


def test_a_200_passes_at_the_header_block_and_closes_cleanly() -> None:
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert conversation.passed
    assert conversation.transport.disconnecting and not conversation.transport.disconnected
    conversation.assert_clean()


@pytest.mark.parametrize("status", [200, 204, 301, 302, 304, 399])
def test_the_default_range_is_200_to_399(status: int) -> None:
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
    assert conversation.passed


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (503, "HTTP 503 (expected 200-399)"),
        (404, "HTTP 404 (expected 200-399)"),
        (500, "HTTP 500 (expected 200-399)"),
        (400, "HTTP 400 (expected 200-399)"),
    ],
)
def test_a_status_out_of_range_fails_at_once(status: int, reason: str) -> None:
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(f"HTTP/1.1 {status} Nope\r\nContent-Length: 1000\r\n\r\n".encode())
    assert conversation.reason == reason
    assert conversation.transport.disconnected  # aborted
    conversation.assert_clean()


def test_class_style_and_listed_ranges() -> None:
    check = HttpCheck(expect=((200, 299), (301, 302), (418, 418)))
    for status, passes in [(200, True), (299, True), (302, True), (418, True), (304, False)]:
        conversation = Conversation(check).connect()
        conversation.receive(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        if passes:
            assert conversation.passed, status
        else:
            assert conversation.reason == "HTTP 304 (expected 2xx, 301-302, 418)"


def test_describe_ranges() -> None:
    assert describe_ranges(((200, 399),)) == "200-399"
    assert describe_ranges(((200, 200),)) == "200"
    assert describe_ranges(((200, 299), (500, 599))) == "2xx, 5xx"
    assert describe_ranges(((200, 200), (204, 204))) == "200, 204"


def test_interim_responses_are_skipped() -> None:
    conversation = Conversation(HttpCheck(expect=((100, 599),))).connect()
    conversation.receive(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\n"
    )
    assert not conversation.outcome.fired
    conversation.receive(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    assert conversation.passed
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n")
    assert conversation.reason == "HTTP 500 (expected 200-399)"


def test_an_http_1_0_response_is_judged_the_same() -> None:
    conversation = Conversation(DEFAULT).connect().receive(b"HTTP/1.0 200 OK\r\n\r\n")
    assert conversation.passed


def test_a_status_line_split_anywhere_is_read() -> None:
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(*(OK[i : i + 1] for i in range(len(OK))))
    assert conversation.passed


# Body.

BODY = HttpCheck(path="/status", body=b'"status":"ok"')


def test_a_body_match_passes_as_soon_as_it_is_seen() -> None:
    conversation = Conversation(BODY).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert not conversation.outcome.fired
    conversation.receive(b'{"status":"ok", ')
    assert conversation.passed
    conversation.assert_clean()


def test_a_body_match_split_across_reads_is_found() -> None:
    conversation = Conversation(BODY).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", b'"sta', b"tus", b'":')
    assert not conversation.outcome.fired
    conversation.receive(b'"o', b'k"}')
    assert conversation.passed


def test_a_body_match_split_across_chunks_is_found() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conversation.receive(b"3\r\nall\r\n2\r\n o\r\n", b"1\r\nk\r\n0\r\n\r\n")
    assert conversation.passed


def test_a_body_without_the_string_fails_at_its_end() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfai", b"led")
    assert conversation.reason == "body does not contain 'ok'"
    conversation.assert_clean()


def test_a_chunked_body_without_the_string_fails_at_its_last_chunk() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n")
    assert not conversation.outcome.fired
    conversation.receive(b"0\r\n\r\n")
    assert conversation.reason == "body does not contain 'ok'"


def test_a_close_delimited_body_without_the_string_fails_at_the_close() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\n\r\nno match here")
    assert not conversation.outcome.fired
    conversation.server_closes()
    assert conversation.reason == "body does not contain 'ok'"


def test_a_close_delimited_body_with_the_string_passes() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.0 200 OK\r\n\r\nall ", b"ok")
    assert conversation.passed


def test_only_the_first_64_kib_of_the_body_are_searched() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
    conversation.receive(b"x" * 65535)
    assert not conversation.outcome.fired
    conversation.receive(b"ok")
    assert conversation.reason == "body does not contain 'ok' in the first 64 KiB"


def test_a_match_ending_on_the_last_searched_byte_counts() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
    conversation.receive(b"x" * 65534 + b"okxx")
    assert conversation.passed


def test_the_status_is_judged_before_the_body() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nok")
    assert conversation.reason == "HTTP 500 (expected 200-399)"


def test_non_ascii_body_strings_are_shown_readably() -> None:
    conversation = Conversation(HttpCheck(body="caf\u00e9".encode())).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
    assert conversation.reason == "body does not contain 'caf\u00e9'"


def test_a_body_check_on_a_204_fails_without_waiting() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert conversation.reason == "body does not contain 'ok'"


# HEAD.


def test_head_passes_at_the_header_block_despite_a_content_length() -> None:
    conversation = Conversation(HttpCheck(method="HEAD")).connect()
    assert conversation.sent() == request("HEAD")
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
    assert conversation.passed
    conversation.assert_clean()


def test_head_fails_at_the_header_block_on_a_bad_status() -> None:
    conversation = Conversation(HttpCheck(method="HEAD")).connect()
    conversation.receive(b"HTTP/1.1 503 Busy\r\nContent-Length: 12345\r\n\r\n")
    assert conversation.reason == "HTTP 503 (expected 200-399)"


def test_head_with_a_body_string_fails_at_the_header_block() -> None:
    conversation = Conversation(HttpCheck(method="HEAD", body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert conversation.reason == "body does not contain 'ok'"


# Broken servers.


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "malformed HTTP response: expected HTTP/, RTSP/ or ICE/"),
        (b"<html>oops</html>", "malformed HTTP response: expected HTTP/, RTSP/ or ICE/"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed HTTP response: invalid response status"),
        (
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "malformed HTTP response: missing expected CR after response line",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "malformed HTTP response: duplicate Content-Length",
        ),
    ],
)
def test_a_malformed_response_fails_with_the_parsers_message(garbage: bytes, reason: str) -> None:
    conversation = Conversation(DEFAULT).connect().receive(garbage)
    assert conversation.reason == reason
    assert conversation.transport.disconnected
    conversation.assert_clean()


def test_a_malformed_chunked_body_fails_a_body_check() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert conversation.reason == "malformed HTTP response: invalid character in chunk size"


def test_an_endless_header_block_fails() -> None:
    conversation = Conversation(DEFAULT).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nX-Long: ")
    for _ in range(64):
        conversation.receive(b"a" * 1024)
    assert conversation.reason == "HTTP response head over 64 KiB"


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"HTTP/1.1 20",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_a_close_before_the_header_block_ends_fails(partial: bytes) -> None:
    conversation = Conversation(DEFAULT).connect().receive(partial).server_closes()
    assert conversation.reason == "connection closed before a complete response"
    conversation.assert_clean()


def test_a_close_in_the_middle_of_a_sized_body_fails() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").server_closes()
    assert conversation.reason == "connection closed before a complete response"


def test_a_close_in_the_middle_of_a_chunked_body_fails() -> None:
    conversation = Conversation(HttpCheck(body=b"ok")).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    conversation.server_closes()
    assert conversation.reason == "connection closed before a complete response"


def test_a_reset_before_a_complete_response_says_so() -> None:
    conversation = Conversation(DEFAULT).connect().receive(b"HTTP/1.1 2")
    conversation.server_closes(clean=False)
    assert conversation.reason == "connection reset before a complete response"


def test_no_response_times_out_waiting_for_headers() -> None:
    conversation = Conversation(DEFAULT, timeout=2.0).connect()
    conversation.reactor.advance(1.9)
    assert not conversation.outcome.fired
    conversation.reactor.advance(0.1)
    assert conversation.reason == "timeout after 2s waiting for response headers"
    assert conversation.transport.disconnected
    conversation.assert_clean()


def test_a_slow_body_times_out_waiting_for_the_body() -> None:
    conversation = Conversation(BODY, timeout=1.5).connect()
    conversation.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstill going")
    conversation.reactor.advance(1.5)
    assert conversation.reason == "timeout after 1.5s waiting for response body"


def test_a_refused_connect_is_described_like_every_check() -> None:
    conversation = Conversation(DEFAULT)
    conversation.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert conversation.reason == "connection refused"
    conversation.assert_clean()


def test_a_connect_that_never_completes_times_out() -> None:
    conversation = Conversation(DEFAULT, timeout=2.0)
    conversation.reactor.advance(2.0)
    assert conversation.reason == "timeout after 2s connecting"
    conversation.assert_clean()


def test_data_after_the_verdict_is_ignored() -> None:
    conversation = Conversation(DEFAULT).connect().receive(OK)
    assert conversation.passed
    conversation.receive(b"garbage after the verdict").server_closes()
    assert conversation.passed


# The judge alone.

RESPONSE = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(RESPONSE))))
def test_any_chunking_gives_the_same_verdict(cuts: list[int]) -> None:
    for wanted, passes in [(b"lo wo", True), (b"worlds", False)]:
        judge = ResponseJudge(HttpCheck(body=wanted))
        for piece in split(RESPONSE, cuts):
            judge.feed(piece)
        if passes:
            assert judge.passed
        else:
            assert judge.failure == "body does not contain 'worlds'"


@given(st.binary(max_size=300))
def test_any_garbage_gives_a_verdict_or_waits_cleanly(data: bytes) -> None:
    judge = ResponseJudge(HttpCheck(body=b"ok"))
    judge.feed(data)
    judge.eof()
    assert judge.decided
