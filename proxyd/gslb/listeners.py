"""The listening sockets of a `[gslb NAME]`: one UDP and one TCP socket on the same address.

The TCP side is an ordinary stream listener (proxyd.listeners.StreamRelayListener, named
`gslb NAME/tcp`); the UDP side is GslbUdpListener, which binds, shares with the workers and
adopts as a `[udp]` listener does. With workers, both are bound by the master with
SO_REUSEPORT and served by every worker (docs/gslb.md#workers).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.error import CannotListenError

from proxyd.config.gslb_model import GslbConfig
from proxyd.gslb.answers import Zone
from proxyd.gslb.server import Gslb, GslbDatagram, GslbStreamFactory, gslb_counts, stream_counts
from proxyd.gslb.view import HealthyView
from proxyd.listen_sockets import SharedPort, bind_datagram
from proxyd.listeners import DatagramFront, Listener, RelayListener, StreamRelayListener
from proxyd.pool import Pool
from proxyd.relay.factory import Counts
from proxyd.relay.udp import MAX_PACKET

__all__ = ["GslbUdpListener", "gslb_listeners"]


class GslbUdpListener(RelayListener):
    """The UDP side of a [gslb], counting the answers of both sides."""

    relay: GslbDatagram

    def __init__(self, reactor: Any, name: str, relay: GslbDatagram) -> None:
        super().__init__(reactor, name, relay.config.listen)
        self.relay = relay
        self.front = DatagramFront(relay)

    @property
    def datagram(self) -> bool:
        return True

    def counts(self) -> Counts:
        return self._counted(gslb_counts(self.relay.gslb))

    def bind(self) -> None:
        config = self.relay.config
        try:
            self.port = self._reactor.listenUDP(
                config.port, self.front, interface=config.interface, maxPacketSize=MAX_PACKET
            )
        except CannotListenError as e:
            raise self._cannot_listen(str(e.socketError or e)) from None

    def bind_shared(self, workers: int) -> SharedPort:
        config = self.relay.config
        try:
            self.shared = bind_datagram(config.interface, config.port, workers)
        except CannotListenError as e:
            raise self._cannot_listen(str(e.socketError or e)) from None
        return self.shared

    def adopt(self, fd: int, family: int) -> None:
        try:
            self.port = self._reactor.adoptDatagramPort(fd, family, self.front, MAX_PACKET)
        finally:
            os.close(fd)

    def take_over(self, old: Listener) -> None:
        """Serve on `old`'s socket, answering with this listener's zone from the next
        datagram on; `old` stops following its pools."""
        assert isinstance(old, GslbUdpListener)
        self.port, old.port = old.port, None
        self.shared, old.shared = old.shared, None
        self.front = old.front
        self._kept = True
        old.relay.stop()
        self.front.swap(self.relay)

    def stopService(self) -> Any:
        self.relay.stop()
        return super().stopService()


def gslb_listeners(reactor: Any, config: GslbConfig, pools: dict[str, Pool]) -> list[RelayListener]:
    """The UDP and TCP listeners of `config`, sharing one zone and one view of its pools."""
    view = HealthyView(reactor, pools, config.pools())
    gslb = Gslb(reactor, config, Zone(config, serial=int(reactor.seconds())), view)
    name = f"gslb {config.name}"
    return [
        GslbUdpListener(reactor, name, GslbDatagram(gslb)),
        StreamRelayListener(
            reactor, f"{name}/tcp", config.tcp_listen, GslbStreamFactory(gslb), stream_counts
        ),
    ]
