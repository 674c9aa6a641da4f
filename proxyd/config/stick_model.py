"""A pool's stick table settings (proxyd.config.stick parses them)."""

from __future__ import annotations

import attrs

from proxyd.config.ratelimit_model import RedisStore


@attrs.frozen
class StickConfig:
    """What a client is known by (`source`: cookie, header or client_ip; `name` for the
    first two), where the table lives (`store`; None: in this process only), how long an
    entry lives unused (`expire`), and how long a request waits on Redis (`timeout`)."""

    source: str
    name: str | None = None
    store: RedisStore | None = None
    expire: float = 1800.0
    timeout: float = 0.05
