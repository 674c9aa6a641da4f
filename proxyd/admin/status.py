"""What the admin API shows: listeners with their counters, pools with their servers' state,
built from the config, the pools (health state: the process that runs the checks) and the
counters (ProxydService.counters(), summed over the workers by their master). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxyd.config.model import Config
from proxyd.pool import Pool


def status_document(
    config: Config, pools: Mapping[str, Pool], counters: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON document of GET /api/v1/status."""
    by_listener = counters.get("listeners", {})
    by_server = counters.get("servers", {})
    listeners = []
    for kind, configs in (
        ("tcp", config.tcp),
        ("http", config.http),
        ("udp", config.udp),
        ("websocket", config.websocket),
    ):
        for listener in configs:
            shown = getattr(listener, "kind", kind)  # [http] and [https] share a config class
            listeners.append(
                {
                    "name": listener.name,
                    "kind": shown,
                    "listen": listener.listen,
                    "counters": dict(by_listener.get(f"{shown} {listener.name}", {})),
                }
            )
    return {
        "workers": counters.get("workers", 1),
        "listeners": listeners,
        "pools": [
            {
                "name": pool.name,
                "balance": pool.config.balance,
                "servers": [
                    {
                        "name": server.name,
                        "state": "up" if server.healthy else "down",
                        "reason": server.health_reason,
                        "weight": server.weight,
                        "backup": server.backup,
                        "active": by_server.get(f"{pool.name}/{server.name}", {}).get("active", 0),
                    }
                    for server in pool.servers
                ],
            }
            for pool in pools.values()
        ],
    }
