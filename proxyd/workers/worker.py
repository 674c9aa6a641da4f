"""A worker process: `python -m proxyd.workers.worker`, started by the master (never by hand).

It reads its setup, one JSON object, from stdin: the config file's path and text (the text the
master validated, so that every worker runs the same config even if the file has changed
since), its index, and for each listener the descriptor number and address family of the
socket the master passed it. Descriptor 3 is its AMP connection to the master (commands.py).
It logs through twisted.logger as JSON records on stderr, which the master reads and logs as
its own; access logs go where the config says (stdout is the master's).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure

from proxyd.app import ProxydService
from proxyd.cache.instance import Purge
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import loads
from proxyd.ratelimit.synced import LimitSync, Report
from proxyd.reactor import install
from proxyd.workers.commands import (
    Agent,
    AgentFactory,
    ChargeLimits,
    CloseNow,
    Counters,
    LoadCertificate,
    PassSocket,
    PurgeCache,
    Reload,
    ReopenLogs,
    Serve,
    SetDiscovered,
    SetHealth,
    SetServer,
)

MASTER_FD = 3
"""The worker's end of its socket pair with the master."""

log = Logger()


class WorkerAgent(Agent):
    """The worker's end of the AMP connection: it applies what the master says."""

    def __init__(
        self,
        proxy: ProxydService,
        sockets: Mapping[str, tuple[int, int]],
        lost: Callable[[], None],
    ) -> None:
        super().__init__()
        self.proxy = proxy
        self._sockets = sockets
        self._lost = lost
        self.serving = False
        self._passed: dict[str, tuple[int, int]] = {}
        """Sockets the master passed for the next Reload (fd, family), by listener."""

    @SetHealth.responder
    def set_health(self, pool: str, server: str, up: bool, reason: str) -> dict[str, Any]:
        self.proxy.set_health(pool, server, up, reason)
        return {}

    @SetDiscovered.responder
    def set_discovered(self, pool: str, servers: list[str]) -> dict[str, Any]:
        self.proxy.set_discovered(pool, servers)
        return {}

    @Serve.responder
    def serve(self) -> dict[str, Any]:
        if not self.serving:
            self.serving = True
            self.proxy.adopt(self._sockets)
        return {}

    @SetServer.responder
    def set_server(
        self, pool: str, server: str, admin: str, weight: int, who: str
    ) -> dict[str, Any]:
        self.proxy.set_server(pool, server, admin, weight, who)
        return {}

    @PassSocket.responder
    def pass_socket(self, name: str, family: int, fd: int) -> dict[str, Any]:
        previous = self._passed.pop(name, None)
        if previous is not None:
            os.close(previous[0])
        self._passed[name] = (fd, family)
        return {}

    @Reload.responder
    def reload(self, path: str, config: str) -> dict[str, Any]:
        """Serve the config the master reloaded. The master validated it: an error here is
        this worker's alone (the master logs it, and this worker serves the old one)."""
        passed, self._passed = self._passed, {}
        try:
            outcome = self.proxy.apply(loads(config, path), passed)
        except ConfigErrors as e:
            outcome = self.proxy.refused([str(error) for error in e.errors])
        finally:
            for fd, _family in passed.values():
                os.close(fd)  # not needed after all (apply() took out those it adopted)
        return {"reloaded": outcome.reloaded, "errors": list(outcome.errors)}

    @ReopenLogs.responder
    def reopen_logs(self) -> dict[str, Any]:
        self.proxy.reopen_logs()
        return {}

    @CloseNow.responder
    def close_now(self) -> dict[str, Any]:
        self.proxy.close_now()
        return {}

    @LoadCertificate.responder
    def load_certificate(self, name: str) -> dict[str, Any]:
        self.proxy.acme.reload_stored(name)
        return {}

    @Counters.responder
    def counters(self) -> dict[str, Any]:
        return {"counters": self.proxy.counters()}

    @PurgeCache.responder
    def purge_cache(self, name: str, purge: dict[str, Any]) -> dict[str, Any]:
        """Purge this worker's memory tier of the cache (a name unknown here, as after a
        reload the master saw first, purges nothing)."""
        try:
            count = self.proxy.purge_cache(name, Purge(**purge), shared=False)
        except KeyError:
            count = 0
        return {"purged": count}

    def charge_limits(self, reports: list[Report]) -> Deferred[dict[str, list[list[Any]]]]:
        """Tell the master what the rate limits charged (proxyd.ratelimit.synced's Send)."""
        return self.callRemote(ChargeLimits, reports=reports).addCallback(
            lambda answer: answer["states"]
        )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._lost()


def main() -> int:
    setup = json.load(sys.stdin)
    info = cast(Any, LogLevelFilterPredicate(defaultLogLevel=LogLevel.info))
    observer = FilteringLogObserver(cast(Any, jsonFileLogObserver(sys.stderr)), [info])
    globalLogBeginner.beginLoggingTo([cast(Any, observer)], redirectStandardIO=False)
    install()
    from twisted.internet import reactor as installed

    reactor = cast(Any, installed)

    try:
        config = loads(setup["config"], setup["path"])
    except ConfigErrors as e:
        log.error("configuration invalid, not serving: {errors}", errors=str(e))
        return 2
    limits = LimitSync(reactor) if config.proxyd.workers > 1 else None
    proxy = ProxydService(
        reactor, config, worker=True, limit_tables=None if limits is None else limits.table
    )
    sockets = {name: (fd, family) for name, (fd, family) in setup["listeners"].items()}

    stopping = False

    def stop() -> None:
        """Stop once, whoever asks: the master (SIGTERM), systemd (SIGTERM to the whole
        control group, so a second one), or the master's connection ending. `stopping` is
        set here, not only by the shutdown trigger: two requests can come in one reactor turn,
        before the shutdown begins, and a second reactor.stop() raises ReactorNotRunning."""
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.stop()

    def terminated() -> None:
        if not stopping:
            log.info("worker {index}: SIGTERM, stopping", index=setup["index"])
            stop()

    def shutting_down() -> None:
        nonlocal stopping
        stopping = True

    def master_lost() -> None:
        if not stopping:
            log.info("worker {index}: the master is gone, stopping", index=setup["index"])
            stop()

    agent = WorkerAgent(proxy, sockets, master_lost)
    reactor.adoptStreamConnection(MASTER_FD, socket.AF_UNIX, AgentFactory(agent))
    os.close(MASTER_FD)  # Twisted holds a duplicate
    if limits is not None:
        limits.send = agent.charge_limits

    def started() -> None:
        # The master stops workers with SIGTERM. A terminal's Ctrl-C or hang-up, or a signal
        # systemd sends to the whole service, reaches every process: the master alone acts.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the master passes it on (ReopenLogs)
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(terminated))
        proxy.startService()
        if limits is not None:
            limits.start()
        gc.freeze()  # as tap.makeService does

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    reactor.addSystemEventTrigger("before", "shutdown", proxy.stopService)
    if limits is not None:
        reactor.addSystemEventTrigger("before", "shutdown", limits.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
