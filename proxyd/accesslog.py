"""Access logs: one JSON object a line, to stdout or a file, shared by every relay."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import IO, Any


class AccessLog:
    """Writes records as JSON lines. `open('-')` is stdout, `open('off')` discards."""

    def __init__(self, stream: IO[str] | None, target: str) -> None:
        self._stream = stream
        self.target = target

    @classmethod
    def open(cls, target: str) -> AccessLog:
        if target == "off":
            return cls(None, target)
        if target == "-":
            return cls(sys.stdout, target)
        return cls(open(target, "a", encoding="utf-8", buffering=1), target)

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def log(self, record: Mapping[str, Any]) -> None:
        if self._stream is None:
            return
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None
