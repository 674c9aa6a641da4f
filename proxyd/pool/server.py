"""Runtime state of one backend server: health, passive ejection, active connections."""

from __future__ import annotations

import attrs

from proxyd.config.model import Address, ServerConfig


@attrs.define(eq=False)
class Server:
    """A backend server as the pool sees it. Identity is the object (eq=False): hashable."""

    config: ServerConfig
    pool: str
    active: int = 0
    """Connections open or being opened to this server (relays acquire/release)."""
    healthy: bool = True
    """The active health check's verdict; True until a check says otherwise."""
    health_reason: str = ""
    consecutive_failures: int = 0
    """Passive health: connection failures reported in a row by relays."""
    ejections: int = 0
    """Ejections in a row; the next ejection lasts eject_time * 2**ejections (capped)."""
    ejected_until: float = 0.0
    name: str = attrs.field(init=False)
    """`config.name` (the address as text), made once: it is in every access-log line."""

    @name.default
    def _name(self) -> str:
        return self.config.name

    @property
    def address(self) -> Address:
        return self.config.address

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def backup(self) -> bool:
        return self.config.backup

    def is_available(self, now: float) -> bool:
        """Not administratively down, not failed by checks, not ejected at `now`."""
        return not self.config.down and self.healthy and now >= self.ejected_until

    def has_capacity(self) -> bool:
        """Below its max_connections (always true when that is 0)."""
        limit = self.config.max_connections
        return limit == 0 or self.active < limit
