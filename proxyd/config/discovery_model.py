"""A pool's service discovery, as the config says it (proxyd.config.discovery parses it)."""

from __future__ import annotations

import attrs

DISCOVERY_KINDS = ("srv", "etcd")
DEFAULT_MAX_DISCOVERED = 64


@attrs.frozen
class DiscoveryConfig:
    """`discovery = srv NAME` or `discovery = etcd URL PREFIX` of a [pool]."""

    kind: str
    """srv | etcd"""
    name: str
    """srv: the SRV owner name (e.g. _http._tcp.api.example.test); etcd: the key prefix."""
    endpoint: str = ""
    """etcd: the client URL of its JSON gateway, http://HOST:PORT."""
    resolver: tuple[str, int] | None = None
    """srv: the DNS server to ask (host, port); None asks the system's (/etc/resolv.conf)."""
    max_servers: int = DEFAULT_MAX_DISCOVERED
    """`max_discovered`: the most servers discovery adds to the pool; more are left out."""

    @property
    def source(self) -> tuple[str, str, str]:
        """What is asked (kind, name, endpoint): a reload that keeps it keeps the servers
        found so far until the source answers again, even if `resolver` or the bound
        changed."""
        return (self.kind, self.name, self.endpoint)
