"""Streaming encoders for the content codings proxyd compresses with, sans-IO: bytes in,
compressed bytes out, one interface for gzip (zlib), br (brotli) and zstd (zstandard).

    encoder = make_encoder("br")                 # the coding's default level
    for chunk in body:
        send(encoder.compress(chunk))
    send(encoder.finish())

With `flush_each` (the default) every compress() flushes: what it returns, added to what it
returned before, decodes to exactly the data given so far, so a client sees each chunk as it
arrives (a server-sent-events stream event by event, a long poll's answer at once) instead
of when the encoder's buffer fills. The flushes are zlib's Z_SYNC_FLUSH, brotli's flush and
zstandard's COMPRESSOBJ_FLUSH_BLOCK: each ends a block on a byte boundary and keeps the
window, so later chunks still refer back to earlier ones. A flush costs a few bytes and ends
a block early, which matters for small chunks only: 1000 server-sent events of 34 bytes come
to a third of their size flushed, to 3-7% held; 16 KiB chunks of JSON lose under one point.
For a body that is not a stream, `flush_each=False` lets the encoder hold what it has until
its blocks fill, and the client sees nothing until then. compress(b"") returns b"" without
flushing: nothing new to decode.

Levels, and the defaults chosen for compressing on every response (measured on the
development machine, Python 3.11, 1 MiB of JSON records given in one chunk):

    gzip  1..9,  default 6 (zlib's):      14% of the size,  80 MB/s
    br    0..11, default 4:               15%,             125 MB/s (brotli's own 11:
                                                            11%, under 1 MB/s)
    zstd  1..22, default 3 (zstandard's): 16%,             500 MB/s

Windows, which are most of an encoder's memory, held for as long as its response lasts:
brotli's is 512 KiB (as ngx_brotli's default) rather than its library's 4 MiB, which made
an encoder hold 4.7 MiB instead of 1.6 MiB after 4 MiB of JSON sent in 16 KiB chunks, for
the same ratio; gzip's is deflate's 32 KiB (about 0.2 MiB an encoder), zstd's its level's
(2 MiB at 3: about 3 MiB an encoder). zstd frames never need a window over 8 MiB, which is
all RFC 9659 requires a client to decode (a browser refuses more): levels 20 to 22 would
otherwise use 32 to 128 MiB.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import partial
from typing import Final

import brotli
import zstandard

DEFAULT_LEVELS: Final[dict[str, int]] = {"gzip": 6, "br": 4, "zstd": 3}
"""Per coding, a level for compressing on the fly (module docstring)."""
LEVELS: Final[dict[str, range]] = {"gzip": range(1, 10), "br": range(12), "zstd": range(1, 23)}
"""The levels each coding accepts. gzip's 0 (stored, no compression) is left out: it would
only add framing to the body."""

_BROTLI_WINDOW_LOG: Final = 19
"""512 KiB (module docstring)."""
_ZSTD_MAX_WINDOW_LOG: Final = 23
"""RFC 9659: a "zstd" content coding's window is at most 8 MiB (2 ** 23)."""


class Encoder:
    """One response body's compressor: compress() each chunk, then finish() once."""

    def __init__(
        self,
        process: Callable[[bytes], bytes],
        flush: Callable[[], bytes],
        finish: Callable[[], bytes],
        flush_each: bool,
    ) -> None:
        self._process = process
        self._flush = flush
        self._finish = finish
        self._flush_each = flush_each
        self._finished = False

    def compress(self, data: bytes) -> bytes:
        """What to send for `data` now: with flush_each, enough for the client to decode all
        of it; without, perhaps nothing yet."""
        if self._finished:
            raise ValueError("compress() after finish()")
        if not data:
            return b""
        out = self._process(data)
        return out + self._flush() if self._flush_each else out

    def finish(self) -> bytes:
        """The rest of the stream and its end (gzip's trailer, brotli's last block, zstd's
        end of frame); on an encoder given nothing, a whole empty stream."""
        if self._finished:
            raise ValueError("finish() twice")
        self._finished = True
        return self._finish()


def _gzip(level: int, flush_each: bool) -> Encoder:
    # wbits 16 + 15: a gzip member (header and CRC-32 trailer) with a 32 KiB window.
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return Encoder(
        compressor.compress,
        partial(compressor.flush, zlib.Z_SYNC_FLUSH),
        compressor.flush,
        flush_each,
    )


def _brotli(level: int, flush_each: bool) -> Encoder:
    compressor = brotli.Compressor(quality=level, lgwin=_BROTLI_WINDOW_LOG)
    return Encoder(compressor.process, compressor.flush, compressor.finish, flush_each)


def _zstd(level: int, flush_each: bool) -> Encoder:
    window_log = zstandard.ZstdCompressionParameters.from_level(level).window_log
    parameters = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=min(window_log, _ZSTD_MAX_WINDOW_LOG)
    )
    compressor = zstandard.ZstdCompressor(compression_params=parameters).compressobj()
    return Encoder(
        compressor.compress,
        partial(compressor.flush, zstandard.COMPRESSOBJ_FLUSH_BLOCK),
        compressor.flush,
        flush_each,
    )


_MAKERS: Final[dict[str, Callable[[int, bool], Encoder]]] = {
    "gzip": _gzip,
    "br": _brotli,
    "zstd": _zstd,
}


def make_encoder(coding: str, level: int | None = None, *, flush_each: bool = True) -> Encoder:
    """A new encoder for `coding` ("gzip", "br" or "zstd", as Content-Encoding names them) at
    `level` (None: DEFAULT_LEVELS'); ValueError naming what is allowed otherwise."""
    maker = _MAKERS.get(coding)
    if maker is None:
        raise ValueError(f"a coding of gzip, br or zstd, not {coding!r}")
    allowed = LEVELS[coding]
    if level is None:
        level = DEFAULT_LEVELS[coding]
    elif level not in allowed:
        raise ValueError(f"a {coding} level from {allowed[0]} to {allowed[-1]}, not {level}")
    return maker(level, flush_each)
