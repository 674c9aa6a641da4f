"""etcd keys under a prefix to a pool's servers, through etcd v3's JSON gateway, sans-IO.

Each key under the prefix holds one server as a `servers` line, e.g. `127.0.0.1:8001
weight=2` (or `... backup`, `... max_connections=100`); a value that does not parse is left
out and reported. The driver reads every key (POST /v3/kv/range, key and range_end base64),
then watches from the revision after (POST /v3/watch, a stream of JSON lines), applying each
event here. A watch cancelled because its revision was compacted reads everything again.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import attrs

from proxyd.config.errors import Invalid
from proxyd.discovery.common import Found, bounded, server_of

RANGE_PATH = b"/v3/kv/range"
WATCH_PATH = b"/v3/watch"
MAX_LINE = 16 << 20
"""The longest watch message kept in memory: a longer one is a broken stream."""


class EtcdError(Exception):
    """An answer of the gateway that is not what etcd sends: the source failed."""


class Compacted(Exception):
    """The watch's revision was compacted away: read every key again."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def range_end(prefix: bytes) -> bytes:
    """The end of the key range of `prefix` (etcd's prefix end: the prefix with its last
    byte below 0xff incremented, the bytes after it dropped; b"\\0", every key, if none)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def range_request(prefix: bytes) -> bytes:
    """The body of POST /v3/kv/range for every key under `prefix`."""
    return json.dumps({"key": _b64(prefix), "range_end": _b64(range_end(prefix))}).encode()


def watch_request(prefix: bytes, start_revision: int) -> bytes:
    """The body of POST /v3/watch for the keys under `prefix` from `start_revision` on."""
    create = {
        "key": _b64(prefix),
        "range_end": _b64(range_end(prefix)),
        "start_revision": str(start_revision),
    }
    return json.dumps({"create_request": create}).encode()


def _object(data: bytes | str) -> dict[str, Any]:
    try:
        found = json.loads(data)
    except ValueError as e:
        raise EtcdError(f"not JSON: {e}") from None
    if not isinstance(found, dict):
        raise EtcdError("not a JSON object")
    if "error" in found:
        error = found["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise EtcdError(f"etcd error: {message}")
    return found


def _decode(kv: dict[str, Any], field: str) -> str:
    try:
        return base64.b64decode(kv.get(field, ""), validate=True).decode("utf-8")
    except (ValueError, TypeError) as e:
        raise EtcdError(f"bad {field} in {kv!r}: {e}") from None


def _revision(header: Any) -> int:
    try:
        return int(header["revision"])
    except (KeyError, TypeError, ValueError):
        raise EtcdError(f"no revision in {header!r}") from None


@attrs.frozen
class Event:
    """A key put (value set) or deleted (value None)."""

    key: str
    value: str | None


@attrs.frozen
class WatchMessage:
    """One message of the watch stream: its events and the revision it brings the watch to."""

    events: tuple[Event, ...]
    revision: int | None
    """The header's revision (None on a message without one)."""


def parse_range(body: bytes) -> tuple[int, dict[str, str]]:
    """The revision and the values by key of a /v3/kv/range answer."""
    found = _object(body)
    revision = _revision(found.get("header"))
    values = {_decode(kv, "key"): _decode(kv, "value") for kv in found.get("kvs", ())}
    return revision, values


def parse_watch(line: bytes) -> WatchMessage:
    """One JSON line of the /v3/watch stream. Raises Compacted when etcd cancelled the
    watch because its start revision was compacted, EtcdError when it cancelled it for
    another reason or sent something else than a watch result."""
    found = _object(line)
    result = found.get("result")
    if not isinstance(result, dict):
        raise EtcdError(f"not a watch result: {line[:200]!r}")
    if result.get("canceled"):
        if result.get("compact_revision"):
            raise Compacted(str(result["compact_revision"]))
        raise EtcdError(f"watch cancelled: {result.get('cancel_reason', 'no reason')}")
    header = result.get("header") or {}
    revision = int(header["revision"]) if "revision" in header else None
    events = []
    for event in result.get("events", ()):
        kv = event.get("kv", {})
        key = _decode(kv, "key")
        # PUT is the enum's zero value: the JSON mapping leaves it out.
        if event.get("type", "PUT") == "DELETE":
            events.append(Event(key, None))
        else:
            events.append(Event(key, _decode(kv, "value")))
    return WatchMessage(tuple(events), revision)


class Lines:
    """Splits a byte stream into lines (the gateway sends one JSON object a line)."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buffer = b""
        self._limit = limit

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                break
            self._buffer = rest
            if line.strip():
                yield line
        if len(self._buffer) > self._limit:
            raise EtcdError(f"a watch message longer than {self._limit} bytes")


class EtcdServers:
    """The servers under a prefix as etcd has them: the values by key and the revision seen.

    reset() takes a full read, apply() a watch message; found() is the server list, each key's
    server in key order (the bound leaves out the last keys), and `invalid` the keys whose
    value does not parse, with why."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.revision = 0
        self.values: dict[str, str] = {}
        self.invalid: dict[str, str] = {}

    def reset(self, revision: int, values: dict[str, str]) -> None:
        self.revision = revision
        self.values = dict(values)

    def apply(self, message: WatchMessage) -> bool:
        """Take a watch message; True if it changed a value."""
        changed = False
        for event in message.events:
            if event.value is None:
                changed |= self.values.pop(event.key, None) is not None
            elif self.values.get(event.key) != event.value:
                self.values[event.key] = event.value
                changed = True
        if message.revision is not None:
            self.revision = max(self.revision, message.revision)
        return changed

    def found(self) -> Found:
        servers = []
        invalid = {}
        for key in sorted(self.values):
            try:
                servers.append(server_of(self.values[key]))
            except Invalid as e:
                invalid[key] = f"expected {e.expected}; found {e.found}"
        self.invalid = invalid
        return bounded(servers, self.limit)
