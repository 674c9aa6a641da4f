"""PROXY protocol headers: exact bytes against HAProxy's proxy-protocol.txt, and reading them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from proxyd.config.model import Address
from proxyd.relay.proxy_protocol import (
    V2_SIGNATURE,
    HeaderReader,
    ProxyHeaderError,
    ReceivedHeader,
    address_of,
    encode,
    encode_v1,
    encode_v2,
)

SRC4, DST4 = Address("192.168.0.1", 56324), Address("192.168.0.11", 443)
FFFF6 = ":".join(["ffff"] * 8)
SRC6, DST6 = Address("2001:db8::1", 40000), Address("2001:db8::2:0", 8443)


# Version 1: the spec's own example lines (section 2.1).


def test_v1_tcp4_is_the_spec_example_line() -> None:
    assert encode_v1(SRC4, DST4) == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_tcp4_longest_line_is_56_bytes() -> None:
    header = encode_v1(Address("255.255.255.255", 65535), Address("255.255.255.255", 65535))
    assert header == b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(header) == 56


def test_v1_tcp6_longest_line_is_104_bytes() -> None:
    header = encode_v1(Address(FFFF6, 65535), Address(FFFF6, 65535))
    assert header == f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(header) == 104


def test_v1_tcp6_uses_the_compressed_form() -> None:
    assert encode_v1(SRC6, DST6) == b"PROXY TCP6 2001:db8::1 2001:db8::2:0 40000 8443\r\n"


def test_v1_unknown_when_an_address_is_missing_or_not_ip() -> None:
    assert encode_v1(None, DST4) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(Address("db.example", 1), DST4) == b"PROXY UNKNOWN\r\n"
    assert len(b"PROXY UNKNOWN\r\n") == 15  # the spec's short form


def test_v1_mixed_families_map_ipv4_into_ipv6() -> None:
    header = encode_v1(Address("192.0.2.1", 1000), Address("2001:db8::1", 80))
    assert header == b"PROXY TCP6 ::ffff:c000:201 2001:db8::1 1000 80\r\n"


# Version 2: the layout of section 2.2, field by field.


def test_v2_tcp4_bytes_follow_the_spec_layout() -> None:
    expected = (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # signature
        b"\x21"  # version 2, command PROXY
        b"\x11"  # AF_INET, STREAM
        b"\x00\x0c"  # 2*4 + 2*2 address bytes
        b"\xc0\xa8\x00\x01"  # 192.168.0.1
        b"\xc0\xa8\x00\x0b"  # 192.168.0.11
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
    )
    assert encode_v2(SRC4, DST4) == expected


def test_v2_tcp4_matches_a_header_captured_from_haproxy() -> None:
    captured = bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c ac130001 ac130003 a652 0050")
    assert encode_v2(Address("172.19.0.1", 42578), Address("172.19.0.3", 80)) == captured


def test_v2_tcp6_bytes_follow_the_spec_layout() -> None:
    expected = (
        V2_SIGNATURE
        + b"\x21\x21\x00\x24"  # PROXY, AF_INET6 STREAM, 2*16 + 2*2 address bytes
        + bytes.fromhex("20010db8000000000000000000000001")
        + bytes.fromhex("20010db8000000000000000000020000")
        + struct.pack("!HH", 40000, 8443)
    )
    assert encode_v2(SRC6, DST6) == expected
    assert len(expected) == 16 + 36


def test_v2_signature_then_version_is_the_spec_detection_block() -> None:
    assert encode_v2(SRC4, DST4)[:13] == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21"
    assert encode_v2(SRC4, DST4)[12] & 0xF0 == 0x20


def test_v2_local_without_addresses_when_they_are_unknown() -> None:
    assert encode_v2(None, None) == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_encode_dispatches_on_the_config_value() -> None:
    assert encode("v1", SRC4, DST4) == encode_v1(SRC4, DST4)
    assert encode("v2", SRC4, DST4) == encode_v2(SRC4, DST4)
    with pytest.raises(ValueError):
        encode("v3", SRC4, DST4)


# Round trips through Twisted's parsers.


@pytest.mark.parametrize(
    ("src", "dst"),
    [(SRC4, DST4), (SRC6, DST6), (Address(FFFF6, 65535), Address("::1", 0))],
)
def test_headers_round_trip_through_twisted_parsers(src: Address, dst: Address) -> None:
    for info in (V1Parser.parse(encode_v1(src, dst)[:-2]), V2Parser.parse(encode_v2(src, dst))):
        assert address_of(info.source) == src
        assert address_of(info.destination) == dst


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
def test_header_reader_reads_what_encode_writes(version: str, src: Address, dst: Address) -> None:
    header, rest = _read(encode(version, src, dst) + b"payload")
    assert header == ReceivedHeader(src, dst)
    assert rest == b"payload"


# Reading.


def _read(data: bytes) -> tuple[ReceivedHeader, bytes]:
    result = HeaderReader().feed(data)
    assert result is not None
    return result


@given(st.sampled_from(["v1", "v2"]), st.data())
def test_header_reader_gives_the_same_result_for_any_chunking(
    version: str, data: st.DataObject
) -> None:
    wire = encode(version, SRC6, DST6) + b"GET / HTTP/1.1\r\n"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=8)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    reader = HeaderReader()
    fed = 0
    result = None
    while result is None:
        result = reader.feed(chunks[fed])
        fed += 1
    header, rest = result
    assert header == ReceivedHeader(SRC6, DST6)
    assert rest + b"".join(chunks[fed:]) == b"GET / HTTP/1.1\r\n"


def test_header_reader_unknown_and_local_mean_use_the_real_addresses() -> None:
    assert _read(b"PROXY UNKNOWN\r\n") == (ReceivedHeader(None, None), b"")
    assert _read(b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\nx") == (ReceivedHeader(None, None), b"x")
    assert _read(encode_v2(None, None)) == (ReceivedHeader(None, None), b"")


def test_header_reader_skips_v2_tlvs() -> None:
    header = encode_v2(SRC4, DST4)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    with_tlv = header[:14] + struct.pack("!H", 12 + len(tlv)) + header[16:] + tlv
    assert _read(with_tlv + b"data") == (ReceivedHeader(SRC4, DST4), b"data")


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 one 2\r\n",
        b"PROXY TCP4 ::1 ::2 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 host.example 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
        b"PROXY TCP4 " + b"1" * 120,  # no CRLF within 107 bytes
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 block
        V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12),  # command 0xf
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # address block too short
        V2_SIGNATURE + b"\x21\x41\x00\x00",  # family 4
    ],
)
def test_header_reader_rejects_what_is_not_a_valid_header(wire: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        HeaderReader().feed(wire)


def test_header_reader_waits_on_a_prefix_of_either_signature() -> None:
    reader = HeaderReader()
    assert reader.feed(b"PRO") is None
    assert reader.feed(b"XY TCP4 192.168.0.1 192.168.0.11 56324 443") is None
    assert reader.feed(b"\r\n") == (ReceivedHeader(SRC4, DST4), b"")
    assert HeaderReader().feed(V2_SIGNATURE[:7]) is None
    assert HeaderReader().feed(V2_SIGNATURE + b"\x21") is None


def test_address_of_twisted_addresses() -> None:
    assert address_of(IPv4Address("TCP", "10.0.0.1", 80)) == Address("10.0.0.1", 80)
    assert address_of(IPv6Address("TCP", "fe80::1%eth0", 80)) == Address("fe80::1", 80)
    assert address_of(UNIXAddress(b"/tmp/sock")) is None
    assert address_of(None) is None
