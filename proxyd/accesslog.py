"""Access logs: one JSON object a line, to stdout or a file, shared by every relay."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, cast

from proxyd.clock import Clock, soon

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))
"""json.dumps with any argument builds a new encoder per call; this one is made once."""
json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii
"""A str as the encoder writes it (quoted, non-ASCII escaped)."""


def json_value(value: object) -> str:
    """A scalar as the encoder writes it: for lines built without a dict (AccessLog.write)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return json_string(cast(str, value))
    if kind is int or (kind is float and math.isfinite(cast(float, value))):
        return repr(value)
    return _ENCODER.encode(value)


class AccessLog:
    """Writes records as JSON lines. `open('-')` is stdout, `open('off')` discards."""

    def __init__(self, stream: IO[str] | None, target: str) -> None:
        self._stream = stream
        self.target = target
        self._flush_pending = False

    @classmethod
    def open(cls, target: str) -> AccessLog:
        if target == "off":
            return cls(None, target)
        if target == "-":
            return cls(sys.stdout, target)
        return cls(_append(target), target)

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def log(self, record: Mapping[str, Any], clock: Clock | None = None) -> None:
        """Write `record` as a line. Without `clock` the line is flushed at once; with it, at
        the end of the reactor's turn (proxyd.clock.soon), together with every line written
        before then (one write() for all the requests that ended in one turn)."""
        if self._stream is not None:
            self.write(_ENCODER.encode(record), clock)

    def write(self, line: str, clock: Clock | None = None) -> None:
        """Write `line`, one JSON object already encoded; flushed as log() says."""
        stream = self._stream
        if stream is None:
            return
        stream.write(line + "\n")
        if clock is None:
            stream.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            soon(clock)(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        if self._stream is not None:
            self._stream.flush()

    def reopen(self) -> None:
        """Open the file again by its path (logrotate has moved it away), writing what is
        buffered to the old one first. stdout and `off` stay as they are. If the path cannot
        be opened, the old file is kept and OSError raised."""
        if self._stream is None or self.target == "-":
            return
        old, self._stream = self._stream, _append(self.target)
        old.close()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            if stream is sys.stdout:
                stream.flush()
            else:
                stream.close()


def _append(path: str) -> IO[str]:
    """The access-log file at `path`, opened for appending: kept open as long as proxyd runs
    (or until reopen())."""
    return open(path, "a", encoding="utf-8")


_MILLIS: Final = tuple(f".{millis:03d}Z" for millis in range(1000))
"""The end of a timestamp for each millisecond: formatting it cost half a timestamp."""


class UtcMillis:
    """`seconds` since the epoch as `2025-01-31T12:00:00.123Z`, the same text as
    proxyd.relay.session.iso_utc, with the date and time of the last whole second kept:
    datetime formatting is then done once a second instead of once a request."""

    def __init__(self) -> None:
        self._second = math.nan
        self._prefix = ""

    def __call__(self, seconds: float) -> str:
        # datetime.fromtimestamp's rounding: the fraction to the nearest microsecond, half to
        # even, carried into the seconds.
        fraction, whole = math.modf(seconds)
        micros = round(fraction * 1e6)
        if micros >= 1_000_000:
            whole += 1.0
            micros -= 1_000_000
        elif micros < 0:
            whole -= 1.0
            micros += 1_000_000
        if whole != self._second:
            self._second = whole
            self._prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return self._prefix + _MILLIS[micros // 1000]


utc_millis: Final = UtcMillis()
