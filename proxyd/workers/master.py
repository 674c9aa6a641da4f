"""The master of `[proxyd] workers = N`: binds, checks, supervises; the workers serve.

The master validated the config and bound every listener before twistd daemonized and dropped
privileges (tap.py), so privileged ports and `--uid` work as with one process. When it starts,
it runs the health checks (ProxydService without relays serving) and starts N worker
processes (proxyd.workers.worker), each with the config text, its listening sockets
(sockets.py) and one end of a Unix socket pair for AMP (commands.py). Health changes go to
every worker as they happen, and to a new worker before it accepts; counters come back on
request and are summed. A worker that exits is started again (after a growing delay when it
keeps dying young) on the same sockets; the connections it held are lost, nobody else's.
SIGHUP is passed on to every worker; stopping the master closes its copies of the listening
sockets and stops every worker (SIGTERM: each drains its connections; SIGKILL once
drain_timeout and STOP_GRACE have passed). The workers' rate limits hold for the machine: each
reports what it charged, and the master's ledger answers with what the others did
(proxyd.ratelimit.synced).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from typing import Any, cast

import attrs
from twisted.application import service
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

import proxyd
from proxyd.app import ProxydService, ReloadOutcome, sighup_reload
from proxyd.cache.instance import Purge
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import read
from proxyd.config.reload import reload_config
from proxyd.discovery.common import server_line
from proxyd.listen_sockets import SharedPort
from proxyd.metrics import add_counters
from proxyd.pool import Server
from proxyd.pool.pool import ServerEvent
from proxyd.ratelimit.ledger import Ledger
from proxyd.ratelimit.synced import Report
from proxyd.stopping import GracefulStop, on_sigusr1
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
from proxyd.workers.worker import MASTER_FD

STOP_GRACE = 10.0
"""Seconds a stopping worker has beyond `[proxyd] drain_timeout` before it is killed."""

YOUNG = 10.0
"""A worker that exits within this many seconds of its start died young: each death in a row
doubles the delay before the next start, from RESTART_DELAY up to RESTART_DELAY_MAX."""
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
LEDGER_SWEEP = 1.0
"""Seconds between two sweeps of the rate limits' ledger (keys that owe nothing)."""

log = Logger()


class WorkerProcess(ProcessProtocol):
    """One worker process: its AMP connection to the master and its log records (stderr)."""

    def __init__(self, master: Master, index: int) -> None:
        self.master = master
        self.index = index
        self.pid: int | None = None
        self.agent: amp.AMP | None = None
        self.started = master.reactor.seconds()
        self.serving = False
        self._stderr = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 2:
            return
        *lines, self._stderr = (self._stderr + data).split(b"\n")
        for line in lines:
            relay_log(line, self.index, self.pid)

    def processEnded(self, reason: Failure) -> None:
        if self._stderr:
            relay_log(self._stderr, self.index, self.pid)
            self._stderr = b""
        if self.agent is not None and self.agent.transport is not None:
            cast(Any, self.agent.transport).loseConnection()
        self.master.worker_ended(self, reason)

    def signal(self, name: str) -> None:
        with contextlib.suppress(error.ProcessExitedAlready):
            cast(Any, self.transport).signalProcess(name)


class MasterAgent(Agent):
    """The master's end of a worker's AMP connection: it answers the worker's calls."""

    def __init__(self, master: Master, index: int) -> None:
        super().__init__()
        self.master = master
        self.index = index

    @ChargeLimits.responder
    def charge_limits(self, reports: list[Report]) -> dict[str, Any]:
        return {"states": self.master.charge_limits(self.index, reports)}


def relay_log(line: bytes, index: int, pid: int | None) -> None:
    """Publish a worker's log record (a JSON record of jsonFileLogObserver) as the master's
    own, marked with the worker; anything else the worker wrote to stderr (a Python crash
    before its logging began) is logged as a warning line by line."""
    text = line.decode("utf-8", "replace")
    if text.startswith("\x1e"):
        try:
            event = eventFromJSON(text[1:])
        except ValueError:
            event = None
        if isinstance(event, dict):
            level = event.get("log_level")
            namespace = event.get("log_namespace", "-")
            event["log_system"] = f"worker {index}#{getattr(level, 'name', '-')} {namespace}"
            event["worker"] = index
            event["worker_pid"] = pid
            globalLogPublisher(event)
            return
    text = text.strip()
    if text:
        log.warn("worker {worker} (pid {pid}): {line}", worker=index, pid=pid, line=text)


class Master(service.MultiService):
    """Runs `proxy`'s health checks and `count` workers serving its listeners' `shared`
    sockets. `proxy` was built from `config_text`, which each worker builds its own from."""

    def __init__(
        self,
        reactor: Any,
        proxy: ProxydService,
        config_text: str,
        count: int,
        handle_signals: bool = False,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.proxy = proxy
        proxy.setServiceParent(self)
        proxy.counters_source = self.counters  # the admin API shows the workers' sum
        proxy.reload_source = self.reload
        proxy.server_changed = self._server_changed
        proxy.purge_source = self.purge_cache
        proxy.acme.changed = self._certificate_changed
        self.config_text = config_text
        self.count = count
        self._handle_signals = handle_signals
        self.workers: dict[int, WorkerProcess] = {}
        self._deaths: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._unsubscribe: list[Any] = []
        self._told_discovered: dict[str, tuple[Any, ...]] = {}
        """Each discovering pool's list as last sent to the workers."""
        self._stopping: Deferred[None] | None = None
        self._kill: Any = None
        self.ledger = Ledger(reactor)
        """The rate limits' charges summed over the workers (proxyd.ratelimit.ledger)."""
        self._sweep = LoopingCall(self.ledger.sweep)
        self._sweep.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._subscribe()
        if self._handle_signals:
            signal.signal(signal.SIGHUP, self._on_sighup)
            on_sigusr1(self.reactor, self.reopen_logs)
            # After the reactor's own handlers, which it installs as it starts running.
            self.reactor.callWhenRunning(GracefulStop(self.reactor, self._stop_now).install)
        log.info("master (pid {pid}) starting {count} workers", pid=os.getpid(), count=self.count)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds: dict[int, Any] = {0: "w", 1: 1, 2: "r", MASTER_FD: child.fileno()}
        listeners: dict[str, tuple[int, int]] = {}
        for number, (name, shared) in enumerate(self.proxy.shared().items(), start=MASTER_FD + 1):
            fds[number] = shared.for_worker(index).fileno()
            listeners[name] = (number, shared.family)
        worker = WorkerProcess(self, index)
        executable = sys.executable
        try:
            self.reactor.spawnProcess(
                worker,
                executable,
                [executable, "-m", "proxyd.workers.worker"],
                env=_environment(),
                childFDs=fds,
            )
        finally:
            child.close()
        agent = MasterAgent(self, index)
        try:
            self.reactor.adoptStreamConnection(parent.fileno(), socket.AF_UNIX, AgentFactory(agent))
        finally:
            parent.close()
        worker.agent = agent
        self.workers[index] = worker
        setup = {
            "index": index,
            "path": self.proxy.config.path,
            "config": self.config_text,
            "listeners": listeners,
        }
        stdin = cast(Any, worker.transport)
        stdin.write(json.dumps(setup).encode())
        stdin.closeStdin()
        self._tell_servers(worker)
        agent.callRemote(Serve).addCallbacks(
            lambda _: self._serving(worker), lambda f: self._not_serving(worker, f)
        )

    def _serving(self, worker: WorkerProcess) -> None:
        worker.serving = True
        log.info("worker {worker} (pid {pid}) serving", worker=worker.index, pid=worker.pid)

    def _not_serving(self, worker: WorkerProcess, failure: Failure) -> None:
        if self._stopping is None and self.workers.get(worker.index) is worker:
            log.error(
                "worker {worker} (pid {pid}) did not start serving: {why}",
                worker=worker.index,
                pid=worker.pid,
                why=failure.getErrorMessage(),
            )
            worker.signal("KILL")

    def _tell(self, worker: WorkerProcess, command: type[amp.Command], *args: Any) -> None:
        """Send `command` without waiting for its answer; a worker that is gone is restarted
        and told again then."""
        if worker.agent is None:
            return
        if command is SetHealth:
            (server,) = args
            call = worker.agent.callRemote(
                SetHealth,
                pool=server.pool,
                server=server.name,
                up=server.healthy,
                reason=server.health_reason,
            )
        elif command is SetServer:
            server, who = args
            call = worker.agent.callRemote(
                SetServer,
                pool=server.pool,
                server=server.name,
                admin=server.admin,
                weight=server.weight,
                who=who,
            )
        elif command is SetDiscovered:
            (pool,) = args
            call = worker.agent.callRemote(
                SetDiscovered, pool=pool.name, servers=[server_line(s) for s in pool.discovered]
            )
        else:
            call = worker.agent.callRemote(command)
        call.addErrback(lambda _: None)

    def _tell_servers(self, worker: WorkerProcess) -> None:
        """Every server's health, admin state and weight as the master has them (a new
        worker, or one that has just reloaded)."""
        for pool in self.proxy.pools.values():
            if pool.config.discovery is not None:
                self._tell(worker, SetDiscovered, pool)
            for server in pool.servers:
                self._tell(worker, SetHealth, server)
                if server.admin != "ready" or server.weight != server.config.weight:
                    self._tell(worker, SetServer, server, "the master")

    def _subscribe(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = [
            pool.subscribe(self._health_changed) for pool in self.proxy.pools.values()
        ]

    def _health_changed(self, event: ServerEvent) -> None:
        if event.state in ("ADDED", "REMOVED"):
            # Discovery changed the pool: its whole list, once per change of the list.
            pool = self.proxy.pools[event.pool]
            if self._told_discovered.get(pool.name) != pool.discovered:
                self._told_discovered[pool.name] = pool.discovered
                for worker in list(self.workers.values()):
                    self._tell(worker, SetDiscovered, pool)
            return
        if event.state not in ("UP", "DOWN"):
            return  # the admin API's changes reach the workers by _server_changed
        for server in self.proxy.pools[event.pool].servers:
            if server.name == event.server:
                for worker in list(self.workers.values()):
                    self._tell(worker, SetHealth, server)

    def _server_changed(self, server: Server, who: str) -> None:
        for worker in list(self.workers.values()):
            self._tell(worker, SetServer, server, who)

    def _certificate_changed(self, name: str) -> None:
        for worker in list(self.workers.values()):
            if worker.agent is not None:
                worker.agent.callRemote(LoadCertificate, name=name).addErrback(lambda _: None)

    def charge_limits(self, index: int, reports: list[Report]) -> dict[str, list[list[Any]]]:
        """Worker `index`'s rate-limit charges; the answer is what the others charged. The
        ledger's sweep runs from the first call on (the workers have shared limits)."""
        if not self._sweep.running and self._stopping is None:
            self._sweep.start(LEDGER_SWEEP, now=False)
        return self.ledger.report(index, reports)

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
            self.ledger.forget(worker.index)
        how = _exit_description(reason)
        if self._stopping is not None:
            log.info(
                "worker {worker} (pid {pid}) {how}", worker=worker.index, pid=worker.pid, how=how
            )
            if not self.workers:
                self._stopping.callback(None)
            return
        lived = self.reactor.seconds() - worker.started
        deaths = self._deaths.get(worker.index, 0) + 1 if lived < YOUNG else 0
        self._deaths[worker.index] = deaths
        delay = min(RESTART_DELAY * 2 ** (deaths - 1), RESTART_DELAY_MAX) if deaths else 0.0
        log.error(
            "worker {worker} (pid {pid}) {how} after {lived:.1f}s; its connections are lost;"
            " starting it again in {delay:g}s",
            worker=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def reload(self, force: bool = False) -> Deferred[ReloadOutcome]:
        """Read the config file again; if it is valid (and, unless `force`, keeps the admin
        listener: proxyd.config.reload), serve it here (health checks, admin, the sockets of
        new addresses) and then in every worker (SIGHUP, the admin API). The outcome is the
        master's, with the errors of any worker that could not follow."""
        path = self.proxy.config.path
        log.info("reload: reading {path}", path=path)
        try:
            text = read(path)
            config = reload_config(self.proxy.config, text, force)
        except ConfigErrors as e:
            return succeed(self.proxy.refused([str(error) for error in e.errors]))
        before = {name: id(shared) for name, shared in self.proxy.shared().items()}
        outcome = self.proxy.apply(config, source=text)
        if not outcome.reloaded:
            return succeed(outcome)
        self.config_text = text
        self._subscribe()
        new = {
            name: shared
            for name, shared in self.proxy.shared().items()
            if before.get(name) != id(shared)
        }
        calls = []
        for worker in list(self.workers.values()):
            if not worker.serving or worker.agent is None:
                # Started with the old config and not serving yet: start it again on the new.
                worker.signal("KILL")
                continue
            calls.append(self._reload_worker(worker, path, text, new))
        log.info("reload: asking {count} workers", count=len(calls))

        def answered(results: list[tuple[bool, Any]]) -> ReloadOutcome:
            errors = [error for ok, result in results if ok for error in result]
            return attrs.evolve(outcome, errors=outcome.errors + tuple(errors))

        return DeferredList(calls, consumeErrors=True).addCallback(answered)

    def _reload_worker(
        self, worker: WorkerProcess, path: str, text: str, new: dict[str, SharedPort]
    ) -> Deferred[list[str]]:
        """Pass `worker` the sockets of the new addresses, then the config; its errors."""
        agent = worker.agent
        assert agent is not None
        for name, shared in new.items():
            fd = shared.for_worker(worker.index).fileno()
            agent.callRemote(PassSocket, name=name, family=shared.family, fd=fd).addErrback(
                lambda _: None
            )

        def done(answer: dict[str, Any]) -> list[str]:
            self._tell_servers(worker)
            if answer["reloaded"]:
                return []
            for problem in answer["errors"]:
                log.error(
                    "worker {worker} (pid {pid}) did not reload: {error}",
                    worker=worker.index,
                    pid=worker.pid,
                    error=problem,
                )
            return [f"worker {worker.index}: {problem}" for problem in answer["errors"]]

        def failed(failure: Failure) -> list[str]:
            why = failure.getErrorMessage()
            log.error(
                "worker {worker} (pid {pid}) did not answer the reload: {why}",
                worker=worker.index,
                pid=worker.pid,
                why=why,
            )
            return [f"worker {worker.index}: {why}"]

        reloaded: Deferred[dict[str, Any]] = agent.callRemote(Reload, path=path, config=text)
        return reloaded.addCallbacks(done, failed)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(sighup_reload, self.reload)

    def reopen_logs(self) -> None:
        """SIGUSR1: every worker opens its access-log files again (and so does the master,
        which holds them open too)."""
        self.proxy.reopen_logs()
        for worker in list(self.workers.values()):
            self._tell(worker, ReopenLogs)

    def counters(self) -> Deferred[dict[str, Any]]:
        """ProxydService.counters() summed over the workers that answer, with `workers`, how
        many did."""
        serving = [w for w in self.workers.values() if w.serving and w.agent is not None]
        if not serving:
            return succeed(self._with_own({"workers": 0}))
        calls = [w.agent.callRemote(Counters) for w in serving if w.agent is not None]

        def add(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            total: dict[str, Any] = {"workers": 0}
            for ok, answer in results:
                if ok:
                    add_counters(total, answer["counters"])
                    total["workers"] += 1
            return self._with_own(total)

        return DeferredList(calls, consumeErrors=True).addCallback(add)

    def _with_own(self, total: dict[str, Any]) -> dict[str, Any]:
        """The workers' sum with the master's own figures added: its caches' disk tiers (the
        ones the workers share, each counted once) and the purges it made of them, and its
        [acme] sections' (the master orders; the workers have none)."""
        disks = self.proxy.caches.figures(memory=False)
        if disks:
            add_counters(total, {"caches": disks})
        acme = self.proxy.acme.figures()
        if acme:
            total["acme"] = acme
        return total

    def purge_cache(self, name: str, purge: Purge) -> Deferred[int]:
        """The admin API's purge with workers: the master purges the disk tier the workers
        share (it has it open: it built the same routes), then every serving worker its
        memory tier; the sum of the counts (a response on disk counts once, however many
        memory tiers held a copy of it). KeyError at once for an unknown cache."""
        purged = self.proxy.purge_cache(name, purge, shared=True)
        fields = attrs.asdict(purge)
        calls = [
            worker.agent.callRemote(PurgeCache, name=name, purge=fields)
            for worker in list(self.workers.values())
            if worker.serving and worker.agent is not None
        ]

        def add(results: list[tuple[bool, Any]]) -> int:
            total = purged
            for ok, answer in results:
                if ok:
                    total += answer["purged"]
                else:
                    # Its memory tier clears itself at its next lookup when the disk's
                    # epoch moved; a memory-only cache keeps what this worker holds.
                    log.error(
                        "cache {cache}: a worker did not purge its memory tier: {why}",
                        cache=name,
                        why=answer.getErrorMessage(),
                    )
            return total

        return DeferredList(calls, consumeErrors=True).addCallback(add)

    def stopService(self) -> Deferred[None]:
        if self._sweep.running:
            self._sweep.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        self._stopping = Deferred()
        # New connections are refused from now on, not left in a queue no worker will read
        # (each worker closes its own duplicate as it starts draining).
        for shared in self.proxy.shared().values():
            shared.close()
        if not self.workers:
            self._stopping.callback(None)
        else:
            log.info("stopping {count} workers", count=len(self.workers))
            for worker in list(self.workers.values()):
                worker.signal("TERM")
            self._kill = self.reactor.callLater(self.stop_timeout, self._kill_workers)

        def stopped(_: None) -> Any:
            if self._kill is not None and self._kill.active():
                self._kill.cancel()
            return service.MultiService.stopService(self)

        return self._stopping.addCallback(stopped)

    @property
    def stop_timeout(self) -> float:
        """How long stopping workers have: their drain, and some more to end."""
        return self.proxy.config.proxyd.drain_timeout + STOP_GRACE

    def _stop_now(self) -> None:
        """A second SIGTERM or SIGINT: the workers close what they still have open."""
        for worker in list(self.workers.values()):
            self._tell(worker, CloseNow)

    def _kill_workers(self) -> None:
        for worker in list(self.workers.values()):
            log.warn(
                "worker {worker} (pid {pid}) still running after {timeout:g}s, killing it",
                worker=worker.index,
                pid=worker.pid,
                timeout=self.stop_timeout,
            )
            worker.signal("KILL")


def _exit_description(reason: Failure) -> str:
    value = reason.value
    code = getattr(value, "exitCode", None)
    signum = getattr(value, "signal", None)
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by {name}"
    return f"exited with status {code if code is not None else 0}"


def _environment() -> dict[str, str]:
    """The master's environment, with proxyd importable however the master found it."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(proxyd.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
