"""The ClientHello reader against real hellos made by OpenSSL, split every way and re-framed,
against hand-built hellos with one field wrong each, and against garbage."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from proxyd.config.model import SniRoute
from proxyd.relay.client_hello import (
    UNRECOGNIZED_NAME,
    ClientHello,
    HelloError,
    HelloReader,
    alert,
)
from proxyd.relay.sni import SniRoutes


def client_hello(
    name: bytes | None = b"api.example.com",
    alpn: list[bytes] | None = None,
    *,
    max_version: int | None = None,
) -> bytes:
    """The record(s) OpenSSL sends to open a handshake."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if name is not None:
        connection.set_tlsext_host_name(name)
    if alpn:
        connection.set_alpn_protos(alpn)
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


HELLO = client_hello(alpn=[b"h2", b"http/1.1"])
"""A TLS 1.3 hello; over a kilobyte with OpenSSL's post-quantum key share."""
SHORT_HELLO = client_hello(alpn=[b"h2", b"http/1.1"], max_version=SSL.TLS1_2_VERSION)
"""A TLS 1.2-only hello, a few hundred bytes: short enough to split every way in a test."""
EXPECTED = ClientHello("api.example.com", ("h2", "http/1.1"), 0x0303)


def reframe(data: bytes, size: int) -> bytes:
    """The same handshake bytes (from one record) in records of at most `size` bytes each."""
    body = data[5:]
    return b"".join(
        b"\x16\x03\x01" + vector(2, body[i : i + size]) for i in range(0, len(body), size)
    )


def feed_all(reader: HelloReader, chunks: list[bytes]) -> list[ClientHello | None]:
    return [reader.feed(chunk) for chunk in chunks]


def outcome(chunks: list[bytes]) -> ClientHello | str | None:
    """The result of feeding every chunk, or the error's reason."""
    reader = HelloReader(max_size=4096)
    try:
        return feed_all(reader, chunks)[-1]
    except HelloError as e:
        return str(e)


# Hand-built hellos, to get one field wrong at a time.


def vector(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vector(2, data)


def sni(*entries: bytes | tuple[int, bytes]) -> bytes:
    """A server_name extension; an entry is a host_name, or (name_type, name)."""
    pairs = [(0, e) if isinstance(e, bytes) else e for e in entries]
    return extension(0, vector(2, b"".join(bytes([t]) + vector(2, n) for t, n in pairs)))


def alpn(*protocols: bytes) -> bytes:
    return extension(16, vector(2, b"".join(vector(1, p) for p in protocols)))


def body(
    *extensions: bytes,
    version: int = 0x0303,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
) -> bytes:
    """A ClientHello body; with no extensions, without the extensions block."""
    hello = version.to_bytes(2, "big") + bytes(32) + vector(1, session_id)
    hello += vector(2, suites) + vector(1, compression)
    return hello + vector(2, b"".join(extensions)) if extensions else hello


def record(hello_body: bytes, kind: int = 1) -> bytes:
    """One handshake record carrying one handshake message."""
    return b"\x16\x03\x01" + vector(2, bytes([kind]) + vector(3, hello_body))


def read(data: bytes) -> ClientHello | None:
    return HelloReader().feed(data)


def test_server_name_alpn_and_version_are_read_from_a_real_hello() -> None:
    assert read(HELLO) == EXPECTED
    assert read(SHORT_HELLO) == EXPECTED


def test_no_sni_gives_no_server_name() -> None:
    hello = read(client_hello(None))
    assert hello is not None and hello.server_name is None and hello.alpn == ()


def test_server_name_is_lower_case_without_trailing_dot() -> None:
    hello = read(client_hello(b"API.Example.COM."))
    assert hello is not None and hello.server_name == "api.example.com"


def test_every_prefix_of_a_hello_asks_for_more() -> None:
    assert all(HelloReader().feed(HELLO[:n]) is None for n in range(len(HELLO)))


def test_a_hello_fed_byte_by_byte_is_read_at_its_last_byte() -> None:
    results = feed_all(HelloReader(), [bytes([b]) for b in HELLO])
    assert results == [None] * (len(HELLO) - 1) + [EXPECTED]


@pytest.mark.parametrize("hello", [SHORT_HELLO, HELLO], ids=["tls12", "tls13"])
def test_every_split_in_two_gives_the_same_hello(hello: bytes) -> None:
    for cut in range(1, len(hello)):
        reader = HelloReader()
        assert feed_all(reader, [hello[:cut], hello[cut:]]) == [None, EXPECTED]
        assert reader.buffered == hello


def test_every_split_in_three_gives_the_same_hello() -> None:
    for a, b in itertools.combinations(range(1, len(SHORT_HELLO)), 2):
        reader = HelloReader()
        chunks = [SHORT_HELLO[:a], SHORT_HELLO[a:b], SHORT_HELLO[b:]]
        assert feed_all(reader, chunks) == [None, None, EXPECTED]
        assert reader.buffered == SHORT_HELLO


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=len(HELLO) - 1), max_size=12))
def test_any_chunking_of_a_hello_gives_the_same_result(cuts: list[int]) -> None:
    reader = HelloReader()
    points = [0, *sorted(set(cuts)), len(HELLO)]
    chunks = [HELLO[a:b] for a, b in itertools.pairwise(points)]
    assert feed_all(reader, chunks) == [None] * (len(chunks) - 1) + [EXPECTED]
    assert reader.buffered == HELLO


@pytest.mark.parametrize("size", [1, 5, 100, 1000])
def test_hello_split_across_records_gives_same_server_name(size: int) -> None:
    data = reframe(HELLO, size)
    reader = HelloReader()
    assert reader.feed(data) == EXPECTED
    assert reader.buffered == data


@settings(max_examples=100)
@given(st.integers(min_value=1, max_value=2000), st.data())
def test_any_records_in_any_chunks_give_the_same_result(size: int, data: st.DataObject) -> None:
    framed = reframe(HELLO, size)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(framed) - 1), max_size=8))
    points = [0, *sorted(set(cuts)), len(framed)]
    reader = HelloReader()
    assert feed_all(reader, [framed[a:b] for a, b in itertools.pairwise(points)])[-1] == EXPECTED
    assert reader.buffered == framed


def test_bytes_after_the_hello_are_buffered_for_the_backend() -> None:
    early_data = b"\x17\x03\x03\x00\x01x" * 20000
    reader = HelloReader()
    assert reader.feed(HELLO[:100]) is None
    assert reader.feed(HELLO[100:] + early_data) == EXPECTED
    assert reader.feed(b"more") == EXPECTED
    assert reader.buffered == HELLO + early_data + b"more"


def test_a_hand_built_hello_is_read() -> None:
    hello = record(body(alpn(b"h2"), extension(0xFF01, b"\x00"), sni(b"A-1_b.test")))
    assert read(hello) == ClientHello("a-1_b.test", ("h2",), 0x0303)
    assert read(record(body(version=0x0301))) == ClientHello(None, (), 0x0301)


def test_the_first_host_name_is_taken_and_other_name_types_skipped() -> None:
    hello = read(record(body(sni((7, b"\xff\x00"), b"first.test", b"second.test"))))
    assert hello is not None and hello.server_name == "first.test"


def test_a_255_byte_server_name_is_accepted() -> None:
    name = b".".join([b"a" * 63] * 4)[:255]
    hello = read(record(body(sni(name))))
    assert hello is not None and hello.server_name == name.decode()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "plain text, not TLS"),
        (b"\x80\x2e\x01\x03\x01" + bytes(46), "SSLv2"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "record type 21"),
        (b"\x16\x02\x00\x00\x04", "record version 2"),
        (b"\x16\x03\x01\x00\x00", "record length 0"),
        (b"\x16\x03\x01\x48\x01", "record length 18433"),
        (record(body(), kind=2), "handshake message type 2"),
        (record(b""), "truncated ClientHello"),
        (reframe(record(body()), 10)[:15] + alert(40), "record type 21"),
    ],
)
def test_what_is_not_a_client_hello_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(HelloError, match=why):
        read(data)


@pytest.mark.parametrize(
    ("hello_body", "why"),
    [
        (body()[:-1], "compression methods length 1 runs past"),
        (body(session_id=bytes(33)), "session id longer than 32"),
        (body(suites=b""), "cipher suites length 0"),
        (body(suites=b"\x13\x01\x13"), "cipher suites length 3"),
        (body(compression=b""), "no compression method"),
        (body() + b"\x00", "truncated ClientHello"),
        (body() + b"\x00\x10\x00\x00", "extensions length 16 runs past the Cl"),
        (body(sni(b"a.test")) + b"\x00", "stray bytes after the ClientHello"),
        (body(extension(0xFF01, b"")) + b"\x00\x01", "stray bytes after the ClientHello"),
        (body(b"\x00\x00\x00\x09abc"), "extension 0 length 9 runs past the ext"),
        (body(b"\x00"), "truncated extensions"),
        (body(alpn(b"h2"), alpn(b"h2")), "extension 16 sent twice"),
        (body(extension(0, vector(2, b"\x00\x00\x05abc"))), "server name length 5 runs"),
        (body(extension(0, vector(2, b"\x00\x00\x01a") + b"x")), "stray bytes after the ext"),
        (body(extension(0, b"\x00\x09")), "server name list length 9 runs past"),
        (body(extension(0, b"")), "truncated extension 0"),
        (body(extension(0, vector(2, b""))), "empty server name list"),
        (body(sni(b"evil.test\x00.good.test")), "invalid server name"),
        (body(sni(b"a.test\n")), "invalid server name"),
        (body(sni(b"a b.test")), "invalid server name"),
        (body(sni("bücher.test".encode())), "invalid server name"),
        (body(sni(b"")), "invalid server name"),
        (body(sni(b"a" * 256)), "invalid server name"),
        (body(sni(b".")), "empty server name"),
        (body(alpn()), "empty ALPN list"),
        (body(alpn(b"h2", b"")), "empty ALPN protocol name"),
        (body(extension(16, vector(2, b"\x05h2"))), "ALPN protocol name length 5 runs"),
        (body(extension(16, vector(2, b"\x02h2") + b"x")), "stray bytes after the ext"),
    ],
)
def test_a_malformed_hello_is_refused(hello_body: bytes, why: str) -> None:
    with pytest.raises(HelloError, match=why):
        read(record(hello_body))


def test_a_handshake_length_that_disagrees_with_the_hello_is_refused() -> None:
    hello = body(sni(b"a.test"))
    short = b"\x16\x03\x01" + vector(2, b"\x01" + (len(hello) - 1).to_bytes(3, "big") + hello)
    with pytest.raises(HelloError, match="runs past the ClientHello"):
        read(short)
    broken = bytearray(HELLO)
    broken[5 + 4 + 2 + 32] = 0xFF  # the session id length, past the end of the hello
    with pytest.raises(HelloError, match="session id"):
        read(bytes(broken))


@pytest.mark.parametrize(
    "prefix",
    [b"G", b"\x80", b"\x16\x02", b"\x16\x03\x01\x00\x00", b"\x16\x03\x01\x00\x10\x02"],
)
def test_garbage_is_refused_from_the_first_byte_that_shows_it(prefix: bytes) -> None:
    with pytest.raises(HelloError):
        read(prefix)


def test_an_oversized_hello_is_refused_from_its_length_field() -> None:
    with pytest.raises(HelloError, match="larger than 256 bytes"):
        HelloReader(max_size=256).feed(HELLO[:9])


def test_max_size_counts_the_bytes_buffered_beyond_one_record_header() -> None:
    assert HelloReader(max_size=len(HELLO) - 5).feed(HELLO) == EXPECTED
    with pytest.raises(HelloError, match="larger than"):
        HelloReader(max_size=len(HELLO) - 6).feed(HELLO)
    with pytest.raises(HelloError, match="larger than"):
        HelloReader(max_size=len(HELLO)).feed(reframe(HELLO, 5))


def test_no_more_than_max_size_and_a_header_is_ever_buffered() -> None:
    reader = HelloReader(max_size=1000)
    with pytest.raises(HelloError, match="larger than"):
        for i in range(0, 100_000, 7):
            reader.feed(reframe(HELLO, 5)[i : i + 7])
            assert len(reader.buffered) <= 1005
    reader = HelloReader(max_size=1000)
    with pytest.raises(HelloError, match="larger than"):
        reader.feed(reframe(HELLO, 5) * 100)
    assert len(reader.buffered) == 1005


def test_after_an_error_every_feed_raises_it_again() -> None:
    reader = HelloReader()
    with pytest.raises(HelloError) as first:
        reader.feed(b"garbage")
    with pytest.raises(HelloError) as again:
        reader.feed(HELLO)
    assert again.value is first.value
    assert reader.buffered == b"garbage"


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_gives_none_or_a_hello_error_and_nothing_else(data: bytes) -> None:
    with contextlib.suppress(HelloError):
        HelloReader(max_size=4096).feed(data)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_in_a_handshake_record_gives_a_hello_error_or_none(data: bytes) -> None:
    with contextlib.suppress(HelloError):
        read(record(data))
    with contextlib.suppress(HelloError):
        read(record(body(extension(0, data), extension(16, data))))


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(min_value=5, max_value=len(HELLO) - 1), st.integers(0, 255))),
    st.lists(st.integers(min_value=1, max_value=len(HELLO) - 1), max_size=4),
)
def test_a_corrupted_hello_gives_the_same_outcome_in_any_chunks(
    changes: list[tuple[int, int]], cuts: list[int]
) -> None:
    broken = bytearray(HELLO)
    for position, value in changes:
        broken[position] = value
    points = [0, *sorted(set(cuts)), len(broken)]
    chunks = [bytes(broken[a:b]) for a, b in itertools.pairwise(points)]
    assert outcome(chunks) == outcome([bytes(broken)])


@settings(max_examples=300)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=4))
def test_garbage_gives_the_same_outcome_in_any_chunks(data: bytes, cuts: list[int]) -> None:
    points = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    assert outcome(chunks) == outcome([data])


def test_alert_is_a_fatal_alert_record() -> None:
    assert alert(UNRECOGNIZED_NAME) == b"\x15\x03\x03\x00\x02\x02\x70"


def test_sni_routes_prefer_exact_then_wildcard_then_default() -> None:
    routes = SniRoutes(
        [SniRoute("a.example.com", "exact"), SniRoute("*.example.com", "wild")], "default"
    )
    assert routes.pool_for("a.example.com") == "exact"
    assert routes.pool_for("B.Example.com.") == "wild"
    assert routes.pool_for("x.b.example.com") == "default"  # a wildcard is one label
    assert routes.pool_for("example.com") == "default"
    assert routes.pool_for(None) == "default"
    assert SniRoutes([SniRoute("a.test", "p")], None).pool_for("b.test") is None
