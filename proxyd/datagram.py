"""A datagram protocol on a UDP socket connected to one peer, told once when the peer refuses
its datagrams (ICMP port unreachable), however Twisted reports it."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol


class ConnectedDatagram(DatagramProtocol):
    """Subclasses implement `peer_refused()`, and set `closing` before they stop the port.

    A refusal reaches a connected socket as a pending error. Twisted reports it as
    connectionRefused when a read or a write meets it; but epoll wakes with EPOLLERR alone
    first, and Twisted's epoll reactor then closes the port by itself. So a port that stops
    without its owner asking is a refusal too.
    """

    noisy = False
    closing = False

    def peer_refused(self) -> None:
        raise NotImplementedError

    def connectionRefused(self) -> None:
        self._refused()

    def doStop(self) -> None:
        super().doStop()
        self._refused()

    def _refused(self) -> None:
        if not self.closing:
            self.closing = True
            self.peer_refused()
