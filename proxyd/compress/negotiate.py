"""Whether and how to compress a response, sans-IO: the content coding a client accepts
(RFC 9110 12.5.3, Accept-Encoding) and the media types worth compressing.

How the wiring uses it, once the response head is known:

    coding = choose_coding(header(request_headers, b"accept-encoding"), preference)
    if coding is not None and compressible(header(response_headers, b"content-type"), types):
        ...  # Content-Encoding: coding, an encoder from proxyd.compress.encoders

(a response that already has a Content-Encoding, or Cache-Control: no-transform, is the
wiring's to leave alone; a compressible type gets Vary: Accept-Encoding whatever the choice).

Parsing is lenient: the value is a comma-separated list of `coding [; q=qvalue]`, several
field lines joined with ", " (as proxyd.filters.api.header joins them). Names are
case-insensitive and whitespace around elements, ';' and '=' does not matter. A malformed
element (a name that is not a token, a qvalue outside RFC 9110's grammar such as `q=2`,
`q=0.1234`, `q=x`, or two q's) is ignored on its own, as if not sent: one bad element does
not cost the client compression. Parameters other than q are ignored. `x-gzip` is `gzip`
(RFC 9110 8.4.1.3). A coding named twice keeps its lower weight, so a refusal is never
overridden.

Choice: each of the server's codings weighs what the client said of it, else what it said
of `*`, else 0 (not acceptable). The heaviest above 0 wins; a tie goes to the one earlier in
the server's preference. Identity competes only with a weight the client gave it (by name or
through `*`): `gzip;q=0.5, identity` prefers no coding and gets none, a tie goes to the
coding, and `gzip;q=0.5` alone gets gzip.

None means identity: no coding is acceptable, identity is preferred, or the request has no
Accept-Encoding (RFC 9110 lets a server read that as "anything", but clients that send none,
curl or a health check, often cannot decode; nginx and the others compress only on request).
When identity is refused too (`identity;q=0` or `*;q=0` and nothing else acceptable), RFC 9110
permits a 406; proxyd sends the response uncompressed, as nginx does: it is a proxy, not the
origin, so it only ever adds a coding to what the server sent, never refuses it. An empty
value (`Accept-Encoding:` alone) asks for no coding (RFC 9110) and gets None.

Cost, measured on the development machine (Python 3.11): about 3 µs to choose for a browser's
`gzip, deflate, br, zstd`, 1 µs for compressible().
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

DEFAULT_TYPES: Final[tuple[str, ...]] = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
)
"""Text formats, which compress to a fifth or less: HTML, CSS, JavaScript, CSV, server-sent
events (text/*, text/javascript included), JSON and its +json types (problem+json, ld+json),
streamed NDJSON, XML and its +xml types (atom, rss, xhtml), SVG. Not the formats that are
compressed already (images but SVG, audio, video, woff2, zip, gzip), where a coding adds CPU
and bytes. Not application/wasm either, although it compresses well: modules are large build
artifacts, better precompressed once (brotli 11 at build time) than compressed again on every
response; an operator whose servers send them raw adds it."""

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""RFC 9110 5.6.2's token, lower case (names are lowered first)."""
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
"""RFC 9110 12.4.2: 0 to 1 with at most three decimals."""
_ALIASES: Final = {"x-gzip": "gzip"}


def accepted_codings(accept_encoding: str) -> dict[str, float]:
    """The weight (0 to 1) a client gave each coding it named, `*` and identity included,
    by lower-case name; malformed elements left out (module docstring)."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        name, *parameters = element.split(";")
        name = name.strip().lower()
        if not _TOKEN.fullmatch(name):
            continue
        weight: float | None = None
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() != "q":
                continue
            value = value.strip()
            if weight is not None or not _QVALUE.fullmatch(value):
                break
            weight = float(value)
        else:
            name = _ALIASES.get(name, name)
            weight = 1.0 if weight is None else weight
            weights[name] = min(weight, weights.get(name, weight))
    return weights


def choose_coding(accept_encoding: str | None, preference: Sequence[str]) -> str | None:
    """The coding of `preference` (lower-case names, the server's favourite first) to
    compress a response with for a request whose Accept-Encoding is `accept_encoding` (None:
    absent); None to send it uncompressed."""
    if accept_encoding is None:
        return None
    weights = accepted_codings(accept_encoding)
    anything = weights.get("*")
    best, best_weight = None, 0.0
    for coding in preference:
        weight = weights.get(coding, anything or 0.0)
        if weight > best_weight:
            best, best_weight = coding, weight
    identity = weights.get("identity", anything)
    if identity is not None and identity > best_weight:
        return None
    return best


def compressible(content_type: str | None, types: Iterable[str]) -> bool:
    """Whether a body of `content_type` (a Content-Type value, None when absent) is one of
    `types`: `type/subtype`, `type/*` or `type/*+suffix` (RFC 6838 structured syntax
    suffixes), compared without parameters and in any case. A body without a Content-Type
    is not: proxyd does not guess what it is."""
    if content_type is None:
        return False
    kind, slash, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    if not slash or not subtype:
        return False
    for pattern in types:
        pattern_kind, _, pattern_subtype = pattern.lower().partition("/")
        if pattern_kind != kind:
            continue
        if pattern_subtype in ("*", subtype):
            return True
        if pattern_subtype.startswith("*+"):
            suffix = pattern_subtype[1:]
            if subtype.endswith(suffix) and len(subtype) > len(suffix):
                return True
    return False
