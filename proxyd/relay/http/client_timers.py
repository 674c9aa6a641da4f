"""A client connection's timers: between requests, the header timeout (a started head, or the
first request) and the keep-alive timeout (idle between requests), on one Deadline cleared
while an exchange runs; the response timeout on another. A Deadline moves its delayed call
only when it would fire too late, so that a request on a kept-alive connection costs no
callLater and no cancel (the response timeout's methods are proxyd.relay.http.response_timer's).
A base class of proxyd.relay.http.server.ClientConnection (through
proxyd.relay.http.client_sending.Sending), holding no state of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxyd.clock import Deadline
from proxyd.relay.http.h1 import RequestReader
from proxyd.relay.http.messages import HttpError
from proxyd.relay.http.response_timer import ResponseTimer
from proxyd.relay.http.roles import ConnectionFactory

if TYPE_CHECKING:
    from proxyd.relay.http.exchange import Exchange
    from proxyd.relay.http.h2_session import H2Session


class Timers(ResponseTimer):
    # The connection's state this class reads (proxyd.relay.http.server.ClientConnection).
    factory: ConnectionFactory
    exchange: Exchange | None
    reader: RequestReader
    h2: H2Session | None
    """The HTTP/2 session, once the connection speaks HTTP/2 (proxyd.relay.http.h2_session)."""
    lost: bool
    closing: bool
    _timer: Deadline
    _timer_kind: str

    def _refuse(self, error: HttpError) -> None:
        raise NotImplementedError

    def lose_connection(self) -> None:
        raise NotImplementedError

    def _set_timer(self, kind: str) -> None:
        if self._timer_kind == kind:
            return
        config = self.factory.config
        self._timer_kind = kind
        self._timer.set_in(config.header_timeout if kind == "header" else config.keepalive_timeout)

    def _cancel_timer(self) -> None:
        self._timer_kind = ""
        self._timer.cancel()

    def _timer_fired(self) -> None:
        if self._timer_kind and not self.lost:
            self._timed_out()

    def _timed_out(self) -> None:
        kind, self._timer_kind = self._timer_kind, ""
        if self.exchange is not None:
            return
        if kind == "header" and self.reader.in_head:
            timeout = self.factory.config.header_timeout
            self._refuse(HttpError(408, f"request head not complete within {timeout:g}s"))
            return
        self.closing = True
        if self.h2 is not None:
            self.h2.drain()  # GOAWAY first: the client knows no stream was lost
        self.lose_connection()
