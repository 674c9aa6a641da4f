"""The healthy servers of the pools a [gslb] answers from, kept from the state changes the
pools publish (the health service's verdicts, passive ejections, the admin API's drain and
maint: proxyd.pool.Pool.subscribe), never polled. Weights are read as each answer is made
(the admin API may change them; they are no health state)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from twisted.internet.interfaces import IReactorTime

from proxyd.clock import Clock
from proxyd.pool import Pool, Server
from proxyd.pool.pool import ServerEvent

__all__ = ["HealthyView"]


class HealthyView:
    """Per pool, the servers a [gslb] may answer with now (proxyd.gslb.answers.Healthy)."""

    def __init__(
        self, clock: IReactorTime, pools: Mapping[str, Pool], names: Iterable[str]
    ) -> None:
        self._clock = cast(Clock, clock)
        self._pools = {name: pools[name] for name in names}
        self._available: dict[str, tuple[Server, ...]] = {}
        self._families = {
            name: frozenset(_version(server) for server in pool.servers)
            for name, pool in self._pools.items()
        }
        self._unsubscribe: list[Callable[[], None]] = []
        for name, pool in self._pools.items():
            self._unsubscribe.append(pool.subscribe(self._changed))
            self._refresh(name)

    def _changed(self, event: ServerEvent) -> None:
        if event.pool in self._pools:
            self._refresh(event.pool)

    def _refresh(self, name: str) -> None:
        """The pool's available primaries, or its available backups when no primary is (as
        Pool.pick() chooses)."""
        now = self._clock.seconds()
        servers = [s for s in self._pools[name].servers if s.is_available(now)]
        primaries = tuple(s for s in servers if not s.backup)
        self._available[name] = primaries or tuple(s for s in servers if s.backup)

    def healthy(self, pool: str) -> Sequence[tuple[str, int]]:
        return [(server.address.host, server.weight) for server in self._available[pool]]

    def families(self, pool: str) -> frozenset[int]:
        return self._families[pool]

    def close(self) -> None:
        """Stop following the pools (the listener is replaced or stopped)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []


def _version(server: Server) -> int:
    try:
        return ipaddress.ip_address(server.address.host).version
    except ValueError:
        return 0  # a host name: refused by the config check ([gslb] records)
