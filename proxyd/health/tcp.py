"""`check = tcp`: connect; optionally send bytes and expect a prefix or a regex match back."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proxyd.config.model import Address, TcpCheck
from proxyd.health.checks import (
    CheckFailed,
    CheckProtocol,
    CheckReactor,
    connect_and_check,
    register,
    show_bytes,
)

MAX_REPLY = 64 * 1024
"""Most bytes searched for `expect_regex` before the check gives up."""


class ReplyMatcher:
    """Decides whether what the server sent matches `expect` (a prefix) or `expect_regex`
    (searched anywhere in the first MAX_REPLY bytes). Sans-IO: feed() bytes, read `matched`
    and `mismatch`."""

    def __init__(
        self,
        expect: bytes | None = None,
        expect_regex: re.Pattern[bytes] | None = None,
        limit: int = MAX_REPLY,
    ) -> None:
        if (expect is None) == (expect_regex is None):
            raise ValueError("exactly one of expect and expect_regex")
        self.expect = expect
        self.expect_regex = expect_regex
        self.limit = limit
        self.received = bytearray()
        self.matched = False
        self.mismatch: str | None = None
        """Why the reply cannot match any more, once that is known."""

    @property
    def decided(self) -> bool:
        return self.matched or self.mismatch is not None

    @property
    def wanted(self) -> str:
        if self.expect is not None:
            return repr(self.expect)
        assert self.expect_regex is not None
        return f"a match of {self.expect_regex.pattern!r}"

    def feed(self, data: bytes) -> None:
        if self.decided:
            return
        if self.expect is not None:
            self._feed_prefix(self.expect, data)
        else:
            assert self.expect_regex is not None
            self._feed_regex(self.expect_regex, data)

    def _feed_prefix(self, expect: bytes, data: bytes) -> None:
        # Enough to compare, and a little more to show in a mismatch's reason.
        self.received += data[: max(0, len(expect) + 64 - len(self.received))]
        head = bytes(self.received[: len(expect)])
        if head == expect:
            self.matched = True
        elif not expect.startswith(head):
            self.mismatch = f"expected {expect!r}, got {show_bytes(bytes(self.received))}"

    def _feed_regex(self, pattern: re.Pattern[bytes], data: bytes) -> None:
        self.received += data[: self.limit - len(self.received)]
        if pattern.search(self.received):
            self.matched = True
        elif len(self.received) >= self.limit:
            self.mismatch = f"no match of {pattern.pattern!r} in the first {self.limit} bytes"

    def got(self) -> str:
        """`expected X, got Y` for what has arrived, or '' when nothing has."""
        if not self.received:
            return ""
        return f"expected {self.wanted}, got {show_bytes(bytes(self.received))}"


class TcpCheckProtocol(CheckProtocol):
    """Passes on connect, after writing `send` when there is nothing to expect, or when the
    reply matches."""

    def __init__(self, check: TcpCheck) -> None:
        self.check = check
        self.matcher: ReplyMatcher | None = None
        if check.expect is not None or check.expect_regex is not None:
            self.matcher = ReplyMatcher(check.expect, check.expect_regex)
            self.waiting_for = self.matcher.wanted

    def connectionMade(self) -> None:
        if self.check.send:
            self.connection.write(self.check.send)
        if self.matcher is None:
            self.succeed()

    def dataReceived(self, data: bytes) -> None:
        if self.matcher is None or self.finished:
            return
        self.matcher.feed(data)
        if self.matcher.matched:
            self.succeed()
        elif self.matcher.mismatch is not None:
            self.fail(self.matcher.mismatch)

    def closed_result(self, reason: Failure) -> CheckFailed | None:
        if self.matcher is not None and self.matcher.received:
            return CheckFailed(self.matcher.got())
        return super().closed_result(reason)

    def timeout_result(self, timeout: str) -> CheckFailed | None:
        if self.matcher is not None and self.matcher.received:
            return CheckFailed(f"timeout after {timeout}: {self.matcher.got()}")
        return super().timeout_result(timeout)


@register(TcpCheck)
def check_tcp(
    reactor: CheckReactor, address: Address, check: TcpCheck, timeout: float
) -> Deferred[None]:
    return connect_and_check(reactor, address, timeout, lambda: TcpCheckProtocol(check))
