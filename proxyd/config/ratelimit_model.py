"""`[ratelimit NAME]` sections: a rate, a burst and a key that listeners and routes name in
`ratelimits` (docs/ratelimits.md). Frozen attrs values, as the rest of proxyd.config.model;
the arithmetic is proxyd.ratelimit's, the filter proxyd.filters.ratelimit."""

from __future__ import annotations

from typing import Final

import attrs

from proxyd.ratelimit.rates import Rate

KEY_SOURCES: Final = ("client", "header", "auth", "route")
"""What a limit counts by: the client's address (as `access` judges it), a request header's
value (`header NAME`), the authenticated identity, the route; several combined."""

KeyPart = tuple[str, str | None]
"""One word of `key`: (source, the header's name in lower case for `header`, else None)."""


@attrs.frozen
class RateLimitConfig:
    """`[ratelimit NAME]`: at most `rate` requests (with a `burst` at one instant) per key."""

    name: str
    rate: Rate
    burst: int
    key: tuple[KeyPart, ...] = (("client", None),)
    dry_run: bool = False
    """Count and log what would be refused, refuse nothing."""
    max_keys: int = 100_000
    """The most keys held; past it the least recently hit is evicted (counted)."""
    status: int = 429

    @property
    def key_text(self) -> str:
        """`key` as written: `route client`, `header x-api-key`."""
        return " ".join(f"{source} {name}" if name else source for source, name in self.key)

    def same_table(self, other: RateLimitConfig) -> bool:
        """A table counted for `other` counts for this one too (a reload keeps it)."""
        return (self.rate, self.burst, self.key, self.max_keys) == (
            other.rate,
            other.burst,
            other.key,
            other.max_keys,
        )
