"""A sans-IO reader of a TLS ClientHello, for SNI passthrough: the relay peeks at the server
name and the ALPN list without decrypting anything, then relays every byte unchanged.

The ClientHello may be split over any number of reads and TLS records (RFC 8446 5.1 allows a
handshake message to span records); every length must fit its container exactly, or the
reader raises HelloError as soon as that is known.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["UNRECOGNIZED_NAME", "ClientHello", "HelloError", "HelloReader", "alert"]

UNRECOGNIZED_NAME = 112
"""RFC 6066 3: the alert for a server name no one here serves."""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_MAX_RECORD = 16384 + 2048
"""RFC 8446 5.2: a ciphertext record is at most 2^14 + 256; a TLS 1.2 one 2^14 + 2048."""
_SERVER_NAME = 0
_ALPN = 16
_HOST_NAME = re.compile(rb"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,253}[A-Za-z0-9_.])?$")


@attrs.frozen
class ClientHello:
    server_name: str | None
    """The SNI host_name, lower case, without a trailing dot; None without the extension."""
    alpn: tuple[str, ...]
    legacy_version: int


class HelloError(Exception):
    """Not a TLS ClientHello, or a malformed one; str() is a short reason."""


def alert(description: int) -> bytes:
    """A fatal alert record (TLS 1.2 framing, which every TLS client reads)."""
    return bytes([21, 3, 3, 0, 2, 2, description])


class HelloReader:
    """Feed bytes until `feed` returns the ClientHello. `buffered` is everything fed, to be
    relayed. After a result or an error, further feeds return or raise the same."""

    def __init__(self, max_size: int = 65536) -> None:
        self.max_size = max_size
        self._data = bytearray()
        self._offset = 0
        """Where the next record header starts in _data."""
        self._message = bytearray()
        """The handshake bytes reassembled from the records so far."""
        self._result: ClientHello | None = None
        self._error: HelloError | None = None

    @property
    def buffered(self) -> bytes:
        return bytes(self._data)

    def feed(self, data: bytes) -> ClientHello | None:
        if self._result is not None or self._error is not None:
            return self._done()
        self._data += data
        try:
            self._result = self._read_records()
        except HelloError as e:
            self._error = e
            raise
        return self._result

    def _done(self) -> ClientHello | None:
        if self._error is not None:
            raise self._error
        return self._result

    def _read_records(self) -> ClientHello | None:
        data = self._data
        while len(data) - self._offset >= 5:
            start = self._offset
            if data[start] != _HANDSHAKE:
                raise HelloError(_not_tls(bytes(data[start : start + 5]), start == 0))
            if data[start + 1] != 3:
                raise HelloError("not a TLS record (version)")
            length = int.from_bytes(data[start + 3 : start + 5], "big")
            if not 0 < length <= _MAX_RECORD:
                raise HelloError(f"bad TLS record length {length}")
            if len(data) - start - 5 < length:
                break
            self._message += data[start + 5 : start + 5 + length]
            self._offset = start + 5 + length
            hello = self._read_message()
            if hello is not None:
                return hello
        if len(data) > self.max_size + 5:
            raise HelloError(f"ClientHello larger than {self.max_size} bytes")
        if len(data) - self._offset >= 1 and data[self._offset] != _HANDSHAKE:
            raise HelloError(
                _not_tls(bytes(data[self._offset : self._offset + 5]), self._offset == 0)
            )
        return None

    def _read_message(self) -> ClientHello | None:
        message = self._message
        if len(message) < 4:
            return None
        if message[0] != _CLIENT_HELLO:
            raise HelloError(f"handshake message {message[0]} is not a ClientHello")
        length = int.from_bytes(message[1:4], "big")
        if length > self.max_size:
            raise HelloError(f"ClientHello larger than {self.max_size} bytes")
        if len(message) < 4 + length:
            return None
        return _parse(bytes(message[4 : 4 + length]))


def _not_tls(head: bytes, first: bool) -> str:
    if first and head[:1] and head[0] & 0x80:
        return "an SSLv2 hello, not TLS"
    if first and head[:1].isalpha():
        return f"not TLS: {head!r}..."
    return "not a TLS handshake record"


class _Cursor:
    """Reads length-prefixed fields, each of which must fit what contains it."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise HelloError(f"truncated {self.what}")
        piece = self.data[self.pos : self.pos + n]
        self.pos += n
        return piece

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int, what: str) -> _Cursor:
        return _Cursor(self.take(self.number(size)), what)

    def end(self) -> None:
        if self.left:
            raise HelloError(f"{self.left} stray bytes after the {self.what}")


def _parse(body: bytes) -> ClientHello:
    hello = _Cursor(body, "ClientHello")
    version = hello.number(2)
    hello.take(32)  # random
    session_id = hello.vector(1, "session id")
    if session_id.left > 32:
        raise HelloError("session id longer than 32 bytes")
    suites = hello.vector(2, "cipher suites")
    if suites.left == 0 or suites.left % 2:
        raise HelloError("bad cipher suites length")
    if hello.vector(1, "compression methods").left == 0:
        raise HelloError("no compression method")
    name: str | None = None
    alpn: tuple[str, ...] = ()
    if hello.left:
        extensions = hello.vector(2, "extensions")
        seen: set[int] = set()
        while extensions.left:
            kind = extensions.number(2)
            data = extensions.vector(2, f"extension {kind}")
            if kind in seen:
                raise HelloError(f"extension {kind} twice")  # RFC 8446 4.2
            seen.add(kind)
            if kind == _SERVER_NAME:
                name = _server_name(data)
            elif kind == _ALPN:
                alpn = _alpn(data)
    hello.end()
    return ClientHello(name, alpn, version)


def _server_name(data: _Cursor) -> str | None:
    names = data.vector(2, "server name list")
    data.end()
    found: str | None = None
    while names.left:
        kind = names.number(1)
        entry = names.vector(2, "server name")
        value = entry.take(entry.left)
        if kind != 0 or found is not None:
            continue  # RFC 6066 3: only host_name (0) exists; the first one counts
        if not _HOST_NAME.match(value) or len(value) > 255:
            raise HelloError("invalid server name")
        found = value.decode("ascii").lower().rstrip(".")
    return found or None


def _alpn(data: _Cursor) -> tuple[str, ...]:
    names = data.vector(2, "ALPN list")
    data.end()
    protocols = []
    while names.left:
        protocol = names.vector(1, "ALPN name")
        if protocol.left == 0:
            raise HelloError("empty ALPN protocol name")
        protocols.append(protocol.take(protocol.left).decode("latin-1"))
    return tuple(protocols)
