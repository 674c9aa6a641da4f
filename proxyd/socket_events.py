"""The events of one epoll_wait, dispatched for proxyd's reactor (proxyd.reactor), compiled
by mypyc (pyproject.toml's [tool.proxyd] mypyc).

A plain read or write on one of Twisted's TCP connections (tcp.Server, tcp.Client) runs
without Twisted's logging context, and a read is tcp.Connection.doRead inlined: recv() into
the protocol's dataReceived, with Twisted's results (None; CONNECTION_DONE at the end of the
stream; CONNECTION_LOST on an error other than EWOULDBLOCK). Every other event takes Twisted's
own path (_doReadOrWrite in the selectable's logging context). Whatever goes wrong is handled
as Twisted does it, in the connection's logging context: the exception logged, the connection
then disconnected. tests/unit/test_twisted_internals.py holds digests of the Twisted code
reproduced here.
"""

from __future__ import annotations

import sys
from errno import EWOULDBLOCK
from select import EPOLLIN, EPOLLOUT
from typing import Any

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

__all__ = ["dispatch"]


def dispatch(reactor: Any, events: list[tuple[int, int]]) -> None:
    """Handle `events`, (fd, event mask) pairs from the reactor's poller."""
    selectables = reactor._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        kind = type(selectable)
        if (kind is tcp.Server or kind is tcp.Client) and event in (EPOLLIN, EPOLLOUT):
            _read_or_write(reactor, selectable, event == EPOLLIN)
        else:
            log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)


def _read_or_write(reactor: Any, connection: Any, read: bool) -> None:
    """_PollLikeMixin._doReadOrWrite for one read or one write event, its error and
    disconnection paths run in the connection's logging context (callWithLogger)."""
    in_read = False
    why: object = None
    try:
        if connection.fileno() == -1:
            why = _NO_FILEDESC
        elif read:
            if not connection._aborting:  # abortConnection() made its doRead a no-op
                why = _read(connection)
            in_read = True
        else:
            why = connection.doWrite()
    except BaseException:
        why = sys.exc_info()[1]
        log.callWithLogger(connection, log.err)
    if why:
        log.callWithLogger(connection, reactor._disconnectSelectable, connection, why, in_read)


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
