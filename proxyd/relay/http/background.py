"""Requests proxyd makes itself, through a listener's routes and filter chain as a client's
would go (a cache's background refresh, RFC 5861's stale-while-revalidate): an Exchange
(proxyd.relay.http.exchange.Exchange.background) whose client connection is a
`BackgroundClient`, which drops the response once the chain's filters have seen it. The
request is logged in the access log as any other, its client given as the one whose request
caused it, marked "(background)"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.accesslog import json_string
from proxyd.clock import Deadline
from proxyd.config.model import Address
from proxyd.pool import Affinity
from proxyd.relay.http.response_timer import ResponseTimer
from proxyd.relay.http.roles import Listener, ResponseWaiter
from proxyd.tls import PeerTls


class BackgroundClient(ResponseTimer):
    """The client side of one background request: it reads nothing and sends nowhere."""

    writable = True
    closing = True
    trusted = True

    def __init__(
        self,
        factory: Listener,
        peer: Address,
        local: Address,
        tls: PeerTls | None,
        done: Callable[[Any], None],
    ) -> None:
        self.factory = factory
        self.peer = peer
        self.peer_text = f"{peer} (background)"
        self.log_fields = (
            f',"listener":{json_string(factory.config.name)},"client":{json_string(self.peer_text)}'
        )
        self.local = local
        self.tls = tls
        self.affinity = Affinity(peer)
        self._done = done
        self._response_timer = Deadline(factory.reactor, self._response_due)
        self._awaiting: ResponseWaiter | None = None

    def send(self, pieces: list[bytes]) -> None:
        """The response goes nowhere: the chain's filters took what they wanted of it."""

    def send_head(self, status: int, reason: bytes, fields: Any, body: bytes = b"") -> None:
        """The response goes nowhere."""

    def send_end(self, chunked: bool, trailers: Any) -> None:
        """The response goes nowhere."""

    def drive(self) -> None:
        """No request body to read."""

    def close_after_response(self) -> None:
        """Closing already: one request only."""

    def pause_reading(self, reason: str) -> None:
        """Nothing is read."""

    def resume_reading(self, reason: str) -> None:
        """Nothing is read."""

    def exchange_done(self, exchange: Any, keep_alive: bool) -> None:
        self.stop_expecting_response()
        self._done(exchange)
