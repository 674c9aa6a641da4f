"""Backend pools shared by every relay: servers, their runtime state, balancing (sans-IO)."""

from proxyd.pool.affinity import Affinity, client_hash_key, hash_key
from proxyd.pool.pool import ALL_SERVERS_BUSY, NO_SERVER_UP, Pool, ServerEvent, why_no_server
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
    "ALL_SERVERS_BUSY",
    "DRAIN",
    "MAINT",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "NO_SERVER_UP",
    "READY",
    "Affinity",
    "Pool",
    "Server",
    "ServerEvent",
    "client_hash_key",
    "hash_key",
    "why_no_server",
]
