"""`check = http [METHOD] [PATH] [host NAME] [expect CODES] [body STR]`: one HTTP/1.1
request; up when the status is in CODES and, with `body`, the body holds STR."""

from __future__ import annotations

from typing import Final

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from proxyd.config.model import Address, HttpCheck
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
)

MAX_BODY: Final = 64 * 1024
"""Most body bytes searched for `body` before the check gives up."""
MAX_HEAD: Final = 64 * 1024
"""Most bytes accepted before the end of the response's header block."""


def describe_ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    """`200-399`, `200`, `2xx`, `200, 301-302`: status ranges the way the config writes them."""
    parts = []
    for low, high in ranges:
        if low == high:
            parts.append(str(low))
        elif low % 100 == 0 and high == low + 99:
            parts.append(f"{low // 100}xx")
        else:
            parts.append(f"{low}-{high}")
    return ", ".join(parts)


def request_bytes(check: HttpCheck, host: str) -> bytes:
    """The whole request: a head without a body, asking the server to close after it."""
    host_bytes = host.encode("ascii") if host.isascii() else host.encode("idna")
    return b"".join(
        [
            check.method.encode("ascii"),
            b" ",
            check.path.encode("ascii"),
            b" HTTP/1.1\r\nHost: ",
            host_bytes,
            b"\r\nUser-Agent: proxyd-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        ]
    )


class _Stop(Exception):
    """Raised from a parser callback once the response is judged; llhttp stops there."""


class ResponseJudge:
    """Decides whether one HTTP response passes an HttpCheck. Sans-IO: feed() what the server
    sends, eof() when it closes; then read `passed` and `failure`.

    Interim 1xx responses (other than 101) are skipped. A status outside `expect` fails at the
    end of the header block; a status inside it passes there too unless the body must hold
    `body`, which is then searched in the first MAX_BODY bytes of the (de-chunked) body and
    passes as soon as it is seen.
    """

    def __init__(self, check: HttpCheck, *, max_body: int = MAX_BODY) -> None:
        self.check = check
        self.wanted = check.body or None
        """What the body must contain; None when only the status counts."""
        self.max_body = max_body
        self.passed = False
        self.failure: str | None = None
        self.status: int | None = None
        """The final response's status, once its header block has arrived."""
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0
        self._interim = False
        self._chunked = False
        self._has_length = False
        self._has_coding = False
        self._body = bytearray()

    @property
    def decided(self) -> bool:
        return self.passed or self.failure is not None

    @property
    def in_body(self) -> bool:
        """The header block has arrived and the body is being searched."""
        return self.status is not None and not self.decided

    def feed(self, data: bytes) -> None:
        if self.decided or not data:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 answer, already judged at its header block.
            pass
        except httptools.HttpParserError as e:
            if not self.decided:
                message = str(e) or type(e).__name__
                self.failure = f"malformed HTTP response: {message[:1].lower()}{message[1:]}"
            return
        if self.status is None and not self.decided:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self.failure = f"HTTP response head over {MAX_HEAD // 1024} KiB"

    def eof(self) -> None:
        """The server closed: that ends a body without Content-Length or chunking (RFC 9112
        6.3); anything else unfinished is a cut response."""
        if self.decided:
            return
        if self.in_body and self._close_delimited():
            self._body_complete()
        else:
            self.failure = "connection closed before a complete response"

    def _close_delimited(self) -> bool:
        if self._chunked:
            return False
        # A response's Transfer-Encoding that does not end in chunked is read to the close.
        return self._has_coding or not self._has_length

    # httptools callbacks.

    def on_message_begin(self) -> None:
        self._interim = False
        self._chunked = self._has_length = self._has_coding = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length":
            self._has_length = True
        elif lower == b"transfer-encoding":
            self._has_coding = True
            self._chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            return
        self.status = status
        if not any(low <= status <= high for low, high in self.check.expect):
            self.failure = f"HTTP {status} (expected {describe_ranges(self.check.expect)})"
        elif self.wanted is None:
            self.passed = True
        elif self.check.method == "HEAD" or status in (101, 204, 304):
            # No body follows; llhttp cannot be told so for HEAD, and would wait for one.
            self._body_complete()
        if self.decided:
            raise _Stop

    def on_body(self, body: bytes) -> None:
        wanted = self.wanted
        if wanted is None or self.decided:
            return
        received = self._body
        start = max(0, len(received) - len(wanted) + 1)
        received += body[: self.max_body - len(received)]
        if received.find(wanted, start) >= 0:
            self.passed = True
        elif len(received) >= self.max_body:
            self.failure = f"{self._no_match()} in the first {self.max_body // 1024} KiB"
        if self.decided:
            raise _Stop

    def on_message_complete(self) -> None:
        if self._interim:
            return
        self._body_complete()
        if self.decided:
            raise _Stop

    def _body_complete(self) -> None:
        if not self.decided:
            self.failure = self._no_match()

    def _no_match(self) -> str:
        assert self.wanted is not None
        return f"body does not contain {self.wanted.decode('utf-8', 'backslashreplace')!r}"


class HttpCheckProtocol(CheckProtocol):
    """Writes the request on connect and passes or fails as soon as the response decides."""

    waiting_for = "response headers"

    def __init__(self, check: HttpCheck, host: str) -> None:
        self.check = check
        self.request = request_bytes(check, host)
        self.judge = ResponseJudge(check)

    def connectionMade(self) -> None:
        self.connection.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        judge = self.judge
        judge.feed(data)
        if judge.passed:
            self.succeed()
        elif judge.failure is not None:
            self.fail(judge.failure)
        elif judge.in_body:
            self.waiting_for = "response body"

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        judge = self.judge
        if reason.check(ConnectionDone):
            judge.eof()
        elif not judge.decided:
            judge.failure = "connection reset before a complete response"
        if judge.passed:
            return None
        assert judge.failure is not None
        return CheckFailed(judge.failure)


@register(HttpCheck)
def check_http(
    reactor: CheckReactor, address: Address, check: HttpCheck, timeout: float
) -> Deferred[None]:
    host = check.host if check.host is not None else str(address)
    return connect_and_check(reactor, address, timeout, lambda: HttpCheckProtocol(check, host))
