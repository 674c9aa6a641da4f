"""SNI routing for `[tcp]` listeners with route_by = sni: a server name to a pool name."""

from __future__ import annotations

from collections.abc import Sequence

from proxyd.config.model import SniRoute


class SniRoutes:
    """An exact name first, then `*.` + the parent domain (one label, as certificates'
    wildcards), then the default pool; None when there is no default."""

    def __init__(self, routes: Sequence[SniRoute], default: str | None) -> None:
        self._pools = {route.name: route.pool for route in routes}
        self.default = default

    def pool_for(self, server_name: str | None) -> str | None:
        if server_name:
            name = server_name.lower().rstrip(".")
            pool = self._pools.get(name)
            if pool is None and "." in name:
                pool = self._pools.get("*." + name.split(".", 1)[1])
            if pool is not None:
                return pool
        return self.default
