"""`compress` and `gunzip` (docs/compression.md): a server's response compressed on the fly
in the coding its client prefers among the route's `compress_codings`, or a gzip response
decompressed for a client that does not take gzip, over the sans-IO proxyd.compress.

The decision is the response head's. A response is compressed when all of these hold:
the request is not HEAD; the status is not 1xx, 204, 206 or 304; the response has no
Content-Encoding but identity (a coding is never added over another); neither the response
nor the request says Cache-Control: no-transform (RFC 9111 5.2); its Content-Type is one of
`compress_types`; its Content-Length, when it has one, is at least `compress_min_length`
(one without, chunked or close-delimited, is compressed); and the client's Accept-Encoding
chooses a coding (proxyd.compress.negotiate.choose_coding). Then it gets Content-Encoding,
loses its Content-Length (the exchange sends a body a filter transforms chunked, or to the
close to an HTTP/1.0 client) and Accept-Ranges (the server's byte ranges are of the
uncompressed body), its strong ETag becomes weak (`"x"` -> `W/"x"`: the bytes differ from
the server's, RFC 9110 8.8.1; a malformed one is dropped, as nginx does), and it gets
`Vary: Accept-Encoding`. So does a response that fails only the last test, the coding: it
would have been compressed for another client, and a shared cache after proxyd must not
serve one client's answer to the other (nginx's gzip_vary). Vary is merged into the
server's, once, and not added to `Vary: *`.

Every chunk is flushed (the encoders' flush_each): a client decodes each chunk as it
arrives, so a server-sent-events stream, a long poll or an NDJSON feed is not held in the
encoder. The chunks are the relay's reads from the server: large (up to 64 KiB) when the
server sends fast, small when it trickles, which is when a client waits for each. Measured
on 1 MiB of JSON (`python -m bench.compress_cost`), flushing every 16 KiB to 64 KiB costs
under half a point of ratio and at most 15% of throughput at the default levels (gzip 6:
13.3% either way; br 4: 11.8% against 11.5%; zstd 3: 11.8% against 11.5%); holding the
data until the encoder's blocks fill would save that on fast bodies only, and a proxy cannot
tell a stream from a body by its type (NDJSON, long polls, HTML sent in parts).

`gunzip`: a response with `Content-Encoding: gzip` to a client whose Accept-Encoding does not
choose gzip (or that sends none: curl, health checks, old clients) is decompressed as it
streams (zlib, gzip members one after the other), with the same changes to its fields but
Content-Encoding removed; one to a client that takes gzip passes as it is, with Vary. A
truncated or corrupt gzip body is a filter failure: the response is cut. Each chunk's output
is at most 1032 times its input (deflate's limit) and nothing is held between chunks.

Answers made by proxyd or by a filter (exchange.answer) are not compressed: the filters the
answer meets after this one (the operator's, error_pages) may still replace its body.
An encoder that raises is a filter failure (the response is cut). This filter sits after the
operator's filters (docs/http.md, "Filter order"), so their response phases see the
compressed body and its Content-Encoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Final

from proxyd.compress.encoders import DEFAULT_LEVELS, Encoder, make_encoder
from proxyd.compress.negotiate import choose_coding, compressible
from proxyd.config.compress_model import CompressConfig
from proxyd.filters.api import Headers, header, remove_header, set_header
from proxyd.filters.internal import RelayExchange
from proxyd.metrics import RelayStats

CODER: Final = "_compress"
"""The exchange's `vars` key holding its _Coder, set when its body is transformed."""

_NO_BODY: Final = frozenset({204, 206, 304})
_GZIP: Final = ("gzip",)


class _Coder:
    """One response body's transformation: an encoder's, or gunzip's decompression, with the
    bytes that went in and came out (for the metrics)."""

    __slots__ = ("bytes_in", "bytes_out", "coding", "end", "step")

    def __init__(self, coding: str, step: Callable[[bytes], bytes], end: Callable[[], bytes]):
        self.coding = coding
        """The coding compressed to; "" for gunzip."""
        self.step = step
        self.end = end
        self.bytes_in = 0
        self.bytes_out = 0


class _Gunzip:
    """A gzip body decompressed as it streams: members one after the other (RFC 1952 2.2),
    each a fresh zlib stream; an end before a member's trailer is an error."""

    def __init__(self) -> None:
        self._stream = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def decompress(self, data: bytes) -> bytes:
        out = [self._stream.decompress(data)]
        while self._stream.eof and self._stream.unused_data:
            rest = self._stream.unused_data
            self._stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out.append(self._stream.decompress(rest))
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._stream.eof:
            raise zlib.error("the gzip body ends before its trailer")
        return b""


class Compress:
    """Built in on a proxied route whose `compress` or `gunzip` is on (row 19 of the chain).
    `stats` gives the listener's metrics, where the compressed responses are counted."""

    def __init__(self, config: CompressConfig, stats: Callable[[], RelayStats] | None = None):
        self.types = config.types
        self.min_length = config.min_length
        self.codings: Sequence[str] = config.codings if config.enabled else ()
        self.levels = {**DEFAULT_LEVELS, **dict(config.levels)}
        self.gunzip = config.gunzip
        self.stats = stats

    def response_head(self, exchange: RelayExchange) -> None:
        status = exchange.status
        if exchange.answer is not None or status < 200 or status in _NO_BODY:
            return
        if exchange.method == "HEAD":
            return
        fields = exchange.response_headers
        length = _length(fields)
        if length == 0:
            return
        if _no_transform(fields) or _no_transform(exchange.request_headers):
            return
        accept = header(exchange.request_headers, b"accept-encoding")
        encoding = header(fields, b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            if self.gunzip and encoding.strip().lower() == "gzip":
                _vary(fields)
                if choose_coding(accept, _GZIP) is None:
                    gunzip = _Gunzip()
                    remove_header(fields, b"Content-Encoding")
                    _transformed(fields)
                    exchange.vars[CODER] = _Coder("", gunzip.decompress, gunzip.finish)
            return
        if not self.codings or not compressible(header(fields, b"content-type"), self.types):
            return
        if length is not None and length < self.min_length:
            return
        _vary(fields)
        coding = choose_coding(accept, self.codings)
        if coding is None:
            return
        encoder: Encoder = make_encoder(coding, self.levels[coding])
        set_header(fields, b"Content-Encoding", coding)
        _transformed(fields)
        exchange.vars[CODER] = _Coder(coding, encoder.compress, encoder.finish)

    def takes_response_body(self, exchange: RelayExchange) -> bool:
        return CODER in exchange.vars

    def response_body(self, exchange: RelayExchange, data: bytes, end: bool) -> bytes:
        coder: _Coder = exchange.vars[CODER]
        out = coder.step(data) if data else b""
        if end:
            out += coder.end()
        coder.bytes_in += len(data)
        coder.bytes_out += len(out)
        if end and coder.coding and self.stats is not None:
            pool = exchange.pool
            cell = self.stats().cell(
                exchange.route_name or "", "" if pool is None else pool.name, ""
            )
            cell.compressed(coder.coding, coder.bytes_in, coder.bytes_out)
        return out


def _length(fields: Headers) -> int | None:
    """The Content-Length (the relay checked it when it framed the response); None if none."""
    value = header(fields, b"content-length")
    if value is None:
        return None
    try:
        return int(value.split(",")[0])
    except ValueError:
        return None


def _no_transform(fields: Headers) -> bool:
    value = header(fields, b"cache-control")
    if value is None:
        return False
    return any(part.split("=", 1)[0].strip().lower() == "no-transform" for part in value.split(","))


def _vary(fields: Headers) -> None:
    """Add Accept-Encoding to Vary, unless it is there or Vary is `*`."""
    value = header(fields, b"vary")
    if value is None:
        fields.append((b"Vary", b"Accept-Encoding"))
        return
    names = {part.strip().lower() for part in value.split(",")}
    if "*" in names or "accept-encoding" in names:
        return
    set_header(fields, b"Vary", f"{value}, Accept-Encoding" if value.strip() else "Accept-Encoding")


def _transformed(fields: Headers) -> None:
    """The fields of a body whose bytes change: no Content-Length (the exchange frames it),
    no Accept-Ranges, a weak ETag."""
    remove_header(fields, b"Content-Length")
    remove_header(fields, b"Accept-Ranges")
    etag = header(fields, b"etag")
    if etag is None:
        return
    etag = etag.strip()
    if etag.startswith("W/"):
        return
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"') and '"' not in etag[1:-1]:
        set_header(fields, b"ETag", "W/" + etag)
    else:
        remove_header(fields, b"ETag")
