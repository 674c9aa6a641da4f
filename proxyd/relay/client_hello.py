"""A sans-IO reader of a TLS ClientHello, for SNI passthrough: the relay peeks at the server
name and the ALPN list without decrypting anything, routes on them, then relays every byte
unchanged to the backend, which does the real handshake.

The ClientHello may be split over any number of reads and of TLS records (RFC 8446 5.1 lets a
handshake message span records). The framing (record headers, handshake type and length) is
checked byte by byte, so garbage is refused at once; the message itself is checked when
complete, and there every length must fit its container exactly.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["UNRECOGNIZED_NAME", "ClientHello", "HelloError", "HelloReader", "alert"]

UNRECOGNIZED_NAME = 112
"""RFC 6066 3: the alert for a server name no one here serves."""

_HANDSHAKE = 22
_HEADER = 5  # content type, 2-byte version, 2-byte length
_MAX_RECORD = 2**14 + 2048
"""RFC 5246 6.2.3: the longest record of any kind a TLS 1.2 peer may send."""
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_ALPN = 16
_HOST_NAME = re.compile(rb"[A-Za-z0-9_.-]{1,255}")


@attrs.frozen
class ClientHello:
    """What a relay that does not terminate TLS can route on."""

    server_name: str | None
    """The first SNI host_name, lower case, without a trailing dot; None without SNI."""
    alpn: tuple[str, ...]
    """The ALPN protocol names offered, in the client's order (latin-1, so any byte survives)."""
    legacy_version: int
    """ClientHello.legacy_version: 0x0303 for TLS 1.2 and 1.3 (1.3 is in an extension)."""


class HelloError(Exception):
    """Not a TLS ClientHello (garbage, plain HTTP, SSLv2) or a malformed one; str() is a short
    reason, fit for a log line."""


def alert(description: int) -> bytes:
    """A fatal alert record in TLS 1.2 framing, which clients of every version read: sent
    before closing, e.g. `alert(UNRECOGNIZED_NAME)` when no pool serves the name."""
    return bytes([21, 3, 3, 0, 2, 2, description])  # alert(21), TLS 1.2, length 2, fatal(2)


class HelloReader:
    """Feed the client's first bytes until `feed` returns the ClientHello; then relay
    `buffered`, which is every byte fed, unchanged.

    Before the result, at most max_size + 5 bytes (one record header) are kept: a hello that
    needs more, counting its record headers, is refused. Bytes fed with or after the end of the
    hello (early data, say) are kept too, since the backend needs them, and every later feed
    returns the same ClientHello. After a HelloError, every later feed raises it again and
    keeps nothing.
    """

    def __init__(self, max_size: int = 65536) -> None:
        self.max_size = max_size
        self._data = bytearray()
        self._pos = 0
        """How far into _data the records have been read."""
        self._record_left = 0
        """Payload bytes of the current record not yet read; 0 between records."""
        self._message = bytearray()
        """The handshake message so far, from the record payloads; never past its end."""
        self._result: ClientHello | None = None
        self._error: HelloError | None = None

    @property
    def buffered(self) -> bytes:
        return bytes(self._data)

    def feed(self, data: bytes) -> ClientHello | None:
        """Buffer `data`; return the ClientHello once it is complete, None while it is not;
        raise HelloError as soon as the bytes cannot be a valid ClientHello."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            self._data += data
            return self._result
        room = self.max_size + _HEADER - len(self._data)
        self._data += data[:room]
        try:
            self._result = self._read()
            if self._result is None and len(data) > room:
                raise HelloError(f"ClientHello larger than {self.max_size} bytes")
        except HelloError as e:
            self._error = e
            raise
        self._data += data[room:]  # what follows the hello, for the backend
        return self._result

    def _read(self) -> ClientHello | None:
        data = self._data
        while self._pos < len(data):
            if self._record_left == 0:
                header = data[self._pos : self._pos + _HEADER]
                length = _record_length(header, first=self._pos == 0)
                if length is None:
                    return None
                self._pos += _HEADER
                self._record_left = length
                continue
            take = min(self._record_left, len(data) - self._pos, self._wanted())
            self._message += data[self._pos : self._pos + take]
            self._pos += take
            self._record_left -= take
            hello = self._read_message()
            if hello is not None:
                return hello
        return None

    def _wanted(self) -> int:
        """Handshake bytes still missing from what is known of the message's length."""
        if len(self._message) < 4:
            return 4 - len(self._message)
        return 4 + int.from_bytes(self._message[1:4], "big") - len(self._message)

    def _read_message(self) -> ClientHello | None:
        message = self._message
        if message[0] != _CLIENT_HELLO:
            raise HelloError(f"handshake message type {message[0]}, not a ClientHello")
        if len(message) == 4 and 4 + self._wanted() > self.max_size:
            raise HelloError(f"ClientHello larger than {self.max_size} bytes")
        if len(message) < 4 or self._wanted():
            return None
        return _parse(bytes(message[4:]))


def _record_length(header: bytearray, first: bool) -> int | None:
    """The payload length of a handshake record header, None until all 5 bytes are there;
    HelloError from the first byte that shows it is not one."""
    if header[0] != _HANDSHAKE:
        if first and header[0] & 0x80:
            raise HelloError("an SSLv2-style hello, not TLS")
        if first and 0x20 <= header[0] < 0x7F:
            raise HelloError(f"plain text, not TLS (starts with {chr(header[0])!r})")
        raise HelloError(f"record type {header[0]}, not a TLS handshake record")
    if len(header) >= 2 and header[1] != 3:
        raise HelloError(f"record version {header[1]}.x, not TLS")
    if len(header) < _HEADER:
        return None
    length = int.from_bytes(header[3:5], "big")
    if not 0 < length <= _MAX_RECORD:
        raise HelloError(f"bad TLS record length {length}")
    return length


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
        length = self.number(size)
        if length > self.left:
            raise HelloError(f"{what} length {length} runs past the {self.what}")
        return _Cursor(self.take(length), what)

    def rest(self) -> bytes:
        return self.take(self.left)

    def end(self) -> None:
        if self.left:
            raise HelloError(f"{self.left} stray bytes after the {self.what}")


def _parse(body: bytes) -> ClientHello:
    """RFC 8446 4.1.2 (the same layout as RFC 5246 7.4.1.2, extensions optional)."""
    hello = _Cursor(body, "ClientHello")
    version = hello.number(2)
    hello.take(32)  # random
    if hello.vector(1, "session id").left > 32:
        raise HelloError("session id longer than 32 bytes")
    suites = hello.vector(2, "cipher suites").left
    if suites == 0 or suites % 2:
        raise HelloError(f"bad cipher suites length {suites}")
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
                raise HelloError(f"extension {kind} sent twice")  # RFC 8446 4.2
            seen.add(kind)
            if kind == _SERVER_NAME:
                name = _server_name(data)
            elif kind == _ALPN:
                alpn = _alpn(data)
    hello.end()
    return ClientHello(name, alpn, version)


def _server_name(data: _Cursor) -> str | None:
    """RFC 6066 3: the first host_name (type 0) of the list; other types are skipped, assuming
    the same 2-byte length framing, since the backend is the one to judge them."""
    names = data.vector(2, "server name list")
    data.end()
    if names.left == 0:
        raise HelloError("empty server name list")
    found: str | None = None
    while names.left:
        kind = names.number(1)
        value = names.vector(2, "server name").rest()
        if kind != 0 or found is not None:
            continue
        if not _HOST_NAME.fullmatch(value):
            raise HelloError(f"invalid server name {value[:64]!r}")
        found = value.decode("ascii").lower().removesuffix(".")
        if not found:
            raise HelloError("empty server name")
    return found


def _alpn(data: _Cursor) -> tuple[str, ...]:
    """RFC 7301 3.1: a nonempty list of nonempty protocol names."""
    names = data.vector(2, "ALPN list")
    data.end()
    if names.left == 0:
        raise HelloError("empty ALPN list")
    protocols = []
    while names.left:
        protocol = names.vector(1, "ALPN protocol name").rest()
        if not protocol:
            raise HelloError("empty ALPN protocol name")
        protocols.append(protocol.decode("latin-1"))
    return tuple(protocols)
