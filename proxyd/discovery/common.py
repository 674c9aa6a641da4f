"""What both kinds of discovery share: the server list they produce, the bound on it, the
backoff after failures and the log-once state of a source (sans-IO)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from proxyd.config.endpoints import servers as parse_servers
from proxyd.config.errors import Invalid
from proxyd.config.model import ServerConfig

RETRY_MIN = 1.0
"""The first retry after a failure, in seconds; each further failure in a row doubles it."""
RETRY_MAX = 30.0
"""The longest wait between retries."""


@attrs.frozen
class Found:
    """A source's server list: the servers kept (at most the pool's max_discovered) and how
    many were left out by that bound."""

    servers: tuple[ServerConfig, ...]
    left_out: int = 0


def bounded(servers: Iterable[ServerConfig], limit: int) -> Found:
    """The first `limit` servers of `servers` (each address once), and how many more there
    were. The order is the source's, made stable by the caller (priority, then name)."""
    kept: list[ServerConfig] = []
    seen: set[str] = set()
    left_out = 0
    for server in servers:
        if server.name in seen:
            continue
        seen.add(server.name)
        if len(kept) < limit:
            kept.append(server)
        else:
            left_out += 1
    return Found(tuple(kept), left_out)


def server_of(value: str) -> ServerConfig:
    """One server as on a `servers` line (an etcd key's value, a line the master sends its
    workers). Raises Invalid."""
    found = parse_servers(value)
    if len(found) != 1:
        raise Invalid("one server", f"{len(found)} servers")
    return found[0]


def server_line(server: ServerConfig) -> str:
    """`server` as a `servers` line (proxyd.config.endpoints.servers parses it back): how a
    master tells its workers a discovered list."""
    words = [server.name]
    if server.weight != 1:
        words.append(f"weight={server.weight}")
    if server.max_connections:
        words.append(f"max_connections={server.max_connections}")
    if server.backup:
        words.append("backup")
    return " ".join(words)


class Backoff:
    """The wait before the next try after failures in a row: RETRY_MIN, doubled each time,
    at most RETRY_MAX; reset by a success."""

    def __init__(self, low: float = RETRY_MIN, high: float = RETRY_MAX) -> None:
        self.low = low
        self.high = high
        self.failures = 0

    def next(self) -> float:
        delay = min(self.low * 2**self.failures, self.high)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """Whether a source is failing, so that a failure is logged once when it begins and once
    when it ends, however many retries come between."""

    def __init__(self) -> None:
        self.failing = False
        self.reason = ""

    def failed(self, reason: str) -> bool:
        """Record a failure; True when it begins an outage (log it)."""
        began = not self.failing
        self.failing = True
        self.reason = reason
        return began

    def succeeded(self) -> bool:
        """Record a success; True when it ends an outage (log the recovery)."""
        ended = self.failing
        self.failing = False
        self.reason = ""
        return ended
