"""A pool of servers: picks one for a relay and keeps passive and active health (sans-IO)."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import cast

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import PoolConfig
from proxyd.pool.balance import make_balancer
from proxyd.pool.server import Server

_log = Logger()


@attrs.frozen
class ServerEvent:
    """A server's state changed. `state` is 'UP', 'DOWN' (checks) or 'EJECTED' (passive)."""

    pool: str
    server: str
    state: str
    reason: str


class Pool:
    """Servers of one `[pool NAME]` with its balancing algorithm.

    Relays call pick() for a server, acquire()/release() around each connection (counted from
    the connect attempt on), and report_success()/report_failure() for each connect attempt.
    The health service calls set_health(). Observers get a ServerEvent on every change.
    """

    def __init__(
        self, config: PoolConfig, clock: IReactorTime, rng: random.Random | None = None
    ) -> None:
        self.name = config.name
        self.config = config
        self.servers = tuple(Server(config=server, pool=config.name) for server in config.servers)
        self._clock = cast(Clock, clock)
        self._primaries = tuple(server for server in self.servers if not server.backup)
        self._backups = tuple(server for server in self.servers if server.backup)
        self._balancer = make_balancer(
            config.balance, self.servers, rng if rng is not None else random.Random()
        )
        self._observers: list[Callable[[ServerEvent], None]] = []
        # Servers whose ejection was published and whose end has not been yet, each with the
        # timer that publishes its end when it happens.
        self._ejection_timers: dict[Server, DelayedCall] = {}

    name: str
    config: PoolConfig
    servers: tuple[Server, ...]

    def pick(self, key: bytes | None = None, exclude: Collection[Server] = ()) -> Server | None:
        """The server for a new connection, or None when no server can take one.

        Candidates are the available primaries not in `exclude`; only when there are none,
        the available backups not in `exclude`. Servers at max_connections are skipped.
        `key` is the hash key (e.g. the client's IP as bytes) for balance = hash.
        """
        now = self._now()
        candidates = [
            server
            for server in self._primaries
            if server.is_available(now) and server not in exclude
        ] or [
            server for server in self._backups if server.is_available(now) and server not in exclude
        ]
        if len(candidates) == 1:
            # Every balancer picks a lone candidate and keeps its state as it was: the
            # common case of a pool of one server skips it.
            server = candidates[0]
            return server if server.has_capacity() else None
        candidates = [server for server in candidates if server.has_capacity()]
        if not candidates:
            return None
        return self._balancer.pick(candidates, key)

    def acquire(self, server: Server) -> None:
        server.active += 1

    def release(self, server: Server) -> None:
        server.active = max(server.active - 1, 0)

    def report_success(self, server: Server) -> None:
        """A connect to `server` succeeded: its failure count and ejection backoff reset."""
        self._now()
        server.consecutive_failures = 0
        server.ejections = 0

    def report_failure(self, server: Server, reason: str) -> None:
        """A connect to `server` failed; max_fails in a row eject it (growing backoff)."""
        now = self._now()
        if now < server.ejected_until:
            # The attempt began before the ejection (an ejected server is never picked):
            # counting it would eject the server again, for twice as long, for one outage.
            return
        server.consecutive_failures += 1
        max_fails = self.config.max_fails
        if max_fails <= 0 or server.consecutive_failures < max_fails:
            return
        duration = min(self.config.eject_time * 2**server.ejections, self.config.eject_time_max)
        server.ejected_until = now + duration
        server.ejections += 1
        server.consecutive_failures = 0
        self._ejection_timers[server] = self._clock.callLater(duration, self._now)
        why = f"{max_fails} connect failures in a row ({reason}); ejected for {duration:g}s"
        _log.warn(
            "server {server} in pool {pool} is EJECTED: {reason}",
            server=server.name,
            pool=self.name,
            reason=why,
        )
        self._publish(ServerEvent(self.name, server.name, "EJECTED", why))

    def set_health(self, server: Server, up: bool, reason: str) -> None:
        """The active health check's verdict; publishes a ServerEvent when it changes."""
        self._now()
        changed = server.healthy != up
        server.healthy = up
        server.health_reason = reason
        if changed:
            self._publish(ServerEvent(self.name, server.name, "UP" if up else "DOWN", reason))

    def any_up(self) -> bool:
        """Whether pick() could return a server now (ignoring max_connections)."""
        now = self._now()
        return any(server.is_available(now) for server in self.servers)

    def subscribe(self, observer: Callable[[ServerEvent], None]) -> Callable[[], None]:
        """Call `observer` on every ServerEvent; returns a function that unsubscribes."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def _now(self) -> float:
        """The clock's time, after publishing the end of every ejection that has run out."""
        now = self._clock.seconds()
        if self._ejection_timers:
            for server in [s for s in self.servers if s in self._ejection_timers]:
                if now >= server.ejected_until:
                    self._ejection_ended(server)
        return now

    def stop(self) -> None:
        """Cancel the pool's timers (the process is stopping, or a reload replaced the pool)."""
        for timer in self._ejection_timers.values():
            if timer.active():
                timer.cancel()
        self._ejection_timers.clear()

    def _ejection_ended(self, server: Server) -> None:
        timer = self._ejection_timers.pop(server, None)
        if timer is not None and timer.active():
            timer.cancel()
        if server.config.down or not server.healthy:
            return  # still unavailable: nothing for observers to learn until checks say so
        _log.info(
            "server {server} in pool {pool} is UP: ejection ended",
            server=server.name,
            pool=self.name,
        )
        self._publish(ServerEvent(self.name, server.name, "UP", "ejection ended"))

    def _publish(self, event: ServerEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                # One broken observer must neither starve the others nor fail the relay or
                # the health check that caused the event.
                _log.failure(
                    "observer {observer} of pool {pool} failed on {event}",
                    observer=observer,
                    pool=self.name,
                    event=event,
                )
