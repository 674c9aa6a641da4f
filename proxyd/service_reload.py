"""The reload of a running proxyd (ProxydService.reload() and apply()): the config file read
and validated again, the next generation built from the one serving and its new addresses
bound before anything changes (a failure refuses the reload, and the config serving now goes
on), then the switch: listeners handed over, the health checks, discovery, OCSP stapling,
the cluster links and the admin listener moved to the new config, the relays replaced
retired until their last connection ends.

A base class of proxyd.app.ProxydService, apart so that each module holds one thing; the
service's own state (its generation serving, its process resources, its admin listener) is
what these methods change. Logged under proxyd.app's namespace, as the rest of the service.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.logger import Logger

from proxyd import lifetime
from proxyd.acme.service import AcmeService
from proxyd.admin.api import AdminResource
from proxyd.admin.shared_state import AdminCluster
from proxyd.cache.cluster_link import PurgeFanout
from proxyd.config.errors import ConfigErrors
from proxyd.config.load import read
from proxyd.config.model import Config
from proxyd.config.reload import reload_config
from proxyd.discovery.service import DiscoveryService
from proxyd.generation import Generation, build
from proxyd.health import HealthService
from proxyd.lifetime import Retired
from proxyd.listeners import ListenerService, RelayListener, StartupError
from proxyd.ocsp_stapling import OcspStapling
from proxyd.reloading import ReloadOutcome, difference, hand_over, open_listener
from proxyd.resources import ProcessResources

log = Logger(namespace="proxyd.app")


class ReloadingService(service.MultiService):
    """The reloading part of ProxydService."""

    # The service's state this class reads and changes (proxyd.app.ProxydService).
    _reactor: Any
    _worker: bool
    serving: Generation
    resources: ProcessResources
    generation: int
    loaded: float
    shared_workers: int
    _retired: Retired
    health: HealthService | None
    discovery: DiscoveryService | None
    ocsp: OcspStapling
    acme: AcmeService
    fanout: PurgeFanout
    shared_admin: AdminCluster
    admin: ListenerService | None
    admin_resource: AdminResource | None

    @property
    def config(self) -> Config:
        raise NotImplementedError

    @property
    def listeners(self) -> list[RelayListener]:
        raise NotImplementedError

    def _warn(self, config: Config, source: str | None) -> None:
        raise NotImplementedError

    def _new_admin(self, config: Config) -> ListenerService | None:
        raise NotImplementedError

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Read the config file again and serve it (apply()); a file that is not valid, has
        no listener, or (unless `force`) would remove the admin listener is refused with its
        errors (proxyd.config.reload), and the config serving now goes on."""
        path = self.config.path
        log.info("reload: reading {path}", path=path)
        try:
            text = read(path)
            config = reload_config(self.config, text, force)
        except ConfigErrors as e:
            return self.refused([str(error) for error in e.errors])
        return self.apply(config, source=text)

    def refused(self, errors: list[str]) -> ReloadOutcome:
        """Log why a reload was refused; the outcome that says so."""
        for error in errors:
            log.error("reload refused: {error}", error=error)
        log.error(
            "reload refused: still serving generation {generation} of {path}",
            generation=self.generation,
            path=self.config.path,
        )
        return ReloadOutcome(False, self.generation, tuple(errors))

    def apply(
        self,
        config: Config,
        sockets: dict[str, tuple[int, int]] | None = None,
        source: str | None = None,
    ) -> ReloadOutcome:
        """Serve `config` from now on (a reload). Every new address is bound first: if one
        cannot be, nothing changes and the outcome says why. In a worker, `sockets` are the
        ones the master bound for the new addresses (fd, family by listener name): those
        adopted are taken out of it (and closed; Twisted keeps a duplicate). `source` is the
        text `config` was loaded from, for its warnings' lines."""
        if config.acme != self.config.acme:
            self.acme.reload(config.acme)
        try:
            generation = build(self._reactor, config, self.serving, self.resources)
        except (StartupError, OSError) as e:
            return self.refused([str(e)])
        change = difference(self.listeners, generation.listeners)
        opened: list[RelayListener] = []
        try:
            for listener in change.new:
                open_listener(listener, self._worker, self.shared_workers, sockets)
                opened.append(listener)
            admin = self._new_admin(config)
        except (StartupError, OSError) as e:
            for listener in opened:
                listener.close()
            generation.abandon(self.serving)
            return self.refused([str(e)])

        previous = self.serving
        hand_over(change, generation.listeners)
        for old in change.retiring:
            old.disownServiceParent()
        self.serving = generation
        for listener in generation.listeners:
            listener.setServiceParent(self)
        if self.discovery is not None:
            self.discovery.reload(generation.pools)
        if self.health is not None:
            self.health.reload(generation.pools)
        self._switch_admin(config, admin)
        self.ocsp.serve(config)
        if self.running:
            self.fanout.configure(config.caches)
            self.shared_admin.configure(None if self._worker else config.admin)
        self.generation += 1
        self.loaded = self._reactor.seconds()
        pools, upstreams, logs = previous.released_by(generation)
        relays = {id(listener.relay) for listener in generation.listeners}

        def release() -> None:
            for pool in pools:
                pool.stop()
            for upstream in upstreams:
                upstream.stop()
            for access_log in logs:
                access_log.close()

        self._retired.retire(
            [old for old in lifetime.relays_of(change.retiring) if id(old.relay) not in relays],
            release,
        )
        log.info(
            "reloaded {path}: generation {generation}; listeners: {kept} kept, {opened} new,"
            " {removed} closed",
            path=config.path,
            generation=self.generation,
            kept=len(change.kept),
            opened=len(opened),
            removed=len(change.removed),
        )
        old_workers = previous.config.proxyd.workers
        if config.proxyd.workers != old_workers and not self._worker:
            log.warn(
                "reload: workers = {workers} takes effect at the next start; {old} serve now",
                workers=config.proxyd.workers,
                old=old_workers,
            )
        self._warn(config, source)
        return ReloadOutcome(True, self.generation)

    def _switch_admin(self, config: Config, admin: ListenerService | None) -> None:
        if self.admin_resource is not None and config.admin is not None:
            self.admin_resource.admin_config = config.admin
        if self.admin is not None and config.admin is None:
            log.warn(
                "reload (forced): the new file has no [admin] section; the admin listener on"
                " {listen} closes",
                listen=self.admin.description,
            )
        if self.admin is not None and (admin is not None or config.admin is None):
            self.admin.disownServiceParent()
            self.admin = None
        if admin is not None:
            self.admin = admin
            admin.setServiceParent(self)
