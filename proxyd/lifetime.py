"""The lifetime of the relays: their counters while they serve, their end when a reload
replaced them (retired: their connections finish on them), and the graceful stop (drain up to
`[proxyd] drain_timeout`, then close what is left)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from proxyd.clock import DelayedCall
from proxyd.listeners import RelayListener, StreamRelayListener
from proxyd.metrics import add_counters
from proxyd.pool import Pool
from proxyd.relay.factory import RelayFactory, Retiring

log = Logger(namespace="proxyd.app")

CLOSE_GRACE = 5.0
"""Seconds the connections closed at drain_timeout have to go (and be logged) before the
stop goes on regardless."""


class Retired:
    """The relay listeners a reload replaced, until their last connection ends."""

    def __init__(self) -> None:
        self.listeners: list[StreamRelayListener] = []

    def relays(self) -> list[RelayFactory]:
        return [listener.relay for listener in self.listeners]

    def retire(self, listeners: Iterable[StreamRelayListener], then: Callable[[], None]) -> None:
        """Let the relays of `listeners` finish their connections (their retire(), or drain()
        as at a stop); then call `then`."""
        waits: list[Deferred[None]] = []
        for listener in listeners:
            relay = listener.relay
            finish = relay.retire() if isinstance(relay, Retiring) else relay.drain()
            self.listeners.append(listener)
            waits.append(finish.addCallback(self._finished, listener))
        DeferredList(waits).addCallback(lambda _: then())

    def _finished(self, _: None, listener: StreamRelayListener) -> None:
        self.listeners.remove(listener)


def relays_of(listeners: Iterable[RelayListener]) -> list[StreamRelayListener]:
    """The listeners of stream relays (those that drain, retire and close) among
    `listeners`."""
    return [listener for listener in listeners if isinstance(listener, StreamRelayListener)]


def relays(listeners: Iterable[RelayListener], retired: Retired) -> list[RelayFactory]:
    """The stream relays serving and those retired, which drain and close at a stop."""
    return [listener.relay for listener in relays_of(listeners)] + retired.relays()


def counters(
    listeners: Iterable[RelayListener], retired: Retired, pools: Mapping[str, Pool]
) -> dict[str, Any]:
    """The relays' counters by listener, the connections open to each server, and the
    relays' metrics (their `stats`, proxyd.metrics), as numbers that add up across worker
    processes. Relays a reload replaced count their connections still open (their gauges)."""
    by_listener: dict[str, dict[str, int]] = {}
    metrics: dict[str, Any] = {}
    seen: set[int] = set()
    counted: list[tuple[RelayListener, bool]] = [(listener, True) for listener in listeners]
    counted += [(listener, False) for listener in retired.listeners]
    for listener, serving in counted:
        stats = listener.relay.stats
        if id(stats) not in seen:
            seen.add(id(stats))
            add_counters(metrics, stats.snapshot())
        counts = listener.counts()
        found = {**counts.gauges, **(counts.totals if serving else {})}
        add_counters(by_listener.setdefault(listener.name, {}), found)
    servers = {
        f"{pool.name}/{server.name}": {"active": server.active}
        for pool in pools.values()
        for server in pool.servers
    }
    queues = {
        pool.name: {
            "waiting": len(pool.waiting),
            "queued": pool.waiting.total,
            "timed_out": pool.waiting.timed_out,
            "refused": pool.waiting.refused,
            "wait_seconds": pool.waiting.wait_seconds,
        }
        for pool in pools.values()
        if pool.waiting is not None
    }
    return {"listeners": by_listener, "servers": servers, "metrics": metrics, "pools": queues}


def close_all(relays: Iterable[RelayFactory]) -> None:
    """Close every relay's connections at once (a second SIGTERM while draining)."""
    for relay in list(relays):
        relay.close_all()


def drain(reactor: Any, relays: Sequence[RelayFactory], timeout: float) -> Deferred[None]:
    """Ask every relay to drain its connections; after `timeout` seconds, close what is left
    and wait CLOSE_GRACE more at most."""
    waits = [relay.drain() for relay in relays]
    if all(wait.called for wait in waits):
        return succeed(None)
    log.info("stopping: connections in flight have up to {timeout:g}s to finish", timeout=timeout)
    done: Deferred[None] = Deferred()
    timer: DelayedCall  # the drain's, then the closing grace's

    def timed_out() -> None:
        nonlocal timer
        log.warn(
            "stopping: drain_timeout ({timeout:g}s) reached, closing the connections still open",
            timeout=timeout,
        )
        close_all(relays)
        # The closed connections are logged as they go: wait for them, a little.
        timer = reactor.callLater(CLOSE_GRACE, finish)

    def finish() -> None:
        if not done.called:
            done.callback(None)

    def finished(_: object) -> None:
        if done.called:
            return
        if timer.active():
            timer.cancel()
        log.info("stopping: every connection finished")
        done.callback(None)

    timer = reactor.callLater(timeout, timed_out)
    DeferredList(waits).addCallback(finished)
    return done
