"""Applying a reload's difference to the listeners (design.md principle 8): a listener whose
address is unchanged hands its socket to its successor, so no connection is refused; new
addresses are bound, removed ones stop accepting. The relays a reload replaced are retired
(proxyd.lifetime): their connections finish on them, an HTTP connection after its next
response (Connection: close), TCP and WebSocket connections when they end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from proxyd.listeners import RelayListener, StartupError

log = Logger(namespace="proxyd.app")


@attrs.frozen
class ReloadOutcome:
    """What a reload did: the generation serving now, or why the new file was refused."""

    reloaded: bool
    generation: int
    errors: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        return {"reloaded": self.reloaded, "generation": self.generation, "errors": [*self.errors]}


def sighup_reload(reload: Callable[[bool], Deferred[ReloadOutcome]]) -> None:
    """SIGHUP: reload, saying who asked (the outcome is logged by the reload itself). A
    signal carries no flag: a SIGHUP reload is never forced."""
    log.info("reload asked by SIGHUP")
    reload(False)


@attrs.frozen
class Difference:
    """The listeners of a new generation against those serving."""

    kept: list[tuple[RelayListener, RelayListener]]
    """(new, old) pairs on the same address: the new one takes the old one's socket over."""
    removed: list[RelayListener]
    """Old listeners whose address is gone: they close."""
    new: list[RelayListener]
    """New listeners on addresses not listened on yet: they bind."""

    @property
    def retiring(self) -> list[RelayListener]:
        return [old for _, old in self.kept] + self.removed


def difference(serving: Sequence[RelayListener], listeners: Sequence[RelayListener]) -> Difference:
    """Match `listeners` with those `serving` by address and class (a [udp] socket is not
    handed to a [gslb], which binds anew). A listener of the same name is matched first (two
    listeners on port 0 have the same address text and different sockets), then one
    renamed."""
    old_ones = list(serving)
    kept: list[tuple[RelayListener, RelayListener]] = []
    for same_name in (True, False):
        for listener in listeners:
            if any(new is listener for new, _ in kept):
                continue
            for old in old_ones:
                if (
                    type(old) is type(listener)
                    and old.description == listener.description
                    and (old.name == listener.name or not same_name)
                ):
                    kept.append((listener, old))
                    old_ones.remove(old)
                    break
    matched = {id(new) for new, _ in kept}
    return Difference(kept, old_ones, [new for new in listeners if id(new) not in matched])


def open_listener(
    listener: RelayListener,
    worker: bool,
    shared_workers: int,
    sockets: dict[str, tuple[int, int]] | None,
) -> None:
    """Bind a listener new at a reload as this process binds: itself, for its
    `shared_workers` workers, or (a `worker`) on the socket the master passed (taken out of
    `sockets`)."""
    if worker:
        if sockets is None or listener.name not in sockets:
            raise StartupError(f"proxyd: [{listener.name}] the master passed no socket")
        fd, family = sockets.pop(listener.name)
        listener.adopt(fd, family)
    elif shared_workers:
        listener.bind_shared(shared_workers)
    else:
        listener.bind()


def hand_over(change: Difference, listeners: Sequence[RelayListener]) -> None:
    """Give each kept socket to its new listener; a listener whose relay replaces the one of
    a listener of the same name goes on from its counters."""
    for new, old in change.kept:
        new.take_over(old)
    by_name = {listener.name: listener for listener in listeners}
    for old in change.retiring:
        successor = by_name.get(old.name)
        if successor is not None and successor.relay is not old.relay:
            successor.carry_on(old)
