"""Listening sockets the master binds for its workers (proxyd.workers), next to the listeners
(proxyd.listeners) that bind, share and adopt them.

A `tcp:`/`tcp6:` listener and a `[udp]` listener get one socket per worker, all bound to the
same address with SO_REUSEPORT: the kernel spreads new connections (and clients' datagrams)
over them by a hash of the client's address and port, so that the workers share the load
evenly and a UDP client stays on one worker, whose session then stays whole. One socket shared
by every worker would let the first worker to wake accept a whole burst (Twisted accepts up to
a hundred connections per readiness event), and with keep-alive clients keep that imbalance.
The master keeps every socket open, so connections and datagrams that reach a worker that is
being restarted wait in its socket's queue for the new worker instead of being refused.
A `unix:` listener has no SO_REUSEPORT: its one socket is shared by every worker.
"""

from __future__ import annotations

import socket
from typing import Any, Final

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from proxyd.config.values import split_endpoint
from proxyd.twisted_internals import adopt_unix, close_now, stop_accepting

SOMAXCONN_PATH: Final = "/proc/sys/net/core/somaxconn"
MIN_BACKLOG: Final = 511
"""nginx's listen backlog on Linux (NGX_LISTEN_BACKLOG); also the fallback where the
kernel's maximum cannot be read."""


def default_backlog(path: str = SOMAXCONN_PATH) -> int:
    """The listen backlog of a stream listener whose endpoint gives no `backlog=`: the
    kernel's maximum (Linux net.core.somaxconn, which caps any backlog at listen() anyway),
    at least MIN_BACKLOG. Twisted's own default, 50, drops SYNs in a burst of connects."""
    try:
        with open(path, "rb") as f:
            found = int(f.read().strip() or b"0")
    except (OSError, ValueError):
        return MIN_BACKLOG
    return max(found, MIN_BACKLOG)


DEFAULT_BACKLOG: Final = default_backlog()
"""The backlog every tcp:, tcp6:, ssl: and unix: listener gets unless its endpoint string
gives one (read once, when proxyd starts)."""

_BACKLOG_POSITION: Final = {"tcp": 2, "tcp6": 1, "ssl": 5, "unix": 2}
"""Where Twisted's endpoint parsers take `backlog` as a positional argument (after the
port, or the path): tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG:INTERFACE, ..."""

_POSITIONAL: Final = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
}
"""The names of tcp: and tcp6: endpoints' positional arguments, in Twisted's order."""


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """`description` with `:backlog=BACKLOG` added, when it is a stream endpoint Twisted
    takes a backlog for and it gives none (by keyword or position); else unchanged."""
    kind, positional, keywords = split_endpoint(description)
    position = _BACKLOG_POSITION.get(kind)
    if position is None or "backlog" in keywords or len(positional) > position:
        return description
    extended = f"{description}:backlog={backlog}"
    # A description ending in a lone backslash would escape the colon added.
    if split_endpoint(extended)[2].get("backlog") != str(backlog):
        return description
    return extended


class NotShareable(Exception):
    """An endpoint kind that cannot be passed to worker processes."""


@attrs.frozen
class SharedPort:
    """A listener's sockets: one per worker, or one for all (`sockets` of length 1)."""

    family: int
    kind: str
    """'stream' or 'datagram'."""
    sockets: tuple[socket.socket, ...]
    owner: Any = None
    """For `unix:`, the Twisted port that bound the socket and holds its file (and lock)."""

    def for_worker(self, index: int) -> socket.socket:
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.owner is not None:
            # A unix: port removes its socket file and lock, so that the next start can bind
            # the path again (with lockfile=0 it could not).
            close_now(self.owner)


def bind_stream(reactor: Any, description: str, count: int) -> SharedPort:
    """Bind `description` for `count` workers, raising CannotListenError as listenTCP does."""
    kind, positional, keywords = split_endpoint(description)
    if kind in ("tcp", "tcp6"):
        options = dict(zip(_POSITIONAL[kind], positional, strict=False)) | keywords
        family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
        interface = options.get("interface", "::" if kind == "tcp6" else "")
        backlog = int(options.get("backlog", DEFAULT_BACKLOG))
        return SharedPort(
            family,
            "stream",
            _reuseport_sockets(
                family, socket.SOCK_STREAM, interface, int(options["port"]), count, backlog
            ),
        )
    if kind == "unix":
        port = serverFromString(reactor, with_backlog(description))
        result: list[Any] = []
        port.listen(_Unused()).addBoth(result.append)
        listening = result[0]
        if isinstance(listening, Failure):
            listening.raiseException()
        # Twisted's Port stays the owner of the socket file; only its reading is stopped so that
        # the master never accepts. A duplicate goes to the workers.
        return SharedPort(socket.AF_UNIX, "stream", (stop_accepting(listening),), listening)
    raise NotShareable(
        f"{description!r}: with workers above 1, listeners must be tcp:, tcp6: or unix:"
        " endpoints (their sockets are passed to the worker processes)"
    )


def bind_datagram(interface: str, port: int, count: int) -> SharedPort:
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return SharedPort(
        family,
        "datagram",
        _reuseport_sockets(family, socket.SOCK_DGRAM, interface, port, count, 0),
    )


def _reuseport_sockets(
    family: int, kind: int, interface: str, port: int, count: int, backlog: int
) -> tuple[socket.socket, ...]:
    """`count` sockets bound to one address with SO_REUSEPORT (and SO_REUSEADDR for TCP, as
    Twisted sets it), non-blocking as Twisted's adopt* calls require. Port 0 is resolved by the
    first bind and used for the others."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((interface, port))
            port = sock.getsockname()[1]
            if kind == socket.SOCK_STREAM:
                sock.listen(backlog)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListenError(interface, port, e) from None
    return tuple(sockets)


def adopt_stream(reactor: Any, fd: int, family: int, factory: Any) -> Any:
    """A worker's listening port on the socket `fd` the master passed (a duplicate is kept;
    `fd` is left to the caller). For AF_UNIX, a port that leaves the socket file alone: the
    master made it with its mode and owner and removes it at its end, while Twisted's own
    unix port would chmod it to its default mode at start (and fail after twistd --uid) and
    unlink it when one worker stops."""
    if family != socket.AF_UNIX:
        return reactor.adoptStreamPort(fd, family, factory)
    return adopt_unix(reactor, fd, factory)


class _Unused:
    """The factory of a unix: port the master binds but never accepts on."""

    def doStart(self) -> None:
        """Nothing: the port never accepts in the master."""

    def doStop(self) -> None:
        """Nothing: the port never accepted in the master."""

    def buildProtocol(self, addr: Any) -> None:
        return None
