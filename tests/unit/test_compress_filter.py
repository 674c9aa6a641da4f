"""`compress` and `gunzip` through the relay (proxyd.filters.compress, docs/compression.md):
which responses are compressed and which are not, the negotiation, the fields a compressed
response gets (Content-Encoding, Vary, a weak ETag, no Content-Length nor Accept-Ranges),
each chunk decodable as it arrives, the levels, gunzip, and the metrics."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import brotli
import pytest
import zstandard

from proxyd.config.compress_model import CompressConfig, RouteCompress
from proxyd.config.model import ProxyAction, RespondAction, RouteConfig, RouteMatch
from tests.unit.test_http_relay import Relay, field

BODY = json.dumps(
    [{"id": i, "name": f"user{i}", "active": i % 2 == 0} for i in range(200)]
).encode()
"""About 8 KiB of JSON."""


def relay(**settings: Any) -> Relay:
    """A listener whose one route compresses (with `settings` over the defaults)."""
    return Relay(compress=CompressConfig(**{"enabled": True, **settings}))


def reply(
    body: bytes = BODY,
    content_type: bytes | None = b"application/json",
    extra: bytes = b"",
    status: bytes = b"200 OK",
) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def exchange(
    proxy: Relay,
    response: bytes,
    accept: bytes | None = b"gzip, deflate, br, zstd",
    method: bytes = b"GET",
    extra: bytes = b"",
) -> bytes:
    """What the client got for a request with `accept` as its Accept-Encoding."""
    request = method + b" /x HTTP/1.1\r\nHost: a\r\n" + extra
    if accept is not None:
        request += b"Accept-Encoding: " + accept + b"\r\n"
    proxy.send(request + b"\r\n")
    upstream(proxy).dataReceived(response)
    return proxy.received()


def upstream(proxy: Relay) -> Any:
    """The connection the request went on: a new one, else the one kept alive before."""
    if proxy.pending_connects():
        proxy.kept = proxy.accept_upstream()[0]  # type: ignore[attr-defined]
    return proxy.kept  # type: ignore[attr-defined]


def dechunk(data: bytes) -> bytes:
    """A chunked body's data (the chunks so far; the last chunk's end optional)."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def body(message: bytes) -> bytes:
    head, _, rest = message.partition(b"\r\n\r\n")
    return dechunk(rest) if field(head, "Transfer-Encoding") == [b"chunked"] else rest


DECODE = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}


def test_a_json_response_is_compressed_in_the_preferred_coding_and_sent_chunked() -> None:
    answer = exchange(relay(), reply(extra=b"Accept-Ranges: bytes\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert field(answer, "Content-Encoding") == [b"zstd"]
    assert field(answer, "Content-Length") == []
    assert field(answer, "Transfer-Encoding") == [b"chunked"]
    assert field(answer, "Vary") == [b"Accept-Encoding"]
    assert field(answer, "Accept-Ranges") == []
    sent = body(answer)
    assert DECODE["zstd"](sent) == BODY
    assert len(sent) < len(BODY) / 3


@pytest.mark.parametrize(
    ("accept", "codings", "expected"),
    [
        (b"gzip", ("zstd", "br", "gzip"), "gzip"),
        (b"gzip, br", ("zstd", "br", "gzip"), "br"),
        (b"gzip, br", ("gzip", "br"), "gzip"),
        (b"br;q=0.5, gzip", ("zstd", "br", "gzip"), "gzip"),
        (b"*", ("br", "gzip"), "br"),
        (b"x-gzip", ("zstd", "br", "gzip"), "gzip"),
        (b"gzip;q=0, *", ("gzip", "zstd"), "zstd"),
    ],
)
def test_the_coding_is_the_clients_heaviest_then_the_servers_favourite(
    accept: bytes, codings: tuple[str, ...], expected: str
) -> None:
    answer = exchange(relay(codings=codings), reply(), accept)
    assert field(answer, "Content-Encoding") == [expected.encode()]
    assert DECODE[expected](body(answer)) == BODY


@pytest.mark.parametrize(
    "accept",
    [None, b"", b"identity", b"gzip;q=0", b"gzip;q=0.5, identity", b"deflate", b"*;q=0"],
)
def test_a_client_without_an_acceptable_coding_gets_the_identity_with_vary(
    accept: bytes | None,
) -> None:
    answer = exchange(relay(codings=("gzip",)), reply(), accept)
    assert field(answer, "Content-Encoding") == []
    assert field(answer, "Content-Length") == [b"%d" % len(BODY)]
    assert field(answer, "Vary") == [b"Accept-Encoding"]
    assert body(answer) == BODY


@pytest.mark.parametrize(
    ("response", "method", "request_extra"),
    [
        (reply(), b"HEAD", b""),
        (b"HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n\r\n", b"GET", b""),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Type: application/json\r\n\r\n", b"GET", b""),
        (
            reply(status=b"206 Partial Content", extra=b"Content-Range: bytes 0-9/99\r\n"),
            b"GET",
            b"",
        ),
        (reply(extra=b"Content-Encoding: br\r\n"), b"GET", b""),
        (reply(extra=b"Cache-Control: public, no-transform\r\n"), b"GET", b""),
        (reply(), b"GET", b"Cache-Control: no-transform\r\n"),
        (reply(content_type=b"image/png"), b"GET", b""),
        (reply(content_type=None), b"GET", b""),
        (reply(body=b"x" * 1023), b"GET", b""),
        (reply(body=b""), b"GET", b""),
    ],
    ids=[
        "HEAD",
        "204",
        "304",
        "206",
        "encoded already",
        "no-transform",
        "no-transform asked",
        "image",
        "no type",
        "short",
        "empty",
    ],
)
def test_responses_that_are_not_compressed_pass_as_they_are(
    response: bytes, method: bytes, request_extra: bytes
) -> None:
    answer = exchange(relay(), response, method=method, extra=request_extra)
    assert field(answer, "Content-Encoding") in ([], [b"br"])
    assert field(answer, "Vary") == []
    assert field(answer, "Transfer-Encoding") == []
    expected = response.partition(b"\r\n\r\n")[2]
    assert answer.partition(b"\r\n\r\n")[2] == (b"" if method == b"HEAD" else expected)


def test_a_chunked_response_is_compressed_whatever_its_length() -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    answer = exchange(relay(), response, b"gzip")
    assert field(answer, "Content-Encoding") == [b"gzip"]
    assert gzip.decompress(body(answer)) == b"hello"


def test_compress_min_length_is_the_shortest_compressed() -> None:
    answer = exchange(relay(min_length=10), reply(body=b"0123456789"), b"gzip")
    assert gzip.decompress(body(answer)) == b"0123456789"


def test_compress_types_replace_the_defaults() -> None:
    proxy = relay(types=("text/csv",))
    assert field(exchange(proxy, reply(), b"gzip"), "Content-Encoding") == []
    answer = exchange(proxy, reply(content_type=b"Text/CSV; charset=utf-8"), b"gzip")
    assert field(answer, "Content-Encoding") == [b"gzip"]


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        (b"Origin", b"Origin, Accept-Encoding"),
        (b"origin, accept-encoding", b"origin, accept-encoding"),
        (b"*", b"*"),
    ],
)
def test_vary_is_merged_into_the_servers_once(vary: bytes, expected: bytes) -> None:
    answer = exchange(relay(), reply(extra=b"Vary: " + vary + b"\r\n"), b"gzip")
    assert field(answer, "Vary") == [expected]


def test_two_vary_fields_become_one_with_accept_encoding() -> None:
    answer = exchange(relay(), reply(extra=b"Vary: Origin\r\nVary: Cookie\r\n"), b"gzip")
    assert field(answer, "Vary") == [b"Origin, Cookie, Accept-Encoding"]


@pytest.mark.parametrize(
    ("etag", "expected"),
    [(b'"v1"', [b'W/"v1"']), (b'W/"v1"', [b'W/"v1"']), (b"v1", []), (b'"a"b"', [])],
)
def test_a_strong_etag_becomes_weak_and_a_malformed_one_is_dropped(
    etag: bytes, expected: list[bytes]
) -> None:
    answer = exchange(relay(), reply(extra=b"ETag: " + etag + b"\r\n"), b"gzip")
    assert field(answer, "ETag") == expected


def test_an_etag_is_kept_strong_on_a_response_not_compressed() -> None:
    answer = exchange(relay(), reply(extra=b'ETag: "v1"\r\n'), b"identity")
    assert field(answer, "ETag") == [b'"v1"']


def test_each_chunk_is_decodable_as_it_arrives_and_the_end_finishes_the_stream() -> None:
    proxy = relay()
    proxy.send(b"GET /events HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    upstream, _ = proxy.accept_upstream()
    upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    head = proxy.received()
    assert field(head, "Content-Encoding") == [b"gzip"]
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for n in range(3):
        event = b"data: event %d\n\n" % n
        upstream.dataReceived(b"%x\r\n%s\r\n" % (len(event), event))
        assert decoder.decompress(dechunk(proxy.received())) == event
    upstream.dataReceived(b"0\r\n\r\n")
    rest = proxy.received()
    assert rest.endswith(b"0\r\n\r\n")
    assert decoder.decompress(dechunk(rest)) == b""
    assert decoder.eof and not decoder.unused_data


@pytest.mark.parametrize(("level", "xfl"), [(1, 4), (6, 0), (9, 2)])
def test_compress_levels_set_the_codings_level(level: int, xfl: int) -> None:
    answer = exchange(relay(levels=(("gzip", level),)), reply(), b"gzip")
    sent = body(answer)
    assert sent[8] == xfl  # RFC 1952 2.3.1: XFL 2 is the slowest level, 4 the fastest
    assert gzip.decompress(sent) == BODY


def test_an_http_1_0_client_gets_the_compressed_body_to_the_close() -> None:
    proxy = relay()
    proxy.send(b"GET /x HTTP/1.0\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    upstream, _ = proxy.accept_upstream()
    upstream.dataReceived(reply())
    answer = proxy.received()
    assert field(answer, "Transfer-Encoding") == []
    assert field(answer, "Content-Length") == []
    assert gzip.decompress(answer.partition(b"\r\n\r\n")[2]) == BODY
    assert proxy.ct.disconnecting


def test_a_routes_settings_replace_the_listeners_key_by_key() -> None:
    off = RouteConfig(
        "off", RouteMatch(path="/off"), ProxyAction("web"), compress=RouteCompress(enabled=False)
    )
    brotli_only = RouteConfig(
        "br", RouteMatch(path="/br"), ProxyAction("web"), compress=RouteCompress(codings=("br",))
    )
    plain = RouteConfig("plain", RouteMatch(path="/"), ProxyAction("web"))
    proxy = Relay(
        routes=(off, brotli_only, plain),
        compress=CompressConfig(enabled=True, codings=("gzip",), min_length=10),
    )
    assert "compress" not in proxy.factory.chains["off"].names
    assert "compress" not in proxy.factory.chains[None].names
    for path, expected in ((b"/off", []), (b"/br", [b"br"]), (b"/", [b"gzip"])):
        proxy.send(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, br\r\n\r\n")
        upstream(proxy).dataReceived(reply(body=b"0123456789"))
        assert field(proxy.received(), "Content-Encoding") == expected


def test_an_answer_of_proxyds_own_is_not_compressed() -> None:
    respond = RespondAction(200, "x" * 4000)
    proxy = Relay(
        routes=(
            RouteConfig("respond", RouteMatch(path="/r"), respond),
            RouteConfig("proxy", RouteMatch(path="/"), ProxyAction("web")),
        ),
        compress=CompressConfig(enabled=True),
    )
    proxy.send(b"GET /r HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    assert field(proxy.received(), "Content-Encoding") == []
    proxy.send(b"GET / HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    while proxy.pending_connects():
        proxy.refuse_upstream()
    answer = proxy.received()
    assert answer.startswith(b"HTTP/1.1 502")
    assert field(answer, "Content-Encoding") == []


def test_compressed_responses_are_counted_by_coding_with_their_bytes() -> None:
    proxy = relay()
    sent = body(exchange(proxy, reply(), b"gzip"))
    exchange(proxy, reply(), b"identity")
    cell = proxy.factory.stats.snapshot()["http"]["front"]["*/"]["web"][""]
    assert cell["compression"] == {
        "gzip": {"responses": 1, "bytes_in": len(BODY), "bytes_out": len(sent)}
    }


GZIPPED = gzip.compress(BODY)


def gzipped(data: bytes = GZIPPED) -> bytes:
    return reply(body=data, extra=b'Content-Encoding: gzip\r\nETag: "g"\r\n')


@pytest.mark.parametrize("accept", [None, b"br", b"gzip;q=0, br", b"identity"])
def test_gunzip_decompresses_gzip_for_a_client_that_does_not_take_it(
    accept: bytes | None,
) -> None:
    answer = exchange(relay(enabled=False, gunzip=True), gzipped(), accept)
    assert field(answer, "Content-Encoding") == []
    assert field(answer, "ETag") == [b'W/"g"']
    assert field(answer, "Vary") == [b"Accept-Encoding"]
    assert body(answer) == BODY


def test_gunzip_passes_gzip_to_a_client_that_takes_it_with_vary() -> None:
    answer = exchange(relay(gunzip=True), gzipped(), b"gzip, br")
    assert field(answer, "Content-Encoding") == [b"gzip"]
    assert field(answer, "Content-Length") == [b"%d" % len(GZIPPED)]
    assert field(answer, "Vary") == [b"Accept-Encoding"]
    assert body(answer) == GZIPPED


def test_gunzip_reads_several_gzip_members_one_after_the_other() -> None:
    data = gzip.compress(b"first ") + gzip.compress(b"second")
    answer = exchange(relay(gunzip=True), gzipped(data), None)
    assert body(answer) == b"first second"


def test_a_gzip_body_that_stops_short_is_cut_as_a_filter_failure() -> None:
    proxy = relay(gunzip=True)
    answer = exchange(proxy, gzipped(GZIPPED[:-8]), None)
    assert not answer.endswith(b"0\r\n\r\n")
    assert proxy.ct.disconnecting
    [record] = proxy.log.records
    assert "filter compress failed" in record["error"]


def test_without_gunzip_a_gzip_response_passes_untouched() -> None:
    answer = exchange(relay(), gzipped(), None)
    assert field(answer, "Content-Encoding") == [b"gzip"]
    assert field(answer, "Vary") == []
    assert body(answer) == GZIPPED
