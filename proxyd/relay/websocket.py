"""The message-mode WebSocket relay `[websocket NAME]` with `mode = message`.

proxyd completes each client's WebSocket itself (autobahn's server protocol), opens its own
WebSocket to a server of the pool (autobahn's client protocol, over TLS when the pool has
`tls = on`), and relays messages between the two: text and binary, one message for one
message. The client's opening handshake waits, paused, until a server has answered proxyd's
with 101; the client is then accepted with the subprotocol the server chose. Close codes and
reasons are passed on; a side that ends without a close makes proxyd close the other with
1001. Each side's transport is the other's producer, so a slow reader pauses the sender; a
side that takes none of what waits for it for idle_timeout (it stopped reading) gets both
sides aborted (`client_stalled`, `server_stalled`), whatever the other direction does.
autobahn sets TCP_NODELAY on both legs (its tcpNoDelay option, on by default).

With `access` or per-client limits, each client is judged by its address as its TCP
connection is made (proxyd.access.gate): a refused one is closed at once, before its TLS and
opening handshakes, with no HTTP answer.

Layout: proxyd.relay.websocket_policy decides (Origins, message rate, handshake fields, close
codes and words); `Relay` (proxyd.relay.websocket_connection) holds one connection's two legs;
`ClientLeg` and `BackendLeg` forward autobahn's callbacks to it (proxyd.relay.websocket_legs);
`WebSocketRelayFactory`, here, is the listening factory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP

from proxyd.access.gate import Gate
from proxyd.accesslog import AccessLog
from proxyd.config.model import WebSocketListenerConfig
from proxyd.metrics import RelayStats
from proxyd.pool import Pool
from proxyd.relay.attempt import AttemptPolicy
from proxyd.relay.io import ConnectingReactor, OpenConnections
from proxyd.relay.websocket_connection import Relay
from proxyd.relay.websocket_legs import (
    CLOSE_TIMEOUT,
    QUIET,
    ClientLeg,
    ReactorTimer,
    accept_deflate,
    refuse_compression,
)
from proxyd.relay.websocket_policy import OriginPolicy, WsClose
from proxyd.tls import ClientTls, ServerTls, Stapling

__all__ = ["Relay", "WebSocketRelayFactory", "WsClose"]

txaio.use_twisted()


class WebSocketRelayFactory(WebSocketServerFactory):  # type: ignore[misc]
    """The listening factory of one `[websocket NAME]` with `mode = message`.

    Counters for metrics: `active` (admitted, not finished), `total` (admitted ever),
    `messages_in` (client to server) and `messages_out`. At a graceful stop, `drain()` then
    `close_all()`.
    """

    protocol = ClientLeg  # type: ignore[assignment]
    noisy = False
    log = QUIET

    def __init__(
        self,
        reactor: IReactorTCP,
        config: WebSocketListenerConfig,
        pools: Mapping[str, Pool],
        access_log: AccessLog,
        client_tls: ClientTls | None = None,
        stapling: Stapling | None = None,
    ) -> None:
        """`reactor` must provide IReactorTime as well. `client_tls`: the pool's servers are
        spoken to over TLS (wss). `stapling`: the OCSP responses its TLS staples."""
        super().__init__(server=None, reactor=reactor)
        self.reactor = cast(ConnectingReactor, reactor)
        self.timer = ReactorTimer(self.reactor)
        self._batched_timer = self.timer
        self.config = config
        self.pool = pools[config.pool]
        self.access_log = access_log
        self.client_tls = client_tls
        self.attempts = AttemptPolicy(config.retries)
        self.tls = (
            ServerTls(f"websocket {config.name}", config.tls, [b"http/1.1"], stapling)
            if config.tls is not None
            else None
        )
        self.origins = OriginPolicy(config.allowed_origins)
        self.active = 0
        self.total = 0
        self.messages_in = 0
        self.messages_out = 0
        self._relays: OpenConnections[Relay] = OpenConnections()
        """Every relay from its client's TCP connection until its access-log line."""
        self.stats = RelayStats("websocket", config.name)
        """The metrics by pool and server (proxyd.metrics)."""
        self.gate = Gate.of(config, self.reactor)
        """`access` and the per-client limits; None when the listener has neither. A reload
        makes a new factory, so per-client counts start afresh for the connections accepted
        from then on; the older ones release into this gate."""
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=config.max_frame_size,
            maxMessagePayloadSize=config.max_message_size,
            autoFragmentSize=config.max_frame_size,
            failByDrop=False,
            echoCloseCodeReason=True,
            openHandshakeTimeout=config.handshake_timeout,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            perMessageCompressionAccept=(
                accept_deflate if config.permessage_deflate else refuse_compression
            ),
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout if config.ping_interval > 0 else 0,
            allowNullOrigin=True,  # allowed_origins decides, in the relay
        )

    def new_relay(self, client: ClientLeg) -> Relay:
        """A client's TCP connection is made: its relay, judged by the gate at once."""
        relay = Relay(self, client)
        self._relays.add(relay)
        gate = self.gate
        if gate is not None:
            relay.pass_gate(gate)
        return relay

    @property
    def draining(self) -> bool:
        """Stopping: every new handshake is refused 503 (`shutdown`)."""
        return self._relays.draining

    def drain(self) -> Deferred[None]:
        """Admit nothing new (a handshake from now on is refused 503); the connections
        already admitted go on to their end. Fires once no connection is left open."""
        return self._relays.drain()

    def close_all(self) -> None:
        """The drain time is up: close every connection still open (1001 "going away" to
        both ends of an open WebSocket; `shutdown` in the access log); the drain's Deferred
        fires once they are gone."""
        self._relays.draining = True
        for relay in list(self._relays.open):
            relay.shut_down()

    def set_listening_port(self, port: IListeningPort) -> None:
        """Called once listening. Clients over max_connections are answered 503 rather than
        left in the accept queue, so the port is never paused."""

    def full(self) -> bool:
        limit = self.config.max_connections
        return limit > 0 and self.active >= limit

    def admit(self, relay: Relay) -> None:
        relay.admitted = True
        self.active += 1
        self.total += 1

    def finished(self, relay: Relay) -> None:
        if relay.admitted:
            self.active -= 1
        self._relays.discard(relay)
