"""The discovery service: one source (SRV or etcd driver) per pool with `discovery`, each
applying the server lists it finds to its pool (Pool.set_discovered), for the process that
runs the health checks (a master of workers tells its workers: proxyd.workers.master).

A source that fails keeps the pool's last list; the failure is logged once when it begins
and once when it ends. A reload keeps the source of every pool whose `discovery` is
unchanged (its pool carries the discovered servers over: proxyd.pool.Pool)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.discovery.common import Found, Outage
from proxyd.discovery.etcd_driver import EtcdDriver, agent_post
from proxyd.discovery.srv_driver import SrvDriver, make_resolver
from proxyd.pool import Pool

log = Logger()


def describe(config: DiscoveryConfig) -> str:
    if config.kind == "srv":
        return f"SRV {config.name}"
    return f"etcd {config.endpoint} {config.name}"


class Source:
    """What a driver reports to, for one pool: applies lists, counts, logs."""

    def __init__(self, pool: Pool, config: DiscoveryConfig) -> None:
        self.pool = pool
        self.config = config
        self.outage = Outage()
        self.updates = 0
        """Lists that changed the pool's servers."""
        self.failures = 0
        """Failed attempts (each retry counts)."""
        self.left_out = 0
        """Servers the last list had beyond max_discovered."""
        self.invalid: Mapping[str, str] = {}
        self.driver: Any = None

    @property
    def failing(self) -> bool:
        return self.outage.failing

    def update(self, found: Found) -> None:
        if self.outage.succeeded():
            log.info(
                "pool {pool}: discovery ({source}) recovered; {count} servers found",
                pool=self.pool.name,
                source=describe(self.config),
                count=len(found.servers),
            )
        if found.left_out and found.left_out != self.left_out:
            log.warn(
                "pool {pool}: discovery ({source}) found {total} servers; max_discovered ="
                " {limit} leaves {left} out",
                pool=self.pool.name,
                source=describe(self.config),
                total=len(found.servers) + found.left_out,
                limit=self.config.max_servers,
                left=found.left_out,
            )
        self.left_out = found.left_out
        invalid = getattr(self.driver, "state", None)
        invalid = invalid.invalid if invalid is not None else {}
        for key, why in invalid.items():
            if self.invalid.get(key) != why:
                log.warn(
                    "pool {pool}: etcd key {key} left out: {why}",
                    pool=self.pool.name,
                    key=key,
                    why=why,
                )
        self.invalid = dict(invalid)
        added, removed = self.pool.set_discovered(found.servers)
        if added or removed:
            self.updates += 1
            log.info(
                "pool {pool}: discovery ({source}) added {added}, removed {removed}",
                pool=self.pool.name,
                source=describe(self.config),
                added=", ".join(s.name for s in added) or "none",
                removed=", ".join(s.name for s in removed) or "none",
            )

    def failed(self, reason: str) -> None:
        self.failures += 1
        if self.outage.failed(reason):
            log.warn(
                "pool {pool}: discovery ({source}) failed: {reason}; keeping the last"
                " {count} servers found",
                pool=self.pool.name,
                source=describe(self.config),
                reason=reason,
                count=len(self.pool.discovered),
            )

    def figures(self) -> dict[str, Any]:
        return {
            "source": describe(self.config),
            "servers": len(self.pool.discovered),
            "updates": self.updates,
            "failures": self.failures,
            "failing": self.outage.failing,
            "left_out": self.left_out,
        }


DriverFactory = Callable[[Any, DiscoveryConfig, Source], Any]


def make_driver(reactor: Any, config: DiscoveryConfig, source: Source) -> Any:
    """The driver of `config`'s kind, on the real network."""
    if config.kind == "srv":
        return SrvDriver(reactor, config, source, make_resolver(reactor, config))
    return EtcdDriver(reactor, config, source, agent_post(reactor))


class DiscoveryService(Service):
    """Runs the discovery of every pool that has a `discovery`."""

    def __init__(
        self, reactor: Any, pools: Mapping[str, Pool], drivers: DriverFactory = make_driver
    ) -> None:
        self.reactor = reactor
        self.pools = pools
        self._make_driver = drivers
        self.sources: dict[str, Source] = {}

    def _start(self, pool: Pool) -> None:
        config = pool.config.discovery
        assert config is not None
        source = Source(pool, config)
        source.driver = self._make_driver(self.reactor, config, source)
        self.sources[pool.name] = source
        source.driver.start()

    def startService(self) -> None:
        super().startService()
        for pool in self.pools.values():
            if pool.config.discovery is not None:
                self._start(pool)

    def stopService(self) -> None:
        for source in self.sources.values():
            source.driver.stop()
        self.sources = {}
        super().stopService()

    def reload(self, pools: Mapping[str, Pool]) -> None:
        """Discover for `pools`, a reload's: a pool whose `discovery` is unchanged keeps
        its source (now applying to the new pool); others start again."""
        self.pools = pools
        if not self.running:
            return
        old = self.sources
        self.sources = {}
        for pool in pools.values():
            config = pool.config.discovery
            source = old.pop(pool.name, None)
            if config is not None and source is not None and source.config == config:
                source.pool = pool
                self.sources[pool.name] = source
                continue
            if source is not None:
                source.driver.stop()
            if config is not None:
                self._start(pool)
        for source in old.values():
            source.driver.stop()

    def figures(self) -> dict[str, dict[str, Any]]:
        """Each discovering pool's source, servers, updates and failures, by pool."""
        return {name: source.figures() for name, source in self.sources.items()}
