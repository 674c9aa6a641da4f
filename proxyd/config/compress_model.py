"""The value of the `compress*` and `gunzip` keys of [http], [https] and [route] sections
(proxyd.config.compress reads them; proxyd.filters.compress acts on them)."""

from __future__ import annotations

from typing import Final

import attrs

from proxyd.compress.negotiate import DEFAULT_TYPES

COMPRESS_KEYS: Final = (
    "compress",
    "compress_types",
    "compress_min_length",
    "compress_codings",
    "compress_levels",
    "gunzip",
)
"""The keys, on [http], [https] and on [route] sections with `pool`."""
DEFAULT_MIN_LENGTH: Final = 1024
"""`compress_min_length`: under about 1 KiB a response, head and body, fits in one TCP
segment uncompressed, so compressing it saves bytes but no packet, while the encoder costs
5 to 40 µs (zstd's context 33 µs) against some 60 µs of proxyd's own per request
(docs/compression.md)."""
DEFAULT_CODINGS: Final = ("zstd", "br", "gzip")
"""`compress_codings`, the server's preference (docs/compression.md, "Negotiation")."""


@attrs.frozen
class CompressConfig:
    """A route's compression settings, the listener's keys with the route's over them."""

    enabled: bool = False
    """`compress`: compress responses whose client accepts one of `codings`."""
    types: tuple[str, ...] = DEFAULT_TYPES
    """`compress_types`: the media types compressed (proxyd.compress.negotiate.compressible)."""
    min_length: int = DEFAULT_MIN_LENGTH
    """`compress_min_length`: a response whose Content-Length is lower is sent as it is (one
    without a Content-Length is compressed)."""
    codings: tuple[str, ...] = DEFAULT_CODINGS
    """`compress_codings`: gzip, br, zstd, the favourite first."""
    levels: tuple[tuple[str, int], ...] = ()
    """`compress_levels`: (coding, level) for the codings whose level is not
    proxyd.compress.encoders.DEFAULT_LEVELS'."""
    gunzip: bool = False
    """`gunzip`: a gzip response to a client that does not accept gzip is decompressed."""

    @property
    def active(self) -> bool:
        """The filter has something to do: compress, gunzip, or both."""
        return self.enabled or self.gunzip


@attrs.frozen
class RouteCompress:
    """A [route]'s own compression keys: each replaces the listener's; None leaves it."""

    enabled: bool | None = None
    types: tuple[str, ...] | None = None
    min_length: int | None = None
    codings: tuple[str, ...] | None = None
    levels: tuple[tuple[str, int], ...] | None = None
    gunzip: bool | None = None

    def over(self, listener: CompressConfig) -> CompressConfig:
        """The listener's settings with this route's in their place."""
        mine = {
            name: value
            for name, value in attrs.asdict(self, recurse=False).items()
            if value is not None
        }
        return attrs.evolve(listener, **mine) if mine else listener
