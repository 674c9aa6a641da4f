"""A stored body sent to a client (proxyd.filters.api.BodySource): read from its store in
pieces, a few pieces a reactor turn so that a large body never sits whole in memory nor
holds the reactor, paused while the client's write buffer is full; the whole of a committed
body is checked against its CRC-32 as it goes (a mismatch cuts the response and drops the
entry); a body still being fetched (read-while-writer) is followed as it grows.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Final, Protocol

from proxyd.cache.store import Body
from proxyd.filters.api import BodySink

PIECE: Final = 64 * 1024
PIECES_A_TURN: Final = 4
"""256 KiB a reactor turn at most, so that other connections get their turn."""


class Growing(Protocol):
    """A body still being written (proxyd.cache.fills.Fill)."""

    @property
    def done(self) -> bool:
        """Committed: no byte will be added."""

    @property
    def failed(self) -> bool: ...

    def follow(self, pump: Pump) -> None:
        """Call pump.more() when bytes are added, or the body ends or fails."""

    def unfollow(self, pump: Pump) -> None: ...


class Pump:
    """Bytes first to first + size of `body` (size None: to its end, which a growing body
    tells) to a sink."""

    def __init__(
        self,
        reactor: Any,
        body: Body,
        first: int = 0,
        size: int | None = None,
        *,
        checksum: int | None = None,
        corrupt: Callable[[], None] | None = None,
        growing: Growing | None = None,
        length: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._body = body
        self._offset = first
        self._end = None if size is None else first + size
        self._checksum = checksum
        self._crc = 0
        self._corrupt = corrupt
        self._growing = growing
        self._length = size if size is not None else length
        self._sink: BodySink | None = None
        self._paused = False
        self._call: Any = None
        self._waiting = False

    @property
    def length(self) -> int | None:
        return self._length

    def start(self, sink: BodySink) -> None:
        self._sink = sink
        if self._growing is not None:
            self._growing.follow(self)
        self._send()

    def pause(self) -> None:
        self._paused = True
        self._cancel()

    def resume(self) -> None:
        if self._sink is None or not self._paused:
            return
        self._paused = False
        self._later()

    def more(self) -> None:
        """The growing body has more bytes, or ended."""
        if self._waiting and not self._paused:
            self._waiting = False
            self._later()

    def stop(self) -> None:
        self._cancel()
        self._sink = None
        if self._growing is not None:
            self._growing.unfollow(self)
            self._growing = None
        self._body.close()

    def _later(self) -> None:
        if self._call is None:
            self._call = self._reactor.callLater(0, self._send)

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _send(self) -> None:
        self._call = None
        sink = self._sink
        if sink is None:
            return
        for _ in range(PIECES_A_TURN):
            if self._paused or self._sink is None:
                return
            end = self._end
            available = self._body.length
            limit = available if end is None else min(end, available)
            if self._offset >= limit:
                if self._ended(available):
                    self._over()
                else:
                    self._waiting = True  # more() resumes
                return
            try:
                data = self._body.read_at(self._offset, min(PIECE, limit - self._offset))
            except OSError as e:
                self._fail(f"stored body unreadable: {e}")
                return
            if not data:
                self._fail("stored body shorter than its index says")
                return
            self._offset += len(data)
            if self._checksum is not None:
                self._crc = zlib.crc32(data, self._crc)
            sink.source_data(data)
        self._later()

    def _ended(self, available: int) -> bool:
        growing = self._growing
        if growing is not None and growing.failed:
            self._fail("the response being stored was cut")
            return False
        if self._end is not None and self._offset >= self._end:
            return True
        if growing is None:
            if self._end is not None:
                self._fail("stored body shorter than its index says")
                return False
            return True
        return growing.done and self._offset >= self._body.length

    def _over(self) -> None:
        sink = self._sink
        if self._checksum is not None and self._crc != self._checksum:
            if self._corrupt is not None:
                self._corrupt()
            self._fail("stored body failed its checksum")
            return
        self.stop()
        if sink is not None:
            sink.source_end()

    def _fail(self, why: str) -> None:
        sink = self._sink
        self.stop()
        if sink is not None:
            sink.source_failed(why)
