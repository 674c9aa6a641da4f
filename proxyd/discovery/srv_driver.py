"""Asks DNS for a pool's SRV records and their targets' addresses, again on the records'
TTL (twisted.names), and hands the server list to its sink (proxyd.discovery.service)."""

from __future__ import annotations

import socket
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.names import client, dns
from twisted.names.error import DomainError
from twisted.python.failure import Failure

from proxyd.clock import DelayedCall
from proxyd.config.discovery_model import DiscoveryConfig
from proxyd.discovery.common import Backoff, Found
from proxyd.discovery.srv import SrvRecord, next_interval, srv_servers

TIMEOUTS = (1.0, 3.0)
"""Each query is sent again after 1 s, then given up 3 s later: a resolver that is down is
a failure after 4 s (twisted.names' default would wait a minute)."""


class Sink(Protocol):
    def update(self, found: Found) -> None: ...

    def failed(self, reason: str) -> None: ...


def system_servers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The `nameserver` lines of `path`, read once (twisted.names' own reading of it keeps
    a timer to read it again, which nothing here would stop); 127.0.0.1 when it has none."""
    found: list[tuple[str, int]] = []
    try:
        with open(path) as lines:
            for line in lines:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    found.append((words[1].partition("%")[0], 53))
    except OSError:
        pass
    return found or [("127.0.0.1", 53)]


def make_resolver(reactor: Any, config: DiscoveryConfig) -> Any:
    """A twisted.names resolver asking `resolver` (host, port) or, without one, the
    servers of the system's /etc/resolv.conf."""
    servers = [config.resolver] if config.resolver is not None else system_servers()
    return client.Resolver(servers=servers, reactor=reactor)


def _answers(result: tuple[list[Any], list[Any], list[Any]], kind: int) -> list[Any]:
    answers, _, additional = result
    return [rr for rr in [*answers, *additional] if rr.type == kind]


class SrvDriver:
    """Resolves `config.name` (SRV) then each target (A, AAAA), again after next_interval()
    of the TTLs used, or after a growing backoff (proxyd.discovery.common) when it fails: a
    timeout, a refusal, NXDOMAIN for the SRV name. A target without addresses (NXDOMAIN or
    no data) gives no server; any other failure of a target fails the whole update, so that
    the last list stays."""

    def __init__(self, reactor: Any, config: DiscoveryConfig, sink: Sink, resolver: Any) -> None:
        self.reactor = reactor
        self.config = config
        self.sink = sink
        self.resolver = resolver
        self.backoff = Backoff()
        self._timer: DelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        self._run()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.cancel()

    def _run(self) -> None:
        self._timer = None
        d = self._in_flight = self.resolve()
        d.addCallbacks(self._resolved, self._failed, errbackArgs=(d,), callbackArgs=(d,))

    @inlineCallbacks
    def resolve(self) -> Any:
        """The Found of one round, and the TTLs it used."""
        result = yield self.resolver.lookupService(self.config.name, TIMEOUTS)
        srv = _answers(result, dns.SRV)
        records = [
            SrvRecord(
                rr.payload.priority,
                rr.payload.weight,
                rr.payload.port,
                str(rr.payload.target).rstrip("."),
                rr.ttl,
            )
            for rr in srv
        ]
        if not records:
            raise DomainError(f"no SRV record for {self.config.name}")
        ttls = [record.ttl for record in records]
        targets = sorted({r.target for r in records if r.target not in ("", ".")})
        lookups = [
            self._addresses(target, lookup)
            for target in targets
            for lookup in (self.resolver.lookupAddress, self.resolver.lookupIPV6Address)
        ]
        found = yield DeferredList(lookups, fireOnOneErrback=True, consumeErrors=True)
        addresses: dict[str, list[str]] = {}
        for _, (target, hosts, host_ttls) in found:
            addresses.setdefault(target, []).extend(hosts)
            ttls += host_ttls
        servers = srv_servers(records, addresses, self.config.max_servers)
        if targets and not servers.servers:
            # Records name targets and none resolves: more likely a DNS outage in the
            # middle of a change than a service with no server (that is a target ".").
            raise DomainError(f"no address for any target of {self.config.name}")
        return servers, ttls

    @inlineCallbacks
    def _addresses(self, target: str, lookup: Any) -> Any:
        try:
            result = yield lookup(target, TIMEOUTS)
        except DomainError:
            return target, [], []
        hosts: list[str] = []
        ttls: list[int] = []
        for rr in _answers(result, dns.A) + _answers(result, dns.AAAA):
            if str(rr.name).rstrip(".").lower() == target.lower():
                hosts.append(rr.payload.dottedQuad() if rr.type == dns.A else _ipv6(rr))
                ttls.append(rr.ttl)
        return target, hosts, ttls

    def _resolved(self, result: tuple[Found, list[int]], d: Deferred[Any]) -> None:
        if d is not self._in_flight or self._stopped:
            return
        self._in_flight = None
        found, ttls = result
        self.backoff.reset()
        self.sink.update(found)
        self._timer = self.reactor.callLater(next_interval(ttls), self._run)

    def _failed(self, failure: Failure, d: Deferred[Any]) -> None:
        if d is not self._in_flight or self._stopped:
            return
        self._in_flight = None
        error = failure.value
        if failure.check(DomainError) and isinstance(error, DomainError):
            reason = f"{type(error).__name__} for {self.config.name}"
        else:
            first = getattr(error, "subFailure", None)  # a DeferredList's FirstError
            reason = first.getErrorMessage() if first is not None else failure.getErrorMessage()
            reason = reason or type(error).__name__
        self.sink.failed(reason)
        self._timer = self.reactor.callLater(self.backoff.next(), self._run)


def _ipv6(rr: Any) -> str:
    return socket.inet_ntop(socket.AF_INET6, rr.payload.address)
