"""`check = smtp [DOMAIN]`: a 220 banner, `EHLO DOMAIN` answered 250, then QUIT (RFC 5321)."""

from __future__ import annotations

import re

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.config.model import Address, SmtpCheck
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
    show_bytes,
)

MAX_LINE = 2048
"""Longest reply line accepted; RFC 5321 4.5.3.1.5 allows 512 octets, servers stretch it."""
MAX_LINES = 100
"""Most lines in one multi-line reply (an EHLO reply lists one extension a line)."""

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)


@attrs.frozen
class Reply:
    """One complete reply: its code and the text of each of its lines."""

    code: int
    lines: tuple[bytes, ...]

    def describe(self, limit: int = 60) -> str:
        """`554 5.3.2 Service unavailable`, from the first line, cut at `limit` characters."""
        text = self.lines[0].decode("utf-8", "replace") if self.lines else ""
        text = f"{self.code} {text}".rstrip()
        return text if len(text) <= limit else text[: limit - 3] + "..."


class ReplyError(Exception):
    """What arrived is not an SMTP reply."""


class ReplyReader:
    """Splits the server's bytes into Replies (RFC 5321 4.2): `CODE-text` lines continue a
    reply, a `CODE text` (or bare `CODE`) line ends it. Sans-IO: feed() bytes, get Replies."""

    def __init__(self) -> None:
        self._buffer = b""
        self._code: bytes | None = None
        self._lines: list[bytes] = []

    def feed(self, data: bytes) -> list[Reply]:
        """The replies completed by `data`; ReplyError on anything that is not SMTP."""
        self._buffer += data
        replies: list[Reply] = []
        while True:
            line, found, rest = self._buffer.partition(b"\n")
            if not found:
                if len(self._buffer) > MAX_LINE:
                    raise ReplyError(f"line longer than {MAX_LINE} bytes")
                return replies
            self._buffer = rest
            reply = self._line(line.removesuffix(b"\r"))
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        match = _REPLY_LINE.match(line)
        if match is None:
            raise ReplyError(f"not an SMTP reply: {show_bytes(line)}")
        code, separator, text = match.groups()
        if self._code is not None and code != self._code:
            raise ReplyError(f"reply code changed from {self._code.decode()} to {code.decode()}")
        self._lines.append(text or b"")
        if separator == b"-":
            if len(self._lines) >= MAX_LINES:
                raise ReplyError(f"reply longer than {MAX_LINES} lines")
            self._code = code
            return None
        reply = Reply(int(code), tuple(self._lines))
        self._code = None
        self._lines = []
        return reply


class SmtpCheckProtocol(CheckProtocol):
    """Banner, EHLO, QUIT. Passes on the 250 to EHLO; then waits (within the timeout) for
    the answer to QUIT so that the server, not proxyd, is the one to close."""

    waiting_for = "banner"

    def __init__(self, check: SmtpCheck) -> None:
        self.check = check
        self.reader = ReplyReader()
        self.passed = False

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            replies = self.reader.feed(data)
        except ReplyError as e:
            self.fail(f"garbage from server: {e}")
            return
        for reply in replies:
            self._reply(reply)
            if self.finished:
                return

    def _reply(self, reply: Reply) -> None:
        if self.waiting_for == "banner":
            if reply.code != 220:
                self.fail(f"banner {reply.describe()}")
                return
            domain = self.check.domain
            encoded = domain.encode("ascii") if domain.isascii() else domain.encode("idna")
            self.connection.write(b"EHLO " + encoded + b"\r\n")
            self.waiting_for = "EHLO reply"
        elif self.waiting_for == "EHLO reply":
            if reply.code != 250:
                self.fail(f"EHLO answered {reply.describe()}")
                return
            self.passed = True
            self.connection.write(b"QUIT\r\n")
            self.waiting_for = "QUIT reply"
        else:
            self.succeed()

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        return None if self.passed else super().closed_result(reason)

    def timeout_result(self, timeout: str) -> CheckFailed | None:
        return None if self.passed else super().timeout_result(timeout)


@register(SmtpCheck)
def check_smtp(
    reactor: CheckReactor, address: Address, check: SmtpCheck, timeout: float
) -> Deferred[None]:
    return connect_and_check(reactor, address, timeout, lambda: SmtpCheckProtocol(check))
