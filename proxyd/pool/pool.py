"""A pool of servers: picks one for a relay and keeps passive and active health (sans-IO)."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final, Protocol, cast

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from proxyd.clock import Clock, DelayedCall
from proxyd.config.model import PoolConfig, ServerConfig
from proxyd.pool.affinity import Affinity, hash_key
from proxyd.pool.balance import make_balancer
from proxyd.pool.server import ADMIN_STATES, MAX_WEIGHT, MIN_WEIGHT, Server
from proxyd.pool.waiting import Waiting

_log = Logger()


@attrs.frozen
class ServerEvent:
    """A server's state changed. `state` is 'UP', 'DOWN' (checks), 'EJECTED' (passive),
    'READY', 'DRAIN', 'MAINT' (its admin state, set by an operator), or 'ADDED', 'REMOVED'
    (discovery changed the pool's servers)."""

    pool: str
    server: str
    state: str
    reason: str


class Pool:
    """Servers of one `[pool NAME]` with its balancing algorithm.

    Relays call pick() for a server, acquire()/release() around each connection (counted from
    the connect attempt on), and report_success()/report_failure() for each connect attempt.
    The health service calls set_health(), the admin API set_admin() and set_weight().
    Observers get a ServerEvent on every change.

    A reload builds a new Pool with the one it replaces as `previous`: a server of the same
    name (its address) is carried over as the same Server object, so that the connections
    still open on it, its health and its admin state stay right whichever pool they were
    counted in. The old pool keeps working for the connections that picked from it; what they
    report on a carried server is passed on to the new pool, which owns its ejection.
    """

    def __init__(
        self,
        config: PoolConfig,
        clock: IReactorTime,
        rng: random.Random | None = None,
        previous: Pool | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self._clock = cast(Clock, clock)
        kept = {server.name: server for server in previous.servers} if previous is not None else {}
        servers = [self._server(server, kept) for server in config.servers]
        self.discovered: tuple[ServerConfig, ...] = ()
        """The servers discovery added (set_discovered), beside the config's."""
        old = previous.config.discovery if previous is not None else None
        new = config.discovery
        if (
            previous is not None
            and old is not None
            and new is not None
            and old.source == new.source
        ):
            # Same source: its servers carry over with their state until it says otherwise
            # (within the bound, which a reload may have lowered).
            static = {server.name for server in servers}
            carried = [s for s in previous.discovered if s.name not in static]
            self.discovered = tuple(carried[: new.max_servers])
            servers += [self._server(server, kept) for server in self.discovered]
        self._rng = rng if rng is not None else random.Random()
        self._set_servers(tuple(servers))
        self._observers: list[Callable[[ServerEvent], None]] = []
        # Servers whose ejection was published and whose end has not been yet, each with the
        # timer that publishes its end when it happens.
        self._ejection_timers: dict[Server, DelayedCall] = {}
        self._successor: Pool | None = None
        self._stopped = False
        self.waiting: Waiting | None = (
            Waiting(config.max_queued, config.queue_timeout) if config.max_queued else None
        )
        """The requests waiting for room when every server up is full (proxyd.pool.waiting);
        None without max_queued."""
        if previous is not None:
            previous._successor = self
            self._take_ejections(previous)

    name: str
    config: PoolConfig
    servers: tuple[Server, ...]
    discovered: tuple[ServerConfig, ...]
    tier: bool
    """The HTTP relay asks proxyd.relay.http.tier before it picks: the pool hashes on the
    request (hash_key = uri, header NAME) or has this_server."""
    this_server: Server | None
    """The server that is this node (this_server): on the ring, never picked."""

    def _set_servers(self, servers: tuple[Server, ...]) -> None:
        self.servers = servers
        self._members = frozenset(servers)
        self._by_name = {server.name: server for server in servers}
        config = self.config
        this = self.this_server = self._by_name.get(config.this_server or "")
        self.tier = config.balance == "hash" and (
            config.hash_key != "client_ip" or this is not None
        )
        self._primaries = tuple(
            server for server in servers if not server.backup and server is not this
        )
        self._backups = tuple(server for server in servers if server.backup and server is not this)
        self._balancer = make_balancer(self.config.balance, servers, self._rng)

    def set_discovered(self, configs: Sequence[ServerConfig]) -> tuple[list[Server], list[Server]]:
        """Make `configs` the pool's discovered servers (proxyd.discovery); returns the
        servers (added, removed).

        A server of the same name stays the same Server (its health, connections and admin
        state), taking the new weight and backup flag. One that is new is not picked until
        its health check passes (`rise` checks), if the pool has checks. One that is gone
        takes no new connection; those open on it finish (relays hold the Server). A server
        the config lists is the config's: a discovered one of the same address is ignored.
        Observers get a ServerEvent 'ADDED' or 'REMOVED' for each."""
        static = {server.name for server in self.config.servers}
        chosen: list[ServerConfig] = []
        names: set[str] = set()
        for config in configs:
            if config.name not in static and config.name not in names:
                names.add(config.name)
                chosen.append(config)
        added: list[Server] = []
        changed = False
        servers = [server for server in self.servers if server.name in static]
        for config in chosen:
            server = self._by_name.get(config.name)
            if server is None:
                server = Server(config=config, pool=self.name)
                if self.config.check is not None:
                    server.healthy = False
                    server.health_reason = "discovered, not checked yet"
                added.append(server)
            elif server.config != config:
                changed = True
                self._server(config, {config.name: server})
            servers.append(server)
        removed = [
            server
            for server in self.servers
            if server.name not in static and server.name not in names
        ]
        self.discovered = tuple(chosen)
        if changed or tuple(servers) != self.servers:
            self._set_servers(tuple(servers))
        for server in removed:
            timer = self._ejection_timers.pop(server, None)
            if timer is not None and timer.active():
                timer.cancel()
        for server in added:
            self._publish(ServerEvent(self.name, server.name, "ADDED", "discovered"))
        for server in removed:
            self._publish(ServerEvent(self.name, server.name, "REMOVED", "no longer discovered"))
        return added, removed

    def pick(
        self, exclude: Collection[Server] = (), *, affinity: Affinity | None = None
    ) -> Server | None:
        """The server for a new connection, or None when no server can take one.

        Candidates are the available primaries not in `exclude` with room (below their
        max_connections); only when there are none, the available backups not in `exclude`
        with room: backups take over from primaries that are down, and take what full
        primaries cannot. `affinity` says who asks (the client's address, a SIP dialog): with
        balance = hash the pool keys on it (proxyd.pool.affinity.hash_key).
        """
        now = self._now()
        candidates = [
            server
            for server in self._primaries
            if server.is_available(now) and server not in exclude
        ]
        if len(candidates) == 1 and candidates[0].has_capacity():
            # Every balancer picks a lone candidate and keeps its state as it was: the
            # common case of a pool of one server skips it.
            return candidates[0]
        candidates = [server for server in candidates if server.has_capacity()] or [
            server
            for server in self._backups
            if server.is_available(now) and server not in exclude and server.has_capacity()
        ]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        return self._balancer.pick(candidates, hash_key(self.config.balance, affinity))

    def owns(self, affinity: Affinity) -> bool:
        """Whether the ring puts `affinity`'s key on this node (this_server) rather than on
        an available peer: this node counts as available whatever its checks say (it is
        the one asking), the peers as pick() sees them. False without this_server."""
        this = self.this_server
        if this is None:
            return False
        now = self._now()
        candidates = [server for server in self._primaries if server.is_available(now)]
        candidates.append(this)
        return self._balancer.pick(candidates, hash_key(self.config.balance, affinity)) is this

    def _server(self, config: ServerConfig, kept: Mapping[str, Server]) -> Server:
        """The Server for `config`: the previous pool's of the same name, updated, or a new one.

        A weight set at run time outlives a reload unless the file's weight changed: then the
        operator edited it, and the file wins."""
        server = kept.get(config.name)
        if server is None:
            return Server(config=config, pool=self.name)
        if server.config.weight != config.weight:
            server.weight = config.weight
        server.config = config
        server.pool = self.name
        return server

    def _take_ejections(self, previous: Pool) -> None:
        """Move the ejection timers of carried servers from `previous` to this pool, so that
        the end of an ejection is published to this pool's observers, and stopping the
        previous pool does not cancel it."""
        now = self._clock.seconds()
        for server in self.servers:
            timer = previous._ejection_timers.pop(server, None)
            if timer is None:
                continue
            if timer.active():
                timer.cancel()
            delay = max(server.ejected_until - now, 0.0)
            self._ejection_timers[server] = self._clock.callLater(delay, self._now)

    def _owner(self, server: Server) -> Pool:
        """The newest pool holding `server`: this one unless a reload carried it over."""
        pool = self
        while pool._successor is not None and server in pool._successor._members:
            pool = pool._successor
        return pool

    def find(self, name: str) -> Server | None:
        """The server named `name` (its address as text, e.g. `[::1]:9001`), if any."""
        return self._by_name.get(name)

    def set_admin(self, server: Server, state: str, who: str) -> None:
        """Put `server` in `state` ('ready', 'drain' or 'maint'), as asked by `who` (free
        text for the log, e.g. 'admin API 127.0.0.1 (token)').

        Neither drain nor maint closes a connection: they keep pick() from choosing the
        server. Every request is logged; a change is published. Raises ValueError for an
        unknown state or a server of another pool.
        """
        if state not in ADMIN_STATES:
            known = ", ".join(repr(s) for s in ADMIN_STATES)
            raise ValueError(f"admin state must be one of {known}; found {state!r}")
        self._check_member(server)
        _log.info(
            "server {server} in pool {pool} set to {state} by {who}",
            server=server.name,
            pool=self.name,
            state=state.upper(),
            who=who,
        )
        if server.admin == state:
            return
        server.admin = state
        self._publish(ServerEvent(self.name, server.name, state.upper(), f"set by {who}"))

    def set_weight(self, server: Server, weight: object, who: str) -> None:
        """Give `server` the balancing weight `weight` (MIN_WEIGHT..MAX_WEIGHT, as the config
        allows) from the next pick on, as asked by `who`. Raises ValueError otherwise: what
        the admin API was sent, checked here."""
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ValueError(f"weight must be a whole number; found {weight!r}")
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be from {MIN_WEIGHT} to {MAX_WEIGHT}; found {weight}")
        self._check_member(server)
        _log.info(
            "server {server} in pool {pool} weight set to {weight} by {who}",
            server=server.name,
            pool=self.name,
            weight=weight,
            who=who,
        )
        if server.weight == weight:
            return
        server.weight = weight
        self._balancer.weights_changed()

    def _check_member(self, server: Server) -> None:
        if server not in self._members:
            raise ValueError(f"server {server.name} is not in pool {self.name}")

    def acquire(self, server: Server) -> None:
        server.active += 1

    def release(self, server: Server) -> None:
        server.active = max(server.active - 1, 0)
        if self.waiting is not None:
            self.waiting.wake()

    def report_success(self, server: Server) -> None:
        """A connect to `server` succeeded: its failure count and ejection backoff reset."""
        if self._successor is not None:
            owner = self._owner(server)
            if owner is not self:
                owner.report_success(server)
                return
        self._now()
        server.consecutive_failures = 0
        server.ejections = 0

    def report_failure(self, server: Server, reason: str) -> None:
        """A connect to `server` failed; max_fails in a row eject it (growing backoff)."""
        if self._successor is not None:
            owner = self._owner(server)
            if owner is not self:
                owner.report_failure(server, reason)
                return
        if server not in self._members:
            return  # discovery removed it: it is draining, nothing to eject
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
        why = f"{max_fails} connect failures in a row ({reason}); ejected for {duration:g}s"
        server.ejected = True
        server.ejection_reason = why
        if not self._stopped:
            # After stop() nothing may outlive the pool; the ejection still ends on time
            # (pick() compares ejected_until), unpublished.
            self._ejection_timers[server] = self._clock.callLater(duration, self._now)
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
        """Cancel the pool's timers (the process is stopping, or a reload replaced the pool).

        Timers of servers a reload carried over are the new pool's already: they go on."""
        self._stopped = True
        for timer in self._ejection_timers.values():
            if timer.active():
                timer.cancel()
        self._ejection_timers.clear()

    def _ejection_ended(self, server: Server) -> None:
        timer = self._ejection_timers.pop(server, None)
        if timer is not None and timer.active():
            timer.cancel()
        server.ejected = False
        server.ejection_reason = ""
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


class _MayHaveServers(Protocol):
    def any_up(self) -> bool: ...


NO_SERVER_UP: Final = "no server up"
ALL_SERVERS_BUSY: Final = "all servers busy"


def why_no_server(pool: _MayHaveServers) -> str:
    """Why pick() found no server for a first attempt, in the words every relay logs and
    answers with: none is up (down, ejected, drained or in maintenance), or every one that is
    up is at max_connections."""
    return NO_SERVER_UP if not pool.any_up() else ALL_SERVERS_BUSY
