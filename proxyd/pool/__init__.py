"""Backend pools shared by every relay: servers, their runtime state, balancing (sans-IO)."""

from proxyd.pool.pool import Pool, ServerEvent
from proxyd.pool.server import Server

__all__ = ["Pool", "Server", "ServerEvent"]
