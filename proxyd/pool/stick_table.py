"""A pool's stick table (`stick_on`), the sans-IO part: the bounded local table in front of
Redis, the decision to make with what Redis answered, and the outage bookkeeping. The driver
(proxyd.filters.stick) asks Redis and the pool; everything here takes `now` and names.

With `stick_store = redis://...` the table lives in Redis, `proxyd:stick:POOL:KEY` → the
server's name, with `stick_expire` refreshed on each lookup (GETEX). A node keeps what it
learnt for LOCAL_TTL (1 s) in a LocalTable of at most LOCAL_SIZE keys, so that a busy key
costs one Redis call a second per node, and a server that another node moved the key off is
followed within a second. Entries are written by one script (RECORD_SCRIPT) that sets the
key only if it still holds what the node saw (nothing, or the server it found down): two
nodes that race agree on the first one's choice.

Redis down or slower than `stick_timeout`: the node decides alone (its LocalTable, entries
kept for `stick_expire`), logs it once, asks Redis again once a PROBE_INTERVAL, and on the
first answer logs the recovery and forgets what it decided alone (Redis's table is the one
every node follows).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

LOCAL_TTL: Final = 1.0
"""Seconds a node follows what Redis said for a key before asking again."""
LOCAL_SIZE: Final = 10_000
"""Keys a node keeps per pool; past it the least recently used goes."""
PROBE_INTERVAL: Final = 1.0
"""Seconds between two tries of a Redis that failed."""
PREFIX: Final = "proxyd:stick:"
MAX_KEY: Final = 128
"""Longer keys (a long cookie) are stored as their digest."""

RECORD_SCRIPT: Final = """
local v = redis.call('GET', KEYS[1])
if (v == false and ARGV[1] == '') or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return ARGV[2]
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return v
"""
"""KEYS: the entry; ARGV: what the node saw ('' for nothing), its pick, the expiry in
seconds. Answers the server the entry names now (the pick, or another node's)."""


def redis_key(pool: str, key: str) -> str:
    if len(key) > MAX_KEY:
        key = "#" + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=16).hexdigest()
    return f"{PREFIX}{pool}:{key}"


class LocalTable:
    """Keys → server names, each with its own expiry, at most `size` of them."""

    def __init__(self, size: int = LOCAL_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.evicted = 0

    def get(self, key: str, now: float) -> str | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, server: str, until: float) -> None:
        entries = self._entries
        entries[key] = (server, until)
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)
            self.evicted += 1

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Outage:
    """Whether to ask Redis now, and when to log that it went or came back."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self._probe_at = 0.0
        self._probing = False
        self.decided_alone = 0
        """Requests decided without Redis in this outage."""

    def may_ask(self, now: float) -> bool:
        """Redis is up, or it is time to try it again (one request at a time)."""
        if self.down_since is None:
            return True
        if self._probing or now < self._probe_at:
            return False
        self._probing = True
        return True

    def failed(self, now: float) -> bool:
        """A call failed or timed out; True when this begins an outage (log it)."""
        self._probing = False
        self._probe_at = now + PROBE_INTERVAL
        if self.down_since is None:
            self.down_since = now
            self.decided_alone = 0
            return True
        return False

    def answered(self) -> int | None:
        """Redis answered; the requests decided alone when this ends an outage (log it)."""
        self._probing = False
        if self.down_since is None:
            return None
        self.down_since = None
        return self.decided_alone
