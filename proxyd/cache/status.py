"""The `Cache-Status` response field (RFC 9211) of a response proxyd's cache handled: one
list member a cache, added after those of the caches nearer the origin (an upstream proxyd
or CDN tier puts its own first: 2), as a Structured Field (RFC 9651).

    proxyd; hit; ttl=42                 served from the cache, fresh for 42 s more
    proxyd; hit; ttl=-3                 served stale (allowed by the client or RFC 5861)
    proxyd; fwd=miss; stored            fetched, then stored
    proxyd; fwd=stale; fwd-status=304   revalidated: the origin said not modified
    proxyd; fwd=uri-miss; collapsed     waited on another request's fetch of the same URI
    proxyd; fwd=bypass; detail=no-store (`detail` says why, a token)
"""

from __future__ import annotations

import re
from typing import Final

FORWARD_REASONS: Final = frozenset(
    {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}
)
"""RFC 9211 2.2's fwd values."""

_TOKEN: Final = re.compile(r"^[A-Za-z*][!#$%&'*+\-.^_`|~:/0-9A-Za-z]*$")


def cache_status(
    name: str,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
) -> bytes:
    """One member of Cache-Status for cache `name` (a token, or written as a string)."""
    if hit == (fwd is not None):
        raise ValueError("a response is either a hit or forwarded (fwd)")
    if fwd is not None and fwd not in FORWARD_REASONS:
        raise ValueError(f"fwd is one of {sorted(FORWARD_REASONS)}, not {fwd!r}")
    parts = [name if _TOKEN.match(name) else _string(name)]
    if hit:
        parts.append("hit")
    else:
        parts.append(f"fwd={fwd}")
        if fwd_status is not None:
            parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl // 1)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail is not None:
        parts.append(f"detail={detail if _TOKEN.match(detail) else _string(detail)}")
    return "; ".join(parts).encode("ascii")


def _string(text: str) -> str:
    """A Structured Field String: printable ASCII, with `"` and `\\` escaped."""
    if any(not 0x20 <= ord(char) <= 0x7E for char in text):
        raise ValueError(f"not printable ASCII: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
