"""The AMP commands between the master and its workers, over a Unix socket pair each.

master -> worker: SetHealth (a server's active-check state), SetServer (its admin state and
weight), Serve (start accepting), PassSocket and Reload, ReopenLogs, CloseNow.
master -> worker, answered: Counters (the worker's counters, summed by the master), Reload,
PurgeCache (purge a cache's memory tier: the admin API's purge), LoadCertificate (an
[acme] certificate the master stored).
worker -> master, answered: ChargeLimits (what its rate limits charged; the answer, what the
other workers charged: proxyd.ratelimit.synced).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

_CHUNK = 60000
"""Bytes per AMP value (AMP's limit is 65535)."""


class Json(amp.Argument):
    """Any JSON value, split over as many AMP values as it needs (`name`, `name.0`, ...)."""

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        data = json.dumps(objects[name.decode()], separators=(",", ":")).encode()
        chunks = [data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)]
        strings[name] = b"%d" % len(chunks)
        for index, chunk in enumerate(chunks):
            strings[b"%s.%d" % (name, index)] = chunk

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        count = int(strings[name])
        data = b"".join(strings[b"%s.%d" % (name, index)] for index in range(count))
        objects[name.decode()] = json.loads(data)


class Agent(amp.AMP):
    """AMP without the info lines AMP logs when each connection is made and lost: a worker's
    start and end are logged by the master in words an operator reads."""

    def makeConnection(self, transport: Any) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class AgentFactory:
    """adoptStreamConnection wants a factory; this one builds the one agent of a socket pair's
    end."""

    def __init__(self, agent: amp.AMP) -> None:
        self.agent = agent

    def doStart(self) -> None:
        """Nothing to start."""

    def doStop(self) -> None:
        """Nothing to stop."""

    def buildProtocol(self, addr: Any) -> amp.AMP:
        return self.agent


class SetHealth(amp.Command):
    """The master's health checks say `server` of `pool` is up or down."""

    arguments = [
        (b"pool", amp.Unicode()),
        (b"server", amp.Unicode()),
        (b"up", amp.Boolean()),
        (b"reason", amp.Unicode()),
    ]
    response = []


class SetDiscovered(amp.Command):
    """The master's discovery found `servers` (each as a `servers` line) for `pool`: the
    pool's whole discovered list (sent before the health of servers it adds)."""

    arguments = [(b"pool", amp.Unicode()), (b"servers", amp.ListOf(amp.Unicode()))]
    response = []


class Serve(amp.Command):
    """Start accepting on every listener (sent after the health state, so that a new worker
    never routes to a server the checks know is down)."""

    arguments = []
    response = []


class SetServer(amp.Command):
    """The admin API set `server` of `pool` to `admin` (ready, drain, maint) and `weight`;
    `who` asked."""

    arguments = [
        (b"pool", amp.Unicode()),
        (b"server", amp.Unicode()),
        (b"admin", amp.Unicode()),
        (b"weight", amp.Integer()),
        (b"who", amp.Unicode()),
    ]
    response = []


class PassSocket(amp.Command):
    """A listening socket the master bound for the listener `name` of the config that the
    next Reload brings (its address is new): the worker accepts on it from that Reload on."""

    arguments = [(b"name", amp.Unicode()), (b"family", amp.Integer()), (b"fd", amp.Descriptor())]
    response = []


class Reload(amp.Command):
    """Serve this config (the text the master validated and applied) from now on; the
    sockets of its new addresses came before, by PassSocket."""

    arguments = [(b"path", amp.Unicode()), (b"config", Json())]
    response = [(b"reloaded", amp.Boolean()), (b"errors", Json())]


class ReopenLogs(amp.Command):
    """SIGUSR1 reached the master: open the access-log files again by their paths."""

    arguments = []
    response = []


class CloseNow(amp.Command):
    """The master was asked to stop a second time while the workers drain: close every
    connection still open now (a second SIGTERM to a worker does not, as systemd sends one
    to every process of the service besides the master's)."""

    arguments = []
    response = []


class Counters(amp.Command):
    """The worker's counters (ProxydService.counters)."""

    arguments = []
    response = [(b"counters", Json())]


class PurgeCache(amp.Command):
    """Purge this worker's memory tier of the [cache] `name` (the master purged the disk
    tier the workers share): `purge` is proxyd.cache.instance.Purge's fields. The answer
    counts the responses purged in a memory-only cache (0 for one with a disk, whose
    memory holds copies of the disk's)."""

    arguments = [(b"name", amp.Unicode()), (b"purge", Json())]
    response = [(b"purged", amp.Integer())]


class LoadCertificate(amp.Command):
    """The master stored a new certificate for the [acme] section `name`: load it from the
    storage directory and serve it from the next handshake on (proxyd.acme.service)."""

    arguments = [(b"name", amp.Unicode())]
    response = []


class ChargeLimits(amp.Command):
    """What the worker's rate-limit tables charged since its last call (`reports`: a list of
    proxyd.ratelimit.synced.Report); the answer is, per table id, [key, TAT] for the keys the
    master knows more of (proxyd.ratelimit.ledger)."""

    arguments = [(b"reports", Json())]
    response = [(b"states", Json())]
