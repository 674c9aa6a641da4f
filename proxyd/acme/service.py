"""The process-wide ACME service: for each [acme] section, the certificate its listeners
serve, ordered when none usable is held and renewed when due (proxyd.acme.schedule), and
swapped into those listeners without a connection dropped (proxyd.tls.ServerTls.replace:
open connections keep the context they began with).

One process orders: the only one, or the master of `workers = N`, which then tells its
workers (`changed`) to load the new files from storage; a worker never orders. The orders
run in a thread of a pool of one (the `acme` library blocks), started and stopped with the
service; everything else runs on the reactor's thread. Each section's figures (its
certificate's expiry, its orders by result, when the last began and the next is planned) are
the ordering process's, shown by its admin API and /metrics (docs/acme.md#metrics).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from proxyd.acme.challenges import AlpnChallenges, Answers, HttpChallenges, self_signed
from proxyd.acme.schedule import Held, Schedule
from proxyd.acme.storage import Storage
from proxyd.config.acme_model import AcmeConfig
from proxyd.config.model import Certificate
from proxyd.tls import ServerTls

log = Logger(namespace="proxyd.acme")

if TYPE_CHECKING:
    # Imported with the first section to order for (reload): the acme package takes ~60 ms
    # to import, which a process without [acme] sections need not pay at every start.
    from proxyd.acme import client

    Obtain = Callable[[AcmeConfig, Storage, client.ChallengeHooks, threading.Event], client.Issued]


def placeholder(names: tuple[str, ...]) -> Certificate:
    """A self-signed certificate served until the first one is issued (clients see an
    untrusted certificate rather than a refused handshake; the validator of tls-alpn-01 gets
    its own certificate anyway)."""
    leaf, key = self_signed("proxyd acme pending", names)
    return Certificate("(acme: pending)", "", (leaf,), key, names)


class Section:
    """One [acme] section: its storage, pending answers, schedule, the listeners it serves,
    and its orders' figures. `previous` is the section of the same name it replaces (a
    reload changed it), whose figures go on."""

    def __init__(
        self, config: AcmeConfig, now: Callable[[], float], previous: Section | None = None
    ) -> None:
        self.config = config
        self.storage = Storage(config.storage)
        self.answers = Answers(self.storage, config.names)
        self.schedule = Schedule(config)
        self.current: Certificate | None = None
        self._placeholder: Certificate | None = None
        self._now = now
        self._listeners: weakref.WeakSet[ServerTls] = weakref.WeakSet()
        self.timer: DelayedCall | None = None
        self.ordering = False
        self.orders: dict[str, int] = (
            previous.orders if previous is not None else {"success": 0, "failure": 0}
        )
        """Orders that ended, by result (one a stop cut short is not counted)."""
        self.last_attempt: float | None = previous.last_attempt if previous is not None else None
        """When the last order began (seconds since the epoch)."""
        self.next_attempt: float | None = None
        """When the next order is planned; None while one runs (or none is planned)."""

    def serving(self) -> Certificate:
        if self.current is not None:
            return self.current
        if self._placeholder is None:
            self._placeholder = placeholder(self.config.names)
        return self._placeholder

    def attach(self, tls: ServerTls) -> None:
        """`tls` serves this section's certificate (before its own `certificates`), and
        answers tls-alpn-01 from its pending answers."""
        tls.acme_alpn = AlpnChallenges(self.answers)
        self._listeners.add(tls)
        tls.replace((self.serving(), *tls.config.loaded))

    def load(self) -> bool:
        """Take the certificate in storage (if any) and serve it; whether it was usable."""
        stored = self.storage.certificate()
        if stored is not None:
            self.current = stored
            leaf = stored.leaf
            held = Held.of(leaf.not_valid_before_utc, leaf.not_valid_after_utc, stored.names)
            self.schedule.hold(held)
            for tls in list(self._listeners):
                tls.replace((stored, *tls.config.loaded))
        return self.schedule.usable(self._now())

    def ended(self, ok: bool) -> None:
        """An order ended (ok: with a certificate served now); a failure backs the next one
        off."""
        self.orders["success" if ok else "failure"] += 1
        if not ok:
            self.schedule.failed()

    def figures(self) -> dict[str, Any]:
        """The certificate's expiry and the orders' figures, JSON-able: times in seconds since
        the epoch, left out when unknown; `failures` is the failed orders in a row (above 0,
        the next order is a retry after a backoff)."""
        found: dict[str, Any] = {"orders": dict(self.orders), "failures": self.schedule.failures}
        if self.schedule.held is not None:
            found["expiry"] = self.schedule.held.not_after
        if self.last_attempt is not None:
            found["last_attempt"] = self.last_attempt
        if self.next_attempt is not None:
            found["next_attempt"] = self.next_attempt
        return found


class AcmeService(service.Service):
    """Every [acme] section of the configuration serving. `order`: this process orders
    (not a worker); `changed(name)` is called once a new certificate is stored."""

    def __init__(
        self,
        reactor: Any,
        sections: Mapping[str, AcmeConfig],
        order: bool = True,
        obtain: Obtain | None = None,
        threaded: bool = True,
    ) -> None:
        """`obtain` and `threaded` are for tests: what orders (proxyd.acme.client.obtain by
        default), and whether it runs in the service's thread (else on the caller's, as
        tests on MemoryReactorClock need)."""
        self._reactor = reactor
        self._order = order
        self._obtain = obtain
        self._threaded = threaded
        self._client: Any = None
        """proxyd.acme.client, once a section to order for is served (reload)."""
        self.sections: dict[str, Section] = {}
        self.changed: Callable[[str], None] = lambda name: None
        self._pool: ThreadPool | None = None
        """The one thread orders run in, started with the first order."""
        self._in_flight: set[Deferred[client.Issued]] = set()
        self._stopping = threading.Event()
        self.http = HttpChallenges(())
        """What the [http] listeners answer /.well-known/acme-challenge/ from."""
        self.reload(sections)

    def reload(self, sections: Mapping[str, AcmeConfig]) -> None:
        """Serve a new configuration's sections: unchanged ones go on as they are."""
        if sections and self._order:
            # Loaded with the first section, not at every start: see the import at the top.
            from proxyd.acme import client

            self._client = client
        old = self.sections
        self.sections = {}
        for name, config in sections.items():
            kept = old.pop(name, None)
            if kept is not None and kept.config == config:
                self.sections[name] = kept
                continue
            if kept is not None:
                self._cancel(kept)
            self.sections[name] = section = Section(config, self._reactor.seconds, kept)
            if self.running:
                self._start(name, section)
        for section in old.values():
            self._cancel(section)
        self.http = HttpChallenges([s.answers for s in self.sections.values()])

    def attach(self, tls: ServerTls) -> None:
        """A listener with `acme = NAME` (made by proxyd.generation) serves that section."""
        acme = tls.config.acme
        if acme is not None and acme.name in self.sections:
            self.sections[acme.name].attach(tls)

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        for name, section in self.sections.items():
            self._start(name, section)

    def stopService(self) -> Deferred[Any] | None:
        """Stop ordering: an order in flight gives up at its next wait (its thread may be in
        a request to the CA, bounded by client.NETWORK_TIMEOUT); the thread pool is stopped
        once it has. Not joined here: the thread may be waiting for the reactor's thread."""
        super().stopService()
        self._stopping.set()
        for section in self.sections.values():
            self._cancel(section)
        pool, self._pool = self._pool, None
        if pool is None:
            return None
        if not self._in_flight:
            pool.stop()
            return None
        done = DeferredList(list(self._in_flight), consumeErrors=True)
        return done.addBoth(lambda _: pool.stop())

    def figures(self) -> dict[str, dict[str, Any]]:
        """Each section's figures (Section.figures) by name, in the process that orders; none
        in a worker (its master shows them)."""
        if not self._order:
            return {}
        return {name: section.figures() for name, section in self.sections.items()}

    def reload_stored(self, name: str) -> None:
        """A worker: the master stored a new certificate for `name`."""
        section = self.sections.get(name)
        if section is not None:
            section.load()
            log.info("acme {name}: certificate loaded from storage", name=name)

    def _start(self, name: str, section: Section) -> None:
        try:
            if self._order:
                section.storage.ensure()
            usable = section.load()
        except OSError as e:
            log.error("acme {name}: storage: {error}", name=name, error=e)
            usable = False
        if usable and section.current is not None:
            log.info(
                "acme {name}: serving the stored certificate for {names}, valid until {until}",
                name=name,
                names=" ".join(section.config.names),
                until=f"{section.current.not_after:%Y-%m-%d %H:%M:%S} UTC",
            )
        if self._order:
            self._plan(name, section)

    def _cancel(self, section: Section) -> None:
        if section.timer is not None and section.timer.active():
            section.timer.cancel()
        section.timer = None
        section.next_attempt = None

    def _plan(self, name: str, section: Section) -> None:
        self._cancel(section)
        now = self._reactor.seconds()
        at = max(now, section.schedule.next_attempt(now))
        section.timer = self._reactor.callLater(at - now, self._run, name, section)
        section.next_attempt = at

    def _run(self, name: str, section: Section) -> None:
        section.timer = None
        section.next_attempt = None
        if self.sections.get(name) is not section or section.ordering or not self.running:
            return
        section.ordering = True
        section.last_attempt = self._reactor.seconds()
        log.info(
            "acme {name}: ordering a certificate for {names} from {directory}",
            name=name,
            names=" ".join(section.config.names),
            directory=section.config.directory,
        )
        client = self._client
        obtain: Obtain = self._obtain or client.obtain
        answers = section.answers
        hooks = client.ChallengeHooks(
            add_http=lambda token, answer: self._on_reactor(answers.add_http, token, answer),
            add_alpn=lambda host, answer: self._on_reactor(answers.add_alpn, host, answer),
            clear=lambda: self._on_reactor(answers.clear),
        )
        arguments = (section.config, section.storage, hooks, self._stopping)
        if self._threaded:
            if self._pool is None:
                self._pool = ThreadPool(1, 1, name="proxyd-acme")
                self._pool.start()
            ordered = deferToThreadPool(self._reactor, self._pool, obtain, *arguments)
            self._in_flight.add(ordered)
            ordered.addBoth(self._landed, ordered)
        else:
            ordered = maybeDeferred(obtain, *arguments)
        ordered.addCallbacks(
            lambda issued: self._issued(name, section, issued),
            lambda failure: self._failed(name, section, failure),
        )

    def _landed(self, result: Any, ordered: Deferred[client.Issued]) -> Any:
        self._in_flight.discard(ordered)
        return result

    def _on_reactor(self, call: Callable[..., None], *args: Any) -> None:
        if self._threaded:
            blockingCallFromThread(self._reactor, call, *args)
        else:
            call(*args)

    def _issued(self, name: str, section: Section, issued: client.Issued) -> None:
        section.ordering = False
        if not self.running:
            return
        try:
            section.storage.save_certificate(issued.chain_pem, issued.key)
        except OSError as e:
            log.error("acme {name}: cannot store the certificate: {error}", name=name, error=e)
            section.ended(False)
            self._plan(name, section)
            return
        if not section.load() or section.current is None:
            # Stored but not usable now (not valid yet by this clock, or not the names):
            # served anyway if it loaded, and retried after a backoff, never at once.
            section.ended(False)
            log.error(
                "acme {name}: the new certificate is not usable now; next try in {wait:.0f}s",
                name=name,
                wait=section.schedule.backoff(),
            )
            self.changed(name)
            self._plan(name, section)
            return
        log.info(
            "acme {name}: new certificate for {names}, valid until {until}",
            name=name,
            names=" ".join(section.current.names),
            until=f"{section.current.not_after:%Y-%m-%d %H:%M:%S} UTC",
        )
        section.ended(True)
        self.changed(name)
        if self.sections.get(name) is section:
            self._plan(name, section)

    def _failed(self, name: str, section: Section, failure: Failure) -> None:
        section.ordering = False
        if not self.running or failure.check(self._client.Stopped):
            return
        section.ended(False)
        log.error(
            "acme {name}: order failed: {error}; next try in {wait:.0f}s",
            name=name,
            error=failure.getErrorMessage() or repr(failure.value),
            wait=section.schedule.backoff(),
        )
        if self.sections.get(name) is section:
            self._plan(name, section)
