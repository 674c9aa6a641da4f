"""The events of one epoll_wait, dispatched for proxyd's reactor (proxyd.reactor), compiled
by mypyc (pyproject.toml's [tool.proxyd] mypyc).

An event on one of Twisted's TCP connections (tcp.Server, tcp.Client), or a listening TCP
port's read event (accept), is handled as Twisted's _doReadOrWrite does it, without Twisted's
logging context around it. A connected connection's read is tcp.Connection.doRead inlined:
recv() into the protocol's dataReceived, with Twisted's results (None; CONNECTION_DONE at the
end of the stream; CONNECTION_LOST on an error other than EWOULDBLOCK); a client still
connecting (whose doRead is doConnect) and an aborted connection (whose doRead is a no-op)
have their own doRead called. Every other selectable takes Twisted's own path
(_doReadOrWrite in its logging context). Whatever goes wrong is handled as Twisted does it,
in the selectable's logging context: the exception logged, the selectable then disconnected.
tests/unit/test_twisted_internals.py holds digests of the Twisted code reproduced here.
"""

from __future__ import annotations

import sys
from errno import EWOULDBLOCK
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from typing import Any, Final

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

__all__ = ["dispatch"]


_DISCONNECTED: Final = EPOLLHUP | EPOLLERR
"""EPollReactor._POLL_DISCONNECTED."""


def dispatch(reactor: Any, events: list[tuple[int, int]]) -> None:
    """Handle `events`, (fd, event mask) pairs from the reactor's poller."""
    selectables = reactor._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        kind = type(selectable)
        if kind is tcp.Server or kind is tcp.Client:
            _connection_event(reactor, selectable, fd, event)
        elif kind is tcp.Port and event == EPOLLIN:
            _accept(reactor, selectable)
        else:
            log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)


def _connection_event(reactor: Any, connection: Any, fd: int, event: int) -> None:
    """_PollLikeMixin._doReadOrWrite for a TCP connection, its error and disconnection paths
    run in the connection's logging context (callWithLogger)."""
    why: object = None
    in_read = False
    if event & _DISCONNECTED and not event & EPOLLIN:
        # A hang-up with no input left: a clean end if it was reading (maybe a half-close).
        if fd in reactor._reads:
            in_read = True
            why = CONNECTION_DONE
        else:
            why = CONNECTION_LOST
    else:
        try:
            if connection.fileno() == -1:
                why = _NO_FILEDESC
            else:
                if event & EPOLLIN:
                    if connection.connected and not connection._aborting:
                        why = _read(connection)
                    else:  # connecting (doRead is doConnect), or aborted (a no-op)
                        why = connection.doRead()
                    in_read = True
                if not why and event & EPOLLOUT:
                    why = connection.doWrite()
                    in_read = False
        except BaseException:
            why = sys.exc_info()[1]
            log.callWithLogger(connection, log.err)
    if why:
        log.callWithLogger(connection, reactor._disconnectSelectable, connection, why, in_read)


def _accept(reactor: Any, port: Any) -> None:
    """A listening port's read event: tcp.Port.doRead accepts, and logs what goes wrong
    itself (it returns None unless its socket went away)."""
    try:
        why = _NO_FILEDESC if port.fileno() == -1 else port.doRead()
    except BaseException:
        why = sys.exc_info()[1]
        log.callWithLogger(port, log.err)
    if why:
        log.callWithLogger(port, reactor._disconnectSelectable, port, why, True)


def _read(connection: Any) -> object:
    """tcp.Connection.doRead and _dataReceived."""
    try:
        data = connection.socket.recv(connection.bufferSize)
    except OSError as e:
        if e.args[0] == EWOULDBLOCK:
            return None
        return CONNECTION_LOST
    if not data:
        return CONNECTION_DONE
    connection.protocol.dataReceived(data)
    return None
