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
class RedisStore:
    """`store = redis://[USER:PASSWORD@]HOST[:PORT][/DB]` (`rediss://`: over TLS): where a
    limit's keys are counted for every node (proxyd.ratelimit.redis_limit)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    """Never logged: `display` leaves it out."""
    tls: bool = False
    ca: str | None = None
    """`store_ca`: the PEM file of the CAs a TLS server's certificate is checked against
    (default: the system's)."""

    @property
    def display(self) -> str:
        """The URL without the user and password, for logs and metrics."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


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
    store: RedisStore | None = None
    """None: counted in this node (its workers as one); else in Redis, for every node."""
    store_timeout: float = 0.1
    """The longest a request waits on Redis before `on_store_error` decides."""
    on_store_error: str = "allow"
    """`allow` or `deny` (503) while Redis is slow or down."""
    local_allowance: int = 0
    """Requests a node takes from Redis beyond those waiting, to spend without asking."""

    @property
    def key_text(self) -> str:
        """`key` as written: `route client`, `header x-api-key`."""
        return " ".join(f"{source} {name}" if name else source for source, name in self.key)

    def same_table(self, other: RateLimitConfig) -> bool:
        """A table counted for `other` counts for this one too (a reload keeps it)."""
        return attrs.evolve(self, name=other.name, dry_run=False, status=429) == attrs.evolve(
            other, dry_run=False, status=429
        )
