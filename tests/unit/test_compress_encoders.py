"""The streaming encoders (proxyd.compress.encoders), decoded by each coding's own decoder:
whole bodies round-trip, each flushed chunk decodes as soon as it is sent, the empty body is
a valid stream, levels are checked, and JSON compresses as it should."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.compress.encoders import DEFAULT_LEVELS, LEVELS, make_encoder

CODINGS = ("gzip", "br", "zstd")


def json_like(size: int) -> bytes:
    """`size` bytes of an API's JSON array of records: repeated keys, varied values."""
    rng = random.Random(22)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    records = []
    length = 0
    while length < size:
        record = json.dumps(
            {
                "id": len(records),
                "name": f"{rng.choice(words)}-{rng.randrange(10**6)}",
                "email": f"user{rng.randrange(10**5)}@example.com",
                "active": rng.random() < 0.5,
                "score": round(rng.uniform(0, 100), 2),
                "tags": rng.sample(words, 3),
                "created": f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
            }
        )
        records.append(record)
        length += len(record) + 2
    return ("[" + ",\n".join(records) + "]").encode()[:size]


def decode(coding: str, body: bytes) -> bytes:
    """The whole body decoded, by the one-shot decoder a client library would use."""
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    return zstandard.ZstdDecompressor().decompressobj().decompress(body)


def stream_decoder(coding: str) -> Callable[[bytes], bytes]:
    """A decoder fed the body piece by piece, as a browser reads it off the wire."""
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if coding == "br":
        return brotli.Decompressor().process
    return zstandard.ZstdDecompressor().decompressobj().decompress


def encode(coding: str, chunks: list[bytes], level: int | None = None, **kwargs: bool) -> bytes:
    encoder = make_encoder(coding, level, **kwargs)
    return b"".join(encoder.compress(chunk) for chunk in chunks) + encoder.finish()


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("flush_each", [True, False])
def test_a_body_in_chunks_round_trips(coding: str, flush_each: bool) -> None:
    data = json_like(100_000)
    chunks = [data[i : i + 7000] for i in range(0, len(data), 7000)]
    assert decode(coding, encode(coding, chunks, flush_each=flush_each)) == data


@pytest.mark.parametrize("coding", CODINGS)
def test_every_level_round_trips(coding: str) -> None:
    data = json_like(20_000)
    for level in LEVELS[coding]:
        assert decode(coding, encode(coding, [data[:5000], data[5000:]], level)) == data


def test_gzip_is_a_gzip_member() -> None:
    body = encode("gzip", [b"hello"])
    assert body[:3] == b"\x1f\x8b\x08"  # RFC 1952: ID1 ID2, CM deflate
    assert zlib.decompress(body, 16 + zlib.MAX_WBITS) == b"hello"


@pytest.mark.parametrize("coding", CODINGS)
def test_each_chunk_decodes_as_soon_as_it_is_sent(coding: str) -> None:
    """What a server-sent-events stream needs: every event readable when it is sent, not
    when the encoder's buffer fills or the stream ends."""
    encoder = make_encoder(coding)
    decoder = stream_decoder(coding)
    events = [f'event: tick\ndata: {{"n": {n}}}\n\n'.encode() for n in range(50)]
    for event in events:
        assert decoder(encoder.compress(event)) == event
    assert decoder(encoder.finish()) == b""


@settings(max_examples=30, deadline=None)
@given(
    coding=st.sampled_from(CODINGS),
    chunks=st.lists(st.binary(max_size=3000) | st.sampled_from([b"", b"a" * 5000]), max_size=12),
)
def test_any_chunking_decodes_chunk_by_chunk_and_whole(coding: str, chunks: list[bytes]) -> None:
    encoder = make_encoder(coding)
    decoder = stream_decoder(coding)
    sent = []
    for chunk in chunks:
        out = encoder.compress(chunk)
        assert decoder(out) == chunk
        sent.append(out)
    sent.append(encoder.finish())
    assert decode(coding, b"".join(sent)) == b"".join(chunks)


@pytest.mark.parametrize("coding", CODINGS)
def test_an_empty_chunk_sends_nothing(coding: str) -> None:
    encoder = make_encoder(coding)
    encoder.compress(b"x")
    assert encoder.compress(b"") == b""


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("flush_each", [True, False])
def test_the_empty_body_is_a_whole_empty_stream(coding: str, flush_each: bool) -> None:
    encoder = make_encoder(coding, flush_each=flush_each)
    assert encoder.compress(b"") == b""
    body = encoder.finish()
    assert body
    assert decode(coding, body) == b""


@pytest.mark.parametrize("coding", CODINGS)
def test_without_flush_each_small_chunks_wait_and_compress_better(coding: str) -> None:
    data = json_like(200_000)
    chunks = [data[i : i + 200] for i in range(0, len(data), 200)]
    encoder = make_encoder(coding, flush_each=False)
    assert stream_decoder(coding)(encoder.compress(chunks[0])) == b""  # held: no block yet
    held = encode(coding, chunks, flush_each=False)
    flushed = encode(coding, chunks, flush_each=True)
    assert decode(coding, held) == data
    assert len(held) < len(flushed) * 0.8


@pytest.mark.parametrize("coding", CODINGS)
def test_an_encoder_is_finished_once(coding: str) -> None:
    encoder = make_encoder(coding)
    encoder.finish()
    with pytest.raises(ValueError, match=r"compress\(\) after finish\(\)"):
        encoder.compress(b"late")
    with pytest.raises(ValueError, match=r"finish\(\) twice"):
        encoder.finish()


@pytest.mark.parametrize(
    ("coding", "level", "message"),
    [
        ("gzip", 0, "a gzip level from 1 to 9, not 0"),
        ("gzip", 10, "a gzip level from 1 to 9, not 10"),
        ("br", -1, "a br level from 0 to 11, not -1"),
        ("br", 12, "a br level from 0 to 11, not 12"),
        ("zstd", 0, "a zstd level from 1 to 22, not 0"),
        ("zstd", 23, "a zstd level from 1 to 22, not 23"),
        ("zstd", -5, "a zstd level from 1 to 22, not -5"),
    ],
)
def test_a_level_out_of_range_is_refused_with_the_range(
    coding: str, level: int, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        make_encoder(coding, level)


@pytest.mark.parametrize("coding", ["deflate", "identity", "GZIP", "x-gzip", ""])
def test_an_unknown_coding_is_refused(coding: str) -> None:
    with pytest.raises(ValueError, match=f"^a coding of gzip, br or zstd, not {coding!r}$"):
        make_encoder(coding)


def test_the_default_levels_are_in_range() -> None:
    assert DEFAULT_LEVELS.keys() == LEVELS.keys() == set(CODINGS)
    for coding, level in DEFAULT_LEVELS.items():
        assert level in LEVELS[coding]


@pytest.mark.parametrize("level", [3, 19, 20, 22])
def test_zstd_never_needs_a_window_over_8_mib(level: int) -> None:
    """RFC 9659: clients decode windows of up to 8 MiB and may refuse more; zstd's levels
    20 to 22 would otherwise ask for up to 128 MiB."""
    body = encode("zstd", [json_like(50_000)], level)
    assert zstandard.get_frame_parameters(body).window_size <= 8 * 1024 * 1024


@pytest.mark.parametrize("level", [0, 4, 11])
def test_brotli_keeps_a_512_kib_window(level: int) -> None:
    """What an encoder holds per response (module docstring). RFC 7932 9.1: the stream
    starts with WBITS, here a 1 and then 3 bits of WBITS - 17."""
    body = encode("br", [json_like(1 << 20)], level)
    assert body[0] & 0b1111 == 1 | (19 - 17) << 1


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("flush_each", [True, False])
def test_a_mib_of_json_compresses_below_a_fifth_at_the_default_level(
    coding: str, flush_each: bool
) -> None:
    data = json_like(1 << 20)
    chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    body = encode(coding, chunks, flush_each=flush_each)
    assert decode(coding, body) == data
    assert len(body) < len(data) / 5
