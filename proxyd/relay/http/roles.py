"""The parties of an exchange, as it sees them: its listener's factory and its client
connection (proxyd.relay.http.listener and proxyd.relay.http.server provide them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from proxyd.config.model import Address, HttpListenerConfig
from proxyd.filters.chain import Chain
from proxyd.metrics import RelayStats
from proxyd.pool import Affinity, Pool
from proxyd.relay.attempt import AttemptPolicy
from proxyd.relay.http.decide import Place
from proxyd.relay.http.h1 import RequestReader
from proxyd.relay.http.messages import Headers, HttpError
from proxyd.relay.http.routing import RouteTable
from proxyd.relay.http.tunnel import ClientPipe
from proxyd.relay.http.upstream import Upstreams
from proxyd.relay.io import SendBatch
from proxyd.tls import PeerTls, ServerTls


class ResponseWaiter(Protocol):
    def response_timed_out(self) -> None: ...


class Listener(Protocol):
    """What an exchange uses of its listener's factory (proxyd.relay.http.listener's
    HttpRelayFactory)."""

    @property
    def config(self) -> HttpListenerConfig: ...

    @property
    def reactor(self) -> Any:
        """IReactorTCP and IReactorTime."""

    @property
    def routes(self) -> RouteTable: ...

    @property
    def places(self) -> dict[tuple[bytes, bytes, bytes], Place]:
        """decide's memo."""

    @property
    def chains(self) -> Mapping[str | None, Chain]:
        """The filter chain of each route by name; None: the listener's alone."""

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def upstreams(self) -> Mapping[str, Upstreams]: ...

    @property
    def attempts(self) -> AttemptPolicy:
        """How its requests try servers (proxyd.relay.http.forward_attempts.attempt_policy)."""
        ...

    @property
    def stats(self) -> RelayStats: ...

    def may_open_tunnel(self) -> bool: ...

    def tunnel_opened(self) -> None: ...

    def tunnel_closed(self) -> None: ...

    def exchange_over(self, exchange: Any) -> None:
        """Count `exchange` (proxyd.relay.http.exchange.Exchange) and log it."""


class ConnectionFactory(Listener, Protocol):
    """What a client connection (proxyd.relay.http.server.ClientConnection) uses of its
    listener's factory (proxyd.relay.http.listener.HttpRelayFactory), beside what its
    exchanges use."""

    requests: int
    """Requests read on every connection of the listener."""

    @property
    def sends(self) -> SendBatch: ...

    @property
    def no_delay_inherited(self) -> bool:
        """The accepted connections have TCP_NODELAY from the listening socket already."""

    @property
    def tls(self) -> ServerTls | None: ...

    @property
    def acme(self) -> Any:
        """The [acme] service answering http-01 challenges on this listener, or None."""

    def new_reader(self) -> RequestReader: ...

    def is_trusted(self, host: str) -> bool: ...

    def error_body(self, status: int) -> tuple[bytes, bytes]: ...

    def client_opened(self, client: Any) -> None: ...

    def client_closed(self, client: Any) -> None: ...

    def log_refusal(self, client: Any, error: HttpError) -> None: ...


class ExchangeClient(Protocol):
    """What an exchange uses of its client connection (proxyd.relay.http.server's
    ClientConnection) or HTTP/2 stream (proxyd.relay.http.h2_stream's H2Stream)."""

    @property
    def factory(self) -> Listener: ...

    @property
    def writable(self) -> bool: ...

    @property
    def peer_text(self) -> str: ...

    @property
    def peer(self) -> Address: ...

    @property
    def affinity(self) -> Affinity:
        """What a pool with `balance = hash` keys on (the client's address)."""

    @property
    def local(self) -> Address: ...

    @property
    def tls(self) -> PeerTls | None: ...

    @property
    def trusted(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    @property
    def log_fields(self) -> str: ...

    def send(self, pieces: list[bytes]) -> None:
        """Response body bytes, framed as the exchange framed its head (chunks)."""

    def send_head(self, status: int, reason: bytes, fields: Headers, body: bytes = b"") -> None:
        """A response's head (framed: proxyd.relay.http.framing), and `body` with it when
        the whole body is known at once (an answer, a body a filter read whole)."""

    def send_end(self, chunked: bool, trailers: Headers | None) -> None:
        """The response is complete: its last chunk when `chunked`, with `trailers`."""

    def switched(self, reason: bytes, fields: Headers) -> ClientPipe:
        """The server switched to WebSocket (its 101's reason and fields, as the filters left
        them): answer the client, and be the client side of the tunnel."""

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...

    def drive(self) -> None: ...

    def close_after_response(self) -> None: ...

    def expect_response(self, exchange: ResponseWaiter, timeout: float) -> None: ...

    def stop_expecting_response(self) -> None: ...

    def exchange_done(self, exchange: Any, keep_alive: bool) -> None: ...
