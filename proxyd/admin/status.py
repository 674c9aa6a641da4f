"""What the admin API shows: listeners with their counters, pools with their servers' state
and check history, and the effective config with its secrets masked. Built from the running
proxy (its config, pools and health service: the process that runs the checks) and the
counters (ProxydService.counters(), summed over the workers by their master). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

import proxyd
from proxyd.cache.instance import Counters
from proxyd.config.model import Certificate, Config
from proxyd.health import HealthService
from proxyd.metrics import TRAFFIC_FIELDS, add_counters, server_traffic
from proxyd.pool import Pool, Server

CACHE_COUNTERS = tuple(field.name for field in attrs.fields(Counters))
"""A cache's counters, in the status document and as proxyd_cache_* metrics."""

SECRET_KEYS = frozenset({"token", "read_token", "eab_hmac_key"})
"""Config fields whose values the API never shows."""
MASK = "********"


class Proxy(Protocol):
    """What the status document is made from (proxyd.app.ProxydService)."""

    @property
    def config(self) -> Config: ...

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def health(self) -> HealthService | None: ...

    @property
    def generation(self) -> int: ...

    @property
    def loaded(self) -> float: ...


def status_document(proxy: Proxy, counters: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The JSON document of GET /api/v1/status (docs/operations.md)."""
    config = proxy.config
    by_listener = counters.get("listeners", {})
    traffic = server_traffic(counters.get("metrics", {}))
    found = getattr(proxy, "discovery", None)
    discovery = found.figures() if found is not None else {}
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
    for gslb in config.gslb:
        # Its UDP socket's counters (the answers of both sides) and its TCP socket's.
        counted: dict[str, Any] = {}
        for name in (f"gslb {gslb.name}", f"gslb {gslb.name}/tcp"):
            add_counters(counted, by_listener.get(name, {}))
        listeners.append(
            {"name": gslb.name, "kind": "gslb", "listen": gslb.listen, "counters": counted}
        )
    return {
        "time": now,
        "version": proxyd.__version__,
        "workers": counters.get("workers", 1),
        "config": {"path": config.path, "generation": proxy.generation, "loaded": proxy.loaded},
        "listeners": listeners,
        "metrics": counters.get("metrics", {}),
        "pools": [
            {
                "name": pool.name,
                "balance": pool.config.balance,
                "servers": [
                    server_document(proxy, server, counters, traffic) for server in pool.servers
                ],
                "queue": counters.get("pools", {}).get(pool.name),
                "discovery": discovery.get(pool.name),
            }
            for pool in proxy.pools.values()
        ],
        "caches": cache_documents(config, counters.get("caches", {})),
        "ocsp": counters.get("ocsp"),
        "stick_tables": counters.get("stick_tables", {}),
        "admin_cluster": counters.get("admin_cluster"),
        "acme": acme_documents(counters.get("acme", {})),
    }


def acme_documents(figures: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each [acme] section's certificate and orders (proxyd.acme.service.Section.figures,
    from the process that orders), by name: times in seconds since the epoch, None when
    unknown (no certificate held, no order yet, an order running now)."""
    return [
        {
            "name": name,
            "expiry": found.get("expiry"),
            "orders": dict(found["orders"]),
            "last_attempt": found.get("last_attempt"),
            "next_attempt": found.get("next_attempt"),
            "failures": found["failures"],
        }
        for name, found in sorted(figures.items())
    ]


def cache_documents(config: Config, figures: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """Every [cache] of the config, and any other still open (a reload removed its
    section): its counters (summed over the workers), what its tiers hold, and its hit
    ratio. `entries` and `bytes` are the disk tier's when it has one (the memory tier then
    holds copies of some of the disk's responses), else the memory tier's (summed over the
    workers: each has its own)."""
    shown = []
    for name in sorted(set(config.caches) | set(figures)):
        found = figures.get(name, {})
        section = config.caches.get(name)
        tiers: dict[str, dict[str, int] | None] = {}
        for tier, configured in (
            ("memory", section is not None and section.memory_size > 0),
            ("disk", section is not None and section.path is not None),
        ):
            present = configured or f"{tier}_entries" in found
            tiers[tier] = (
                {
                    "entries": found.get(f"{tier}_entries", 0),
                    "bytes": found.get(f"{tier}_bytes", 0),
                }
                if present
                else None
            )
        main = tiers["disk"] or tiers["memory"] or {"entries": 0, "bytes": 0}
        counters = {field: found.get(field, 0) for field in CACHE_COUNTERS}
        shown.append(
            {
                "name": name,
                "entries": main["entries"],
                "bytes": main["bytes"],
                **tiers,
                "counters": counters,
                "hit_ratio": hit_ratio(counters),
            }
        )
    return shown


def hit_ratio(counters: Mapping[str, int]) -> float | None:
    """The share of the cache's lookups answered from it: (hits + stale) / (hits + stale +
    misses); None before any. Bypassed requests are not lookups; collapsed ones are left
    out (neither a miss of their own nor a stored answer); a response revalidated with a
    304 was a miss (an origin request) and is then a hit (docs/cache.md)."""
    served = counters.get("hits", 0) + counters.get("stale", 0)
    lookups = served + counters.get("misses", 0)
    return served / lookups if lookups else None


def _discovered(proxy: Proxy, server: Server) -> bool:
    """Whether discovery (proxyd.discovery) added `server` to its pool."""
    pool = proxy.pools.get(server.pool)
    return pool is not None and server.config in getattr(pool, "discovered", ())


def server_document(
    proxy: Proxy,
    server: Server,
    counters: Mapping[str, Any],
    traffic_by_server: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One server of the status document (also the answer to a change of its state).
    `http2` is its HTTP/2 connections' and streams' counts in a pool with `protocol = h2` or
    `h2c` (proxyd.relay.http.h2_upstream_metrics), else None."""
    key = f"{server.pool}/{server.name}"
    history = proxy.health.history(server) if proxy.health is not None else []
    traffic = traffic_by_server.get(key, {})
    return {
        "name": server.name,
        "state": server.state,
        "health": server.health,
        "admin": server.admin,
        "reason": server.reason,
        "weight": server.weight,
        "backup": server.backup,
        "discovered": _discovered(proxy, server),
        "active": counters.get("servers", {}).get(key, {}).get("active", server.active),
        "http2": counters.get("http2_upstreams", {}).get(server.pool, {}).get(server.name),
        "traffic": {field: traffic.get(field, 0) for field in TRAFFIC_FIELDS},
        "checks": [
            {
                "time": result.time,
                "ok": result.ok,
                "reason": result.reason,
                "duration": result.duration,
            }
            for result in history
        ],
    }


def config_document(config: Config) -> dict[str, Any]:
    """The effective config (every key with its value or its default), secrets masked."""
    shown = _plain(config)
    assert isinstance(shown, dict)
    return shown


def _plain(value: Any, key: str = "") -> Any:
    if key in SECRET_KEYS:
        return None if value is None else MASK
    if isinstance(value, Certificate):
        return {
            "path": value.path,
            "key_path": value.key_path,
            "names": list(value.names),
            "not_after": value.not_after.isoformat(),
        }
    if attrs.has(type(value)):
        return {
            field.name: _plain(getattr(value, field.name), field.name)
            for field in attrs.fields(type(value))
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
