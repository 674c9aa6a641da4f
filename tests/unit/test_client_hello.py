"""The ClientHello reader against real hellos made by OpenSSL, split every way, and garbage."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from proxyd.config.model import SniRoute
from proxyd.relay.client_hello import UNRECOGNIZED_NAME, HelloError, HelloReader, alert
from proxyd.relay.sni import SniRoutes


def client_hello(name: bytes | None = b"api.example.com", alpn: list[bytes] | None = None) -> bytes:
    connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    connection.set_connect_state()
    if name is not None:
        connection.set_tlsext_host_name(name)
    if alpn:
        connection.set_alpn_protos(alpn)
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


HELLO = client_hello(alpn=[b"h2", b"http/1.1"])


def reframe(data: bytes, size: int) -> bytes:
    """The same handshake bytes in records of at most `size` bytes each."""
    body = data[5:]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    return out


def test_server_name_and_alpn_are_read() -> None:
    hello = HelloReader().feed(HELLO)
    assert hello is not None
    assert hello.server_name == "api.example.com"
    assert hello.alpn == ("h2", "http/1.1")


def test_no_sni_gives_no_server_name() -> None:
    hello = HelloReader().feed(client_hello(None))
    assert hello is not None and hello.server_name is None


def test_server_name_is_lower_case_without_trailing_dot() -> None:
    hello = HelloReader().feed(client_hello(b"API.Example.COM."))
    assert hello is not None and hello.server_name == "api.example.com"


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=len(HELLO) - 1), max_size=4))
def test_any_split_of_a_hello_gives_the_same_result(cuts: list[int]) -> None:
    reader = HelloReader()
    points = [0, *sorted(set(cuts)), len(HELLO)]
    results = [reader.feed(HELLO[a:b]) for a, b in itertools.pairwise(points)]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None and results[-1].server_name == "api.example.com"
    assert reader.buffered == HELLO


@pytest.mark.parametrize("size", [1, 5, 100])
def test_hello_split_across_records_gives_same_server_name(size: int) -> None:
    data = reframe(HELLO, size)
    reader = HelloReader()
    hello = reader.feed(data)
    assert hello is not None and hello.server_name == "api.example.com"
    assert reader.buffered == data


def test_bytes_after_the_hello_stay_buffered() -> None:
    reader = HelloReader()
    assert reader.feed(HELLO + b"\x17\x03\x03\x00\x01x") is not None
    assert reader.buffered.endswith(b"x")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "not TLS"),
        (b"\x80\x2e\x01\x03\x01", "SSLv2"),
        (b"\x16\x03\x01\x00\x00", "record length"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
        (b"\x16\x02\x00\x00\x04", "version"),
    ],
)
def test_what_is_not_a_client_hello_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(HelloError, match=why):
        HelloReader().feed(data)


def test_a_length_running_past_its_container_is_refused() -> None:
    broken = bytearray(HELLO)
    # The session id length (after 4 handshake header + 2 version + 32 random) made huge.
    broken[5 + 4 + 2 + 32] = 0xFF
    with pytest.raises(HelloError):
        HelloReader().feed(bytes(broken))


def test_an_oversized_hello_is_refused() -> None:
    with pytest.raises(HelloError, match="larger than"):
        HelloReader(max_size=256).feed(HELLO)


def test_an_error_is_raised_again_on_further_feeds() -> None:
    reader = HelloReader()
    with pytest.raises(HelloError):
        reader.feed(b"garbage")
    with pytest.raises(HelloError):
        reader.feed(HELLO)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_garbage_gives_none_or_a_hello_error_and_nothing_else(data: bytes) -> None:
    with contextlib.suppress(HelloError):
        HelloReader(max_size=4096).feed(data)


@settings(max_examples=200)
@given(st.integers(min_value=5, max_value=len(HELLO) - 1), st.integers(0, 255))
def test_a_corrupted_hello_never_raises_anything_else(position: int, value: int) -> None:
    broken = bytearray(HELLO)
    broken[position] = value
    with contextlib.suppress(HelloError):
        HelloReader().feed(bytes(broken))


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
