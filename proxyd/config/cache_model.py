"""The `[cache NAME]` section's settings (docs/cache.md), as the rest of
proxyd.config.model: frozen attrs values."""

from __future__ import annotations

from typing import Final

import attrs

from proxyd.cache.keys import Condition, KeyRule
from proxyd.config.ratelimit_model import RedisStore

USE_STALE: Final = ("error", "timeout", "http_500", "http_502", "http_503", "http_504", "updating")
"""`use_stale`'s words (nginx's proxy_cache_use_stale): the origin unreachable or failing
(error), too slow (timeout), answering one of these statuses; `updating`: while another
request refreshes the entry."""


@attrs.frozen
class CacheConfig:
    name: str
    memory_size: int = 64 << 20
    """The memory tier's bound (bodies and fields), bytes."""
    memory_object_size: int = 1 << 20
    """Responses larger than this stay out of the memory tier when there is a disk tier."""
    path: str | None = None
    """The disk tier's directory; None: memory only."""
    disk_size: int = 1 << 30
    max_object_size: int = 1 << 30
    """Responses larger than this are not stored."""
    lock_timeout: float = 5.0
    """How long requests for a key being fetched wait for it before going to the origin."""
    use_stale: frozenset[str] = frozenset()
    key: KeyRule = attrs.field(factory=KeyRule)
    bypass: tuple[Condition, ...] = ()
    """Requests not answered from the cache (their responses may be stored)."""
    no_store: tuple[Condition, ...] = ()
    """Requests whose responses are not stored."""
    tag_headers: tuple[bytes, ...] = (b"surrogate-key", b"cache-tag")
    """Response fields whose values are purge tags (lower case)."""
    strip_tag_headers: bool = True
    """The tag fields are the cache's: not sent to clients."""
    purge_method: bool = False
    """PURGE requests (under the route's access control) purge the URL they name."""
    status_name: str = "proxyd"
    """This cache's name in Cache-Status."""
    heuristic: bool = True
    """RFC 9111 4.2.2's heuristic freshness for responses that allow it."""
    store_set_cookie: bool = False
    """Responses with Set-Cookie are not stored (nginx and Varnish by default), lest one
    client's cookie be served to another; on: stored without the Set-Cookie field."""
    cluster: RedisStore | None = None
    """Purge fan-out: the Redis every node of the cluster shares (proxyd.cache.cluster);
    None: purges stay on this node."""
    cluster_name: str | None = None
    """The cluster's name in Redis (its log and channel); None: the cache's name."""
    cluster_log: int = 10_000
    """Purges kept in the log for nodes that were away (about: XADD MAXLEN ~)."""
