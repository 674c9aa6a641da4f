"""Runtime state of one backend server: health, passive ejection, admin state, active
connections, weight."""

from __future__ import annotations

import attrs

from proxyd.config.model import Address, ServerConfig

READY = "ready"
DRAIN = "drain"
MAINT = "maint"
ADMIN_STATES = (READY, DRAIN, MAINT)
"""Admin states set at run time, as HAProxy's runtime API has them. `drain` takes no new
connections while the open ones finish; `maint` also pauses the server's health checks."""

MIN_WEIGHT = 1
MAX_WEIGHT = 256
"""The weights a server may have at run time: the range `weight=` accepts in the config
(proxyd.config.values), so that a reload can always restore a weight set through the API."""


@attrs.define(eq=False)
class Server:
    """A backend server as the pool sees it. Identity is the object (eq=False): hashable.

    A reload carries the object over to the new pool when the server keeps its name, so
    that the connections open on it and its health stay counted on one object.
    """

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
    ejected: bool = False
    """An ejection was published and its end has not been yet (the pool keeps this, so that
    `state` needs no clock)."""
    ejection_reason: str = ""
    admin: str = READY
    """One of ADMIN_STATES; only the pool changes it (Pool.set_admin), which tells observers."""
    name: str = attrs.field(init=False)
    """`config.name` (the address as text), made once: it is in every access-log line."""
    weight: int = attrs.field(init=False)
    """The weight balancers use: the configured one until set at run time (Pool.set_weight)."""

    @name.default
    def _name(self) -> str:
        return self.config.name

    @weight.default
    def _weight(self) -> int:
        return self.config.weight

    @property
    def address(self) -> Address:
        return self.config.address

    @property
    def backup(self) -> bool:
        return self.config.backup

    @property
    def health(self) -> str:
        """'up' or 'down' by health alone: active checks, passive ejection, config `down`."""
        if self.config.down or not self.healthy or self.ejected:
            return "down"
        return "up"

    @property
    def state(self) -> str:
        """One word for the admin API: the admin state when it is drain or maint (they win
        over health), else `health`."""
        if self.admin != READY:
            return self.admin
        return self.health

    @property
    def reason(self) -> str:
        """Why the server is down by health; '' when it is up."""
        if self.config.down:
            return "down in the configuration"
        if not self.healthy:
            return self.health_reason
        if self.ejected:
            return self.ejection_reason
        return ""

    def is_available(self, now: float) -> bool:
        """Ready (neither drained nor in maintenance), not down in the config, not failed by
        checks, not ejected at `now`."""
        return (
            self.admin == READY
            and not self.config.down
            and self.healthy
            and now >= self.ejected_until
        )

    def has_capacity(self) -> bool:
        """Below its max_connections (always true when that is 0)."""
        limit = self.config.max_connections
        return limit == 0 or self.active < limit
