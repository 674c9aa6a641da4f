"""Backend pools shared by every relay: servers, their runtime state, balancing (sans-IO)."""

from proxyd.pool.pool import Pool, ServerEvent, why_no_server
from proxyd.pool.server import (
    ADMIN_STATES,
    DRAIN,
    MAINT,
    MAX_WEIGHT,
    MIN_WEIGHT,
    READY,
    Server,
)

__all__ = [
    "ADMIN_STATES",
    "DRAIN",
    "MAINT",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "READY",
    "Pool",
    "Server",
    "ServerEvent",
    "why_no_server",
]
