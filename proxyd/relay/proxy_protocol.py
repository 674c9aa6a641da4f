"""PROXY protocol (HAProxy's proxy-protocol.txt) headers: encoding to send, reading received ones.

Encoding is pure functions of two addresses. Reading frames the header out of the first bytes of
a connection and hands it to Twisted's own parsers (twisted.protocols.haproxy's private ones,
through proxyd.twisted_internals), then checks what they accept loosely (address syntax, family,
port range) so that only real IP addresses come out.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from proxyd.config.model import Address
from proxyd.twisted_internals import InvalidProxyHeader, V1Parser, V2Parser

V1_PREFIX = b"PROXY"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12-byte block that opens every version 2 header (spec section 2.2)."""

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_TCP4 = 0x11  # AF_INET, STREAM
_V2_TCP6 = 0x21  # AF_INET6, STREAM
_V2_UNSPEC = 0x00
_V2_FIXED = 16  # signature, ver_cmd, fam, len
_V1_MAX = 107  # longest v1 line including CRLF (spec section 2.1)

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyHeaderError(ValueError):
    """The first bytes of a connection are not a valid PROXY protocol header."""


def address_of(address: IAddress | None) -> Address | None:
    """The IP host and port of a Twisted address; None when it is not an IP address."""
    if isinstance(address, IPv4Address | IPv6Address):
        host = _normal_host(address.host)
        if host is not None:
            return Address(host, address.port)
    return None


@functools.lru_cache(maxsize=4096)
def _normal_host(host: str) -> str | None:
    """An IP address's text as ipaddress writes it (parsed once per client: it takes a few
    microseconds, and clients come back)."""
    ip = _parse_ip(host)
    return None if ip is None else str(ip)


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A version 1 (text) header; `PROXY UNKNOWN` when either address is not a usable IP."""
    pair = _ip_pair(source, destination)
    if pair is None or source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source.port} {destination.port}\r\n".encode("ascii")


def encode_v2(source: Address | None, destination: Address | None) -> bytes:
    """A version 2 (binary) header; a LOCAL one with no addresses when they are not usable IPs."""
    pair = _ip_pair(source, destination)
    if pair is None or source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, _V2_UNSPEC, 0)
    src, dst = pair
    ports = struct.pack("!HH", source.port, destination.port)
    body = src.packed + dst.packed + ports
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


def encode(version: str, source: Address | None, destination: Address | None) -> bytes:
    """The header `send_proxy = v1 | v2` puts before the first relayed byte."""
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    raise ValueError(f"PROXY protocol version must be 'v1' or 'v2', not {version!r}")


@attrs.frozen
class ReceivedHeader:
    """What a PROXY header said. Addresses are None for LOCAL, UNKNOWN and non-IP families:
    the receiver then uses the real connection's addresses (spec sections 2.1 and 2.2)."""

    source: Address | None
    destination: Address | None


class HeaderReader:
    """Reads one PROXY header, v1 or v2, from the first bytes of a connection (sans-IO).

    `feed()` returns None until the header is complete, then the header and the bytes after
    it; it raises ProxyHeaderError as soon as the bytes cannot start a valid header. At most
    one header is buffered: 107 bytes for v1, 16 + 65535 for v2. This frames the header;
    Twisted's parsers read its fields.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._version: int | None = None

    def feed(self, data: bytes) -> tuple[ReceivedHeader, bytes] | None:
        self._buffer += data
        if self._version is None:
            self._version = self._detect()
        framed = self._frame_v1() if self._version == 1 else self._frame_v2()
        if framed is None:
            return None
        header, rest = framed
        self._buffer = b""
        if header == b"PROXY UNKNOWN":  # the spec's short form, which V1Parser refuses
            return ReceivedHeader(None, None), rest
        try:
            info = V1Parser.parse(header) if self._version == 1 else V2Parser.parse(header)
            received = ReceivedHeader(_checked(info.source), _checked(info.destination))
        except (InvalidProxyHeader, ValueError, KeyError) as e:
            raise ProxyHeaderError(f"invalid PROXY protocol header: {e!r}") from e
        return received, rest

    def _detect(self) -> int | None:
        """The version the buffer starts with; None while it cannot tell yet."""
        buf = self._buffer
        if V2_SIGNATURE.startswith(buf[:12]) and len(buf) < _V2_FIXED:
            return None
        if buf.startswith(V2_SIGNATURE):
            if buf[12] & 0xF0 != 0x20:
                raise ProxyHeaderError("PROXY protocol v2 header with a version other than 2")
            return 2
        if V1_PREFIX.startswith(buf[:5]) and len(buf) < len(V1_PREFIX):
            return None
        if buf.startswith(V1_PREFIX):
            return 1
        raise ProxyHeaderError("connection does not start with a PROXY protocol header")

    def _frame_v1(self) -> tuple[bytes, bytes] | None:
        """The line without its CRLF, which must end within the first 107 bytes."""
        end = self._buffer.find(b"\r\n", 0, _V1_MAX)
        if end < 0:
            if len(self._buffer) >= _V1_MAX:
                raise ProxyHeaderError("PROXY protocol v1 line longer than 107 bytes")
            return None
        return self._buffer[:end], self._buffer[end + 2 :]

    def _frame_v2(self) -> tuple[bytes, bytes] | None:
        if len(self._buffer) < _V2_FIXED:
            return None
        size = _V2_FIXED + struct.unpack("!H", self._buffer[14:16])[0]
        if len(self._buffer) < size:
            return None
        return self._buffer[:size], self._buffer[size:]


def _checked(address: IAddress | None) -> Address | None:
    """A parsed address as an Address, rejecting what Twisted's parsers let through."""
    if address is None or not isinstance(address, IPv4Address | IPv6Address):
        return None
    ip = _parse_ip(address.host)
    wanted = 4 if isinstance(address, IPv4Address) else 6
    if ip is None or ip.version != wanted or not 0 <= address.port <= 0xFFFF:
        raise ProxyHeaderError(f"bad address in PROXY header: {address.host!r} {address.port}")
    return Address(str(ip), address.port)


def _parse_ip(host: str) -> _IP | None:
    """An IP address from its text; an IPv6 zone (`%eth0`) is dropped: it means nothing remotely."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _ip_pair(source: Address | None, destination: Address | None) -> tuple[_IP, _IP] | None:
    """Both addresses in one family (IPv4 mapped into IPv6 when they differ, as HAProxy does)."""
    if source is None or destination is None:
        return None
    src, dst = _parse_ip(source.host), _parse_ip(destination.host)
    if src is None or dst is None:
        return None
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    return src, dst


def _as_v6(ip: _IP) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
