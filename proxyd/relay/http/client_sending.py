"""A client connection's send timeout (proxyd.relay.send_timeout): the client that takes
none of what waits for it for the timeout is reset, counted (client_stalled) and logged. A
base class of proxyd.relay.http.server.ClientConnection, holding no state of its own; one
chain of single bases (this one on proxyd.relay.http.client_timers.Timers), as a class mypyc
compiles has (pyproject.toml's [tool.proxyd] mypyc)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger

from proxyd.metrics import ErrorKind
from proxyd.relay.http.client_timers import Timers
from proxyd.relay.io import Transport, reset
from proxyd.relay.send_timeout import SendTimeout

if TYPE_CHECKING:
    from proxyd.relay.http.tunnel import Tunnel

_log = Logger(namespace="proxyd.relay.http")


class Sending(Timers):
    # The connection's state this class reads (proxyd.relay.http.server.ClientConnection).
    transport: Any
    """IProtocol's: the connection's transport, once made."""
    tunnel: Tunnel | None
    peer_text: str
    _sending: SendTimeout | None
    _send_timeout: float

    @property
    def channel(self) -> Transport:
        return cast(Transport, self.transport)

    def set_send_timeout(self, timeout: float) -> None:
        """The send timeout from now on (a tunnel's)."""
        self._send_timeout = timeout
        if self._sending is not None:
            self._sending.set_timeout(timeout)

    def _send_watch(self) -> SendTimeout:
        sending = self._sending
        if sending is None:
            sending = self._sending = SendTimeout(
                self.factory.reactor, self.transport, self._send_timeout, self._send_timed_out
            )
        return sending

    def _send_timed_out(self) -> None:
        """The client took none of what waits for it for the send timeout: reset, counted
        (client_stalled) and logged. A close with nothing left to send that did not end (a TLS
        client that never answers close_notify) is reset without more ado."""
        sending = self._sending
        if self.lost or sending is None:
            return
        tunnel = self.tunnel
        if sending.held != 0:
            why = f"took no bytes for {sending.timeout:g}s"
            _log.info(
                "{kind} {listener}: client {client} {why} ({held} bytes waiting): reset",
                kind=self.factory.config.kind,
                listener=self.factory.config.name,
                client=self.peer_text,
                why=why,
                held="?" if sending.held is None else sending.held,
            )
            exchange = self.exchange
            if tunnel is not None:
                tunnel.client_stalled(why)  # resets both sides
                return
            if exchange is not None and not exchange.finished:
                exchange.error = f"client {why}"  # it ends with the connection's loss
                exchange.error_kind = ErrorKind.CLIENT_STALLED
            else:
                self.factory.stats.cell("", "", "").error(ErrorKind.CLIENT_STALLED)
        elif tunnel is not None:
            tunnel.client_stalled(None)
            return
        self.factory.sends.discard(self.channel)
        reset(self.channel)
